//! Microbenchmarks of the codec and of the per-packet lookup in the sans-IO core, with a
//! light harness (std::time and black_box; no criterion). `cargo bench --bench micro` prints
//! nanoseconds per operation; run without `--bench` (as `cargo test --benches` does) it only
//! runs a few iterations of each, as a smoke test. Nothing here fails on timing.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use turnd::auth::{PasswordAlgorithm, long_term_key};
use turnd::stun::{Class, Message, MessageWriter, attr, channel_data, method};
use turnd::testing::{CountingIo, TestClient};
use turnd::turn::{FiveTuple, PEER_HEADROOM, PEER_TAILROOM, Server, Time, Transport};

const REALM: &str = "bench.test";

struct Bench {
    /// Iterations per measurement (small when run as a smoke test).
    iters: u64,
}

impl Bench {
    fn run(&self, name: &str, mut f: impl FnMut()) {
        for _ in 0..self.iters / 10 + 1 {
            f();
        }
        let t = Instant::now();
        for _ in 0..self.iters {
            f();
        }
        let ns = t.elapsed().as_nanos() as f64 / self.iters as f64;
        println!("{name:<58} {ns:>9.1} ns/op");
    }
}

fn server() -> Server {
    Server::new(client().server_config(20000..=40000))
}

fn tuple(i: u32) -> FiveTuple {
    let ip = 0xC633_6400u32 + (i / 50_000); // 198.51.100.x
    let port = 10_000 + (i % 50_000) as u16;
    FiveTuple {
        client: SocketAddr::new(std::net::Ipv4Addr::from(ip).into(), port),
        server: "192.0.2.1:3478".parse().unwrap(),
        transport: Transport::Udp,
    }
}

/// Alice on `tuple(0)`, with FINGERPRINT on her signed requests.
fn client() -> TestClient {
    let mut c = TestClient::new("alice", REALM, "pw", tuple(0));
    c.fingerprint = true;
    c
}

/// A server with `n` allocations, each with channel 0x4000 bound to `peer`; their relays
/// in allocation order.
fn populated(n: u32, peer: SocketAddr, now: Time) -> (Server, CountingIo) {
    let mut s = server();
    let mut io = CountingIo::default();
    let mut client = client();
    assert!(
        client.learn_nonce(&mut s, &mut io, now, [9; 12]),
        "401 with a nonce"
    );
    for i in 0..n {
        client.ft = tuple(i);
        let mut txid = [0u8; 12];
        txid[..4].copy_from_slice(&i.to_be_bytes());
        client.allocate(&mut s, &mut io, now, txid);
        txid[4] = 1;
        client.bind_channel(&mut s, &mut io, now, txid, 0x4000, peer);
    }
    assert_eq!(s.allocation_count(), n as usize, "setup");
    (s, io)
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let b = Bench {
        iters: if measuring { 2_000_000 } else { 1_000 },
    };
    let now = Time {
        mono: Instant::now(),
        unix: 1_800_000_000,
    };
    let peer: SocketAddr = "8.8.8.8:5000".parse().unwrap();
    let payload = [0x5Au8; 200];

    // Codec.
    let mut alice = client();
    alice.nonce = Some(b"nonce-nonce-nonce".to_vec());
    let allocate = alice.signed(method::ALLOCATE, [7; 12], |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let mut send = Vec::new();
    MessageWriter::new(&mut send, method::SEND, Class::Indication, [3; 12])
        .xor_address(attr::XOR_PEER_ADDRESS, peer)
        .attr(attr::DATA, &payload);
    let mut cd = channel_data::header(0x4000, 200).to_vec();
    cd.extend_from_slice(&payload);
    let key = long_term_key(PasswordAlgorithm::Md5, "alice", REALM, "pw");

    b.run("stun: parse Allocate (auth, fingerprint)", || {
        black_box(Message::parse(black_box(&allocate)).is_ok());
    });
    let parsed = Message::parse(&allocate).unwrap();
    b.run("stun: verify MESSAGE-INTEGRITY (HMAC-SHA1)", || {
        black_box(black_box(&parsed).verify_integrity(key.as_bytes()));
    });
    b.run("stun: parse Send indication + peer + data (200 B)", || {
        let m = Message::parse(black_box(&send)).unwrap();
        black_box(m.xor_address(attr::XOR_PEER_ADDRESS));
        black_box(m.get(attr::DATA));
    });
    b.run("stun: parse ChannelData (200 B)", || {
        black_box(channel_data::parse(black_box(&cd)));
    });
    let mut out = Vec::with_capacity(512);
    b.run("stun: write Data indication (200 B)", || {
        MessageWriter::new(&mut out, method::DATA, Class::Indication, [4; 12])
            .xor_address(attr::XOR_PEER_ADDRESS, black_box(peer))
            .attr(attr::DATA, black_box(&payload));
        black_box(&out);
    });
    b.run("stun: write success with integrity + fingerprint", || {
        MessageWriter::new(&mut out, method::ALLOCATE, Class::Success, [4; 12])
            .xor_address(attr::XOR_RELAYED_ADDRESS, black_box(peer))
            .u32_attr(attr::LIFETIME, 600)
            .integrity(key.as_bytes())
            .fingerprint();
        black_box(&out);
    });

    // Per-packet lookup in the core: ChannelData in (client 5-tuple -> allocation ->
    // channel -> peer), peer datagram in (relay -> allocation -> channel by peer).
    let mut peer_buf = vec![0u8; PEER_HEADROOM + 65536 + PEER_TAILROOM];
    let range = PEER_HEADROOM..PEER_HEADROOM + payload.len();
    let counts: &[u32] = if measuring {
        &[1, 100, 10_000]
    } else {
        &[1, 10]
    };
    for &n in counts {
        let (mut s, mut io) = populated(n, peer, now);
        let relays = io.relays.clone();
        let tuples: Vec<FiveTuple> = (0..n).map(tuple).collect();
        // Visit allocations in a scattered order, as interleaved clients would.
        let order: Vec<usize> = (0..n as usize).map(|i| (i * 7919) % n as usize).collect();
        let mut k = 0usize;
        let (client0, peer0) = (io.to_client, io.to_peer);
        b.run(
            &format!("core: ChannelData client->peer, {n} allocations"),
            || {
                let i = order[k % order.len()];
                k += 1;
                s.handle_client(now, tuples[i], black_box(&cd), &mut io);
            },
        );
        b.run(
            &format!("core: Send indication client->peer, {n} allocations"),
            || {
                let i = order[k % order.len()];
                k += 1;
                s.handle_client(now, tuples[i], black_box(&send), &mut io);
            },
        );
        b.run(
            &format!("core: peer->client as ChannelData, {n} allocations"),
            || {
                let i = order[k % order.len()];
                k += 1;
                s.handle_peer(now, relays[i], peer, &mut peer_buf, range.clone(), &mut io);
            },
        );
        let other: SocketAddr = "8.8.8.8:5001".parse().unwrap();
        b.run(
            &format!("core: peer->client as Data indication, {n} allocations"),
            || {
                let i = order[k % order.len()];
                k += 1;
                s.handle_peer(now, relays[i], other, &mut peer_buf, range.clone(), &mut io);
            },
        );
        // Every packet measured was relayed (warm-up rounds included), not dropped.
        let rounds = 2 * (b.iters + b.iters / 10 + 1);
        assert!(io.to_peer - peer0 >= rounds, "client->peer packets dropped");
        assert!(
            io.to_client - client0 >= rounds,
            "peer->client packets dropped"
        );
    }
}
