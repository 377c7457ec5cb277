//! PROXY protocol v2 (`tcp.proxy-protocol = true`): the address in the header is the client
//! of the 5-tuple (XOR-MAPPED-ADDRESS shows it) over TCP and over TLS; a connection without
//! the header is closed.

use crate::common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use common::stream::{
    StreamClient, TempDir, TestCert, build_request, free_tcp_port, mapped, start_with_config,
    tcp_connect,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use stun::message::METHOD_BINDING;
use turnd::net::proxy;

#[test]
fn proxy_header_sets_the_client_address() {
    let dir = TempDir::new("proxy");
    let cert = TestCert::new(&dir);
    let tls: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let config = format!(
        "[tcp]\nproxy-protocol = true\n[tls]\nlisten = [\"{tls}\"]\ncert = {:?}\nkey = {:?}\n",
        cert.cert, cert.key
    );
    let server = start_with_config(&dir, &config, &[]);

    // Plain TCP.
    let real: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let mut s = tcp_connect(server.addr);
    s.write_all(&proxy::encode(real, server.addr)).unwrap();
    let local = s.local_addr().unwrap();
    let mut c = StreamClient::new(s, local);
    let req = build_request(METHOD_BINDING, &[], None);
    c.send_raw(&req.raw);
    let reply = c
        .recv_response(req.transaction_id)
        .expect("binding response");
    assert_eq!(mapped(&reply), real);

    // TLS: the header comes before the ClientHello.
    let real6: SocketAddr = "[2001:db8::7]:41000".parse().unwrap();
    let mut s = tcp_connect(tls);
    s.write_all(&proxy::encode(real6, "[2001:db8::1]:5349".parse().unwrap()))
        .unwrap();
    let conn = ClientConnection::new(
        cert.client_config(true, &[]),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut t = StreamOwned::new(conn, s);
    while t.conn.is_handshaking() {
        t.conn.complete_io(&mut t.sock).unwrap();
    }
    let local = t.sock.local_addr().unwrap();
    let mut c = StreamClient::new(t, local);
    let req = build_request(METHOD_BINDING, &[], None);
    c.send_raw(&req.raw);
    let reply = c
        .recv_response(req.transaction_id)
        .expect("binding response over TLS");
    assert_eq!(mapped(&reply), real6);

    // No header: closed.
    let mut bare = StreamClient::tcp(server.addr);
    bare.send_raw(&build_request(METHOD_BINDING, &[], None).raw);
    assert!(bare.closed_within(Duration::from_secs(15)));
}
