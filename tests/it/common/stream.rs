//! Helpers for the TCP/TLS tests: a blocking STUN/TURN client over a byte stream (plain or
//! rustls), a config file and a self-signed certificate written to a temporary directory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use stun::agent::TransactionId;
use stun::attributes::*;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::{Nonce, Realm, Username};
use stun::xoraddr::XorMappedAddress;

use super::{
    REALM, Reply, TestServer, binding_request, parse_data_indication, peer_attr, peer_socket,
    udp_transport,
};

pub use turnd::testing::process::{TempDir, free_tcp_port};

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    pub fn new(dir: &TempDir) -> TestCert {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        TestCert {
            cert: dir.write("cert.pem", &ck.cert.pem()),
            key: dir.write("key.pem", &ck.signing_key.serialize_pem()),
            der: ck.cert.der().clone(),
        }
    }

    /// A client config trusting this certificate, offering ALPN `stun.turn` if `alpn`, and
    /// limited to `versions` (empty: rustls' defaults).
    pub fn client_config(
        &self,
        alpn: bool,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions = if versions.is_empty() {
            rustls::DEFAULT_VERSIONS
        } else {
            versions
        };
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        if alpn {
            cfg.alpn_protocols = vec![b"stun.turn".to_vec()];
        }
        Arc::new(cfg)
    }
}

/// Starts turnd (as [`TestServer::start`]) with `config` written as its config file.
pub fn start_with_config(dir: &TempDir, config: &str, extra: &[&str]) -> TestServer {
    let path = dir.write("turnd.toml", config);
    let path = path.to_str().unwrap().to_string();
    let mut args: Vec<&str> = vec!["--config", &path];
    args.extend_from_slice(extra);
    TestServer::start("127.0.0.1", &args)
}

/// A stream a test client talks over.
pub trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A blocking STUN/TURN client over one TCP or TLS connection.
pub struct StreamClient {
    pub s: Box<dyn Stream>,
    pub local: SocketAddr,
    pub user: String,
    pub pass: String,
    pub nonce: Option<String>,
    /// Frames read while waiting for a response, for `recv_frame`.
    pending: std::collections::VecDeque<Vec<u8>>,
}

/// Connects over TCP with a 5 s read timeout (a hang guard).
pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Completes a TLS handshake with `config` over a fresh TCP connection.
pub fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> StreamOwned<ClientConnection, TcpStream> {
    let tcp = tcp_connect(addr);
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config, name).unwrap();
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

impl StreamClient {
    pub fn new(s: impl Stream + 'static, local: SocketAddr) -> StreamClient {
        StreamClient {
            s: Box::new(s),
            local,
            user: "alice".into(),
            pass: "wonderland".into(),
            nonce: None,
            pending: Default::default(),
        }
    }

    pub fn tcp(addr: SocketAddr) -> StreamClient {
        let s = tcp_connect(addr);
        let local = s.local_addr().unwrap();
        StreamClient::new(s, local)
    }

    pub fn tls(addr: SocketAddr, config: Arc<ClientConfig>) -> StreamClient {
        let s = tls_connect(addr, config);
        let local = s.sock.local_addr().unwrap();
        StreamClient::new(s, local)
    }

    pub fn send_raw(&mut self, data: &[u8]) {
        self.s.write_all(data).unwrap();
        self.s.flush().unwrap();
    }

    /// Builds a request; authenticated once a nonce is known.
    pub fn build(&self, method: Method, attrs: &[(AttrType, Vec<u8>)]) -> Message {
        build_request(
            method,
            attrs,
            self.nonce
                .as_ref()
                .map(|n| (self.user.as_str(), self.pass.as_str(), n.as_str())),
        )
    }

    /// Sends a request and returns its response, authenticating after 401/438.
    pub fn request(&mut self, method: Method, attrs: &[(AttrType, Vec<u8>)]) -> Reply {
        for _ in 0..4 {
            let m = self.build(method, attrs);
            self.send_raw(&m.raw);
            let reply = self.recv_response(m.transaction_id).expect("a response");
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

    /// Reads frames until the response to `txid` (others are kept for `recv_frame`).
    pub fn recv_response(&mut self, txid: TransactionId) -> Option<Reply> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let f = self.read_frame()?;
            let mut msg = Message::new();
            if f[0] & 0xC0 == 0 && msg.unmarshal_binary(&f).is_ok() && msg.transaction_id == txid {
                return Some(Reply { msg });
            }
            self.pending.push_back(f);
        }
        None
    }

    /// The next whole frame (STUN message, or ChannelData with its padding).
    pub fn recv_frame(&mut self) -> Option<Vec<u8>> {
        if let Some(f) = self.pending.pop_front() {
            return Some(f);
        }
        self.read_frame()
    }

