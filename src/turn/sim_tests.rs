//! Deterministic tests of the allocation manager: simulated clients, peers and clock; no
//! sockets, no sleeping. A 600-second lifetime is a function call away.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::peer_policy::{Cidr, PeerPolicy};
use super::*;
use crate::auth::{AuthConfig, Authenticator, UserSecret, rest_credential};
use crate::stun::{Class, Message, MessageWriter, attr, decode_error_code, method};
use crate::testing::{SimIo, TestClient};

const REALM: &str = "sim.test";
const UNIX0: u64 = 1_800_000_000;

mod fast_path;
mod fleet;
mod lease;
mod quality;
mod tcp;

struct Sim {
    server: Server,
    quotas: Arc<super::quota::Quotas>,
    io: SimIo,
    t0: Instant,
    elapsed: Duration,
}

struct Opts {
    min_port: u16,
    max_port: u16,
    v6: bool,
    enforce_expiry: bool,
    allow: Vec<Cidr>,
    user_quota: u32,
    total_quota: u32,
    max_bps: u64,
    limits: Limits,
    unauth: super::rate_limit::RateLimit,
    ip_quota: u32,
    software: Option<String>,
    own: Vec<SocketAddr>,
    strict_channels: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            min_port: 50000,
            max_port: 50999,
            v6: true,
            enforce_expiry: true,
            allow: vec![],
            user_quota: 0,
            total_quota: 0,
            max_bps: 0,
            limits: Limits::default(),
            unauth: super::rate_limit::RateLimit {
                rate: 50,
                burst: 100,
            },
            ip_quota: 0,
            software: None,
            own: vec![],
            strict_channels: false,
        }
    }
}

fn sim_with(o: Opts) -> Sim {
    let auth = Authenticator::new(AuthConfig {
        realm: REALM.into(),
        users: vec![
            ("alice".into(), UserSecret::Password("wonderland".into())),
            ("bob".into(), UserSecret::Password("builder".into())),
        ],
        secrets: vec!["s3cret".into()],
        rest_separator: ':',
        nonce_lifetime_secs: 600,
        nonce_key: [9; 32],
    });
    let quotas = Arc::new(
        super::quota::Quotas::new(o.user_quota, o.total_quota)
            .with_bandwidth(o.max_bps, 0, 0)
            .with_ip_quota(o.ip_quota),
    );
    let relay_ips = [
        Some(("10.0.0.1".parse().unwrap(), "203.0.113.1".parse().unwrap())),
        if o.v6 {
            Some(("fd00::1".parse().unwrap(), "2001:db8::1".parse().unwrap()))
        } else {
            None
        },
    ];
    let base = ServerConfig::testing(Arc::new(auth), relay_ips, o.min_port..=o.max_port, [7; 32]);
    let cfg = ServerConfig {
        live: Reconfigure {
            policy: PeerPolicy::new(o.allow, vec![]).with_own_addresses(o.own),
            software: o.software,
            enforce_credential_expiry: o.enforce_expiry,
            strict_channel_numbers: o.strict_channels,
            ..base.live
        },
        quotas: quotas.clone(),
        max_permissions: 8,
        limits: o.limits,
        unauth_limiter: Arc::new(super::rate_limit::ResponseLimiter::new(
            o.unauth,
            super::challenge_len(REALM),
            [8; 16],
        )),
        ..base
    };
    Sim {
        server: Server::new(cfg),
        quotas,
        io: SimIo::default(),
        t0: Instant::now(),
        elapsed: Duration::ZERO,
    }
}

fn sim() -> Sim {
    sim_with(Opts::default())
}

impl Sim {
    fn now(&self) -> Time {
        Time {
            mono: self.t0 + self.elapsed,
            unix: UNIX0 + self.elapsed.as_secs(),
        }
    }

    fn advance(&mut self, secs: u64) {
        // Step through time so every deadline fires when it is due.
        for _ in 0..secs {
            self.elapsed += Duration::from_secs(1);
            let now = self.now();
            if self.server.poll_timeout().is_some_and(|t| t <= now.mono) {
                self.server.handle_timeout(now, &mut self.io);
            }
        }
    }

    /// Feeds bytes from a client and returns what came back to it.
    fn client_send(&mut self, ft: FiveTuple, data: &[u8]) -> Vec<Vec<u8>> {
        self.io.to_client.clear();
        let now = self.now();
        self.server.handle_client(now, ft, data, &mut self.io);
        self.io.to_client.drain(..).map(|(_, d)| d).collect()
    }

    fn peer_send(&mut self, relay: RelayId, peer: SocketAddr, payload: &[u8]) -> Vec<Vec<u8>> {
        self.io.to_client.clear();
        let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
        let now = self.now();
        self.server.handle_peer(
            now,
            relay,
            peer,
            &mut buf,
            PEER_HEADROOM..PEER_HEADROOM + payload.len(),
            &mut self.io,
        );
        self.io.to_client.drain(..).map(|(_, d)| d).collect()
    }
}

fn ft(port: u16) -> FiveTuple {
    FiveTuple {
        client: SocketAddr::new("198.51.100.7".parse().unwrap(), port),
        server: "192.0.2.10:3478".parse().unwrap(),
        transport: Transport::Udp,
    }
}

/// The shared test client ([`TestClient`]) as these tests drive it: FINGERPRINT on every
/// request, transaction ids of its own, and requests that learn realm and nonce from the 401
/// and answer 438 like a real client.
struct Client {
    c: TestClient,
    txn: u32,
}

impl std::ops::Deref for Client {
    type Target = TestClient;
    fn deref(&self) -> &TestClient {
        &self.c
    }
}

impl std::ops::DerefMut for Client {
    fn deref_mut(&mut self) -> &mut TestClient {
        &mut self.c
    }
}

struct Resp(Vec<u8>);

impl Resp {
    fn msg(&self) -> Message<'_> {
        Message::parse(&self.0).expect("response parses")
    }
    fn code(&self) -> Option<u16> {
        let m = self.msg();
        if m.class() == Class::Success {
            return None;
        }
        m.get(attr::ERROR_CODE)
            .and_then(decode_error_code)
            .map(|(c, _)| c)
    }
    fn is_ok(&self) -> bool {
        self.msg().class() == Class::Success
    }
    fn relayed(&self) -> Vec<SocketAddr> {
        let m = self.msg();
        let txid = m.transaction_id();
        m.get_all(attr::XOR_RELAYED_ADDRESS)
            .map(|v| crate::stun::decode_xor_address(v, &txid).unwrap())
            .collect()
    }
    fn lifetime(&self) -> u32 {
        self.msg().u32_attr(attr::LIFETIME).unwrap().unwrap()
    }
}

impl Client {
    fn new(ft: FiveTuple, user: &str, pass: &str) -> Client {
        let mut c = TestClient::new(user, REALM, pass, ft);
        c.fingerprint = true;
        Client { c, txn: 0 }
    }

    fn key(&self) -> Vec<u8> {
        self.c.key().as_bytes().to_vec()
    }

