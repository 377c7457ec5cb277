//! The one STUN client of everything that drives the core without the network driver: the
//! simulation tests, the fuzz harness's signed requests, the allocation test, the benchmarks
//! and the cost example. It gives the server configuration that knows its user, learns the
//! nonce, then signs its requests with the long-term credential mechanism (RFC 8489 §9.2, MD5
//! key, or SHA-256 with PASSWORD-ALGORITHM) and hands them to [`Server::handle_client`]; the
//! caller's [`Io`] keeps what the server answered ([`LastToClient`]).
//!
//! Like the rest of the core it does no I/O of its own and reads no clock: the caller
//! passes `now` and the transaction ids.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;

use crate::auth::{AuthConfig, Authenticator, Key, PasswordAlgorithm, UserSecret, long_term_key};
use crate::stun::{Class, Message, MessageWriter, attr, method};
use crate::turn::rate_limit::{RateLimit, ResponseLimiter};
use crate::turn::{FiveTuple, Io, Server, ServerConfig, Time};

/// REQUESTED-TRANSPORT for UDP, which every Allocate must carry (RFC 8656 §7.1): IANA
/// protocol 17, then zeros.
const UDP: [u8; 4] = [17, 0, 0, 0];

/// PASSWORD-ALGORITHMS offering SHA-256 then MD5, and PASSWORD-ALGORITHM choosing SHA-256
/// (RFC 8489 §14.11, §14.12).
const ALGORITHMS_SHA256_MD5: [u8; 8] = [0, 2, 0, 0, 0, 1, 0, 0];
const ALGORITHM_SHA256: [u8; 4] = [0, 2, 0, 0];

/// What a test [`Io`] keeps of its sends to the client: the last STUN message, which the
/// setup requests read their answer from.
pub trait LastToClient: Io {
    fn last_to_client(&self) -> &[u8];
}

/// A client with long-term credentials on one 5-tuple.
#[derive(Clone)]
pub struct TestClient {
    /// The 5-tuple the requests come from; callers driving many allocations change it.
    pub ft: FiveTuple,
    /// Append FINGERPRINT (RFC 8489 §14.7) to every request it writes.
    pub fingerprint: bool,
    /// Sign with the SHA-256 key and MESSAGE-INTEGRITY-SHA256, naming the algorithm
    /// (RFC 8489 §9.2.3.2); else the MD5 key and MESSAGE-INTEGRITY.
    pub sha256: bool,
    /// The NONCE requests carry: `None` until [`learn_nonce`](Self::learn_nonce) or the
    /// caller sets it, and requests go unsigned until then.
    pub nonce: Option<Vec<u8>>,
    user: String,
    realm: String,
    password: String,
}

impl TestClient {
    /// A client of `user` in `realm` with `password` (MD5 key, RFC 8489 §18.5.1), without
    /// FINGERPRINT.
    pub fn new(user: &str, realm: &str, password: &str, ft: FiveTuple) -> TestClient {
        TestClient {
            ft,
            fingerprint: false,
            sha256: false,
            nonce: None,
            user: user.to_owned(),
            realm: realm.to_owned(),
            password: password.to_owned(),
        }
    }

    /// A server configuration for this client: [`ServerConfig::testing`] with an
    /// authenticator that knows only this user (realm, password; nonce lifetime 600 s,
    /// nonce key `[1; 32]`, REST separator `:`), the IPv4 relay address 192.0.2.1 (bound and
    /// advertised), relay `ports`, secret `[2; 32]`, 16 permissions per allocation, and the
    /// unauthenticated-response limiter off (`rate: 0`), so the 401 that teaches the nonce is
    /// never held back. Callers change other fields with struct update syntax.
    pub fn server_config(&self, ports: RangeInclusive<u16>) -> ServerConfig {
        let auth = Authenticator::new(AuthConfig {
            realm: self.realm.clone(),
            users: vec![(
                self.user.clone(),
                UserSecret::Password(self.password.clone()),
            )],
            secrets: vec![],
            rest_separator: ':',
            nonce_lifetime_secs: 600,
            nonce_key: [1; 32],
        });
        let relay = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        ServerConfig {
            max_permissions: 16,
            unauth_limiter: Arc::new(ResponseLimiter::new(
                RateLimit { rate: 0, burst: 0 },
                128,
                [3; 16],
            )),
            ..ServerConfig::testing(Arc::new(auth), [Some((relay, relay)), None], ports, [2; 32])
        }
    }

