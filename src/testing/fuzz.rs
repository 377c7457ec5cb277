//! Fuzz target bodies, shared by `fuzz/` (cargo-fuzz, nightly) and `tests/it/fuzz_corpus.rs`
//! (the committed corpus replayed on stable). Each function takes arbitrary bytes, must never
//! panic or hang on them, and panics only when an invariant of the code under test breaks.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::TestClient;
use crate::auth::{AuthConfig, Authenticator, UserSecret};
use crate::config::Config;
use crate::stun::framing::{Frame, next_frame};
use crate::stun::{
    Class, Message, MessageWriter, attr, channel_data, decode_address, decode_error_code, method,
};
use crate::turn::peer_policy::PeerPolicy;
use crate::turn::quota::Quotas;
use crate::turn::rate_limit::{RateLimit, ResponseLimiter};
use crate::turn::{
    BindError, ConnectionId, FiveTuple, Io, Limits, PEER_HEADROOM, PEER_TAILROOM, Reconfigure,
    RelayId, RelayOptions, Server, ServerConfig, Time, Transport,
};

/// The fuzz targets, by the names of their corpus directories.
/// A fuzz target body.
pub type Target = fn(&[u8]);

pub const TARGETS: &[(&str, Target)] = &[
    ("stun_message", stun_message),
    ("channel_data", channel_data_target),
    ("stream_framing", stream_framing),
    ("server", server),
    ("config", config),
    ("proxy_v2", proxy_v2),
    ("stream_server", stream_server),
    ("quality", quality),
];

/// A key the fuzzer can hit: messages signed with it verify.
pub const FUZZ_KEY: &[u8] = b"fuzz-key";

// ------------------------------------------------------------ stun_message

/// STUN parsing, attribute access, integrity and fingerprint checks; a parsed message's
/// counted attributes re-encode into a message that parses to the same attributes.
pub fn stun_message(data: &[u8]) {
    let Ok(msg) = Message::parse(data) else {
        return;
    };
    assert_eq!(msg.raw(), data);
    let txid = msg.transaction_id();
    for (ty, value) in msg.attributes() {
        match ty {
            attr::XOR_MAPPED_ADDRESS | attr::XOR_PEER_ADDRESS | attr::XOR_RELAYED_ADDRESS => {
                let _ = msg.xor_address(ty);
                let _ = crate::stun::decode_xor_address(value, &txid);
            }
            attr::MAPPED_ADDRESS | attr::ALTERNATE_SERVER => {
                let _ = decode_address(value);
            }
            attr::ERROR_CODE | attr::ADDRESS_ERROR_CODE => {
                if let Some((code, _)) = decode_error_code(value) {
                    assert!((300..=699).contains(&code), "{code}");
                }
            }
            attr::LIFETIME | attr::FINGERPRINT => {
                let _ = msg.u32_attr(ty);
            }
            _ => {}
        }
        let _ = msg.get_all(ty).count();
    }
    let _ = msg.verify_integrity(FUZZ_KEY);
    let _ = msg.verify_integrity(&data[..data.len().min(16)]);

    // Re-encode what counts (without the integrity and fingerprint attributes).
    let mut out = Vec::new();
    let mut w = MessageWriter::new(&mut out, msg.method(), msg.class(), txid);
    let kept: Vec<(u16, &[u8])> = msg
        .attributes()
        .filter(|(t, _)| {
            !matches!(
                *t,
                attr::MESSAGE_INTEGRITY | attr::MESSAGE_INTEGRITY_SHA256 | attr::FINGERPRINT
            )
        })
        .collect();
    for (t, v) in &kept {
        w.attr(*t, v);
    }
    let again = Message::parse(&out).expect("re-encoded message parses");
    assert_eq!(again.method(), msg.method());
    assert_eq!(again.class(), msg.class());
    assert_eq!(again.transaction_id(), txid);
    assert!(again.attributes().eq(kept.iter().copied()));

    // Signed and fingerprinted, it verifies; one flipped bit and it does not.
    let mut w = MessageWriter::resume(&mut out, txid);
    w.integrity(FUZZ_KEY).fingerprint();
    let signed = Message::parse(&out).expect("signed message parses");
    assert!(signed.has_fingerprint());
    assert_eq!(
        signed.verify_integrity(FUZZ_KEY),
        Some(crate::stun::Integrity::Sha1)
    );
    if let Some(b) = out.get_mut(8) {
        *b ^= 1;
    }
    assert!(Message::parse(&out).is_err(), "fingerprint catches a flip");
}

// ------------------------------------------------------------ channel_data

/// ChannelData parsing: the data is exactly the declared length, inside the datagram.
pub fn channel_data_target(data: &[u8]) {
    if let Some((number, payload)) = channel_data::parse(data) {
        assert!((channel_data::MIN_CHANNEL..=channel_data::MAX_CHANNEL).contains(&number));
        assert!(channel_data::is_channel_data(data[0]));
        let declared = u16::from_be_bytes([data[2], data[3]]) as usize;
        assert_eq!(payload.len(), declared);
        assert!(4 + declared <= data.len());
        assert_eq!(
            channel_data::header(number, declared as u16),
            [data[0], data[1], data[2], data[3]]
        );
    }
}

// ----------------------------------------------------------------- quality

/// The call-quality observer (`crate::quality`) over a run of relayed payloads: each record
/// is a flags byte (bit 0: direction, bits 1-7: milliseconds since the last one, times 16),
/// a length byte and that many bytes (fewer at the end). The header readers agree with the
/// demultiplexer; the report's figures stay within their bounds.
pub fn quality(data: &[u8]) {
    use crate::quality::demux::{self, Class};
    use crate::quality::{Direction, MAX_STREAMS, Quality, QualityStats};

    let t0 = std::time::Instant::now();
    let mut now = t0;
    let mut q = Quality::new(t0);
    let mut stats = QualityStats::default();
    let mut rest = data;
    while let [flags, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(n);
        rest = next;
        let dir = if flags & 1 == 0 {
            Direction::ToPeer
        } else {
            Direction::ToClient
        };
        now += std::time::Duration::from_millis(u64::from(flags >> 1) * 16);
        let class = demux::classify(payload);
        if let Some(h) = demux::rtp_header(payload) {
            assert!(payload.len() >= 12 + 4 * usize::from(payload[0] & 0x0F));
            assert_eq!(h.ssrc.to_be_bytes(), payload[8..12]);
        }
        if demux::rtcp_header(payload).is_some() {
            assert!(payload.len() >= 8);
        }
        if let Some(b) = demux::stun_binding(payload) {
            assert_eq!(class, Class::Stun);
            assert_eq!(b.txid, payload[8..20]);
        }
        q.observe(now, dir, payload, &mut stats);
    }
    let r = q.report(now);
    assert!(r.streams.len() <= MAX_STREAMS);
    assert_eq!(
        r.checks_unanswered,
        r.legs[0].unanswered + r.legs[1].unanswered
    );
    for s in &r.streams {
        assert!((0.0..=1.0).contains(&s.loss_ratio), "{s:?}");
        assert!(s.packets >= 1);
    }
    let seen: u64 = stats.payloads.iter().flatten().sum();
    let records: u64 = r.payloads.iter().flatten().sum();
    assert_eq!(seen, records);
    let _ = q.summary().to_string();
}

