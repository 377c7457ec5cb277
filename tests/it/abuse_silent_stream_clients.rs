//! Hostile TCP/TLS clients never affect other sessions: while connections that connect and
//! go silent, stop after part of a STUN header, or stop in the middle of a TLS ClientHello
//! pile up, a legitimate allocation over TCP relays every echo round on its first try; each
//! of those connections is then closed by the server's timeouts (`tcp.auth-timeout`,
//! `tls.handshake-timeout`) without the client doing anything, and relaying goes on.
//!
//! And a flood of connections from one IP stops at `tcp.max-connections-per-ip` (the extra
//! ones are closed at once, even on a TLS/TCP mux port where nothing was sent yet), while a
//! client from another IP still connects and allocates.
//!
//! Sources are spread over 127.0.0.0/8; every wait is a hang guard, never a measurement.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::stream::{
    StreamClient, TempDir, TestCert, channel_data_padded, free_tcp_port, start_with_config,
};
use common::{binding_request, peer_attr, peer_socket, udp_transport};
use socket2::{Domain, Protocol, Socket, Type};
use stun::attributes::ATTR_CHANNEL_NUMBER;
use stun::message::{METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION};

/// A TCP connection to `to` from `from_ip` (any port).
fn connect_from(from_ip: &str, to: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    let from: SocketAddr = format!("{from_ip}:0").parse().unwrap();
    s.bind(&from.into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_nodelay(true).unwrap();
    s
}

/// Whether the server has closed `s` (EOF or reset), without waiting if it has not.
fn is_closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Waits (hang guard `within`) until at least `n` of `conns` are closed by the server;
/// returns which are.
fn wait_closed(conns: &mut [TcpStream], n: usize, within: Duration) -> Vec<bool> {
    let mut closed = vec![false; conns.len()];
    let deadline = Instant::now() + within;
    while closed.iter().filter(|c| **c).count() < n && Instant::now() < deadline {
        for (i, c) in conns.iter_mut().enumerate() {
            if !closed[i] && is_closed(c) {
                closed[i] = true;
            }
        }
    }
    closed
}

/// A legitimate TCP client with a UDP allocation and a channel to a loopback peer.
struct Echo {
    c: StreamClient,
    peer: std::net::UdpSocket,
    relay: SocketAddr,
    rounds: usize,
}

impl Echo {
    fn new(server: SocketAddr) -> Echo {
        let mut c = StreamClient::tcp(server);
        let alloc = c.request(METHOD_ALLOCATE, &[udp_transport()]);
        assert_eq!(alloc.code(), None, "legitimate allocation");
        let relay = common::stream::relayed(&alloc);
        let peer = peer_socket("127.0.0.1");
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let pa = peer.local_addr().unwrap();
        assert_eq!(
            c.request(METHOD_CREATE_PERMISSION, &[peer_attr(pa)]).code(),
            None
        );
        let reply = c.request(
            METHOD_CHANNEL_BIND,
            &[(ATTR_CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0]), peer_attr(pa)],
        );
        assert_eq!(reply.code(), None, "channel bind");
        Echo {
            c,
            peer,
            relay,
            rounds: 0,
        }
    }

    /// One round both ways; every packet must arrive on the first try.
    fn round(&mut self) {
        let n = self.rounds;
        self.rounds += 1;
        let up = format!("up {n}");
        self.c.send_raw(&channel_data_padded(0x4001, up.as_bytes()));
        let mut buf = [0u8; 1500];
        let (len, from) = self.peer.recv_from(&mut buf).expect("peer receives");
        assert_eq!(&buf[..len], up.as_bytes(), "round {n} to the peer");
        assert_eq!(from, self.relay);
        let down = format!("down {n}");
        self.peer.send_to(down.as_bytes(), self.relay).unwrap();
        let f = self.c.recv_frame().expect("client receives ChannelData");
        assert_eq!(&f[..2], &[0x40, 0x01]);
        let l = u16::from_be_bytes([f[2], f[3]]) as usize;
        assert_eq!(&f[4..4 + l], down.as_bytes(), "round {n} to the client");
    }
}

