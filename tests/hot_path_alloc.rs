//! The per-packet path (ChannelData and Send from the client, Data and ChannelData to it)
//! does no heap allocation: checked with a counting global allocator around 40,000 relayed
//! packets through the sans-IO core, after setup, with bandwidth limits and statistics on.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use turnd::auth::{AuthConfig, Authenticator, PasswordAlgorithm, UserSecret, long_term_key};
use turnd::stun::{Class, Message, MessageWriter, attr, method};
use turnd::turn::{
    BindError, FiveTuple, Io, PEER_HEADROOM, PEER_TAILROOM, RelayId, RelayOptions, Server,
    ServerConfig, Time, Transport,
};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCS.with(|a| a.set(a.get() + 1));
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCS.with(|a| a.set(a.get() + 1));
        }
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Keeps the last message to the client in a buffer that never grows after warm-up.
struct CountingIo {
    last: Vec<u8>,
    to_client: u64,
    to_peer: u64,
    relay: Option<RelayId>,
}

impl Io for CountingIo {
    fn send_to_client(&mut self, _: &FiveTuple, data: &[u8]) {
        self.last.clear();
        self.last.extend_from_slice(data);
        self.to_client += 1;
    }
    fn send_to_peer(&mut self, _: RelayId, _: SocketAddr, _: &[u8]) {
        self.to_peer += 1;
    }
    fn bind_relay(&mut self, r: RelayId, _: SocketAddr, _: RelayOptions) -> Result<(), BindError> {
        self.relay = Some(r);
        Ok(())
    }
    fn close_relay(&mut self, _: RelayId) {}
}

fn request(
    server: &mut Server,
    io: &mut CountingIo,
    now: Time,
    ft: FiveTuple,
    m: u16,
    nonce: &[u8],
    attrs: &dyn Fn(&mut MessageWriter),
) -> Vec<u8> {
    let key = long_term_key(PasswordAlgorithm::Md5, "alice", "hot.test", "pw");
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, m, Class::Request, [m as u8; 12]);
    attrs(&mut w);
    w.attr(attr::USERNAME, b"alice")
        .attr(attr::REALM, b"hot.test")
        .attr(attr::NONCE, nonce)
        .integrity(key.as_bytes());
    server.handle_client(now, ft, &buf, io);
    io.last.clone()
}

#[test]
fn relaying_packets_allocates_nothing() {
    let auth = Authenticator::new(AuthConfig {
        realm: "hot.test".into(),
        users: vec![("alice".into(), UserSecret::Password("pw".into()))],
        secrets: vec![],
        rest_separator: ':',
        nonce_lifetime_secs: 600,
        nonce_key: [1; 32],
    });
    let relay = "192.0.2.1".parse().unwrap();
    let mut server = Server::new(ServerConfig {
        // A limit far above what the loop sends, so the token buckets run on every packet
        // without dropping any.
        quotas: Arc::new(turnd::turn::quota::Quotas::new(0, 0).with_bandwidth(
            1_000_000_000_000,
            0,
            0,
        )),
        max_permissions: 16,
        unauth_limiter: Arc::new(turnd::turn::rate_limit::ResponseLimiter::new(
            turnd::turn::rate_limit::RateLimit { rate: 0, burst: 0 },
            [0; 16],
        )),
        ..ServerConfig::testing(
            Arc::new(auth),
            [Some((relay, relay)), None],
            50000..=50100,
            [2; 32],
        )
    });
    let mut io = CountingIo {
        last: Vec::with_capacity(70_000),
        to_client: 0,
        to_peer: 0,
        relay: None,
    };
    let now = Time {
        mono: Instant::now(),
        unix: 1_800_000_000,
    };
    let ft = FiveTuple {
        client: "198.51.100.1:40000".parse().unwrap(),
        server: "192.0.2.1:3478".parse().unwrap(),
        transport: Transport::Udp,
    };
    let peer: SocketAddr = "8.8.8.8:5000".parse().unwrap();
    let other: SocketAddr = "8.8.8.8:5001".parse().unwrap();

    // Setup: learn the nonce, allocate, permit, bind a channel.
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::ALLOCATE, Class::Request, [9; 12])
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    server.handle_client(now, ft, &buf, &mut io);
    let nonce = Message::parse(&io.last)
        .unwrap()
        .get(attr::NONCE)
        .unwrap()
        .to_vec();
    let r = request(
        &mut server,
        &mut io,
        now,
        ft,
        method::ALLOCATE,
        &nonce,
        &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        },
    );
    assert_eq!(Message::parse(&r).unwrap().class(), Class::Success);
    let r = request(
        &mut server,
        &mut io,
        now,
        ft,
        method::CHANNEL_BIND,
        &nonce,
        &|w| {
            w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, peer);
        },
    );
    assert_eq!(Message::parse(&r).unwrap().class(), Class::Success);
    let relay = io.relay.unwrap();

    let payload = [0x5Au8; 200];
    let mut channel_data = vec![0x40, 0x00, 0x00, 200];
    channel_data.extend_from_slice(&payload);
    let mut send = Vec::new();
    MessageWriter::new(&mut send, method::SEND, Class::Indication, [3; 12])
        .xor_address(attr::XOR_PEER_ADDRESS, peer)
        .attr(attr::DATA, &payload);
    let mut peer_buf = vec![0u8; PEER_HEADROOM + 65536 + PEER_TAILROOM];

    let (to_client0, to_peer0) = (io.to_client, io.to_peer);
    COUNTING.with(|c| c.set(true));
    for _ in 0..10_000 {
        server.handle_client(now, ft, &channel_data, &mut io);
        server.handle_client(now, ft, &send, &mut io);
        peer_buf[PEER_HEADROOM..PEER_HEADROOM + 200].copy_from_slice(&payload);
        server.handle_peer(
            now,
            relay,
            peer,
            &mut peer_buf,
            PEER_HEADROOM..PEER_HEADROOM + 200,
            &mut io,
        );
        peer_buf[PEER_HEADROOM..PEER_HEADROOM + 200].copy_from_slice(&payload);
        server.handle_peer(
            now,
            relay,
            other,
            &mut peer_buf,
            PEER_HEADROOM..PEER_HEADROOM + 200,
            &mut io,
        );
    }
    COUNTING.with(|c| c.set(false));
    let allocs = ALLOCS.with(|a| a.get());
    assert_eq!(io.to_peer - to_peer0, 20_000, "every client packet relayed");
    assert_eq!(
        io.to_client - to_client0,
        20_000,
        "every peer packet relayed"
    );
    assert_eq!(allocs, 0, "heap allocations on the packet path");
}