// ---------------------------------------------------------- stream_framing

/// The stream deframer fed the bytes in pieces (piece sizes from the first byte): it cuts
/// only whole frames, always asks for more than it has when it needs more, and what it cuts
/// goes through the datagram parsers.
pub fn stream_framing(data: &[u8]) {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 64) + 1;
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut frames = 0usize;
    loop {
        match next_frame(&buf) {
            Frame::Complete(n) => {
                assert!(n >= 4 && n <= buf.len(), "complete {n} of {}", buf.len());
                let frame: Vec<u8> = buf.drain(..n).collect();
                if channel_data::is_channel_data(frame[0]) {
                    channel_data_target(&frame);
                } else {
                    stun_message(&frame);
                }
                frames += 1;
                assert!(frames <= data.len(), "more frames than bytes");
            }
            Frame::NeedMore(n) => {
                assert!(n > buf.len(), "needs {n} but has {}", buf.len());
                if fed >= stream.len() {
                    return;
                }
                let end = (fed + step).min(stream.len());
                buf.extend_from_slice(&stream[fed..end]);
                fed = end;
            }
            Frame::Invalid => return,
        }
    }
}

// ------------------------------------------------------------------ config

/// The config loader: any text either loads or names what is wrong; a loaded config's
/// derived values are computed without panicking.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Config::from_toml_str(&text) {
        Ok(c) => {
            let _ = c.relay_ips();
            for ip in c.relay_ips() {
                let _ = c.external_ip_for(ip);
            }
            let _ = c.user_secrets();
            let _ = c.peer_rules();
            let _ = c.core_limits();
            let _ = format!("{c:?}");
        }
        Err(e) => {
            assert!(!e.key().is_empty(), "error without a key: {e}");
            let _ = e.to_string();
        }
    }
}

// ---------------------------------------------------------------- proxy_v2

/// The PROXY protocol v2 parser (`net::proxy`), as the stream listener runs it: the reader
/// over the bytes must finish at once (it never waits for more than the header announces),
/// consume exactly 16 + length bytes when it accepts, and any address it returns must
/// re-encode into a header that parses to the same address.
pub fn proxy_v2(data: &[u8]) {
    use crate::net::proxy::{FIXED_LEN, encode, parse_head, read_header, source_address};
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let mut rest = data;
    let result = {
        let fut = std::pin::pin!(read_header(&mut rest));
        match fut.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("PROXY reader waits on in-memory bytes"),
        }
    };
    // The pure parts agree with the reader.
    let fixed: Option<&[u8; FIXED_LEN]> = data.get(..FIXED_LEN).and_then(|h| h.try_into().ok());
    let head = fixed.map(parse_head);
    match &result {
        Ok(addr) => {
            let Some(Ok(head)) = head else {
                panic!("reader accepted a header the parser refuses");
            };
            assert_eq!(
                data.len() - rest.len(),
                FIXED_LEN + head.len,
                "consumed more or less than the header"
            );
            let body = &data[FIXED_LEN..FIXED_LEN + head.len];
            assert_eq!(source_address(&head, body), Ok(*addr));
            if let Some(src) = addr {
                assert!(head.proxied && matches!(head.family, 0x11 | 0x21));
                let dst = match src {
                    SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3478),
                    SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 3478),
                };
                let again = encode(*src, dst);
                let mut r = &again[..];
                let back = {
                    let fut = std::pin::pin!(read_header(&mut r));
                    fut.poll(&mut Context::from_waker(Waker::noop()))
                };
                match back {
                    Poll::Ready(Ok(back)) => assert_eq!(back, Some(*src)),
                    other => panic!("re-encoded header: {other:?}"),
                }
                assert!(r.is_empty());
            }
        }
        Err(_) => {
            if let Some(Ok(head)) = head
                && let Some(body) = data.get(FIXED_LEN..FIXED_LEN + head.len)
            {
                assert!(
                    source_address(&head, body).is_err(),
                    "reader refused a whole header the parser accepts"
                );
            }
        }
    }
}

// ----------------------------------------------------------- stream_server

/// The stream path: client bytes arrive on TCP and TLS connections, are cut by the
/// deframer and handled by the sans-IO core as the stream driver would (including RFC 6062
/// TCP allocations, Connect, incoming peer connections and ConnectionBind). Same ops and
/// checks as [`server`], plus: every Connect goes to a peer the policy allows, from a
/// relayed address; connection ids are never reused; no RFC 6062 connection outlives the
/// end of everything. The first byte sets the read size.
pub fn stream_server(data: &[u8]) {
    run(data, Mode::Streams);
}

/// [`stream_server`], returning the server's counters and how far into RFC 6062 it got.
pub fn run_stream_server(data: &[u8]) -> (crate::turn::Stats, Reach) {
    run(data, Mode::Streams)
}

// ------------------------------------------------------------------ server

const REALM: &str = "fuzz.test";
const UNIX0: u64 = 1_800_000_000;
const SECRET: &str = "fuzz-secret";
const USER: &str = "alice";
const PASSWORD: &str = "wonderland";

/// The server's listen address in the harness: never a peer.
pub fn harness_listen() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), 3478)
}

/// Client 5-tuples the ops pick from: two ports of one IPv4 address, another IPv4 address,
/// an IPv6 address, and a TCP client (streams pad ChannelData and are not rate limited).
fn tuple(i: u8) -> FiveTuple {
    let (ip, port, transport) = match i % 5 {
        0 => (
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            40000,
            Transport::Udp,
        ),
        1 => (
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            40001,
            Transport::Udp,
        ),
        2 => (
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
            40000,
            Transport::Udp,
        ),
        3 => (
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 1)),
            40000,
            Transport::Udp,
        ),
        _ => (
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 3)),
            40000,
            Transport::Tcp,
        ),
    };
    FiveTuple {
        client: SocketAddr::new(ip, port),
        server: harness_listen(),
        transport,
    }
}

/// Attribute types an authenticated op can name by index; larger indexes make unknown
/// comprehension-required (odd) or optional (even) types.
const TYPES: &[u16] = &[
    attr::REQUESTED_TRANSPORT,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::CHANNEL_NUMBER,
    attr::DATA,
    attr::EVEN_PORT,
    attr::RESERVATION_TOKEN,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::ADDITIONAL_ADDRESS_FAMILY,
    attr::DONT_FRAGMENT,
    attr::CONNECTION_ID,
    attr::SOFTWARE,
    attr::ICE_CONTROLLING,
    attr::PRIORITY,
];
/// Index meaning "XOR-PEER-ADDRESS given in plain form" (family, port, IP): the harness
/// XOR-encodes it with the real transaction id.
const PLAIN_PEER: u8 = 0x40;

