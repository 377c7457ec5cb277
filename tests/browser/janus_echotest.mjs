// Driver for tests/it/janus_echotest.rs: Janus's echotest through turnd. Node talks to
// Janus's HTTP API (create a session, attach the echotest plugin, send the offer with
// "force_relay": true so Janus relays through its TURN server too, long-poll for the
// answer); headless Chromium makes the PeerConnection, relay-only with turnd as its only ICE
// server, sending a canvas video track and an oscillator audio track, and counts what comes
// back. While media flows the driver reads turnd's /sessions. Prints one JSON object.
//
// usage: node janus_echotest.mjs '<json: {janus, iceServer, chromium, admin, token, opaqueId}>'
// where iceServer is one RTCIceServer ({urls, username, credential}).
import { chromium } from "playwright-core";

const args = JSON.parse(process.argv[2] || "{}");
for (const k of ["janus", "iceServer", "chromium", "admin", "token", "opaqueId"]) {
  if (!args[k]) {
    console.error(`janus_echotest.mjs: missing ${k}`);
    process.exit(2);
  }
}

// Hang guards; the Rust test has its own, longer one around this process.
const STEP_TIMEOUT_MS = 45_000;
const log = [];
const note = (s) => log.push(`${new Date().toISOString()} ${s}`);

let tx = 0;
async function janus(path, body) {
  const init = body
    ? { method: "POST", body: JSON.stringify({ transaction: `t${++tx}`, ...body }) }
    : { method: "GET" };
  const res = await fetch(`${args.janus}${path}`, { ...init, signal: AbortSignal.timeout(STEP_TIMEOUT_MS) });
  const json = await res.json();
  if (json.janus === "error") throw new Error(`janus ${path}: ${JSON.stringify(json.error)}`);
  return json;
}

// Runs in the page: the PeerConnection, its offer with every candidate gathered.
async function makeOffer({ iceServer, timeoutMs }) {
  const pc = new RTCPeerConnection({
    iceServers: [iceServer],
    iceTransportPolicy: "relay",
  });
  window.pc = pc;
  window.iceErrors = [];
  pc.onicecandidateerror = (e) =>
    window.iceErrors.push({ url: e.url, errorCode: e.errorCode, errorText: e.errorText });
  // Video: a canvas that changes every frame. Audio: an oscillator.
  const canvas = document.createElement("canvas");
  canvas.width = 320;
  canvas.height = 240;
  const g = canvas.getContext("2d");
  let frame = 0;
  window.drawTimer = setInterval(() => {
    g.fillStyle = `hsl(${(frame++ * 7) % 360}, 80%, 50%)`;
    g.fillRect(0, 0, 320, 240);
    g.fillStyle = "#000";
    g.fillText(String(frame), 10 + (frame % 280), 120);
  }, 33);
  const video = canvas.captureStream(30).getVideoTracks()[0];
  const ac = new AudioContext();
  const osc = ac.createOscillator();
  const dest = ac.createMediaStreamDestination();
  osc.connect(dest);
  osc.start();
  const audio = dest.stream.getAudioTracks()[0];
  const stream = new MediaStream([audio, video]);
  pc.addTrack(audio, stream);
  pc.addTrack(video, stream);
  window.received = [];
  pc.ontrack = (e) => window.received.push(e.track.kind);
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("ICE gathering did not complete")), timeoutMs);
    const check = () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(t);
        resolve();
      }
    };
    pc.onicegatheringstatechange = check;
    check();
  });
  return pc.localDescription.sdp;
}

