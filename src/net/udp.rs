//! One worker: a current-thread runtime around one sans-IO [`Server`]. The UDP sockets
//! (listeners and relay sockets) sit in the worker's own epoll set ([`super::epoll`]), driven
//! by one task that reads each ready socket with `recvmmsg` into one shared set of buffers
//! and sends what the core answers with `sendmmsg` at the end of the batch
//! ([`super::mmsg`]). TCP/TLS and the timer are tokio tasks beside it.

use std::cell::RefCell;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio::task::LocalSet;
use tracing::{debug, error, warn};

use super::epoll::{Epoll, event_buffer};
use super::handover::{Handover, HandoverPort};
use super::local::LocalQueue;
use super::mmsg::{Offload, RX_BATCH, RecvBatch, SendQueue, send_now};
use super::now;
use crate::turn::{
    BindError, ConnectionId, FiveTuple, Io, PEER_TAILROOM, RelayId, RelayOptions, Server,
    ServerConfig, Transport,
};

/// The longest the timer task sleeps, so a missed wakeup costs at most this much.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(1);
/// Ready sockets taken from the epoll set per round.
const EVENTS: usize = 256;
/// Datagrams read per round, over all sockets, before the worker's other tasks (TCP, timers,
/// jobs from other threads) get their turn.
const ROUND_BUDGET: usize = 1024;
/// Epoll tokens of the listeners count down from here; relay sockets use their [`RelayId`]
/// (counting up from 1).
const LISTENER_TOKEN: u64 = u64::MAX;
/// The epoll token of the hand-over eventfd (no relay has id 0).
const HANDOVER_TOKEN: u64 = 0;

pub(super) struct Worker {
    pub(super) core: Server,
    pub(super) io: DriverIo,
}

/// Work sent to a worker from another thread (admin API, reload, drain): it runs on the
/// worker's thread between packets, with the worker's core and I/O, and never on the packet
/// path of another worker.
pub(crate) type Job = Box<dyn FnOnce(&mut Server, &mut DriverIo) + Send>;

/// The worker's side of the sans-IO [`Io`] trait: its listener and relay sockets.
pub(crate) struct DriverIo {
    /// UDP listeners by local address; index i has epoll token `LISTENER_TOKEN - i`.
    listeners: Vec<(SocketAddr, StdUdpSocket)>,
    /// Relay sockets: plain non-blocking sockets in `epoll`, closed in `close_relay`.
    relays: FxHashMap<RelayId, RelaySocket>,
    /// The worker's relay sockets by bound address and by advertised address, for relaying
    /// between two of them without the kernel ([`super::local`]).
    by_relay_addr: FxHashMap<SocketAddr, RelayId>,
    /// The relay addresses per family: (bound, advertised).
    relay_ips: [Option<(std::net::IpAddr, std::net::IpAddr)>; 2],
    /// Datagrams for the worker's own relay sockets, delivered at the end of the batch.
    local: LocalQueue,
    /// Datagrams for other workers' relay sockets ([`super::handover`]); `None` with one
    /// worker.
    handover: Option<HandoverPort>,
    /// Datagrams relayed to one of this worker's own relay sockets without the kernel.
    local_datagrams: u64,
    epoll: Rc<AsyncFd<Epoll>>,
    /// Sends collected while the UDP task handles a batch (or a TCP client's frame); sent at
    /// its end. Outside a batch (timers, jobs) sends go out at once.
    tx: SendQueue,
    batching: bool,
    send_drops: u64,
    /// The UDP segmentation offloads in use (GRO is set on each relay socket as it opens).
    offload: Offload,
    /// Reads that returned coalesced datagrams (GRO), and the datagrams they held.
    gro_reads: u64,
    gro_datagrams: u64,
    /// TCP and TLS client connections (src/net/tcp.rs).
    pub(super) tcp: super::tcp::TcpIo,
}

