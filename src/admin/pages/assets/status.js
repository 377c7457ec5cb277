// The status page: polls /status.json (sessions, totals, the server's samples of the last
// hour) and /cluster (when the server is in a fleet), and draws the plot as inline SVG.
"use strict";
(function () {
  const REFRESH_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  const prev = new Map(); // session id -> {bytes, t}
  let lastBandwidth = new Map();

  const el = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  };
  const bytes = (n) => {
    const u = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
  };
  const bps = (n) => {
    const u = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s"];
    let i = 0;
    while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
  };
  const age = (s) => {
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  };

  // Call quality as the server sees it (present once the server measures it).
  function quality(q) {
    if (!q) return el("span", "\u2013", "muted");
    const parts = [];
    if (q.state) parts.push(q.state);
    if (q.client_rtt_ms != null) parts.push(`client RTT ${q.client_rtt_ms} ms`);
    if (q.peer_rtt_ms != null) parts.push(`peer RTT ${q.peer_rtt_ms} ms`);
    for (const s of q.streams || []) {
      const loss = s.loss_ratio != null ? `${(s.loss_ratio * 100).toFixed(1)}% lost` : "";
      const jit = s.jitter_ms != null ? `jitter ${s.jitter_ms} ms` : "";
      const fps = s.fps != null ? `${s.fps} fps` : "";
      parts.push([s.kind, s.direction, s.bitrate_bps != null ? bps(s.bitrate_bps) : "", loss, jit, fps]
        .filter(Boolean).join(" "));
    }
    const bad = q.state && !/^(ok|good|connected|active)$/i.test(q.state);
    return el("span", parts.join("; "), bad ? "bad" : "");
  }

  function totals(d) {
    const t = d.totals;
    const box = document.getElementById("totals");
    box.replaceChildren();
    const card = (k, v) => {
      const c = el("div", null, "card");
      c.append(el("div", v, "v"), el("div", k, "k"));
      box.append(c);
    };
    const latest = d.history.samples;
    let now = null;
    if (latest.length >= 2) {
      const [a, b] = latest.slice(-2);
      if (b[0] > a[0]) now = Math.max(0, (b[1] - a[1]) * 8 / (b[0] - a[0]));
    }
    card("allocations", t.allocations);
    card("UDP / TCP / TLS", `${t.allocations_udp} / ${t.allocations_tcp} / ${t.allocations_tls}`);
    card("relayed bandwidth", now == null ? "\u2013" : bps(now));
    card("relayed in all", bytes(t.relayed_bytes));
    card("allocations made", t.allocations_created);
    card("dropped packets", t.dropped);
    card("auth failures", t.auth_failures);
    card("uptime", age(d.uptime_seconds));
  }

  function twoLines(a, b) {
    const td = el("td", null, "num");
    td.append(el("div", a), el("div", b));
    return td;
  }

  function sessions(d) {
    const body = document.querySelector("#sessions tbody");
    body.replaceChildren();
    const t = performance.now();
    const seen = new Map();
    for (const s of d.sessions) {
      const b = s.bytes_to_peer + s.bytes_from_peer;
      const p = prev.get(s.id);
      let rate = lastBandwidth.get(s.id);
      if (p && t > p.t) rate = Math.max(0, ((b - p.bytes) * 8 * 1000) / (t - p.t));
      seen.set(s.id, { bytes: b, t });
      if (rate !== undefined) lastBandwidth.set(s.id, rate);
      const tr = el("tr");
      tr.dataset.id = s.id;
      tr.append(
        el("td", s.user),
        el("td", s.transport),
        el("td", age(s.age_seconds), "num"),
        twoLines(`\u2191 ${bytes(s.bytes_to_peer)}`, `\u2193 ${bytes(s.bytes_from_peer)}`),
        el("td", rate === undefined ? "\u2026" : bps(rate), "num"),
      );
      const q = el("td");
      q.append(quality(s.quality));
      tr.append(q, el("td", s.client, "hide-narrow"));
      body.append(tr);
    }
    prev.clear();
    for (const [k, v] of seen) prev.set(k, v);
    for (const k of [...lastBandwidth.keys()]) if (!seen.has(k)) lastBandwidth.delete(k);
    document.getElementById("session-count").textContent = `(${d.sessions.length})`;
    if (d.sessions.length === 0) {
      const tr = el("tr");
      const td = el("td", "No live sessions.", "muted");
      td.colSpan = 7;
      tr.append(td);
      body.append(tr);
    }
  }

  // The plot: bandwidth (left scale) and allocations (right scale) over the last hour.
  function plot(d) {
    // Drawn at the box's own width, so its text stays readable on a phone.
    const box = document.getElementById("plot");
    const W = Math.max(320, Math.min(1100, box.clientWidth || 720));
    const H = W < 500 ? 200 : 240, L = 74, R = 34, T = 10, B = 24;
    const end = d.now_unix;
    const first = d.history.samples.length ? d.history.samples[0][0] : end;
    // The last hour, or since the first sample when the server is younger (5 min at least).
    const start = Math.max(end - 3600, Math.min(first, end - 300));
    const span = end - start;
    const samples = d.history.samples.filter((s) => s[0] >= start);
    const bw = [];
    for (let i = 1; i < samples.length; i++) {
      const [a, b] = [samples[i - 1], samples[i]];
      if (b[0] > a[0]) bw.push([b[0], Math.max(0, ((b[1] - a[1]) * 8) / (b[0] - a[0]))]);
    }
    const al = samples.map((s) => [s[0], s[2]]);
    const maxBw = Math.max(1, ...bw.map((p) => p[1]));
    // Whole allocations at each of the four grid lines.
    const maxAl = Math.max(4, Math.ceil(Math.max(0, ...al.map((p) => p[1])) / 4) * 4);
    const x = (t) => L + ((t - start) / span) * (W - L - R);
    const y = (v, max) => T + (1 - v / max) * (H - T - B);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "relayed bandwidth and allocations, last hour");
    const add = (tag, attrs, text) => {
      const n = document.createElementNS(SVG, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
      if (text !== undefined) n.textContent = text;
      svg.append(n);
      return n;
    };
    for (let i = 0; i <= 4; i++) {
      const yy = T + (i / 4) * (H - T - B);
      add("line", { x1: L, x2: W - R, y1: yy, y2: yy, stroke: "#dde2e7", "stroke-width": 1 });
      add("text", { x: L - 4, y: yy + 4, "text-anchor": "end", "font-size": 11, fill: "#2463b0" },
        bps(maxBw * (1 - i / 4)));
      add("text", { x: W - R + 4, y: yy + 4, "font-size": 11, fill: "#b5670d" },
        String(Math.round(maxAl * (1 - i / 4))));
    }
    const ago = (secs) => secs >= 60 ? `\u2212${Math.round(secs / 60)} min` : `\u2212${secs} s`;
    for (const f of [0, 0.5, 1]) {
      const t = start + f * span;
      add("text", { x: x(t), y: H - 6, "text-anchor": f === 0 ? "start" : f === 1 ? "end" : "middle",
                    "font-size": 11, fill: "#5b6670" }, f === 1 ? "now" : ago(Math.round(end - t)));
    }
    const line = (pts, max, color, name) => {
      const p = add("polyline", {
        points: pts.map(([t, v]) => `${x(t).toFixed(1)},${y(v, max).toFixed(1)}`).join(" "),
        fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round",
      });
      p.dataset.series = name;
      p.dataset.points = String(pts.length);
      // The latest value as a dot, so a single sample shows too.
      if (pts.length) {
        const [t, v] = pts[pts.length - 1];
        add("circle", { cx: x(t).toFixed(1), cy: y(v, max).toFixed(1), r: 3, fill: color });
      }
    };
    line(bw, maxBw, "#2463b0", "bandwidth");
    line(al, maxAl, "#b5670d", "allocations");
    if (samples.length < 2) {
      add("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#5b6670", "font-size": 13 },
        `collecting samples (every ${d.history.interval_seconds} s)`);
    }
    document.getElementById("plot").replaceChildren(svg);
    return { bandwidthPoints: bw.length, allocationPoints: al.length,
             maxBps: bw.length ? Math.max(...bw.map((p) => p[1])) : 0,
             maxAllocations: al.length ? Math.max(...al.map((p) => p[1])) : 0 };
  }

  // Nodes of a fleet: shown when the server answers /cluster, left out otherwise.
  async function nodes() {
    const section = document.getElementById("nodes-section");
    let list = null;
    try {
      const r = await fetch("/cluster", { cache: "no-store" });
      if (r.ok) {
        const j = await r.json();
        list = Array.isArray(j) ? j : Array.isArray(j.nodes) ? j.nodes : null;
      }
    } catch (_) { list = null; }
    if (!list || list.length === 0) { section.hidden = true; return 0; }
    const keys = [...new Set(list.flatMap((n) => Object.keys(n)))].filter(
      (k) => typeof list.find((n) => n[k] != null)[k] !== "object");
    const head = el("tr");
    keys.forEach((k) => head.append(el("th", k.replace(/_/g, " "))));
    document.querySelector("#nodes thead").replaceChildren(head);
    const body = document.querySelector("#nodes tbody");
    body.replaceChildren();
    for (const n of list) {
      const tr = el("tr");
      keys.forEach((k) => tr.append(el("td", n[k] == null ? "" : n[k])));
      body.append(tr);
    }
    section.hidden = false;
    return list.length;
  }

  let ticks = 0;
  async function refresh() {
    let d;
    try {
      const r = await fetch("/status.json", { cache: "no-store" });
      if (r.status === 401) { location.assign("/status"); return; }
      d = await r.json();
    } catch (e) {
      document.getElementById("updated").textContent = `not reachable: ${e}`;
      return;
    }
    totals(d);
    sessions(d);
    const p = plot(d);
    const n = ticks++ % 5 === 0 || window.turndStatus === undefined
      ? await nodes() : (window.turndStatus.nodes || 0);
    document.getElementById("updated").textContent =
      `updated ${new Date(d.now_unix * 1000).toLocaleTimeString()}`;
    window.turndStatus = { updates: ticks, sessions: d.sessions.length, plot: p, nodes: n,
                           totals: d.totals };
  }
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
