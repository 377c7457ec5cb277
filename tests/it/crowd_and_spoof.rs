//! Crowds behind one address and spoofers using a real client's address, against the real
//! server with its default `[limits]` (SECURITY.md, "Reflection and amplification"):
//!
//! - a thousand clients behind one IPv4 address allocate at once, each through its own 401,
//!   and their Binding requests are answered;
//! - while a spoofer floods with a victim's address at about 5,000 requests/s, the victim's
//!   authenticated requests (a Refresh, and one answered 438) are answered, and a new client
//!   behind that address gets its 401;
//! - answers to an address that never authenticated stay within twice the bytes received from
//!   it plus the first-contact allowance.
//!
//! Loopback stands in for the shared address: every socket of a crowd is bound to one
//! 127.0.0.0/8 address, and the "spoofer" sends from other ports of the victim's address,
//! which is what the server sees of a spoofed source. Times are printed, never asserted.

use crate::common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{RawClient, TestServer, udp_transport};
use stun::agent::TransactionId;
use stun::attributes::*;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::{Nonce, Realm, Username};

const USER: &str = "alice";
const PASS: &str = "wonderland";
/// RFC 8489 §6.2.1: the first retransmission after 500 ms, then doubling, 7 sends in all.
const RTO: Duration = Duration::from_millis(500);
const MAX_SENDS: u32 = 7;

/// The size of turnd's 401 to a request with FINGERPRINT under the tests' realm: the unit
/// of the allowance (`turnd::turn::challenge_len`).
fn challenge_len() -> usize {
    turnd::turn::challenge_len(common::REALM)
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// An Allocate (REQUESTED-TRANSPORT UDP), signed when a nonce is known, with FINGERPRINT.
fn allocate(txid: TransactionId, nonce: Option<&str>) -> Vec<u8> {
    let mut m = Message::new();
    m.build(&[
        Box::new(txid),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
    ])
    .unwrap();
    let (t, v) = udp_transport();
    m.add(t, &v);
    if let Some(n) = nonce {
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(Username::new(ATTR_USERNAME, USER.into())),
            Box::new(Realm::new(ATTR_REALM, common::REALM.into())),
            Box::new(Nonce::new(ATTR_NONCE, n.into())),
            Box::new(MessageIntegrity::new_long_term_integrity(
                USER.into(),
                common::REALM.into(),
                PASS.into(),
            )),
        ];
        for s in setters {
            s.add_to(&mut m).unwrap();
        }
    }
    FINGERPRINT.add_to(&mut m).unwrap();
    m.raw.clone()
}

fn binding(txid: TransactionId) -> Vec<u8> {
    let mut m = Message::new();
    m.build(&[Box::new(txid), Box::new(BINDING_REQUEST)])
        .unwrap();
    m.raw.clone()
}

/// One request in flight with its retransmission schedule.
struct Pending {
    txid: TransactionId,
    raw: Vec<u8>,
    sends: u32,
    next: Instant,
}

impl Pending {
    fn new(txid: TransactionId, raw: Vec<u8>, now: Instant) -> Pending {
        Pending {
            txid,
            raw,
            sends: 0,
            next: now,
        }
    }

    /// Sends when due; false once every transmission has gone unanswered.
    fn poll(&mut self, sock: &UdpSocket, server: SocketAddr, now: Instant) -> bool {
        if now < self.next {
            return true;
        }
        if self.sends == MAX_SENDS {
            return false;
        }
        let _ = sock.send_to(&self.raw, server);
        self.next = now + RTO * (1 << self.sends);
        self.sends += 1;
        true
    }
}

/// One member of the crowd: a Binding, then Allocate, 401, signed Allocate.
struct CrowdClient {
    sock: UdpSocket,
    binding: Option<Pending>,
    allocate: Option<Pending>,
    nonce: Option<String>,
    allocated: bool,
    challenged_at: Option<Instant>,
    /// How many sends of the first Allocate it took to get the 401.
    sends_to_401: u32,
    retransmissions: u32,
}