    fn txid(&mut self) -> [u8; 12] {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        self.txn = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut t = [0xAB; 12];
        t[..4].copy_from_slice(&self.txn.to_be_bytes());
        t[4..6].copy_from_slice(&self.ft.client.port().to_be_bytes());
        t
    }

    fn build(&self, m: u16, txid: [u8; 12], attrs: &dyn Fn(&mut MessageWriter)) -> Vec<u8> {
        self.c.signed(m, txid, attrs)
    }

    /// Sends a request, answering 401/438 challenges like a real client.
    fn request(&mut self, sim: &mut Sim, m: u16, attrs: &dyn Fn(&mut MessageWriter)) -> Resp {
        for _ in 0..3 {
            let txid = self.txid();
            let req = self.build(m, txid, attrs);
            let mut out = sim.client_send(self.ft, &req);
            assert_eq!(out.len(), 1, "one response per request");
            let r = Resp(out.remove(0));
            assert_eq!(r.msg().transaction_id(), txid);
            match r.code() {
                Some(401) if self.nonce.is_none() => {}
                Some(438) => {}
                _ => return r,
            }
            self.nonce = r.msg().get(attr::NONCE).map(|n| n.to_vec());
        }
        panic!("challenge loop")
    }

    fn allocate(&mut self, sim: &mut Sim) -> Resp {
        self.request(sim, method::ALLOCATE, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        })
    }
}

fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn relay_of(sim: &Sim, fam_v6: bool) -> RelayId {
    sim.io
        .bound
        .iter()
        .rev()
        .find(|(_, a)| a.is_ipv6() == fam_v6)
        .map(|(id, _)| *id)
        .unwrap()
}

fn permit(c: &mut Client, sim: &mut Sim, peers: &[SocketAddr]) -> Resp {
    let peers = peers.to_vec();
    c.request(sim, method::CREATE_PERMISSION, &move |w| {
        for p in &peers {
            w.xor_address(attr::XOR_PEER_ADDRESS, *p);
        }
    })
}

fn bind(c: &mut Client, sim: &mut Sim, number: u16, p: SocketAddr) -> Resp {
    c.request(sim, method::CHANNEL_BIND, &move |w| {
        w.attr(
            attr::CHANNEL_NUMBER,
            &[(number >> 8) as u8, number as u8, 0, 0],
        )
        .xor_address(attr::XOR_PEER_ADDRESS, p);
    })
}

fn send_indication(ft: FiveTuple, p: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, method::SEND, Class::Indication, [5; 12]);
    w.xor_address(attr::XOR_PEER_ADDRESS, p)
        .attr(attr::DATA, data);
    let _ = ft;
    buf
}

fn channel_data(number: u16, data: &[u8]) -> Vec<u8> {
    let mut v = crate::stun::channel_data::header(number, data.len() as u16).to_vec();
    v.extend_from_slice(data);
    v
}

// ------------------------------------------------------------------ tests

#[test]
fn binding_answers_with_xor_mapped_address_and_echoes_fingerprint() {
    let mut s = sim();
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::BINDING, Class::Request, [1; 12]).fingerprint();
    let out = s.client_send(ft(1000), &buf);
    let m = Message::parse(&out[0]).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(
        m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap(),
        ft(1000).client
    );
    assert!(m.has_fingerprint());
    assert!(m.get(attr::MAPPED_ADDRESS).is_none());
    assert!(m.get(attr::SOFTWARE).is_none());
    // Without FINGERPRINT in the request, none in the response.
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::BINDING, Class::Request, [2; 12]);
    let out = s.client_send(ft(1000), &buf);
    assert!(!Message::parse(&out[0]).unwrap().has_fingerprint());
}

#[test]
fn unknown_comprehension_required_attribute_gets_420() {
    let mut s = sim();
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::BINDING, Class::Request, [1; 12])
        .attr(0x0003, &[0, 0, 0, 0])
        .attr(0x7777, b"x")
        .attr(0xC001, b"optional is fine");
    let out = s.client_send(ft(1000), &buf);
    let r = Resp(out[0].clone());
    assert_eq!(r.code(), Some(420));
    assert_eq!(
        r.msg().get(attr::UNKNOWN_ATTRIBUTES),
        Some(&[0x00, 0x03, 0x77, 0x77][..])
    );

    // On an authenticated TURN request too, after authentication.
    let mut c = Client::new(ft(1001), "alice", "wonderland");
    let r = c.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(0x0031, b"zz");
    });
    assert_eq!(r.code(), Some(420));
    assert!(r.msg().verify_integrity(&c.key()).is_some());
}

#[test]
fn malformed_and_random_input_is_dropped_without_panic() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    let mut x: u64 = 0x1234_5678;
    for i in 0..20_000usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 200) as usize;
        let mut d: Vec<u8> = (0..len).map(|k| (x >> (k % 56)) as u8 ^ k as u8).collect();
        if i % 3 == 0 && d.len() >= 8 {
            // Make many of them look like STUN or ChannelData so deeper paths run.
            d[0] = if i % 2 == 0 { 0x00 } else { 0x40 };
            d[4..8].copy_from_slice(&crate::stun::MAGIC_COOKIE.to_be_bytes());
        }
        s.client_send(ft(1000), &d);
        s.client_send(ft(2000 + (i % 50) as u16), &d);
        let relay = relay_of(&s, false);
        s.peer_send(relay, peer("8.8.8.8:53"), &d);
    }
    assert_eq!(s.server.allocation_count(), 1);
}

#[test]
fn unauthenticated_allocate_gets_a_minimal_401() {
    let mut s = sim();
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::ALLOCATE, Class::Request, [3; 12])
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let out = s.client_send(ft(1000), &buf);
    let r = Resp(out[0].clone());
    let m = r.msg();
    assert_eq!(r.code(), Some(401));
    assert_eq!(m.get(attr::REALM), Some(REALM.as_bytes()));
    let nonce = m.get(attr::NONCE).unwrap();
    assert!(nonce.starts_with(b"obMatJos2"));
    assert_eq!(
        m.get(attr::PASSWORD_ALGORITHMS),
        Some(&[0, 2, 0, 0, 0, 1, 0, 0][..])
    );
    assert!(!m.has_integrity());
    assert!(m.get(attr::SOFTWARE).is_none());
    // No state was created for the stranger.
    assert_eq!(s.server.allocation_count(), 0);
}

