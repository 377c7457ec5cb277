//! A listen address another process already serves stops the start (non-zero exit, the
//! address named on stderr) instead of joining that process's SO_REUSEPORT group, where the
//! kernel would split the clients between the two: a second turnd on the UDP/TCP or the TLS
//! address of a running one, a plain UDP socket, and SO_REUSEPORT sockets of another program.
//! Listen addresses with port 0 still get a free port each.

use crate::common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::stream::{StreamClient, TempDir, TestCert, build_request, free_tcp_port};
use common::{TestServer, binding_request, free_udp_port, run_turnd};
use socket2::{Domain, Protocol, Socket, Type};
use stun::message::METHOD_BINDING;

/// Hang guard: a turnd that does not exit by then has started (the failure under test).
const LIMIT: Duration = Duration::from_secs(20);

/// Runs a turnd that should refuse to start because `addr` (of `transport`) is taken; returns
/// its stderr.
fn refused(args: &[&str], transport: &str, addr: &str) -> String {
    let mut all = vec!["--relay-ip", "127.0.0.1", "--user", "alice:wonderland"];
    all.extend_from_slice(args);
    let (code, _, stderr) = run_turnd(&all, LIMIT);
    let code = code.unwrap_or_else(|| {
        panic!("turnd {args:?} started although {transport} {addr} is taken: {stderr}")
    });
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!("{transport} {addr}")) && stderr.contains("in use"),
        "the error names {transport} {addr}: {stderr}"
    );
    stderr
}

/// Whether a turnd at `addr` answers a Binding over UDP from a fresh socket.
fn answers_udp(addr: SocketAddr) -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    for _ in 0..4 {
        s.send_to(&binding_request(), addr).unwrap();
        let mut buf = [0u8; 1500];
        if let Ok((n, _)) = s.recv_from(&mut buf)
            && n >= 20
            && buf[..2] == [0x01, 0x01]
        {
            return true;
        }
    }
    false
}

fn answers_tcp(addr: SocketAddr) -> bool {
    let mut c = StreamClient::tcp(addr);
    let req = build_request(METHOD_BINDING, &[], None);
    c.send_raw(&req.raw);
    c.recv_response(req.transaction_id).is_some()
}

#[test]
fn a_second_turnd_on_a_served_address_refuses_to_start() {
    let dir = TempDir::new("in-use");
    let cert = TestCert::new(&dir);
    let (c, k) = (cert.cert.to_str().unwrap(), cert.key.to_str().unwrap());
    let tls = format!("127.0.0.1:{}", free_tcp_port());
    let first = TestServer::start(
        "127.0.0.1",
        &["--tls-listen", &tls, "--cert", c, "--key", k],
    );
    let addr = first.addr.to_string();

    // Its UDP (and TCP) address.
    refused(&["--listen", &addr], "udp", &addr);
    // Another UDP/TCP address, but its TLS address.
    let other = format!("127.0.0.1:{}", free_udp_port("127.0.0.1"));
    refused(
        &[
            "--listen",
            &other,
            "--tls-listen",
            &tls,
            "--cert",
            c,
            "--key",
            k,
        ],
        "tls",
        &tls,
    );

    // The first one still has every client to itself.
    for _ in 0..20 {
        assert!(answers_udp(first.addr), "the first turnd answers over UDP");
    }
    assert!(answers_tcp(first.addr), "and over TCP");
    let tls_addr: SocketAddr = tls.parse().unwrap();
    let s = StreamClient::tls(tls_addr, cert.client_config(true, &[]));
    drop(s);
}

#[test]
fn a_foreign_socket_on_the_address_stops_the_start() {
    // A plain UDP socket.
    let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
    let held = plain.local_addr().unwrap().to_string();
    refused(&["--listen", &held], "udp", &held);
    drop(plain);

    // SO_REUSEPORT sockets of another server of the same user (as coturn binds its
    // listeners): UDP, then TCP on the port of a free UDP address.
    let reuseport = |ty: Type, proto: Protocol, port: u16| {
        let s = Socket::new(Domain::IPV4, ty, Some(proto)).unwrap();
        s.set_reuse_port(true).unwrap();
        let a: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        s.bind(&a.into()).unwrap();
        s
    };
    let udp = reuseport(Type::DGRAM, Protocol::UDP, 0);
    let held = udp.local_addr().unwrap().as_socket().unwrap().to_string();
    refused(&["--listen", &held], "udp", &held);
    drop(udp);

    let port = free_udp_port("127.0.0.1");
    let tcp = reuseport(Type::STREAM, Protocol::TCP, port);
    tcp.listen(16).unwrap();
    let held = format!("127.0.0.1:{port}");
    refused(&["--listen", &held], "tcp", &held);
}

/// Listen addresses with port 0 each get a free port (UDP and TCP on one, TLS on another),
/// which the log names: the check for a taken address does not get in the way.
#[test]
fn port_zero_listen_addresses_still_work() {
    let dir = TempDir::new("port-zero");
    let cert = TestCert::new(&dir);
    let config = dir.write(
        "turnd.toml",
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\n\
             [relay]\nips = [\"127.0.0.1\"]\n\
             [auth]\nusers = [{{ name = \"alice\", password = \"wonderland\" }}]\n\
             [tls]\nlisten = [\"127.0.0.1:0\"]\ncert = {:?}\nkey = {:?}\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n",
            cert.cert, cert.key
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnd"))
        .args(["--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // The "listening" lines, read on a thread so a silent server cannot hang the test.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let f = &v["fields"];
            if f["message"] == "listening"
                && let (Some(l), Some(t)) = (f["listen"].as_str(), f["transport"].as_str())
            {
                let _ = tx.send((t.to_string(), l.parse::<SocketAddr>().unwrap()));
            }
        }
    });
    let mut found = std::collections::HashMap::new();
    let deadline = Instant::now() + LIMIT;
    while found.len() < 3 && Instant::now() < deadline {
        if let Ok((t, a)) = rx.recv_timeout(Duration::from_millis(100)) {
            found.insert(t, a);
        }
    }
    let result = std::panic::catch_unwind(|| {
        assert_eq!(found.len(), 3, "udp, tcp and tls listening: {found:?}");
        let (udp, tcp, tls) = (&found["udp"], &found["tcp"], &found["tls"]);
        assert_ne!(udp.port(), 0);
        assert_eq!(udp, tcp, "TCP on the UDP port");
        assert_ne!(tls.port(), 0);
        assert!(answers_udp(*udp), "UDP on {udp}");
        assert!(answers_tcp(*tcp), "TCP on {tcp}");
        assert!(TcpStream::connect(tls).is_ok(), "TLS on {tls}");
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