    /// The long-term key of the algorithm the client signs with.
    pub fn key(&self) -> Key {
        let alg = if self.sha256 {
            PasswordAlgorithm::Sha256
        } else {
            PasswordAlgorithm::Md5
        };
        long_term_key(alg, &self.user, &self.realm, &self.password)
    }

    /// Writes into `buf` the request `method` with transaction id `txid`: the attributes
    /// `attrs` writes, then, once the client has a nonce, USERNAME, REALM, NONCE (with
    /// SHA-256: PASSWORD-ALGORITHMS and PASSWORD-ALGORITHM) and the MESSAGE-INTEGRITY
    /// (RFC 8489 §9.2.3.2; the integrity covers all that comes before it, §14.5), then
    /// FINGERPRINT if asked for.
    pub fn write(
        &self,
        buf: &mut Vec<u8>,
        method: u16,
        txid: [u8; 12],
        attrs: impl FnOnce(&mut MessageWriter),
    ) {
        let mut w = MessageWriter::new(buf, method, Class::Request, txid);
        attrs(&mut w);
        if let Some(nonce) = &self.nonce {
            w.attr(attr::USERNAME, self.user.as_bytes())
                .attr(attr::REALM, self.realm.as_bytes())
                .attr(attr::NONCE, nonce);
            let key = self.key();
            if self.sha256 {
                w.attr(attr::PASSWORD_ALGORITHMS, &ALGORITHMS_SHA256_MD5)
                    .attr(attr::PASSWORD_ALGORITHM, &ALGORITHM_SHA256)
                    .integrity_sha256(key.as_bytes());
            } else {
                w.integrity(key.as_bytes());
            }
        }
        if self.fingerprint {
            w.fingerprint();
        }
    }

    /// The [`write`](Self::write)n request, in a buffer of its own.
    pub fn signed(
        &self,
        method: u16,
        txid: [u8; 12],
        attrs: impl FnOnce(&mut MessageWriter),
    ) -> Vec<u8> {
        let mut buf = Vec::new();
        self.write(&mut buf, method, txid, attrs);
        buf
    }

