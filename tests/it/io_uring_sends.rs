//! Sends through io_uring (`server.udp-io-uring`, on by default) through the real server.
//! Eight allocations on one worker relay to one peer at once. A round's datagrams leave
//! from eight relay sockets, one each: with io_uring, the server hands them to the kernel
//! together, and `turnd_udp_io_uring_messages_total` counts them. Every datagram arrives
//! once and whole, over IPv4 and IPv6. With `--no-udp-io-uring` the same traffic arrives
//! the same way and the counter stays at zero. On a kernel that refuses io_uring, the
//! server falls back to `sendmmsg` and the counter stays at zero too; the test checks that
//! instead. Each worker holds one ring, and none with `--no-udp-io-uring`, counted among the
//! server's open descriptors.

use crate::admin_http;
use crate::common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use admin_http::{TOKEN, channel_bind_attrs, channel_data, free_tcp_port, scrape_parsed};
use common::{RawClient, allocate_same_family, peer_socket};
use stun::message::METHOD_CHANNEL_BIND;

const CLIENTS: usize = 8;
const CHANNEL: u16 = 0x4001;
/// Rounds at most: the first round whose datagrams the server reads in one go uses the
/// ring; a loaded machine may need a few.
const MAX_ROUNDS: usize = 200;

/// Whether this kernel lets a process set up an io_uring that can send (as turnd probes).
fn kernel_io_uring() -> bool {
    let Ok(ring) = io_uring::IoUring::new(8) else {
        return false;
    };
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).is_ok()
        && probe.is_supported(io_uring::opcode::SendMsg::CODE)
        && ring.params().is_feature_skip_cqe_on_success()
}

/// Relays rounds of one datagram per client until a round went through the ring (or
/// [`MAX_ROUNDS`] passed, or, with `stop_early` false, all rounds); returns the io_uring
/// counter and the rounds sent.
fn relay_rounds(ip: &str, extra: &[&str], stop_early: bool) -> (f64, usize) {
    let allow = if ip.contains(':') {
        "::1/128"
    } else {
        "127.0.0.1/32"
    };
    let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let admin_s = admin.to_string();
    // One worker, so that one read of the listener holds datagrams of several allocations.
    let mut args = vec![
        "--allow-peer",
        allow,
        "--workers",
        "1",
        "--admin-listen",
        admin_s.as_str(),
        "--admin-token",
        TOKEN,
    ];
    args.extend_from_slice(extra);
    let server = common::TestServer::start(ip, &args);
    let peer = peer_socket(ip);
    let peer_addr = peer.local_addr().unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let clients: Vec<RawClient> = (0..CLIENTS)
        .map(|_| {
            let mut c = RawClient::new(server.addr, "alice", "wonderland");
            allocate_same_family(&mut c);
            let r = c.request(METHOD_CHANNEL_BIND, &channel_bind_attrs(CHANNEL, peer_addr));
            assert_eq!(r.code(), None, "channel bind");
            c
        })
        .collect();

    let mut rounds = 0;
    let mut counter = 0.0;
    while rounds < MAX_ROUNDS {
        // Payload: round, client, and a length that differs per client.
        let sent: Vec<Vec<u8>> = (0..CLIENTS)
            .map(|i| {
                let mut p = vec![i as u8; 40 + i];
                p[0] = rounds as u8;
                p
            })
            .collect();
        for (c, p) in clients.iter().zip(&sent) {
            c.sock
                .send_to(&channel_data(CHANNEL, p), server.addr)
                .unwrap();
        }
        // Every datagram reaches the peer once and whole.
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < CLIENTS && Instant::now() < deadline {
            if let Ok((n, _)) = peer.recv_from(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        let mut want = sent.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "round {rounds}: every datagram once and whole");
        rounds += 1;
        let m: HashMap<String, f64> = scrape_parsed(admin);
        counter = *m
            .get("turnd_udp_io_uring_messages_total")
            .expect("turnd_udp_io_uring_messages_total exported");
        if stop_early && counter > 0.0 {
            break;
        }
    }
    (counter, rounds)
}

#[test]
fn sends_from_many_relay_sockets_go_through_io_uring() {
    let available = kernel_io_uring();
    for ip in ["127.0.0.1", "::1"] {
        let (counter, rounds) = relay_rounds(ip, &[], available);
        if available {
            assert!(
                counter > 0.0,
                "{ip}: no send went through io_uring in {rounds} rounds"
            );
        } else {
            assert_eq!(counter, 0.0, "{ip}: this kernel refuses io_uring");
        }
    }
}

#[test]
fn without_io_uring_the_same_traffic_arrives_the_same() {
    for ip in ["127.0.0.1", "::1"] {
        let (counter, rounds) = relay_rounds(ip, &["--no-udp-io-uring"], false);
        assert_eq!(rounds, MAX_ROUNDS);
        assert_eq!(counter, 0.0, "{ip}: no send through io_uring");
    }
}

/// The io_uring instances process `pid` holds open.
fn rings_open(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy() == "anon_inode:[io_uring]")
        .count()
}

#[test]
fn each_worker_holds_one_ring_and_none_without_io_uring() {
    let server = common::TestServer::start("127.0.0.1", &["--workers", "2"]);
    let want = if kernel_io_uring() { 2 } else { 0 };
    assert_eq!(rings_open(server.pid()), want, "one ring per worker");
    drop(server);
    let server = common::TestServer::start("127.0.0.1", &["--workers", "2", "--no-udp-io-uring"]);
    assert_eq!(
        rings_open(server.pid()),
        0,
        "no ring with --no-udp-io-uring"
    );
}
