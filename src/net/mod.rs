//! The tokio side: sockets, worker threads, the clock.
//!
//! One worker per core. Each worker is a thread with a single-threaded runtime that owns one
//! SO_REUSEPORT socket per UDP listen address, a [`Server`] (the sans-IO core) and the relay
//! sockets of the allocations the kernel's 4-tuple hash sends its way. The packet path takes
//! no lock and stays on its worker, with one exception that takes no lock either: a datagram
//! from one allocation to another allocation of the server that lives on another worker is
//! handed to that worker through a bounded lock-free queue (`src/net/worker/handover.rs`) instead
//! of the kernel.
//!
//! Rooms: this module binds the listeners, starts the workers and holds [`Control`];
//! `worker` is one worker (run loop, driver `Io`, timers, jobs) with its transports as
//! children (`udp`, `tcp`, `relay_tcp`, and `streams`, the state the stream transports share);
//! `batch` is the batched UDP I/O by job (receive, send queue, io_uring ring); [`tls`] the
//! certificate store and [`proxy`] the PROXY v2 parser the TCP transport uses.

mod batch;
pub mod proxy;
pub mod tls;
mod worker;
pub mod xdp;
/// The workers' send queue, public for the benchmark floor (`tools/`, `turnd-floor --gso`),
/// which sends through it to pay the kernel exactly what turnd pays.
pub use batch::{Offload, SendQueue};
pub use worker::OffloadCounts;

pub(crate) use worker::{DriverIo, Job};

pub use tls::CertStore;
pub use worker::streams::{StreamMetrics, StreamSnapshot, StreamStats};

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::info;

use crate::config::{Config, DriverParts};
use crate::turn::quota::Quotas;
use crate::turn::{Reconfigure, Server, Time};

/// Socket buffer size asked for on listeners (the kernel caps it at net.core.*mem_max).
const LISTENER_BUFFER: usize = 4 << 20;

/// The driver's clock.
pub fn now() -> Time {
    Time {
        mono: std::time::Instant::now(),
        unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

/// A running server: its worker threads and the switch that stops them.
pub struct Running {
    workers: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    control: Control,
    pub listen: Vec<SocketAddr>,
    /// TLS listen addresses as bound (port 0 resolved).
    pub tls_listen: Vec<SocketAddr>,
    streams: Arc<worker::streams::Shared>,
    /// The kernel fast path, when `server.kernel-offload` loaded it.
    kernel: Option<Arc<xdp::KernelPath>>,
}

/// A handle that runs work on every worker thread, for the admin API, reload and drain.
/// Cheap to clone and usable from any thread.
#[derive(Clone)]
pub struct Control {
    workers: Vec<mpsc::UnboundedSender<Job>>,
    /// The key nonces are signed with; a reload keeps it so issued nonces stay valid.
    nonce_key: [u8; 32],
    quotas: Arc<Quotas>,
}

impl Control {
    /// Runs `f` once on each worker, with that worker's core and I/O, and returns the results
    /// in worker order. A worker that has already stopped contributes nothing.
    pub(crate) async fn on_each_worker<T, F>(&self, f: F) -> Vec<T>
    where
        T: Send + 'static,
        F: Fn(&mut Server, &mut DriverIo) -> T + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let mut replies = Vec::with_capacity(self.workers.len());
        for w in &self.workers {
            let (tx, rx) = oneshot::channel();
            let f = f.clone();
            let job: Job = Box::new(move |core, io| {
                let _ = tx.send(f(core, io));
            });
            if w.send(job).is_ok() {
                replies.push(rx);
            }
        }
        let mut out = Vec::with_capacity(replies.len());
        for rx in replies {
            if let Ok(v) = rx.await {
                out.push(v);
            }
        }
        out
    }

    /// Runs `f` on each worker with the worker's index, and returns the results in worker
    /// order, each with its index.
    pub(crate) async fn on_each_worker_indexed<T, F>(&self, f: F) -> Vec<(usize, T)>
    where
        T: Send + 'static,
        F: Fn(usize, &mut Server, &mut DriverIo) -> T + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let mut replies = Vec::with_capacity(self.workers.len());
        for (i, w) in self.workers.iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            let f = f.clone();
            let job: Job = Box::new(move |core, io| {
                let _ = tx.send(f(i, core, io));
            });
            if w.send(job).is_ok() {
                replies.push((i, rx));
            }
        }
        let mut out = Vec::with_capacity(replies.len());
        for (i, rx) in replies {
            if let Ok(v) = rx.await {
                out.push((i, v));
            }
        }
        out
    }

    /// Runs `f` on worker `index` only; None if there is no such worker or it has stopped.
    pub(crate) async fn on_worker<T, F>(&self, index: usize, f: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Server, &mut DriverIo) -> T + Send + 'static,
    {
        let w = self.workers.get(index)?;
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |core, io| {
            let _ = tx.send(f(core, io));
        });
        w.send(job).ok()?;
        rx.await.ok()
    }

    /// The allocation quotas shared by the workers.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// Live allocations over all workers.
    pub async fn allocation_count(&self) -> usize {
        self.on_each_worker(|core, _| core.allocation_count())
            .await
            .into_iter()
            .sum()
    }

    /// How many workers there are.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The nonce key of the running server, for building a reloaded [`Authenticator`].
    pub(crate) fn nonce_key(&self) -> [u8; 32] {
        self.nonce_key
    }

    /// Swaps reloaded settings into every worker's core (see [`Server::reconfigure`]).
    pub async fn reconfigure(&self, r: Reconfigure) {
        self.on_each_worker(move |core, _| core.reconfigure(r.clone()))
            .await;
    }

    /// Puts every worker into drain mode (see [`Server::drain`]).
    pub async fn drain(&self, alternates: Vec<SocketAddr>) {
        self.on_each_worker(move |core, _| core.drain(&alternates))
            .await;
    }
}