#[test]
fn silent_partial_and_stalled_tls_clients_do_not_affect_others_and_are_closed() {
    let dir = TempDir::new("silent-clients");
    let cert = TestCert::new(&dir);
    let tls: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let config = format!(
        "[tcp]\nauth-timeout = 2\n[tls]\nhandshake-timeout = 2\nlisten = [\"{tls}\"]\ncert = {:?}\nkey = {:?}\n",
        cert.cert, cert.key
    );
    let server = start_with_config(&dir, &config, &["--allow-peer", "127.0.0.1/32"]);
    let mut echo = Echo::new(server.addr);

    let mut hostile = Vec::new();
    for i in 0..10 {
        // Connects and says nothing.
        hostile.push(connect_from("127.0.0.3", server.addr));
        echo.round();
        // Ten bytes of a 20-byte STUN header, then nothing.
        let mut partial = connect_from("127.0.0.3", server.addr);
        let b = binding_request();
        partial.write_all(&b[..10]).unwrap();
        hostile.push(partial);
        echo.round();
        // A TLS record header announcing a 512-byte ClientHello, and a few bytes of it.
        let mut tls_stall = connect_from("127.0.0.3", tls);
        tls_stall
            .write_all(&[
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03,
            ])
            .unwrap();
        hostile.push(tls_stall);
        echo.round();
        if i % 3 == 0 {
            // A plain-TCP connection to the TLS port that never starts its handshake.
            hostile.push(connect_from("127.0.0.3", tls));
        }
    }
    let total = hostile.len();
    // Every hostile connection is closed by the server on its own: the timeouts fire.
    let closed = wait_closed(&mut hostile, total, Duration::from_secs(60));
    assert!(
        closed.iter().all(|c| *c),
        "not closed by the server: {:?}",
        closed
            .iter()
            .enumerate()
            .filter(|(_, c)| !**c)
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    );
    // The legitimate session outlived them all and still relays with no loss.
    for _ in 0..30 {
        echo.round();
    }
    assert_eq!(echo.rounds, 60);
}

#[test]
fn per_ip_cap_stops_a_flood_while_another_ip_connects() {
    let dir = TempDir::new("per-ip-flood");
    let cert = TestCert::new(&dir);
    // A TLS/TCP mux port with long timeouts: the flood's connections send nothing, so only
    // the per-IP cap (counted from accept, before the first byte) can close them.
    let config = format!(
        "[tcp]\nmax-connections-per-ip = 4\nauth-timeout = 300\n[tls]\nmux = true\nhandshake-timeout = 300\ncert = {:?}\nkey = {:?}\n",
        cert.cert, cert.key
    );
    let server = start_with_config(&dir, &config, &["--allow-peer", "127.0.0.1/32"]);
    let mut flood: Vec<TcpStream> = (0..12)
        .map(|_| connect_from("127.0.0.3", server.addr))
        .collect();
    let closed = wait_closed(&mut flood, 8, Duration::from_secs(60));
    assert_eq!(
        closed.iter().filter(|c| **c).count(),
        8,
        "all but tcp.max-connections-per-ip closed"
    );
    // The four that were kept are served (so they were the ones counted).
    let mut kept: Vec<TcpStream> = flood
        .into_iter()
        .zip(&closed)
        .filter(|(_, c)| !**c)
        .map(|(s, _)| s)
        .collect();
    for s in &mut kept {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&binding_request()).unwrap();
        let mut head = [0u8; 20];
        s.read_exact(&mut head)
            .expect("a kept connection is served");
        assert_eq!(&head[..2], &[0x01, 0x01], "Binding success");
    }
    // Another IP is not affected: it connects and allocates.
    let other = connect_from("127.0.0.1", server.addr);
    other
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let local = other.local_addr().unwrap();
    let mut c = StreamClient::new(other, local);
    assert_eq!(
        c.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        None,
        "another IP allocates while the first is at its cap"
    );
    // Closing one of the four frees its slot for the same IP.
    drop(kept.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    let served = loop {
        let mut s = connect_from("127.0.0.3", server.addr);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let ok = s.write_all(&binding_request()).is_ok() && {
            let mut head = [0u8; 20];
            s.read_exact(&mut head).is_ok()
        };
        if ok || Instant::now() > deadline {
            break ok;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(served, "a freed slot is usable again");
}
