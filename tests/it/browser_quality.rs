//! Call quality against a real WebRTC stack: headless Chromium (fake audio and video devices)
//! calls itself through turnd, both peer connections relay-only, and turnd's `quality` figures
//! are compared with what the browsers say about the same call, then with faults a UDP shim
//! injects on one leg. Uses the browser test's setup (`bash .ci/setup-browser.sh`; see
//! `browser.rs`); the driver is `tests/browser/call_quality.mjs`.
//!
//! The two allocations relay to each other inside turnd: a stream from browser 1 crosses
//! its allocation (A) towards the peer and browser 2's (B) towards the client. A's
//! `client_rtt_ms` is browser 1's leg, B's browser 2's; the two add up to the candidate
//! pair's round trip.

use crate::admin_http;
use crate::browser::{ONE_BROWSER, prerequisites, run_node_driver};

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use admin_http::{TOKEN, get_json, start_with_admin};
use serde_json::Value;

/// The session whose relayed addresses include `127.0.0.1:port`.
fn session_on_port(sessions: &Value, port: u64) -> &Value {
    let want = format!("127.0.0.1:{port}");
    sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["relayed"].as_array().unwrap().iter().any(|r| r == &want))
        .unwrap_or_else(|| panic!("no session relays on {want}: {sessions:#}"))
}

fn stream_packets(session: &Value, ssrc: &Value, direction: &str) -> u64 {
    session["quality"]["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| &s["ssrc"] == ssrc && s["direction"] == direction)
        .map(|s| s["packets"].as_u64().unwrap())
        .sum()
}

fn find_stream<'a>(session: &'a Value, ssrc: &Value, direction: &str) -> &'a Value {
    session["quality"]["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| &s["ssrc"] == ssrc && s["direction"] == direction)
        .unwrap_or_else(|| panic!("no stream {ssrc} {direction} in {session:#}"))
}

