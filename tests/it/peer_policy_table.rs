//! The peer policy table through the real server: every canonical form of an internal or
//! special address (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo, 0.0.0.0/8, ::,
//! multicast, broadcast, cloud metadata, loopback, private ranges, TURN anycast) is refused
//! with 403 for CreatePermission and for ChannelBind under the default policy, on a dual-stack
//! allocation so the IPv6 forms reach the policy rather than the family check. Neither request
//! sends anything to the peer. The server's own listen address is refused even when the
//! operator allows its range. (Send is covered in the core: `sim_tests::abuse`.)
//!
//! RFC 6062 Connect over TCP allocations goes through the same table: every form is refused
//! with 403 (a refused Connect opens no connection), on an IPv4 and an IPv6 TCP allocation so
//! each form reaches the policy rather than the family check; and the server's own TCP, TLS
//! and admin listen addresses are refused as Connect peers even when loopback is allowed.

use crate::common;

use std::net::SocketAddr;

use common::stream::{StreamClient, TempDir, TestCert, free_tcp_port};
use common::{RawClient, TestServer, peer_attr, udp_transport};
use stun::attributes::{
    ATTR_CHANNEL_NUMBER, ATTR_REQUESTED_ADDRESS_FAMILY, ATTR_REQUESTED_TRANSPORT,
    ATTR_XOR_RELAYED_ADDRESS, AttrType,
};
use stun::message::{
    METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CONNECT, METHOD_CREATE_PERMISSION,
};

const ADDITIONAL_ADDRESS_FAMILY: AttrType = AttrType(0x8000);

const TABLE: &[(&str, &str)] = &[
    ("loopback", "127.0.0.1:5000"),
    ("loopback /8", "127.1.2.3:5000"),
    ("IPv6 loopback", "[::1]:5000"),
    ("this network", "0.0.0.0:5000"),
    ("this network /8", "0.1.2.3:5000"),
    ("IPv6 unspecified", "[::]:5000"),
    ("RFC 1918 10/8", "10.0.0.1:5000"),
    ("RFC 1918 172.16/12", "172.16.0.1:5000"),
    ("RFC 1918 192.168/16", "192.168.1.1:5000"),
    ("CGNAT", "100.64.0.1:5000"),
    ("ULA", "[fd00::1]:5000"),
    ("cloud metadata", "169.254.169.254:80"),
    ("IPv6 link-local", "[fe80::1]:5000"),
    ("multicast", "224.0.0.1:5000"),
    ("SSDP multicast", "239.255.255.250:1900"),
    ("IPv6 multicast", "[ff02::1]:5000"),
    ("broadcast", "255.255.255.255:5000"),
    ("IPv4-mapped loopback", "[::ffff:127.0.0.1]:5000"),
    ("IPv4-mapped private", "[::ffff:10.0.0.1]:5000"),
    ("IPv4-mapped metadata", "[::ffff:169.254.169.254]:80"),
    ("SIIT loopback", "[::ffff:0:127.0.0.1]:5000"),
    ("IPv4-compatible loopback", "[::127.0.0.1]:5000"),
    ("IPv4-compatible private", "[::10.0.0.1]:5000"),
    ("NAT64 loopback", "[64:ff9b::7f00:1]:5000"),
    ("NAT64 metadata", "[64:ff9b::a9fe:a9fe]:80"),
    ("local-use NAT64", "[64:ff9b:1::808:808]:5000"),
    ("6to4 loopback", "[2002:7f00:1::1]:5000"),
    ("6to4 metadata", "[2002:a9fe:a9fe::1]:80"),
    ("6to4 private", "[2002:c0a8:101::1]:5000"),
    ("Teredo client loopback", "[2001:0:808:808::80ff:fffe]:5000"),
    ("Teredo server private", "[2001:0:a00:1::f7f7:f7f7]:5000"),
    ("TURN anycast", "[2001:1::2]:3478"),
    ("documentation", "[2001:db8::1]:5000"),
];

fn dual_allocation(server: &TestServer) -> RawClient {
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    let r = c.request(
        METHOD_ALLOCATE,
        &[
            udp_transport(),
            (ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0]),
        ],
    );
    assert_eq!(r.code(), None, "dual allocate");
    assert_eq!(
        r.xor_addrs(ATTR_XOR_RELAYED_ADDRESS).len(),
        2,
        "both families"
    );
    c
}

fn permission(c: &mut RawClient, peer: SocketAddr) -> Option<u16> {
    c.request(METHOD_CREATE_PERMISSION, &[peer_attr(peer)])
        .code()
}

fn channel_bind(c: &mut RawClient, channel: u16, peer: SocketAddr) -> Option<u16> {
    let [hi, lo] = channel.to_be_bytes();
    c.request(
        METHOD_CHANNEL_BIND,
        &[(ATTR_CHANNEL_NUMBER, vec![hi, lo, 0, 0]), peer_attr(peer)],
    )
    .code()
}