const METHODS: [u16; 8] = [
    method::BINDING,
    method::ALLOCATE,
    method::REFRESH,
    method::CREATE_PERMISSION,
    method::CHANNEL_BIND,
    method::CONNECT,
    method::SEND,
    0x0FF,
];

/// One step of a server fuzz case. The wire form is `[kind | tuple << 3, len, body...]`.
#[derive(Clone, Debug)]
pub enum Op {
    /// Raw bytes from a client.
    Datagram { tuple: u8, bytes: Vec<u8> },
    /// A datagram from `peer` to the relay socket `relay` (index among the opened ones).
    Peer {
        relay: u8,
        peer: SocketAddr,
        payload: Vec<u8>,
    },
    /// Time passes.
    Advance { secs: u16 },
    /// A request signed with valid long-term credentials and a fresh nonce.
    Authed {
        tuple: u8,
        /// Index into the method table.
        method: u8,
        /// Bit 0: SHA-256; 1: FINGERPRINT; 2: REST user; 3: wrong password.
        flags: u8,
        attrs: Vec<AttrSpec>,
    },
    /// ChannelData from a client.
    ChannelData {
        tuple: u8,
        number: u16,
        payload: Vec<u8>,
    },
    /// A Send indication from a client.
    Send {
        tuple: u8,
        peer: SocketAddr,
        payload: Vec<u8>,
    },
}

/// An attribute of an [`Op::Authed`]: a type index (see `TYPES`, `PLAIN_PEER`) and a value.
#[derive(Clone, Debug)]
pub struct AttrSpec {
    pub ty: u8,
    pub value: Vec<u8>,
}

impl AttrSpec {
    pub fn new(ty: u16, value: &[u8]) -> AttrSpec {
        let index = TYPES.iter().position(|t| *t == ty).unwrap_or(TYPES.len()) as u8;
        AttrSpec {
            ty: index,
            value: value.to_vec(),
        }
    }

    pub fn peer(addr: SocketAddr) -> AttrSpec {
        AttrSpec {
            ty: PLAIN_PEER,
            value: encode_addr(addr),
        }
    }
}

fn encode_addr(a: SocketAddr) -> Vec<u8> {
    let mut v = Vec::with_capacity(19);
    match a.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            v.extend_from_slice(&a.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            v.push(2);
            v.extend_from_slice(&a.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
    }
    v
}

/// Reads an address written by `encode_addr` (or anything: short input makes something up).
fn decode_addr(b: &[u8]) -> (SocketAddr, &[u8]) {
    let fam = b.first().copied().unwrap_or(1);
    let port = match b.get(1..3) {
        Some(p) => u16::from_be_bytes([p[0], p[1]]),
        None => 53,
    };
    if fam & 1 == 1 {
        let mut o = [8u8, 8, 8, 8];
        if let Some(ip) = b.get(3..7) {
            o.copy_from_slice(ip);
        }
        let rest = b.get(7..).unwrap_or_default();
        (SocketAddr::new(IpAddr::V4(o.into()), port), rest)
    } else {
        let mut o = [
            0x26, 0x06, 0x47, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11, 0x11,
        ];
        if let Some(ip) = b.get(3..19) {
            o.copy_from_slice(ip);
        }
        let rest = b.get(19..).unwrap_or_default();
        (SocketAddr::new(IpAddr::V6(o.into()), port), rest)
    }
}

impl Op {
    /// Appends the wire form; bodies longer than 255 bytes are cut.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (kind, tuple, mut body) = match self {
            Op::Datagram { tuple, bytes } => (0, *tuple, bytes.clone()),
            Op::Peer {
                relay,
                peer,
                payload,
            } => {
                let mut b = vec![*relay];
                b.extend(encode_addr(*peer));
                b.extend_from_slice(payload);
                (1, 0, b)
            }
            Op::Advance { secs } => (2, 0, secs.to_be_bytes().to_vec()),
            Op::Authed {
                tuple,
                method,
                flags,
                attrs,
            } => {
                let mut b = vec![*method | (*flags << 3)];
                for a in attrs {
                    b.push(a.ty);
                    b.push(a.value.len().min(255) as u8);
                    b.extend_from_slice(&a.value[..a.value.len().min(255)]);
                }
                (3, *tuple, b)
            }
            Op::ChannelData {
                tuple,
                number,
                payload,
            } => {
                let mut b = number.to_be_bytes().to_vec();
                b.extend_from_slice(payload);
                (4, *tuple, b)
            }
            Op::Send {
                tuple,
                peer,
                payload,
            } => {
                let mut b = encode_addr(*peer);
                b.extend_from_slice(payload);
                (5, *tuple, b)
            }
        };
        body.truncate(255);
        out.push(kind | (tuple << 3));
        out.push(body.len() as u8);
        out.extend_from_slice(&body);
    }

    /// Reads one op from the front of `b`; None at the end.
    fn decode(b: &[u8]) -> Option<(Op, &[u8])> {
        let (&head, rest) = b.split_first()?;
        let (&len, rest) = rest.split_first()?;
        let n = usize::from(len).min(rest.len());
        let (body, rest) = rest.split_at(n);
        let tuple = head >> 3;
        let op = match head & 7 {
            0 | 6 => Op::Datagram {
                tuple,
                bytes: body.to_vec(),
            },
            1 => {
                let relay = body.first().copied().unwrap_or(0);
                let (peer, payload) = decode_addr(body.get(1..).unwrap_or_default());
                Op::Peer {
                    relay,
                    peer,
                    payload: payload.to_vec(),
                }
            }
            2 => {
                let secs = match body {
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                    [a] => u16::from(*a),
                    [] => 1,
                };
                Op::Advance { secs }
            }
            3 => {
                let ctl = body.first().copied().unwrap_or(1);
                let mut attrs = Vec::new();
                let mut p = body.get(1..).unwrap_or_default();
                while let [ty, len, tail @ ..] = p {
                    let n = usize::from(*len).min(tail.len());
                    attrs.push(AttrSpec {
                        ty: *ty,
                        value: tail[..n].to_vec(),
                    });
                    p = &tail[n..];
                }
                Op::Authed {
                    tuple,
                    method: ctl & 7,
                    flags: ctl >> 3,
                    attrs,
                }
            }
            4 => {
                let number = match body {
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                    _ => 0x4000,
                };
                Op::ChannelData {
                    tuple,
                    number,
                    payload: body.get(2..).unwrap_or_default().to_vec(),
                }
            }
            _ => {
                let (peer, payload) = decode_addr(body);
                Op::Send {
                    tuple,
                    peer,
                    payload: payload.to_vec(),
                }
            }
        };
        Some((op, rest))
    }
}

/// Encodes a whole case.
pub fn encode_ops(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        op.encode(&mut out);
    }
    out
}

