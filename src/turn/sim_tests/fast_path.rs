//! The kernel fast path's authority in the core (`server/fast_path.rs`): what it offers the
//! driver, when, with which expiry, and what it takes back; the kernel's counts credited.

use super::*;
use crate::turn::{FastPathEntry, KernelCounts};

fn on() -> Sim {
    let mut s = sim();
    s.io.fast_path = true;
    s
}

fn permission_lifetime() -> Duration {
    Duration::from_secs(300)
}

fn only_entry(s: &Sim) -> FastPathEntry {
    let live = s.io.fast_entries();
    assert_eq!(live.len(), 1, "one entry: {live:?}");
    live[0]
}

#[test]
fn nothing_is_offered_without_a_fast_path() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    assert!(bind(&mut c, &mut s, 0x4001, peer("8.8.8.8:4000")).is_ok());
    assert!(s.io.fast_calls.is_empty());
}

#[test]
fn a_bound_channel_is_offered_until_the_earliest_of_its_expiries_and_refreshes_move_it() {
    let mut s = on();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    // CreatePermission alone offers nothing: the kernel relays channels only.
    assert!(permit(&mut c, &mut s, &[peer("8.8.8.8:4000")]).is_ok());
    assert!(s.io.fast_calls.is_empty());
    let p = peer("8.8.8.8:4000");
    assert!(bind(&mut c, &mut s, 0x4001, p).is_ok());
    let e = only_entry(&s);
    let bound = s.io.bound.last().unwrap().1;
    assert_eq!(
        (e.client, e.channel, e.relay, e.peer),
        (c.ft, 0x4001, bound, p)
    );
    // The permission (300 s) ends before the channel (600 s) and the allocation.
    assert_eq!(e.expires, s.now().mono + permission_lifetime());

    // A CreatePermission 200 s later moves the expiry (same route, new time).
    s.advance(200);
    assert!(permit(&mut c, &mut s, &[p]).is_ok());
    let e2 = only_entry(&s);
    assert!(e2.same_route(&e));
    assert_eq!(e2.expires, s.now().mono + permission_lifetime());

    // Without further refreshes the permission lapses: the sweep takes the entry out, and
    // the allocation's kernel counts are taken (its slot ends).
    s.io.kernel_counts.insert(
        e.alloc,
        KernelCounts {
            packets_to_peer: 10,
            bytes_to_peer: 1000,
            packets_from_peer: 12,
            bytes_from_peer: 1200,
        },
    );
    s.advance(301);
    assert!(s.io.fast_entries().is_empty(), "{:?}", s.io.fast_calls);
    assert_eq!(s.io.fast_ended, vec![e.alloc]);
    let info = s.server.sessions(s.now().mono, None);
    assert_eq!(info[0].packets_to_peer, 10);
    assert_eq!(info[0].bytes_from_peer, 1200);
    assert_eq!(info[0].kernel.packets_from_peer, 12);
    assert_eq!(info[0].kernel_channels, 0);
    assert_eq!(s.server.stats().traffic.peer_sentp, 10);
    assert_eq!(s.server.stats().relayed_from_peer, 12);

    // Binding again offers it again, with a fresh slot whose counts start at zero.
    assert!(bind(&mut c, &mut s, 0x4001, p).is_ok());
    assert_eq!(s.io.fast_entries().len(), 1);
    s.io.kernel_counts.insert(
        e.alloc,
        KernelCounts {
            packets_to_peer: 3,
            ..Default::default()
        },
    );
    s.server
        .credit_kernel_counts(|id| s.io.kernel_counts.get(&id).copied());
    assert_eq!(s.server.sessions(s.now().mono, None)[0].packets_to_peer, 13);
    // The same reading again adds nothing.
    s.server
        .credit_kernel_counts(|id| s.io.kernel_counts.get(&id).copied());
    assert_eq!(s.server.sessions(s.now().mono, None)[0].packets_to_peer, 13);
}

#[test]
fn the_end_of_an_allocation_takes_its_channels_out_first() {
    let mut s = on();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    assert!(bind(&mut c, &mut s, 0x4001, peer("8.8.8.8:4000")).is_ok());
    assert!(bind(&mut c, &mut s, 0x4002, peer("8.8.4.4:4000")).is_ok());
    assert_eq!(s.io.fast_entries().len(), 2);
    s.io.kernel_counts.insert(
        only_alloc(&s),
        KernelCounts {
            packets_to_peer: 5,
            ..Default::default()
        },
    );
    let r = c.request(&mut s, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 0);
    });
    assert!(r.is_ok());
    assert!(s.io.fast_entries().is_empty());
    assert_eq!(s.io.fast_ended.len(), 1);
    // The removals came before the relay socket closed.
    assert!(!s.io.closed.is_empty());
    assert_eq!(s.server.stats().traffic.peer_sentp, 5);
}

fn only_alloc(s: &Sim) -> u64 {
    s.io.fast_entries()[0].alloc
}

#[test]
fn the_allocation_bounds_the_entry_when_it_ends_first() {
    let mut s = on();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    let ends = s.now().mono + Duration::from_secs(600);
    let p = peer("8.8.8.8:4000");
    assert!(bind(&mut c, &mut s, 0x4001, p).is_ok());
    // 400 s on, a refreshed permission outlives the allocation (and the channel).
    s.advance(400);
    assert!(permit(&mut c, &mut s, &[p]).is_ok());
    assert_eq!(only_entry(&s).expires, ends);
    s.advance(201);
    assert!(s.io.fast_entries().is_empty());
    assert!(s.server.sessions(s.now().mono, None).is_empty());
}

#[test]
fn limited_stream_and_wildcard_allocations_stay_on_the_socket_path() {
    // A bandwidth limit is enforced on the socket path only.
    let mut s = sim_with(Opts {
        max_bps: 1_000_000,
        ..Opts::default()
    });
    s.io.fast_path = true;
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    assert!(bind(&mut c, &mut s, 0x4001, peer("8.8.8.8:4000")).is_ok());
    assert!(s.io.fast_calls.is_empty(), "limited");

    // A client over TCP: the kernel program sees UDP only.
    let mut s = on();
    let tcp = FiveTuple {
        transport: Transport::Tcp,
        ..ft(1001)
    };
    let mut c = Client::new(tcp, "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    assert!(bind(&mut c, &mut s, 0x4001, peer("8.8.8.8:4000")).is_ok());
    assert!(s.io.fast_calls.is_empty(), "tcp");

    // A listener on 0.0.0.0: the kernel would not know which address to answer from.
    let mut s = on();
    let wild = FiveTuple {
        server: "0.0.0.0:3478".parse().unwrap(),
        ..ft(1002)
    };
    let mut c = Client::new(wild, "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    assert!(bind(&mut c, &mut s, 0x4001, peer("8.8.8.8:4000")).is_ok());
    assert!(s.io.fast_calls.is_empty(), "wildcard");
}
