// Driver for tests/browser.rs: headless Chromium opens a blank page, makes two
// RTCPeerConnections whose only ICE server is turnd (iceTransportPolicy "relay"), connects
// them, sends data-channel messages both ways and reads the selected candidate pair from
// getStats(). Prints exactly one JSON object on stdout; the Rust test asserts on it.
//
// usage: node webrtc_relay.mjs <ice-url> <username> <credential> <chromium-path>
import { chromium } from "playwright-core";

const [url, username, credential, executablePath] = process.argv.slice(2);
if (!url || !username || !credential || !executablePath) {
  console.error("usage: node webrtc_relay.mjs <ice-url> <username> <credential> <chromium>");
  process.exit(2);
}

// Hang guard inside the page; the Rust test has its own, longer one around this process.
const PAGE_TIMEOUT_MS = 60_000;

// Runs inside the page.
async function relayTest({ url, username, credential, timeoutMs }) {
  const log = [];
  const note = (s) => log.push(`${Math.round(performance.now())}ms ${s}`);
  const config = {
    iceServers: [{ urls: [url], username, credential }],
    iceTransportPolicy: "relay",
  };
  const pcs = [new RTCPeerConnection(config), new RTCPeerConnection(config)];
  const candidates = [[], []];
  const iceErrors = [];
  pcs.forEach((pc, i) => {
    const other = pcs[1 - i];
    pc.onicecandidate = (e) => {
      if (!e.candidate) {
        note(`pc${i + 1} gathering complete`);
        return;
      }
      candidates[i].push(e.candidate.candidate);
      other.addIceCandidate(e.candidate).catch((err) => note(`pc${2 - i} addIceCandidate: ${err}`));
    };
    pc.onicecandidateerror = (e) =>
      iceErrors.push({ pc: i + 1, url: e.url, errorCode: e.errorCode, errorText: e.errorText });
    pc.oniceconnectionstatechange = () => note(`pc${i + 1} ice ${pc.iceConnectionState}`);
    pc.onconnectionstatechange = () => note(`pc${i + 1} connection ${pc.connectionState}`);
  });

  // Messages of several sizes; the largest is split by SCTP into several relayed packets.
  const sizes = [1, 100, 1200, 16000];
  const payload = (from, n) => `${from}:${n}:` + "x".repeat(n);
  const expectedFrom = (from) => sizes.map((n) => payload(from, n));

  const receivedBy = [[], []];
  const done = [null, null];
  const allReceived = [0, 1].map(
    (i) => new Promise((resolve) => (done[i] = resolve)),
  );
  // pc1 sends; pc2 answers each message with one of the same size. pc2 sends only from its
  // message handler: Chromium 156 now and then drops messages that the answering side sends
  // at once after its channel opens (they never reach its SCTP: messagesSent stays 0).
  const onMessage = (i) => (e) => {
    receivedBy[i].push(e.data);
    const k = receivedBy[i].length;
    if (i === 1 && k <= sizes.length) e.target.send(payload("pc2", sizes[k - 1]));
    if (k === sizes.length) done[i]();
  };
  const channelOpen = (dc) =>
    new Promise((resolve) => {
      if (dc.readyState === "open") resolve();
      else dc.addEventListener("open", () => resolve(), { once: true });
    });

  let dc2Ref = null;
  const dc1 = pcs[0].createDataChannel("turnd", { ordered: true });
  dc1.onmessage = onMessage(0);
  const dc2Promise = new Promise((resolve) => {
    pcs[1].ondatachannel = (e) => {
      e.channel.onmessage = onMessage(1);
      dc2Ref = e.channel;
      resolve(e.channel);
    };
  });

  const exchange = async () => {
    const offer = await pcs[0].createOffer();
    await pcs[0].setLocalDescription(offer);
    await pcs[1].setRemoteDescription(offer);
    const answer = await pcs[1].createAnswer();
    await pcs[1].setLocalDescription(answer);
    await pcs[0].setRemoteDescription(answer);
    note("offer/answer exchanged");
    const dc2 = await dc2Promise;
    await Promise.all([channelOpen(dc1), channelOpen(dc2)]);
    note("data channels open");
    for (const n of sizes) dc1.send(payload("pc1", n));
    await Promise.all(allReceived);
    note("all messages received");
  };

  // ICE gave up (and stayed so for a while: every candidate is in by then): no need to wait
  // for the hang guard.
  const failed = new Promise((_, reject) =>
    pcs.forEach((pc, i) =>
      pc.addEventListener("connectionstatechange", () => {
        if (pc.connectionState !== "failed") return;
        setTimeout(() => {
          if (pc.connectionState === "failed") reject(new Error(`pc${i + 1} connection failed`));
        }, 10_000);
      }),
    ),
  );

  let error = null;
  let timer;
  try {
    await Promise.race([
      exchange(),
      failed,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } catch (err) {
    error = String(err);
  } finally {
    clearTimeout(timer);
  }

  // The selected pair of each connection's transport, with both of its candidates.
  const selected = [];
  const channels = [];
  for (const pc of pcs) {
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type === "data-channel") channels.push(s);
    });
    let pair = null;
    stats.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) {
        pair = stats.get(s.selectedCandidatePairId) || null;
      }
    });
    const cand = (id) => {
      const c = id && stats.get(id);
      return c
        ? {
            candidateType: c.candidateType,
            protocol: c.protocol,
            relayProtocol: c.relayProtocol ?? null,
            address: c.address ?? c.ip ?? null,
            port: c.port,
            url: c.url ?? null,
          }
        : null;
    };
    selected.push(
      pair
        ? {
            state: pair.state,
            bytesSent: pair.bytesSent,
            bytesReceived: pair.bytesReceived,
            local: cand(pair.localCandidateId),
            remote: cand(pair.remoteCandidateId),
          }
        : null,
    );
  }

  const matches = (got, want) =>
    got.length === want.length && got.every((m, k) => m === want[k]);
  const result = {
    error,
    pc1ReceivedAll: matches(receivedBy[0], expectedFrom("pc2")),
    pc2ReceivedAll: matches(receivedBy[1], expectedFrom("pc1")),
    pc1Received: receivedBy[0].length,
    pc2Received: receivedBy[1].length,
    selected,
    channels,
    buffered: [dc1.bufferedAmount, dc2Ref ? dc2Ref.bufferedAmount : null],
    candidates,
    iceErrors,
    log,
  };
  pcs.forEach((pc) => pc.close());
  return result;
}

let browser;
let out;
try {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    timeout: PAGE_TIMEOUT_MS,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      // turns: with the self-signed certificate in tests/browser/tls.
      "--ignore-certificate-errors",
      // Gather on the loopback interface too, so that turnd on 127.0.0.1 is reached even on
      // a machine with no other interface.
      "--allow-loopback-in-peer-connection",
    ],
  });
  const page = await browser.newPage();
  const consoleLines = [];
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  await page.goto("about:blank");
  out = await page.evaluate(relayTest, { url, username, credential, timeoutMs: PAGE_TIMEOUT_MS });
  out.browserVersion = browser.version();
  out.console = consoleLines;
} catch (err) {
  out = { error: `driver: ${err && err.stack ? err.stack : err}` };
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(0);
