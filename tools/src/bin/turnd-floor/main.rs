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
//! turnd. IPv4 loopback, or the benchmarking range 198.18.0.0/15 that bench/offload.sh puts
//! in network namespaces with no route out; NOT a TURN server: it relays for anyone who asks.
//!
//! `--syscall-cost` forwards nothing: it measures the kernel's CPU cost per loopback
//! datagram (sendmmsg + recvmmsg on one thread, with and without GSO/GRO) and exits; see
//! [`turnd_tools::syscall_cost`].
//!
//! `--batch --gso` adds the UDP segmentation offloads turnd uses: sends go through turnd's
//! own send queue ([`turnd::net::SendQueue`]): queued while a round of reads is handled and
//! sent at its end, one `sendmmsg` per socket, runs of equal datagrams from one socket to
//! one destination merged into `UDP_SEGMENT` messages; and every socket has `UDP_GRO` set,
//! so a coalesced read is cut back into its datagrams. `--io-uring` adds turnd's io_uring
//! sends: a round in which several sockets have one message each hands its plain messages
//! to the kernel in one `io_uring_enter`. So the floor pays the kernel what turnd pays for
//! the same traffic, and no more.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use rustc_hash::FxHashMap;
use socket2::{Domain, Protocol, Socket, Type};
use turnd::net::{Offload, SendQueue};
use turnd::stun::{Class, MAGIC_COOKIE, Message, MessageWriter, attr, channel_data, method};
use turnd_tools::addr::bench_address;
use turnd_tools::sys::{self, Epoll, event_buffer};
use turnd_tools::{gso, syscall_cost};

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
             no checks: loopback and 198.18.0.0/15 only)"
)]
struct Args {
    /// Listen address (IPv4 loopback, or 198.18.0.0/15 inside a benchmark's namespace); the
    /// relay sockets bind to the same address.
    #[arg(long, default_value = "127.0.0.1:3479")]
    listen: SocketAddrV4,
    /// Worker threads, 0 for one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Exit after this many seconds (a guard; the benchmark script ends it by pid first).
    #[arg(long, default_value_t = 3600)]
    max_seconds: u64,
    /// Batch system calls: recvmmsg on every socket and sendmmsg towards the clients (up to
    /// 32 datagrams per call); the client-to-peer sends stay one per packet (one socket
    /// each). Shows how far batching takes the kernel's cost below the plain floor.
    #[arg(long)]
    batch: bool,
    /// With --batch: UDP GSO and GRO as turnd uses them. Sends (both directions) are queued
    /// and leave at the end of each round of reads, one sendmmsg per socket, runs of
    /// equal-size datagrams from one socket to one destination as one UDP_SEGMENT message;
    /// sockets read with UDP_GRO and coalesced reads are split. Without kernel support,
    /// runs as plain --batch (and says so).
    #[arg(long, requires = "batch")]
    gso: bool,
    /// With --gso: send as turnd does with `server.udp-io-uring`, through io_uring when
    /// several sockets have one message each in a round. Without io_uring here, runs as
    /// plain --gso (and says so).
    #[arg(long, requires = "gso")]
    io_uring: bool,
    /// Instead of forwarding: measure the kernel's CPU cost per loopback datagram sent
    /// with sendmmsg and read with recvmmsg (one socket; 100 sockets one datagram each;
    /// 100 sockets with GSO bursts of 4 and 8, without and with GRO), print one line per
    /// case and exit.
    #[arg(long)]
    syscall_cost: bool,
    /// --syscall-cost: datagrams per case.
    #[arg(long, value_name = "N", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(100..=20_000_000))]
    syscall_cost_count: u64,
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
    /// `--gso`: every relayed datagram goes through this queue, flushed each round.
    gsoq: Option<SendQueue>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.syscall_cost {
        return syscall_costs(args.syscall_cost_count);
    }
    if !bench_address(IpAddr::V4(*args.listen.ip())) {
        eprintln!("turnd-floor: --listen must be a loopback address or one from 198.18.0.0/15");
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
    let gso = args.gso && offload_supported();
    if args.gso && !gso {
        eprintln!(
            "turnd-floor: this kernel lacks UDP GSO/GRO; --gso ignored, running as plain --batch"
        );
    }
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
    let io_uring = gso
        && args.io_uring
        && match SendQueue::with_offload(offload(true)).1 {
            None => true,
            Some(e) => {
                eprintln!("turnd-floor: io_uring unavailable ({e}); --io-uring ignored");
                false
            }
        };
    let mode = match (args.batch, gso, io_uring) {
        (false, _, _) => "",
        (true, false, _) => ", batched",
        (true, true, false) => ", batched with UDP GSO/GRO",
        (true, true, true) => ", batched with UDP GSO/GRO and io_uring sends",
    };
    eprintln!(
        "turnd-floor: listening on {} with {threads} threads{mode}",
        args.listen
    );
    let until = Instant::now() + Duration::from_secs(args.max_seconds);
    let relay_ip = *args.listen.ip();
    let handles: Vec<_> = listeners
        .into_iter()
        .map(|l| std::thread::spawn(move || worker(l, relay_ip, until, args.batch, gso, io_uring)))
        .collect();
    for h in handles {
        let _ = h.join();
    }
    ExitCode::SUCCESS
}

/// `--syscall-cost`: every case in turn on this (the only) thread, one line each.
fn syscall_costs(count: u64) -> ExitCode {
    println!(
        "syscall-cost: {count} datagrams of {} bytes per case, one thread, loopback; \
         process CPU per datagram sent and received",
        syscall_cost::SIZE
    );
    for case in &syscall_cost::CASES {
        match syscall_cost::run(case, count) {
            Ok(o) => println!("{}", o.line(case)),
            Err(e) => {
                eprintln!("turnd-floor: syscall cost, case {}: {e}", case.name);
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

/// The offloads of `--gso`, with io_uring sends or without.
fn offload(io_uring: bool) -> Offload {
    Offload {
        gso: true,
        gro: true,
        io_uring,
    }
}

/// Whether this kernel takes `UDP_SEGMENT` sends and `UDP_GRO` (probed on a throwaway
/// socket).
fn offload_supported() -> bool {
    UdpSocket::bind("127.0.0.1:0").is_ok_and(|s| gso::supported(&s) && gso::enable_gro(&s).is_ok())
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

fn worker(
    listener: UdpSocket,
    relay_ip: Ipv4Addr,
    until: Instant,
    batch: bool,
    gso: bool,
    io_uring: bool,
) {
    let ep = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("turnd-floor: epoll: {e}");
            return;
        }
    };
    if gso && let Err(e) = gso::enable_gro(&listener) {
        eprintln!("turnd-floor: UDP_GRO on the listener: {e}");
        return;
    }
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
        // Probed in main; a worker that cannot set up its own ring sends as --gso.
        gsoq: gso.then(|| SendQueue::with_offload(offload(io_uring)).0),
    };
    let mut events = event_buffer(256);
    let mut ready = Vec::with_capacity(256);
    let mut buf = vec![0u8; HEADROOM + 65536 + 4];
    // With GRO a read may hold a whole coalesced burst.
    let mut rx = Batch::new(MMSG, if gso { gso::GRO_BUFFER } else { SLOT });
    rx.gro = gso;
    let mut tx = Batch::new(MMSG, SLOT);
    while Instant::now() < until {
        w.ep.wait(&mut events, Duration::from_millis(100), &mut ready);
        for &token in &ready {
            match (token == LISTENER, batch) {
                (true, false) => w.drain_listener(&mut buf),
                (false, false) => w.drain_relay(token as usize, &mut buf),
                (true, true) => w.drain_listener_batched(&mut rx),
                (false, true) => w.drain_relay_batched(token as usize, &mut rx, &mut tx),
            }
        }
        tx.flush(&w.listener);
        if let Some(q) = &mut w.gsoq {
            q.flush();
        }
    }
}

/// Datagrams per recvmmsg/sendmmsg in `--batch` mode, and the room for each.
const MMSG: usize = 32;
const SLOT: usize = 2048;

/// Buffers, IPv4 addresses and headers for recvmmsg/sendmmsg.
struct Batch {
    bufs: Vec<u8>,
    lens: Vec<usize>,
    names: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Datagrams queued for the next flush.
    queued: usize,
    /// Read with room for the `UDP_GRO` control message (`--gso`).
    gro: bool,
    ctrl: Vec<gso::CmsgBuf>,
}

impl Batch {
    fn new(n: usize, slot: usize) -> Batch {
        Batch {
            bufs: vec![0; n * slot],
            lens: vec![0; n],
            // SAFETY: all-zero is a valid value of these plain C structs.
            names: vec![unsafe { std::mem::zeroed() }; n],
            iovs: (0..n)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: as above.
            hdrs: (0..n).map(|_| unsafe { std::mem::zeroed() }).collect(),
            queued: 0,
            gro: false,
            ctrl: vec![gso::CmsgBuf::default(); n],
        }
    }

    fn slot_len(&self) -> usize {
        self.bufs.len() / self.lens.len().max(1)
    }

    /// Points the first `k` headers at their slots (with `lens`) and addresses.
    fn prepare(&mut self, k: usize) {
        let slot = self.slot_len();
        let base = self.bufs.as_mut_ptr();
        for i in 0..k {
            // SAFETY: i < n, so the slot lies inside `bufs`.
            self.iovs[i].iov_base = unsafe { base.add(i * slot) }.cast();
            self.iovs[i].iov_len = self.lens[i].min(slot);
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
    }

    /// Receives up to a batch without waiting; returns how many arrived.
    fn recv(&mut self, sock: &UdpSocket) -> usize {
        use std::os::fd::AsRawFd;
        let n = self.lens.len();
        let slot = self.slot_len();
        self.lens.fill(slot);
        self.prepare(n);
        if self.gro {
            for (h, c) in self.hdrs.iter_mut().zip(self.ctrl.iter_mut()) {
                gso::set_recv_control(&mut h.msg_hdr, c);
            }
        }
        // SAFETY: all n headers point at live slots and addresses.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let r = r.max(0) as usize;
        for i in 0..r {
            self.lens[i] = self.hdrs[i].msg_len as usize;
        }
        r
    }

    /// Datagram `i` of the last receive and where it came from.
    fn get(&self, i: usize) -> (&[u8], SocketAddr) {
        let slot = self.slot_len();
        let a = &self.names[i];
        let from = SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
            u16::from_be(a.sin_port),
        );
        let start = i * slot;
        (
            &self.bufs[start..start + self.lens[i].min(slot)],
            SocketAddr::V4(from),
        )
    }

    /// The segment size when datagram `i` of the last receive is a coalesced burst (GRO).
    fn gro_size(&self, i: usize) -> Option<usize> {
        if !self.gro {
            return None;
        }
        self.hdrs.get(i).and_then(|h| gso::gro_size(&h.msg_hdr))
    }

    /// The slot for the next datagram to queue (flush first when full).
    fn next_slot(&mut self) -> &mut [u8] {
        let slot = self.slot_len();
        let i = self.queued;
        &mut self.bufs[i * slot..(i + 1) * slot]
    }

    /// Queues the datagram written into [`Batch::next_slot`].
    fn queue(&mut self, len: usize, to: SocketAddrV4) {
        let i = self.queued;
        self.lens[i] = len;
        self.names[i] = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*to.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        self.queued += 1;
    }

    fn is_full(&self) -> bool {
        self.queued >= self.lens.len()
    }

    /// Sends everything queued from `sock`; what the kernel refuses is dropped.
    fn flush(&mut self, sock: &UdpSocket) {
        use std::os::fd::AsRawFd;
        let k = self.queued;
        if k == 0 {
            return;
        }
        self.prepare(k);
        let mut done = 0;
        // Bounded: each round sends at least one datagram or gives up.
        while done < k {
            // SAFETY: the first k headers point at live slots and addresses.
            let r = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.hdrs[done..].as_mut_ptr(),
                    (k - done) as u32,
                    0,
                )
            };
            if r <= 0 {
                break;
            }
            done += r as usize;
        }
        self.queued = 0;
    }
}

impl Worker {
    fn drain_listener_batched(&mut self, rx: &mut Batch) {
        for _ in 0..BATCH / MMSG + 1 {
            let n = rx.recv(&self.listener);
            for i in 0..n {
                let (datagram, from) = rx.get(i);
                for_each_segment(datagram, rx.gro_size(i), |d| {
                    self.handle_listener_datagram(from, d)
                });
            }
            if n < MMSG {
                return;
            }
        }
    }