#[test]
fn turnd_figures_match_the_browsers_get_stats() {
    let chromium = prerequisites();
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let (server, admin) = start_with_admin(&["--allow-peer", "127.0.0.0/8"]);
    let url = format!("turn:127.0.0.1:{}?transport=udp", server.addr.port());
    let admin_url = format!("http://{admin}");
    let report = run_node_driver(
        "call_quality.mjs",
        &[
            &url,
            &url,
            "alice",
            "wonderland",
            chromium.to_str().unwrap(),
            "8000",
            &admin_url,
            TOKEN,
        ],
    );
    let pretty = serde_json::to_string_pretty(&report).unwrap_or_default();
    assert!(report["error"].is_null(), "driver error:\n{pretty}");
    let sessions = &report["sessions"];
    for (i, pc) in report["pcs"].as_array().unwrap().iter().enumerate() {
        let pair = &pc["pair"];
        let mine = session_on_port(sessions, pair["local"]["port"].as_u64().unwrap());
        let theirs = session_on_port(sessions, pair["remote"]["port"].as_u64().unwrap());
        let (qm, qt) = (&mine["quality"], &theirs["quality"]);

        // The two client legs add up to the pair's round trip (turnd's own hop between the
        // allocations adds nothing measurable): the latest samples against the browser's
        // latest, or the smoothed values against the browser's mean, whichever is closer.
        // The two sides sample at different moments, and the browser's figure also holds
        // its own handling of the answer, which a busy machine stretches by milliseconds:
        // within 5 ms plus half the browser's figure. (The fault test checks the client leg
        // to within 5 ms, against itself.)
        let ms = |q: &Value, k: &str| q["client_rtt_ms"][k].as_f64().unwrap();
        let recent = ms(qm, "recent") + ms(qt, "recent");
        let smoothed = ms(qm, "smoothed") + ms(qt, "smoothed");
        let current = pair["currentRoundTripTime"].as_f64().unwrap() * 1000.0;
        let mean = pair["totalRoundTripTime"].as_f64().unwrap() * 1000.0
            / pair["responsesReceived"].as_f64().unwrap();
        eprintln!(
            "pc{}: turnd client legs {recent:.2} ms (smoothed {smoothed:.2}), browser {current:.2} ms (mean {mean:.2})",
            i + 1
        );
        let close = |ours: f64, theirs: f64| (ours - theirs).abs() <= 5.0 + theirs / 2.0;
        assert!(
            close(recent, current) || close(smoothed, mean),
            "pc{}: client legs {recent:.2}/{smoothed:.2} ms vs browser {current:.2}/{mean:.2} ms\n{pretty}",
            i + 1
        );

        // Every RTP packet the browser sent on an SSRC (its RTX SSRC's included, as
        // Chromium counts them) crossed one of its allocations towards the peer and one of
        // the other's towards the client (the first packets may leave before ICE settles on
        // the final pair, so over all allocations).
        let all = sessions.as_array().unwrap();
        let total = |ssrc: &Value, dir: &str| -> u64 {
            all.iter().map(|s| stream_packets(s, ssrc, dir)).sum()
        };
        for out in pc["outbound"].as_array().unwrap() {
            let sent = out["packetsSent"].as_u64().unwrap();
            let (ssrc, rtx) = (&out["ssrc"], &out["rtxSsrc"]);
            let up = total(ssrc, "to_peer") + total(rtx, "to_peer");
            let down = total(ssrc, "to_client") + total(rtx, "to_client");
            let slack = 2 + sent / 100;
            assert!(
                up.abs_diff(sent) <= slack && down.abs_diff(sent) <= slack,
                "pc{} {} ssrc {ssrc}: browser sent {sent}, turnd saw {up} and {down}\n{pretty}",
                i + 1,
                out["kind"]
            );
            let s = find_stream(mine, ssrc, "to_peer");
            let kind = out["kind"].as_str().unwrap();
            assert_eq!(s["kind"], kind, "{s:#}");
            let rate = if kind == "audio" { 48_000 } else { 90_000 };
            assert_eq!(s["clock_rate"], rate, "{s:#}");
            assert_eq!(s["lost"], 0, "{s:#}");
        }
        // What the other browser received and lost.
        let other = &report["pcs"][1 - i];
        for inb in other["inbound"].as_array().unwrap() {
            if stream_packets(mine, &inb["ssrc"], "to_peer") == 0 {
                continue;
            }
            let s = find_stream(theirs, &inb["ssrc"], "to_client");
            assert_eq!(inb["packetsLost"], 0, "{inb:#}");
            assert_eq!(s["lost"], 0, "{s:#}");
        }
    }
}

/// What the shim does to datagrams from browser 1 towards turnd.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// Drop every 20th RTP packet of each SSRC (5%, exactly, per stream).
    loss: bool,
    delay_ms: u64,
    /// Extra delay drawn uniformly from 0 to this, per datagram (kept in order).
    jitter_ms: u64,
}

