//! The state a worker's stream transports share: the client connections by 5-tuple with
//! their bounded write queues ([`Outbox`]), the RFC 6062 peer connections and splices
//! ([`TcpIo`], the stream side of the driver `Io`), and the settings, limits and counters
//! shared by all workers ([`Shared`]). [`super::tcp`] (client connections) and
//! [`super::relay_tcp`] (peer connections) both work on it, and on nothing of each other.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;

use super::{Job, Worker};
use crate::config::Config;
use crate::net::CertStore;
use crate::turn::{ConnectionId, FiveTuple, RelayId, Transport, client_ip_key};

/// Stream settings from `[tcp]` and `[tls]`.
#[derive(Clone, Debug)]
pub(crate) struct StreamConfig {
    pub max_connections: usize,
    pub max_per_ip: usize,
    pub auth_timeout: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub write_queue: usize,
    pub proxy_protocol: bool,
    pub mux: bool,
    /// RFC 6062 §5.2: how long an outgoing Connect may take (at least 30 s by default).
    pub connect_timeout: Duration,
}

impl StreamConfig {
    pub fn from_config(cfg: &Config) -> StreamConfig {
        StreamConfig {
            max_connections: cfg.tcp.max_connections,
            max_per_ip: cfg.tcp.max_connections_per_ip,
            auth_timeout: Duration::from_secs(cfg.tcp.auth_timeout),
            idle_timeout: Duration::from_secs(cfg.tcp.idle_timeout),
            handshake_timeout: Duration::from_secs(cfg.tls.handshake_timeout),
            write_queue: cfg.tcp.write_queue_bytes,
            proxy_protocol: cfg.tcp.proxy_protocol,
            mux: cfg.tls.mux,
            connect_timeout: Duration::from_secs(cfg.tcp.connect_timeout),
        }
    }
}

/// Server-wide stream counters (plain atomics, touched per connection, not per packet).
#[derive(Debug, Default)]
pub struct StreamStats {
    pub accepted: AtomicU64,
    pub refused_total: AtomicU64,
    pub refused_per_ip: AtomicU64,
    pub handshake_failures: AtomicU64,
    /// PROXY header or TLS handshake not done within `tls.handshake-timeout`.
    pub handshake_timeouts: AtomicU64,
    pub auth_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    pub queue_drops: AtomicU64,
}

