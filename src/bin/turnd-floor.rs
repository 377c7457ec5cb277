//! `turnd-floor`: the floor of the benchmark. A forwarder that does only the system calls
//! the TURN traffic pattern cannot avoid, so a benchmark run through it shows the kernel's
//! own cost (and the load tool's ceiling).
//!
//! It answers just enough of TURN for `turnd-load` to set up (Allocate, Refresh,
//! CreatePermission, ChannelBind: success, no authentication, no permission checks, no
//! lifetimes), and relays: ChannelData or a Send indication in on the listener, one
//! `sendto` of the payload out of the allocation's own socket; a datagram in on that socket,
//! one `sendto` of ChannelData (or a Data indication) to the client from the listener. One
//! thread per core, each with its own SO_REUSEPORT listener, epoll and allocations, as in
//! turnd. IPv4 loopback only; NOT a TURN server: it relays for anyone who asks.

#[path = "turnd-load/sys.rs"]
mod sys;

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use rustc_hash::FxHashMap;
use socket2::{Domain, Protocol, Socket, Type};
use turnd::stun::{Class, MAGIC_COOKIE, Message, MessageWriter, attr, channel_data, method};

use sys::{Epoll, event_buffer};

/// Room in front of a payload read from a peer for the Data indication header: STUN header
/// (20), XOR-PEER-ADDRESS for IPv4 (12), DATA's type and length (4).
const HEADROOM: usize = 36;
const LISTENER: u64 = u64::MAX;
/// Most datagrams read from one socket per wakeup.
const BATCH: usize = 64;

#[derive(Debug, Parser)]
#[command(
    name = "turnd-floor",
    version,
    about = "Minimal UDP forwarder for the TURN traffic pattern (benchmark floor; no auth, \
             no checks: loopback only)"
)]
struct Args {
    /// Listen address (IPv4 loopback).
    #[arg(long, default_value = "127.0.0.1:3479")]
    listen: SocketAddrV4,
    /// Worker threads, 0 for one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Exit after this many seconds (a guard; the benchmark script ends it by pid first).
    #[arg(long, default_value_t = 3600)]
    max_seconds: u64,
}

struct Alloc {
    sock: UdpSocket,
    client: SocketAddr,
    relay: SocketAddr,
    peer_by_channel: FxHashMap<u16, SocketAddr>,
    channel_by_peer: FxHashMap<SocketAddr, u16>,
}

struct Worker {
    ep: Epoll,
    listener: UdpSocket,
    relay_ip: Ipv4Addr,
    allocs: Vec<Option<Alloc>>,
    free: Vec<usize>,
    by_client: FxHashMap<SocketAddr, usize>,
    out: Vec<u8>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        eprintln!("turnd-floor: --listen must be a loopback address");
        return ExitCode::from(2);
    }
    sys::raise_nofile_limit();
    let threads = if args.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        args.threads
    };
    let mut listeners = Vec::new();
    for _ in 0..threads {
        match listener(args.listen) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("turnd-floor: bind {}: {e}", args.listen);
                return ExitCode::from(1);
            }
        }
    }
    eprintln!(
        "turnd-floor: listening on {} with {threads} threads",
        args.listen
    );
    let until = Instant::now() + Duration::from_secs(args.max_seconds);
    let relay_ip = *args.listen.ip();
    let handles: Vec<_> = listeners
        .into_iter()
        .map(|l| std::thread::spawn(move || worker(l, relay_ip, until)))
        .collect();
    for h in handles {
        let _ = h.join();
    }
    ExitCode::SUCCESS
}

fn listener(addr: SocketAddrV4) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&SocketAddr::V4(addr).into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