/// A UDP shim on loopback between browser 1 and turnd: one upstream socket per client
/// address, faults on the client-to-turnd direction only. Its threads end when dropped.
struct Shim {
    addr: SocketAddr,
    faults: Arc<Mutex<Faults>>,
    upstream: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// The SSRC of RTP carried in ChannelData, if that is what `d` is.
fn rtp_ssrc_in_channel_data(d: &[u8]) -> Option<u32> {
    if d.len() < 4 || d[0] & 0xC0 != 0x40 {
        return None;
    }
    let p = d.get(4..)?;
    let rtp = p.len() >= 12 && (128..=191).contains(&p[0]) && !(192..=223).contains(&p[1]);
    rtp.then(|| u32::from_be_bytes([p[8], p[9], p[10], p[11]]))
}

impl Shim {
    fn start(turnd: SocketAddr) -> Shim {
        let listen = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        listen
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = listen.local_addr().unwrap();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let upstream = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        // The delay line: datagrams leave in order, each not before its time.
        let (tx, rx) = mpsc::channel::<(Instant, Arc<UdpSocket>, Vec<u8>)>();
        let stop_d = stop.clone();
        let delay_line = std::thread::spawn(move || {
            while !stop_d.load(Ordering::Relaxed) {
                let Ok((at, sock, d)) = rx.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let _ = sock.send(&d);
            }
        });
        let (f, up, stop_l) = (faults.clone(), upstream.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut returns = Vec::new();
            let mut counts: HashMap<u32, u64> = HashMap::new();
            let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut buf = vec![0u8; 65536];
            while !stop_l.load(Ordering::Relaxed) {
                let Ok((n, from)) = listen.recv_from(&mut buf) else {
                    continue;
                };
                let sock = flows.entry(from).or_insert_with(|| {
                    let s = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
                    s.connect(turnd).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    up.lock().unwrap().push(s.local_addr().unwrap());
                    // turnd to the browser: untouched.
                    let (s2, l2, stop2) = (s.clone(), listen.clone(), stop_l.clone());
                    returns.push(std::thread::spawn(move || {
                        let mut b = vec![0u8; 65536];
                        while !stop2.load(Ordering::Relaxed) {
                            if let Ok(n) = s2.recv(&mut b) {
                                let _ = l2.send_to(&b[..n], from);
                            }
                        }
                    }));
                    s
                });
                let d = &buf[..n];
                let fl = *f.lock().unwrap();
                if let Some(ssrc) = rtp_ssrc_in_channel_data(d) {
                    let c = counts.entry(ssrc).or_default();
                    *c += 1;
                    if fl.loss && c.is_multiple_of(20) {
                        continue;
                    }
                }
                let mut delay = fl.delay_ms * 1000;
                if fl.jitter_ms > 0 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    delay += rng % (fl.jitter_ms * 1000 + 1);
                }
                let at = Instant::now() + Duration::from_micros(delay);
                let _ = tx.send((at, sock.clone(), d.to_vec()));
            }
            for r in returns {
                let _ = r.join();
            }
        });
        Shim {
            addr,
            faults,
            upstream,
            stop,
            threads: vec![delay_line, accept],
        }
    }

    fn set(&self, f: Faults) {
        *self.faults.lock().unwrap() = f;
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Per stream of one session: (packets, lost) by (ssrc, direction, kind), and the jitter.
type Streams = HashMap<(u64, String), (u64, u64, String, f64)>;

fn streams_of(s: &Value) -> Streams {
    s["quality"]["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                (
                    x["ssrc"].as_u64().unwrap(),
                    x["direction"].as_str().unwrap().to_string(),
                ),
                (
                    x["packets"].as_u64().unwrap(),
                    x["lost"].as_u64().unwrap(),
                    x["kind"].as_str().unwrap().to_string(),
                    x["jitter_ms"].as_f64().unwrap_or(0.0),
                ),
            )
        })
        .collect()
}

fn session_by_id(admin: SocketAddr, id: &str) -> Value {
    get_json(admin, &format!("/sessions/{id}"))
}

/// Loss ratio per stream between two snapshots of a session, for streams in `direction`
/// with at least `min` packets expected in between.
fn loss_between(a: &Streams, b: &Streams, direction: &str, min: u64) -> Vec<(u64, String, f64)> {
    b.iter()
        .filter(|((_, d), _)| d == direction)
        .filter_map(|((ssrc, _), (p1, l1, kind, _))| {
            let (p0, l0) = a
                .get(&(*ssrc, direction.to_string()))
                .map_or((0, 0), |v| (v.0, v.1));
            let expected = (p1 - p0) + (l1 - l0);
            (expected >= min).then(|| (*ssrc, kind.clone(), (l1 - l0) as f64 / expected as f64))
        })
        .collect()
}

