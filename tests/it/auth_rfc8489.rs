//! RFC 8489 §9.2.4 details of the long-term credential mechanism, through the real server,
//! with requests built byte by byte and MACs computed here with the `hmac` crates:
//!
//! - the response carries MESSAGE-INTEGRITY-SHA256 when the request carried
//!   PASSWORD-ALGORITHMS and PASSWORD-ALGORITHM, MESSAGE-INTEGRITY otherwise, whichever
//!   integrity attribute the request itself used;
//! - a request naming its user only by USERHASH (which turnd does not support) is challenged
//!   with 401, REALM, NONCE and PASSWORD-ALGORITHMS, so the client can retry with USERNAME.

use crate::common;

use std::net::UdpSocket;
use std::time::Duration;

use common::TestServer;
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;

const ALLOCATE: u16 = 0x0003;
const REFRESH: u16 = 0x0004;
const USERNAME: u16 = 0x0006;
const MESSAGE_INTEGRITY: u16 = 0x0008;
const ERROR_CODE: u16 = 0x0009;
const REALM: u16 = 0x0014;
const NONCE: u16 = 0x0015;
const REQUESTED_TRANSPORT: u16 = 0x0019;
const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
const PASSWORD_ALGORITHM: u16 = 0x001D;
const USERHASH: u16 = 0x001E;
const PASSWORD_ALGORITHMS: u16 = 0x8002;

/// A STUN request under construction.
struct Req(Vec<u8>);

impl Req {
    fn new(method: u16, txid: u8) -> Req {
        let mut b = method.to_be_bytes().to_vec();
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        b.extend_from_slice(&[txid; 12]);
        Req(b)
    }

    fn attr(mut self, ty: u16, value: &[u8]) -> Req {
        self.0.extend_from_slice(&ty.to_be_bytes());
        self.0
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        let len = (self.0.len() - 20) as u16;
        self.0[2..4].copy_from_slice(&len.to_be_bytes());
        self
    }

    /// MESSAGE-INTEGRITY (HMAC-SHA1) or -SHA256 over the message so far (RFC 8489 §14.5).
    fn integrity(mut self, key: &[u8], sha256: bool) -> Req {
        let (ty, size) = if sha256 {
            (MESSAGE_INTEGRITY_SHA256, 32)
        } else {
            (MESSAGE_INTEGRITY, 20)
        };
        let len = (self.0.len() - 20 + 4 + size) as u16;
        self.0[2..4].copy_from_slice(&len.to_be_bytes());
        let mac = mac(key, &self.0, sha256);
        self.attr(ty, &mac)
    }
}

fn mac(key: &[u8], data: &[u8], sha256: bool) -> Vec<u8> {
    if sha256 {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        m.update(data);
        m.finalize().into_bytes().to_vec()
    } else {
        let mut m = <Hmac<Sha1> as KeyInit>::new_from_slice(key).unwrap();
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }
}

/// The attributes of a message: (type, value, offset of the attribute header).
fn attrs(msg: &[u8]) -> Vec<(u16, Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut p = 20;
    while p + 4 <= msg.len() {
        let ty = u16::from_be_bytes([msg[p], msg[p + 1]]);
        let len = u16::from_be_bytes([msg[p + 2], msg[p + 3]]) as usize;
        out.push((ty, msg[p + 4..p + 4 + len].to_vec(), p));
        p += 4 + len.next_multiple_of(4);
    }
    out
}

fn get(msg: &[u8], ty: u16) -> Option<Vec<u8>> {
    attrs(msg).into_iter().find(|a| a.0 == ty).map(|a| a.1)
}

fn code(msg: &[u8]) -> Option<u16> {
    get(msg, ERROR_CODE).map(|v| u16::from(v[2]) * 100 + u16::from(v[3]))
}