#[test]
fn allocate_negotiates_lifetime_and_advertises_external_address() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    let r = c.allocate(&mut s);
    assert!(r.is_ok(), "{:?}", r.code());
    assert!(r.msg().verify_integrity(&c.key()).is_some());
    assert_eq!(r.lifetime(), 600);
    let relayed = r.relayed();
    assert_eq!(relayed.len(), 1);
    assert_eq!(relayed[0].ip(), "203.0.113.1".parse::<IpAddr>().unwrap());
    assert!((50000..=50999).contains(&relayed[0].port()));
    // Bound on the relay IP, advertised as the external one.
    assert_eq!(
        s.io.bound[0].1,
        SocketAddr::new("10.0.0.1".parse().unwrap(), relayed[0].port())
    );
    assert_eq!(
        r.msg()
            .xor_address(attr::XOR_MAPPED_ADDRESS)
            .unwrap()
            .unwrap(),
        ft(1000).client
    );

    let mut c2 = Client::new(ft(1001), "alice", "wonderland");
    let r = c2.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .u32_attr(attr::LIFETIME, 100_000)
            .attr(attr::DONT_FRAGMENT, &[]);
    });
    assert_eq!(r.lifetime(), 3600);
    let mut c3 = Client::new(ft(1002), "alice", "wonderland");
    let r = c3.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .u32_attr(attr::LIFETIME, 30);
    });
    assert_eq!(r.lifetime(), 600);
}

#[test]
fn allocate_errors_for_transport() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    let r = c.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[132, 0, 0, 0]);
    });
    assert_eq!(r.code(), Some(442));
    // RFC 6062 §5.1: TCP is supported, but not over a UDP client connection.
    let r = c.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    assert_eq!(r.code(), Some(400));
    let r = c.request(&mut s, method::ALLOCATE, &|_| {});
    assert_eq!(r.code(), Some(400));
    let r = c.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0]);
    });
    assert_eq!(r.code(), Some(400));
}

#[test]
fn retransmitted_allocate_gets_the_same_answer_and_a_new_one_gets_437() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    c.allocate(&mut s); // learns the nonce
    let r = c.request(&mut s, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 0);
    });
    assert!(r.is_ok());
    let txid = c.txid();
    let req = c.build(method::ALLOCATE, txid, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let first = s.client_send(c.ft, &req);
    assert!(Resp(first[0].clone()).is_ok());
    s.advance(2);
    let again = s.client_send(c.ft, &req);
    assert_eq!(first, again, "byte-identical answer to a retransmission");
    assert_eq!(s.io.bound.len(), 2, "no second relay for a retransmission");
    assert_eq!(c.allocate(&mut s).code(), Some(437));
    // Retransmitted CreatePermission too.
    let txid = c.txid();
    let req = c.build(method::CREATE_PERMISSION, txid, &|w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, peer("8.8.8.8:1"));
    });
    let a = s.client_send(c.ft, &req);
    let b = s.client_send(c.ft, &req);
    assert_eq!(a, b);
}

#[test]
fn wrong_password_unknown_user_and_wrong_realm_get_401() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "not-it");
    assert_eq!(c.allocate(&mut s).code(), Some(401));
    let mut c = Client::new(ft(1000), "mallory", "x");
    assert_eq!(c.allocate(&mut s).code(), Some(401));
    assert_eq!(s.server.allocation_count(), 0);
    assert!(s.server.stats().auth_failures >= 2);
}

/// Username probing: an unknown user costs the same MESSAGE-INTEGRITY check as a known
/// user with a wrong password (a decoy key), so timing does not tell them apart; and a
/// request that happens to be signed with the decoy key is still refused.
#[test]
fn unknown_user_costs_the_same_integrity_check_as_a_wrong_password() {
    let mut s = sim();
    let checks = |s: &mut Sim, user: &str, pass: &str| {
        let before = s.server.stats().integrity_checks;
        let mut c = Client::new(ft(1000), user, pass);
        assert_eq!(c.allocate(s).code(), Some(401), "{user}");
        // The first try has no integrity (401 with a nonce); the retry is signed.
        s.server.stats().integrity_checks - before
    };
    let wrong_password = checks(&mut s, "alice", "not-it");
    let unknown = checks(&mut s, "mallory", "x");
    assert_eq!(wrong_password, 1);
    assert_eq!(unknown, wrong_password, "unknown user skips no HMAC");
    let sha = |s: &mut Sim, user: &str, pass: &str| {
        let before = s.server.stats().integrity_checks;
        let mut c = Client::new(ft(1001), user, pass);
        c.sha256 = true;
        assert_eq!(c.allocate(s).code(), Some(401), "{user}");
        s.server.stats().integrity_checks - before
    };
    assert_eq!(sha(&mut s, "alice", "not-it"), sha(&mut s, "mallory", "x"));
    assert_eq!(s.server.allocation_count(), 0);
}

#[test]
fn missing_username_with_integrity_is_400() {
    let mut s = sim();
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::ALLOCATE, Class::Request, [3; 12])
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .integrity(b"whatever");
    let out = s.client_send(ft(1000), &buf);
    assert_eq!(Resp(out[0].clone()).code(), Some(400));
}

/// RFC 8489 §14.4: a request that names its user only by USERHASH, which this server does not
/// support, is challenged (401 with REALM, NONCE and PASSWORD-ALGORITHMS), not refused.
#[test]
fn userhash_without_username_gets_a_401_challenge() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    c.allocate(&mut s); // a nonce
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::ALLOCATE, Class::Request, [4; 12])
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .attr(attr::USERHASH, &[0x5a; 32])
        .attr(attr::REALM, REALM.as_bytes())
        .attr(attr::NONCE, c.nonce.as_ref().unwrap())
        .attr(attr::PASSWORD_ALGORITHMS, &[0, 2, 0, 0, 0, 1, 0, 0])
        .attr(attr::PASSWORD_ALGORITHM, &[0, 2, 0, 0])
        .integrity_sha256(b"whatever");
    let r = Resp(s.client_send(ft(1001), &buf).remove(0));
    assert_eq!(r.code(), Some(401));
    let m = r.msg();
    for a in [attr::REALM, attr::NONCE, attr::PASSWORD_ALGORITHMS] {
        assert!(m.get(a).is_some(), "{a:#x}");
    }
}

/// RFC 8489 §9.2.4: the response is protected with MESSAGE-INTEGRITY-SHA256 when the request
/// carried PASSWORD-ALGORITHM(S), and with MESSAGE-INTEGRITY otherwise, whichever integrity
/// attribute the request itself used.
#[test]
fn response_integrity_follows_the_password_algorithms_of_the_request() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    let md5 = c.key();
    let nonce = c.nonce.clone().unwrap();
    let signed = |txid: [u8; 12], with_algorithms: bool, sha256_mac: bool| {
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, method::REFRESH, Class::Request, txid);
        w.attr(attr::USERNAME, b"alice")
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, &nonce);
        if with_algorithms {
            w.attr(attr::PASSWORD_ALGORITHMS, &[0, 2, 0, 0, 0, 1, 0, 0])
                .attr(attr::PASSWORD_ALGORITHM, &[0, 1, 0, 0]);
        }
        if sha256_mac {
            w.integrity_sha256(&md5);
        } else {
            w.integrity(&md5);
        }
        buf
    };
    for (i, (with_algorithms, sha256_mac)) in
        [(true, false), (true, true), (false, true), (false, false)]
            .into_iter()
            .enumerate()
    {
        let out = s.client_send(
            c.ft,
            &signed([20 + i as u8; 12], with_algorithms, sha256_mac),
        );
        let r = Resp(out[0].clone());
        assert!(r.is_ok(), "{with_algorithms} {sha256_mac}: {:?}", r.code());
        let want = if with_algorithms {
            crate::stun::Integrity::Sha256
        } else {
            crate::stun::Integrity::Sha1
        };
        assert_eq!(r.msg().verify_integrity(&md5), Some(want), "{i}");
    }
}

