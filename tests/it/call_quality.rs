//! Call quality through the real server: a client and a UDP peer exchange RTP-shaped
//! payloads (48 kHz audio from the client with known gaps, a duplicate and a reordered
//! pair; 90 kHz video from the peer with marker bits), RTCP, and STUN Binding checks both
//! ways that the far side answers after a known pause, plus one it never answers. The admin
//! API's `quality` object must show those figures: RTT per leg at least the pause, the
//! unanswered check, each stream's packets, loss, clock rate and kind; `/metrics` the same in
//! its families. With `--no-telemetry` the object is null.

use crate::admin_http;
use crate::common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use admin_http::{channel_bind_attrs, channel_data, get_json, scrape_parsed, start_with_admin};
use common::{RawClient, peer_socket, udp_transport};
use serde_json::Value;
use stun::attributes::ATTR_XOR_RELAYED_ADDRESS;
use stun::message::{METHOD_ALLOCATE, METHOD_CHANNEL_BIND};

const CHANNEL: u16 = 0x4000;
const AUDIO_SSRC: u32 = 0xA1A1_0001;
const VIDEO_SSRC: u32 = 0xB2B2_0002;

fn rtp(ssrc: u32, seq: u16, ts: u32, marker: bool, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x80;
    let pt = if ssrc == VIDEO_SSRC { 96 } else { 111 };
    p[1] = if marker { 0x80 | pt } else { pt };
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

/// A STUN Binding message header (no attributes): `ty` 0x0001 request, 0x0101 success.
fn binding(ty: u16, id: u8) -> Vec<u8> {
    let mut m = vec![0u8; 20];
    m[0..2].copy_from_slice(&ty.to_be_bytes());
    m[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    m[8..20].fill(id);
    m
}

/// The payload of the next ChannelData the client receives (skipping anything else).
fn recv_channel(c: &RawClient, deadline: Instant) -> Option<Vec<u8>> {
    while Instant::now() < deadline {
        if let Some(d) = c.recv_raw()
            && d.len() >= 4
            && d[0] & 0xC0 == 0x40
        {
            let n = usize::from(u16::from_be_bytes([d[2], d[3]]));
            return d.get(4..4 + n).map(<[u8]>::to_vec);
        }
    }
    None
}

fn recv_peer(peer: &UdpSocket, deadline: Instant) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok((n, _)) = peer.recv_from(&mut buf) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// Allocates, binds a channel to a fresh peer socket; returns the client, the peer and the
/// relayed address.
fn setup(server: SocketAddr) -> (RawClient, UdpSocket, SocketAddr) {
    let mut c = RawClient::new(server, "alice", "wonderland");
    let r = c.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(r.code(), None);
    let relayed = r.xor_addrs(ATTR_XOR_RELAYED_ADDRESS)[0];
    let peer = peer_socket("127.0.0.1");
    peer.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let r = c.request(METHOD_CHANNEL_BIND, &channel_bind_attrs(CHANNEL, peer_addr));
    assert_eq!(r.code(), None);
    (c, peer, relayed)
}

fn the_session(admin: SocketAddr) -> Value {
    let list = get_json(admin, "/sessions");
    let list = list.as_array().expect("a list");
    assert_eq!(list.len(), 1, "{list:?}");
    let id = list[0]["id"].as_str().unwrap().to_string();
    let one = get_json(admin, &format!("/sessions/{id}"));
    assert_eq!(one["id"], list[0]["id"]);
    one
}

fn stream(q: &Value, ssrc: u32) -> &Value {
    q["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["ssrc"] == ssrc)
        .unwrap_or_else(|| panic!("stream {ssrc:#x} in {q:#}"))
}

#[test]
fn admin_api_shows_rtt_per_leg_loss_jitter_and_streams() {
    let (server, admin) = start_with_admin(&["--allow-peer", "127.0.0.1/32"]);
    let (c, peer, relayed) = setup(server.addr);
    let deadline = Instant::now() + Duration::from_secs(30);

    let q = &the_session(admin)["quality"];
    assert_eq!(q["state"], "idle", "{q:#}");

    // A check towards the peer that the peer never answers.
    let unanswered_at = Instant::now();
    c.send_raw(&channel_data(CHANNEL, &binding(0x0001, 0xEE)));
    assert_eq!(recv_peer(&peer, deadline).unwrap(), binding(0x0001, 0xEE));
    assert_eq!(the_session(admin)["quality"]["state"], "connecting");

    // The peer leg: the client's check, answered by the peer after 30 ms.
    c.send_raw(&channel_data(CHANNEL, &binding(0x0001, 1)));
    assert_eq!(recv_peer(&peer, deadline).unwrap(), binding(0x0001, 1));
    std::thread::sleep(Duration::from_millis(30));
    peer.send_to(&binding(0x0101, 1), relayed).unwrap();
    assert_eq!(recv_channel(&c, deadline).unwrap(), binding(0x0101, 1));
    // The client leg: the peer's check, answered by the client after 20 ms.
    peer.send_to(&binding(0x0001, 2), relayed).unwrap();
    assert_eq!(recv_channel(&c, deadline).unwrap(), binding(0x0001, 2));
    std::thread::sleep(Duration::from_millis(20));
    c.send_raw(&channel_data(CHANNEL, &binding(0x0101, 2)));
    assert_eq!(recv_peer(&peer, deadline).unwrap(), binding(0x0101, 2));

    let q = &the_session(admin)["quality"];
    assert_eq!(q["state"], "connected", "{q:#}");
    let peer_rtt = q["peer_rtt_ms"]["recent"].as_f64().unwrap();
    let client_rtt = q["client_rtt_ms"]["recent"].as_f64().unwrap();
    assert!((30.0..5000.0).contains(&peer_rtt), "peer leg {peer_rtt} ms");
    assert!(
        (20.0..5000.0).contains(&client_rtt),
        "client leg {client_rtt} ms"
    );
    assert_eq!(q["peer_rtt_ms"]["smoothed"], q["peer_rtt_ms"]["recent"]);
    assert_eq!(q["checks_unanswered"], 0);

    // Media: 2.5 s of client audio at 100 packets a second with timestamps from the clock
    // (48 kHz), 10 sequence numbers skipped, one packet sent twice, two swapped; peer video
    // at 30 frames a second (90 kHz), 2 packets a frame, the second with the marker.
    peer.set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let start = Instant::now();
    let (mut audio_sent, mut video_sent) = (0u64, 0u64);
    let mut held: Option<Vec<u8>> = None;
    let mut frame = 0u32;
    for i in 0..250u16 {
        let at = start + Duration::from_millis(10 * u64::from(i));
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let ts = (start.elapsed().as_micros() as u64 * 48 / 1000) as u32;
        let seq = 1000 + i;
        if i % 25 != 10 {
            let p = rtp(AUDIO_SSRC, seq, ts, false, 160);
            if i == 100 {
                // Held back and sent after the next one: reordered, not lost.
                held = Some(p);
            } else {
                c.send_raw(&channel_data(CHANNEL, &p));
                audio_sent += 1;
                if let Some(h) = held.take() {
                    c.send_raw(&channel_data(CHANNEL, &h));
                    audio_sent += 1;
                }
                if i == 200 {
                    c.send_raw(&channel_data(CHANNEL, &p));
                    audio_sent += 1;
                }
            }
        }
        // A frame every ~33 ms.
        if i % 3 == 0 {
            let vts = (start.elapsed().as_micros() as u64 * 90 / 1000) as u32;
            for k in 0..2u16 {
                let seq = (frame * 2) as u16 + k;
                peer.send_to(&rtp(VIDEO_SSRC, seq, vts, k == 1, 300), relayed)
                    .unwrap();
                video_sent += 1;
            }
            frame += 1;
        }
        if i % 50 == 0 {
            // An RTCP sender report of the audio SSRC.
            let mut sr = vec![0x80, 200, 0, 6];
            sr.extend(AUDIO_SSRC.to_be_bytes());
            sr.resize(28, 0);
            c.send_raw(&channel_data(CHANNEL, &sr));
        }
        // Keep the peer's socket drained.
        let mut buf = [0u8; 2048];
        while peer.recv_from(&mut buf).is_ok() {}
    }

    let s = the_session(admin);
    let q = &s["quality"];
    assert_eq!(q["state"], "media_flowing", "{q:#}");
    let a = stream(q, AUDIO_SSRC);
    assert_eq!(a["direction"], "to_peer");
    assert_eq!(a["packets"], audio_sent, "{a:#}");
    assert_eq!(a["bytes"], audio_sent * 160);
    assert_eq!(a["lost"], 10, "{a:#}");
    let ratio = a["loss_ratio"].as_f64().unwrap();
    assert!((0.035..0.045).contains(&ratio), "{ratio}");
    assert_eq!(a["clock_rate"], 48_000, "{a:#}");
    assert_eq!(a["kind"], "audio");
    assert!(a["jitter_ms"].as_f64().unwrap() >= 0.0);
    assert!(a["bitrate_bps"].as_u64().unwrap() > 0, "{a:#}");
    assert_eq!(a["rtcp"]["sr"], 5, "{a:#}");
    let v = stream(q, VIDEO_SSRC);
    assert_eq!(v["direction"], "to_client");
    assert_eq!(v["packets"], video_sent);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["clock_rate"], 90_000, "{v:#}");
    assert_eq!(v["kind"], "video");
    assert!(v["fps"].as_f64().unwrap() > 5.0, "{v:#}");
    assert_eq!(q["payloads"]["to_peer"]["rtcp"], 5);
    assert_eq!(q["payloads"]["to_peer"]["rtp"], audio_sent);

    let m = scrape_parsed(admin);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k}"));
    assert_eq!(get("turnd_quality_rtt_seconds_count{leg=\"peer\"}"), 1.0);
    assert_eq!(get("turnd_quality_rtt_seconds_count{leg=\"client\"}"), 1.0);
    assert!(get("turnd_quality_rtt_seconds_sum{leg=\"peer\"}") >= 0.030);
    assert_eq!(
        get("turnd_quality_payloads_total{class=\"rtp\",direction=\"to_peer\"}"),
        audio_sent as f64
    );
    assert_eq!(
        get("turnd_quality_rtcp_packets_total{direction=\"to_peer\",type=\"sr\"}"),
        5.0
    );
    // Lost packets are counted as windows close: some of the 10 by now, never more.
    let lost = get("turnd_quality_rtp_lost_total{direction=\"to_peer\",kind=\"audio\"}");
    assert!((1.0..=10.0).contains(&lost), "{lost}");
    assert!(get("turnd_quality_loss_ratio_count{direction=\"to_peer\",kind=\"audio\"}") >= 1.0);

    // The unanswered check times out 5 s after it was relayed.
    let due = unanswered_at + Duration::from_millis(5_300);
    if let Some(wait) = due.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    let q = &the_session(admin)["quality"];
    assert_eq!(q["checks_unanswered"], 1, "{q:#}");
    assert_eq!(q["peer_rtt_ms"]["unanswered"], 1);
    assert_eq!(q["client_rtt_ms"]["unanswered"], 0);
}

#[test]
fn telemetry_off_shows_no_quality() {
    let (server, admin) = start_with_admin(&["--allow-peer", "127.0.0.1/32", "--no-telemetry"]);
    let (c, peer, _) = setup(server.addr);
    c.send_raw(&channel_data(CHANNEL, &rtp(1, 1, 1, false, 100)));
    assert!(recv_peer(&peer, Instant::now() + Duration::from_secs(10)).is_some());
    let s = the_session(admin);
    assert_eq!(s["packets_to_peer"], 1);
    assert_eq!(s["quality"], Value::Null);
    let m = scrape_parsed(admin);
    assert_eq!(
        m["turnd_quality_payloads_total{class=\"rtp\",direction=\"to_peer\"}"],
        0.0
    );
}
