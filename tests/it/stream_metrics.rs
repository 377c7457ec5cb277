//! `/metrics` exports the TCP/TLS listeners' state with bounded labels: open connections by
//! transport, connections refused by the cap that refused them, timeouts by kind, handshake
//! failures and write-queue drops; allocations made over TCP and TLS are counted in
//! `turn_total_allocations{type="TCP"|"TLS"}`.

use crate::admin_http;
use crate::common;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use admin_http::{TOKEN, free_tcp_port, scrape_parsed};
use common::stream::{StreamClient, TempDir, TestCert, relayed, tcp_connect};
use common::{TestServer, peer_attr, peer_socket, udp_transport};
use stun::message::{METHOD_ALLOCATE, METHOD_CREATE_PERMISSION};

const GUARD: Duration = Duration::from_secs(30);

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no series {key} in {m:#?}"))
}

/// Scrapes until `key` has `want` (the server updates some counters as a connection ends).
fn until(admin: SocketAddr, key: &str, want: f64) -> HashMap<String, f64> {
    let deadline = Instant::now() + GUARD;
    loop {
        let m = scrape_parsed(admin);
        if get(&m, key) == want || Instant::now() > deadline {
            assert_eq!(get(&m, key), want, "{key}");
            return m;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the server closes `s` within `within` (reading and discarding what comes).
fn closed_within(s: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::{ErrorKind, Read};
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// turnd with TLS, the admin listener and `config` as its config file.
fn start(dir: &TempDir, cert: &TestCert, config: &str) -> (TestServer, SocketAddr, SocketAddr) {
    let tls: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let path = dir.write("turnd.toml", config);
    let server = TestServer::start(
        "127.0.0.1",
        &[
            "--config",
            path.to_str().unwrap(),
            "--allow-peer",
            "127.0.0.1/32",
            "--tls-listen",
            &tls.to_string(),
            "--cert",
            cert.cert.to_str().unwrap(),
            "--key",
            cert.key.to_str().unwrap(),
            "--admin-listen",
            &admin.to_string(),
            "--admin-token",
            TOKEN,
        ],
    );
    (server, tls, admin)
}

#[test]
fn stream_allocations_connections_and_refusals_are_counted() {
    let dir = TempDir::new("stream-metrics");
    let cert = TestCert::new(&dir);
    let (server, tls, admin) = start(&dir, &cert, "[tcp]\nmax-connections-per-ip = 2\n");
    let m = scrape_parsed(admin);
    for transport in ["tcp", "tls"] {
        assert_eq!(
            get(
                &m,
                &format!("turnd_stream_connections{{transport=\"{transport}\"}}")
            ),
            0.0
        );
    }

    let mut over_tcp = StreamClient::tcp(server.addr);
    assert_eq!(
        over_tcp.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        None
    );
    let mut over_tls = StreamClient::tls(tls, cert.client_config(true, &[]));
    assert_eq!(
        over_tls.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        None
    );
    let m = scrape_parsed(admin);
    assert_eq!(get(&m, "turn_total_allocations{type=\"TCP\"}"), 1.0);
    assert_eq!(get(&m, "turn_total_allocations{type=\"TLS\"}"), 1.0);
    assert_eq!(get(&m, "turn_total_allocations{type=\"UDP\"}"), 0.0);
    assert_eq!(get(&m, "turnd_stream_connections{transport=\"tcp\"}"), 1.0);
    assert_eq!(get(&m, "turnd_stream_connections{transport=\"tls\"}"), 1.0);
    assert_eq!(get(&m, "turnd_stream_connections_accepted_total"), 2.0);

    // A third connection from 127.0.0.1 is over tcp.max-connections-per-ip.
    let mut third = StreamClient::tcp(server.addr);
    assert!(third.closed_within(GUARD), "refused connection closed");
    let m = until(
        admin,
        "turnd_stream_connections_refused_total{limit=\"per_ip\"}",
        1.0,
    );
    assert_eq!(
        get(
            &m,
            "turnd_stream_connections_refused_total{limit=\"total\"}"
        ),
        0.0
    );
    assert_eq!(get(&m, "turnd_stream_connections{transport=\"tcp\"}"), 1.0);

    // Closing a connection ends its allocation and its count.
    drop(over_tls);
    let m = until(admin, "turnd_stream_connections{transport=\"tls\"}", 0.0);
    let m = if get(&m, "turn_total_allocations{type=\"TLS\"}") == 0.0 {
        m
    } else {
        until(admin, "turn_total_allocations{type=\"TLS\"}", 0.0)
    };
    assert_eq!(get(&m, "turn_total_allocations{type=\"TCP\"}"), 1.0);
    drop(over_tcp);
    until(admin, "turnd_stream_connections{transport=\"tcp\"}", 0.0);
    until(admin, "turn_total_allocations{type=\"TCP\"}", 0.0);
}

#[test]
fn timeouts_and_handshake_failures_are_counted_by_kind() {
    let dir = TempDir::new("stream-timeouts");
    let cert = TestCert::new(&dir);
    let (server, tls, admin) = start(
        &dir,
        &cert,
        "[tcp]\nauth-timeout = 1\n[tls]\nhandshake-timeout = 1\n",
    );
    // A TCP connection that never authenticates.
    let mut idle_tcp = StreamClient::tcp(server.addr);
    assert!(idle_tcp.closed_within(GUARD));
    until(admin, "turnd_stream_timeouts_total{kind=\"auth\"}", 1.0);
    // A TLS connection that never sends its ClientHello.
    let mut silent = tcp_connect(tls);
    assert!(
        closed_within(&mut silent, GUARD),
        "silent TLS connection closed"
    );
    let m = until(
        admin,
        "turnd_stream_timeouts_total{kind=\"handshake\"}",
        1.0,
    );
    assert_eq!(get(&m, "turnd_stream_timeouts_total{kind=\"idle\"}"), 0.0);
    assert_eq!(get(&m, "turnd_stream_handshake_failures_total"), 0.0);
    // Not TLS at all on the TLS port: a failed handshake, not a timeout.
    let mut garbage = tcp_connect(tls);
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let m = until(admin, "turnd_stream_handshake_failures_total", 1.0);
    assert_eq!(
        get(&m, "turnd_stream_timeouts_total{kind=\"handshake\"}"),
        1.0
    );
}

#[test]
fn write_queue_drops_are_counted() {
    let dir = TempDir::new("stream-queue-drops");
    let cert = TestCert::new(&dir);
    let (server, _tls, admin) = start(&dir, &cert, "[tcp]\nwrite-queue-bytes = 65600\n");
    let mut c = StreamClient::tcp(server.addr);
    let alloc = c.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(alloc.code(), None);
    let relay = relayed(&alloc);
    let peer = peer_socket("127.0.0.1");
    let r = c.request(
        METHOD_CREATE_PERMISSION,
        &[peer_attr(peer.local_addr().unwrap())],
    );
    assert_eq!(r.code(), None);
    // The client reads nothing: once the socket buffers and the queue are full, messages
    // are dropped. Bounded: at most 40 rounds of 1000 datagrams.
    let payload = [0x5Au8; 1000];
    let mut dropped = 0.0;
    for _ in 0..40 {
        for i in 0..1000 {
            let _ = peer.send_to(&payload, relay);
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        dropped = get(
            &scrape_parsed(admin),
            "turnd_stream_write_queue_drops_total",
        );
        if dropped > 0.0 {
            break;
        }
    }
    assert!(dropped > 0.0, "no write-queue drop counted");
    drop(c);
}
