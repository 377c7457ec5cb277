//! TCP and TLS client connections ([RFC 8656 §3.1](https://www.rfc-editor.org/rfc/rfc8656#section-3.1)):
//! accept, PROXY v2, TLS handshake, framing, bounded write queues, limits and timeouts.
//!
//! Each worker owns one SO_REUSEPORT listener per stream address, so a connection, the
//! allocation made on it and that allocation's relay live on the worker that accepted it. A
//! connection is two tasks on the worker's LocalSet: the reader cuts frames out of the byte
//! stream ([`crate::stun::framing`]) and hands them to the core; the writer drains a bounded
//! per-connection queue that [`crate::turn::Io::send_to_client`] appends to. When the
//! connection closes, its allocation ends (RFC 8656 §3.1: the allocation is bound to it).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::tls::CertStore;
use super::udp::{Job, Worker};
use super::{now, proxy};
use crate::config::Config;
use crate::stun::framing::{Frame, next_frame};
use crate::turn::{ConnectionId, FiveTuple, RelayId, Transport, client_ip_key};

/// Room for the largest STUN message (20 + 65532) or ChannelData (4 + 65535 + pad): the
/// most a connection's read buffer grows to.
const READ_BUF: usize = 65_536 + 64;
/// A connection's read buffer to begin with, and what it shrinks back to; it grows with the
/// bytes that arrive (see [`read_buf_len`]), never with the length a header announces.
const READ_BUF_START: usize = 4096;
/// How long a closing connection may take to flush what is queued for it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Pause after a failed accept (EMFILE and the like), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// TLS record content type "handshake": the first byte of a ClientHello (RFC 8446 §5.1).
const TLS_HANDSHAKE: u8 = 0x16;

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
    open: AtomicUsize,
    /// Open connections past setup, by transport: [TCP, TLS].
    open_by_transport: [AtomicUsize; 2],
    per_ip: Mutex<HashMap<IpAddr, usize>>,
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
    fn acquire_total(self: &Arc<Shared>) -> Option<TotalSlot> {
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
    fn acquire_ip(self: &Arc<Shared>, ip: IpAddr) -> Option<IpSlot> {
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
    fn open_as(self: &Arc<Shared>, transport: Transport) -> TransportSlot {
        let i = usize::from(transport == Transport::Tls);
        self.open_by_transport[i].fetch_add(1, Ordering::AcqRel);
        TransportSlot(self.clone(), i)
    }
}

struct TransportSlot(Arc<Shared>, usize);

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

struct TotalSlot(Arc<Shared>);

impl Drop for TotalSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

struct IpSlot(Arc<Shared>, IpAddr);

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
    buf: RefCell<Vec<u8>>,
    cap: usize,
    wake: Notify,
    closing: Cell<bool>,
    drops: Cell<u64>,
    active: Cell<Instant>,
    /// A ConnectionBind from this connection waits for its answer: read nothing more.
    pub(super) claiming: Cell<bool>,
    /// The peer data connection to join once the ConnectionBind succeeded.
    pub(super) handoff: RefCell<Option<(ConnectionId, std::net::TcpStream)>>,
    /// Wakes the reader when `claiming` or `handoff` change.
    pub(super) reader_wake: Notify,
    /// Hand the stream back instead of shutting it down when closing.
    keep_open: Cell<bool>,
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
    fn queued(&self) -> usize {
        self.buf.borrow().len()
    }

    pub fn drops(&self) -> u64 {
        self.drops.get()
    }

    fn touch(&self) {
        self.active.set(Instant::now());
    }

    fn close(&self) {
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

/// A TCP listener bound with SO_REUSEPORT so each worker can hold its own.
pub(crate) fn reuseport_tcp(addr: SocketAddr) -> io::Result<StdTcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Starts the accept loops of one worker's stream listeners.
pub(super) fn spawn_listeners(state: &Rc<RefCell<Worker>>, streams: WorkerStreams) {
    {
        let mut g = state.borrow_mut();
        g.core.set_worker_index(streams.index);
        let t = &mut g.io.tcp;
        t.shared = Some(streams.shared.clone());
        t.me = Rc::downgrade(state);
        t.index = streams.index;
        t.jobs = streams.jobs;
    }
    for (addr, l, transport) in streams.listeners {
        match TcpListener::from_std(l) {
            Ok(l) => {
                tokio::task::spawn_local(accept_loop(
                    Rc::downgrade(state),
                    streams.shared.clone(),
                    l,
                    addr,
                    transport,
                ));
            }
            Err(e) => warn!(%addr, error = %e, "cannot register stream listener"),
        }
    }
}

async fn accept_loop(
    state: Weak<RefCell<Worker>>,
    shared: Arc<Shared>,
    listener: TcpListener,
    local: SocketAddr,
    transport: Transport,
) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!(%local, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if state.strong_count() == 0 {
            return;
        }
        let Some(slot) = shared.acquire_total() else {
            debug!(%peer, "connection refused: tcp.max-connections reached");
            continue;
        };
        shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = sock.set_nodelay(true);
        tokio::task::spawn_local(connection(
            state.clone(),
            shared.clone(),
            sock,
            peer,
            local,
            transport,
            slot,
        ));
    }
}

/// Why a connection ended, for the log.
#[derive(Debug)]
enum End {
    /// ConnectionBind succeeded: join with this peer connection, after these bytes.
    Splice(ConnectionId, std::net::TcpStream, Vec<u8>),
    Closed,
    Error,
    Broken,
    Unauthenticated,
    Idle,
    Shutdown,
}

/// One accepted connection: PROXY header, TLS or plain, then the frame loop.
async fn connection(
    state: Weak<RefCell<Worker>>,
    shared: Arc<Shared>,
    mut sock: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    listener: Transport,
    _slot: TotalSlot,
) {
    let hs = shared.cfg.handshake_timeout;
    // Without PROXY the peer is the client: count it before waiting for any byte, so that
    // connections stalled before their first byte (a mux port's peek) count against
    // tcp.max-connections-per-ip too. With PROXY the client is known only after the header.
    let early_slot = if shared.cfg.proxy_protocol {
        None
    } else {
        match shared.acquire_ip(peer.ip()) {
            Some(s) => Some(s),
            None => {
                debug!(%peer, "connection refused: tcp.max-connections-per-ip reached");
                return;
            }
        }
    };
    let setup = async {
        let client = if shared.cfg.proxy_protocol {
            proxy::read_header(&mut sock).await?.unwrap_or(peer)
        } else {
            peer
        };
        let transport = if shared.cfg.mux && shared.certs.is_some() {
            let mut first = [0u8; 1];
            if sock.peek(&mut first).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if first[0] == TLS_HANDSHAKE {
                Transport::Tls
            } else {
                Transport::Tcp
            }
        } else {
            listener
        };
        Ok::<_, io::Error>((client, transport))
    };
    let (client, transport) = match tokio::time::timeout(hs, setup).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            shared
                .stats
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            debug!(%peer, error = %e, "connection setup failed");
            return;
        }
        Err(_) => {
            shared
                .stats
                .handshake_timeouts
                .fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "connection setup timed out");
            return;
        }
    };
    let Some(_ip_slot) = early_slot.or_else(|| shared.acquire_ip(client.ip())) else {
        debug!(%client, "connection refused: tcp.max-connections-per-ip reached");
        return;
    };
    let _open = shared.open_as(transport);
    let ft = FiveTuple {
        client,
        server: local,
        transport,
    };
    if transport == Transport::Tls {
        let Some(certs) = &shared.certs else {
            return;
        };
        let acceptor = TlsAcceptor::from(certs.current());
        match tokio::time::timeout(hs, acceptor.accept(sock)).await {
            Ok(Ok(tls)) => serve(state, &shared, ft, tls).await,
            Ok(Err(e)) => {
                shared
                    .stats
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                debug!(%client, error = %e, "TLS handshake failed");
            }
            Err(_) => {
                shared
                    .stats
                    .handshake_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                debug!(%client, "TLS handshake timed out (tls.handshake-timeout)");
            }
        }
    } else {
        serve(state, &shared, ft, sock).await;
    }
}