/// Which integrity attribute of `msg` verifies with `key`, if any.
fn verified_integrity(msg: &[u8], key: &[u8]) -> Option<u16> {
    for (ty, value, at) in attrs(msg) {
        let sha256 = match ty {
            MESSAGE_INTEGRITY => false,
            MESSAGE_INTEGRITY_SHA256 => true,
            _ => continue,
        };
        let mut head = msg[..at].to_vec();
        let len = (at - 20 + 4 + value.len()) as u16;
        head[2..4].copy_from_slice(&len.to_be_bytes());
        return (mac(key, &head, sha256) == value).then_some(ty);
    }
    None
}

fn md5_key() -> Vec<u8> {
    Md5::digest(format!("alice:{}:wonderland", common::REALM)).to_vec()
}

fn exchange(sock: &UdpSocket, server: std::net::SocketAddr, req: &Req) -> Vec<u8> {
    let mut buf = [0u8; 1500];
    for _ in 0..5 {
        sock.send_to(&req.0, server).unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && buf[8..20] == req.0[8..20]
        {
            return buf[..n].to_vec();
        }
    }
    panic!("no answer");
}

/// A socket with an allocation, and the nonce it was made with.
fn allocated(server: &TestServer) -> (UdpSocket, Vec<u8>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let r = exchange(
        &sock,
        server.addr,
        &Req::new(ALLOCATE, 1).attr(REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
    );
    assert_eq!(code(&r), Some(401));
    let nonce = get(&r, NONCE).unwrap();
    let req = Req::new(ALLOCATE, 2)
        .attr(REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .attr(USERNAME, b"alice")
        .attr(REALM, common::REALM.as_bytes())
        .attr(NONCE, &nonce)
        .integrity(&md5_key(), false);
    assert_eq!(code(&exchange(&sock, server.addr, &req)), None);
    (sock, nonce)
}

#[test]
fn response_integrity_follows_the_password_algorithms_of_the_request() {
    let server = TestServer::start("127.0.0.1", &[]);
    let (sock, nonce) = allocated(&server);
    let key = md5_key();
    // (PASSWORD-ALGORITHMS with PASSWORD-ALGORITHM MD5, the request's own integrity, what the
    // response must carry)
    let cases = [
        (true, false, MESSAGE_INTEGRITY_SHA256),
        (true, true, MESSAGE_INTEGRITY_SHA256),
        (false, true, MESSAGE_INTEGRITY),
        (false, false, MESSAGE_INTEGRITY),
    ];
    for (i, (algorithms, sha256, want)) in cases.into_iter().enumerate() {
        let mut req = Req::new(REFRESH, 10 + i as u8)
            .attr(USERNAME, b"alice")
            .attr(REALM, common::REALM.as_bytes())
            .attr(NONCE, &nonce);
        if algorithms {
            req = req
                .attr(PASSWORD_ALGORITHMS, &[0, 2, 0, 0, 0, 1, 0, 0])
                .attr(PASSWORD_ALGORITHM, &[0, 1, 0, 0]);
        }
        let r = exchange(&sock, server.addr, &req.integrity(&key, sha256));
        assert_eq!(code(&r), None, "case {i}");
        assert_eq!(verified_integrity(&r, &key), Some(want), "case {i}");
    }
}

#[test]
fn userhash_without_username_is_challenged_with_401() {
    let server = TestServer::start("127.0.0.1", &[]);
    let (sock, nonce) = allocated(&server);
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    other
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let req = Req::new(ALLOCATE, 30)
        .attr(REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .attr(USERHASH, &[0x5a; 32])
        .attr(REALM, common::REALM.as_bytes())
        .attr(NONCE, &nonce)
        .attr(PASSWORD_ALGORITHMS, &[0, 2, 0, 0, 0, 1, 0, 0])
        .attr(PASSWORD_ALGORITHM, &[0, 2, 0, 0])
        .integrity(&[1; 32], true);
    let r = exchange(&other, server.addr, &req);
    assert_eq!(code(&r), Some(401));
    for a in [REALM, NONCE, PASSWORD_ALGORITHMS] {
        assert!(get(&r, a).is_some(), "attribute {a:#06x}");
    }
    drop(sock);
}