/// How much the UDP segmentation offloads did on one worker (see [`DriverIo::offload_counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadCounts {
    pub gso_datagrams: u64,
    pub gso_messages: u64,
    pub gro_reads: u64,
    pub gro_datagrams: u64,
    /// Datagrams relayed between two allocations without the kernel: both on this worker,
    /// and handed to another worker's allocation.
    pub local_datagrams: u64,
    pub handover_datagrams: u64,
    /// Messages sent as io_uring entries (`server.udp-io-uring`).
    pub io_uring_messages: u64,
}

/// A relay socket, the address it is bound to and the address clients are told (the
/// external IP behind 1:1 NAT, or the same).
struct RelaySocket {
    sock: StdUdpSocket,
    addr: SocketAddr,
    advertised: SocketAddr,
}

impl RelaySocket {
    /// The source address another relay socket of this server sees on a datagram this one
    /// sends to `to`: the bound address when `to` is a bound relay address; the advertised
    /// one when `to` is advertised, as a NAT that loops the datagram back would rewrite it.
    fn seen_from(&self, to: &SocketAddr) -> SocketAddr {
        if to.ip() == self.addr.ip() {
            self.addr
        } else {
            self.advertised
        }
    }
}

impl DriverIo {
    /// Datagrams the kernel refused (full socket buffer), to clients and peers.
    pub(crate) fn send_drops(&self) -> u64 {
        self.send_drops
    }

    /// The offload counters: datagrams sent in GSO messages and those messages; reads that
    /// returned GRO-coalesced datagrams and the datagrams they held.
    pub(crate) fn offload_counts(&self) -> OffloadCounts {
        let (gso_datagrams, gso_messages) = self.tx.gso_counts();
        OffloadCounts {
            gso_datagrams,
            gso_messages,
            gro_reads: self.gro_reads,
            gro_datagrams: self.gro_datagrams,
            local_datagrams: self.local_datagrams,
            handover_datagrams: self.handover.as_ref().map_or(0, |h| h.sent),
            io_uring_messages: self.tx.ring_messages(),
        }
    }

    /// Queues a datagram while a batch is handled, or sends it now.
    fn send(&mut self, fd: std::os::fd::RawFd, data: &[u8], to: SocketAddr) {
        if self.batching {
            if self.tx.push(fd, to, data) {
                return;
            }
            self.flush();
            if self.tx.push(fd, to, data) {
                return;
            }
        }
        if send_now(fd, data, &to).is_err() {
            self.send_drops += 1;
        }
    }

    /// Sends everything queued.
    fn flush(&mut self) {
        self.send_drops += self.tx.flush();
    }
}

impl Io for DriverIo {
    fn send_to_client(&mut self, to: &FiveTuple, data: &[u8]) {
        if to.transport != Transport::Udp {
            self.tcp.send(to, data);
            return;
        }
        if let Some((_, s)) = self.listeners.iter().find(|(a, _)| *a == to.server) {
            let fd = s.as_raw_fd();
            self.send(fd, data, to.client);
        }
    }

    fn send_to_peer(&mut self, relay: RelayId, peer: SocketAddr, data: &[u8]) {
        let Some(s) = self.relays.get(&relay) else {
            return;
        };
        // Another allocation of this worker: hand it over at the end of the batch; of
        // another worker: hand it to that worker (only inside a batch, where the UDP task
        // drains the queue and wakes the other worker; elsewhere through the kernel).
        if self.batching {
            if let Some(&to) = self.by_relay_addr.get(&peer) {
                if self.local.push(to, s.seen_from(&peer), data) {
                    self.local_datagrams += 1;
                    return;
                }
            } else if let Some(h) = &mut self.handover
                && h.send(peer, s.seen_from(&peer), data)
            {
                return;
            }
        }
        let fd = s.sock.as_raw_fd();
        self.send(fd, data, peer);
    }