    fn drain_relay_batched(&mut self, i: usize, rx: &mut Batch, tx: &mut Batch) {
        let Some(a) = self.allocs.get(i).and_then(|a| a.as_ref()) else {
            return;
        };
        let SocketAddr::V4(client) = a.client else {
            return;
        };
        for _ in 0..BATCH / MMSG + 1 {
            let n = rx.recv(&a.sock);
            for k in 0..n {
                let (data, peer) = rx.get(k);
                for_each_segment(data, rx.gro_size(k), |data| {
                    if let Some(q) = &mut self.gsoq {
                        let fd = self.listener.as_raw_fd();
                        // Room for the longer framing: a Data indication, padded.
                        let max = HEADROOM + data.len().next_multiple_of(4);
                        if let Some(len) = q.room(max).and_then(|out| frame(a, peer, data, out)) {
                            q.commit(fd, a.client, len);
                            return;
                        }
                        q.flush();
                        if let Some(len) = q.room(max).and_then(|out| frame(a, peer, data, out)) {
                            q.commit(fd, a.client, len);
                        }
                        return;
                    }
                    if tx.is_full() {
                        tx.flush(&self.listener);
                    }
                    if let Some(len) = frame(a, peer, data, tx.next_slot()) {
                        tx.queue(len, client);
                    }
                });
            }
            if n < MMSG {
                return;
            }
        }
    }