/// Runs a connection's reader here and its writer in a task until either ends, then ends
/// the allocation bound to it.
async fn serve<S>(state: Weak<RefCell<Worker>>, shared: &Arc<Shared>, ft: FiveTuple, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let outbox = Rc::new(Outbox::new(shared.cfg.write_queue));
    {
        let Some(st) = state.upgrade() else {
            return;
        };
        let mut g = st.borrow_mut();
        if g.io.tcp.conns.contains_key(&ft) {
            debug!(client = %ft.client, "connection refused: 5-tuple already in use");
            return;
        }
        g.io.tcp.conns.insert(ft, outbox.clone());
    }
    let (mut rd, wr) = tokio::io::split(stream);
    let writer = tokio::task::spawn_local(write_loop(wr, outbox.clone()));
    let end = read_loop(&state, shared, &ft, &mut rd, &outbox).await;
    if let End::Splice(id, peer, leftover) = end {
        if let Some(st) = state.upgrade() {
            st.borrow_mut().io.tcp.conns.remove(&ft);
        }
        outbox.keep_open.set(true);
        outbox.close();
        let abort = writer.abort_handle();
        match tokio::time::timeout(CLOSE_GRACE, writer).await {
            Ok(Ok(wr)) => {
                let stream = rd.unsplit(wr);
                super::relay_tcp::run_splice(&state, id, stream, peer, leftover).await;
            }
            _ => {
                abort.abort();
                if let Some(st) = state.upgrade() {
                    st.borrow_mut().io.tcp.notify_closed(id);
                }
            }
        }
        debug!(client = %ft.client, id, "data connection closed");
        return;
    }
    match end {
        End::Unauthenticated => {
            shared.stats.auth_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        End::Idle => {
            shared.stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    if let Some(st) = state.upgrade() {
        let mut g = st.borrow_mut();
        let w = &mut *g;
        w.io.tcp.conns.remove(&ft);
        w.core.close_tuple(&ft, &mut w.io);
    }
    outbox.close();
    let abort = writer.abort_handle();
    if tokio::time::timeout(CLOSE_GRACE, writer).await.is_err() {
        abort.abort();
    }
    debug!(
        client = %ft.client,
        transport = ft.transport.as_str(),
        reason = ?end,
        dropped = outbox.drops(),
        "connection closed"
    );
}

/// Reads and dispatches frames until the stream ends, breaks, or a timeout fires:
/// `tcp.auth-timeout` until the connection holds an allocation, then `tcp.idle-timeout`
/// without a byte either way.
async fn read_loop<R: AsyncRead + Unpin>(
    state: &Weak<RefCell<Worker>>,
    shared: &Shared,
    ft: &FiveTuple,
    rd: &mut R,
    outbox: &Outbox,
) -> End {
    let mut buf = vec![0u8; READ_BUF_START];
    let mut filled = 0;
    let opened = Instant::now();
    let mut authed = false;
    loop {
        let mut start = 0;
        let mut need = 0;
        while !outbox.claiming.get() {
            match next_frame(&buf[start..filled]) {
                Frame::Complete(len) => {
                    let Some(st) = state.upgrade() else {
                        return End::Shutdown;
                    };
                    let mut g = st.borrow_mut();
                    let w = &mut *g;
                    // One frame, one batch: its datagram to another allocation of the
                    // server skips the kernel, as from a UDP client.
                    super::udp::begin_batch(w);
                    w.core
                        .handle_client(now(), *ft, &buf[start..start + len], &mut w.io);
                    super::udp::end_batch(w);
                    if !authed {
                        authed = w.core.counters(ft).is_some();
                    }
                    start += len;
                }
                Frame::NeedMore(total) if total <= READ_BUF => {
                    need = total;
                    break;
                }
                Frame::NeedMore(_) | Frame::Invalid => return End::Broken,
            }
        }
        if start > 0 {
            buf.copy_within(start..filled, 0);
            filled -= start;
        }
        let len = read_buf_len(buf.len(), filled, need);
        if len != buf.len() {
            buf.resize(len, 0);
            buf.shrink_to_fit();
        }
        if outbox.claiming.get() {
            // RFC 6062 §5.4: after ConnectionBind the stream carries the peer's bytes, not
            // STUN; wait for the answer before reading on.
            let limit = Instant::now() + shared.cfg.auth_timeout;
            tokio::select! {
                _ = outbox.reader_wake.notified() => {}
                _ = tokio::time::sleep_until(limit.into()) => return End::Unauthenticated,
            }
            if let Some((id, peer)) = outbox.handoff.borrow_mut().take() {
                return End::Splice(id, peer, buf[..filled].to_vec());
            }
            continue;
        }
        let deadline = if authed {
            outbox.active.get() + shared.cfg.idle_timeout
        } else {
            opened + shared.cfg.auth_timeout
        };
        let n = tokio::select! {
            r = rd.read(&mut buf[filled..]) => match r {
                Ok(0) => return End::Closed,
                Ok(n) => n,
                Err(_) => return End::Error,
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                if !authed {
                    return End::Unauthenticated;
                }
                if outbox.active.get() + shared.cfg.idle_timeout <= Instant::now() {
                    return End::Idle;
                }
                continue;
            }
        };
        outbox.touch();
        filled += n;
    }
}

/// The length a connection's read buffer of `len` bytes, `filled` of them with the start of
/// a frame that needs `need` bytes in all, should have before the next read. It doubles
/// (up to `need`) only once it is full, so the memory a connection holds follows the bytes
/// it has sent: a header announcing 65,532 bytes costs [`READ_BUF_START`], not 64 KiB. It
/// goes back to [`READ_BUF_START`] once what it holds and the frame it waits for fit there.
fn read_buf_len(len: usize, filled: usize, need: usize) -> usize {
    if filled >= len && need > len {
        return len.saturating_mul(2).clamp(READ_BUF_START, need);
    }
    if len > READ_BUF_START && filled <= READ_BUF_START && need <= READ_BUF_START {
        return READ_BUF_START;
    }
    len
}

/// Drains the outbox into the stream; ends when the outbox is closed and empty or a write
/// fails. At most two buffers of `cap` bytes exist per connection.
async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, outbox: Rc<Outbox>) -> W {
    let mut spare = Vec::new();
    loop {
        if outbox.buf.borrow().is_empty() {
            if outbox.closing.get() {
                if !outbox.keep_open.get() {
                    let _ = wr.shutdown().await;
                }
                break;
            }
            outbox.wake.notified().await;
            continue;
        }
        std::mem::swap(&mut *outbox.buf.borrow_mut(), &mut spare);
        if wr.write_all(&spare).await.is_err() || wr.flush().await.is_err() {
            outbox.closing.set(true);
            break;
        }
        outbox.touch();
        spare.clear();
    }
    wr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_is_bounded_and_counts_drops() {
        let o = Outbox::new(10);
        assert!(o.push(&[1; 6]));
        assert!(!o.push(&[2; 6]), "would pass the cap");
        assert!(o.push(&[3; 4]));
        assert_eq!(o.queued(), 10);
        assert!(!o.push(&[4]));
        assert_eq!(o.drops(), 2);
        o.close();
        assert!(!o.push(&[5]), "nothing is queued after close");
        assert_eq!(o.queued(), 10);
    }

    #[test]
    fn read_buffer_grows_with_bytes_received_and_shrinks_back() {
        const BIG: usize = 20 + 65_532;
        // A header announcing the largest message: no growth until the buffer is full.
        assert_eq!(read_buf_len(READ_BUF_START, 20, BIG), READ_BUF_START);
        assert_eq!(read_buf_len(READ_BUF_START, 4000, BIG), READ_BUF_START);
        // Full: doubles, and never past the frame.
        let mut len = READ_BUF_START;
        let mut steps = Vec::new();
        while len < BIG {
            len = read_buf_len(len, len, BIG);
            steps.push(len);
        }
        assert_eq!(steps, [8192, 16_384, 32_768, 65_536, BIG]);
        assert_eq!(read_buf_len(READ_BUF_START, READ_BUF_START, 5000), 5000);
        // A frame that fits needs no growth even when the buffer is full of a smaller one.
        assert_eq!(
            read_buf_len(READ_BUF_START, READ_BUF_START, READ_BUF_START),
            READ_BUF_START
        );
        // After the big frame: back to the start size once the rest fits there.
        assert_eq!(read_buf_len(BIG, 0, 4), READ_BUF_START);
        assert_eq!(read_buf_len(BIG, 100, 1500), READ_BUF_START);
        // Not while a large frame is still coming in, or more than the start size is held.
        assert_eq!(read_buf_len(BIG, 100, 9000), BIG);
        assert_eq!(read_buf_len(BIG, 5000, 9000), BIG);
    }

    fn cfg(total: usize, per_ip: usize) -> StreamConfig {
        StreamConfig {
            max_connections: total,
            max_per_ip: per_ip,
            auth_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            write_queue: 65_600,
            proxy_protocol: false,
            mux: false,
            connect_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn connection_slots_are_capped_and_released() {
        let s = Shared::new(cfg(2, 1), None);
        let a = s.acquire_total().unwrap();
        let _b = s.acquire_total().unwrap();
        assert!(s.acquire_total().is_none());
        drop(a);
        assert!(s.acquire_total().is_some());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let x = s.acquire_ip(ip).unwrap();
        assert!(
            s.acquire_ip(mapped).is_none(),
            "mapped IPv6 counts as the IPv4"
        );
        assert!(s.acquire_ip("192.0.2.2".parse().unwrap()).is_some());
        drop(x);
        assert!(s.acquire_ip(ip).is_some());
        assert_eq!(s.stats.refused_total.load(Ordering::Relaxed), 1);
        assert_eq!(s.stats.refused_per_ip.load(Ordering::Relaxed), 1);
        // IPv6 clients count by their /64.
        let v6 = Shared::new(cfg(0, 2), None);
        let a = v6.acquire_ip("2001:db8:1:2::1".parse().unwrap()).unwrap();
        let _b = v6
            .acquire_ip("2001:db8:1:2:ffff::9".parse().unwrap())
            .unwrap();
        assert!(
            v6.acquire_ip("2001:db8:1:2::3".parse().unwrap()).is_none(),
            "a third address of the same /64 is over the cap"
        );
        assert!(
            v6.acquire_ip("2001:db8:1:3::1".parse().unwrap()).is_some(),
            "another /64 has its own count"
        );
        drop(a);
        assert!(v6.acquire_ip("2001:db8:1:2::3".parse().unwrap()).is_some());
        let unlimited = Shared::new(cfg(0, 0), None);
        let held: Vec<_> = (0..100).filter_map(|_| unlimited.acquire_total()).collect();
        assert_eq!(held.len(), 100);
    }
}