    fn bind_relay(
        &mut self,
        relay: RelayId,
        addr: SocketAddr,
        opts: RelayOptions,
    ) -> Result<(), BindError> {
        let sock = match relay_socket(addr, opts) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(BindError::AddrInUse);
            }
            Err(e) => {
                warn!(%addr, error = %e, "cannot open relay socket");
                return Err(BindError::Other);
            }
        };
        // The port as bound (the core always names one, but be exact).
        let bound = sock.local_addr().unwrap_or(addr);
        if self.offload.gro {
            // Best effort: without it the socket reads one datagram at a time.
            self.offload.enable_gro(sock.as_raw_fd());
        }
        if let Err(e) = self.epoll.get_ref().add(sock.as_raw_fd(), relay.0) {
            warn!(%addr, error = %e, "cannot watch relay socket");
            return Err(BindError::Other);
        }
        let advertised = match self.relay_ips[usize::from(bound.is_ipv6())] {
            Some((bind, adv)) if bind == bound.ip() => SocketAddr::new(adv, bound.port()),
            _ => bound,
        };
        if !bound.ip().is_unspecified() {
            self.by_relay_addr.insert(bound, relay);
            self.by_relay_addr.insert(advertised, relay);
            if let Some(h) = &self.handover {
                h.claim(&bound);
            }
        }
        self.relays.insert(
            relay,
            RelaySocket {
                sock,
                addr: bound,
                advertised,
            },
        );
        Ok(())
    }

    /// Closes the relay socket now, so its port can be bound again (by any worker) as soon as
    /// this returns. Datagrams queued from it are sent first.
    fn close_relay(&mut self, relay: RelayId) {
        if let Some(r) = self.relays.remove(&relay) {
            if !self.tx.is_empty() {
                self.flush();
            }
            if self.by_relay_addr.get(&r.addr) == Some(&relay) {
                self.by_relay_addr.remove(&r.addr);
                if let Some(h) = &self.handover {
                    h.release(&r.addr);
                }
            }
            if self.by_relay_addr.get(&r.advertised) == Some(&relay) {
                self.by_relay_addr.remove(&r.advertised);
            }
            self.epoll.get_ref().remove(r.sock.as_raw_fd());
            drop(r);
        }
        self.tcp.close_relay(relay);
    }

    fn listen_relay_tcp(&mut self, relay: RelayId, addr: SocketAddr) -> Result<(), BindError> {
        self.tcp.listen_relay(relay, addr)
    }

    fn connect_peer(&mut self, id: ConnectionId, from: SocketAddr, peer: SocketAddr) -> bool {
        self.tcp.connect_peer(id, from, peer)
    }

    fn close_peer_connection(&mut self, id: ConnectionId) {
        self.tcp.close_peer_connection(id);
    }

    fn claim_connection(&mut self, id: ConnectionId, data: &FiveTuple, username: &str) {
        self.tcp.claim_connection(id, data, username);
    }

    fn bind_data_connection(&mut self, id: ConnectionId, data: &FiveTuple) {
        self.tcp.bind_data_connection(id, data);
    }
}

