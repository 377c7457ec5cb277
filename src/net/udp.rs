//! One worker: a current-thread runtime running the listener, relay and timer tasks around
//! one sans-IO [`Server`].

use std::cell::RefCell;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, LocalSet};
use tracing::{debug, error, warn};

use super::now;
use crate::turn::{
    BindError, ConnectionId, FiveTuple, Io, PEER_HEADROOM, PEER_TAILROOM, RelayId, RelayOptions,
    Server, ServerConfig, Transport,
};

/// Largest UDP payload plus room to write a header in place.
const RELAY_BUF: usize = PEER_HEADROOM + 65536 + PEER_TAILROOM;
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
    listeners: FxHashMap<SocketAddr, Rc<UdpSocket>>,
    relays: FxHashMap<RelayId, (Rc<UdpSocket>, AbortHandle)>,
    me: Weak<RefCell<Worker>>,
    send_drops: u64,
    /// TCP and TLS client connections (src/net/tcp.rs).
    pub(super) tcp: super::tcp::TcpIo,
}

impl DriverIo {
    /// Datagrams the kernel refused (full socket buffer), to clients and peers.
    pub(crate) fn send_drops(&self) -> u64 {
        self.send_drops
    }
}

impl Io for DriverIo {
    fn send_to_client(&mut self, to: &FiveTuple, data: &[u8]) {
        if to.transport != Transport::Udp {
            self.tcp.send(to, data);
            return;
        }
        if let Some(s) = self.listeners.get(&to.server)
            && send_now(s, data, to.client).is_err()
        {
            self.send_drops += 1;
        }
    }

    fn send_to_peer(&mut self, relay: RelayId, peer: SocketAddr, data: &[u8]) {
        if let Some((s, _)) = self.relays.get(&relay)
            && send_now(s, data, peer).is_err()
        {
            self.send_drops += 1;
        }
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
        let sock = match UdpSocket::from_std(sock) {
            Ok(s) => Rc::new(s),
            Err(e) => {
                warn!(%addr, error = %e, "cannot register relay socket");
                return Err(BindError::Other);
            }
        };
        let task = tokio::task::spawn_local(relay_loop(self.me.clone(), sock.clone(), relay));
        self.relays.insert(relay, (sock, task.abort_handle()));
        Ok(())
    }

    fn close_relay(&mut self, relay: RelayId) {
        if let Some((_, task)) = self.relays.remove(&relay) {
            task.abort();
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

/// One non-blocking `sendto`, straight to the kernel. tokio's `try_send_to` answers
/// WouldBlock until its reactor has seen the socket writable, which for a relay socket opened
/// a moment ago (or after one full buffer) is only after the worker next parks: the first
/// datagrams to a new peer were being dropped. A full kernel buffer still drops, as UDP does.
fn send_now(sock: &UdpSocket, data: &[u8], to: SocketAddr) -> std::io::Result<usize> {
    socket2::SockRef::from(sock).send_to(data, &to.into())
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

pub(super) fn run_worker(
    index: usize,
    sockets: Vec<(SocketAddr, StdUdpSocket)>,
    cfg: ServerConfig,
    mut stop: watch::Receiver<bool>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    streams: super::tcp::WorkerStreams,
) {
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
        let state = Rc::new(RefCell::new(Worker {
            core: Server::new(cfg),
            io: DriverIo {
                listeners: FxHashMap::default(),
                relays: FxHashMap::default(),
                me: Weak::new(),
                send_drops: 0,
                tcp: Default::default(),
            },
        }));
        state.borrow_mut().io.me = Rc::downgrade(&state);
        for (addr, s) in sockets {
            match UdpSocket::from_std(s) {
                Ok(s) => {
                    let s = Rc::new(s);
                    state.borrow_mut().io.listeners.insert(addr, s.clone());
                    tokio::task::spawn_local(listener_loop(Rc::downgrade(&state), s, addr));
                }
                Err(e) => error!(worker = index, %addr, error = %e, "cannot register listener"),
            }
        }
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
        for (_, (_, task)) in w.io.relays.drain() {
            task.abort();
        }
    });
}

async fn listener_loop(state: Weak<RefCell<Worker>>, sock: Rc<UdpSocket>, local: SocketAddr) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                debug!(%local, error = %e, "recv failed");
                continue;
            }
        };
        let Some(state) = state.upgrade() else {
            return;
        };
        let mut g = state.borrow_mut();
        let w = &mut *g;
        let ft = FiveTuple {
            client: from,
            server: local,
            transport: Transport::Udp,
        };
        w.core.handle_client(now(), ft, &buf[..n], &mut w.io);
    }
}

async fn relay_loop(state: Weak<RefCell<Worker>>, sock: Rc<UdpSocket>, relay: RelayId) {
    let mut buf = vec![0u8; RELAY_BUF];
    let end = RELAY_BUF - PEER_TAILROOM;
    loop {
        let (n, from) = match sock.recv_from(&mut buf[PEER_HEADROOM..end]).await {
            Ok(x) => x,
            Err(e) => {
                debug!(?relay, error = %e, "relay recv failed");
                continue;
            }
        };
        let Some(state) = state.upgrade() else {
            return;
        };
        let mut g = state.borrow_mut();
        let w = &mut *g;
        w.core.handle_peer(
            now(),
            relay,
            from,
            &mut buf,
            PEER_HEADROOM..PEER_HEADROOM + n,
            &mut w.io,
        );
    }
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
