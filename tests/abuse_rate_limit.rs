//! Responses to unauthenticated requests are rate limited per source address: a source that
//! sends far more unauthenticated Allocates and Bindings than its budget (here 1/s, burst 5,
//! shared by the workers) gets fewer answers than requests, while another source is still answered and an
//! authenticated client is not limited at all.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{RawClient, TestServer, binding_request, peer_attr, udp_transport};
use stun::agent::TransactionId;
use stun::message::{
    CLASS_REQUEST, METHOD_ALLOCATE, METHOD_CREATE_PERMISSION, Message, MessageType,
};

fn allocate_request() -> Vec<u8> {
    let mut m = Message::new();
    m.build(&[
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
    ])
    .unwrap();
    let (t, v) = udp_transport();
    m.add(t, &v);
    m.raw.clone()
}

/// Sends `n` requests from `sockets` (round robin) and counts every answer that arrives
/// until the sockets have been quiet for a while. Returns (answers, seconds elapsed).
fn flood(sockets: &[UdpSocket], server: SocketAddr, n: usize) -> (usize, f64) {
    let start = Instant::now();
    for i in 0..n {
        let req = if i % 2 == 0 {
            allocate_request()
        } else {
            binding_request()
        };
        sockets[i % sockets.len()].send_to(&req, server).unwrap();
    }
    let mut answers = 0;
    let mut buf = [0u8; 1500];
    for s in sockets {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        // Bounded: at most n answers can come.
        while answers < n && s.recv_from(&mut buf).is_ok() {
            answers += 1;
        }
    }
    (answers, start.elapsed().as_secs_f64())
}

fn sockets_on(ip: &str, n: usize) -> Vec<UdpSocket> {
    (0..n).map(|_| UdpSocket::bind((ip, 0)).unwrap()).collect()
}

#[test]
fn unauthenticated_answers_are_limited_per_source() {
    let server = TestServer::start("127.0.0.1", &["--unauth-rate", "1", "--unauth-burst", "5"]);
    let requests = 400;
    let (answers, secs) = flood(&sockets_on("127.0.0.9", 16), server.addr, requests);
    // One table for all workers (TestServer runs two): at most burst + rate * elapsed.
    let bound = 5 + secs.ceil() as u64 + 1;
    println!(
        "{requests} requests from one source: {answers} answers in {secs:.2}s (bound {bound})"
    );
    assert!(
        answers < requests,
        "{answers} answers to {requests} requests"
    );
    assert!(answers as u64 <= bound, "{answers} > {bound}");
    assert!(answers >= 1, "the budget allows some answers");

    // Another source has its own budget.
    let other = UdpSocket::bind("127.0.0.10:0").unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    other.send_to(&binding_request(), server.addr).unwrap();
    let mut buf = [0u8; 1500];
    assert!(
        other.recv_from(&mut buf).is_ok(),
        "another source is answered"
    );

    // An authenticated client is not limited (its one 401 comes from 127.0.0.1's budget).
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    assert_eq!(c.request(METHOD_ALLOCATE, &[udp_transport()]).code(), None);
    for i in 0..30 {
        let p: SocketAddr = format!("8.8.8.{}:1", i % 8 + 1).parse().unwrap();
        assert_eq!(
            c.request(METHOD_CREATE_PERMISSION, &[peer_attr(p)]).code(),
            None
        );
    }
}

#[test]
fn limit_zero_answers_everything() {
    let server = TestServer::start("127.0.0.1", &["--unauth-rate", "0"]);
    let requests = 200;
    let (answers, _) = flood(&sockets_on("127.0.0.11", 4), server.addr, requests);
    assert_eq!(answers, requests);
}

/// The largest response/request size ratio of an unauthenticated request, measured on the
/// real server: a bare 20-byte Allocate (the 401) and a bare Binding.
#[test]
fn worst_amplification_through_the_real_server() {
    let server = TestServer::start("127.0.0.1", &[]);
    let sock = UdpSocket::bind("127.0.0.12:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut worst = 0.0f64;
    for (what, method) in [("Allocate", 0x0003u16), ("Binding", 0x0001)] {
        let mut req = vec![0u8; 20];
        req[0..2].copy_from_slice(&method.to_be_bytes());
        req[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
        req[8..20].copy_from_slice(&[0x42; 12]);
        sock.send_to(&req, server.addr).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = sock.recv_from(&mut buf).expect("an answer");
        let ratio = n as f64 / req.len() as f64;
        println!("{what}: {} -> {n} bytes, ratio {ratio:.2}", req.len());
        worst = worst.max(ratio);
    }
    println!("worst unauthenticated amplification on the real server: {worst:.2}");
    // The 401 carries ERROR-CODE (24), REALM (4 + the realm padded to 4), NONCE (56) and
    // PASSWORD-ALGORITHMS (12) after the 20-byte header, and nothing else.
    let expected_401 = 20 + 24 + 4 + common::REALM.len().next_multiple_of(4) + 56 + 12;
    assert!(
        (worst - expected_401 as f64 / 20.0).abs() < 1e-9,
        "{worst} != {expected_401}/20"
    );
}