#[test]
fn stale_nonce_gets_438_and_the_client_recovers() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    let r = c.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .u32_attr(attr::LIFETIME, 3600);
    });
    assert!(r.is_ok());
    s.advance(601);
    let old = c.nonce.clone();
    let txid = c.txid();
    let req = c.build(method::REFRESH, txid, &|_| {});
    let r = Resp(s.client_send(c.ft, &req).remove(0));
    assert_eq!(r.code(), Some(438));
    assert!(r.msg().get(attr::NONCE).is_some());
    // The helper retries with the new nonce.
    let r = c.request(&mut s, method::REFRESH, &|_| {});
    assert!(r.is_ok());
    assert_ne!(old, c.nonce);
}

#[test]
fn nonce_is_bound_to_the_client_address() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    c.allocate(&mut s);
    let mut other = Client::new(
        FiveTuple {
            client: peer("198.51.100.99:1000"),
            ..ft(1000)
        },
        "alice",
        "wonderland",
    );
    other.nonce = c.nonce.clone();
    let txid = other.txid();
    let req = other.build(method::ALLOCATE, txid, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(
        Resp(s.client_send(other.ft, &req).remove(0)).code(),
        Some(438)
    );
}

#[test]
fn sha256_password_algorithm_and_integrity() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    c.allocate(&mut s); // nonce
    s.client_send(
        c.ft,
        &c.build(method::REFRESH, [1; 12], &|w| {
            w.u32_attr(attr::LIFETIME, 0);
        }),
    );
    c.sha256 = true;
    let r = c.allocate(&mut s);
    assert!(r.is_ok(), "{:?}", r.code());
    assert_eq!(
        r.msg().verify_integrity(&c.key()),
        Some(crate::stun::Integrity::Sha256)
    );
    assert!(r.msg().get(attr::MESSAGE_INTEGRITY).is_none());
    // A bid-down attempt: PASSWORD-ALGORITHMS that differs from the server's list.
    let txid = c.txid();
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::REFRESH, Class::Request, txid)
        .attr(attr::USERNAME, b"alice")
        .attr(attr::REALM, REALM.as_bytes())
        .attr(attr::NONCE, c.nonce.as_ref().unwrap())
        .attr(attr::PASSWORD_ALGORITHMS, &[0, 1, 0, 0])
        .attr(attr::PASSWORD_ALGORITHM, &[0, 1, 0, 0])
        .integrity(
            crate::auth::long_term_key(
                crate::auth::PasswordAlgorithm::Md5,
                "alice",
                REALM,
                "wonderland",
            )
            .as_bytes(),
        );
    assert_eq!(Resp(s.client_send(c.ft, &buf).remove(0)).code(), Some(400));
}

#[test]
fn rest_credentials_work_until_they_expire_and_then_refresh_is_refused() {
    let mut s = sim();
    let (user, pass) = rest_credential("s3cret", "carol", UNIX0 + 100, ':');
    let mut c = Client::new(ft(1000), &user, &pass);
    assert!(c.allocate(&mut s).is_ok());
    s.advance(50);
    assert!(c.request(&mut s, method::REFRESH, &|_| {}).is_ok());
    s.advance(60);
    assert_eq!(
        c.request(&mut s, method::REFRESH, &|_| {}).code(),
        Some(401)
    );
    let r = permit(&mut c, &mut s, &[peer("8.8.8.8:1")]);
    assert_eq!(r.code(), Some(401));
    // A new Allocate with the expired credential fails too.
    let mut c2 = Client::new(ft(1001), &user, &pass);
    assert_eq!(c2.allocate(&mut s).code(), Some(401));
}

#[test]
fn expired_rest_credentials_may_refresh_when_the_operator_allows_it() {
    let mut s = sim_with(Opts {
        enforce_expiry: false,
        ..Opts::default()
    });
    let (user, pass) = rest_credential("s3cret", "carol", UNIX0 + 100, ':');
    let mut c = Client::new(ft(1000), &user, &pass);
    assert!(c.allocate(&mut s).is_ok());
    s.advance(200);
    assert!(c.request(&mut s, method::REFRESH, &|_| {}).is_ok());
    let mut c2 = Client::new(ft(1001), &user, &pass);
    assert_eq!(c2.allocate(&mut s).code(), Some(401));
}

#[test]
fn another_user_on_the_same_allocation_gets_441() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    let mut b = Client::new(ft(1000), "bob", "builder");
    assert_eq!(
        b.request(&mut s, method::REFRESH, &|_| {}).code(),
        Some(441)
    );
}

#[test]
fn refresh_zero_deletes_and_frees_the_port() {
    let mut s = sim_with(Opts {
        min_port: 50000,
        max_port: 50000,
        ..Opts::default()
    });
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    let mut c2 = Client::new(ft(1001), "alice", "wonderland");
    assert_eq!(c2.allocate(&mut s).code(), Some(508));
    let r = c.request(&mut s, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 0);
    });
    assert!(r.is_ok());
    assert_eq!(r.lifetime(), 0);
    assert_eq!(s.io.closed.len(), 1);
    assert_eq!(s.server.allocation_count(), 0);
    assert!(c2.allocate(&mut s).is_ok());
    // Refresh without an allocation: 437.
    assert_eq!(
        c.request(&mut s, method::REFRESH, &|_| {}).code(),
        Some(437)
    );
}

#[test]
fn allocation_expires_at_its_lifetime_unless_refreshed() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    s.advance(599);
    assert_eq!(s.server.allocation_count(), 1);
    let r = c.request(&mut s, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 1200);
    });
    assert_eq!(r.lifetime(), 1200);
    s.advance(1199);
    assert_eq!(s.server.allocation_count(), 1);
    s.advance(2);
    assert_eq!(s.server.allocation_count(), 0);
    assert_eq!(s.io.closed.len(), 1);
}

#[test]
fn port_in_use_by_another_process_is_skipped() {
    let mut s = sim_with(Opts {
        min_port: 50000,
        max_port: 50003,
        ..Opts::default()
    });
    for p in 50000..50003 {
        s.io.taken
            .insert(SocketAddr::new("10.0.0.1".parse().unwrap(), p));
    }
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    let r = c.allocate(&mut s);
    assert!(r.is_ok());
    assert_eq!(r.relayed()[0].port(), 50003);
    // All four taken now: 508, and the ports that failed to bind are free again later.
    let mut c2 = Client::new(ft(1001), "alice", "wonderland");
    assert_eq!(c2.allocate(&mut s).code(), Some(508));
    s.io.taken.clear();
    assert!(c2.allocate(&mut s).is_ok());
}

