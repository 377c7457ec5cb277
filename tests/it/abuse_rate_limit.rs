//! Answers to unauthenticated requests draw on a per-source byte budget: at most twice the
//! bytes received from the source plus an allowance (here 5 answers at once and 1 per second,
//! shared by the workers). A source that sends far more bare Allocates and Bindings than
//! that pays for gets fewer answers than requests, while another source is still answered
//! and an authenticated client is not limited at all.

use crate::common;

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

/// What a flood sent and got back.
struct Flood {
    answers: usize,
    bytes_in: usize,
    bytes_out: usize,
    secs: f64,
}

/// Sends `n` requests from `sockets` (round robin) and counts every answer that arrives
/// until the sockets have been quiet for a while.
fn flood(sockets: &[UdpSocket], server: SocketAddr, n: usize) -> Flood {
    let start = Instant::now();
    let mut bytes_in = 0;
    for i in 0..n {
        let req = if i % 2 == 0 {
            allocate_request()
        } else {
            binding_request()
        };
        bytes_in += req.len();
        sockets[i % sockets.len()].send_to(&req, server).unwrap();
    }
    let (mut answers, mut bytes_out) = (0, 0);
    let mut buf = [0u8; 1500];
    for s in sockets {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        // Bounded: at most n answers can come.
        while answers < n {
            let Ok((len, _)) = s.recv_from(&mut buf) else {
                break;
            };
            answers += 1;
            bytes_out += len;
        }
    }
    Flood {
        answers,
        bytes_in,
        bytes_out,
        secs: start.elapsed().as_secs_f64(),
    }
}

fn sockets_on(ip: &str, n: usize) -> Vec<UdpSocket> {
    (0..n).map(|_| UdpSocket::bind((ip, 0)).unwrap()).collect()
}

#[test]
fn unauthenticated_answers_are_limited_per_source() {
    let server = TestServer::start("127.0.0.1", &["--unauth-rate", "1", "--unauth-burst", "5"]);
    let requests = 400;
    let f = flood(&sockets_on("127.0.0.9", 16), server.addr, requests);
    // One table for all workers (TestServer runs two): at most twice the bytes received,
    // plus (burst + rate * elapsed) answers of the size of a 401.
    let allowance = (5 + f.secs.ceil() as usize + 1) * turnd::turn::challenge_len(common::REALM);
    let bound = 2 * f.bytes_in + allowance;
    println!(
        "{requests} requests from one source: {} answers, {} bytes in, {} bytes out in          {:.2}s (bound {bound})",
        f.answers, f.bytes_in, f.bytes_out, f.secs
    );
    assert!(
        f.answers < requests,
        "{} answers to {requests} requests",
        f.answers
    );
    assert!(f.bytes_out <= bound, "{} > {bound}", f.bytes_out);
    assert!(f.answers >= requests / 2, "Bindings pay for their answers");

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
    let f = flood(&sockets_on("127.0.0.11", 4), server.addr, requests);
    assert_eq!(f.answers, requests);
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
    // The 401 carries ERROR-CODE (24), REALM (4 + the realm padded to 4), NONCE (44) and
    // PASSWORD-ALGORITHMS (12) after the 20-byte header, and nothing else.
    let expected_401 = 20 + 24 + 4 + common::REALM.len().next_multiple_of(4) + 44 + 12;
    assert!(
        (worst - expected_401 as f64 / 20.0).abs() < 1e-9,
        "{worst} != {expected_401}/20"
    );
}