fn worker(listener: UdpSocket, relay_ip: Ipv4Addr, until: Instant) {
    let ep = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("turnd-floor: epoll: {e}");
            return;
        }
    };
    if let Err(e) = ep.add(&listener, LISTENER) {
        eprintln!("turnd-floor: epoll_ctl: {e}");
        return;
    }
    let mut w = Worker {
        ep,
        listener,
        relay_ip,
        allocs: Vec::new(),
        free: Vec::new(),
        by_client: FxHashMap::default(),
        out: Vec::with_capacity(256),
    };
    let mut events = event_buffer(256);
    let mut ready = Vec::with_capacity(256);
    let mut buf = vec![0u8; HEADROOM + 65536 + 4];
    while Instant::now() < until {
        w.ep.wait(&mut events, Duration::from_millis(100), &mut ready);
        for &token in &ready {
            if token == LISTENER {
                w.drain_listener(&mut buf);
            } else {
                w.drain_relay(token as usize, &mut buf);
            }
        }
    }
}

impl Worker {
    fn drain_listener(&mut self, buf: &mut [u8]) {
        for _ in 0..BATCH {
            let (n, from) = match self.listener.recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            let Some(datagram) = buf.get(..n) else {
                continue;
            };
            if datagram
                .first()
                .is_some_and(|&b| channel_data::is_channel_data(b))
            {
                let Some((ch, data)) = channel_data::parse(datagram) else {
                    continue;
                };
                if let Some(a) = self.by_client.get(&from).and_then(|&i| self.alloc(i))
                    && let Some(peer) = a.peer_by_channel.get(&ch)
                {
                    let _ = a.sock.send_to(data, peer);
                }
                continue;
            }
            if let Ok(msg) = Message::parse(datagram) {
                self.handle_stun(from, &msg);
            }
        }
    }

    fn alloc(&self, i: usize) -> Option<&Alloc> {
        self.allocs.get(i).and_then(|a| a.as_ref())
    }

    fn handle_stun(&mut self, from: SocketAddr, msg: &Message) {
        let peer = match msg.xor_address(attr::XOR_PEER_ADDRESS) {
            Some(Ok(p)) => Some(p),
            _ => None,
        };
        match (msg.method(), msg.class()) {
            (method::SEND, Class::Indication) => {
                if let (Some(a), Some(peer), Some(data)) = (
                    self.by_client.get(&from).and_then(|&i| self.alloc(i)),
                    peer,
                    msg.get(attr::DATA),
                ) {
                    let _ = a.sock.send_to(data, peer);
                }
            }
            (method::ALLOCATE, Class::Request) => {
                let relay = match self.by_client.get(&from).and_then(|&i| self.alloc(i)) {
                    Some(a) => Some(a.relay),
                    None => self.allocate(from),
                };
                self.answer(from, msg, relay, Some(600));
            }
            (method::REFRESH, Class::Request) => {
                let lifetime = msg.u32_attr(attr::LIFETIME).and_then(|r| r.ok());
                if lifetime == Some(0)
                    && let Some(i) = self.by_client.remove(&from)
                    && let Some(a) = self.allocs.get_mut(i).and_then(|a| a.take())
                {
                    self.ep.remove(&a.sock);
                    self.free.push(i);
                }
                self.answer(from, msg, None, Some(lifetime.unwrap_or(600)));
            }
            (method::CHANNEL_BIND, Class::Request) => {
                let ch = msg
                    .get(attr::CHANNEL_NUMBER)
                    .filter(|v| v.len() == 4)
                    .map(|v| u16::from_be_bytes([v[0], v[1]]));
                if let (Some(ch), Some(peer), Some(&i)) = (ch, peer, self.by_client.get(&from))
                    && let Some(Some(a)) = self.allocs.get_mut(i)
                {
                    a.peer_by_channel.insert(ch, peer);
                    a.channel_by_peer.insert(peer, ch);
                }
                self.answer(from, msg, None, None);
            }
            (_, Class::Request) => self.answer(from, msg, None, None),
            _ => {}
        }
    }

    /// Opens a relay socket for `client` on this worker.
    fn allocate(&mut self, client: SocketAddr) -> Option<SocketAddr> {
        let sock = UdpSocket::bind((self.relay_ip, 0)).ok()?;
        sock.set_nonblocking(true).ok()?;
        let relay = sock.local_addr().ok()?;
        let i = self.free.pop().unwrap_or(self.allocs.len());
        self.ep.add(&sock, i as u64).ok()?;
        let a = Alloc {
            sock,
            client,
            relay,
            peer_by_channel: FxHashMap::default(),
            channel_by_peer: FxHashMap::default(),
        };
        if i == self.allocs.len() {
            self.allocs.push(Some(a));
        } else if let Some(slot) = self.allocs.get_mut(i) {
            *slot = Some(a);
        }
        self.by_client.insert(client, i);
        Some(relay)
    }

