//! Several relay addresses of one family (`relay.ips`, coturn's repeated `relay-ip`): each
//! has the whole port range, so one node holds more allocations than one range has ports;
//! new allocations spread over the addresses, and a relay on the second address carries
//! data both ways.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::common::{
    RawClient, TestServer, allocate_same_family, peer_attr, peer_socket, recv_data_indication,
    send_indication, udp_transport,
};
use stun::message::{METHOD_ALLOCATE, METHOD_CREATE_PERMISSION};

/// Ports per address: small, so the test fills both ranges. 127.0.0.3 and .4, where no
/// other test binds relay ports.
const PORTS: u16 = 6;

#[test]
fn two_relay_addresses_double_the_allocations_and_both_relay() {
    let min = 20_000 + (std::process::id() % 150) as u16 * PORTS;
    let (min_s, max_s) = (min.to_string(), (min + PORTS - 1).to_string());
    let server = TestServer::start(
        "127.0.0.3",
        &[
            "--relay-ip",
            "127.0.0.3",
            "--relay-ip",
            "127.0.0.4",
            "--min-port",
            &min_s,
            "--max-port",
            &max_s,
            "--allow-peer",
            "127.0.0.0/8",
        ],
    );
    let mut clients = Vec::new();
    let mut per_ip: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for _ in 0..2 * PORTS {
        let mut c = RawClient::new(server.addr, "alice", "wonderland");
        let relayed = allocate_same_family(&mut c);
        *per_ip.entry(relayed.ip()).or_default() += 1;
        clients.push((c, relayed));
    }
    let want: BTreeMap<IpAddr, usize> = [
        ("127.0.0.3".parse().unwrap(), PORTS as usize),
        ("127.0.0.4".parse().unwrap(), PORTS as usize),
    ]
    .into();
    assert_eq!(per_ip, want, "every port of both addresses");
    let mut more = RawClient::new(server.addr, "alice", "wonderland");
    let r = more.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(r.code(), Some(508), "both ranges full");

    // A relay on the second address, both ways.
    let (c, relayed) = clients
        .iter_mut()
        .find(|(_, r)| r.ip() == "127.0.0.4".parse::<IpAddr>().unwrap())
        .unwrap();
    let peer = peer_socket("127.0.0.1");
    let p: SocketAddr = peer.local_addr().unwrap();
    assert_eq!(
        c.request(METHOD_CREATE_PERMISSION, &[peer_attr(p)]).code(),
        None
    );
    c.send_raw(&send_indication(p, b"via .4"));
    let mut buf = [0u8; 64];
    let (n, from) = peer.recv_from(&mut buf).expect("the peer gets it");
    assert_eq!((&buf[..n], from), (&b"via .4"[..], *relayed));
    peer.send_to(b"back", *relayed).unwrap();
    let (from, data) = recv_data_indication(c).expect("a Data indication");
    assert_eq!((from, data.as_slice()), (p, &b"back"[..]));
}
