//! One worker: a current-thread runtime around one sans-IO [`Server`] and its driver
//! [`DriverIo`], the worker's side of the core's [`Io`] trait. This module holds what every
//! transport shares: the run loop (jobs from other threads, stop), the timer task, the batch
//! (sends queued on the worker's [`SendQueue`] and flushed at its end) and relaying between
//! two allocations of the server without the kernel ([`local`], [`handover`]).
//!
//! The transports are the children, each depending on this module and not on each other:
//! - [`udp`]: listener and relay sockets in the worker's epoll set ([`epoll`]), read with
//!   `recvmmsg`/GRO by one task;
//! - [`tcp`]: TCP and TLS client connections (STUN framing, PROXY headers, limits);
//! - [`relay_tcp`]: RFC 6062 peer connections (relay listeners, Connect, the splice);
//! - [`streams`]: the state those two share (connections by 5-tuple, write queues,
//!   counters).

mod epoll;
pub(super) mod handover;
pub(super) mod local;
mod relay_tcp;
pub(super) mod streams;
pub(super) mod tcp;
mod udp;

use std::cell::RefCell;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio::task::LocalSet;
use tracing::{error, warn};

use self::epoll::Epoll;
use self::handover::{Handover, HandoverPort};
use self::local::LocalQueue;
use self::udp::{HANDOVER_TOKEN, LISTENER_TOKEN, RelaySocket};
use super::batch::{Offload, SendQueue, send_now};
use super::now;
use super::xdp::WorkerKernel;
use crate::turn::{
    BindError, ConnectionId, FastPathEntry, FiveTuple, Io, KernelCounts, LeaseRequest, RelayId,
    RelayOptions, Server, ServerConfig, Transport,
};

/// The longest the timer task sleeps, so a missed wakeup costs at most this much.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(1);

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
    /// between two of them without the kernel ([`local`]).
    by_relay_addr: FxHashMap<SocketAddr, RelayId>,
    /// The relay addresses per family: (bound, advertised).
    relay_ips: [Option<(std::net::IpAddr, std::net::IpAddr)>; 2],
    /// Datagrams for the worker's own relay sockets, delivered at the end of the batch.
    local: LocalQueue,
    /// Datagrams for other workers' relay sockets ([`handover`]); `None` with one
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
    /// TCP and TLS client connections and RFC 6062 peer connections ([`streams`]).
    pub(super) tcp: streams::TcpIo,
    /// The fleet's lease task (strict fleet quotas) and this worker's index; None without.
    leases: Option<(crate::fleet::LeaseDesk, usize)>,
    /// The kernel fast path (`server.kernel-offload`), when in use.
    kernel: Option<WorkerKernel>,
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

impl DriverIo {
    /// Where this worker's parked Allocates ask for their fleet leases.
    pub(crate) fn set_lease_desk(&mut self, desk: crate::fleet::LeaseDesk, worker: usize) {
        self.leases = Some((desk, worker));
    }

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
        self.bind_udp_relay(relay, addr, opts)
    }

    /// Closes the relay socket now, so its port can be bound again (by any worker) as soon as
    /// this returns. Datagrams queued from it are sent first.
    fn close_relay(&mut self, relay: RelayId) {
        self.close_udp_relay(relay);
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

    fn request_lease(&mut self, lease: LeaseRequest<'_>) -> bool {
        match &self.leases {
            Some((desk, worker)) => desk.request(*worker, lease),
            None => false,
        }
    }
    fn release_lease(&mut self, user: &str) {
        if let Some((desk, _)) = &self.leases {
            desk.release(user);
        }
    }
    fn fast_path(&self) -> bool {
        self.kernel.is_some()
    }

    fn install_fast_path(&mut self, entry: &FastPathEntry) {
        if let Some(k) = &mut self.kernel {
            k.install(entry);
        }
    }

    fn remove_fast_path(&mut self, entry: &FastPathEntry) {
        if let Some(k) = &mut self.kernel {
            k.remove(entry);
        }
    }

    fn end_fast_path(&mut self, alloc: u64) -> Option<KernelCounts> {
        self.kernel.as_mut()?.end(alloc)
    }

    fn bind_data_connection(&mut self, id: ConnectionId, data: &FiveTuple) {
        self.tcp.bind_data_connection(id, data);
    }
}

/// What a worker's UDP data path starts with: its listener sockets, the offloads the
/// kernel has, and the hand-over to the other workers (none with one worker).
pub(super) struct UdpSetup {
    pub(super) sockets: Vec<(SocketAddr, StdUdpSocket)>,
    pub(super) offload: Offload,
    pub(super) handover: Option<Arc<Handover>>,
    pub(super) kernel: Option<Arc<crate::net::xdp::KernelPath>>,
}

pub(super) fn run_worker(
    index: usize,
    udp: UdpSetup,
    cfg: ServerConfig,
    mut stop: watch::Receiver<bool>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    streams: streams::WorkerStreams,
) {
    let UdpSetup {
        sockets,
        offload,
        handover,
        kernel,
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
                leases: None,
                kernel: kernel.map(WorkerKernel::new),
            },
        }));
        tokio::task::spawn_local(udp::udp_loop(Rc::downgrade(&state), epoll, offload.gro));
        tcp::spawn_listeners(&state, streams);
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
        w.core.close_all(now().mono, &mut w.io);
        w.io.flush();
        w.io.relays.clear();
    });
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
pub(super) fn deliver_handover(w: &mut Worker, budget: usize) -> bool {
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
    let mut credited = Instant::now();
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
        if let Some(k) = &w.io.kernel
            && credited.elapsed() >= MAX_TIMER_SLEEP
        {
            // What the kernel relayed joins the allocations' counters once a second (the
            // timer's longest sleep), however often the timers fire.
            credited = Instant::now();
            w.core.credit_kernel_counts(|alloc| k.read(alloc));
        }
    }
}
