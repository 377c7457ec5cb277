//! The per-packet path (ChannelData and Send from the client, Data and ChannelData to it)
//! does no heap allocation: checked with a counting global allocator around 40,000 relayed
//! packets through the sans-IO core, after setup, with bandwidth limits and statistics on.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

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
