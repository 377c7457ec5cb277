//! The first datagrams a client relays right after its allocation (and permission or
//! channel) is set up reach the peer: a fast client that sends data as soon as the server's
//! success response arrives must not lose it. Many fresh allocations in a row, each sending
//! at once, every datagram checked.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{RawClient, TestServer, peer_attr, peer_socket, send_indication, udp_transport};
use stun::attributes::ATTR_CHANNEL_NUMBER;
use stun::message::{METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION};

const ROUNDS: usize = 6;

fn server() -> TestServer {
    TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.1/32"])
}

fn allocate(server: &TestServer) -> RawClient {
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    assert_eq!(
        c.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        None,
        "allocate"
    );
    c
}

/// Whether `payload` reaches `peer` within a few seconds.
fn received(peer: &std::net::UdpSocket, payload: &[u8]) -> bool {
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 1500];
    matches!(peer.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == payload)
}

#[test]
fn send_indication_right_after_create_permission_is_relayed() {
    let server = server();
    let mut lost = Vec::new();
    for round in 0..ROUNDS {
        let mut c = allocate(&server);
        let peer = peer_socket("127.0.0.1");
        let peer_addr: SocketAddr = peer.local_addr().unwrap();
        let r = c.request(METHOD_CREATE_PERMISSION, &[peer_attr(peer_addr)]);
        assert_eq!(r.code(), None, "permission");
        let payload = format!("first datagram {round}");
        c.send_raw(&send_indication(peer_addr, payload.as_bytes()));
        if !received(&peer, payload.as_bytes()) {
            lost.push(round);
        }
    }
    assert!(
        lost.is_empty(),
        "the first Send indication after Allocate + CreatePermission was lost in rounds \
         {lost:?} of {ROUNDS}"
    );
}

#[test]
fn channel_data_right_after_channel_bind_is_relayed() {
    let server = server();
    let mut lost = Vec::new();
    for round in 0..ROUNDS {
        let mut c = allocate(&server);
        let peer = peer_socket("127.0.0.1");
        let peer_addr: SocketAddr = peer.local_addr().unwrap();
        let r = c.request(
            METHOD_CHANNEL_BIND,
            &[
                (ATTR_CHANNEL_NUMBER, vec![0x40, 0x00, 0, 0]),
                peer_attr(peer_addr),
            ],
        );
        assert_eq!(r.code(), None, "channel bind");
        let payload = format!("first channel datagram {round}");
        let mut cd = vec![0x40, 0x00];
        cd.extend((payload.len() as u16).to_be_bytes());
        cd.extend(payload.as_bytes());
        c.send_raw(&cd);
        if !received(&peer, payload.as_bytes()) {
            lost.push(round);
        }
    }
    assert!(
        lost.is_empty(),
        "the first ChannelData after Allocate + ChannelBind was lost in rounds {lost:?} of \
         {ROUNDS}"
    );
}
