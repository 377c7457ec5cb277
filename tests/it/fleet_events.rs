//! Allocation events in a Redis Stream (`redis.events-stream`): an allocation's created,
//! refreshed and ended entries, the last with the bytes it relayed each way and the
//! session's call quality (state, RTT per leg, its RTP streams' loss and jitter), read back
//! with `redis-cli XRANGE`.

use std::time::Duration;

use crate::admin_http::{channel_bind_attrs, channel_data};
use crate::common::redis::{TestRedis, start_node, wait_until};
use crate::common::{RawClient, allocate_same_family, peer_socket};
use stun::attributes::ATTR_LIFETIME;
use stun::message::{METHOD_CHANNEL_BIND, METHOD_REFRESH};

/// The stream's entries as field/value pairs. `redis-cli` writing to a pipe prints one
/// item per line: an entry's id (`<ms>-<seq>`), then its fields and values in turn.
fn entries(redis: &TestRedis, stream: &str) -> Vec<Vec<(String, String)>> {
    let out = redis.cli(&["XRANGE", stream, "-", "+"]);
    let is_id = |l: &str| {
        l.split_once('-').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.chars().all(|c| c.is_ascii_digit())
                && b.chars().all(|c| c.is_ascii_digit())
        })
    };
    let mut all: Vec<Vec<String>> = Vec::new();
    for line in out.lines() {
        let in_pair = all.last().is_some_and(|e| e.len() % 2 == 1);
        if is_id(line) && !in_pair {
            all.push(Vec::new());
        } else if let Some(e) = all.last_mut() {
            e.push(line.to_owned());
        }
    }
    all.into_iter()
        .map(|kv| {
            kv.chunks(2)
                .filter(|p| p.len() == 2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect()
        })
        .collect()
}

fn field<'a>(e: &'a [(String, String)], k: &str) -> Option<&'a str> {
    e.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str())
}

#[test]
fn created_refreshed_and_ended_with_byte_counts() {
    let redis = TestRedis::start();
    let node = start_node(&redis, "events-stream = \"test/events\"", "", &[]);
    // The node captures events once it has joined.
    assert!(wait_until(Duration::from_secs(10), || {
        node.get_json("/cluster")["redis_up"] == serde_json::json!(true)
    }));

    let mut c = RawClient::new(node.addr(), "alice", "wonderland");
    allocate_same_family(&mut c);
    let peer = peer_socket("127.0.0.1");
    let r = c.request(
        METHOD_CHANNEL_BIND,
        &channel_bind_attrs(0x4000, peer.local_addr().unwrap()),
    );
    assert_eq!(r.code(), None);
    // Ten RTP packets of one stream (SSRC 0x12345678), sequence number 5 missing: the
    // relay sees one lost before it.
    for seq in (0u16..=10).filter(|s| *s != 5) {
        let mut rtp = [7u8; 100];
        rtp[..2].copy_from_slice(&[0x80, 0x60]);
        rtp[2..4].copy_from_slice(&seq.to_be_bytes());
        rtp[4..8].copy_from_slice(&(u32::from(seq) * 960).to_be_bytes());
        rtp[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        c.send_raw(&channel_data(0x4000, &rtp));
        let mut buf = [0u8; 200];
        peer.recv_from(&mut buf).expect("relayed to the peer");
    }
    let r = c.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 2, 0x58])]);
    assert_eq!(r.code(), None);
    let r = c.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]);
    assert_eq!(r.code(), None);

    let mut got = Vec::new();
    let all = wait_until(Duration::from_secs(10), || {
        got = entries(&redis, "test/events");
        got.len() >= 3
    });
    assert!(all, "events: {got:?}");
    let kinds: Vec<&str> = got.iter().filter_map(|e| field(e, "event")).collect();
    assert_eq!(kinds, ["created", "refreshed", "ended"], "{got:?}");
    for e in &got {
        assert_eq!(field(e, "user"), Some("alice"));
        assert_eq!(field(e, "node"), Some(node.addr().to_string().as_str()));
    }
    assert_eq!(field(&got[1], "lifetime"), Some("600"));
    let ended = &got[2];
    assert_eq!(field(ended, "bytes_to_peer"), Some("1000"), "{ended:?}");
    assert_eq!(field(ended, "packets_to_peer"), Some("10"));
    assert_eq!(field(ended, "reason"), Some("refreshed0"));
    assert!(field(ended, "quality_state").is_some(), "{ended:?}");
    assert_eq!(
        field(ended, "client_rtt_p50_ms"),
        Some("-1.0"),
        "no ICE checks crossed"
    );
    let streams = field(ended, "streams").unwrap_or_default();
    assert!(
        streams.starts_with("305419896/") && streams.contains("packets=10 lost=1 "),
        "{ended:?}"
    );
    assert!(
        field(&got[0], "quality_state").is_none(),
        "only the ended event"
    );
    let m = crate::admin_http::scrape_parsed(node.admin);
    assert_eq!(
        m.get("turnd_fleet_events_total{outcome=\"written\"}"),
        Some(&3.0)
    );
}