// Runs in the page: applies Janus's answer, waits until audio and video come back.
async function waitForEcho({ sdp, timeoutMs }) {
  const pc = window.pc;
  await pc.setRemoteDescription({ type: "answer", sdp });
  const inbound = async () => {
    const out = { audioPackets: 0, videoPackets: 0, framesDecoded: 0 };
    (await pc.getStats()).forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      if (s.kind === "audio") out.audioPackets += s.packetsReceived || 0;
      if (s.kind === "video") {
        out.videoPackets += s.packetsReceived || 0;
        out.framesDecoded += s.framesDecoded || 0;
      }
    });
    return out;
  };
  const deadline = performance.now() + timeoutMs;
  let media = await inbound();
  while (performance.now() < deadline) {
    if (media.audioPackets >= 50 && media.framesDecoded >= 30) break;
    await new Promise((r) => setTimeout(r, 250));
    media = await inbound();
  }
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
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
  return {
    connectionState: pc.connectionState,
    media,
    tracks: window.received,
    selected: pair
      ? {
          state: pair.state,
          bytesSent: pair.bytesSent,
          bytesReceived: pair.bytesReceived,
          local: cand(pair.localCandidateId),
          remote: cand(pair.remoteCandidateId),
        }
      : null,
    iceErrors: window.iceErrors,
  };
}

let browser;
const out = { error: null, log };
try {
  const info = await janus("/info");
  out.janusVersion = info.version_string;
  const session = (await janus("", { janus: "create" })).data.id;
  const handle = (
    await janus(`/${session}`, { janus: "attach", plugin: "janus.plugin.echotest", opaque_id: args.opaqueId })
  ).data.id;
  note(`janus session ${session} handle ${handle}`);

  browser = await chromium.launch({
    executablePath: args.chromium,
    headless: true,
    timeout: STEP_TIMEOUT_MS,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--autoplay-policy=no-user-gesture-required",
    ],
  });
  out.browserVersion = browser.version();
  const page = await browser.newPage();
  const consoleLines = [];
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  out.console = consoleLines;
  await page.goto("about:blank");
  const offer = await page.evaluate(makeOffer, {
    iceServer: args.iceServer,
    timeoutMs: STEP_TIMEOUT_MS,
  });
  out.offerCandidates = offer.split("\r\n").filter((l) => l.startsWith("a=candidate:"));
  note(`offer gathered, ${out.offerCandidates.length} candidates`);

  await janus(`/${session}/${handle}`, {
    janus: "message",
    body: { audio: true, video: true },
    jsep: { type: "offer", sdp: offer, force_relay: true },
  });
  // Long-poll the session's events for the answer (and keep the session alive).
  let answer = null;
  out.janusEvents = [];
  const until = Date.now() + STEP_TIMEOUT_MS;
  while (!answer && Date.now() < until) {
    const evs = await janus(`/${session}?maxev=5`);
    for (const ev of Array.isArray(evs) ? evs : [evs]) {
      if (ev.janus !== "keepalive") out.janusEvents.push({ janus: ev.janus, data: ev.plugindata?.data ?? null });
      if (ev.jsep && ev.jsep.type === "answer") answer = ev.jsep.sdp;
    }
  }
  if (!answer) throw new Error("Janus sent no answer");
  out.answerCandidates = answer.split("\r\n").filter((l) => l.startsWith("a=candidate:"));
  note(`answer with ${out.answerCandidates.length} candidates`);
  // Keep polling events while media flows (webrtcup, media).
  let polling = true;
  const poller = (async () => {
    while (polling) {
      try {
        const evs = await janus(`/${session}?maxev=5`);
        for (const ev of Array.isArray(evs) ? evs : [evs]) {
          if (ev.janus !== "keepalive") out.janusEvents.push({ janus: ev.janus, data: ev.plugindata?.data ?? null });
        }
      } catch (e) {
        note(`poll: ${e}`);
        break;
      }
    }
  })();
  Object.assign(out, await page.evaluate(waitForEcho, { sdp: answer, timeoutMs: STEP_TIMEOUT_MS }));
  note(`media: ${JSON.stringify(out.media)}`);
  // turnd's sessions while the call is up: the browser's allocation and Janus's.
  const res = await fetch(`${args.admin}/sessions`, {
    headers: { Authorization: `Bearer ${args.token}` },
    signal: AbortSignal.timeout(STEP_TIMEOUT_MS),
  });
  out.sessions = await res.json();
  polling = false;
  await janus(`/${session}`, { janus: "destroy" }).catch(() => {});
  void poller;
} catch (err) {
  out.error = `driver: ${err && err.stack ? err.stack : err}`;
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(0);
