//! A spoofed-source style flood of unauthenticated Allocates (many source addresses in
//! 127.0.0.0/8, many ports each, some with forged credentials) leaves the server's memory
//! flat: unauthenticated traffic creates no per-source state. Memory is the server's VmRSS
//! from /proc before and after, with a generous bound; a legitimate client then allocates.

use crate::common;

use std::net::UdpSocket;

use common::{RawClient, TestServer, udp_transport};
use stun::agent::TransactionId;
use stun::integrity::MessageIntegrity;
use stun::message::{CLASS_REQUEST, METHOD_ALLOCATE, Message, MessageType, Setter};
use stun::textattrs::{Nonce, Realm, Username};

fn vm_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS")
}

fn unauth_allocate(i: usize) -> Vec<u8> {
    let mut m = Message::new();
    m.build(&[
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
    ])
    .unwrap();
    let (t, v) = udp_transport();
    m.add(t, &v);
    if i.is_multiple_of(3) {
        // Forged credentials: a made-up nonce and a guessed password.
        let user = format!("user{i}");
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(Username::new(stun::attributes::ATTR_USERNAME, user.clone())),
            Box::new(Realm::new(
                stun::attributes::ATTR_REALM,
                common::REALM.into(),
            )),
            Box::new(Nonce::new(
                stun::attributes::ATTR_NONCE,
                format!("obMatJos2gAAA{i:016x}AAAAAAAAAAAAAAAAAAAAAA"),
            )),
            Box::new(MessageIntegrity::new_long_term_integrity(
                user,
                common::REALM.into(),
                "guess".into(),
            )),
        ];
        for s in setters {
            s.add_to(&mut m).unwrap();
        }
    }
    m.raw.clone()
}

/// Sends `per_socket` requests from each of `sources` addresses × `ports` sockets.
fn flood(server: &TestServer, sources: u8, ports: usize, per_socket: usize) -> usize {
    let mut sent = 0;
    for a in 0..sources {
        let ip = format!("127.0.{}.{}", 1 + a / 200, 2 + a % 200);
        for _ in 0..ports {
            let s = UdpSocket::bind((ip.as_str(), 0)).unwrap();
            for k in 0..per_socket {
                // A full socket buffer may drop some; that is fine for a flood.
                let _ = s.send_to(&unauth_allocate(sent + k), server.addr);
            }
            sent += per_socket;
        }
    }
    sent
}

#[test]
fn unauthenticated_flood_keeps_memory_flat() {
    let server = TestServer::start("127.0.0.1", &[]);
    let pid = server.pid();
    // Warm up allocator arenas and caches first.
    flood(&server, 10, 5, 20);
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    assert_eq!(c.request(METHOD_ALLOCATE, &[udp_transport()]).code(), None);
    let before = vm_rss_kb(pid);
    let sent = flood(&server, 250, 8, 20);
    // The server is still there and serving.
    let mut d = RawClient::new(server.addr, "alice", "wonderland");
    assert_eq!(d.request(METHOD_ALLOCATE, &[udp_transport()]).code(), None);
    let after = vm_rss_kb(pid);
    let growth = after.saturating_sub(before);
    println!(
        "{sent} unauthenticated Allocates from 250 addresses: VmRSS {before} kB -> {after} kB"
    );
    assert!(
        growth < 8 * 1024,
        "VmRSS grew by {growth} kB over {sent} requests"
    );
}