#[derive(Default)]
struct FuzzIo {
    to_client: Vec<(FiveTuple, Vec<u8>)>,
    to_peer: Vec<(RelayId, SocketAddr)>,
    open: Vec<(RelayId, SocketAddr)>,
    ever: BTreeSet<RelayId>,
    /// RFC 6062: relays that are TCP listeners.
    tcp_relays: BTreeSet<RelayId>,
    /// Connect attempts the core started, to settle after the op.
    connects: Vec<(ConnectionId, SocketAddr, SocketAddr)>,
    /// Every peer a Connect was started to (checked against the policy).
    connected_to: Vec<SocketAddr>,
    /// Peer data connections open in the "driver".
    peer_conns: BTreeSet<ConnectionId>,
    /// ConnectionBinds waiting for the owner, to settle after the op.
    claims: Vec<(ConnectionId, FiveTuple, String)>,
    /// Client data connections joined with a peer connection.
    bound: Vec<(FiveTuple, ConnectionId)>,
    reach: Reach,
}

/// Stream connections in [`Mode::Streams`].
const STREAM_CONNS: usize = 4;
/// A stream driver's largest frame (see `net::tcp`): bigger is a broken stream.
const STREAM_READ_BUF: usize = 65_536 + 64;

const STREAM_METHODS: [u16; 8] = [
    method::BINDING,
    method::ALLOCATE,
    method::REFRESH,
    method::CREATE_PERMISSION,
    method::CHANNEL_BIND,
    method::CONNECT,
    method::CONNECTION_BIND,
    method::SEND,
];

/// One client connection's unread bytes in [`Mode::Streams`].
#[derive(Default)]
struct Conn {
    buf: Vec<u8>,
    /// Joined with a peer connection: its bytes are piped, not parsed.
    spliced: bool,
}

/// Stream client connections: three TCP connections from one IPv4 address (so they share
/// its quota) and a TLS connection over IPv6.
fn stream_tuple(i: u8) -> FiveTuple {
    let i = usize::from(i) % STREAM_CONNS;
    let (client, transport) = if i == 3 {
        (
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 3)),
                41000,
            ),
            Transport::Tls,
        )
    } else {
        (
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 3)), 41000 + i as u16),
            Transport::Tcp,
        )
    };
    FiveTuple {
        client,
        server: harness_listen(),
        transport,
    }
}

/// Appends `bytes` to connection `t`'s stream and hands whole frames to the core, reading
/// `step` bytes at a time as a driver's reads might; a broken stream closes the connection.
#[allow(clippy::too_many_arguments)] // the harness's whole state, passed apart to borrow it
fn stream_in(
    now: Time,
    server: &mut Server,
    io: &mut FuzzIo,
    conns: &mut [Conn; STREAM_CONNS],
    t: u8,
    bytes: &[u8],
    step: usize,
    policy: &PeerPolicy,
) {
    let i = usize::from(t) % STREAM_CONNS;
    let ft = stream_tuple(t);
    if conns[i].spliced {
        return;
    }
    for piece in bytes.chunks(step.max(1)) {
        conns[i].buf.extend_from_slice(piece);
        loop {
            match next_frame(&conns[i].buf) {
                Frame::Complete(n) => {
                    assert!(n >= 4 && n <= conns[i].buf.len());
                    let frame: Vec<u8> = conns[i].buf.drain(..n).collect();
                    server.handle_client(now, ft, &frame, io);
                    settle(now, server, io, policy);
                    if io.bound.iter().any(|(d, _)| *d == ft) {
                        // RFC 6062 §5.4: after ConnectionBind the bytes go to the peer.
                        conns[i].spliced = true;
                        conns[i].buf.clear();
                        return;
                    }
                }
                Frame::NeedMore(total) if total <= STREAM_READ_BUF => {
                    assert!(total > conns[i].buf.len());
                    break;
                }
                Frame::NeedMore(_) | Frame::Invalid => {
                    close_conn(now.mono, server, io, conns, t);
                    return;
                }
            }
        }
    }
}

/// The client closes connection `t` (a later op on it is a new connection).
fn close_conn(
    now: Instant,
    server: &mut Server,
    io: &mut FuzzIo,
    conns: &mut [Conn; STREAM_CONNS],
    t: u8,
) {
    let i = usize::from(t) % STREAM_CONNS;
    let ft = stream_tuple(t);
    conns[i] = Conn::default();
    server.close_tuple(&ft, now, io);
    // A joined data connection closes its peer connection with it.
    let ids: Vec<ConnectionId> = io
        .bound
        .iter()
        .filter(|(d, _)| *d == ft)
        .map(|(_, id)| *id)
        .collect();
    io.bound.retain(|(d, _)| *d != ft);
    for id in ids {
        io.peer_conns.remove(&id);
        server.handle_peer_connection_closed(id);
    }
}

/// Does what a driver does between events: finishes Connect attempts (a peer port that is
/// a multiple of 3 refuses) and answers ConnectionBinds from the owning core.
fn settle(now: Time, server: &mut Server, io: &mut FuzzIo, policy: &PeerPolicy) {
    for _ in 0..64 {
        if let Some((id, _from, peer)) = io.connects.pop() {
            let ok = !peer.port().is_multiple_of(3);
            if server.handle_peer_connected(now, id, ok, io) {
                assert!(ok, "kept a connection that failed");
                assert!(io.peer_conns.insert(id), "connection id reused");
            }
        } else if let Some((id, data, user)) = io.claims.pop() {
            let mut r = server.take_connection(id, &user);
            if r.is_ok() && !io.peer_conns.contains(&id) {
                server.handle_peer_connection_closed(id);
                r = Err(crate::turn::error::RequestError::BadRequest);
            }
            if !server.handle_connection_claimed(&data, id, r, io) && r.is_ok() {
                io.peer_conns.remove(&id);
                server.handle_peer_connection_closed(id);
            }
        } else {
            break;
        }
    }
    for peer in io.connected_to.drain(..) {
        assert!(
            policy.is_allowed_addr(peer),
            "Connect to refused peer {peer}"
        );
    }
}