impl Running {
    /// A handle for running work on the workers.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The TLS certificate store, when TLS is served: `reload` it to renew the certificate
    /// for new connections (SIGHUP).
    pub fn tls_certs(&self) -> Option<Arc<CertStore>> {
        self.streams.certs.clone()
    }

    /// TCP/TLS connection counters over all workers.
    pub fn stream_stats(&self) -> &StreamStats {
        &self.streams.stats
    }

    /// Open TCP/TLS client connections over all workers.
    pub fn open_connections(&self) -> usize {
        self.streams.open_connections()
    }

    /// A handle on the TCP/TLS counters for the admin listener's `/metrics`.
    pub fn stream_metrics(&self) -> StreamMetrics {
        StreamMetrics::new(self.streams.clone())
    }

    /// The kernel fast path, when it is in use.
    pub fn kernel_path(&self) -> Option<Arc<xdp::KernelPath>> {
        self.kernel.clone()
    }

    /// Ends every allocation, closes every socket and joins the workers.
    pub fn shutdown(self) {
        let _ = self.stop.send(true);
        for w in self.workers {
            let _ = w.join();
        }
    }
}

fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(b)
}

/// Checks that nobody holds `addr` (UDP for `Type::DGRAM`, TCP for `Type::STREAM`; `name`
/// is the listener's transport, for the error), and returns it with port 0 resolved to a
/// free port.
///
/// The workers' listeners are SO_REUSEPORT sockets, and the kernel lets any process of the
/// same user join a SO_REUSEPORT group: a second turnd on the same address would start
/// silently and take a share of the clients (and of their ChannelData). So a probe socket
/// without SO_REUSEPORT is bound first: that fails with EADDRINUSE if any socket holds the
/// address, a SO_REUSEPORT group included. The probe is closed before the workers bind
/// (a socket without SO_REUSEPORT cannot be part of their group). The TCP probe sets
/// SO_REUSEADDR as the listeners do, so connections of a previous run in TIME_WAIT do not
/// block a restart; a listening socket still conflicts.
fn claim(addr: SocketAddr, ty: Type, name: &str) -> Result<SocketAddr, String> {
    let proto = if ty == Type::DGRAM {
        Protocol::UDP
    } else {
        Protocol::TCP
    };
    let probe = || -> io::Result<SocketAddr> {
        let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        if ty == Type::STREAM {
            s.set_reuse_address(true)?;
        }
        s.bind(&addr.into())?;
        s.local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP address"))
    };
    probe().map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            format!(
                "cannot listen on {name} {addr}: address already in use by another process \
                 (another turnd?); refusing to share it"
            )
        } else {
            format!("cannot listen on {name} {addr}: {e}")
        }
    })
}

