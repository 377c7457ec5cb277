//! Stalled admin connections cannot lock others out: with 200 connections open that send
//! nothing or part of a request head and then stall (far over `admin.max-connections`, 64),
//! `/health` and `/metrics` are answered while the newest stalled connections are still open
//! and unanswered, i.e. before any connection deadline could have freed a slot. Twice, to show
//! it holds again.

use crate::admin_http;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

use admin_http::{TOKEN, http, start_with_admin};

const STALLED: usize = 200;

/// `n` connections to the admin listener: half send nothing, half part of a request head.
fn stall(admin: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect(admin).unwrap();
            if i % 2 == 1 {
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
            }
            s
        })
        .collect()
}

/// Open and not answered: nothing to read yet, and no EOF or reset.
fn still_waiting(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let r = (&*s).read(&mut buf);
    s.set_nonblocking(false).unwrap();
    matches!(r, Err(e) if e.kind() == ErrorKind::WouldBlock)
}

#[test]
fn stalled_connections_do_not_lock_out_health_and_metrics() {
    let (_server, admin) = start_with_admin(&[]);
    for round in 0..2 {
        let stalled = stall(admin, STALLED);
        let (status, body) = http(admin, "GET", "/health", Some(TOKEN));
        assert_eq!(status, 200, "round {round}: /health: {body}");
        let (status, body) = http(admin, "GET", "/metrics", Some(TOKEN));
        assert_eq!(status, 200, "round {round}: /metrics");
        assert!(body.contains("turnd_"), "round {round}: metrics body");
        // The answers came while the newest stalled connections still hold their slots:
        // not from a deadline that closed them.
        let newest = stalled.last().unwrap();
        assert!(
            still_waiting(newest),
            "round {round}: the newest stalled connection is still open and unanswered"
        );
        drop(stalled);
    }
}