    /// Sends the [`signed`](Self::signed) request through [`Server::handle_client`] and
    /// returns the last message `io` sent to the client: the answer.
    pub fn request<'io, I: LastToClient>(
        &self,
        server: &mut Server,
        io: &'io mut I,
        now: Time,
        method: u16,
        txid: [u8; 12],
        attrs: impl FnOnce(&mut MessageWriter),
    ) -> &'io [u8] {
        let req = self.signed(method, txid, attrs);
        server.handle_client(now, self.ft, &req, io);
        io.last_to_client()
    }

    /// Sends an Allocate for UDP without credentials and keeps the NONCE of the 401 it
    /// gets (RFC 8489 §9.2.3.1: the first request learns realm and nonce); false, keeping
    /// the old nonce, if the answer has none.
    pub fn learn_nonce<I: LastToClient>(
        &mut self,
        server: &mut Server,
        io: &mut I,
        now: Time,
        txid: [u8; 12],
    ) -> bool {
        let mut req = Vec::new();
        MessageWriter::new(&mut req, method::ALLOCATE, Class::Request, txid)
            .attr(attr::REQUESTED_TRANSPORT, &UDP);
        server.handle_client(now, self.ft, &req, io);
        let answer = Message::parse(io.last_to_client()).ok();
        match answer.and_then(|m| m.get(attr::NONCE)) {
            Some(nonce) => {
                self.nonce = Some(nonce.to_vec());
                true
            }
            None => false,
        }
    }

    /// A signed Allocate for a UDP relay (RFC 8656 §7.1); returns the answer.
    pub fn allocate<'io, I: LastToClient>(
        &self,
        server: &mut Server,
        io: &'io mut I,
        now: Time,
        txid: [u8; 12],
    ) -> &'io [u8] {
        self.request(server, io, now, method::ALLOCATE, txid, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &UDP);
        })
    }

    /// A signed ChannelBind of `channel` to `peer` (RFC 8656 §12.1); returns the answer.
    pub fn bind_channel<'io, I: LastToClient>(
        &self,
        server: &mut Server,
        io: &'io mut I,
        now: Time,
        txid: [u8; 12],
        channel: u16,
        peer: SocketAddr,
    ) -> &'io [u8] {
        let [hi, lo] = channel.to_be_bytes();
        self.request(server, io, now, method::CHANNEL_BIND, txid, |w| {
            w.attr(attr::CHANNEL_NUMBER, &[hi, lo, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::stun::{Integrity, decode_error_code};
    use crate::testing::CountingIo;
    use crate::turn::Transport;

    fn tuple(port: u16) -> FiveTuple {
        FiveTuple {
            client: SocketAddr::from(([198, 51, 100, 1], port)),
            server: "192.0.2.1:3478".parse().unwrap(),
            transport: Transport::Udp,
        }
    }

    fn class_and_code(answer: &[u8]) -> (Class, Option<u16>) {
        let m = Message::parse(answer).expect("an answer that parses");
        let code = m
            .get(attr::ERROR_CODE)
            .and_then(decode_error_code)
            .map(|(c, _)| c);
        (m.class(), code)
    }

    fn now() -> Time {
        Time {
            mono: Instant::now(),
            unix: 1_800_000_000,
        }
    }

    /// `server_config` is what its documentation says, over `ServerConfig::testing`.
    #[test]
    fn server_config_knows_the_user_and_turns_the_unauthenticated_limit_off() {
        let client = TestClient::new("alice", "client.test", "pw", tuple(40003));
        let c = client.server_config(50000..=50009);
        assert_eq!(c.max_permissions, 16);
        assert_eq!(c.unauth_limiter.limit(), RateLimit { rate: 0, burst: 0 });
        let relay = IpAddr::from([192, 0, 2, 1]);
        assert_eq!(c.relay_ips, [Some((relay, relay)), None]);
        assert_eq!(c.ports.lock().unwrap().capacity(), 10);
        assert_eq!(c.secret, [2; 32]);
        assert_eq!(c.rest_separator, ':');
    }

    /// The whole setup sequence succeeds with the right password, and the answers go to
    /// the 5-tuple the client names.
    #[test]
    fn learns_the_nonce_allocates_and_binds_a_channel() {
        let mut client = TestClient::new("alice", "client.test", "pw", tuple(40000));
        let mut server = Server::new(client.server_config(50000..=50009));
        let mut io = CountingIo::default();
        let now = now();
        assert!(client.learn_nonce(&mut server, &mut io, now, [9; 12]));
        let m = Message::parse(&io.last).expect("an answer that parses");
        assert_eq!(m.get(attr::NONCE), client.nonce.as_deref());
        assert_eq!(class_and_code(&io.last), (Class::Error, Some(401)));
        assert_eq!(io.last_to, Some(tuple(40000)));

        let a = client.allocate(&mut server, &mut io, now, [3; 12]);
        assert_eq!(class_and_code(a), (Class::Success, None));
        assert_eq!(server.allocation_count(), 1);
        assert_eq!(io.relays.len(), 1);

        let peer: SocketAddr = "8.8.8.8:5000".parse().unwrap();
        let b = client.bind_channel(&mut server, &mut io, now, [4; 12], 0x4000, peer);
        assert_eq!(class_and_code(b), (Class::Success, None));
        // A channel number outside 0x4000..=0x7FFF is refused (RFC 5766 §11): the
        // number is written as given.
        let b = client.bind_channel(&mut server, &mut io, now, [5; 12], 0x3FFF, peer);
        assert_eq!(class_and_code(b), (Class::Error, Some(400)));
    }

    /// The requests are signed with the key of the given password: another password gets
    /// a 401 and no allocation.
    #[test]
    fn a_wrong_password_is_refused() {
        let good = TestClient::new("alice", "client.test", "pw", tuple(40001));
        let mut server = Server::new(good.server_config(50000..=50009));
        let mut io = CountingIo::default();
        let now = now();
        let mut client = TestClient::new("alice", "client.test", "not-pw", tuple(40001));
        assert!(client.learn_nonce(&mut server, &mut io, now, [9; 12]));
        let a = client.allocate(&mut server, &mut io, now, [3; 12]);
        assert_eq!(class_and_code(a), (Class::Error, Some(401)));
        assert_eq!(server.allocation_count(), 0);
    }

    /// `signed` writes the credentials, MESSAGE-INTEGRITY over them, and FINGERPRINT only
    /// when asked for.
    #[test]
    fn signed_requests_carry_credentials_and_optional_fingerprint() {
        let mut client = TestClient::new("alice", "client.test", "pw", tuple(40002));
        client.nonce = Some(b"n0nce".to_vec());
        let key = long_term_key(PasswordAlgorithm::Md5, "alice", "client.test", "pw");
        for fingerprint in [false, true] {
            client.fingerprint = fingerprint;
            let req = client.signed(method::ALLOCATE, [7; 12], |w| {
                w.attr(attr::REQUESTED_TRANSPORT, &UDP);
            });
            let m = Message::parse(&req).expect("parses");
            assert_eq!(m.class(), Class::Request);
            assert_eq!(m.method(), method::ALLOCATE);
            assert_eq!(m.transaction_id(), [7; 12]);
            assert_eq!(m.get(attr::REQUESTED_TRANSPORT), Some(&UDP[..]));
            assert_eq!(m.get(attr::USERNAME), Some(&b"alice"[..]));
            assert_eq!(m.get(attr::REALM), Some(&b"client.test"[..]));
            assert_eq!(m.get(attr::NONCE), Some(&b"n0nce"[..]));
            assert_eq!(m.verify_integrity(key.as_bytes()), Some(Integrity::Sha1));
            assert_eq!(m.has_fingerprint(), fingerprint);
        }
    }

    /// Without a nonce a request goes unsigned; with SHA-256 it names the algorithm and
    /// carries MESSAGE-INTEGRITY-SHA256 under the SHA-256 key.
    #[test]
    fn unsigned_until_a_nonce_and_sha256_when_asked_for() {
        let mut client = TestClient::new("alice", "client.test", "pw", tuple(40004));
        let req = client.signed(method::REFRESH, [8; 12], |_| {});
        let m = Message::parse(&req).expect("parses");
        assert_eq!(m.get(attr::USERNAME), None);
        assert_eq!(m.verify_integrity(client.key().as_bytes()), None);

        client.nonce = Some(b"n0nce".to_vec());
        client.sha256 = true;
        let req = client.signed(method::REFRESH, [8; 12], |_| {});
        let m = Message::parse(&req).expect("parses");
        assert_eq!(m.get(attr::PASSWORD_ALGORITHM), Some(&ALGORITHM_SHA256[..]));
        assert_eq!(
            m.get(attr::PASSWORD_ALGORITHMS),
            Some(&ALGORITHMS_SHA256_MD5[..])
        );
        let key = long_term_key(PasswordAlgorithm::Sha256, "alice", "client.test", "pw");
        assert_eq!(client.key().as_bytes(), key.as_bytes());
        assert_eq!(m.verify_integrity(key.as_bytes()), Some(Integrity::Sha256));
    }
}
