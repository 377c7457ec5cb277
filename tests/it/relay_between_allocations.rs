//! Two allocations of one server relay to each other (each the other's peer, relayed address
//! to relayed address, the browser-to-browser case), through the real server, and turnd
//! hands the data over without the kernel: on one worker (both allocations in its maps) and
//! across two workers (the hand-over queue between them, `src/net/worker/handover.rs`), by bound or
//! advertised relayed address, for clients over UDP and over TCP. Permissions
//! hold on both sides: a datagram goes out only if the sender has a permission for the
//! receiver's relayed address, and comes in only if the receiver has one for the sender's
//! (RFC 8656 §12). Dropped datagrams are proven by order, not by waiting: each side's first
//! delivery is the one sent after the permission that allows it (the datagram to be refused
//! is followed by a request of its sender, whose answer comes after the hand-over, and the
//! receiving worker takes handed-over datagrams before what it reads after them).
//! `/metrics` shows which path carried them.

use crate::admin_http;
use crate::common;

use std::net::SocketAddr;

use admin_http::{get_json, scrape_parsed, start_with_admin, start_with_admin_on};

use common::stream::StreamClient;
use common::{
    RawClient, TestServer, parse_data_indication, peer_attr, recv_data_indication, send_indication,
    udp_transport,
};
use stun::attributes::{
    ATTR_CHANNEL_NUMBER, ATTR_REQUESTED_ADDRESS_FAMILY, ATTR_XOR_RELAYED_ADDRESS,
};
use stun::message::{METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION};

fn allocate(server: &TestServer) -> (RawClient, SocketAddr) {
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    let mut attrs = vec![udp_transport()];
    if server.addr.is_ipv6() {
        // A relayed address of the client's own family (IPv4 unless asked, RFC 6156).
        attrs.push((ATTR_REQUESTED_ADDRESS_FAMILY, vec![0x02, 0, 0, 0]));
    }
    let r = c.request(METHOD_ALLOCATE, &attrs);
    assert_eq!(r.code(), None, "allocate");
    let relayed = r.xor_addrs(ATTR_XOR_RELAYED_ADDRESS)[0];
    (c, relayed)
}

fn permit(c: &mut RawClient, peer: SocketAddr) {
    let r = c.request(METHOD_CREATE_PERMISSION, &[peer_attr(peer)]);
    assert_eq!(r.code(), None, "create permission for {peer}");
}

fn bind_channel(c: &mut RawClient, number: u16, peer: SocketAddr) {
    let r = c.request(
        METHOD_CHANNEL_BIND,
        &[
            (
                ATTR_CHANNEL_NUMBER,
                vec![(number >> 8) as u8, number as u8, 0, 0],
            ),
            peer_attr(peer),
        ],
    );
    assert_eq!(r.code(), None, "channel bind {number:#x} to {peer}");
}

fn channel_data(number: u16, data: &[u8]) -> Vec<u8> {
    let mut m = number.to_be_bytes().to_vec();
    m.extend_from_slice(&(data.len() as u16).to_be_bytes());
    m.extend_from_slice(data);
    m
}

/// The next ChannelData on the client's socket: (channel, data).
fn recv_channel_data(c: &RawClient) -> Option<(u16, Vec<u8>)> {
    for _ in 0..10 {
        let raw = c.recv_raw()?;
        if raw.len() >= 4 && (0x40..0x80).contains(&raw[0]) {
            let number = u16::from_be_bytes([raw[0], raw[1]]);
            let len = u16::from_be_bytes([raw[2], raw[3]]) as usize;
            return Some((number, raw.get(4..4 + len)?.to_vec()));
        }
    }
    None
}

