//! The kernel fast path's XDP program on its own (`bpf/relay.bpf.c`), run by the kernel on
//! frames this test makes (BPF_PROG_TEST_RUN) in a network namespace of its own, with map
//! entries the test writes: the rewrite of each direction byte for byte (addresses, ports,
//! lengths, both checksums, next-hop MACs), between families and between two allocations,
//! the counters, and every case that must go up to the socket path unchanged: an expired
//! or removed entry, a bad checksum, fragments, IP options, an unknown channel, STUN, a
//! ChannelData length that does not fit, a frame over the MTU.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use turnd::net::xdp::testing::{Harness, XDP_PASS, XDP_TX};
use turnd::turn::{FastPathEntry, FiveTuple, Transport};

const LO: u32 = 1;
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xc1];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x9e];
const OUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x01];
/// Far in the future, as CLOCK_MONOTONIC nanoseconds.
const LATER: u64 = u64::MAX / 2;

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn entry(client: &str, server: &str, channel: u16, relay: &str, peer: &str) -> FastPathEntry {
    FastPathEntry {
        alloc: 1,
        client: FiveTuple {
            client: a(client),
            server: a(server),
            transport: Transport::Udp,
        },
        channel,
        relay: a(relay),
        peer: a(peer),
        expires: Instant::now(),
    }
}

/// Runs `f` on a thread in a new network namespace (its own `lo`, forwarding off).
fn in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare on this thread only.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the namespace thread")
    })
}

fn sum(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo(src: IpAddr, dst: IpAddr, len: usize) -> u32 {
    let mut v = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            v.extend(s.octets());
            v.extend(d.octets());
            v.extend([0, 17]);
            v.extend((len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            v.extend(s.octets());
            v.extend(d.octets());
            v.extend((len as u32).to_be_bytes());
            v.extend([0, 0, 0, 17]);
        }
        _ => panic!("mixed pseudo-header"),
    }
    sum(&v, 0)
}

/// An Ethernet frame with an IPv4 or IPv6 header and a UDP datagram, checksums right.
fn frame(
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(dst_mac);
    f.extend(src_mac);
    let udp_len = 8 + payload.len();
    let mut udp = Vec::new();
    udp.extend(src.port().to_be_bytes());
    udp.extend(dst.port().to_be_bytes());
    udp.extend((udp_len as u16).to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(payload);
    let mut c = !fold(sum(&udp, pseudo(src.ip(), dst.ip(), udp_len)));
    if c == 0 {
        c = 0xffff;
    }
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend([0x08, 0x00]);
            let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0];
            ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
            ip.extend(s.octets());
            ip.extend(d.octets());
            let c = !fold(sum(&ip, 0));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend(ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend([0x86, 0xdd]);
            f.extend([0x60, 0, 0, 0]);
            f.extend((udp_len as u16).to_be_bytes());
            f.extend([17, 64]);
            f.extend(s.octets());
            f.extend(d.octets());
        }
        _ => panic!("mixed frame"),
    }
    f.extend(udp);
    f
}

fn channel_data(channel: u16, data: &[u8], pad: usize) -> Vec<u8> {
    let mut v = channel.to_be_bytes().to_vec();
    v.extend((data.len() as u16).to_be_bytes());
    v.extend(data);
    v.extend(std::iter::repeat_n(0u8, pad));
    v
}

/// A frame the program sent: its MACs, addresses and UDP payload, with both checksums
/// checked.
struct Out {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
}

fn parse(f: &[u8]) -> Out {
    let dst_mac: [u8; 6] = f[0..6].try_into().unwrap();
    let src_mac: [u8; 6] = f[6..12].try_into().unwrap();
    let (src_ip, dst_ip, l4): (IpAddr, IpAddr, usize) = match [f[12], f[13]] {
        [0x08, 0x00] => {
            let ip = &f[14..34];
            assert_eq!(ip[0], 0x45);
            assert_eq!(fold(sum(ip, 0)), 0xffff, "IPv4 header checksum");
            let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            assert_eq!(tot, f.len() - 14, "IPv4 total length");
            let s: [u8; 4] = ip[12..16].try_into().unwrap();
            let d: [u8; 4] = ip[16..20].try_into().unwrap();
            (s.into(), d.into(), 34)
        }
        [0x86, 0xdd] => {
            let ip = &f[14..54];
            assert_eq!(ip[0] >> 4, 6);
            let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            assert_eq!(plen, f.len() - 54, "IPv6 payload length");
            assert_eq!(ip[6], 17);
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            (s.into(), d.into(), 54)
        }
        t => panic!("ethertype {t:?}"),
    };
    let udp = &f[l4..];
    let len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    assert_eq!(len, udp.len(), "UDP length");
    assert_eq!(
        fold(sum(udp, pseudo(src_ip, dst_ip, len))),
        0xffff,
        "UDP checksum"
    );
    Out {
        dst_mac,
        src_mac,
        src: SocketAddr::new(src_ip, u16::from_be_bytes([udp[0], udp[1]])),
        dst: SocketAddr::new(dst_ip, u16::from_be_bytes([udp[2], udp[3]])),
        payload: udp[8..].to_vec(),
    }
}

