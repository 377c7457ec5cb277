//! `tcp.max-connections-per-ip` counts IPv6 clients by their /64, as every other per-IP
//! limit does: eight addresses of one /64 get no more connections than one address would.
//!
//! Loopback has a single IPv6 address, so the test runs in a network namespace of its own
//! (one thread of the test, and the turnd it starts, moved there with `unshare`), where it
//! puts several addresses of one /64 and one of another /64 on `lo`. The namespace goes away
//! with the thread and the server. Needs root (CAP_SYS_ADMIN), as the CI runs.

use crate::common;

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::TestServer;
use common::stream::{StreamClient, TempDir, build_request};
use socket2::{Domain, Protocol, Socket, Type};
use stun::message::METHOD_BINDING;

/// The /64 the clients share; the server listens on `::1` of it.
const PREFIX: &str = "fd00:7e57:0:1";
/// Another /64, for one client that must not count with the others.
const OTHER: &str = "fd00:7e57:0:2::1";

/// Runs `f` on a thread moved into a fresh network namespace with `lo` up and `addrs` on it.
/// Processes the thread starts (turnd) live in that namespace too.
fn in_netns<T: Send + 'static>(addrs: Vec<String>, f: impl FnOnce() -> T + Send + 'static) -> T {
    let t = std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET only changes this thread's network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {} (this test needs root)",
            std::io::Error::last_os_error()
        );
        ip(&["link", "set", "lo", "up"]);
        for a in &addrs {
            ip(&["-6", "addr", "add", a, "dev", "lo", "nodad"]);
        }
        f()
    });
    match t.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip(8)");
    assert!(st.success(), "ip {args:?} failed");
}

/// A TCP connection to `server` from `from` (port chosen by the kernel).
fn connect_from(from: IpAddr, server: SocketAddr) -> StreamClient {
    let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)).unwrap();
    s.bind(&SocketAddr::new(from, 0).into()).unwrap();
    s.connect(&server.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    let local = s.local_addr().unwrap();
    StreamClient::new(s, local)
}

fn works(c: &mut StreamClient) -> bool {
    let req = build_request(METHOD_BINDING, &[], None);
    c.send_raw(&req.raw);
    c.recv_response(req.transaction_id).is_some()
}

#[test]
fn per_ip_cap_counts_an_ipv6_64_as_one_client() {
    let mut addrs: Vec<String> = (1..=9).map(|i| format!("{PREFIX}::{i}/64")).collect();
    addrs.push(format!("{OTHER}/64"));
    in_netns(addrs, || {
        let dir = TempDir::new("limits-v6");
        let config = dir.write(
            "turnd.toml",
            "[tcp]\nmax-connections-per-ip = 5\nmax-connections = 0\n",
        );
        let server = TestServer::start(
            &format!("{PREFIX}::1"),
            &["--config", config.to_str().unwrap()],
        );
        // Eight connections, each from its own address of the /64: the first five are
        // served, the rest closed.
        let mut served = Vec::new();
        for i in 2..=9 {
            let from: IpAddr = format!("{PREFIX}::{i}").parse().unwrap();
            let mut c = connect_from(from, server.addr);
            if served.len() < 5 {
                assert!(works(&mut c), "connection {} from {from} is served", i - 1);
                served.push(c);
            } else {
                assert!(
                    c.closed_within(Duration::from_secs(10)),
                    "connection {} from {from} (same /64 as five open ones) is closed",
                    i - 1
                );
            }
        }
        // Another /64 is another client.
        let mut other = connect_from(OTHER.parse().unwrap(), server.addr);
        assert!(works(&mut other), "a client of another /64 is served");
        for c in served.iter_mut() {
            assert!(works(c), "the connections under the cap are unaffected");
        }
        drop(server);
    });
}
