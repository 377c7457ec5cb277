// Driver for tests/it/browser_quality.rs: headless Chromium makes two RTCPeerConnections,
// relay-only through turnd (each with its own ICE server URL: the fault-injection test puts a
// shim in front of turnd for the first one), sends fake-device audio and video both ways for
// a while, then stops sending, reads getStats() of both and, right after, turnd's
// /sessions from the admin API (before the connections close and end their allocations). Prints exactly one JSON object on stdout.
//
// usage: node call_quality.mjs <ice-url-1> <ice-url-2> <username> <credential> <chromium>
//                              <media-ms> <admin-base-url> <admin-token>
import { chromium } from "playwright-core";

const [url1, url2, username, credential, executablePath, mediaMs, adminUrl, token] =
  process.argv.slice(2);
if (!token) {
  console.error(
    "usage: node call_quality.mjs <url1> <url2> <user> <pass> <chromium> <media-ms> <admin> <token>",
  );
  process.exit(2);
}

const CONNECT_TIMEOUT_MS = 60_000;

// Runs inside the page.
async function call({ urls, username, credential, mediaMs, connectTimeoutMs }) {
  const log = [];
  const note = (s) => log.push(`${Math.round(performance.now())}ms ${s}`);
  const pcs = urls.map(
    (url) =>
      new RTCPeerConnection({
        iceServers: [{ urls: [url], username, credential }],
        iceTransportPolicy: "relay",
      }),
  );
  pcs.forEach((pc, i) => {
    const other = pcs[1 - i];
    pc.onicecandidate = (e) => {
      if (e.candidate) other.addIceCandidate(e.candidate).catch((err) => note(`add: ${err}`));
    };
    pc.onconnectionstatechange = () => note(`pc${i + 1} ${pc.connectionState}`);
  });
  const media = await navigator.mediaDevices.getUserMedia({
    audio: true,
    video: { width: 320, height: 240, frameRate: 15 },
  });
  for (const pc of pcs) for (const t of media.getTracks()) pc.addTrack(t, media);

  const connected = Promise.all(
    pcs.map(
      (pc) =>
        new Promise((resolve, reject) => {
          const check = () => {
            if (pc.connectionState === "connected") resolve();
            if (pc.connectionState === "failed") reject(new Error("connection failed"));
          };
          pc.addEventListener("connectionstatechange", check);
          check();
        }),
    ),
  );
  const offer = await pcs[0].createOffer();
  await pcs[0].setLocalDescription(offer);
  await pcs[1].setRemoteDescription(offer);
  const answer = await pcs[1].createAnswer();
  await pcs[1].setLocalDescription(answer);
  await pcs[0].setRemoteDescription(answer);
  let timer;
  await Promise.race([
    connected,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error("not connected in time")), connectTimeoutMs);
    }),
  ]);
  clearTimeout(timer);
  note("connected");
  await new Promise((r) => setTimeout(r, mediaMs));
  // Stop sending media (RTCP goes on), let what is in flight land, then read the counters.
  for (const pc of pcs) for (const s of pc.getSenders()) await s.replaceTrack(null);
  await new Promise((r) => setTimeout(r, 1500));
  note("stopped");

  const report = [];
  for (const pc of pcs) {
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) {
        pair = stats.get(s.selectedCandidatePairId) || null;
      }
    });
    const cand = (id) => {
      const c = id && stats.get(id);
      return c ? { candidateType: c.candidateType, address: c.address, port: c.port } : null;
    };
    const outbound = [];
    const inbound = [];
    stats.forEach((s) => {
      if (s.type === "outbound-rtp")
        outbound.push({
          ssrc: s.ssrc,
          kind: s.kind,
          packetsSent: s.packetsSent,
          retransmittedPacketsSent: s.retransmittedPacketsSent ?? 0,
          rtxSsrc: s.rtxSsrc ?? null,
        });
      if (s.type === "inbound-rtp")
        inbound.push({
          ssrc: s.ssrc,
          kind: s.kind,
          packetsReceived: s.packetsReceived,
          packetsLost: s.packetsLost,
          jitter: s.jitter,
        });
    });
    report.push({
      pair: pair
        ? {
            currentRoundTripTime: pair.currentRoundTripTime ?? null,
            totalRoundTripTime: pair.totalRoundTripTime ?? null,
            responsesReceived: pair.responsesReceived ?? null,
            local: cand(pair.localCandidateId),
            remote: cand(pair.remoteCandidateId),
          }
        : null,
      outbound,
      inbound,
    });
  }
  // Closed by the driver after it has read turnd's sessions (closing ends the allocations).
  window.closeCall = () => {
    pcs.forEach((pc) => pc.close());
    media.getTracks().forEach((t) => t.stop());
  };
  return { pcs: report, log };
}

let browser;
let out;
try {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    timeout: CONNECT_TIMEOUT_MS,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--allow-loopback-in-peer-connection",
      "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream",
    ],
  });
  const page = await browser.newPage();
  // getUserMedia needs a secure context: a localhost page, served by the driver itself
  // (intercepted, nothing listens).
  await page.route("http://localhost/**", (r) =>
    r.fulfill({ status: 200, contentType: "text/html", body: "<!doctype html><title>q</title>" }),
  );
  await page.goto("http://localhost/call");
  const stats = await page.evaluate(call, {
    urls: [url1, url2],
    username,
    credential,
    mediaMs: Number(mediaMs),
    connectTimeoutMs: CONNECT_TIMEOUT_MS,
  });
  // turnd's view right after the browsers' (media stopped, so both are still).
  const r = await fetch(`${adminUrl}/sessions`, {
    headers: { Authorization: `Bearer ${token}` },
  });
  out = { ...stats, sessions: await r.json(), browserVersion: browser.version() };
  await page.evaluate(() => window.closeCall());
} catch (err) {
  out = { error: `driver: ${err && err.stack ? err.stack : err}` };
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(0);
