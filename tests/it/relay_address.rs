//! The relayed address comes from the configured port range on the relay IP, and a server
//! behind 1:1 NAT advertises its external address instead of the bound one.

use crate::common;

use common::{RawClient, TestServer, udp_transport};
use stun::attributes::ATTR_XOR_RELAYED_ADDRESS;
use stun::message::METHOD_ALLOCATE;

#[test]
fn relayed_port_is_in_range_and_external_ip_is_advertised() {
    let server = TestServer::start(
        "127.0.0.1",
        &[
            "--min-port",
            "20000",
            "--max-port",
            "20049",
            "--external-ip",
            "198.51.100.77",
        ],
    );
    for _ in 0..5 {
        let mut c = RawClient::new(server.addr, "alice", "wonderland");
        let r = c.request(METHOD_ALLOCATE, &[udp_transport()]);
        assert_eq!(r.code(), None);
        let relayed = r.xor_addrs(ATTR_XOR_RELAYED_ADDRESS);
        assert_eq!(relayed.len(), 1);
        assert_eq!(relayed[0].ip().to_string(), "198.51.100.77");
        assert!(
            (20000..=20049).contains(&relayed[0].port()),
            "{}",
            relayed[0]
        );
        // The socket is really bound on the relay IP with that port: binding it again fails.
        assert!(std::net::UdpSocket::bind(("127.0.0.1", relayed[0].port())).is_err());
    }
}

#[test]
fn port_range_exhaustion_answers_508() {
    let server = TestServer::start("127.0.0.1", &["--min-port", "20100", "--max-port", "20101"]);
    let mut clients = Vec::new();
    let mut codes = Vec::new();
    for _ in 0..3 {
        let mut c = RawClient::new(server.addr, "alice", "wonderland");
        codes.push(c.request(METHOD_ALLOCATE, &[udp_transport()]).code());
        clients.push(c);
    }
    assert_eq!(codes, vec![None, None, Some(508)]);
}
