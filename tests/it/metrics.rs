//! `/metrics` parses as the Prometheus text format (with a parser, every sample line
//! accounted for) and its counters equal exactly what a test client and peer sent and
//! received through the real server: packets and bytes each way, requests and error
//! responses by method and code, auth failures, drops by reason, live gauges.

use crate::admin_http;
use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use admin_http::{TOKEN, channel_bind_attrs, channel_data, http, start_with_admin};
use common::{RawClient, peer_socket, udp_transport};
use stun::message::{METHOD_ALLOCATE, METHOD_CHANNEL_BIND};

/// Samples keyed by `name{k="v",...}` with labels sorted, so lookups do not depend on the
/// order the server writes them in.
fn scrape(admin: std::net::SocketAddr) -> HashMap<String, f64> {
    let (status, body) = http(admin, "GET", "/metrics", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let out = crate::admin_http::parse_metrics(&body);
    let sample_lines = body
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(out.len(), sample_lines, "every sample line parses:\n{body}");
    out
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no series {key} in {m:#?}"))
}

#[test]
fn metrics_count_exactly_what_was_relayed() {
    let (server, admin) = start_with_admin(&["--allow-peer", "127.0.0.1/32"]);
    let before = scrape(admin);
    assert_eq!(get(&before, "turn_total_allocations{type=\"UDP\"}"), 0.0);
    assert_eq!(get(&before, "turn_total_traffic_rcvp"), 0.0);

    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    // A long read timeout: a retransmitted request would count twice.
    c.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(c.request(METHOD_ALLOCATE, &[udp_transport()]).code(), None);
    let peer = peer_socket("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(
        c.request(METHOD_CHANNEL_BIND, &channel_bind_attrs(0x4000, peer_addr))
            .code(),
        None
    );

    // Client -> peer: 20 packets of growing size, each waited for, so none is lost.
    let mut buf = [0u8; 2048];
    let mut relayed = None;
    let mut sent_bytes = 0usize;
    for i in 0..20usize {
        let payload = vec![i as u8; 10 + i * 7];
        c.send_raw(&channel_data(0x4000, &payload));
        let (n, from) = peer.recv_from(&mut buf).expect("the peer receives");
        assert_eq!(n, payload.len());
        relayed = Some(from);
        sent_bytes += n;
    }
    let relayed = relayed.unwrap();
    // Peer -> client: 7 packets.
    let mut back_bytes = 0usize;
    for i in 0..7usize {
        let payload = vec![0xAB; 100 + i];
        peer.send_to(&payload, relayed).unwrap();
        let raw = c.recv_raw().expect("the client receives");
        assert_eq!(&raw[..2], &[0x40, 0x00]);
        back_bytes += payload.len();
    }
    // A ChannelData on a channel never bound: dropped as no_channel. The packet after it on
    // the same socket reaches the peer only once the first has been handled.
    c.send_raw(&channel_data(0x4001, b"nowhere"));
    c.send_raw(&channel_data(0x4000, b"fence"));
    let (n, _) = peer.recv_from(&mut buf).expect("the fence arrives");
    assert_eq!(&buf[..n], b"fence");
    sent_bytes += n;
    // A wrong password: one auth failure.
    let mut bad = RawClient::new(server.addr, "alice", "not-the-password");
    bad.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        bad.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        Some(401)
    );

    let m = scrape(admin);
    assert_eq!(get(&m, "turn_total_allocations{type=\"UDP\"}"), 1.0);
    assert_eq!(get(&m, "turn_total_allocations{type=\"TCP\"}"), 0.0);
    assert_eq!(get(&m, "turnd_allocations_created_total"), 1.0);
    assert_eq!(get(&m, "turnd_channels"), 1.0);
    assert_eq!(get(&m, "turnd_permissions"), 1.0);
    // From the client: 21 relayed + 1 dropped.
    assert_eq!(get(&m, "turn_total_traffic_rcvp"), 22.0);
    assert_eq!(
        get(&m, "turn_total_traffic_rcvb"),
        (sent_bytes + b"nowhere".len()) as f64
    );
    assert_eq!(get(&m, "turn_total_traffic_peer_sentp"), 21.0);
    assert_eq!(get(&m, "turn_total_traffic_peer_sentb"), sent_bytes as f64);
    assert_eq!(get(&m, "turn_total_traffic_peer_rcvp"), 7.0);
    assert_eq!(get(&m, "turn_total_traffic_peer_rcvb"), back_bytes as f64);
    assert_eq!(get(&m, "turn_total_traffic_sentp"), 7.0);
    assert_eq!(get(&m, "turn_total_traffic_sentb"), back_bytes as f64);
    assert_eq!(
        get(&m, "turnd_dropped_packets_total{reason=\"no_channel\"}"),
        1.0
    );
    assert_eq!(
        get(&m, "turnd_dropped_packets_total{reason=\"bandwidth\"}"),
        0.0
    );
    assert_eq!(
        get(&m, "turnd_dropped_packets_total{reason=\"no_permission\"}"),
        0.0
    );
    // Allocate: alice's unauthenticated try (401) and her real one; the wrong password's
    // unauthenticated try (401) and its bad integrity (401).
    assert_eq!(get(&m, "turnd_requests_total{method=\"allocate\"}"), 4.0);
    assert_eq!(
        get(
            &m,
            "turnd_error_responses_total{code=\"401\",method=\"allocate\"}"
        ),
        3.0
    );
    assert_eq!(
        get(&m, "turnd_requests_total{method=\"channel_bind\"}"),
        1.0
    );
    assert_eq!(get(&m, "turnd_auth_failures_total"), 1.0);
    assert!(get(&m, "stun_binding_request") >= 1.0, "readiness probes");
    assert_eq!(get(&m, "turnd_workers"), 2.0);
}