#[test]
fn permissions_send_and_data_indications() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    let relay = relay_of(&s, false);
    let p1 = peer("8.8.8.8:4000");
    let p2 = peer("1.1.1.1:5000");

    // No permission yet: a Send is dropped, a peer's packet too.
    s.client_send(c.ft, &send_indication(c.ft, p1, b"early"));
    assert!(s.io.to_peer.is_empty());
    assert!(s.peer_send(relay, p1, b"knock").is_empty());

    assert!(permit(&mut c, &mut s, &[p1, p2]).is_ok());
    s.client_send(c.ft, &send_indication(c.ft, p1, b"hello"));
    s.client_send(c.ft, &send_indication(c.ft, p2, b"there"));
    assert_eq!(s.io.to_peer.len(), 2);
    assert_eq!(s.io.to_peer[0], (relay, p1, b"hello".to_vec()));
    assert_eq!(s.io.to_peer[1].1, p2);

    // The permission is per IP: another port of the same peer is fine.
    let out = s.peer_send(relay, peer("8.8.8.8:9999"), b"reply!");
    assert_eq!(out.len(), 1);
    let m = Message::parse(&out[0]).unwrap();
    assert_eq!(m.method(), method::DATA);
    assert_eq!(m.class(), Class::Indication);
    assert_eq!(m.get(attr::DATA), Some(&b"reply!"[..]));
    assert_eq!(
        m.xor_address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(),
        peer("8.8.8.8:9999")
    );

    // Permissions last 300 s.
    s.advance(299);
    assert_eq!(s.peer_send(relay, p1, b"x").len(), 1);
    s.advance(2);
    assert!(s.peer_send(relay, p1, b"x").is_empty());
    s.io.to_peer.clear();
    s.client_send(c.ft, &send_indication(c.ft, p1, b"late"));
    assert!(s.io.to_peer.is_empty());
    assert!(permit(&mut c, &mut s, &[p1]).is_ok());
    assert_eq!(s.peer_send(relay, p1, b"x").len(), 1);
    let counters = s.server.counters(&c.ft).unwrap();
    assert_eq!(counters.packets_to_peer, 2);
    assert!(counters.dropped_no_permission >= 3);
}

#[test]
fn create_permission_needs_a_peer_and_checks_them_all() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert_eq!(
        permit(&mut c, &mut s, &[peer("8.8.8.8:1")]).code(),
        Some(437)
    );
    assert!(c.allocate(&mut s).is_ok());
    assert_eq!(permit(&mut c, &mut s, &[]).code(), Some(400));
    // One bad peer spoils the request: nothing is installed.
    let r = permit(&mut c, &mut s, &[peer("8.8.8.8:1"), peer("127.0.0.1:1")]);
    assert_eq!(r.code(), Some(403));
    let relay = relay_of(&s, false);
    assert!(s.peer_send(relay, peer("8.8.8.8:1"), b"x").is_empty());
    // An IPv6 peer on an IPv4-only allocation.
    assert_eq!(
        permit(&mut c, &mut s, &[peer("[2606:4700::1111]:1")]).code(),
        Some(443)
    );
}

#[test]
fn permission_cap_answers_508() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    let peers: Vec<SocketAddr> = (1..=8).map(|i| peer(&format!("8.8.4.{i}:1"))).collect();
    assert!(permit(&mut c, &mut s, &peers).is_ok());
    assert_eq!(
        permit(&mut c, &mut s, &[peer("9.9.9.9:1")]).code(),
        Some(508)
    );
    // Refreshing an existing one is fine.
    assert!(permit(&mut c, &mut s, &[peers[0]]).is_ok());
}

#[test]
fn peer_policy_denies_private_peers_unless_allowed() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    for p in [
        "127.0.0.1:1",
        "10.1.2.3:1",
        "169.254.169.254:80",
        "100.64.0.1:1",
        "0.0.0.0:1",
    ] {
        assert_eq!(permit(&mut c, &mut s, &[peer(p)]).code(), Some(403), "{p}");
        assert_eq!(
            bind(&mut c, &mut s, 0x4000, peer(p)).code(),
            Some(403),
            "{p}"
        );
    }
    let mut s = sim_with(Opts {
        allow: vec!["127.0.0.0/8".parse().unwrap()],
        ..Opts::default()
    });
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    assert!(permit(&mut c, &mut s, &[peer("127.0.0.1:1")]).is_ok());
    assert_eq!(
        permit(&mut c, &mut s, &[peer("10.0.0.1:1")]).code(),
        Some(403)
    );
}

#[test]
fn channel_bind_relays_channel_data_both_ways() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    let relay = relay_of(&s, false);
    let p = peer("8.8.8.8:4000");
    assert!(bind(&mut c, &mut s, 0x4001, p).is_ok());
    s.client_send(c.ft, &channel_data(0x4001, b"over the channel"));
    assert_eq!(
        s.io.to_peer.last().unwrap(),
        &(relay, p, b"over the channel".to_vec())
    );
    // ChannelData for an unbound number is dropped.
    let n = s.io.to_peer.len();
    s.client_send(c.ft, &channel_data(0x4002, b"nope"));
    assert_eq!(s.io.to_peer.len(), n);
    // From the bound peer: ChannelData, unpadded on UDP.
    let out = s.peer_send(relay, p, b"back");
    assert_eq!(out, vec![channel_data(0x4001, b"back")]);
    let out = s.peer_send(relay, p, b"odd");
    assert_eq!(out, vec![channel_data(0x4001, b"odd")]);
    // From another port of the same peer IP: a Data indication (permission, no channel).
    let out = s.peer_send(relay, peer("8.8.8.8:4001"), b"other");
    assert_eq!(Message::parse(&out[0]).unwrap().method(), method::DATA);
}

#[test]
fn channel_data_to_stream_clients_is_padded() {
    let mut s = sim();
    let tcp = FiveTuple {
        transport: Transport::Tcp,
        ..ft(1000)
    };
    let mut c = Client::new(tcp, "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    let relay = relay_of(&s, false);
    let p = peer("8.8.8.8:4000");
    assert!(bind(&mut c, &mut s, 0x4001, p).is_ok());
    let out = s.peer_send(relay, p, b"odd");
    assert_eq!(out, vec![vec![0x40, 0x01, 0x00, 0x03, b'o', b'd', b'd', 0]]);
}

#[test]
fn channel_bind_rules() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    let p = peer("8.8.8.8:4000");
    let q = peer("1.1.1.1:4000");
    // RFC 5766 §11 by default: 0x4000-0x7FFF; 0x8000 and up are not channel numbers.
    assert_eq!(bind(&mut c, &mut s, 0x3FFF, p).code(), Some(400));
    assert_eq!(bind(&mut c, &mut s, 0x8000, p).code(), Some(400));
    assert_eq!(bind(&mut c, &mut s, 0xFFFF, p).code(), Some(400));
    assert!(bind(&mut c, &mut s, 0x4000, p).is_ok());
    // Refreshing the same binding is fine.
    assert!(bind(&mut c, &mut s, 0x4000, p).is_ok());
    // Same number, other peer; same peer, other number: 400.
    assert_eq!(bind(&mut c, &mut s, 0x4000, q).code(), Some(400));
    assert_eq!(bind(&mut c, &mut s, 0x4001, p).code(), Some(400));
    assert!(bind(&mut c, &mut s, 0x4001, q).is_ok());
    // Missing peer, missing number.
    let r = c.request(&mut s, method::CHANNEL_BIND, &|w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x05, 0, 0]);
    });
    assert_eq!(r.code(), Some(400));
    let r = c.request(&mut s, method::CHANNEL_BIND, &|w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, p);
    });
    assert_eq!(r.code(), Some(400));
    // Family mismatch.
    assert_eq!(
        bind(&mut c, &mut s, 0x4002, peer("[2606:4700::1]:1")).code(),
        Some(443)
    );
}

