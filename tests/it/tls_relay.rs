//! TURN over TLS (`turns:`, RFC 8656 §3.1): a `--tls-listen` listener with `--cert`/`--key`
//! serves the whole relay path; ALPN `stun.turn` is negotiated when offered (RFC 7443), a
//! client without ALPN and a TLS 1.2-only client are served too.

use crate::common;

use std::net::SocketAddr;

use common::TestServer;
use common::stream::{
    StreamClient, TempDir, TestCert, build_request, free_tcp_port, relay_paths, tls_connect,
};
use stun::message::METHOD_BINDING;

fn start(cert: &TestCert) -> (TestServer, SocketAddr) {
    let tls: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let server = TestServer::start(
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
    (server, tls)
}

#[test]
fn tls_carries_the_relay_paths_with_alpn() {
    let dir = TempDir::new("tls-relay");
    let cert = TestCert::new(&dir);
    let (_server, tls) = start(&cert);
    let s = tls_connect(tls, cert.client_config(true, &[]));
    assert_eq!(s.conn.alpn_protocol(), Some(&b"stun.turn"[..]));
    assert_eq!(
        s.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let local = s.sock.local_addr().unwrap();
    let mut c = StreamClient::new(s, local);
    relay_paths(&mut c);
}

#[test]
fn tls12_and_no_alpn_are_served() {
    let dir = TempDir::new("tls12");
    let cert = TestCert::new(&dir);
    let (_server, tls) = start(&cert);
    let s = tls_connect(tls, cert.client_config(false, &[&rustls::version::TLS12]));
    assert_eq!(
        s.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(s.conn.alpn_protocol(), None);
    let local = s.sock.local_addr().unwrap();
    let mut c = StreamClient::new(s, local);
    let req = build_request(METHOD_BINDING, &[], None);
    c.send_raw(&req.raw);
    let reply = c
        .recv_response(req.transaction_id)
        .expect("binding over TLS 1.2");
    assert_eq!(common::stream::mapped(&reply), local);
}
