//! IPv6: a server listening on ::1 with relay IPs in both families serves a `turn`-crate
//! client over IPv6 (IPv4 relay by default), gives an IPv6 relay for
//! REQUESTED-ADDRESS-FAMILY and both for ADDITIONAL-ADDRESS-FAMILY (with even ports for
//! EVEN-PORT), and relays data to an IPv6 peer; a server with only an IPv4 relay answers an IPv6 request with 440.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{
    RawClient, TestServer, peer_attr, peer_socket, recv_data_indication, send_indication,
    turn_client, udp_transport,
};
use stun::attributes::{ATTR_REQUESTED_ADDRESS_FAMILY, ATTR_XOR_RELAYED_ADDRESS, AttrType};
use stun::message::{METHOD_ALLOCATE, METHOD_CREATE_PERMISSION};
use webrtc_util::Conn;

const ATTR_ADDITIONAL_ADDRESS_FAMILY: AttrType = AttrType(0x8000);
const FAMILY_IPV6: [u8; 4] = [2, 0, 0, 0];

fn dual_server() -> TestServer {
    TestServer::start(
        "::1",
        &[
            "--relay-ip",
            "::1",
            "--relay-ip",
            "127.0.0.1",
            "--allow-peer",
            "::1/128",
            "--allow-peer",
            "127.0.0.1/32",
        ],
    )
}

#[tokio::test]
async fn turn_client_over_ipv6_relays_to_an_ipv4_peer() {
    let server = dual_server();
    assert!(server.addr.is_ipv6());
    let client = turn_client(&server, "alice", "wonderland").await;
    let relay = client.allocate().await.expect("allocate");
    let relayed = relay.local_addr().unwrap();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1", "IPv4 by default");

    let mapped = client.send_binding_request().await.unwrap();
    assert_eq!(mapped.ip().to_string(), "::1");

    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    common::echo_rounds(&relay, &peer, 5, Duration::ZERO).await;
    relay.close().await.unwrap();
    client.close().await.unwrap();
}

#[test]
fn requested_address_family_ipv6_relays_to_an_ipv6_peer() {
    let server = dual_server();
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    let r = c.request(
        METHOD_ALLOCATE,
        &[
            udp_transport(),
            (ATTR_REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6.to_vec()),
        ],
    );
    assert_eq!(r.code(), None, "allocate IPv6");
    let relayed = r.xor_addrs(ATTR_XOR_RELAYED_ADDRESS);
    assert_eq!(relayed.len(), 1, "{relayed:?}");
    let relayed = relayed[0];
    assert_eq!(relayed.ip().to_string(), "::1");

    let peer = peer_socket("::1");
    let peer_addr = peer.local_addr().unwrap();
    let r = c.request(METHOD_CREATE_PERMISSION, &[peer_attr(peer_addr)]);
    assert_eq!(r.code(), None, "permission for [::1]");

    c.send_raw(&send_indication(peer_addr, b"over six"));
    let mut buf = [0u8; 1500];
    let (n, from) = peer.recv_from(&mut buf).expect("the IPv6 peer receives");
    assert_eq!(&buf[..n], b"over six");
    assert_eq!(from, relayed, "sent from the relayed address");

    peer.send_to(b"six back", relayed).unwrap();
    let (from, data) = recv_data_indication(&c).expect("a Data indication");
    assert_eq!(from, peer_addr);
    assert_eq!(data, b"six back");
}

#[test]
fn additional_address_family_gives_two_relayed_addresses() {
    let server = dual_server();
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    let r = c.request(
        METHOD_ALLOCATE,
        &[
            udp_transport(),
            (ATTR_ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6.to_vec()),
        ],
    );
    assert_eq!(r.code(), None, "dual allocate");
    let relayed: Vec<SocketAddr> = r.xor_addrs(ATTR_XOR_RELAYED_ADDRESS);
    assert_eq!(relayed.len(), 2, "{relayed:?}");
    let v4: Vec<_> = relayed.iter().filter(|a| a.is_ipv4()).collect();
    let v6: Vec<_> = relayed.iter().filter(|a| a.is_ipv6()).collect();
    assert_eq!(v4.len(), 1, "{relayed:?}");
    assert_eq!(v6.len(), 1, "{relayed:?}");
    assert_eq!(v4[0].ip().to_string(), "127.0.0.1");
    assert_eq!(v6[0].ip().to_string(), "::1");
}

/// EVEN-PORT in a dual allocation (RFC 8656 §7.2): without the R bit both relayed addresses
/// get an even port; with it (a reservation, which holds a port of one family) the request is
/// refused with 400.
#[test]
fn even_port_in_a_dual_allocation() {
    const ATTR_EVEN_PORT: AttrType = AttrType(0x0018);
    let server = dual_server();
    for _ in 0..4 {
        let mut c = RawClient::new(server.addr, "alice", "wonderland");
        let r = c.request(
            METHOD_ALLOCATE,
            &[
                udp_transport(),
                (ATTR_EVEN_PORT, vec![0x00]),
                (ATTR_ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6.to_vec()),
            ],
        );
        assert_eq!(r.code(), None, "dual allocate with EVEN-PORT");
        let relayed = r.xor_addrs(ATTR_XOR_RELAYED_ADDRESS);
        assert_eq!(relayed.len(), 2, "{relayed:?}");
        assert!(relayed.iter().all(|a| a.port() % 2 == 0), "{relayed:?}");
    }
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    let r = c.request(
        METHOD_ALLOCATE,
        &[
            udp_transport(),
            (ATTR_EVEN_PORT, vec![0x80]),
            (ATTR_ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6.to_vec()),
        ],
    );
    assert_eq!(r.code(), Some(400), "a reservation in a dual allocation");
}

#[test]
fn ipv6_request_without_an_ipv6_relay_gets_440() {
    let server = TestServer::start("127.0.0.1", &[]);
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    let r = c.request(
        METHOD_ALLOCATE,
        &[
            udp_transport(),
            (ATTR_REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6.to_vec()),
        ],
    );
    assert_eq!(r.code(), Some(440), "address family not supported");
    // An IPv4 allocation from the same client still works.
    let r = c.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(r.code(), None, "IPv4 allocate after the 440");
}