/// RFC 5766 §11's numbers above RFC 8656 §12's range (what coturn's uclient picks from)
/// relay both ways; ChannelData for them is read as ChannelData, not as something else.
#[test]
fn channel_numbers_up_to_0x7fff_relay_both_ways() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    let relay = relay_of(&s, false);
    let (p, q) = (peer("8.8.8.8:4000"), peer("8.8.4.4:4000"));
    assert!(bind(&mut c, &mut s, 0x7FFF, p).is_ok());
    assert!(bind(&mut c, &mut s, 0x5000, q).is_ok());
    s.client_send(c.ft, &channel_data(0x7FFF, b"to p"));
    s.client_send(c.ft, &channel_data(0x5000, b"to q"));
    assert_eq!(
        s.io.to_peer,
        vec![(relay, p, b"to p".to_vec()), (relay, q, b"to q".to_vec())]
    );
    assert_eq!(
        s.peer_send(relay, p, b"from p"),
        vec![channel_data(0x7FFF, b"from p")]
    );
    assert_eq!(
        s.peer_send(relay, q, b"from q"),
        vec![channel_data(0x5000, b"from q")]
    );
    assert_eq!(s.server.stats().malformed, 0);
}

/// `server.strict-channel-numbers`: ChannelBind grants only RFC 8656 §12's 0x4000-0x4FFF;
/// ChannelData above it is still ChannelData (dropped as unbound, not malformed). A reload
/// switches it for the ChannelBinds that follow.
#[test]
fn strict_channel_numbers_refuse_above_0x4fff() {
    let mut s = sim_with(Opts {
        strict_channels: true,
        ..Opts::default()
    });
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    let relay = relay_of(&s, false);
    let (p, q) = (peer("8.8.8.8:4000"), peer("8.8.4.4:4000"));
    assert_eq!(bind(&mut c, &mut s, 0x5000, p).code(), Some(400));
    assert_eq!(bind(&mut c, &mut s, 0x7FFF, p).code(), Some(400));
    assert!(bind(&mut c, &mut s, 0x4FFF, p).is_ok());
    s.client_send(c.ft, &channel_data(0x4FFF, b"in range"));
    assert_eq!(s.io.to_peer, vec![(relay, p, b"in range".to_vec())]);
    s.client_send(c.ft, &channel_data(0x5000, b"unbound"));
    assert_eq!(s.io.to_peer.len(), 1);
    let st = s.server.stats();
    assert_eq!(st.malformed, 0);
    assert_eq!(st.drops[super::stats::DropReason::NoChannel as usize], 1);

    let mut r = lifecycle::reconfigure_with(&[("alice", "wonderland")], 0);
    r.strict_channel_numbers = false;
    s.server.reconfigure(r);
    assert!(bind(&mut c, &mut s, 0x5000, q).is_ok());
}

#[test]
fn channel_expires_after_600s_and_stays_reserved_for_300s_more() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    let p = peer("8.8.8.8:4000");
    let q = peer("1.1.1.1:4000");
    assert!(bind(&mut c, &mut s, 0x4000, p).is_ok());
    // Keep the allocation and the permission alive without touching the channel.
    for _ in 0..2 {
        s.advance(290);
        assert!(c.request(&mut s, method::REFRESH, &|_| {}).is_ok());
        assert!(permit(&mut c, &mut s, &[p]).is_ok());
    }
    s.advance(19); // 599 s
    s.client_send(c.ft, &channel_data(0x4000, b"a"));
    assert_eq!(s.io.to_peer.len(), 1);
    s.advance(2); // 601 s
    s.client_send(c.ft, &channel_data(0x4000, b"b"));
    assert_eq!(s.io.to_peer.len(), 1, "expired channel relays nothing");
    assert_eq!(
        bind(&mut c, &mut s, 0x4000, q).code(),
        Some(400),
        "quarantined"
    );
    s.advance(290);
    assert!(c.request(&mut s, method::REFRESH, &|_| {}).is_ok());
    s.advance(10); // past 900 s
    assert!(bind(&mut c, &mut s, 0x4000, q).is_ok());
}

#[test]
fn expired_channel_can_be_rebound_to_the_same_peer() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(
        c.request(&mut s, method::ALLOCATE, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .u32_attr(attr::LIFETIME, 3600);
        })
        .is_ok()
    );
    let p = peer("8.8.8.8:4000");
    assert!(bind(&mut c, &mut s, 0x4000, p).is_ok());
    s.advance(700);
    assert!(bind(&mut c, &mut s, 0x4000, p).is_ok());
    s.client_send(c.ft, &channel_data(0x4000, b"again"));
    assert_eq!(s.io.to_peer.len(), 1);
}

#[test]
fn even_port_and_reservation_token() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    let r = c.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0x80]);
    });
    assert!(r.is_ok());
    let port = r.relayed()[0].port();
    assert_eq!(port % 2, 0);
    let token = r.msg().get(attr::RESERVATION_TOKEN).unwrap().to_vec();
    assert_eq!(token.len(), 8);

    let mut c2 = Client::new(ft(1001), "alice", "wonderland");
    let bad = token.clone();
    let r = c2.request(&mut s, method::ALLOCATE, &move |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0x00])
            .attr(attr::RESERVATION_TOKEN, &bad);
    });
    assert_eq!(r.code(), Some(400));
    let t = token.clone();
    let r = c2.request(&mut s, method::ALLOCATE, &move |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &t);
    });
    assert!(r.is_ok());
    assert_eq!(r.relayed()[0].port(), port + 1);
    // A token works once.
    let mut c3 = Client::new(ft(1002), "alice", "wonderland");
    let r = c3.request(&mut s, method::ALLOCATE, &move |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &token);
    });
    assert_eq!(r.code(), Some(508));
    // EVEN-PORT without R: even port, no token.
    let r = c3.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0x00]);
    });
    assert!(r.is_ok());
    assert_eq!(r.relayed()[0].port() % 2, 0);
    assert!(r.msg().get(attr::RESERVATION_TOKEN).is_none());
}