impl Io for FuzzIo {
    fn send_to_client(&mut self, to: &FiveTuple, data: &[u8]) {
        self.to_client.push((*to, data.to_vec()));
    }
    fn send_to_peer(&mut self, relay: RelayId, peer: SocketAddr, _data: &[u8]) {
        assert!(
            self.open.iter().any(|(r, _)| *r == relay),
            "send on a closed relay"
        );
        self.to_peer.push((relay, peer));
    }
    fn bind_relay(
        &mut self,
        relay: RelayId,
        addr: SocketAddr,
        _: RelayOptions,
    ) -> Result<(), BindError> {
        assert!(self.ever.insert(relay), "relay id reused");
        // Every 7th port is "taken by another process".
        if addr.port().is_multiple_of(7) {
            return Err(BindError::AddrInUse);
        }
        assert!(
            !self.open.iter().any(|(_, a)| *a == addr),
            "{addr} bound twice"
        );
        self.open.push((relay, addr));
        Ok(())
    }
    fn close_relay(&mut self, relay: RelayId) {
        let i = self
            .open
            .iter()
            .position(|(r, _)| *r == relay)
            .expect("closing a relay that is not open");
        self.open.swap_remove(i);
        self.tcp_relays.remove(&relay);
    }
    fn listen_relay_tcp(&mut self, relay: RelayId, addr: SocketAddr) -> Result<(), BindError> {
        self.bind_relay(relay, addr, RelayOptions::default())?;
        self.tcp_relays.insert(relay);
        Ok(())
    }
    fn connect_peer(&mut self, id: ConnectionId, from: SocketAddr, peer: SocketAddr) -> bool {
        assert!(
            self.open.iter().any(|(_, a)| *a == from),
            "Connect from {from}, not a relayed address"
        );
        assert!(
            !self.connects.iter().any(|(c, _, _)| *c == id) && !self.peer_conns.contains(&id),
            "connection id {id} reused"
        );
        self.connects.push((id, from, peer));
        self.reach.connects += 1;
        self.connected_to.push(peer);
        true
    }
    fn close_peer_connection(&mut self, id: ConnectionId) {
        self.peer_conns.remove(&id);
        self.connects.retain(|(c, _, _)| *c != id);
    }
    fn claim_connection(&mut self, id: ConnectionId, data: &FiveTuple, username: &str) {
        self.claims.push((id, *data, username.to_string()));
    }
    fn bind_data_connection(&mut self, id: ConnectionId, data: &FiveTuple) {
        assert!(
            !self.bound.iter().any(|(d, _)| d == data),
            "data connection bound twice"
        );
        self.bound.push((*data, id));
        self.reach.bound += 1;
    }
}

/// The sans-IO server fed a sequence of [`Op`]s decoded from the bytes: clients (raw,
/// signed, ChannelData, Send), peers and time. Checks that every datagram to a client is a
/// well-formed STUN or ChannelData message, that nothing goes to a peer the policy refuses,
/// that quotas hold, and that ending everything closes every relay and frees every quota.
pub fn server(data: &[u8]) {
    run_server(data);
}

/// [`server`], returning the server's counters (to check that seeds reach the deep paths).
pub fn run_server(data: &[u8]) -> crate::turn::Stats {
    run(data, Mode::Datagrams).0
}

/// How far a case got into RFC 6062 (to check that the stream seeds reach the deep paths).
#[derive(Clone, Copy, Debug, Default)]
pub struct Reach {
    /// Connect attempts started by the core.
    pub connects: usize,
    /// Peer connections accepted on a TCP relayed address.
    pub incoming: usize,
    /// Data connections joined by ConnectionBind.
    pub bound: usize,
}

/// How client bytes reach the core.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Each op is one datagram or one message (the UDP driver, or a TCP driver's frames).
    Datagrams,
    /// Every client is a TCP or TLS connection: an op's bytes are appended to its
    /// connection's byte stream, which the deframer cuts (in pieces of a size taken from the
    /// first input byte) as the stream driver does; RFC 6062 Connect and ConnectionBind are
    /// settled as the driver would, and a bound data connection stops carrying STUN.
    Streams,
}

