//! Connection caps: `tcp.max-connections-per-ip` and `tcp.max-connections` refuse (close)
//! connections over the cap, and a closed connection frees its slot.

use crate::common;

use std::time::{Duration, Instant};

use common::stream::{StreamClient, TempDir, build_request, start_with_config};
use stun::message::METHOD_BINDING;

fn works(c: &mut StreamClient) -> bool {
    let req = build_request(METHOD_BINDING, &[], None);
    c.send_raw(&req.raw);
    c.recv_response(req.transaction_id).is_some()
}

/// Opens connections until one works, for up to 10 s (a freed slot is released
/// asynchronously).
fn eventually_works(addr: std::net::SocketAddr) -> StreamClient {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = StreamClient::tcp(addr);
        if works(&mut c) {
            return c;
        }
        assert!(Instant::now() < deadline, "no slot was freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn check_cap(config: &str, cap: usize) {
    let dir = TempDir::new("limits");
    let server = start_with_config(&dir, config, &[]);
    let mut open: Vec<StreamClient> = (0..cap).map(|_| StreamClient::tcp(server.addr)).collect();
    for c in open.iter_mut() {
        assert!(works(c), "connections under the cap are served");
    }
    let mut over = StreamClient::tcp(server.addr);
    assert!(
        over.closed_within(Duration::from_secs(10)),
        "the connection over the cap is closed"
    );
    open.remove(0);
    let _again = eventually_works(server.addr);
    for c in open.iter_mut() {
        assert!(works(c), "the others are unaffected");
    }
}

#[test]
fn per_ip_cap() {
    check_cap(
        "[tcp]\nmax-connections-per-ip = 2\nmax-connections = 0\n",
        2,
    );
}

#[test]
fn total_cap() {
    check_cap(
        "[tcp]\nmax-connections = 3\nmax-connections-per-ip = 0\n",
        3,
    );
}