    fn read_frame(&mut self) -> Option<Vec<u8>> {
        let mut head = [0u8; 4];
        self.s.read_exact(&mut head).ok()?;
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let rest = if head[0] & 0xC0 == 0 {
            16 + len
        } else {
            (len + 3) & !3
        };
        let mut f = head.to_vec();
        f.resize(4 + rest, 0);
        self.s.read_exact(&mut f[4..]).ok()?;
        Some(f)
    }

    /// True once the server has closed the connection (EOF or reset), reading for up to
    /// `within` (a hang guard) and discarding what arrives before.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// A request with `attrs` ("ip:port" text for XOR address attributes), with long-term
/// credentials `(user, pass, nonce)` and FINGERPRINT.
pub fn build_request(
    method: Method,
    attrs: &[(AttrType, Vec<u8>)],
    auth: Option<(&str, &str, &str)>,
) -> Message {
    let mut m = Message::new();
    m.build(&[
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(method, CLASS_REQUEST)),
    ])
    .unwrap();
    for (t, v) in attrs {
        if *t == ATTR_XOR_PEER_ADDRESS || *t == ATTR_XORMAPPED_ADDRESS {
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
    if let Some((user, pass, nonce)) = auth {
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(Username::new(ATTR_USERNAME, user.to_string())),
            Box::new(Realm::new(ATTR_REALM, REALM.to_string())),
            Box::new(Nonce::new(ATTR_NONCE, nonce.to_string())),
            Box::new(MessageIntegrity::new_long_term_integrity(
                user.to_string(),
                REALM.to_string(),
                pass.to_string(),
            )),
        ];
        for s in setters {
            s.add_to(&mut m).unwrap();
        }
    }
    FINGERPRINT.add_to(&mut m).unwrap();
    m
}

/// ChannelData with `data`, padded to 4 bytes as streams require (RFC 8656 §12.5).
pub fn channel_data_padded(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + data.len());
    v.extend(channel.to_be_bytes());
    v.extend((data.len() as u16).to_be_bytes());
    v.extend(data);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

/// The XOR-MAPPED-ADDRESS of a response.
pub fn mapped(reply: &Reply) -> SocketAddr {
    reply.xor_addrs(ATTR_XORMAPPED_ADDRESS)[0]
}

/// The XOR-RELAYED-ADDRESS of an Allocate response.
pub fn relayed(reply: &Reply) -> SocketAddr {
    reply.xor_addrs(ATTR_XOR_RELAYED_ADDRESS)[0]
}

/// Resident memory of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Allocate, CreatePermission, Send/Data, ChannelBind/ChannelData (odd sizes, padded) to a
/// UDP peer on loopback, then a Binding to show the stream is still in frame.
pub fn relay_paths(c: &mut StreamClient) {
    let alloc = c.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(alloc.code(), None, "allocate over the stream");
    assert_eq!(
        mapped(&alloc),
        c.local,
        "the mapped address is the TCP source"
    );
    let relay = relayed(&alloc);

    let peer = peer_socket("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(
        c.request(METHOD_CREATE_PERMISSION, &[peer_attr(peer_addr)])
            .code(),
        None
    );

    // Send indication -> peer; peer -> Data indication.
    c.send_raw(&super::send_indication(peer_addr, b"hello peer"));
    let mut buf = [0u8; 1500];
    let (n, from) = peer.recv_from(&mut buf).expect("peer receives");
    assert_eq!(&buf[..n], b"hello peer");
    assert_eq!(from, relay);
    peer.send_to(b"hello client", relay).unwrap();
    let f = c.recv_frame().expect("Data indication");
    assert_eq!(
        parse_data_indication(&f),
        Some((peer_addr, b"hello client".to_vec()))
    );

    // Channel: odd lengths exercise the padding both ways.
    let reply = c.request(
        METHOD_CHANNEL_BIND,
        &[
            (ATTR_CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0]),
            peer_attr(peer_addr),
        ],
    );
    assert_eq!(reply.code(), None, "channel bind");
    for i in 0..5usize {
        let msg = vec![b'a' + i as u8; 5 + i];
        c.send_raw(&channel_data_padded(0x4001, &msg));
        let (n, _) = peer
            .recv_from(&mut buf)
            .expect("peer receives ChannelData payload");
        assert_eq!(&buf[..n], &msg[..]);
        let back = vec![b'z' - i as u8; 1 + i];
        peer.send_to(&back, relay).unwrap();
        let f = c.recv_frame().expect("ChannelData");
        assert_eq!(&f[..2], &[0x40, 0x01]);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]) as usize, back.len());
        assert_eq!(f.len() % 4, 0, "padded to 4 on a stream");
        assert_eq!(&f[4..4 + back.len()], &back[..]);
    }
    // The stream is still in frame after the padded messages: a Binding gets its answer.
    let b = binding_request();
    c.send_raw(&b);
    let f = c.recv_frame().expect("binding response");
    assert_eq!(&f[..2], &[0x01, 0x01]);
}