fn run(data: &[u8], mode: Mode) -> (crate::turn::Stats, Reach) {
    let (step, data) = match mode {
        Mode::Datagrams => (0, data),
        Mode::Streams => match data.split_first() {
            Some((&s, rest)) => (usize::from(s % 64) + 1, rest),
            None => return Default::default(),
        },
    };
    let mut conns: [Conn; STREAM_CONNS] = Default::default();
    let auth = Arc::new(Authenticator::new(AuthConfig {
        realm: REALM.into(),
        users: vec![(USER.into(), UserSecret::Password(PASSWORD.into()))],
        secrets: vec![SECRET.into()],
        rest_separator: ':',
        nonce_lifetime_secs: 600,
        nonce_key: [3; 32],
    }));
    let policy = PeerPolicy::new(vec![], vec![]).with_own_addresses([harness_listen()]);
    let quotas = Arc::new(Quotas::new(3, 6).with_ip_quota(2));
    let relay_ips = [
        Some((
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)),
        )),
        Some((
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10)),
        )),
    ];
    let base = ServerConfig::testing(auth.clone(), relay_ips, 50000..=50015, [5; 32]);
    let mut server = Server::new(ServerConfig {
        live: Reconfigure {
            policy: policy.clone(),
            software: Some("fuzz".into()),
            mapped_address: true,
            ..base.live
        },
        quotas: quotas.clone(),
        max_permissions: 4,
        limits: Limits { max_channels: 4 },
        unauth_limiter: Arc::new(ResponseLimiter::new(
            RateLimit { rate: 5, burst: 10 },
            128,
            [6; 16],
        )),
        ..base
    });
    let mut io = FuzzIo::default();
    let t0 = Instant::now();
    let mut elapsed = Duration::ZERO;
    let mut txn: u32 = 0;
    let mut scratch = Vec::new();
    let mut rest = data;
    let mut steps = 0;
    while let Some((op, r)) = Op::decode(rest) {
        rest = r;
        steps += 1;
        if steps > 4096 {
            break;
        }
        let now = Time {
            mono: t0 + elapsed,
            unix: UNIX0 + elapsed.as_secs(),
        };
        match op {
            Op::Datagram { tuple: t, bytes } => match mode {
                Mode::Datagrams => server.handle_client(now, tuple(t), &bytes, &mut io),
                // No bytes: the client closes its connection.
                Mode::Streams if bytes.is_empty() => {
                    close_conn(now.mono, &mut server, &mut io, &mut conns, t)
                }
                Mode::Streams => stream_in(
                    now,
                    &mut server,
                    &mut io,
                    &mut conns,
                    t,
                    &bytes,
                    step,
                    &policy,
                ),
            },
            Op::Peer {
                relay,
                peer,
                payload,
            } => {
                let id = io
                    .ever
                    .iter()
                    .copied()
                    .min_by_key(|id| id.0.abs_diff(u64::from(relay)))
                    .unwrap_or(RelayId(u64::from(relay)));
                if io.tcp_relays.contains(&id) {
                    // A peer connecting to a TCP relayed address (RFC 6062 §5.3).
                    if let Some(cid) = server.handle_peer_connection(now, id, peer, &mut io) {
                        assert!(io.peer_conns.insert(cid), "connection id reused");
                        io.reach.incoming += 1;
                    }
                    check_outputs(&mut io, &policy);
                    continue;
                }
                let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
                buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(&payload);
                let range = PEER_HEADROOM..PEER_HEADROOM + payload.len();
                server.handle_peer(now, id, peer, &mut buf, range, &mut io);
            }
            Op::Advance { secs } => {
                elapsed += Duration::from_secs(u64::from(secs));
                let now = Time {
                    mono: t0 + elapsed,
                    unix: UNIX0 + elapsed.as_secs(),
                };
                let mut guard = 0;
                while server.poll_timeout().is_some_and(|t| t <= now.mono) && guard < 10_000 {
                    server.handle_timeout(now, &mut io);
                    guard += 1;
                }
            }
            Op::Authed {
                tuple: t,
                method: m,
                flags,
                attrs,
            } => {
                txn = txn.wrapping_add(1);
                let mut txid = [0x5A; 12];
                txid[..4].copy_from_slice(&txn.to_be_bytes());
                let ft = match mode {
                    Mode::Datagrams => tuple(t),
                    Mode::Streams => stream_tuple(t),
                };
                let (user, password) = if flags & 4 != 0 {
                    crate::auth::rest_credential(SECRET, "rest", now.unix + 100, ':')
                } else {
                    (USER.to_string(), PASSWORD.to_string())
                };
                let password = if flags & 8 != 0 {
                    "wrong".to_string()
                } else {
                    password
                };
                let mut client = TestClient::new(&user, REALM, &password, ft);
                client.sha256 = flags & 1 != 0;
                client.fingerprint = flags & 2 != 0;
                client.nonce = Some(auth.mint_nonce(now.unix, ft.client.ip()).into_bytes());
                let method = match mode {
                    Mode::Datagrams => METHODS[usize::from(m) % METHODS.len()],
                    Mode::Streams => STREAM_METHODS[usize::from(m) % STREAM_METHODS.len()],
                };
                client.write(&mut scratch, method, txid, |w| {
                    for a in &attrs {
                        match TYPES.get(usize::from(a.ty)) {
                            Some(ty) => {
                                w.attr(*ty, &a.value);
                            }
                            None if a.ty == PLAIN_PEER => {
                                w.xor_address(attr::XOR_PEER_ADDRESS, decode_addr(&a.value).0);
                            }
                            None => {
                                let ty = if a.ty & 1 == 1 {
                                    0x7F00 | u16::from(a.ty)
                                } else {
                                    0xC000 | u16::from(a.ty)
                                };
                                w.attr(ty, &a.value);
                            }
                        }
                    }
                });
                match mode {
                    Mode::Datagrams => server.handle_client(now, ft, &scratch, &mut io),
                    Mode::Streams => stream_in(
                        now,
                        &mut server,
                        &mut io,
                        &mut conns,
                        t,
                        &scratch,
                        step,
                        &policy,
                    ),
                }
            }
            Op::ChannelData {
                tuple: t,
                number,
                payload,
            } => {
                let mut d = channel_data::header(number, payload.len() as u16).to_vec();
                d.extend_from_slice(&payload);
                match mode {
                    Mode::Datagrams => server.handle_client(now, tuple(t), &d, &mut io),
                    Mode::Streams => {
                        // Stream clients pad ChannelData to 4 bytes (RFC 8656 §12.5).
                        d.resize(d.len().next_multiple_of(4), 0);
                        stream_in(now, &mut server, &mut io, &mut conns, t, &d, step, &policy)
                    }
                }
            }
            Op::Send {
                tuple: t,
                peer,
                payload,
            } => {
                let mut w =
                    MessageWriter::new(&mut scratch, method::SEND, Class::Indication, [7; 12]);
                w.xor_address(attr::XOR_PEER_ADDRESS, peer)
                    .attr(attr::DATA, &payload);
                match mode {
                    Mode::Datagrams => server.handle_client(now, tuple(t), &scratch, &mut io),
                    Mode::Streams => stream_in(
                        now,
                        &mut server,
                        &mut io,
                        &mut conns,
                        t,
                        &scratch,
                        step,
                        &policy,
                    ),
                }
            }
        }
        settle(now, &mut server, &mut io, &policy);
        check_outputs(&mut io, &policy);
        assert!(quotas.total() <= 6, "total quota exceeded");
        assert_eq!(quotas.total() as usize, server.allocation_count());
    }
    for t in 0..STREAM_CONNS as u8 {
        if mode == Mode::Streams {
            close_conn(t0 + elapsed, &mut server, &mut io, &mut conns, t);
        }
    }
    server.close_all(t0 + elapsed, &mut io);
    check_outputs(&mut io, &policy);
    assert!(io.open.is_empty(), "relays left open: {:?}", io.open);
    assert_eq!(
        server.peer_connection_count(),
        0,
        "RFC 6062 connections outlive their allocations"
    );
    assert_eq!(quotas.total(), 0, "quota leaked");
    assert_eq!(server.allocation_count(), 0);
    (server.stats(), io.reach)
}

fn check_outputs(io: &mut FuzzIo, policy: &PeerPolicy) {
    for (to, d) in io.to_client.drain(..) {
        let first = d.first().copied().unwrap_or(0xFF);
        if channel_data::is_channel_data(first) {
            let (_, payload) = channel_data::parse(&d).expect("ChannelData to a client parses");
            if to.transport != Transport::Udp {
                assert_eq!(
                    (4 + payload.len()).next_multiple_of(4),
                    d.len(),
                    "stream padding"
                );
            }
        } else {
            let m = Message::parse(&d).expect("STUN to a client parses");
            assert!(matches!(
                m.class(),
                Class::Success | Class::Error | Class::Indication
            ));
        }
    }
    for (_, peer) in io.to_peer.drain(..) {
        assert!(
            policy.is_allowed_addr(peer),
            "relayed to refused peer {peer}"
        );
    }
}

// ------------------------------------------------------------------- seeds