#[test]
fn every_form_in_the_table_is_refused() {
    let server = TestServer::start(
        "127.0.0.1",
        &["--relay-ip", "127.0.0.1", "--relay-ip", "::1"],
    );
    let mut c = dual_allocation(&server);
    for (i, (what, addr)) in TABLE.iter().enumerate() {
        let peer: SocketAddr = addr.parse().unwrap();
        assert_eq!(
            permission(&mut c, peer),
            Some(403),
            "CreatePermission {what} {peer}"
        );
        assert_eq!(
            channel_bind(&mut c, 0x4000 + i as u16, peer),
            Some(403),
            "ChannelBind {what} {peer}"
        );
    }
    // The same allocation may still reach a public address, so 403 above is the policy.
    let public: SocketAddr = "8.8.8.8:53".parse().unwrap();
    assert_eq!(permission(&mut c, public), None);
    assert_eq!(channel_bind(&mut c, 0x4FFF, public), None);
}

#[test]
fn own_listen_address_is_refused_even_when_its_range_is_allowed() {
    let server = TestServer::start(
        "127.0.0.1",
        &[
            "--relay-ip",
            "127.0.0.1",
            "--relay-ip",
            "::1",
            "--allow-peer",
            "127.0.0.0/8",
        ],
    );
    let mut c = dual_allocation(&server);
    let own = server.addr;
    let mapped: SocketAddr = format!("[::ffff:{}]:{}", own.ip(), own.port())
        .parse()
        .unwrap();
    let nat64: SocketAddr = format!("[64:ff9b::7f00:1]:{}", own.port()).parse().unwrap();
    for peer in [own, mapped, nat64] {
        assert_eq!(
            permission(&mut c, peer),
            Some(403),
            "CreatePermission {peer}"
        );
        assert_eq!(
            channel_bind(&mut c, 0x4000, peer),
            Some(403),
            "ChannelBind {peer}"
        );
    }
    // Another port on the allowed loopback range is an ordinary peer.
    let other: SocketAddr = format!("127.0.0.1:{}", own.port().wrapping_add(1).max(1))
        .parse()
        .unwrap();
    assert_eq!(permission(&mut c, other), None);
    assert_eq!(channel_bind(&mut c, 0x4001, other), None);
}

/// A TCP allocation (RFC 6062 §5.1) over a new TCP control connection, of the given family.
fn tcp_allocation(server: SocketAddr, ipv6: bool) -> StreamClient {
    let mut c = StreamClient::tcp(server);
    let mut attrs = vec![(ATTR_REQUESTED_TRANSPORT, vec![6, 0, 0, 0])];
    if ipv6 {
        attrs.push((ATTR_REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]));
    }
    let r = c.request(METHOD_ALLOCATE, &attrs);
    assert_eq!(r.code(), None, "TCP allocate (IPv6: {ipv6})");
    c
}

fn connect(c: &mut StreamClient, peer: SocketAddr) -> Option<u16> {
    c.request(METHOD_CONNECT, &[peer_attr(peer)]).code()
}

#[test]
fn every_form_in_the_table_is_refused_for_connect() {
    let server = TestServer::start(
        "127.0.0.1",
        &["--relay-ip", "127.0.0.1", "--relay-ip", "::1"],
    );
    let mut v4 = tcp_allocation(server.addr, false);
    let mut v6 = tcp_allocation(server.addr, true);
    for (what, addr) in TABLE {
        let peer: SocketAddr = addr.parse().unwrap();
        let c = if peer.is_ipv4() { &mut v4 } else { &mut v6 };
        assert_eq!(connect(c, peer), Some(403), "Connect {what} {peer}");
    }
    // (That Connect itself works on such an allocation, once the policy allows the peer, is
    // shown on loopback below; no test here may reach a non-loopback address.)
}

#[test]
fn own_tcp_tls_and_admin_addresses_are_refused_for_connect() {
    let dir = TempDir::new("own-connect");
    let cert = TestCert::new(&dir);
    let tls: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let tls_s = tls.to_string();
    let admin_s = admin.to_string();
    let server = TestServer::start(
        "127.0.0.1",
        &[
            "--relay-ip",
            "127.0.0.1",
            "--relay-ip",
            "::1",
            "--allow-peer",
            "127.0.0.0/8",
            "--tls-listen",
            &tls_s,
            "--cert",
            cert.cert.to_str().unwrap(),
            "--key",
            cert.key.to_str().unwrap(),
            "--admin-listen",
            &admin_s,
            "--admin-token",
            "own-address-test-token",
        ],
    );
    let mut c = tcp_allocation(server.addr, false);
    let mut c6 = tcp_allocation(server.addr, true);
    for (what, own) in [
        ("TCP listener", server.addr),
        ("TLS listener", tls),
        ("admin", admin),
    ] {
        assert_eq!(
            connect(&mut c, own),
            Some(403),
            "Connect to own {what} {own}"
        );
        // The same address in its IPv4-mapped and NAT64 spellings, on the IPv6 allocation.
        let mapped: SocketAddr = format!("[::ffff:{}]:{}", own.ip(), own.port())
            .parse()
            .unwrap();
        let nat64: SocketAddr = format!("[64:ff9b::7f00:1]:{}", own.port()).parse().unwrap();
        for form in [mapped, nat64] {
            assert_eq!(
                connect(&mut c6, form),
                Some(403),
                "Connect to own {what} as {form}"
            );
        }
    }
    // A loopback peer that is not the server is allowed: Connect succeeds.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = peer.local_addr().unwrap();
    assert_eq!(
        connect(&mut c, addr),
        None,
        "Connect to an allowed loopback peer"
    );
    let (_conn, from) = peer.accept().unwrap();
    assert_eq!(from.ip(), addr.ip());
}