fn harness() -> Harness {
    let mut h = Harness::load().expect("load the program (needs root)");
    h.interface(LO, 1500);
    h
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + 7) as u8).collect()
}

#[test]
fn channel_data_leaves_as_udp_and_udp_comes_back_as_channel_data() {
    in_new_netns(|| {
        let mut h = harness();
        let e = entry(
            "198.18.0.2:40000",
            "198.18.0.1:3478",
            0x4001,
            "198.18.0.1:50000",
            "198.18.0.3:60000",
        );
        h.install(&e, 7, LATER);
        h.neighbour(e.peer.ip(), PEER_MAC, LO);
        h.neighbour(e.client.client.ip(), CLIENT_MAC, LO);
        for (n, pad) in [(1, 3), (4, 0), (5, 3), (200, 0), (1001, 3), (1400, 0)] {
            let d = data(n);
            let f = frame(
                e.client.client,
                e.client.server,
                &channel_data(0x4001, &d, pad),
                OUR_MAC,
                CLIENT_MAC,
            );
            let (verdict, out) = h.run(&f, LO);
            assert_eq!(verdict, XDP_TX, "{n} bytes to the peer");
            let o = parse(&out);
            assert_eq!((o.src, o.dst), (e.relay, e.peer));
            assert_eq!(o.payload, d, "{n} bytes, padding {pad}: the data alone");
            assert_eq!((o.dst_mac, o.src_mac), (PEER_MAC, OUR_MAC));

            let f = frame(e.peer, e.relay, &d, OUR_MAC, PEER_MAC);
            let (verdict, out) = h.run(&f, LO);
            assert_eq!(verdict, XDP_TX, "{n} bytes from the peer");
            let o = parse(&out);
            assert_eq!((o.src, o.dst), (e.client.server, e.client.client));
            assert_eq!(o.payload, channel_data(0x4001, &d, 0));
            assert_eq!((o.dst_mac, o.src_mac), (CLIENT_MAC, OUR_MAC));
        }
        // RFC 5766's upper numbers, which turnd grants unless strict-channel-numbers.
        let high = entry(
            "198.18.0.2:40001",
            "198.18.0.1:3478",
            0x7ffe,
            "198.18.0.1:50001",
            "198.18.0.3:60000",
        );
        h.install(&high, 8, LATER);
        let d = data(100);
        let f = frame(
            high.client.client,
            high.client.server,
            &channel_data(0x7ffe, &d, 0),
            OUR_MAC,
            CLIENT_MAC,
        );
        let (verdict, out) = h.run(&f, LO);
        assert_eq!(verdict, XDP_TX, "channel 0x7ffe");
        assert_eq!(parse(&out).payload, d);
        let k = h.slot(7);
        assert_eq!((k.packets_to_peer, k.packets_from_peer), (6, 6));
        assert_eq!(k.bytes_to_peer, 1 + 4 + 5 + 200 + 1001 + 1400);
        assert_eq!(h.stat("to_peer"), 7);
        assert_eq!(h.stat("from_peer"), 6);
    });
}

