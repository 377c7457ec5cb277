//! The per-packet path (ChannelData and Send from the client, Data and ChannelData to it)
//! does no heap allocation: checked with a counting global allocator around 40,000 relayed
//! packets through the sans-IO core, after setup, with bandwidth limits and statistics on;
//! then with call-quality telemetry fed RTP, RTCP and ICE checks both ways, after the first
//! relayed packet (which makes the allocation's fixed-size quality state).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnd::stun::{Class, Message, MessageWriter, attr, method};
use turnd::testing::{CountingIo, TestClient};
use turnd::turn::{FiveTuple, PEER_HEADROOM, PEER_TAILROOM, Server, ServerConfig, Time, Transport};

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

#[test]
fn relaying_packets_allocates_nothing() {
    let now = Time {
        mono: Instant::now(),
        unix: 1_800_000_000,
    };
    let ft = FiveTuple {
        client: "198.51.100.1:40000".parse().unwrap(),
        server: "192.0.2.1:3478".parse().unwrap(),
        transport: Transport::Udp,
    };
    let mut client = TestClient::new("alice", "hot.test", "pw", ft);
    let mut server = Server::new(ServerConfig {
        // A limit far above what the loop sends, so the token buckets run on every packet
        // without dropping any.
        quotas: Arc::new(turnd::turn::quota::Quotas::new(0, 0).with_bandwidth(
            1_000_000_000_000,
            0,
            0,
        )),
        ..client.server_config(50000..=50100)
    });
    // Keeps the last STUN message to the client in a buffer that never grows.
    let mut io = CountingIo::default();
    let peer: SocketAddr = "8.8.8.8:5000".parse().unwrap();
    let other: SocketAddr = "8.8.8.8:5001".parse().unwrap();

    // Setup: learn the nonce, allocate, permit, bind a channel.
    assert!(client.learn_nonce(&mut server, &mut io, now, [9; 12]));
    let r = client.allocate(&mut server, &mut io, now, [3; 12]);
    assert_eq!(Message::parse(r).unwrap().class(), Class::Success);
    let r = client.bind_channel(&mut server, &mut io, now, [9; 12], 0x4000, peer);
    assert_eq!(Message::parse(r).unwrap().class(), Class::Success);
    let relay = *io.relays.last().unwrap();

    let payload = [0x5Au8; 200];
    let mut channel_data = vec![0x40, 0x00, 0x00, 200];
    channel_data.extend_from_slice(&payload);
    let mut send = Vec::new();
    MessageWriter::new(&mut send, method::SEND, Class::Indication, [3; 12])
        .xor_address(attr::XOR_PEER_ADDRESS, peer)
        .attr(attr::DATA, &payload);
    let mut peer_buf = vec![0u8; PEER_HEADROOM + 65536 + PEER_TAILROOM];

    // The first relayed packet makes the allocation's call-quality state (telemetry is on).
    server.handle_client(now, ft, &channel_data, &mut io);
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

    // Call quality: RTP of more SSRCs than an allocation tracks, RTCP, and Binding checks
    // answered both ways, time moving on (windows close, checks time out).
    let rtp = |ssrc: u32, seq: u16, ts: u32| {
        let mut p = [0u8; 200];
        p[0] = 0x80;
        p[1] = 111;
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p
    };
    let binding = |ty: u16, id: u32| {
        let mut m = [0u8; 20];
        m[0..2].copy_from_slice(&ty.to_be_bytes());
        m[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        m[8..12].copy_from_slice(&id.to_be_bytes());
        m
    };
    let channel = |payload: &[u8]| {
        let mut v = [0u8; 204];
        v[0..4].copy_from_slice(&[0x40, 0x00, 0x00, payload.len() as u8]);
        v[4..4 + payload.len()].copy_from_slice(payload);
        (v, 4 + payload.len())
    };
    let (to_client0, to_peer0) = (io.to_client, io.to_peer);
    ALLOCS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    for i in 1..10_000u32 {
        let t = Time {
            mono: now.mono + Duration::from_millis(u64::from(i)),
            ..now
        };
        let (cd, n) = channel(&rtp(i % 20, (i / 20) as u16, i * 48));
        server.handle_client(t, ft, &cd[..n], &mut io);
        let (cd, n) = channel(&binding(0x0001, i));
        server.handle_client(t, ft, &cd[..n], &mut io);
        let from_peer: [&[u8]; 3] = [
            &rtp(1000 + i % 3, i as u16, i * 90),
            &binding(0x0101, i),
            &[0x80, 200, 0, 6, 0, 0, 0x03, 0xE8, 0, 0, 0, 0],
        ];
        for p in from_peer {
            peer_buf[PEER_HEADROOM..PEER_HEADROOM + p.len()].copy_from_slice(p);
            server.handle_peer(
                t,
                relay,
                peer,
                &mut peer_buf,
                PEER_HEADROOM..PEER_HEADROOM + p.len(),
                &mut io,
            );
        }
    }
    COUNTING.with(|c| c.set(false));
    let allocs = ALLOCS.with(|a| a.get());
    assert_eq!(
        io.to_peer - to_peer0,
        2 * 9_999,
        "every client packet relayed"
    );
    assert_eq!(
        io.to_client - to_client0,
        3 * 9_999,
        "every peer packet relayed"
    );
    assert_eq!(
        allocs, 0,
        "heap allocations on the packet path with telemetry"
    );
    let q = server.stats().quality;
    assert_eq!(
        q.answered[1], 9_999,
        "every check answered, on the peer leg"
    );
    assert!(q.streams_untracked > 0, "more SSRCs than the table holds");
}
