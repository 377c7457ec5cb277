//! STUN Binding against the real server, over IPv4 and IPv6: the success response carries
//! XOR-MAPPED-ADDRESS (the client's own address) and FINGERPRINT and no SOFTWARE; an
//! unknown comprehension-required attribute gets 420 with UNKNOWN-ATTRIBUTES; a flood of
//! garbage gets no answer at all and leaves the server answering.

use crate::common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::TestServer;
use stun::agent::TransactionId;
use stun::attributes::{ATTR_CHANGE_REQUEST, ATTR_FINGERPRINT, ATTR_SOFTWARE, AttrType};
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::message::{
    BINDING_REQUEST, CLASS_ERROR_RESPONSE, CLASS_SUCCESS_RESPONSE, Getter, METHOD_BINDING, Message,
    Setter,
};
use stun::uattrs::UnknownAttributes;
use stun::xoraddr::XorMappedAddress;

fn client_socket(server: &TestServer) -> UdpSocket {
    let sock = UdpSocket::bind(if server.addr.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    })
    .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    sock
}

/// A Binding request with `extra` attributes, then FINGERPRINT.
fn binding(extra: &[(AttrType, Vec<u8>)]) -> Message {
    let mut m = Message::new();
    m.build(&[Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)])
        .unwrap();
    for (t, v) in extra {
        m.add(*t, v);
    }
    FINGERPRINT.add_to(&mut m).unwrap();
    m
}

/// Sends `req` (again after a lost datagram, a bounded number of times) and returns the
/// response with its transaction id, plus every other datagram that arrived meanwhile.
fn exchange(sock: &UdpSocket, server: SocketAddr, req: &Message) -> (Message, Vec<Vec<u8>>) {
    let mut others = Vec::new();
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        sock.send_to(&req.raw, server).unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                break;
            };
            assert_eq!(from, server, "datagram from an unexpected source");
            let mut msg = Message::new();
            if msg.unmarshal_binary(&buf[..n]).is_ok() && msg.transaction_id == req.transaction_id {
                return (msg, others);
            }
            others.push(buf[..n].to_vec());
        }
    }
    panic!("no response to the Binding request");
}

fn check_success(server: &TestServer) {
    let sock = client_socket(server);
    let req = binding(&[]);
    let (resp, others) = exchange(&sock, server.addr, &req);
    assert!(others.is_empty(), "unexpected datagrams: {others:?}");
    assert_eq!(resp.typ.method, METHOD_BINDING);
    assert_eq!(resp.typ.class, CLASS_SUCCESS_RESPONSE);

    let mut mapped = XorMappedAddress::default();
    mapped.get_from(&resp).expect("XOR-MAPPED-ADDRESS");
    assert_eq!(
        SocketAddr::new(mapped.ip, mapped.port),
        sock.local_addr().unwrap(),
        "the mapped address is the client's own"
    );
    assert!(resp.contains(ATTR_FINGERPRINT), "FINGERPRINT present");
    FINGERPRINT.check(&resp).expect("FINGERPRINT valid");
    // FINGERPRINT is the last attribute.
    assert_eq!(
        resp.attributes.0.last().map(|a| a.typ),
        Some(ATTR_FINGERPRINT)
    );
    assert!(!resp.contains(ATTR_SOFTWARE), "no SOFTWARE by default");
}