#[test]
fn ipv6_and_mixed_family_rewrites_are_whole() {
    in_new_netns(|| {
        let mut h = harness();
        for (client, server, relay, peer) in [
            (
                "[2001:2::2]:40000",
                "[2001:2::1]:3478",
                "[2001:2::1]:50000",
                "[2001:2::3]:60000",
            ),
            (
                "198.18.0.2:40000",
                "198.18.0.1:3478",
                "[2001:2::1]:50001",
                "[2001:2::3]:60001",
            ),
            (
                "[2001:2::2]:40001",
                "[2001:2::1]:3478",
                "198.18.0.1:50002",
                "198.18.0.3:60002",
            ),
        ] {
            let e = entry(client, server, 0x4002, relay, peer);
            h.install(&e, 1, LATER);
            h.neighbour(e.peer.ip(), PEER_MAC, LO);
            h.neighbour(e.client.client.ip(), CLIENT_MAC, LO);
            for n in [1, 3, 200, 1200] {
                let d = data(n);
                let f = frame(
                    e.client.client,
                    e.client.server,
                    &channel_data(0x4002, &d, 0),
                    OUR_MAC,
                    CLIENT_MAC,
                );
                let (verdict, out) = h.run(&f, LO);
                assert_eq!(verdict, XDP_TX, "{client} -> {peer}, {n} bytes");
                let o = parse(&out);
                assert_eq!((o.src, o.dst, o.payload), (e.relay, e.peer, d.clone()));

                let f = frame(e.peer, e.relay, &d, OUR_MAC, PEER_MAC);
                let (verdict, out) = h.run(&f, LO);
                assert_eq!(verdict, XDP_TX, "{peer} -> {client}, {n} bytes");
                let o = parse(&out);
                assert_eq!((o.src, o.dst), (e.client.server, e.client.client));
                assert_eq!(o.payload, channel_data(0x4002, &d, 0));
            }
        }
    });
}

#[test]
fn a_channel_to_another_allocation_of_the_server_goes_straight_to_its_client() {
    in_new_netns(|| {
        let mut h = harness();
        let a_ = entry(
            "198.18.0.2:40000",
            "198.18.0.1:3478",
            0x4010,
            "198.18.0.1:50000",
            "198.18.0.1:50001",
        );
        let b = entry(
            "198.18.0.4:41000",
            "198.18.0.1:3478",
            0x4020,
            "198.18.0.1:50001",
            "198.18.0.1:50000",
        );
        h.install(&a_, 1, LATER);
        h.install(&b, 2, LATER);
        h.neighbour(b.client.client.ip(), CLIENT_MAC, LO);
        let d = data(300);
        let f = frame(
            a_.client.client,
            a_.client.server,
            &channel_data(0x4010, &d, 0),
            OUR_MAC,
            PEER_MAC,
        );
        let (verdict, out) = h.run(&f, LO);
        assert_eq!(verdict, XDP_TX);
        let o = parse(&out);
        assert_eq!((o.src, o.dst), (b.client.server, b.client.client));
        assert_eq!(o.payload, channel_data(0x4020, &d, 0));
        assert_eq!(h.stat("local"), 1);
        assert_eq!(h.slot(1).packets_to_peer, 1);
        assert_eq!(h.slot(2).packets_from_peer, 1);
    });
}