/// Sends both ways between `a` and `b` (allocations with relayed addresses `relay_a` and
/// `relay_b`, no permissions yet) and checks what arrives; returns how many datagrams went
/// from one allocation to the other.
fn relay_both_ways(
    (mut a, relay_a): (RawClient, SocketAddr),
    (mut b, relay_b): (RawClient, SocketAddr),
) -> f64 {
    assert_ne!(relay_a, relay_b);

    // A may send to B, but B has no permission for A: B's side drops it. A's next request is
    // answered only after the server has handed that datagram over (to B's allocation within
    // the same batch, or to B's worker before the answer is sent, and that worker takes it
    // before anything it reads later), so B's permission below comes strictly later.
    permit(&mut a, relay_b);
    a.send_raw(&send_indication(relay_b, b"refused by b"));
    permit(&mut a, relay_b);
    // B has no permission for A: B's own send is dropped before it leaves.
    b.send_raw(&send_indication(relay_a, b"refused at b"));

    permit(&mut b, relay_a);
    a.send_raw(&send_indication(relay_b, b"to b"));
    assert_eq!(
        recv_data_indication(&b),
        Some((relay_a, b"to b".to_vec())),
        "B's first delivery is the one sent after its permission, from A's relayed address"
    );
    b.send_raw(&send_indication(relay_a, b"to a"));
    assert_eq!(
        recv_data_indication(&a),
        Some((relay_b, b"to a".to_vec())),
        "A's first delivery is B's send after B's permission"
    );

    // Channels: A's ChannelData reaches B as a Data indication until B binds a channel to A,
    // then as ChannelData on B's channel.
    bind_channel(&mut a, 0x4000, relay_b);
    a.send_raw(&channel_data(0x4000, b"over a's channel"));
    assert_eq!(
        recv_data_indication(&b),
        Some((relay_a, b"over a's channel".to_vec()))
    );
    bind_channel(&mut b, 0x4abc, relay_a);
    a.send_raw(&channel_data(0x4000, b"both channels"));
    assert_eq!(
        recv_channel_data(&b),
        Some((0x4abc, b"both channels".to_vec()))
    );
    b.send_raw(&channel_data(0x4abc, b"back to a"));
    assert_eq!(recv_channel_data(&a), Some((0x4000, b"back to a".to_vec())));

    // A burst in one direction arrives whole and in order (a burst fills the worker's
    // batches, some of them in one round).
    for i in 0..200u32 {
        a.send_raw(&channel_data(0x4000, &i.to_be_bytes()));
    }
    let mut got = Vec::new();
    while got.len() < 200 {
        match recv_channel_data(&b) {
            Some((0x4abc, d)) => got.push(u32::from_be_bytes(d.try_into().expect("4 bytes"))),
            other => panic!("after {} datagrams: {other:?}", got.len()),
        }
    }
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    // Delivered: "to b", "to a", two over channels, "back to a", and the burst.
    205.0
}

/// The internal-relay counters: (same worker, other worker).
fn internal_counts(admin: SocketAddr) -> (f64, f64) {
    let m = scrape_parsed(admin);
    let get = |path: &str| {
        m.get(&format!(
            "turnd_relay_internal_datagrams_total{{path=\"{path}\"}}"
        ))
        .copied()
        .unwrap_or_else(|| panic!("no {path} sample"))
    };
    (get("same_worker"), get("other_worker"))
}

#[test]
fn allocations_on_one_worker_relay_to_each_other_with_permissions_checked_on_both_sides() {
    let (server, admin) = start_with_admin(&["--workers", "1", "--allow-peer", "127.0.0.1/32"]);
    let a = allocate(&server);
    let b = allocate(&server);
    let delivered = relay_both_ways(a, b);
    let (same, other) = internal_counts(admin);
    assert!(same >= delivered, "same worker: {same}");
    assert_eq!(other, 0.0);
}

#[test]
fn allocations_on_two_workers_relay_to_each_other_with_permissions_checked_on_both_sides() {
    on_two_workers("127.0.0.1", &["--allow-peer", "127.0.0.1/32"]);
}

#[test]
fn allocations_on_two_workers_relay_to_each_other_over_ipv6() {
    on_two_workers("::1", &["--allow-peer", "::1/128"]);
}

// Behind 1:1 NAT (`relay.external-ips`) clients know each other's relayed addresses by the
// advertised IP. Here the relay sockets are bound to 127.0.0.1 and 127.0.0.2 is advertised:
// through the kernel a datagram to 127.0.0.2 would find no socket, so everything that
// arrives was handed over, from the sender's advertised address, as a NAT that loops it
// back would show it.
const BEHIND_NAT: [&str; 4] = ["--external-ip", "127.0.0.2", "--allow-peer", "127.0.0.2/32"];

#[test]
fn allocations_on_one_worker_relay_to_each_other_by_their_advertised_addresses() {
    let mut args = vec!["--workers", "1"];
    args.extend(BEHIND_NAT);
    let (server, admin) = start_with_admin(&args);
    let a = allocate(&server);
    let b = allocate(&server);
    assert_eq!(a.1.ip().to_string(), "127.0.0.2", "the advertised address");
    let delivered = relay_both_ways(a, b);
    assert!(internal_counts(admin).0 >= delivered);
}

#[test]
fn allocations_on_two_workers_relay_to_each_other_by_their_advertised_addresses() {
    on_two_workers("127.0.0.1", &BEHIND_NAT);
}

