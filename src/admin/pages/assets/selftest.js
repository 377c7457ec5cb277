// The self-test: for each URI the server advertises, two RTCPeerConnections with
// iceTransportPolicy "relay" and that URI as their only ICE server connect to each other
// through turnd, exchange data-channel pings and a bulk transfer, and send a generated video
// (canvas) and audio (oscillator) track. Each row shows whether it connected (with the ICE
// errors when not), the time to connect, the RTT, the throughput, and the server's own view
// of those allocations from /sessions. window.turndSelftest holds the results.
"use strict";
(function () {
  const CONNECT_TIMEOUT_MS = 15000;
  const BULK_BYTES = 2 * 1024 * 1024;
  const CHUNK = 16 * 1024;
  const PINGS = 10;
  const MEDIA_MS = 2500;

  const el = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  };
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const withTimeout = (p, ms, what) => {
    let timer;
    return Promise.race([
      p,
      new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms); }),
    ]).finally(() => clearTimeout(timer));
  };
  const transportOf = (uri) =>
    uri.startsWith("turns:") ? "tls" : /transport=tcp/i.test(uri) ? "tcp" : "udp";
  const post = async (path, fields) => {
    const r = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(fields).toString(),
      cache: "no-store",
    });
    const j = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(j.error || `${path}: HTTP ${r.status}`);
    return j;
  };

  // A generated media stream: a canvas drawing a moving bar and a counter, and a tone.
  function fakeMedia() {
    const canvas = document.createElement("canvas");
    canvas.width = 320;
    canvas.height = 180;
    const g = canvas.getContext("2d");
    let frame = 0;
    const draw = () => {
      frame++;
      g.fillStyle = "#1d232a";
      g.fillRect(0, 0, 320, 180);
      g.fillStyle = "#2463b0";
      g.fillRect((frame * 4) % 320, 60, 40, 60);
      g.fillStyle = "#fff";
      g.font = "20px sans-serif";
      g.fillText(`turnd ${frame}`, 10, 30);
    };
    draw();
    const timer = setInterval(draw, 66);
    const video = canvas.captureStream(15).getVideoTracks()[0];
    const tracks = [video];
    let ctx = null;
    try {
      ctx = new AudioContext();
      const osc = ctx.createOscillator();
      osc.frequency.value = 440;
      const dest = ctx.createMediaStreamDestination();
      osc.connect(dest);
      osc.start();
      tracks.push(dest.stream.getAudioTracks()[0]);
      ctx.resume().catch(() => {});
    } catch (_) { /* no audio: the video track still runs */ }
    return {
      stream: new MediaStream(tracks),
      stop() { clearInterval(timer); tracks.forEach((t) => t.stop()); if (ctx) ctx.close().catch(() => {}); },
    };
  }

  const channelOpen = (dc) => new Promise((resolve) => {
    if (dc.readyState === "open") resolve();
    else dc.addEventListener("open", () => resolve(), { once: true });
  });

  async function selectedPair(pc) {
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    if (!pair) return null;
    const c = stats.get(pair.localCandidateId) || {};
    return {
      rttMs: pair.currentRoundTripTime != null ? pair.currentRoundTripTime * 1000 : null,
      local: { type: c.candidateType, relayProtocol: c.relayProtocol ?? null,
               address: c.address ?? c.ip ?? null, port: c.port, url: c.url ?? null },
    };
  }

  async function inboundMedia(pc) {
    const out = { videoPackets: 0, audioPackets: 0, framesDecoded: 0 };
    (await pc.getStats()).forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      if (s.kind === "video") { out.videoPackets += s.packetsReceived || 0; out.framesDecoded += s.framesDecoded || 0; }
      if (s.kind === "audio") out.audioPackets += s.packetsReceived || 0;
    });
    return out;
  }

  // One URI: returns the row's result; `pcs` are closed by the caller after turnd's view is
  // read (while the allocations are still live).
  async function runOne(uri, cred) {
    const res = { uri, transport: transportOf(uri), connected: false, error: null, iceErrors: [],
                  connectMs: null, rttMs: null, pairRttMs: null, throughputMbps: null,
                  bulkBytes: 0, pingsAnswered: 0, media: null, relayed: [] };
    const config = { iceServers: [{ urls: [uri], username: cred.username, credential: cred.password }],
                     iceTransportPolicy: "relay" };
    const pcs = [new RTCPeerConnection(config), new RTCPeerConnection(config)];
    const gathered = [0, 0];
    pcs.forEach((pc, i) => {
      pc.onicecandidate = (e) => {
        if (!e.candidate) return;
        gathered[i]++;
        pcs[1 - i].addIceCandidate(e.candidate).catch(() => {});
      };
      pc.onicecandidateerror = (e) => {
        const text = `${e.errorCode} ${e.errorText || ""}`.trim();
        if (!res.iceErrors.includes(text)) res.iceErrors.push(text);
      };
    });
    const media = fakeMedia();
    media.stream.getTracks().forEach((t) => pcs[0].addTrack(t, media.stream));
    const dc = pcs[0].createDataChannel("selftest", { ordered: true });
    const remote = new Promise((resolve) => { pcs[1].ondatachannel = (e) => resolve(e.channel); });
    const t0 = performance.now();
    const connected = Promise.all(pcs.map((pc) => new Promise((resolve, reject) => {
      const check = () => {
        if (pc.connectionState === "connected") resolve();
        if (pc.connectionState === "failed") reject(new Error("ICE failed"));
      };
      pc.addEventListener("connectionstatechange", check);
      check();
    })));
    try {
      const offer = await pcs[0].createOffer();
      await pcs[0].setLocalDescription(offer);
      await pcs[1].setRemoteDescription(offer);
      const answer = await pcs[1].createAnswer();
      await pcs[1].setLocalDescription(answer);
      await pcs[0].setRemoteDescription(answer);
      await withTimeout(connected, CONNECT_TIMEOUT_MS, "connecting");
      const dc2 = await withTimeout(remote, CONNECT_TIMEOUT_MS, "data channel");
      await withTimeout(Promise.all([channelOpen(dc), channelOpen(dc2)]), CONNECT_TIMEOUT_MS, "data channel");
      res.connectMs = Math.round(performance.now() - t0);
      res.connected = true;

      // RTT: data-channel pings answered by the other side.
      const rtts = [];
      let pending = null;
      dc2.onmessage = (e) => { if (typeof e.data === "string") dc2.send(e.data); };
      dc.onmessage = (e) => { if (pending) pending(e.data); };
      for (let i = 0; i < PINGS; i++) {
        const sent = performance.now();
        const echoed = new Promise((resolve) => { pending = resolve; });
        dc.send(`ping ${i}`);
        await withTimeout(echoed, 5000, "ping");
        rtts.push(performance.now() - sent);
        res.pingsAnswered++;
      }
      rtts.sort((a, b) => a - b);
      res.rttMs = Math.round(rtts[Math.floor(rtts.length / 2)] * 10) / 10;

      // Throughput: a bulk transfer, paced by the channel's buffer.
      let got = 0;
      const all = new Promise((resolve) => {
        dc2.onmessage = (e) => {
          if (typeof e.data === "string") return;
          got += e.data.byteLength;
          if (got >= BULK_BYTES) resolve();
        };
      });
      dc.binaryType = "arraybuffer";
      dc2.binaryType = "arraybuffer";
      dc.bufferedAmountLowThreshold = 256 * 1024;
      const chunk = new Uint8Array(CHUNK);
      const start = performance.now();
      for (let sent = 0; sent < BULK_BYTES; sent += CHUNK) {
        if (dc.bufferedAmount > 1024 * 1024) {
          await withTimeout(new Promise((r) => dc.addEventListener("bufferedamountlow", r, { once: true })), 10000, "bulk transfer");
        }
        dc.send(chunk);
      }
      await withTimeout(all, 20000, "bulk transfer");
      res.bulkBytes = got;
      res.throughputMbps = Math.round(((got * 8) / ((performance.now() - start) / 1000) / 1e6) * 10) / 10;

      // Media: what arrived of the generated tracks.
      await sleep(MEDIA_MS);
      res.media = await inboundMedia(pcs[1]);
      const pairs = await Promise.all(pcs.map(selectedPair));
      res.pairRttMs = pairs[0] && pairs[0].rttMs != null ? Math.round(pairs[0].rttMs * 10) / 10 : null;
      res.relayed = pairs.filter(Boolean).map((p) => p.local);
    } catch (e) {
      res.error = String(e && e.message ? e.message : e);
      if (gathered[0] + gathered[1] === 0) res.error += "; no relay candidate was gathered (the TURN server was not reached or refused the allocation)";
      if (gathered[0] + gathered[1] === 0 && res.transport === "tls") {
        res.error += "; for turns: the server's certificate must be valid for the URI's host name and trusted by this browser";
      }
      if (res.iceErrors.length) res.error += `; ICE errors: ${res.iceErrors.join(", ")}`;
    }
    return { res, pcs, media };
  }

  // The server's sessions of this run's user whose relayed address is one of this pair's.
  async function serverView(cred, res) {
    try {
      const r = await fetch(`/sessions?user=${encodeURIComponent(cred.user)}`, { cache: "no-store" });
      if (!r.ok) return { error: `HTTP ${r.status}` };
      const list = await r.json();
      const mine = new Set(res.relayed.map((c) => `${c.address}:${c.port}`));
      return list.filter((s) => s.relayed.some((a) => mine.has(a))).map((s) => ({
        id: s.id, transport: s.transport, relayed: s.relayed,
        bytes_to_peer: s.bytes_to_peer, bytes_from_peer: s.bytes_from_peer,
        packets_to_peer: s.packets_to_peer, packets_from_peer: s.packets_from_peer,
        quality: s.quality ?? null,
      }));
    } catch (e) {
      return { error: String(e) };
    }
  }

  function viewCell(view) {
    const td = el("td");
    if (!Array.isArray(view)) { td.append(el("span", view ? view.error : "\u2013", "muted")); return td; }
    if (view.length === 0) { td.append(el("span", "no session seen", "muted")); return td; }
    const ul = el("ul", null, "view");
    for (const s of view) {
      let text = `${s.transport} ${s.relayed.join(", ")}: ${s.packets_to_peer} pkts / ${s.bytes_to_peer} B to peer, ` +
                 `${s.packets_from_peer} pkts / ${s.bytes_from_peer} B from peer`;
      const q = s.quality;
      if (q) {
        const bits = [q.state, q.client_rtt_ms != null ? `client RTT ${q.client_rtt_ms} ms` : null,
                      q.peer_rtt_ms != null ? `peer RTT ${q.peer_rtt_ms} ms` : null,
                      q.checks_unanswered ? `${q.checks_unanswered} checks unanswered` : null];
        for (const st of q.streams || []) {
          bits.push(`${st.kind} ${st.direction} ${st.packets} pkts` +
                    (st.loss_ratio != null ? ` ${(st.loss_ratio * 100).toFixed(1)}% lost` : "") +
                    (st.jitter_ms != null ? ` jitter ${st.jitter_ms} ms` : "") +
                    (st.fps != null ? ` ${st.fps} fps` : ""));
        }
        text += `; quality: ${bits.filter(Boolean).join(", ")}`;
      }
      ul.append(el("li", text));
    }
    td.append(ul);
    return td;
  }

  function row(res) {
    const tr = el("tr");
    tr.dataset.transport = res.transport;
    tr.dataset.connected = String(res.connected);
    const result = el("td");
    result.append(el("div", res.connected ? "\u2714 connected" : "\u2718 failed", res.connected ? "ok" : "bad"));
    if (res.error) result.append(el("div", res.error, "reason"));
    const media = res.media
      ? `video ${res.media.videoPackets} pkts, ${res.media.framesDecoded} frames; audio ${res.media.audioPackets} pkts`
      : "\u2013";
    tr.append(
      el("td", res.uri),
      result,
      el("td", res.connectMs != null ? `${res.connectMs} ms` : "\u2013", "num"),
      el("td", res.rttMs != null ? `${res.rttMs} ms` : "\u2013", "num"),
      el("td", res.throughputMbps != null ? `${res.throughputMbps} Mbit/s` : "\u2013", "num"),
      el("td", media),
      viewCell(res.server),
    );
    return tr;
  }

  // Ends the sessions of one URI's credential (it expires soon after by itself).
  async function endRun(cred) {
    try {
      const end = await post("/selftest/end", { user: cred.user });
      window.turndSelftest.sessionsEnded += end.ended;
    } catch (_) { /* the credential expires by itself */ }
  }

  async function run() {
    const button = document.getElementById("run");
    const state = document.getElementById("state");
    const body = document.querySelector("#results tbody");
    button.disabled = true;
    body.replaceChildren();
    window.turndSelftest = { state: "running", results: [], error: null, usernames: [], sessionsEnded: 0 };
    try {
      // One credential per URI, minted just before its test and ended right after it.
      state.textContent = "minting a credential\u2026";
      let cred = await post("/selftest/credential", {});
      // Relay-only pairs test TURN URIs; a stun: entry has nothing to relay through.
      const uris = cred.uris.filter((u) => /^turns?:/i.test(u));
      for (let i = 0; i < uris.length; i++) {
        const uri = uris[i];
        if (i > 0) cred = await post("/selftest/credential", {});
        window.turndSelftest.usernames.push(cred.username);
        state.textContent = `testing ${uri}\u2026`;
        const { res, pcs, media } = await runOne(uri, cred);
        res.server = res.connected ? await serverView(cred, res) : null;
        // The server ends the allocations first (so the credential's sessions are gone even
        // if this browser never deallocates), then the connections close.
        await endRun(cred);
        pcs.forEach((pc) => pc.close());
        media.stop();
        window.turndSelftest.results.push(res);
        body.append(row(res));
      }
      const ok = window.turndSelftest.results.filter((r) => r.connected).length;
      state.textContent = `done: ${ok} of ${uris.length} connected`;
    } catch (e) {
      window.turndSelftest.error = String(e && e.message ? e.message : e);
      state.textContent = `self-test failed: ${window.turndSelftest.error}`;
    } finally {
      window.turndSelftest.state = "done";
      button.disabled = false;
    }
  }

  document.getElementById("run").addEventListener("click", run);
})();