/// What every worker's stream side shares: settings, certificates, connection counts.
pub(crate) struct Shared {
    pub cfg: StreamConfig,
    pub certs: Option<Arc<CertStore>>,
    pub stats: StreamStats,
    pub(super) open: AtomicUsize,
    /// Open connections past setup, by transport: [TCP, TLS].
    pub(super) open_by_transport: [AtomicUsize; 2],
    pub(super) per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Shared {
    pub fn new(cfg: StreamConfig, certs: Option<Arc<CertStore>>) -> Arc<Shared> {
        Arc::new(Shared {
            cfg,
            certs,
            stats: StreamStats::default(),
            open: AtomicUsize::new(0),
            open_by_transport: [AtomicUsize::new(0), AtomicUsize::new(0)],
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// A slot under `tcp.max-connections`, held until dropped.
    pub(super) fn acquire_total(self: &Arc<Shared>) -> Option<TotalSlot> {
        let max = self.cfg.max_connections;
        let prev = self.open.fetch_add(1, Ordering::AcqRel);
        if max != 0 && prev >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.stats.refused_total.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(TotalSlot(self.clone()))
    }

    /// A slot under `tcp.max-connections-per-ip`, held until dropped. IPv6 clients count by
    /// their /64, as every other per-IP limit ([`client_ip_key`]).
    pub(super) fn acquire_ip(self: &Arc<Shared>, ip: IpAddr) -> Option<IpSlot> {
        let ip = client_ip_key(ip);
        let max = self.cfg.max_per_ip;
        let mut m = match self.per_ip.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let n = m.entry(ip).or_insert(0);
        if max != 0 && *n >= max {
            drop(m);
            self.stats.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(IpSlot(self.clone(), ip))
    }

    /// Open client connections now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Counts a connection as open over `transport` until the slot is dropped.
    pub(super) fn open_as(self: &Arc<Shared>, transport: Transport) -> TransportSlot {
        let i = usize::from(transport == Transport::Tls);
        self.open_by_transport[i].fetch_add(1, Ordering::AcqRel);
        TransportSlot(self.clone(), i)
    }
}

pub(super) struct TransportSlot(pub(super) Arc<Shared>, usize);

impl Drop for TransportSlot {
    fn drop(&mut self) {
        if let Some(n) = self.0.open_by_transport.get(self.1) {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The stream counters at one moment, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamSnapshot {
    /// Open client connections past setup (PROXY header, transport detection).
    pub open_tcp: u64,
    pub open_tls: u64,
    pub accepted: u64,
    /// Refused by `tcp.max-connections`.
    pub refused_total: u64,
    /// Refused by `tcp.max-connections-per-ip`.
    pub refused_per_ip: u64,
    /// Failed PROXY headers and TLS handshakes (timeouts not included).
    pub handshake_failures: u64,
    pub handshake_timeouts: u64,
    pub auth_timeouts: u64,
    pub idle_timeouts: u64,
    /// Messages dropped because a client's write queue was full.
    pub queue_drops: u64,
}

/// A handle on the server-wide stream counters, cheap to clone and to read from any thread.
#[derive(Clone)]
pub struct StreamMetrics(Arc<Shared>);

impl StreamMetrics {
    pub(crate) fn new(shared: Arc<Shared>) -> StreamMetrics {
        StreamMetrics(shared)
    }

    pub fn snapshot(&self) -> StreamSnapshot {
        let s = &self.0;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let open = |i: usize| s.open_by_transport[i].load(Ordering::Acquire) as u64;
        StreamSnapshot {
            open_tcp: open(0),
            open_tls: open(1),
            accepted: n(&s.stats.accepted),
            refused_total: n(&s.stats.refused_total),
            refused_per_ip: n(&s.stats.refused_per_ip),
            handshake_failures: n(&s.stats.handshake_failures),
            handshake_timeouts: n(&s.stats.handshake_timeouts),
            auth_timeouts: n(&s.stats.auth_timeouts),
            idle_timeouts: n(&s.stats.idle_timeouts),
            queue_drops: n(&s.stats.queue_drops),
        }
    }
}

pub(super) struct TotalSlot(pub(super) Arc<Shared>);

impl Drop for TotalSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(super) struct IpSlot(pub(super) Arc<Shared>, IpAddr);

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = match self.0.per_ip.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = m.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// The bytes waiting to be written to one client, at most `cap` of them. A message that does
/// not fit is dropped whole (the stream stays in frame) and counted.
pub(crate) struct Outbox {
    pub(super) buf: RefCell<Vec<u8>>,
    pub(super) cap: usize,
    pub(super) wake: Notify,
    pub(super) closing: Cell<bool>,
    pub(super) drops: Cell<u64>,
    pub(super) active: Cell<Instant>,
    /// A ConnectionBind from this connection waits for its answer: read nothing more.
    pub(super) claiming: Cell<bool>,
    /// The peer data connection to join once the ConnectionBind succeeded.
    pub(super) handoff: RefCell<Option<(ConnectionId, std::net::TcpStream)>>,
    /// Wakes the reader when `claiming` or `handoff` change.
    pub(super) reader_wake: Notify,
    /// Hand the stream back instead of shutting it down when closing.
    pub(super) keep_open: Cell<bool>,
}

impl Outbox {
    pub fn new(cap: usize) -> Outbox {
        Outbox {
            buf: RefCell::new(Vec::new()),
            cap,
            wake: Notify::new(),
            closing: Cell::new(false),
            drops: Cell::new(0),
            active: Cell::new(Instant::now()),
            claiming: Cell::new(false),
            handoff: RefCell::new(None),
            reader_wake: Notify::new(),
            keep_open: Cell::new(false),
        }
    }

    /// Queues one whole message; false (and counted) when it does not fit.
    pub fn push(&self, data: &[u8]) -> bool {
        let mut b = self.buf.borrow_mut();
        if self.closing.get() || b.len() + data.len() > self.cap {
            self.drops.set(self.drops.get() + 1);
            return false;
        }
        b.extend_from_slice(data);
        drop(b);
        self.wake.notify_one();
        true
    }

    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.buf.borrow().len()
    }

    pub fn drops(&self) -> u64 {
        self.drops.get()
    }

    pub(super) fn touch(&self) {
        self.active.set(Instant::now());
    }

    pub(super) fn close(&self) {
        self.closing.set(true);
        self.wake.notify_one();
    }
}

/// The worker's stream side of the sans-IO [`crate::turn::Io`]: client connections by 5-tuple.
#[derive(Default)]
pub(crate) struct TcpIo {
    pub(super) conns: FxHashMap<FiveTuple, Rc<Outbox>>,
    pub(super) shared: Option<Arc<Shared>>,
    /// Messages dropped because a client's write queue was full.
    pub dropped: u64,
    pub(super) me: Weak<RefCell<Worker>>,
    pub(super) index: usize,
    /// Every worker's job queue, by worker index (RFC 6062 ids name their worker).
    pub(super) jobs: Vec<mpsc::UnboundedSender<Job>>,
    /// RFC 6062 relay listeners by relay.
    pub(super) relay_listeners: FxHashMap<RelayId, AbortHandle>,
    /// Peer data connections waiting for ConnectionBind (not read: the kernel buffers).
    pub(super) pending_peers: FxHashMap<ConnectionId, TcpStream>,
    /// Connect attempts under way.
    pub(super) connecting: FxHashMap<ConnectionId, AbortHandle>,
    /// Peer connections handed to the worker that holds their client data connection.
    pub(super) moved: FxHashMap<ConnectionId, usize>,
    /// Joined data connections running on this worker.
    pub(super) splices: FxHashMap<ConnectionId, AbortHandle>,
    /// Peer connections handed over for a ConnectionBind, by client data connection.
    pub(super) arriving: FxHashMap<FiveTuple, (ConnectionId, std::net::TcpStream)>,
}

impl TcpIo {
    /// Queues a message for a stream client; dropped (and counted) when its queue is full.
    pub fn send(&mut self, to: &FiveTuple, data: &[u8]) {
        if let Some(o) = self.conns.get(to)
            && !o.push(data)
        {
            self.dropped += 1;
            if let Some(s) = &self.shared {
                s.stats.queue_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One worker's stream listeners, bound before the workers start.
pub(crate) struct WorkerStreams {
    pub listeners: Vec<(SocketAddr, StdTcpListener, Transport)>,
    pub shared: Arc<Shared>,
    pub index: usize,
    pub jobs: Vec<mpsc::UnboundedSender<Job>>,
}