#[test]
fn a_thousand_clients_behind_one_address_all_allocate() {
    raise_fd_limit();
    let server = TestServer::start("127.0.0.1", &[]);
    const N: usize = 1000;
    let start = Instant::now();
    let mut crowd: Vec<CrowdClient> = (0..N)
        .map(|_| {
            let sock = UdpSocket::bind("127.0.0.77:0").unwrap();
            sock.set_nonblocking(true).unwrap();
            let b = TransactionId::new();
            let a = TransactionId::new();
            CrowdClient {
                sock,
                binding: Some(Pending::new(b, binding(b), start)),
                allocate: Some(Pending::new(a, allocate(a, None), start)),
                nonce: None,
                allocated: false,
                challenged_at: None,
                sends_to_401: 0,
                retransmissions: 0,
            }
        })
        .collect();
    let mut buf = [0u8; 2048];
    let mut failed = Vec::new();
    let (mut bindings, mut all_allocated_at) = (0usize, None);
    // Hang guard only: every request gives up after its seven sends (under 40 s).
    while Instant::now() < start + Duration::from_secs(90) {
        let now = Instant::now();
        let mut busy = false;
        for (i, c) in crowd.iter_mut().enumerate() {
            for p in [&mut c.binding, &mut c.allocate].into_iter() {
                if let Some(req) = p {
                    busy = true;
                    let before = req.sends;
                    if !req.poll(&c.sock, server.addr, now) {
                        failed.push(i);
                        *p = None;
                    } else if before > 0 && req.sends > before {
                        c.retransmissions += 1;
                    }
                }
            }
            while let Ok((n, _)) = c.sock.recv_from(&mut buf) {
                let mut m = Message::new();
                if m.unmarshal_binary(&buf[..n]).is_err() {
                    continue;
                }
                if c.binding
                    .as_ref()
                    .is_some_and(|b| b.txid == m.transaction_id)
                {
                    assert_eq!(m.typ, BINDING_SUCCESS, "Binding answer");
                    c.binding = None;
                    bindings += 1;
                    continue;
                }
                if !c
                    .allocate
                    .as_ref()
                    .is_some_and(|a| a.txid == m.transaction_id)
                {
                    continue;
                }
                let reply = common::Reply { msg: m };
                match reply.code() {
                    None => {
                        c.allocated = true;
                        c.allocate = None;
                    }
                    Some(401) if c.nonce.is_none() => {
                        c.sends_to_401 = c.allocate.as_ref().map_or(0, |a| a.sends);
                        let nonce = Nonce::get_from_as(&reply.msg, ATTR_NONCE).unwrap().text;
                        let t = TransactionId::new();
                        c.allocate = Some(Pending::new(t, allocate(t, Some(&nonce)), now));
                        c.nonce = Some(nonce);
                        c.challenged_at = Some(now);
                    }
                    other => panic!("client {i}: unexpected answer {other:?}"),
                }
            }
        }
        if all_allocated_at.is_none() && crowd.iter().all(|c| c.allocated) {
            all_allocated_at = Some(start.elapsed());
        }
        if !busy {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let allocated = crowd.iter().filter(|c| c.allocated).count();
    let retransmissions: u32 = crowd.iter().map(|c| c.retransmissions).sum();
    let last_401 = crowd
        .iter()
        .filter_map(|c| c.challenged_at)
        .max()
        .map(|t| t - start);
    println!(
        "{N} clients behind 127.0.0.77: {allocated} allocated (all by {all_allocated_at:?}), \
         last 401 after {last_401:?}, {bindings} Binding answers, {retransmissions} \
         retransmissions"
    );
    assert!(failed.is_empty(), "clients that gave up: {failed:?}");
    assert_eq!(allocated, N);
    assert_eq!(bindings, N);
    // Nobody waits for the allowance to trickle back: once the first members of the crowd
    // hold allocations, the address is answered. A budget of answers per second (50/s with
    // a burst of 100 before) needed many rounds of retransmissions for a thousand 401s.
    let worst = crowd.iter().map(|c| c.sends_to_401).max().unwrap_or(0);
    assert!(worst <= 3, "a client needed {worst} sends for its 401");
}

/// A request answered by the server, retransmitted as a client would; (reply, sends, time).
fn ask(sock: &UdpSocket, server: SocketAddr, raw: &[u8]) -> Option<(Message, u32, Duration)> {
    let mut probe = Message::new();
    probe.unmarshal_binary(raw).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    for send in 0..MAX_SENDS {
        sock.send_to(raw, server).unwrap();
        let deadline = Instant::now() + RTO * (1 << send);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                break;
            };
            let mut m = Message::new();
            if m.unmarshal_binary(&buf[..n]).is_ok() && m.transaction_id == probe.transaction_id {
                return Some((m, send + 1, start.elapsed()));
            }
        }
    }
    None
}

