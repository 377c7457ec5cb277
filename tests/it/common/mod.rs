//! Shared helpers for the integration tests: start the real `turnd` binary on loopback, end
//! it by its pid, and talk to it with the webrtc-rs `stun` crate (an implementation we did
//! not write).
#![allow(dead_code)]

pub mod netns;
pub mod redis;
pub mod stream;

use std::net::{SocketAddr, UdpSocket};
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::{Duration, Instant};

use stun::agent::TransactionId;
use stun::attributes::*;
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::{Nonce, Realm, Username};
use stun::xoraddr::XorMappedAddress;

pub use turnd::testing::process::{REALM, free_udp_port, run_binary};

/// A `turnd` process of this package's binary ([`turnd::testing::process::TestServer`]:
/// pid, signal, wait_exit, the address); killed (by its own pid) and reaped on drop.
pub struct TestServer(turnd::testing::process::TestServer);

impl TestServer {
    /// Starts turnd listening on `ip` (a free port) with a test user `alice:wonderland`,
    /// relaying on the same IP; `extra` flags are appended.
    pub fn start(ip: &str, extra: &[&str]) -> TestServer {
        TestServer(turnd::testing::process::TestServer::start_binary(
            Path::new(env!("CARGO_BIN_EXE_turnd")),
            ip,
            extra,
        ))
    }
}

impl Deref for TestServer {
    type Target = turnd::testing::process::TestServer;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for TestServer {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

pub fn binding_request() -> Vec<u8> {
    let mut m = Message::new();
    m.build(&[Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)])
        .unwrap();
    m.raw.clone()
}

/// A blocking STUN/TURN client built on the `stun` crate, for what the `turn` crate's client
/// cannot ask (address families, raw errors).
pub struct RawClient {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub user: String,
    pub pass: String,
    pub nonce: Option<String>,
    pub realm: String,
}

pub struct Reply {
    pub msg: Message,
}

impl Reply {
    pub fn code(&self) -> Option<u16> {
        if self.msg.typ.class == CLASS_SUCCESS_RESPONSE {
            return None;
        }
        let mut e = ErrorCodeAttribute::default();
        e.get_from(&self.msg).ok()?;
        Some(e.code.0)
    }
    pub fn xor_addrs(&self, t: AttrType) -> Vec<SocketAddr> {
        // The stun crate reads the first attribute of a type; walk them all.
        self.msg
            .attributes
            .0
            .iter()
            .filter(|a| a.typ == t)
            .map(|a| {
                let mut single = Message::new();
                single.transaction_id = self.msg.transaction_id;
                single.add(t, &a.value);
                let mut x = XorMappedAddress::default();
                x.get_from_as(&single, t).unwrap();
                SocketAddr::new(x.ip, x.port)
            })
            .collect()
    }
}

impl RawClient {
    pub fn new(server: SocketAddr, user: &str, pass: &str) -> RawClient {
        let bind = if server.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        };
        let sock = UdpSocket::bind(bind).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        RawClient {
            sock,
            server,
            user: user.into(),
            pass: pass.into(),
            nonce: None,
            realm: REALM.into(),
        }
    }

    /// Sends a request with `attrs` (type, value), authenticating with the long-term
    /// mechanism, retrying after 401/438 and after a lost datagram.
    pub fn request(&mut self, method: Method, attrs: &[(AttrType, Vec<u8>)]) -> Reply {
        for _ in 0..6 {
            let mut m = Message::new();
            m.build(&[
                Box::new(TransactionId::new()),
                Box::new(MessageType::new(method, CLASS_REQUEST)),
            ])
            .unwrap();
            for (t, v) in attrs {
                if *t == ATTR_XOR_PEER_ADDRESS || *t == ATTR_XORMAPPED_ADDRESS {
                    // Values given as "ip:port" text are XOR-encoded with this transaction id.
                    let addr: SocketAddr = std::str::from_utf8(v).unwrap().parse().unwrap();
                    XorMappedAddress {
                        ip: addr.ip(),
                        port: addr.port(),
                    }
                    .add_to_as(&mut m, *t)
                    .unwrap();
                } else {
                    m.add(*t, v);
                }
            }
            if let Some(n) = &self.nonce {
                let setters: Vec<Box<dyn Setter>> = vec![
                    Box::new(Username::new(ATTR_USERNAME, self.user.clone())),
                    Box::new(Realm::new(ATTR_REALM, self.realm.clone())),
                    Box::new(Nonce::new(ATTR_NONCE, n.clone())),
                    Box::new(MessageIntegrity::new_long_term_integrity(
                        self.user.clone(),
                        self.realm.clone(),
                        self.pass.clone(),
                    )),
                    Box::new(FINGERPRINT),
                ];
                for s in setters {
                    s.add_to(&mut m).unwrap();
                }
            } else {
                FINGERPRINT.add_to(&mut m).unwrap();
            }
            self.sock.send_to(&m.raw, self.server).unwrap();
            let Some(reply) = self.recv_response(m.transaction_id) else {
                continue;
            };
            match reply.code() {
                Some(401) if self.nonce.is_none() => {}
                Some(438) => {}
                _ => return reply,
            }
            let nonce = Nonce::get_from_as(&reply.msg, ATTR_NONCE).unwrap();
            self.nonce = Some(nonce.text);
        }
        panic!("no usable response");
    }

