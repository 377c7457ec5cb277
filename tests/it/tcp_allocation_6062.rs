//! RFC 6062 TCP allocations against the real server, all on loopback: a client allocates
//! with REQUESTED-TRANSPORT TCP over TCP, Connects to a TCP peer (which sees the relayed
//! address), binds a new data connection with ConnectionBind, and bytes flow both ways; a
//! peer connecting in to the relayed address triggers ConnectionAttempt and its connection
//! is bound the same way; 446 for a second Connect to the same peer, 447 for a peer that
//! refuses; TCP over UDP is 400; closing the control connection closes the data connections.
//! The same over TLS control and data connections.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::stream::{StreamClient, TempDir, TestCert, free_tcp_port, relayed};
use common::{RawClient, TestServer, peer_attr};
use stun::attributes::{ATTR_CONNECTION_ID, ATTR_REQUESTED_TRANSPORT, ATTR_XOR_PEER_ADDRESS};
use stun::message::{
    CLASS_INDICATION, METHOD_ALLOCATE, METHOD_CONNECT, METHOD_CONNECTION_ATTEMPT,
    METHOD_CONNECTION_BIND, METHOD_CREATE_PERMISSION, Message, MessageType,
};
use stun::xoraddr::XorMappedAddress;

fn tcp_transport() -> (stun::attributes::AttrType, Vec<u8>) {
    (ATTR_REQUESTED_TRANSPORT, vec![6, 0, 0, 0])
}

fn connection_id(msg: &Message) -> Vec<u8> {
    msg.get(ATTR_CONNECTION_ID).expect("CONNECTION-ID")
}

/// A new data connection bound to `id`; returns the raw stream after the success response.
fn bind_data(server: SocketAddr, control: &StreamClient, id: &[u8]) -> StreamClient {
    bind_data_on(StreamClient::tcp(server), control, id)
}

fn bind_data_on(mut d: StreamClient, control: &StreamClient, id: &[u8]) -> StreamClient {
    d.nonce = control.nonce.clone();
    let reply = d.request(METHOD_CONNECTION_BIND, &[(ATTR_CONNECTION_ID, id.to_vec())]);
    assert_eq!(reply.code(), None, "ConnectionBind");
    d
}

fn exchange(d: &mut StreamClient, peer: &mut TcpStream, tag: &str) {
    let up = format!("client->peer {tag}");
    d.send_raw(up.as_bytes());
    let mut buf = vec![0u8; up.len()];
    peer.read_exact(&mut buf)
        .expect("the peer receives the raw bytes");
    assert_eq!(buf, up.as_bytes());
    let down = format!("peer->client {tag}, as is");
    peer.write_all(down.as_bytes()).unwrap();
    let mut buf = vec![0u8; down.len()];
    d.s.read_exact(&mut buf)
        .expect("the client receives the raw bytes");
    assert_eq!(buf, down.as_bytes());
}

#[test]
fn tcp_allocation_connect_bind_and_incoming() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.1/32"]);

    // TCP relaying is not offered over UDP.
    let mut udp = RawClient::new(server.addr, "alice", "wonderland");
    assert_eq!(
        udp.request(METHOD_ALLOCATE, &[tcp_transport()]).code(),
        Some(400)
    );

    let mut c = StreamClient::tcp(server.addr);
    let alloc = c.request(METHOD_ALLOCATE, &[tcp_transport()]);
    assert_eq!(alloc.code(), None, "TCP allocation over TCP");
    let relay = relayed(&alloc);

    // Outgoing: Connect to a listening peer.
    let peer_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer_l.local_addr().unwrap();
    let reply = c.request(METHOD_CONNECT, &[peer_attr(peer_addr)]);
    assert_eq!(reply.code(), None, "Connect");
    let id = connection_id(&reply.msg);
    let (mut peer, seen) = peer_l.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(seen, relay, "the peer sees the relayed address");
    assert_eq!(
        c.request(METHOD_CONNECT, &[peer_attr(peer_addr)]).code(),
        Some(446),
        "a second Connect to the same peer"
    );
    let mut d = bind_data(server.addr, &c, &id);
    for i in 0..3 {
        exchange(&mut d, &mut peer, &i.to_string());
    }

    // A peer that refuses: 447.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    assert_eq!(
        c.request(METHOD_CONNECT, &[peer_attr(closed_addr)]).code(),
        Some(447)
    );

    // Incoming: with a permission, a peer connecting in is announced.
    assert_eq!(
        c.request(
            METHOD_CREATE_PERMISSION,
            &[peer_attr("127.0.0.1:1".parse().unwrap())]
        )
        .code(),
        None
    );
    let mut peer2 = TcpStream::connect(relay).unwrap();
    peer2
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let peer2_addr = peer2.local_addr().unwrap();
    let f = c.recv_frame().expect("ConnectionAttempt");
    let mut ind = Message::new();
    ind.unmarshal_binary(&f).unwrap();
    assert_eq!(
        ind.typ,
        MessageType::new(METHOD_CONNECTION_ATTEMPT, CLASS_INDICATION)
    );
    let mut x = XorMappedAddress::default();
    x.get_from_as(&ind, ATTR_XOR_PEER_ADDRESS).unwrap();
    assert_eq!(SocketAddr::new(x.ip, x.port), peer2_addr);
    let id2 = connection_id(&ind);
    assert_ne!(id2, id);
    let mut d2 = bind_data(server.addr, &c, &id2);
    exchange(&mut d2, &mut peer2, "incoming");
    // The first pair still works alongside.
    exchange(&mut d, &mut peer, "again");

    // The control connection closes: the allocation ends, its data connections close.
    drop(c);
    assert!(
        d.closed_within(Duration::from_secs(10)),
        "client data connection closed"
    );
    let mut buf = [0u8; 16];
    assert!(
        matches!(peer.read(&mut buf), Ok(0) | Err(_)),
        "peer data connection closed"
    );
    assert!(d2.closed_within(Duration::from_secs(10)));
}

#[test]
fn tcp_allocation_over_tls() {
    let dir = TempDir::new("6062-tls");
    let cert = TestCert::new(&dir);
    let tls: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let _server = TestServer::start(
        "127.0.0.1",
        &[
            "--allow-peer",
            "127.0.0.1/32",
            "--tls-listen",
            &tls.to_string(),
            "--cert",
            cert.cert.to_str().unwrap(),
            "--key",
            cert.key.to_str().unwrap(),
        ],
    );
    let mut c = StreamClient::tls(tls, cert.client_config(true, &[]));
    let alloc = c.request(METHOD_ALLOCATE, &[tcp_transport()]);
    assert_eq!(alloc.code(), None, "TCP allocation over TLS");
    let relay = relayed(&alloc);
    let peer_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let reply = c.request(METHOD_CONNECT, &[peer_attr(peer_l.local_addr().unwrap())]);
    assert_eq!(reply.code(), None, "Connect");
    let id = connection_id(&reply.msg);
    let (mut peer, seen) = peer_l.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(seen, relay);
    let data = StreamClient::tls(tls, cert.client_config(true, &[]));
    let mut d = bind_data_on(data, &c, &id);
    for i in 0..3 {
        exchange(&mut d, &mut peer, &format!("tls {i}"));
    }
}
