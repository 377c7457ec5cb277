//! Peer address policy: by default loopback, private, link-local (cloud metadata) and
//! IPv4-mapped peers are refused with 403 (or another error) for CreatePermission and
//! ChannelBind while a public address is allowed; `--allow-peer` opens one prefix (and data
//! then really flows), `--deny-peer` closes one.

use crate::common;

use std::net::SocketAddr;

use common::{
    RawClient, TestServer, peer_attr, peer_socket, recv_data_indication, send_indication,
    udp_transport,
};
use stun::attributes::ATTR_CHANNEL_NUMBER;
use stun::message::{METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION};

fn allocated_client(server: &TestServer) -> RawClient {
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    let r = c.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(r.code(), None, "allocate");
    c
}

fn permission(c: &mut RawClient, peer: &str) -> Option<u16> {
    let peer: SocketAddr = peer.parse().unwrap();
    c.request(METHOD_CREATE_PERMISSION, &[peer_attr(peer)])
        .code()
}

fn channel_bind(c: &mut RawClient, channel: u16, peer: &str) -> Option<u16> {
    let peer: SocketAddr = peer.parse().unwrap();
    let [hi, lo] = channel.to_be_bytes();
    c.request(
        METHOD_CHANNEL_BIND,
        &[(ATTR_CHANNEL_NUMBER, vec![hi, lo, 0, 0]), peer_attr(peer)],
    )
    .code()
}

#[test]
fn default_policy_refuses_internal_peers_and_allows_public_ones() {
    let server = TestServer::start("127.0.0.1", &[]);
    let mut c = allocated_client(&server);
    let peer = peer_socket("127.0.0.1");
    let loopback = peer.local_addr().unwrap().to_string();

    assert_eq!(permission(&mut c, &loopback), Some(403), "loopback peer");
    assert_eq!(permission(&mut c, "10.0.0.1:5000"), Some(403), "10/8 peer");
    let mapped = permission(&mut c, "[::ffff:127.0.0.1]:5000");
    assert!(
        matches!(mapped, Some(403) | Some(443)),
        "IPv4-mapped loopback on an IPv4 allocation must be refused, got {mapped:?}"
    );
    assert_eq!(
        channel_bind(&mut c, 0x4000, &loopback),
        Some(403),
        "ChannelBind to loopback"
    );
    assert_eq!(
        channel_bind(&mut c, 0x4001, "169.254.169.254:80"),
        Some(403),
        "ChannelBind to the link-local metadata address"
    );
    // A public address is fine (a permission sends nothing to it).
    assert_eq!(permission(&mut c, "8.8.8.8:53"), None, "public peer");
}

#[test]
fn allow_peer_opens_loopback_and_data_flows() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.1/32"]);
    let mut c = allocated_client(&server);
    let peer = peer_socket("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();

    assert_eq!(permission(&mut c, &peer_addr.to_string()), None, "allowed");

    c.send_raw(&send_indication(peer_addr, b"hello peer"));
    let mut buf = [0u8; 1500];
    let (n, relayed) = peer.recv_from(&mut buf).expect("the peer receives");
    assert_eq!(&buf[..n], b"hello peer");
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");

    peer.send_to(b"hello client", relayed).unwrap();
    let (from, data) = recv_data_indication(&c).expect("a Data indication");
    assert_eq!(from, peer_addr);
    assert_eq!(data, b"hello client");

    // Only that one address is allowed.
    assert_eq!(
        permission(&mut c, "127.0.0.2:5000"),
        Some(403),
        "127.0.0.2 is outside 127.0.0.1/32"
    );
}

#[test]
fn deny_peer_closes_a_public_prefix() {
    let server = TestServer::start("127.0.0.1", &["--deny-peer", "8.8.8.0/24"]);
    let mut c = allocated_client(&server);
    assert_eq!(permission(&mut c, "8.8.8.8:53"), Some(403), "denied prefix");
    assert_eq!(permission(&mut c, "8.8.4.4:53"), None, "outside the prefix");
}