fn check_unknown_attribute(server: &TestServer) {
    let sock = client_socket(server);
    let req = binding(&[(ATTR_CHANGE_REQUEST, vec![0, 0, 0, 0])]);
    let (resp, _) = exchange(&sock, server.addr, &req);
    assert_eq!(resp.typ.method, METHOD_BINDING);
    assert_eq!(resp.typ.class, CLASS_ERROR_RESPONSE);
    let mut e = ErrorCodeAttribute::default();
    e.get_from(&resp).expect("ERROR-CODE");
    assert_eq!(e.code.0, 420);
    let mut u = UnknownAttributes(Vec::new());
    u.get_from(&resp).expect("UNKNOWN-ATTRIBUTES");
    assert_eq!(u.0, vec![ATTR_CHANGE_REQUEST]);
    FINGERPRINT
        .check(&resp)
        .expect("FINGERPRINT valid on the error");

    // An unknown comprehension-optional attribute (0x8000-0xFFFF) is ignored.
    let req = binding(&[(AttrType(0x80F0), vec![1, 2, 3, 4])]);
    let (resp, _) = exchange(&sock, server.addr, &req);
    assert_eq!(resp.typ.class, CLASS_SUCCESS_RESPONSE);
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Garbage of several kinds: random bytes, truncated Binding requests, a STUN header whose
/// length runs past the datagram or is not a multiple of four, malformed attributes after a
/// valid header, STUN responses and indications (never answered), and ChannelData from a
/// client without an allocation.
fn garbage(rng: &mut Rng, i: usize) -> Vec<u8> {
    match i % 7 {
        0 => {
            let n = rng.below(600);
            rng.bytes(n)
        }
        1 => {
            let full = binding(&[(AttrType(0x8055), rng.bytes(12))]).raw;
            let cut = rng.below(full.len());
            full[..cut].to_vec()
        }
        2 => {
            let mut m = binding(&[]).raw;
            m[2..4].copy_from_slice(&400u16.to_be_bytes());
            m
        }
        3 => {
            let mut m = binding(&[]).raw;
            m.truncate(20);
            let n = 4 * (1 + rng.below(30));
            m[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            m.extend(rng.bytes(n));
            // The first attribute claims more than the message holds.
            m[22..24].copy_from_slice(&[0xFF, 0xFF]);
            m
        }
        4 => {
            // A Binding success response and a Binding indication.
            let mut m = binding(&[]).raw;
            m[0..2].copy_from_slice(if rng.below(2) == 0 {
                &[0x01, 0x01]
            } else {
                &[0x00, 0x11]
            });
            m
        }
        5 => {
            let n = rng.below(100);
            let mut m = vec![0x40 + rng.below(0x3F) as u8, rng.next() as u8];
            m.extend((n as u16).to_be_bytes());
            m.extend(rng.bytes(n));
            m
        }
        _ => {
            // A length that is not a multiple of four.
            let mut m = binding(&[]).raw;
            m.truncate(20);
            let n = 4 * rng.below(8) + 1 + rng.below(3);
            m[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            m.extend(rng.bytes(n));
            m
        }
    }
}

fn check_garbage_is_ignored(server: &TestServer, seed: u64) {
    let sock = client_socket(server);
    let mut rng = Rng(seed);
    for i in 0..2000 {
        let g = garbage(&mut rng, i);
        sock.send_to(&g, server.addr).unwrap();
        if i % 200 == 199 {
            // Let the server drain its socket now and then rather than overflow it.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let req = binding(&[]);
    let (resp, mut others) = exchange(&sock, server.addr, &req);
    assert_eq!(resp.typ.class, CLASS_SUCCESS_RESPONSE, "still answering");
    // Whatever was still in flight.
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            others.push(buf[..n].to_vec());
        }
    }
    assert!(
        others.is_empty(),
        "garbage was answered {} times, first: {:02x?}",
        others.len(),
        others.first()
    );
    // And answers other clients, too.
    check_success(server);
}

#[test]
fn ipv4_binding_success() {
    check_success(&TestServer::start("127.0.0.1", &[]));
}

#[test]
fn ipv4_unknown_required_attribute_gets_420() {
    check_unknown_attribute(&TestServer::start("127.0.0.1", &[]));
}

#[test]
fn ipv4_garbage_gets_no_answer() {
    check_garbage_is_ignored(&TestServer::start("127.0.0.1", &[]), 0x5EED_0001);
}

#[test]
fn ipv6_binding_success() {
    check_success(&TestServer::start("::1", &[]));
}

#[test]
fn ipv6_unknown_required_attribute_gets_420() {
    check_unknown_attribute(&TestServer::start("::1", &[]));
}

#[test]
fn ipv6_garbage_gets_no_answer() {
    check_garbage_is_ignored(&TestServer::start("::1", &[]), 0x5EED_0002);
}