/// A UDP socket bound with SO_REUSEPORT so each worker can hold its own.
fn reuseport_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    let _ = s.set_recv_buffer_size(LISTENER_BUFFER);
    let _ = s.set_send_buffer_size(LISTENER_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// The server's own addresses that must never be a peer: every bound listen address, and for a
/// listener on 0.0.0.0 or [::] its port on the relay and external IPs of that family.
fn own_addresses(
    listen: &[SocketAddr],
    cfg: &Config,
    relay_ips: &[Option<(IpAddr, IpAddr)>; 2],
) -> Vec<SocketAddr> {
    let mut own = Vec::new();
    for l in listen {
        own.push(*l);
        let same_family = |ip: &IpAddr| ip.is_ipv4() == l.is_ipv4() && !ip.is_unspecified();
        // Behind 1:1 NAT the external address forwards to the listener too.
        let external = cfg.relay.external_ips.iter().copied();
        own.extend(
            external
                .filter(same_family)
                .map(|ip| SocketAddr::new(ip, l.port())),
        );
        if l.ip().is_unspecified() {
            let ips = relay_ips
                .iter()
                .flatten()
                .flat_map(|(bind, adv)| [*bind, *adv])
                // Every relay address, when there are several of a family.
                .chain(cfg.relay_ips())
                .chain(cfg.server.listen.iter().map(SocketAddr::ip));
            own.extend(
                ips.filter(same_family)
                    .map(|ip| SocketAddr::new(ip, l.port())),
            );
        }
    }
    own
}

/// Loads and attaches the kernel fast path as `server.kernel-offload` asks: `off` does
/// nothing, `auto` logs why it cannot and goes on with sockets, `on` refuses to start.
fn start_kernel_path(
    mode: xdp::Mode,
    listen: &[SocketAddr],
    relay_ips: &[IpAddr],
) -> Result<Option<Arc<xdp::KernelPath>>, String> {
    if mode == xdp::Mode::Off {
        return Ok(None);
    }
    let addrs = xdp::offload_addresses(listen, relay_ips);
    match xdp::KernelPath::start(&addrs) {
        Ok(k) => {
            for a in k.attached() {
                info!(interface = %a.interface, mode = a.mode, "kernel offload attached (XDP)");
            }
            Ok(Some(Arc::new(k)))
        }
        Err(e) if mode == xdp::Mode::Auto => {
            tracing::warn!(reason = %e, "kernel offload not in use (server.kernel-offload = auto); relaying on sockets");
            Ok(None)
        }
        Err(e) => Err(format!("server.kernel-offload = on: {e}")),
    }
}

/// Binds every listener and starts the workers. Errors name what failed.
pub fn start(cfg: &Config) -> Result<Running, String> {
    let workers = match cfg.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let nonce_key = random_bytes::<32>().map_err(|e| format!("random: {e}"))?;
    let live = cfg.live_settings(nonce_key);
    let ports = Arc::new(Mutex::new(cfg.port_pool()));
    let quotas = Arc::new(cfg.quotas());
    let relay_ips = cfg.relay_addresses();

    // Every listen address must be free (see `claim`): checked for all of them before any
    // is bound, so two listeners of this server that overlap (a wildcard and a specific
    // address on one port) do not trip over each other. Port 0 is resolved here.
    let mut listen = Vec::new();
    for &addr in &cfg.server.listen {
        listen.push(claim(addr, Type::DGRAM, "udp")?);
    }
    let stream_plan = plan_streams(cfg, &listen)?;

    // Bind everything before starting anything, so a taken port fails the start.
    let mut sockets: Vec<Vec<(SocketAddr, UdpSocket)>> = (0..workers).map(|_| Vec::new()).collect();
    for &addr in &listen {
        for per_worker in sockets.iter_mut() {
            let s = reuseport_udp(addr).map_err(|e| format!("cannot listen on udp {addr}: {e}"))?;
            per_worker.push((addr, s));
        }
    }
    let (stream_listeners, tls_listen, streams) = bind_streams(cfg, &stream_plan, workers)?;

    // Every address turnd itself answers on: UDP/TCP and TLS listeners, and the admin API.
    let mut own_listen = listen.clone();
    own_listen.extend(&tls_listen);
    if cfg.admin.enabled {
        own_listen.push(cfg.admin.listen);
    }
    let own = own_addresses(&own_listen, cfg, &relay_ips);
    let unauth_limiter =
        Arc::new(cfg.unauth_limiter(random_bytes::<16>().map_err(|e| format!("random: {e}"))?));
    let mut offload = batch::Offload::probe(cfg.server.udp_io_uring);
    if !cfg.server.udp_offload {
        offload.gso = false;
        offload.gro = false;
    }
    info!(
        gso = offload.gso,
        gro = offload.gro,
        io_uring = offload.io_uring,
        "udp segmentation offload and io_uring sends"
    );
    // Every relay address takes the hand-over, the second and later of a family too.
    let all_relay_ips: Vec<std::net::IpAddr> = {
        let pool = match ports.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        [
            crate::turn::ports::Family::V4,
            crate::turn::ports::Family::V6,
        ]
        .into_iter()
        .flat_map(|f| pool.addresses(f).collect::<Vec<_>>())
        .collect()
    };
    let kernel = start_kernel_path(cfg.server.kernel_offload, &listen, &all_relay_ips)?;
    let handover = worker::handover::Handover::new(workers, relay_ips, &all_relay_ips)
        .map_err(|e| format!("cannot set up the hand-over between workers: {e}"))?;
    let (stop, stop_rx) = watch::channel(false);
    let mut handles = Vec::new();
    let (job_txs, job_rxs): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
    let mut job_rxs = job_rxs.into_iter();
    for ((i, socks), tcp_socks) in sockets.into_iter().enumerate().zip(stream_listeners) {
        let core = cfg.server_config(
            live.clone(),
            DriverParts {
                ports: ports.clone(),
                quotas: quotas.clone(),
                relay_ips,
                own_addresses: own.clone(),
                secret: random_bytes::<32>().map_err(|e| format!("random: {e}"))?,
                unauth_limiter: unauth_limiter.clone(),
            },
        );
        let rx = stop_rx.clone();
        let Some(job_rx) = job_rxs.next() else {
            return Err("worker job queue missing".into());
        };
        let handover = handover.clone();
        let kernel = kernel.clone();
        let ws = worker::streams::WorkerStreams {
            listeners: tcp_socks,
            shared: streams.clone(),
            index: i,
            jobs: job_txs.clone(),
        };
        let h = std::thread::Builder::new()
            .name(format!("turnd-worker-{i}"))
            .spawn(move || {
                worker::run_worker(
                    i,
                    worker::UdpSetup {
                        sockets: socks,
                        offload,
                        handover,
                        kernel,
                    },
                    core,
                    rx,
                    job_rx,
                    ws,
                )
            })
            .map_err(|e| format!("cannot start worker thread: {e}"))?;
        handles.push(h);
    }
    for a in &listen {
        info!(listen = %a, transport = "udp", workers, "listening");
    }
    for (fam, r) in relay_ips.iter().enumerate() {
        if let Some((bind, adv)) = r {
            info!(family = if fam == 0 { "ipv4" } else { "ipv6" }, relay = %bind, advertised = %adv,
                ports = %format!("{}-{}", cfg.relay.min_port, cfg.relay.max_port), "relay");
        }
    }
    Ok(Running {
        kernel,
        workers: handles,
        stop,
        control: Control {
            workers: job_txs,
            nonce_key,
            quotas,
        },
        listen,
        tls_listen,
        streams,
    })
}

/// The TCP listen addresses (the UDP listen addresses as claimed, unless `tcp.enabled` is
/// false) and the TLS ones, each claimed (see [`claim`]), port 0 resolved.
fn plan_streams(
    cfg: &Config,
    udp_listen: &[SocketAddr],
) -> Result<Vec<(SocketAddr, crate::turn::Transport)>, String> {
    use crate::turn::Transport;
    let mut plan: Vec<(SocketAddr, Transport)> = Vec::new();
    if cfg.tcp.enabled {
        plan.extend(udp_listen.iter().map(|a| (*a, Transport::Tcp)));
    }
    plan.extend(cfg.tls.listen.iter().map(|a| (*a, Transport::Tls)));
    plan.into_iter()
        .map(|(addr, transport)| Ok((claim(addr, Type::STREAM, transport.as_str())?, transport)))
        .collect()
}

/// Per worker, the stream listeners of `plan`; the TLS addresses; the shared stream state
/// with the certificate store.
#[allow(clippy::type_complexity)]
fn bind_streams(
    cfg: &Config,
    plan: &[(SocketAddr, crate::turn::Transport)],
    workers: usize,
) -> Result<
    (
        Vec<Vec<(SocketAddr, std::net::TcpListener, crate::turn::Transport)>>,
        Vec<SocketAddr>,
        Arc<worker::streams::Shared>,
    ),
    String,
> {
    use crate::turn::Transport;
    let certs = tls::load_config(cfg)
        .map_err(|e| e.to_string())?
        .map(|c| Arc::new(CertStore::new(c)));
    let mut per_worker: Vec<Vec<_>> = (0..workers).map(|_| Vec::new()).collect();
    let mut tls_listen = Vec::new();
    for &(addr, transport) in plan {
        let name = transport.as_str();
        for w in per_worker.iter_mut() {
            let l = worker::tcp::reuseport_tcp(addr)
                .map_err(|e| format!("cannot listen on {name} {addr}: {e}"))?;
            w.push((addr, l, transport));
        }
        info!(listen = %addr, transport = name, workers, "listening");
        if transport == Transport::Tls {
            tls_listen.push(addr);
        }
    }
    let shared =
        worker::streams::Shared::new(worker::streams::StreamConfig::from_config(cfg), certs);
    Ok((per_worker, tls_listen, shared))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::peer_policy::PeerPolicy;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter()
            .map(|s| s.parse().expect("test address"))
            .collect()
    }

    #[test]
    fn claim_refuses_an_address_anyone_holds_and_resolves_port_zero() {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        // Port 0: a free port, which the workers' SO_REUSEPORT sockets can then take.
        let udp = claim(any, Type::DGRAM, "udp").expect("a free UDP port");
        assert_ne!(udp.port(), 0);
        let worker = reuseport_udp(udp).expect("workers bind the claimed port");
        let second = reuseport_udp(udp).expect("and join each other");
        // Held by a SO_REUSEPORT group (another turnd's workers): refused, naming it.
        let e = claim(udp, Type::DGRAM, "udp").expect_err("held by a reuseport group");
        assert!(
            e.contains(&format!("udp {udp}")) && e.contains("in use"),
            "{e}"
        );
        drop(worker);
        drop(second);
        // Held by a plain socket.
        let plain = UdpSocket::bind(any).expect("bind");
        let held = plain.local_addr().expect("addr");
        assert!(claim(held, Type::DGRAM, "udp").is_err());
        // TCP: a SO_REUSEPORT listener holds its address against the probe.
        let tcp = claim(any, Type::STREAM, "tls").expect("a free TCP port");
        let listener = worker::tcp::reuseport_tcp(tcp).expect("listen on the claimed port");
        let e = claim(tcp, Type::STREAM, "tls").expect_err("held by a listener");
        assert!(e.contains(&format!("tls {tcp}")), "{e}");
        drop(listener);
        assert_eq!(claim(tcp, Type::STREAM, "tls"), Ok(tcp), "free again");
    }

    #[test]
    fn own_addresses_cover_wildcard_listeners_and_external_ips() {
        let cfg = Config::from_toml_str(
            "[server]\nlisten = [\"0.0.0.0:3478\", \"[::1]:3479\"]\n\
             [relay]\nips = [\"10.0.0.5\", \"::1\"]\nexternal-ips = [\"203.0.113.5\"]\n",
        )
        .expect("valid config");
        let relay_ips: [Option<(IpAddr, IpAddr)>; 2] = [
            Some((
                "10.0.0.5".parse().expect("ip"),
                "203.0.113.5".parse().expect("ip"),
            )),
            Some(("::1".parse().expect("ip"), "::1".parse().expect("ip"))),
        ];
        let own = own_addresses(&cfg.server.listen, &cfg, &relay_ips);
        for a in addrs(&[
            "0.0.0.0:3478",
            "10.0.0.5:3478",
            "203.0.113.5:3478",
            "[::1]:3479",
        ]) {
            assert!(own.contains(&a), "{a} missing from {own:?}");
        }
        // No cross-family or cross-port entries.
        assert!(!own.iter().any(|a| a.port() == 3479 && a.is_ipv4()));
        assert!(!own.iter().any(|a| a.port() == 3478 && a.is_ipv6()));
        // The policy built from them refuses every specific one.
        let p = PeerPolicy::new(vec!["0.0.0.0/0".parse().expect("cidr")], vec![])
            .with_own_addresses(own);
        assert!(!p.is_allowed_addr("10.0.0.5:3478".parse().expect("addr")));
        assert!(!p.is_allowed_addr("203.0.113.5:3478".parse().expect("addr")));
        assert!(p.is_allowed_addr("10.0.0.5:3480".parse().expect("addr")));
    }
}