    fn drain_listener(&mut self, buf: &mut [u8]) {
        for _ in 0..BATCH {
            let (n, from) = match self.listener.recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            if let Some(datagram) = buf.get(..n) {
                self.handle_listener_datagram(from, datagram);
            }
        }
    }

    /// ChannelData or a Send indication: one sendto out of the allocation's socket. Other
    /// STUN messages: the setup path.
    fn handle_listener_datagram(&mut self, from: SocketAddr, datagram: &[u8]) {
        if datagram
            .first()
            .is_some_and(|&b| channel_data::is_channel_data(b))
        {
            let Some((ch, data)) = channel_data::parse(datagram) else {
                return;
            };
            if let Some(a) = self
                .by_client
                .get(&from)
                .and_then(|&i| self.allocs.get(i))
                .and_then(|a| a.as_ref())
                && let Some(&peer) = a.peer_by_channel.get(&ch)
            {
                send_to_peer(&mut self.gsoq, a, peer, data);
            }
            return;
        }
        if let Ok(msg) = Message::parse(datagram) {
            self.handle_stun(from, &msg);
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
                    self.by_client
                        .get(&from)
                        .and_then(|&i| self.allocs.get(i))
                        .and_then(|a| a.as_ref()),
                    peer,
                    msg.get(attr::DATA),
                ) {
                    send_to_peer(&mut self.gsoq, a, peer, data);
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
                    && let Some(q) = &mut self.gsoq
                {
                    // Queued datagrams name the socket about to close.
                    q.flush();
                }
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
        if self.gsoq.is_some() {
            gso::enable_gro(&sock).ok()?;
        }
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

/// Calls `f` with each datagram of a read: the whole read, or, when it coalesces a burst
/// (GRO), every `gro` bytes of it (the last piece may be shorter).
fn for_each_segment(data: &[u8], gro: Option<usize>, mut f: impl FnMut(&[u8])) {
    match gro.filter(|&s| s > 0 && s < data.len()) {
        Some(s) => data.chunks(s).for_each(f),
        None => f(data),
    }
}

/// Writes into `out` what a datagram `data` from `peer` becomes towards the client of `a`:
/// ChannelData on the peer's channel, else a Data indication. Returns its length; `None`
/// when it does not fit `out` or the peer is not IPv4.
fn frame(a: &Alloc, peer: SocketAddr, data: &[u8], out: &mut [u8]) -> Option<usize> {
    if let Some(&ch) = a.channel_by_peer.get(&peer) {
        out.get_mut(4..4 + data.len())?.copy_from_slice(data);
        out.get_mut(..4)?
            .copy_from_slice(&channel_data::header(ch, data.len() as u16));
        return Some(4 + data.len());
    }
    let SocketAddr::V4(p) = peer else {
        return None;
    };
    let padded = data.len().next_multiple_of(4);
    let body = out.get_mut(HEADROOM..HEADROOM + padded)?;
    body.fill(0);
    body[..data.len()].copy_from_slice(data);
    data_indication_header(&mut out[..HEADROOM], p, data.len());
    Some(HEADROOM + padded)
}

/// Client to peer: one `sendto` out of the allocation's socket, or with `--gso` queued for
/// the end of the round (sent at once if the queue cannot take it even after a flush).
fn send_to_peer(q: &mut Option<SendQueue>, a: &Alloc, peer: SocketAddr, data: &[u8]) {
    if let Some(q) = q {
        let fd = a.sock.as_raw_fd();
        if q.push(fd, peer, data) {
            return;
        }
        q.flush();
        if q.push(fd, peer, data) {
            return;
        }
    }
    let _ = a.sock.send_to(data, peer);
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