#[test]
fn everything_else_goes_up_unchanged() {
    in_new_netns(|| {
        let mut h = harness();
        let e = entry(
            "198.18.0.2:40000",
            "198.18.0.1:3478",
            0x4001,
            "198.18.0.1:50000",
            "198.18.0.3:60000",
        );
        let expired = entry(
            "198.18.0.2:40001",
            "198.18.0.1:3478",
            0x4001,
            "198.18.0.1:50001",
            "198.18.0.3:60001",
        );
        h.install(&e, 1, LATER);
        h.install(&expired, 2, 1);
        h.neighbour(e.peer.ip(), PEER_MAC, LO);
        h.neighbour(e.client.client.ip(), CLIENT_MAC, LO);
        let d = data(100);
        let good = frame(
            e.client.client,
            e.client.server,
            &channel_data(0x4001, &d, 0),
            OUR_MAC,
            CLIENT_MAC,
        );
        let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
        // An entry past its expiry, both directions.
        cases.push((
            "expired",
            frame(
                expired.client.client,
                expired.client.server,
                &channel_data(0x4001, &d, 0),
                OUR_MAC,
                CLIENT_MAC,
            ),
            "pass_expired",
        ));
        cases.push((
            "expired from the peer",
            frame(expired.peer, expired.relay, &d, OUR_MAC, PEER_MAC),
            "pass_expired",
        ));
        // A payload byte changed after the checksum was made.
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 0x5a;
        cases.push(("bad checksum", bad, "pass_checksum"));
        let mut bad = frame(e.peer, e.relay, &d, OUR_MAC, PEER_MAC);
        bad[50] ^= 1;
        cases.push(("bad checksum from the peer", bad, "pass_checksum"));
        // More fragments, a fragment offset, IP options.
        let mut frag = good.clone();
        frag[20] |= 0x20;
        cases.push(("more fragments", frag, "pass_fragment"));
        let mut frag = good.clone();
        frag[21] = 8;
        cases.push(("fragment offset", frag, "pass_fragment"));
        let mut opts = good.clone();
        opts[14] = 0x46;
        cases.push(("IP options", opts, "pass_fragment"));
        // An unknown channel, another client port, STUN to the listener, a peer without
        // an entry.
        cases.push((
            "unknown channel",
            frame(
                e.client.client,
                e.client.server,
                &channel_data(0x4002, &d, 0),
                OUR_MAC,
                CLIENT_MAC,
            ),
            "pass_no_entry",
        ));
        cases.push((
            "another client port",
            frame(
                a("198.18.0.2:40009"),
                e.client.server,
                &channel_data(0x4001, &d, 0),
                OUR_MAC,
                CLIENT_MAC,
            ),
            "pass_no_entry",
        ));
        let mut stun = vec![0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        stun.extend([7u8; 12]);
        cases.push((
            "STUN",
            frame(e.client.client, e.client.server, &stun, OUR_MAC, CLIENT_MAC),
            "pass_no_entry",
        ));
        cases.push((
            "unknown peer",
            frame(a("198.18.0.9:60000"), e.relay, &d, OUR_MAC, PEER_MAC),
            "pass_no_entry",
        ));
        // A ChannelData length past the datagram, and more than 3 bytes of padding.
        let mut long = channel_data(0x4001, &d, 0);
        long[3] = 200;
        cases.push((
            "length past the end",
            frame(e.client.client, e.client.server, &long, OUR_MAC, CLIENT_MAC),
            "pass_malformed",
        ));
        cases.push((
            "padding of 8",
            frame(
                e.client.client,
                e.client.server,
                &channel_data(0x4001, &d, 8),
                OUR_MAC,
                CLIENT_MAC,
            ),
            "pass_malformed",
        ));
        for (what, f, stat) in cases {
            let before = h.stat(stat);
            let (verdict, out) = h.run(&f, LO);
            assert_eq!(verdict, XDP_PASS, "{what}");
            assert_eq!(out, f, "{what}: unchanged");
            assert_eq!(h.stat(stat), before + 1, "{what}: counted as {stat}");
        }
        // Over the interface's MTU: up, for the socket path to send (and fragment).
        h.interface(LO, 120);
        let (verdict, out) = h.run(&good, LO);
        assert_eq!((verdict, out == good), (XDP_PASS, true), "over the MTU");
        assert_eq!(h.stat("pass_route"), 1);
        h.interface(LO, 1500);
        // The same frame relays while its entry is there, and goes up once it is removed.
        assert_eq!(h.run(&good, LO).0, XDP_TX);
        h.remove(&e);
        let (verdict, out) = h.run(&good, LO);
        assert_eq!((verdict, out == good), (XDP_PASS, true), "removed");
        assert_eq!(
            h.slot(1).packets_to_peer,
            1,
            "only the one relayed frame counted"
        );
        assert_eq!(h.stat("to_peer"), 1);
    });
}

#[test]
fn an_ipv4_datagram_without_a_checksum_is_relayed() {
    in_new_netns(|| {
        let mut h = harness();
        let e = entry(
            "198.18.0.2:40000",
            "198.18.0.1:3478",
            0x4001,
            "198.18.0.1:50000",
            "198.18.0.3:60000",
        );
        h.install(&e, 1, LATER);
        h.neighbour(e.peer.ip(), PEER_MAC, LO);
        let d = data(64);
        let mut f = frame(
            e.client.client,
            e.client.server,
            &channel_data(0x4001, &d, 0),
            OUR_MAC,
            CLIENT_MAC,
        );
        f[40] = 0;
        f[41] = 0;
        let (verdict, out) = h.run(&f, LO);
        assert_eq!(verdict, XDP_TX);
        let o = parse(&out);
        assert_eq!(o.payload, d);
    });
}