/// Client-leg RTT samples of each group of sessions while `dur` passes (polled; a new
/// sample shows as a higher `samples` count). A browser's allocations (one per local
/// network) all measure its one leg; which of them the other browser's checks cross depends
/// on the pair it selected.
fn rtt_samples(admin: SocketAddr, groups: &[&[String]], dur: Duration) -> Vec<Vec<f64>> {
    let mut out = vec![Vec::new(); groups.len()];
    let mut seen: HashMap<String, u64> = HashMap::new();
    let end = Instant::now() + dur;
    while Instant::now() < end {
        for (i, ids) in groups.iter().enumerate() {
            for id in ids.iter() {
                let q = &session_by_id(admin, id)["quality"]["client_rtt_ms"];
                let n = q["samples"].as_u64().unwrap_or(0);
                let before = seen.entry(id.clone()).or_insert(n);
                if n > *before {
                    out[i].push(q["recent"].as_f64().unwrap());
                    *before = n;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    out
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn faults_on_one_leg_are_put_on_that_leg() {
    let chromium = prerequisites();
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let (server, admin) = start_with_admin(&["--allow-peer", "127.0.0.0/8"]);
    let shim = Shim::start(server.addr);
    let url1 = format!("turn:127.0.0.1:{}?transport=udp", shim.addr.port());
    let url2 = format!("turn:127.0.0.1:{}?transport=udp", server.addr.port());
    let admin_url = format!("http://{admin}");
    let chromium = chromium.to_str().unwrap().to_string();
    let driver = std::thread::spawn(move || {
        run_node_driver(
            "call_quality.mjs",
            &[
                &url1,
                &url2,
                "alice",
                "wonderland",
                &chromium,
                "60000",
                &admin_url,
                TOKEN,
            ],
        )
    });

    // The call is up when two allocations carry media both ways: browser 1's through the
    // shim (A), browser 2's directly (B). Each is its browser's allocation with the most RTP.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (a, b, all_a, all_b) = loop {
        assert!(Instant::now() < deadline, "no media through turnd");
        std::thread::sleep(Duration::from_millis(500));
        let list = get_json(admin, "/sessions");
        let upstream = shim.upstream.lock().unwrap().clone();
        let side = |via_shim: bool| {
            list.as_array()
                .unwrap()
                .iter()
                .filter(|s| {
                    let c: SocketAddr = s["client"].as_str().unwrap().parse().unwrap();
                    upstream.contains(&c) == via_shim
                })
                .collect::<Vec<_>>()
        };
        let busiest = |via_shim: bool| {
            side(via_shim)
                .into_iter()
                .filter(|s| s["quality"]["state"] == "media_flowing")
                .max_by_key(|s| s["packets_to_peer"].as_u64().unwrap())
                .map(|s| s["id"].as_str().unwrap().to_string())
        };
        let ids = |via_shim: bool| -> Vec<String> {
            side(via_shim)
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_string())
                .collect()
        };
        if let (Some(a), Some(b)) = (busiest(true), busiest(false)) {
            break (a, b, ids(true), ids(false));
        }
    };
    let legs: [&[String]; 2] = [&all_a, &all_b];
    // Let the streams settle (clock rates known), then a clean baseline.
    let base_rtt = rtt_samples(admin, &legs, Duration::from_secs(8));
    let (a0, b0) = (
        streams_of(&session_by_id(admin, &a)),
        streams_of(&session_by_id(admin, &b)),
    );

    // 1. 5% loss from browser 1 to turnd: A's streams towards the peer lose 5%; browser 2's
    //    uplink (B towards the peer) and browser 1's downlink (A towards the client) none.
    shim.set(Faults {
        loss: true,
        ..Faults::default()
    });
    let loss_rtt = rtt_samples(admin, &legs, Duration::from_secs(10));
    // Read while the loss is still on, so the figures cover exactly its span.
    let (a1, b1) = (
        streams_of(&session_by_id(admin, &a)),
        streams_of(&session_by_id(admin, &b)),
    );
    shim.set(Faults::default());
    let faulty = loss_between(&a0, &a1, "to_peer", 100);
    assert!(
        faulty.iter().any(|(_, k, _)| k == "audio") && faulty.iter().any(|(_, k, _)| k == "video"),
        "{faulty:?}"
    );
    for (ssrc, kind, r) in &faulty {
        eprintln!("A to_peer {kind} {ssrc}: loss {:.2}%", r * 100.0);
        assert!((0.04..=0.06).contains(r), "{kind} {ssrc}: loss {r}");
    }
    for (who, s0, s1, dir) in [("B", &b0, &b1, "to_peer"), ("A", &a0, &a1, "to_client")] {
        for (ssrc, kind, r) in loss_between(s0, s1, dir, 100) {
            assert!(
                r <= 0.005,
                "{who} {dir} {kind} {ssrc}: loss {r} on the clean leg"
            );
        }
    }

    // 2. +40 ms from browser 1 to turnd: browser 1's client leg (on its allocations) 40 ms
    //    longer, browser 2's unchanged.
    shim.set(Faults {
        delay_ms: 40,
        ..Faults::default()
    });
    let delayed = rtt_samples(admin, &legs, Duration::from_secs(16));
    shim.set(Faults::default());
    let before: Vec<Vec<f64>> = (0..2)
        .map(|i| [base_rtt[i].clone(), loss_rtt[i].clone()].concat())
        .collect();
    eprintln!("client-leg RTT samples before {before:?}, with +40 ms {delayed:?}");
    assert!(
        !before[0].is_empty() && !delayed[0].is_empty() && !delayed[1].is_empty(),
        "RTT samples: before {before:?}, delayed {delayed:?}"
    );
    let added = median(&delayed[0]) - median(&before[0]);
    assert!(
        (35.0..=45.0).contains(&added),
        "browser 1's client leg: +{added:.2} ms"
    );
    let b_before = if before[1].is_empty() {
        &delayed[1]
    } else {
        &before[1]
    };
    let b_added = median(&delayed[1]) - median(b_before);
    assert!(
        b_added.abs() <= 5.0,
        "browser 2's client leg moved by {b_added:.2} ms"
    );

    // 3. 0-80 ms of random delay from browser 1 to turnd: jitter on A's uplink audio. Wide
    // enough (about 27 ms expected) that a busy CI machine's few ms on every leg cannot
    // close the gap to the clean legs (seen: 8 ms on them while other tests ran).
    std::thread::sleep(Duration::from_secs(1));
    shim.set(Faults {
        jitter_ms: 80,
        ..Faults::default()
    });
    std::thread::sleep(Duration::from_secs(8));
    let (a3, b3) = (
        streams_of(&session_by_id(admin, &a)),
        streams_of(&session_by_id(admin, &b)),
    );
    shim.set(Faults::default());
    let jitter = |s: &Streams, dir: &str| {
        s.iter()
            .filter(|((_, d), v)| d == dir && v.2 == "audio")
            .map(|(_, v)| v.3)
            .fold(0.0, f64::max)
    };
    let (ja, jb, ja_down) = (
        jitter(&a3, "to_peer"),
        jitter(&b3, "to_peer"),
        jitter(&a3, "to_client"),
    );
    eprintln!("audio jitter: A to_peer {ja} ms, B to_peer {jb} ms, A to_client {ja_down} ms");
    // The shim's delays give about 27 ms (the mean gap between two uniform 0-80 ms draws);
    // a busy machine adds a few ms to every stream alike, so the clean ones are compared
    // with the faulty one rather than with a fixed bound.
    assert!(ja >= 5.0, "A's uplink audio jitter {ja} ms");
    assert!(
        ja >= 2.0 * jb.max(ja_down),
        "A's uplink audio jitter {ja} ms against the clean legs: B {jb} ms, A down {ja_down} ms"
    );

    let report = driver.join().expect("driver thread");
    assert!(report["error"].is_null(), "driver error: {report:#}");
    drop(shim);
}
