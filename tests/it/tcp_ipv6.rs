//! TURN over TCP on an IPv6 listener: the `--listen [::1]:PORT` address takes TCP too, and
//! an IPv6 allocation over it relays from an IPv6 UDP peer.

use crate::common;

use common::stream::{StreamClient, mapped, relayed};
use common::{TestServer, parse_data_indication, peer_attr, peer_socket, udp_transport};
use stun::attributes::ATTR_REQUESTED_ADDRESS_FAMILY;
use stun::message::{METHOD_ALLOCATE, METHOD_CREATE_PERMISSION};

#[test]
fn tcp_over_ipv6() {
    let server = TestServer::start("::1", &["--allow-peer", "::1/128"]);
    let mut c = StreamClient::tcp(server.addr);
    let alloc = c.request(
        METHOD_ALLOCATE,
        &[
            udp_transport(),
            (ATTR_REQUESTED_ADDRESS_FAMILY, vec![0x02, 0, 0, 0]),
        ],
    );
    assert_eq!(alloc.code(), None);
    assert_eq!(mapped(&alloc), c.local);
    let relay = relayed(&alloc);
    assert!(relay.is_ipv6());
    let peer = peer_socket("::1");
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(
        c.request(METHOD_CREATE_PERMISSION, &[peer_attr(peer_addr)])
            .code(),
        None
    );
    peer.send_to(b"over v6", relay).unwrap();
    let f = c.recv_frame().expect("Data indication");
    assert_eq!(
        parse_data_indication(&f),
        Some((peer_addr, b"over v6".to_vec()))
    );
}
