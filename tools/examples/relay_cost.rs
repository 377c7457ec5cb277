//! What one relayed packet costs in the sans-IO core: drives `Server::handle_client` with
//! ChannelData (client to peer) and `Server::handle_peer` with peer datagrams (peer to
//! client) in a loop, with an `Io` that only counts, and prints nanoseconds per packet.
//!
//! Run it twice to see what the statistics cost on the packet path:
//!
//! ```sh
//! cargo run --release -p turnd-tools --example relay_cost
//! RUSTFLAGS="--cfg turnd_no_stats" cargo run --release -p turnd-tools --example relay_cost
//! ```
//!
//! The second build compiles the per-packet traffic counters out (nothing else changes).
//! The driver's sockets and syscalls are not included: this is the core's share only.
//!
//! Wall-clock numbers are noisy on a busy machine; instruction counts are not. The
//! difference of two callgrind runs (N and 2N packets) gives instructions per packet pair
//! (one ChannelData each way):
//!
//! ```sh
//! RELAY_COST_PACKETS=100000 RELAY_COST_RUNS=1 valgrind --tool=callgrind \
//!     --callgrind-out-file=/dev/null target/release/examples/relay_cost
//! ```
//!
//! Call-quality telemetry (`telemetry.enabled`, on by default as in the server) reads every
//! relayed payload: `RELAY_COST_TELEMETRY=0` turns it off, and `RELAY_COST_RTP=1` sends
//! RTP-shaped payloads (a new sequence number and timestamp per packet, one SSRC each way,
//! the clock moving 10 µs per packet), which it parses and tracks; compare the four.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use turnd::stun::{Class, Message};
use turnd::testing::{CountingIo, TestClient};
use turnd::turn::{
    FiveTuple, PEER_HEADROOM, PEER_TAILROOM, Reconfigure, Server, ServerConfig, Time, Transport,
};

/// Packets per timed run, and runs per direction; `RELAY_COST_PACKETS` and
/// `RELAY_COST_RUNS` override them (e.g. for a run under `valgrind --tool=callgrind`, whose
/// instruction counts do not depend on the machine's load).
const PACKETS: u32 = 2_000_000;
const RUNS: usize = 15;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The class of an answer to the client; an answer that does not parse counts as an error.
fn class(answer: &[u8]) -> Class {
    Message::parse(answer).map_or(Class::Error, |m| m.class())
}

/// (fastest, median) of the runs: the fastest is the least disturbed by other load.
fn summary(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2])
}

fn main() {
    let ft = FiveTuple {
        client: "198.51.100.1:40000".parse().unwrap(),
        server: "192.0.2.1:3478".parse().unwrap(),
        transport: Transport::Udp,
    };
    let mut client = TestClient::new("alice", "bench", "pw", ft);
    let telemetry = env_or("RELAY_COST_TELEMETRY", 1u8) != 0;
    let rtp = env_or("RELAY_COST_RTP", 0u8) != 0;
    let base = client.server_config(50000..=50100);
    let mut server = Server::new(ServerConfig {
        live: Reconfigure {
            default_lifetime: Duration::from_secs(3600),
            telemetry,
            ..base.live
        },
        ..base
    });
    let mut io = CountingIo::default();
    let now = Time {
        mono: Instant::now(),
        unix: 1_800_000_000,
    };
    let peer: SocketAddr = "8.8.8.8:5000".parse().unwrap();

    assert!(
        client.learn_nonce(&mut server, &mut io, now, [9; 12]),
        "a 401 with a nonce"
    );
    let a = client.allocate(&mut server, &mut io, now, [3; 12]);
    assert_eq!(class(a), Class::Success, "allocate");
    let b = client.bind_channel(&mut server, &mut io, now, [9; 12], 0x4000, peer);
    assert_eq!(class(b), Class::Success, "channel bind");
    let relay = *io.relays.last().expect("a relay");

    let mut payload = [0x5Au8; 200];
    if rtp {
        // Version 2, payload type 111, SSRC 7 (sequence number and timestamp per packet).
        payload[..12].copy_from_slice(&[0x80, 111, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
    }
    let mut channel_data = vec![0x40, 0x00, 0x00, 200];
    channel_data.extend_from_slice(&payload);
    let mut peer_buf = vec![0u8; PEER_HEADROOM + 65536 + PEER_TAILROOM];
    let range = PEER_HEADROOM..PEER_HEADROOM + payload.len();
    peer_buf[range.clone()].copy_from_slice(&payload);
    // Packet `i` of a direction: sequence number `i`, sent at `i` x 10 µs (a 48 kHz
    // timestamp). Both directions run over the same span of time.
    let stamp = |p: &mut [u8], i: u32| {
        if rtp {
            p[2..4].copy_from_slice(&(i as u16).to_be_bytes());
            p[4..8].copy_from_slice(&((u64::from(i) * 48 / 100) as u32).to_be_bytes());
        }
    };
    let at = |i: u32| Time {
        mono: now.mono + Duration::from_micros(u64::from(i) * 10),
        ..now
    };
    let mut sent = 0u32;

    let packets: u32 = env_or("RELAY_COST_PACKETS", PACKETS).max(1);
    let runs: usize = env_or("RELAY_COST_RUNS", RUNS).max(1);
    let mut up = Vec::new();
    let mut down = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        for i in sent..sent + packets {
            stamp(&mut channel_data[4..], i);
            server.handle_client(at(i), ft, black_box(&channel_data), &mut io);
        }
        up.push(t.elapsed().as_nanos() as f64 / packets as f64);

        let t = Instant::now();
        for i in sent..sent + packets {
            // The ChannelData header is written in place before the payload; the payload
            // itself is left as is, as a fresh recv would leave it.
            stamp(&mut peer_buf[range.clone()], i);
            server.handle_peer(at(i), relay, peer, &mut peer_buf, range.clone(), &mut io);
        }
        down.push(t.elapsed().as_nanos() as f64 / packets as f64);
        sent += packets;
    }
    let expected = (runs as u64) * packets as u64;
    assert!(io.to_peer >= expected && io.to_client >= expected);
    let stats = if cfg!(turnd_no_stats) {
        "compiled out (--cfg turnd_no_stats)"
    } else {
        "on"
    };
    println!("statistics: {stats}");
    println!(
        "telemetry: {}, payloads: {}",
        if telemetry { "on" } else { "off" },
        if rtp { "RTP" } else { "not RTP (0x5A...)" }
    );
    let (up_min, up_median) = summary(up);
    let (down_min, down_median) = summary(down);
    println!(
        "client->peer ChannelData ({} B): {up_min:.1} ns/packet fastest, {up_median:.1} median \
         of {runs} runs x {packets}",
        payload.len(),
    );
    println!(
        "peer->client datagram ({} B): {down_min:.1} ns/packet fastest, {down_median:.1} \
         median of {runs} runs x {packets}",
        payload.len(),
    );
    println!(
        "relayed counters seen by the core: {:?}",
        server.stats().traffic
    );
}