    /// A success response (no integrity: the floor authenticates no one).
    fn answer(
        &mut self,
        to: SocketAddr,
        req: &Message,
        relay: Option<SocketAddr>,
        lifetime: Option<u32>,
    ) {
        let mut w = MessageWriter::new(
            &mut self.out,
            req.method(),
            Class::Success,
            req.transaction_id(),
        );
        if let Some(r) = relay {
            w.xor_address(attr::XOR_RELAYED_ADDRESS, r);
        }
        w.xor_address(attr::XOR_MAPPED_ADDRESS, to);
        if let Some(l) = lifetime {
            w.u32_attr(attr::LIFETIME, l);
        }
        w.fingerprint();
        let _ = self.listener.send_to(&self.out, to);
    }

    fn drain_relay(&mut self, i: usize, buf: &mut [u8]) {
        let Some(a) = self.allocs.get(i).and_then(|a| a.as_ref()) else {
            return;
        };
        for _ in 0..BATCH {
            let Some(room) = buf.get_mut(HEADROOM..) else {
                return;
            };
            let (n, peer) = match a.sock.recv_from(room) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            let start = if let Some(&ch) = a.channel_by_peer.get(&peer) {
                buf[HEADROOM - 4..HEADROOM].copy_from_slice(&channel_data::header(ch, n as u16));
                HEADROOM - 4
            } else if let (SocketAddr::V4(p), Some(pad)) = (
                peer,
                buf.get_mut(HEADROOM + n..HEADROOM + n.next_multiple_of(4)),
            ) {
                pad.fill(0);
                data_indication_header(&mut buf[..HEADROOM], p, n);
                0
            } else {
                continue;
            };
            let end = if start == 0 {
                HEADROOM + n.next_multiple_of(4)
            } else {
                HEADROOM + n
            };
            if let Some(d) = buf.get(start..end) {
                let _ = self.listener.send_to(d, a.client);
            }
        }
    }
}

/// Writes the header of a Data indication (RFC 8656 §11.4) for `n` bytes from an IPv4 peer:
/// STUN header, XOR-PEER-ADDRESS, DATA's type and length (the payload follows).
fn data_indication_header(h: &mut [u8], peer: SocketAddrV4, n: usize) {
    let body = 12 + 4 + n.next_multiple_of(4);
    let ty = turnd::stun::message_type(method::DATA, Class::Indication);
    h[0..2].copy_from_slice(&ty.to_be_bytes());
    h[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    h[8..20].fill(0);
    h[20..22].copy_from_slice(&attr::XOR_PEER_ADDRESS.to_be_bytes());
    h[22..24].copy_from_slice(&8u16.to_be_bytes());
    h[24] = 0;
    h[25] = 0x01;
    let port = peer.port() ^ (MAGIC_COOKIE >> 16) as u16;
    h[26..28].copy_from_slice(&port.to_be_bytes());
    let ip = u32::from(*peer.ip()) ^ MAGIC_COOKIE;
    h[28..32].copy_from_slice(&ip.to_be_bytes());
    h[32..34].copy_from_slice(&attr::DATA.to_be_bytes());
    h[34..36].copy_from_slice(&(n as u16).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_indication_header_parses() {
        let peer: SocketAddrV4 = "127.0.0.1:5000".parse().unwrap();
        let mut d = vec![0u8; HEADROOM];
        data_indication_header(&mut d, peer, 5);
        d.extend_from_slice(b"hello\0\0\0");
        let m = Message::parse(&d).unwrap();
        assert_eq!((m.method(), m.class()), (method::DATA, Class::Indication));
        assert_eq!(
            m.xor_address(attr::XOR_PEER_ADDRESS),
            Some(Ok(SocketAddr::V4(peer)))
        );
        assert_eq!(m.get(attr::DATA), Some(&b"hello"[..]));
    }
}
