//! Stream timeouts: a connection that never allocates is closed after `tcp.auth-timeout`,
//! one with an allocation is not; a silent connection is closed after `tcp.idle-timeout`;
//! a TLS connection that never completes its handshake is closed after
//! `tls.handshake-timeout`. Waits are hang guards, never assertions on how long it took.

use crate::common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::stream::{
    StreamClient, TempDir, TestCert, build_request, free_tcp_port, start_with_config,
};
use common::udp_transport;
use stun::attributes::ATTR_LIFETIME;
use stun::message::{METHOD_ALLOCATE, METHOD_BINDING, METHOD_REFRESH};

#[test]
fn unauthenticated_connections_are_closed_authenticated_ones_kept() {
    let dir = TempDir::new("auth-timeout");
    let server = start_with_config(&dir, "[tcp]\nauth-timeout = 1\n", &[]);
    let mut idle = StreamClient::tcp(server.addr);
    let req = build_request(METHOD_BINDING, &[], None);
    idle.send_raw(&req.raw);
    assert!(
        idle.recv_response(req.transaction_id).is_some(),
        "served before the timeout"
    );

    let mut authed = StreamClient::tcp(server.addr);
    assert_eq!(
        authed.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        None
    );

    assert!(
        idle.closed_within(Duration::from_secs(15)),
        "closed: never authenticated"
    );
    // Past the auth timeout, the connection with an allocation is still served.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        authed
            .request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0x02, 0x58])])
            .code(),
        None
    );
}

#[test]
fn idle_and_handshake_timeouts_close() {
    let dir = TempDir::new("idle-timeout");
    let cert = TestCert::new(&dir);
    let tls: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let config = format!(
        "[tcp]\nidle-timeout = 1\n[tls]\nhandshake-timeout = 1\nlisten = [\"{tls}\"]\ncert = {:?}\nkey = {:?}\n",
        cert.cert, cert.key
    );
    let server = start_with_config(&dir, &config, &[]);
    let mut c = StreamClient::tcp(server.addr);
    assert_eq!(c.request(METHOD_ALLOCATE, &[udp_transport()]).code(), None);
    assert!(
        c.closed_within(Duration::from_secs(15)),
        "closed after going idle"
    );

    // A TCP connection to the TLS port that never sends a ClientHello.
    let raw = TcpStream::connect(tls).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let local = raw.local_addr().unwrap();
    let mut silent = StreamClient::new(raw, local);
    assert!(
        silent.closed_within(Duration::from_secs(15)),
        "closed: no TLS handshake"
    );
}