fn relay_socket(addr: SocketAddr, opts: RelayOptions) -> std::io::Result<StdUdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if opts.dont_fragment {
        set_dont_fragment(&s, addr.is_ipv6());
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Path MTU discovery "do": the kernel sets DF and never fragments (RFC 8656 §7.2
/// DONT-FRAGMENT). Best effort: a failure leaves the kernel default.
fn set_dont_fragment(s: &Socket, v6: bool) {
    use std::os::fd::AsRawFd;
    let (level, name, val) = if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    // SAFETY: setsockopt on a valid fd with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &val as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        debug!(
            "IP_MTU_DISCOVER failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// What a worker's UDP data path starts with: its listener sockets, the offloads the
/// kernel has, and the hand-over to the other workers (none with one worker).
pub(super) struct UdpSetup {
    pub(super) sockets: Vec<(SocketAddr, StdUdpSocket)>,
    pub(super) offload: Offload,
    pub(super) handover: Option<Arc<Handover>>,
}

pub(super) fn run_worker(
    index: usize,
    udp: UdpSetup,
    cfg: ServerConfig,
    mut stop: watch::Receiver<bool>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    streams: super::tcp::WorkerStreams,
) {
    let UdpSetup {
        sockets,
        offload,
        handover,
    } = udp;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(worker = index, error = %e, "cannot start worker runtime");
            return;
        }
    };
    let local = LocalSet::new();
    local.block_on(&rt, async move {
        let epoll = match Epoll::new().and_then(|e| {
            // SAFETY: `Epoll` owns its descriptor and keeps it open until it is dropped,
            // which is only when the `AsyncFd` is.
            unsafe { AsyncFd::register_with_interest(e, Interest::READABLE) }
                .map_err(std::io::Error::from)
        }) {
            Ok(e) => Rc::new(e),
            Err(e) => {
                error!(worker = index, error = %e, "cannot create the worker's epoll set");
                return;
            }
        };
        let mut listeners = Vec::new();
        for (addr, s) in sockets {
            let token = LISTENER_TOKEN - listeners.len() as u64;
            if offload.gro {
                offload.enable_gro(s.as_raw_fd());
            }
            match epoll.get_ref().add(s.as_raw_fd(), token) {
                Ok(()) => listeners.push((addr, s)),
                Err(e) => error!(worker = index, %addr, error = %e, "cannot register listener"),
            }
        }
        let handover = handover.map(|h| HandoverPort::new(h, index));
        if let Some(h) = &handover
            && let Err(e) = epoll.get_ref().add(h.wake_fd(), HANDOVER_TOKEN)
        {
            error!(worker = index, error = %e, "cannot watch the hand-over eventfd");
        }
        let relay_ips = cfg.relay_ips;
        let (tx, ring_error) = SendQueue::with_offload(offload);
        if let Some(e) = ring_error {
            warn!(worker = index, error = %e, "io_uring unavailable; sending with sendmmsg");
        }
        let state = Rc::new(RefCell::new(Worker {
            core: Server::new(cfg),
            io: DriverIo {
                listeners,
                relays: FxHashMap::default(),
                by_relay_addr: FxHashMap::default(),
                relay_ips,
                local: LocalQueue::new(),
                handover,
                local_datagrams: 0,
                epoll: epoll.clone(),
                tx,
                batching: false,
                send_drops: 0,
                offload,
                gro_reads: 0,
                gro_datagrams: 0,
                tcp: Default::default(),
            },
        }));
        tokio::task::spawn_local(udp_loop(Rc::downgrade(&state), epoll, offload.gro));
        super::tcp::spawn_listeners(&state, streams);
        tokio::task::spawn_local(timer_loop(Rc::downgrade(&state)));
        while !*stop.borrow() {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(job) = jobs.recv() => {
                    let mut g = state.borrow_mut();
                    let w = &mut *g;
                    job(&mut w.core, &mut w.io);
                }
            }
        }
        let mut g = state.borrow_mut();
        let w = &mut *g;
        w.core.close_all(&mut w.io);
        w.io.flush();
        w.io.relays.clear();
    });
}

