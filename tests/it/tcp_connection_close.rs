//! An allocation made over TCP is bound to its connection (RFC 8656 §3.1): closing the
//! connection ends the allocation, so with `--total-quota 1` a new connection can allocate
//! again, and the relay port is released.

use crate::common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::stream::{StreamClient, relayed};
use common::{TestServer, udp_transport};
use stun::message::METHOD_ALLOCATE;

#[test]
fn closing_the_connection_ends_its_allocation() {
    let server = TestServer::start("127.0.0.1", &["--total-quota", "1"]);
    let mut a = StreamClient::tcp(server.addr);
    let reply = a.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(reply.code(), None);
    let relay = relayed(&reply);
    assert!(UdpSocket::bind(relay).is_err(), "the relay port is held");

    // While A's allocation lives, the quota is full.
    let mut b = StreamClient::tcp(server.addr);
    assert_eq!(
        b.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        Some(508)
    );

    drop(a);
    // The close reaches the server asynchronously; poll (hang guard 10 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut freed = false;
    while Instant::now() < deadline {
        if UdpSocket::bind(relay).is_ok() {
            freed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        freed,
        "the relay socket of the closed connection's allocation is closed"
    );
    let mut c = StreamClient::tcp(server.addr);
    assert_eq!(
        c.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        None,
        "the closed connection's allocation no longer counts against the quota"
    );
}