/// A reservation holds a port as an allocation does: it counts against the user's quota
/// while it lasts, so Allocate(EVEN-PORT R) and Refresh(0) cycles cannot pin ports.
#[test]
fn even_port_reservations_count_against_the_quotas() {
    let mut s = sim_with(Opts {
        user_quota: 2,
        ..Opts::default()
    });
    let reserve = |c: &mut Client, s: &mut Sim| {
        c.request(s, method::ALLOCATE, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .attr(attr::EVEN_PORT, &[0x80]);
        })
    };
    let refresh0 = |c: &mut Client, s: &mut Sim| {
        c.request(s, method::REFRESH, &|w| {
            w.u32_attr(attr::LIFETIME, 0);
        })
    };
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    let r = reserve(&mut c, &mut s);
    assert!(r.is_ok());
    let token = r.msg().get(attr::RESERVATION_TOKEN).unwrap().to_vec();
    assert_eq!(
        s.quotas.user_count("alice"),
        2,
        "the allocation and its reservation"
    );
    // The cycle: with the allocation gone, its reservation still counts.
    assert!(refresh0(&mut c, &mut s).is_ok());
    assert_eq!(s.quotas.user_count("alice"), 1);
    let mut c2 = Client::new(ft(1001), "alice", "wonderland");
    assert_eq!(reserve(&mut c2, &mut s).code(), Some(486));
    assert_eq!(
        s.quotas.user_count("alice"),
        1,
        "a refused Allocate leaks nothing"
    );
    // The same client claiming its token takes over the reservation's count.
    let r = c2.request(&mut s, method::ALLOCATE, &move |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &token);
    });
    assert!(r.is_ok(), "{:?}", r.code());
    assert_eq!(s.quotas.user_count("alice"), 1);
    assert!(refresh0(&mut c2, &mut s).is_ok());
    assert_eq!(s.quotas.user_count("alice"), 0);
    // An unclaimed reservation gives its count back when it expires.
    let mut c3 = Client::new(ft(1002), "alice", "wonderland");
    assert!(reserve(&mut c3, &mut s).is_ok());
    assert!(refresh0(&mut c3, &mut s).is_ok());
    assert_eq!(s.quotas.user_count("alice"), 1);
    s.advance(31);
    let mut c4 = Client::new(ft(1003), "alice", "wonderland");
    assert!(reserve(&mut c4, &mut s).is_ok());
    assert_eq!(s.quotas.user_count("alice"), 2);
    assert_eq!(s.quotas.total(), 2);
}

#[test]
fn even_port_in_a_dual_allocation() {
    let mut s = sim();
    // EVEN-PORT without R: both relayed addresses get an even port (eight allocations, so
    // an odd port picked at random would not go unnoticed).
    for i in 0..8 {
        let mut c = Client::new(ft(1000 + i), "alice", "wonderland");
        let r = c.request(&mut s, method::ALLOCATE, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .attr(attr::EVEN_PORT, &[0x00])
                .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        });
        assert!(r.is_ok());
        let relayed = r.relayed();
        assert_eq!(relayed.len(), 2);
        assert!(relayed[0].is_ipv4() && relayed[1].is_ipv6());
        assert!(relayed.iter().all(|a| a.port() % 2 == 0), "{relayed:?}");
        assert!(r.msg().get(attr::RESERVATION_TOKEN).is_none());
    }
    // With R: one token cannot reserve ports of two families.
    let mut d = Client::new(ft(2000), "alice", "wonderland");
    let r = d.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0x80])
            .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(r.code(), Some(400));
    assert!(s.server.relayed_addresses(&d.ft).is_empty());
}

#[test]
fn requested_and_additional_address_family() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    let r = c.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert!(r.is_ok());
    assert_eq!(
        r.relayed()[0].ip(),
        "2001:db8::1".parse::<IpAddr>().unwrap()
    );
    // An IPv4 peer on an IPv6 allocation.
    assert_eq!(
        permit(&mut c, &mut s, &[peer("8.8.8.8:1")]).code(),
        Some(443)
    );
    assert!(permit(&mut c, &mut s, &[peer("[2606:4700::1111]:1")]).is_ok());

    let mut d = Client::new(ft(1001), "alice", "wonderland");
    let r = d.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert!(r.is_ok());
    let relayed = r.relayed();
    assert_eq!(relayed.len(), 2);
    assert!(relayed[0].is_ipv4() && relayed[1].is_ipv6());
    // Both families relay.
    assert!(
        permit(
            &mut d,
            &mut s,
            &[peer("8.8.8.8:1"), peer("[2606:4700::1111]:1")]
        )
        .is_ok()
    );
    s.io.to_peer.clear();
    s.client_send(
        d.ft,
        &send_indication(d.ft, peer("[2606:4700::1111]:1"), b"six"),
    );
    s.client_send(d.ft, &send_indication(d.ft, peer("8.8.8.8:1"), b"four"));
    assert_eq!(s.io.to_peer.len(), 2);
    assert_ne!(
        s.io.to_peer[0].0, s.io.to_peer[1].0,
        "each family has its own relay"
    );
    // Refresh LIFETIME 0 with a family drops just that one.
    let r = d.request(&mut s, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 0)
            .attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert!(r.is_ok());
    assert_eq!(s.server.relayed_addresses(&d.ft).len(), 1);

    let mut e = Client::new(ft(1002), "alice", "wonderland");
    let r = e.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(r.code(), Some(400));
    let r = e.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[1, 0, 0, 0]);
    });
    assert_eq!(r.code(), Some(400));
    let r = e.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::REQUESTED_ADDRESS_FAMILY, &[3, 0, 0, 0]);
    });
    assert_eq!(r.code(), Some(440));
}

#[test]
fn ipv6_unavailable_gives_440_or_address_error_code() {
    let mut s = sim_with(Opts {
        v6: false,
        ..Opts::default()
    });
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    let r = c.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(r.code(), Some(440));
    let r = c.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert!(r.is_ok());
    assert_eq!(r.relayed().len(), 1);
    let v = r.msg().get(attr::ADDRESS_ERROR_CODE).unwrap();
    assert_eq!(v[0], 2);
    assert_eq!(decode_error_code(v).unwrap().0, 440);
}

#[test]
fn unknown_method_is_400_and_responses_are_ignored() {
    let mut s = sim();
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, 0x0FF, Class::Request, [1; 12]);
    assert_eq!(
        Resp(s.client_send(ft(1000), &buf).remove(0)).code(),
        Some(400)
    );
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::BINDING, Class::Success, [1; 12]);
    assert!(s.client_send(ft(1000), &buf).is_empty());
}