/// The UDP data path of one worker. Each round takes the ready sockets from the epoll set
/// and reads each once, at most [`RX_BATCH`] datagrams (the bound on work per socket per
/// wakeup) and [`ROUND_BUDGET`] in all, hands them to the core and flushes the sends they
/// caused. After a round that
/// may have left work behind (a full batch, or more ready sockets than one round takes) it
/// yields to the worker's other tasks before the next; otherwise it waits for the set to
/// become readable again.
async fn udp_loop(state: Weak<RefCell<Worker>>, epoll: Rc<AsyncFd<Epoll>>, gro: bool) {
    let mut rx = RecvBatch::with_gro(gro);
    let mut events = event_buffer(EVENTS);
    loop {
        let mut guard = match epoll.readable().await {
            Ok(g) => g,
            Err(e) => {
                error!(error = %e, "worker epoll set failed");
                return;
            }
        };
        let n = epoll.get_ref().poll_now(&mut events);
        let Some(state) = state.upgrade() else {
            return;
        };
        // No socket ready and no parcel waiting: wait again.
        let parcels = state
            .borrow()
            .io
            .handover
            .as_ref()
            .is_some_and(|h| h.waiting());
        if n == 0 && !parcels {
            guard.clear_ready();
            continue;
        }
        let mut more = n == events.len();
        {
            let mut g = state.borrow_mut();
            let w = &mut *g;
            begin_batch(w);
            if let Some(h) = &w.io.handover {
                h.busy();
            }
            // Parcels from other workers first: those handed over before anything this
            // round reads was sent (a reply that came after the hand-over, then a request
            // caused by it) are delivered before it.
            more |= deliver_handover(w, ROUND_BUDGET);
            let mut work = 0;
            for ev in &events[..n] {
                if work >= ROUND_BUDGET {
                    // The sockets not read stay ready (level-triggered): next round.
                    more = true;
                    break;
                }
                let (read, datagrams) = drain_socket(w, ev.u64, &mut rx);
                more |= read == RX_BATCH;
                work += datagrams;
            }
            end_batch(w);
            if let Some(h) = &w.io.handover {
                // Last look for parcels before waiting (senders wake only an idle worker).
                more |= !more && h.going_idle();
            }
        }
        if more {
            drop(guard);
            tokio::task::yield_now().await;
        } else {
            // Every socket was read empty: anything arriving from now on wakes the set's
            // file descriptor again (the readiness tick of this guard is older).
            guard.clear_ready();
        }
    }
}

/// Reads one batch from the socket with epoll token `token` and hands it to the core;
/// returns how many reads the batch held and how many datagrams they carried (more than the
/// reads when GRO coalesced some).
fn drain_socket(w: &mut Worker, token: u64, rx: &mut RecvBatch) -> (usize, usize) {
    if token == HANDOVER_TOKEN {
        // Parcels from other workers: taken at the start of each round.
        if let Some(h) = &w.io.handover {
            h.acknowledge();
        }
        return (0, 0);
    }
    let listener = LISTENER_TOKEN - token;
    let found = w.io.listeners.get(listener as usize);
    let mut datagrams = 0;
    if let Some((local, fd)) = found.map(|(a, s)| (*a, s.as_raw_fd())) {
        let n = rx.recv(fd);
        let t = now();
        for i in 0..n {
            let seg = rx.segment_size(i);
            let Some((client, slot, range)) = rx.datagram(i) else {
                continue;
            };
            let ft = FiveTuple {
                client,
                server: local,
                transport: Transport::Udp,
            };
            let step = segment_step(seg, &range);
            let mut start = range.start;
            // At least once: an empty datagram is a datagram too.
            loop {
                let end = (start + step).min(range.end);
                if let Some(data) = slot.get(start..end) {
                    w.core.handle_client(t, ft, data, &mut w.io);
                }
                datagrams += 1;
                start = end;
                if start >= range.end {
                    break;
                }
            }
            w.io.count_gro(step, &range);
        }
        return (n, datagrams);
    }
    let relay = RelayId(token);
    let Some(fd) = w.io.relays.get(&relay).map(|r| r.sock.as_raw_fd()) else {
        // Closed earlier in this round.
        return (0, 0);
    };
    let n = rx.recv(fd);
    let t = now();
    for i in 0..n {
        let seg = rx.segment_size(i);
        let Some((peer, slot, range)) = rx.datagram(i) else {
            continue;
        };
        let step = segment_step(seg, &range);
        let mut start = range.start;
        // At least once: an empty datagram from a peer is relayed too.
        loop {
            let end = (start + step).min(range.end);
            // The core writes the header in place before the datagram (over the previous
            // one, already handled) and may pad after it: over the next datagram's first
            // bytes, which are put back once this one is sent (every send copies).
            let mut keep = [0u8; PEER_TAILROOM];
            let next = end < range.end;
            if next && let Some(b) = slot.get(end..end + PEER_TAILROOM) {
                keep.copy_from_slice(b);
            }
            w.core
                .handle_peer(t, relay, peer, slot, start..end, &mut w.io);
            if next && let Some(b) = slot.get_mut(end..end + PEER_TAILROOM) {
                b.copy_from_slice(&keep);
            }
            datagrams += 1;
            start = end;
            if start >= range.end {
                break;
            }
        }
        w.io.count_gro(step, &range);
    }
    (n, datagrams)
}