/// Seed cases for every target: valid messages of every method, and server sessions that
/// allocate, permit, bind, relay both ways, refresh and end. Written to `fuzz/corpus/` by
/// `tests/it/fuzz_corpus.rs` (with `TURND_WRITE_CORPUS=1`).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let txid = [0x11; 12];
    let peer4: SocketAddr = "8.8.8.8:3478".parse().unwrap_or(harness_listen());
    let peer6: SocketAddr = "[2606:4700::1111]:3478".parse().unwrap_or(harness_listen());
    let methods = [
        ("binding", method::BINDING),
        ("allocate", method::ALLOCATE),
        ("refresh", method::REFRESH),
        ("send", method::SEND),
        ("data", method::DATA),
        ("create_permission", method::CREATE_PERMISSION),
        ("channel_bind", method::CHANNEL_BIND),
        ("connect", method::CONNECT),
        ("connection_bind", method::CONNECTION_BIND),
        ("connection_attempt", method::CONNECTION_ATTEMPT),
    ];
    let classes = [
        ("request", Class::Request),
        ("indication", Class::Indication),
        ("success", Class::Success),
        ("error", Class::Error),
    ];
    let mut stun = Vec::new();
    for (mname, m) in methods {
        for (cname, c) in classes {
            let mut buf = Vec::new();
            let mut w = MessageWriter::new(&mut buf, m, c, txid);
            match m {
                method::ALLOCATE => {
                    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                        .u32_attr(attr::LIFETIME, 600)
                        .attr(attr::DONT_FRAGMENT, &[]);
                }
                method::REFRESH => {
                    w.u32_attr(attr::LIFETIME, 0);
                }
                method::SEND | method::DATA => {
                    w.xor_address(attr::XOR_PEER_ADDRESS, peer4)
                        .attr(attr::DATA, b"hello peer");
                }
                method::CREATE_PERMISSION => {
                    w.xor_address(attr::XOR_PEER_ADDRESS, peer4)
                        .xor_address(attr::XOR_PEER_ADDRESS, peer6);
                }
                method::CHANNEL_BIND => {
                    w.attr(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0])
                        .xor_address(attr::XOR_PEER_ADDRESS, peer4);
                }
                method::CONNECT | method::CONNECTION_ATTEMPT => {
                    w.xor_address(attr::XOR_PEER_ADDRESS, peer4);
                }
                method::CONNECTION_BIND => {
                    w.u32_attr(attr::CONNECTION_ID, 7);
                }
                _ => {
                    w.xor_address(attr::XOR_MAPPED_ADDRESS, peer6);
                }
            }
            if c == Class::Error {
                w.error_code(401, "Unauthenticated");
            }
            if c == Class::Request && m != method::BINDING {
                w.attr(attr::USERNAME, USER.as_bytes())
                    .attr(attr::REALM, REALM.as_bytes())
                    .attr(
                        attr::NONCE,
                        b"obMatJos2gAAA00000000000000000AAAAAAAAAAAAAAAAAAAAAA",
                    )
                    .integrity(FUZZ_KEY);
            }
            w.fingerprint();
            stun.push((format!("{mname}-{cname}"), buf));
        }
    }
    // SHA-256 integrity and an attribute after MESSAGE-INTEGRITY that must be ignored.
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::ALLOCATE, Class::Request, txid)
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .attr(attr::USERNAME, USER.as_bytes())
        .attr(attr::PASSWORD_ALGORITHMS, &[0, 2, 0, 0, 0, 1, 0, 0])
        .attr(attr::PASSWORD_ALGORITHM, &[0, 2, 0, 0])
        .integrity_sha256(FUZZ_KEY)
        .fingerprint();
    stun.push(("allocate-sha256".into(), buf));
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::BINDING, Class::Request, txid)
        .integrity(FUZZ_KEY)
        .attr(attr::SOFTWARE, b"after integrity");
    stun.push(("binding-after-integrity".into(), buf));
    for (name, m) in &stun {
        out.push(("stun_message", name.clone(), m.clone()));
        let mut framed = vec![7u8];
        framed.extend_from_slice(m);
        out.push(("stream_framing", name.clone(), framed));
        out.push((
            "server",
            format!("raw-{name}"),
            encode_ops(&[Op::Datagram {
                tuple: 0,
                bytes: m.clone(),
            }]),
        ));
    }
    for (name, d) in [
        ("short", channel_data::header(0x4000, 4).to_vec()),
        ("padded", {
            let mut v = channel_data::header(0x4001, 3).to_vec();
            v.extend_from_slice(b"abc\0");
            v
        }),
        ("max", {
            let mut v = channel_data::header(0x4FFF, 5).to_vec();
            v.extend_from_slice(b"12345");
            v
        }),
    ] {
        out.push(("channel_data", name.into(), d.clone()));
        let mut stream = vec![3u8];
        stream.extend_from_slice(&d);
        stream.extend_from_slice(&stun[0].1);
        out.push(("stream_framing", format!("channel-{name}"), stream));
    }
    // The quality observer: an ICE check and its answer, then RTP and an RTCP SR each way.
    {
        let mut run = Vec::new();
        let mut push = |flags: u8, p: &[u8]| {
            run.push(flags);
            run.push(p.len() as u8);
            run.extend_from_slice(p);
        };
        push(0, &stun[0].1[..stun[0].1.len().min(255)]);
        let mut answer = stun[0].1.clone();
        answer[0] = 0x01;
        answer[1] = 0x01;
        push(3, &answer[..answer.len().min(255)]);
        for i in 0..40u16 {
            let mut rtp = [0u8; 40];
            rtp[0] = 0x80;
            rtp[1] = if i % 3 == 2 { 0x80 | 96 } else { 96 };
            rtp[2..4].copy_from_slice(&(65_530u16.wrapping_add(i)).to_be_bytes());
            rtp[4..8].copy_from_slice(&(u32::from(i) * 3000).to_be_bytes());
            rtp[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            push(((i % 2) as u8) | 4, &rtp);
        }
        push(1, &[0x80, 200, 0, 6, 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0]);
        push(0, &[0x17, 0xFE, 0xFD, 0, 1]);
        out.push(("quality", "call".into(), run));
    }
    out.push((
        "config",
        "example".into(),
        crate::config::DEFAULT_CONFIG.as_bytes().to_vec(),
    ));
    out.push((
        "config",
        "limits".into(),
        b"[server]\nlisten = [\"127.0.0.1:3478\"]\n[auth]\nsecrets = [\"s\"]\n[limits]\nunauth-rate = 5\nunauth-burst = 9\nallocations-per-ip = 2\npermissions-per-allocation = 4\nchannels-per-allocation = 3\n[peers]\nallow = [\"10.0.0.0/8\"]\ndeny = [\"::ffff:1.2.3.4\"]\n".to_vec(),
    ));

    let alloc = |tuple, flags| Op::Authed {
        tuple,
        method: 1,
        flags,
        attrs: vec![AttrSpec::new(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])],
    };
    let session = vec![
        Op::Datagram {
            tuple: 0,
            bytes: stun[4].1.clone(),
        },
        alloc(0, 0),
        Op::Authed {
            tuple: 0,
            method: 3,
            flags: 0,
            attrs: vec![
                AttrSpec::peer(peer4),
                AttrSpec::peer("1.1.1.1:53".parse().unwrap_or(peer4)),
            ],
        },
        Op::Authed {
            tuple: 0,
            method: 4,
            flags: 2,
            attrs: vec![
                AttrSpec::new(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]),
                AttrSpec::peer(peer4),
            ],
        },
        Op::ChannelData {
            tuple: 0,
            number: 0x4000,
            payload: b"to the peer".to_vec(),
        },
        Op::Send {
            tuple: 0,
            peer: "1.1.1.1:53".parse().unwrap_or(peer4),
            payload: b"send".to_vec(),
        },
        Op::Peer {
            relay: 1,
            peer: peer4,
            payload: b"from the peer".to_vec(),
        },
        Op::Peer {
            relay: 1,
            peer: "1.1.1.1:53".parse().unwrap_or(peer4),
            payload: b"data indication".to_vec(),
        },
        Op::Advance { secs: 200 },
        Op::Authed {
            tuple: 0,
            method: 2,
            flags: 0,
            attrs: vec![AttrSpec::new(attr::LIFETIME, &[0, 0, 2, 0x58])],
        },
        Op::Advance { secs: 400 },
        Op::Authed {
            tuple: 0,
            method: 2,
            flags: 0,
            attrs: vec![AttrSpec::new(attr::LIFETIME, &[0, 0, 0, 0])],
        },
    ];
    out.push(("server", "session-udp".into(), encode_ops(&session)));
    let stream_session: Vec<Op> = session
        .iter()
        .map(|op| match op.clone() {
            Op::Authed {
                method,
                flags,
                attrs,
                ..
            } => Op::Authed {
                tuple: 4,
                method,
                flags: flags | 1,
                attrs,
            },
            Op::ChannelData {
                number, payload, ..
            } => Op::ChannelData {
                tuple: 4,
                number,
                payload,
            },
            Op::Send { peer, payload, .. } => Op::Send {
                tuple: 4,
                peer,
                payload,
            },
            other => other,
        })
        .collect();
    out.push((
        "server",
        "session-tcp-sha256".into(),
        encode_ops(&stream_session),
    ));
    let v6 = vec![
        Op::Authed {
            tuple: 3,
            method: 1,
            flags: 4,
            attrs: vec![
                AttrSpec::new(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
                AttrSpec::new(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]),
            ],
        },
        Op::Authed {
            tuple: 3,
            method: 3,
            flags: 4,
            attrs: vec![AttrSpec::peer(peer6), AttrSpec::peer(peer4)],
        },
        Op::Send {
            tuple: 3,
            peer: peer6,
            payload: b"v6".to_vec(),
        },
        // The relay nearest id 255 is the last one bound: the IPv6 relay, whichever ports the
        // generator picked and however many binds failed on the way.
        Op::Peer {
            relay: 255,
            peer: peer6,
            payload: b"back".to_vec(),
        },
        Op::Authed {
            tuple: 3,
            method: 2,
            flags: 4,
            attrs: vec![
                AttrSpec::new(attr::LIFETIME, &[0, 0, 0, 0]),
                AttrSpec::new(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]),
            ],
        },
        Op::Advance { secs: 4000 },
    ];
    out.push(("server", "session-dual-rest".into(), encode_ops(&v6)));
    let quotas: Vec<Op> = (0..8)
        .flat_map(|i| {
            [
                alloc(i % 4, 0),
                Op::Authed {
                    tuple: i % 4,
                    method: 1,
                    flags: 8,
                    attrs: vec![
                        AttrSpec::new(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
                        AttrSpec::new(attr::EVEN_PORT, &[0x80]),
                    ],
                },
            ]
        })
        .chain([Op::Authed {
            tuple: 2,
            method: 1,
            flags: 0,
            attrs: vec![
                AttrSpec::new(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
                AttrSpec {
                    ty: 0x41,
                    value: vec![1],
                },
            ],
        }])
        .collect();
    out.push(("server", "quotas-and-unknown".into(), encode_ops(&quotas)));

    // PROXY protocol v2 headers: IPv4, IPv6, LOCAL, with a TLV, then STUN after them.
    let dst4: SocketAddr = "192.0.2.1:3478".parse().unwrap_or(harness_listen());
    let dst6: SocketAddr = "[2001:db8::1]:3478".parse().unwrap_or(harness_listen());
    let v4 = crate::net::proxy::encode(peer4, dst4);
    out.push(("proxy_v2", "ipv4".into(), v4.clone()));
    out.push((
        "proxy_v2",
        "ipv6".into(),
        crate::net::proxy::encode(peer6, dst6),
    ));
    let mut local = crate::net::proxy::SIGNATURE.to_vec();
    local.extend([0x20, 0x00, 0x00, 0x00]);
    out.push(("proxy_v2", "local".into(), local));
    let mut tlv = v4.clone();
    tlv[15] += 7;
    tlv.extend([0x02, 0x00, 0x04, b'h', b'o', b's', b't']);
    out.push(("proxy_v2", "tlv".into(), tlv));
    let mut then_stun = v4;
    then_stun.extend_from_slice(&stun[0].1);
    out.push(("proxy_v2", "then-stun".into(), then_stun));

    // Streams: an RFC 6062 session (TCP allocation, Connect, ConnectionBind, an incoming
    // peer connection bound too, refused and failing Connects), and the UDP session over TLS.
    let tcp_peer: SocketAddr = "8.8.8.8:80".parse().unwrap_or(harness_listen());
    let failing: SocketAddr = "8.8.4.4:81".parse().unwrap_or(harness_listen());
    let refused: SocketAddr = "10.0.0.1:80".parse().unwrap_or(harness_listen());
    let incoming: SocketAddr = "8.8.8.8:4000".parse().unwrap_or(harness_listen());
    let authed = |tuple: u8, method: u8, attrs: Vec<AttrSpec>| Op::Authed {
        tuple,
        method,
        flags: 2,
        attrs,
    };
    let id = |n: u8| AttrSpec::new(attr::CONNECTION_ID, &[0, 0, 0, n]);
    let rfc6062 = vec![
        authed(
            0,
            1,
            vec![AttrSpec::new(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0])],
        ),
        authed(0, 3, vec![AttrSpec::peer(tcp_peer)]),
        authed(0, 5, vec![AttrSpec::peer(tcp_peer)]),
        authed(0, 5, vec![AttrSpec::peer(tcp_peer)]),
        authed(0, 5, vec![AttrSpec::peer(refused)]),
        authed(0, 5, vec![AttrSpec::peer(failing)]),
        authed(1, 6, vec![id(1)]),
        Op::Datagram {
            tuple: 1,
            bytes: b"piped, not parsed".to_vec(),
        },
        Op::Peer {
            relay: 0,
            peer: incoming,
            payload: Vec::new(),
        },
        authed(2, 6, vec![id(3)]),
        Op::Datagram {
            tuple: 2,
            bytes: Vec::new(),
        },
        Op::Datagram {
            tuple: 0,
            bytes: vec![0x00, 0x01, 0x00],
        },
        Op::Advance { secs: 40 },
        authed(0, 2, vec![AttrSpec::new(attr::LIFETIME, &[0, 0, 0, 0])]),
    ];
    let mut case = vec![5u8];
    case.extend(encode_ops(&rfc6062));
    out.push(("stream_server", "rfc6062".into(), case));
    let over_tls: Vec<Op> = session
        .iter()
        .map(|op| match op.clone() {
            Op::Authed {
                method,
                flags,
                attrs,
                ..
            } => Op::Authed {
                tuple: 3,
                // SEND sits one slot later in the stream table.
                method: if method == 6 { 7 } else { method },
                flags,
                attrs,
            },
            Op::ChannelData {
                number, payload, ..
            } => Op::ChannelData {
                tuple: 3,
                number,
                payload,
            },
            Op::Send { peer, payload, .. } => Op::Send {
                tuple: 3,
                peer,
                payload,
            },
            other => other,
        })
        .collect();
    let mut case = vec![63u8];
    case.extend(encode_ops(&over_tls));
    out.push(("stream_server", "session-tls".into(), case));
    out
}