    fn recv_response(&self, txid: TransactionId) -> Option<Reply> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = vec![0u8; 2048];
        while Instant::now() < deadline {
            let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                return None;
            };
            let mut msg = Message::new();
            if msg.unmarshal_binary(&buf[..n]).is_ok() && msg.transaction_id == txid {
                return Some(Reply { msg });
            }
        }
        None
    }

    /// Receives the next datagram from the server (a Data indication or ChannelData).
    pub fn recv_raw(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        self.sock
            .recv_from(&mut buf)
            .ok()
            .map(|(n, _)| buf[..n].to_vec())
    }

    pub fn send_raw(&self, data: &[u8]) {
        self.sock.send_to(data, self.server).unwrap();
    }
}

pub fn udp_transport() -> (AttrType, Vec<u8>) {
    (ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0])
}

/// Allocates for `c` (a relayed address of the server's family: RFC 8656 §7.1 gives IPv4
/// without REQUESTED-ADDRESS-FAMILY) and returns the relayed address.
#[allow(dead_code)]
pub fn allocate_same_family(c: &mut RawClient) -> SocketAddr {
    let mut attrs = vec![udp_transport()];
    if c.server.is_ipv6() {
        attrs.push((
            stun::attributes::ATTR_REQUESTED_ADDRESS_FAMILY,
            vec![2, 0, 0, 0],
        ));
    }
    let r = c.request(stun::message::METHOD_ALLOCATE, &attrs);
    assert_eq!(r.code(), None, "allocate");
    r.xor_addrs(stun::attributes::ATTR_XOR_RELAYED_ADDRESS)[0]
}

pub fn peer_attr(addr: SocketAddr) -> (AttrType, Vec<u8>) {
    (ATTR_XOR_PEER_ADDRESS, addr.to_string().into_bytes())
}

/// A Send indication built with the `stun` crate.
pub fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut m = Message::new();
    m.build(&[
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
    ])
    .unwrap();
    XorMappedAddress {
        ip: peer.ip(),
        port: peer.port(),
    }
    .add_to_as(&mut m, ATTR_XOR_PEER_ADDRESS)
    .unwrap();
    m.add(ATTR_DATA, data);
    m.raw.clone()
}

/// Parses a Data indication into (peer, data).
pub fn parse_data_indication(raw: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
    let mut m = Message::new();
    m.unmarshal_binary(raw).ok()?;
    if m.typ != MessageType::new(METHOD_DATA, CLASS_INDICATION) {
        return None;
    }
    let mut x = XorMappedAddress::default();
    x.get_from_as(&m, ATTR_XOR_PEER_ADDRESS).ok()?;
    let data = m.get(ATTR_DATA).ok()?;
    Some((SocketAddr::new(x.ip, x.port), data))
}

pub fn method_name(m: Method) -> Method {
    m
}

/// A `turn` crate client (webrtc-rs) connected to the server, listening.
pub async fn turn_client(server: &TestServer, user: &str, pass: &str) -> turn::client::Client {
    let bind = if server.addr.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let conn = std::sync::Arc::new(tokio::net::UdpSocket::bind(bind).await.unwrap());
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.addr.to_string(),
        turn_serv_addr: server.addr.to_string(),
        username: user.into(),
        password: pass.into(),
        realm: REALM.into(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    client
}

/// Runs the `turnd` binary with `args` to completion and returns (exit code, stdout,
/// stderr). The process is killed (by its pid) if it is still running after `limit`; the code
/// is then `None` (as it is when it dies by a signal).
pub fn run_turnd(args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    run_binary(env!("CARGO_BIN_EXE_turnd"), args, limit)
}

/// Receives datagrams on the client's socket until a Data indication arrives (or about
/// five seconds pass) and returns its (peer, data).
pub fn recv_data_indication(c: &RawClient) -> Option<(SocketAddr, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(d) = c.recv_raw().and_then(|raw| parse_data_indication(&raw)) {
            return Some(d);
        }
    }
    None
}

/// A loopback UDP socket standing in for a TURN peer, with a generous read timeout.
pub fn peer_socket(ip: &str) -> UdpSocket {
    let sock = UdpSocket::bind((ip, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock
}

/// Relays `rounds` messages client->peer and back through a `turn` client's relay, checking
/// contents and addresses each way; `pause` between rounds lets background ChannelBinds land.
pub async fn echo_rounds(
    relay: &impl webrtc_util::Conn,
    peer: &tokio::net::UdpSocket,
    rounds: u32,
    pause: Duration,
) {
    let relayed = relay.local_addr().unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut buf = vec![0u8; 1500];
    for i in 0..rounds {
        let msg = format!("client->peer {i}");
        relay.send_to(msg.as_bytes(), peer_addr).await.unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
            .await
            .expect("peer receives")
            .unwrap();
        assert_eq!(&buf[..n], msg.as_bytes());
        assert_eq!(from, relayed, "the peer sees the relayed address");

        let reply = format!("peer->client {i}");
        peer.send_to(reply.as_bytes(), relayed).await.unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf))
            .await
            .expect("client receives")
            .unwrap();
        assert_eq!(&buf[..n], reply.as_bytes());
        assert_eq!(from, peer_addr);
        tokio::time::sleep(pause).await;
    }
}