/// Several relay addresses of one family: allocations on the second and third (not the
/// family's first) relay to each other across workers by the hand-over too.
#[test]
fn allocations_on_two_workers_relay_between_extra_relay_addresses() {
    let args = [
        "--workers",
        "2",
        "--relay-ip",
        "127.0.0.2",
        "--relay-ip",
        "127.0.0.3",
        "--relay-ip",
        "127.0.0.4",
        "--allow-peer",
        "127.0.0.0/29",
    ];
    let (server, admin) = start_with_admin_on("127.0.0.1", &args);
    let first: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut on: [Option<(RawClient, SocketAddr)>; 2] = [None, None];
    let mut held = Vec::new();
    for _ in 0..48 {
        if on.iter().all(Option::is_some) {
            break;
        }
        let (c, relayed) = allocate(&server);
        if relayed.ip() == first {
            held.push(c);
            continue;
        }
        let sessions = get_json(admin, "/sessions");
        let worker = sessions
            .as_array()
            .expect("a session list")
            .iter()
            .find(|s| s["relayed"][0] == relayed.to_string())
            .and_then(|s| s["id"].as_str()?.split('-').next()?.parse::<usize>().ok())
            .expect("the session of the allocation, with its worker");
        if on[worker].is_none() {
            on[worker] = Some((c, relayed));
        } else {
            held.push(c);
        }
    }
    let [Some(a), Some(b)] = on else {
        panic!("no allocation on an extra relay address on each worker");
    };
    let delivered = relay_both_ways(a, b);
    let (same, other) = internal_counts(admin);
    assert!(other >= delivered, "other worker: {other}");
    assert_eq!(same, 0.0);
}

fn on_two_workers(ip: &str, extra: &[&str]) {
    let mut args = vec!["--workers", "2"];
    args.extend(extra);
    let (server, admin) = start_with_admin_on(ip, &args);
    // The kernel spreads clients over the workers by their address: allocate until each
    // worker has one (16 clients all on one worker has odds of 1 in 32,768).
    let mut on: [Option<(RawClient, SocketAddr)>; 2] = [None, None];
    for _ in 0..16 {
        if on.iter().all(Option::is_some) {
            break;
        }
        let (c, relayed) = allocate(&server);
        let sessions = get_json(admin, "/sessions");
        let worker = sessions
            .as_array()
            .expect("a session list")
            .iter()
            .find(|s| s["relayed"][0] == relayed.to_string())
            .and_then(|s| s["id"].as_str()?.split('-').next()?.parse::<usize>().ok())
            .expect("the session of the allocation, with its worker");
        if on[worker].is_none() {
            on[worker] = Some((c, relayed));
        }
    }
    let [Some(a), Some(b)] = on else {
        panic!("every allocation landed on one worker");
    };
    let delivered = relay_both_ways(a, b);
    let (same, other) = internal_counts(admin);
    assert!(other >= delivered, "other worker: {other}");
    assert_eq!(same, 0.0);
}

/// A client over TCP (TURN over TCP or TLS, as behind a strict firewall) and one over UDP:
/// the TCP client's datagram to the other allocation is handed over too (each frame is a
/// batch of its own), counted exactly once either way.
#[test]
fn a_client_over_tcp_relays_to_another_allocation_without_the_kernel() {
    for workers in ["1", "2"] {
        let (server, admin) =
            start_with_admin(&["--workers", workers, "--allow-peer", "127.0.0.1/32"]);
        let mut a = StreamClient::tcp(server.addr);
        let r = a.request(METHOD_ALLOCATE, &[udp_transport()]);
        assert_eq!(r.code(), None, "allocate over tcp");
        let relay_a = r.xor_addrs(ATTR_XOR_RELAYED_ADDRESS)[0];
        let (mut b, relay_b) = allocate(&server);
        let r = a.request(METHOD_CREATE_PERMISSION, &[peer_attr(relay_b)]);
        assert_eq!(r.code(), None, "permission over tcp");
        permit(&mut b, relay_a);

        a.send_raw(&send_indication(relay_b, b"over tcp"));
        assert_eq!(
            recv_data_indication(&b),
            Some((relay_a, b"over tcp".to_vec()))
        );
        let (same, other) = internal_counts(admin);
        assert_eq!(same + other, 1.0, "{workers} workers: the one datagram");

        b.send_raw(&send_indication(relay_a, b"back over tcp"));
        let frame = a.recv_frame().expect("a frame");
        assert_eq!(
            parse_data_indication(&frame),
            Some((relay_b, b"back over tcp".to_vec()))
        );
        let (same, other) = internal_counts(admin);
        assert_eq!(same + other, 2.0, "{workers} workers: both datagrams");
    }
}