#[test]
fn user_quota_486_and_total_quota_508_free_up_when_allocations_end() {
    let mut s = sim_with(Opts {
        user_quota: 2,
        total_quota: 3,
        ..Opts::default()
    });
    // REST users count without their timestamp: two credentials of carol are one user.
    let (u1, p1) = rest_credential("s3cret", "carol", UNIX0 + 1000, ':');
    let (u2, p2) = rest_credential("s3cret", "carol", UNIX0 + 2000, ':');
    let mut a = Client::new(ft(1000), &u1, &p1);
    let mut b = Client::new(ft(1001), &u2, &p2);
    let mut c = Client::new(ft(1002), &u1, &p1);
    assert!(a.allocate(&mut s).is_ok());
    assert!(b.allocate(&mut s).is_ok());
    assert_eq!(c.allocate(&mut s).code(), Some(486));
    let mut d = Client::new(ft(1003), "alice", "wonderland");
    assert!(d.allocate(&mut s).is_ok());
    let mut e = Client::new(ft(1004), "bob", "builder");
    assert_eq!(e.allocate(&mut s).code(), Some(508));
    // Ending allocations frees both quotas.
    assert!(
        a.request(&mut s, method::REFRESH, &|w| {
            w.u32_attr(attr::LIFETIME, 0);
        })
        .is_ok()
    );
    assert!(c.allocate(&mut s).is_ok());
    s.advance(601);
    assert_eq!(s.server.allocation_count(), 0);
    assert!(e.allocate(&mut s).is_ok());
}

#[test]
fn failed_allocations_do_not_leak_quota_or_ports() {
    let mut s = sim_with(Opts {
        min_port: 50000,
        max_port: 50001,
        total_quota: 2,
        ..Opts::default()
    });
    let mut a = Client::new(ft(1000), "alice", "wonderland");
    let mut b = Client::new(ft(1001), "alice", "wonderland");
    s.io.taken
        .insert(SocketAddr::new("10.0.0.1".parse().unwrap(), 50000));
    s.io.taken
        .insert(SocketAddr::new("10.0.0.1".parse().unwrap(), 50001));
    for _ in 0..5 {
        assert_eq!(a.allocate(&mut s).code(), Some(508));
    }
    s.io.taken.clear();
    assert!(a.allocate(&mut s).is_ok());
    assert!(b.allocate(&mut s).is_ok());
}

mod lifecycle;
#[test]
fn bandwidth_limit_drops_and_counts_each_direction() {
    use super::stats::DropReason;
    // 80 kbit/s = 10,000 bytes/s each way; default burst 2,500 bytes.
    let mut s = sim_with(Opts {
        max_bps: 80_000,
        ..Opts::default()
    });
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    let relay = relay_of(&s, false);
    let p = peer("8.8.8.8:4000");
    assert!(bind(&mut c, &mut s, 0x4001, p).is_ok());
    let payload = [0u8; 1000];
    for _ in 0..5 {
        s.client_send(c.ft, &channel_data(0x4001, &payload));
    }
    assert_eq!(s.io.to_peer.len(), 2, "the burst lets two through");
    // 100 ms later: 1,000 bytes of tokens, one more packet.
    s.elapsed += Duration::from_millis(100);
    s.client_send(c.ft, &channel_data(0x4001, &payload));
    s.client_send(c.ft, &channel_data(0x4001, &payload));
    assert_eq!(s.io.to_peer.len(), 3);
    // The other direction has its own bucket.
    let delivered: usize = (0..4).map(|_| s.peer_send(relay, p, &payload).len()).sum();
    assert_eq!(delivered, 2);

    let st = s.server.stats();
    let bw = DropReason::Bandwidth as usize;
    assert_eq!(st.drops[bw], 4 + 2);
    assert_eq!(st.traffic.rcvp, 7);
    assert_eq!(st.traffic.rcvb, 7000);
    assert_eq!(st.traffic.peer_sentp, 3);
    assert_eq!(st.traffic.peer_sentb, 3000);
    assert_eq!(st.traffic.peer_rcvp, 4);
    assert_eq!(st.traffic.sentp, 2);
    let counters = s.server.counters(&c.ft).unwrap();
    assert_eq!(counters.drops[bw], 6);
    assert_eq!(counters.packets_to_peer, 3);
    assert_eq!(counters.packets_from_peer, 2);
}

#[test]
fn drops_are_counted_by_reason() {
    use super::stats::DropReason;
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    // No allocation yet.
    s.client_send(c.ft, &channel_data(0x4001, b"x"));
    assert!(c.allocate(&mut s).is_ok());
    let relay = relay_of(&s, false);
    // No channel.
    s.client_send(c.ft, &channel_data(0x4001, b"x"));
    // No permission: a Send indication and a peer datagram.
    s.client_send(c.ft, &send_indication(c.ft, peer("8.8.8.8:1"), b"x"));
    s.peer_send(relay, peer("8.8.8.8:1"), b"x");
    let st = s.server.stats();
    assert_eq!(st.drops[DropReason::NoAllocation as usize], 1);
    assert_eq!(st.drops[DropReason::NoChannel as usize], 1);
    assert_eq!(st.drops[DropReason::NoPermission as usize], 2);
    assert_eq!(st.drops[DropReason::Bandwidth as usize], 0);
    assert_eq!(st.dropped, 4);
    // Requests and errors by method and code: the first Allocate got 401.
    use super::stats::{code_slot, method_slot};
    let alloc = method_slot(method::ALLOCATE);
    assert_eq!(st.requests_by_method[alloc], 2);
    assert_eq!(st.errors_by_method[alloc][code_slot(401)], 1);
}

#[test]
fn sessions_gauges_and_ending_a_session() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    let mut d = Client::new(ft(1001), "bob", "builder");
    assert!(d.allocate(&mut s).is_ok());
    let p = peer("8.8.8.8:4000");
    assert!(bind(&mut c, &mut s, 0x4001, p).is_ok());
    assert!(permit(&mut c, &mut s, &[peer("8.8.4.4:1")]).is_ok());
    let now = s.now().mono;
    let g = s.server.gauges(now);
    assert_eq!(g.allocations, [2, 0, 0]);
    assert_eq!(g.permissions, 2);
    assert_eq!(g.channels, 1);

    let all = s.server.sessions(now, None);
    assert_eq!(all.len(), 2);
    let alice = s.server.sessions(now, Some("alice"));
    assert_eq!(alice.len(), 1);
    let a = &alice[0];
    assert_eq!(a.client, c.ft.client);
    assert_eq!((a.peers, a.channels), (2, 1));
    assert_eq!(a.started_unix, UNIX0);
    assert_eq!(a.relayed, s.server.relayed_addresses(&c.ft));
    assert_eq!(s.server.session(a.id, now).as_ref(), Some(a));

    let closed_before = s.io.closed.len();
    assert!(s.server.end_session(a.id, now, &mut s.io));
    assert!(!s.server.end_session(a.id, now, &mut s.io), "already gone");
    assert_eq!(s.io.closed.len(), closed_before + 1);
    assert_eq!(s.server.allocation_count(), 1);
    assert!(s.server.session(a.id, now).is_none());
    // The client's next request finds no allocation.
    assert_eq!(permit(&mut c, &mut s, &[p]).code(), Some(437));
    // Expiry timers of the ended allocation are harmless.
    s.advance(700);
    assert_eq!(s.server.allocation_count(), 0);
}
mod abuse;