/// Floods `server` with bare 20-byte Allocates from ports of `ip` at about `per_sec`, until
/// `stop` or `limit` requests; returns the number sent.
fn spoofer(
    ip: &'static str,
    server: SocketAddr,
    per_sec: u64,
    limit: u64,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let socks: Vec<UdpSocket> = (0..16).map(|_| UdpSocket::bind((ip, 0)).unwrap()).collect();
        let start = Instant::now();
        let mut n = 0u64;
        let mut req = [0u8; 20];
        req[0..2].copy_from_slice(&0x0003u16.to_be_bytes());
        req[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
        while n < limit && !stop.load(Ordering::Relaxed) {
            // Pace: n requests by n / per_sec seconds.
            let due = start + Duration::from_micros(n * 1_000_000 / per_sec);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            req[8..16].copy_from_slice(&n.to_be_bytes());
            let _ = socks[(n % 16) as usize].send_to(&req, server);
            n += 1;
            sent.store(n, Ordering::Relaxed);
        }
    })
}

#[test]
fn a_spoofed_flood_does_not_starve_the_victim() {
    let server = TestServer::start("127.0.0.1", &[]);
    let victim_ip = "127.0.0.88";
    let mut victim = RawClient::new(server.addr, USER, PASS);
    victim.sock = UdpSocket::bind((victim_ip, 0)).unwrap();
    victim
        .sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert_eq!(
        victim.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        None
    );
    // A nonce minted for another address: stale from the victim's, answered 438.
    let mut other = RawClient::new(server.addr, USER, PASS);
    assert_eq!(
        other.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        None
    );
    let foreign_nonce = other.nonce.clone();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = spoofer(
        victim_ip,
        server.addr,
        5000,
        40_000,
        stop.clone(),
        sent.clone(),
    );
    // Let the flood spend whatever budget the address had.
    std::thread::sleep(Duration::from_millis(500));
    let flood_start_sent = sent.load(Ordering::Relaxed);

    let mut refreshes = 0;
    let lifetime = (ATTR_LIFETIME, 600u32.to_be_bytes().to_vec());
    // Ten Refreshes over about a second of flood.
    for _ in 0..10 {
        assert_eq!(
            victim
                .request(METHOD_REFRESH, std::slice::from_ref(&lifetime))
                .code(),
            None
        );
        refreshes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // The 438: RawClient retries with the nonce it carries, so success means it was answered.
    victim.nonce = foreign_nonce.clone();
    assert_eq!(
        victim
            .request(METHOD_REFRESH, std::slice::from_ref(&lifetime))
            .code(),
        None
    );
    assert_ne!(victim.nonce, foreign_nonce, "the 438 taught a fresh nonce");

    // A new client behind the victim's address: its first Allocate gets a 401.
    let newcomer = UdpSocket::bind((victim_ip, 0)).unwrap();
    let t = TransactionId::new();
    let (reply, sends, took) =
        ask(&newcomer, server.addr, &allocate(t, None)).expect("the newcomer's 401");
    let flood_sent = sent.load(Ordering::Relaxed) - flood_start_sent;
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let code = common::Reply { msg: reply }.code();
    println!(
        "under a spoofed flood ({flood_sent} bare Allocates from {victim_ip} during the checks, \
         5,000/s): {refreshes} Refreshes and one 438 answered; a new client's 401 after \
         {took:?} ({sends} send(s))"
    );
    assert_eq!(code, Some(401));
}

#[test]
fn answers_to_a_never_authenticated_address_stay_within_twice_what_it_sent() {
    let server = TestServer::start("127.0.0.1", &[]);
    let socks: Vec<UdpSocket> = (0..8)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.99:0").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    // A mix of what an attacker might send: bare Allocates (the worst ratio), Allocates
    // with REQUESTED-TRANSPORT and FINGERPRINT, bare Bindings, and an unknown method (400).
    let bare_allocate = {
        let mut r = vec![0u8; 20];
        r[0..2].copy_from_slice(&0x0003u16.to_be_bytes());
        r[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
        r
    };
    let unknown = {
        let mut r = bare_allocate.clone();
        // Method 0x002 (RFC 3489's Shared Secret), which turnd answers with 400.
        r[0..2].copy_from_slice(&0x0002u16.to_be_bytes());
        r
    };
    let (mut bytes_in, mut bytes_out) = (0usize, 0usize);
    let mut by_kind: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut pending: HashMap<[u8; 12], &str> = HashMap::new();
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    let total = 6000u32;
    for i in 0..total {
        let mut t = TransactionId::new();
        t.0[..4].copy_from_slice(&i.to_be_bytes());
        let (kind, req) = match i % 4 {
            0 => {
                let mut r = bare_allocate.clone();
                r[8..20].copy_from_slice(&t.0);
                ("bare Allocate", r)
            }
            1 => ("Allocate with FINGERPRINT", allocate(t, None)),
            2 => ("bare Binding", binding(t)),
            _ => {
                let mut r = unknown.clone();
                r[8..20].copy_from_slice(&t.0);
                ("unknown method", r)
            }
        };
        pending.insert(t.0, kind);
        socks[i as usize % socks.len()]
            .send_to(&req, server.addr)
            .unwrap();
        bytes_in += req.len();
        by_kind.entry(kind).or_default().0 += 1;
        // About 2,000 requests per second.
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(10));
        }
        for s in &socks {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                bytes_out += n;
                if let Some(k) = buf.get(8..20).and_then(|t| pending.get(t)) {
                    by_kind.entry(k).or_default().1 += 1;
                }
            }
        }
    }
    // Collect the last answers.
    let quiet = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet {
        for s in &socks {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                bytes_out += n;
                if let Some(k) = buf.get(8..20).and_then(|t| pending.get(t)) {
                    by_kind.entry(k).or_default().1 += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = start.elapsed().as_secs_f64();
    // Defaults: unauth-burst 8 answers, unauth-rate 1 answer per second.
    let allowance = (8 + secs.ceil() as usize + 1) * challenge_len();
    println!(
        "never-authenticated 127.0.0.99, {secs:.1} s: {bytes_in} bytes in, {bytes_out} bytes \
         out (ratio {:.2}; bound 2 x in + {allowance}); answered per kind (sent, answered): \
         {by_kind:?}",
        bytes_out as f64 / bytes_in as f64
    );
    assert!(
        bytes_out <= 2 * bytes_in + allowance,
        "{bytes_out} > 2 x {bytes_in} + {allowance}"
    );
    // The budget is not a wall: Bindings, which pay for themselves, are all answered.
    let (sent_b, answered_b) = by_kind["bare Binding"];
    assert_eq!(sent_b, answered_b);
    let (sent_a, answered_a) = by_kind["bare Allocate"];
    assert!(answered_a < sent_a, "{answered_a} of {sent_a}");
    let (sent_u, answered_u) = by_kind["unknown method"];
    assert_eq!(
        sent_u, answered_u,
        "a 40-byte 400 to a 20-byte request pays for itself"
    );
}