/// The length of each datagram in a read of `range`: the GRO segment size, or all of it.
fn segment_step(seg: Option<usize>, range: &std::ops::Range<usize>) -> usize {
    let len = range.end - range.start;
    seg.filter(|&s| s < len).unwrap_or(len.max(1))
}

impl DriverIo {
    fn count_gro(&mut self, step: usize, range: &std::ops::Range<usize>) {
        let len = range.end - range.start;
        if step < len {
            self.gro_reads += 1;
            self.gro_datagrams += len.div_ceil(step) as u64;
        }
    }
}

/// Starts a batch: sends are queued until [`end_batch`], and datagrams for another
/// allocation of the server are handed over instead of going through the kernel.
pub(super) fn begin_batch(w: &mut Worker) {
    w.io.batching = true;
}

/// Ends a batch: delivers what it handed to this worker's own relay sockets, sends what is
/// queued, and wakes the workers it handed parcels to.
pub(super) fn end_batch(w: &mut Worker) {
    deliver_local(w);
    w.io.batching = false;
    w.io.flush();
    if let Some(h) = &mut w.io.handover {
        h.notify();
    }
}

/// Hands the datagrams one relay socket of this worker sent to another to the receiving
/// allocation (its permission is checked there), as the kernel would have.
fn deliver_local(w: &mut Worker) {
    if w.io.local.is_empty() {
        return;
    }
    // Taken out (an empty queue allocates nothing) so the core can have the I/O; the core
    // sends nothing to a peer while it handles a peer's datagram, so nothing is added.
    let mut q = std::mem::take(&mut w.io.local);
    let t = now();
    q.drain(|to, from, buf, range| w.core.handle_peer(t, to, from, buf, range, &mut w.io));
    w.io.local = q;
}

/// Hands the parcels other workers handed to this one's relay sockets to their allocations
/// (at most `budget`); true when the budget ran out first.
fn deliver_handover(w: &mut Worker, budget: usize) -> bool {
    // Taken out so the core can have the I/O; put back below.
    let Some(h) = w.io.handover.take() else {
        return false;
    };
    let t = now();
    let n = h.drain(budget, |p| {
        // Gone if the allocation ended since: dropped, as the kernel drops a datagram to a
        // closed port.
        if let Some(relay) = w.io.by_relay_addr.get(&p.to).copied() {
            let from = p.from;
            let (buf, range) = p.payload();
            w.core.handle_peer(t, relay, from, buf, range, &mut w.io);
        }
    });
    w.io.handover = Some(h);
    n == budget
}

async fn timer_loop(state: Weak<RefCell<Worker>>) {
    loop {
        let next = {
            let Some(s) = state.upgrade() else {
                return;
            };
            s.borrow().core.poll_timeout()
        };
        let cap = Instant::now() + MAX_TIMER_SLEEP;
        let at = next.map_or(cap, |t| t.min(cap));
        tokio::time::sleep_until(at.into()).await;
        let Some(s) = state.upgrade() else {
            return;
        };
        let mut g = s.borrow_mut();
        let w = &mut *g;
        w.core.handle_timeout(now(), &mut w.io);
    }
}
