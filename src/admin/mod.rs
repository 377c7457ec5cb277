//! The admin HTTP listener: Prometheus `/metrics`, `/health`, the session API,
//! `/credentials`, and `POST /reload` / `POST /drain` (the lifecycle's SIGHUP and SIGTERM);
//! and, behind keys of its own, the TURN REST API `/turn` (`rest_api.rs`); with a fleet
//! (`[redis]`), `GET /cluster` and `POST`/`DELETE /revoke?user=NAME`. Off unless
//! the operator's status and self-test pages (`pages/`); and, behind keys of its own, the
//! TURN REST API `/turn` (`rest_api.rs`). Off unless
//! `[admin] enabled` (or `--admin-listen`); loopback by default.
//!
//! A small HTTP/1.1 server on the main thread's tokio runtime: one request per connection
//! (`Connection: close`), a request head of at most [`MAX_HEAD`] bytes and a small form body
//! at most ([`http::MAX_BODY`]), a deadline
//! per connection and a cap on concurrent connections ([`Slots`]) that stalled clients cannot
//! fill: at the cap, a new connection takes the slot of the oldest one that has not delivered
//! its request yet. It reaches the workers only through
//! [`Control`]: every answer is gathered from the workers' own plain counters at request
//! time, so the packet path never sees the admin side.

mod api;
mod http;
mod metrics;
pub mod pages;
mod rest_api;

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::fleet::Fleet;
use crate::lifecycle::Lifecycle;
use crate::net::{Control, StreamMetrics};

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// A connection must deliver its request and take its answer within this time.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// What the handlers need besides [`Control`].
pub(crate) struct Settings {
    token: String,
    metrics_open_on_loopback: bool,
    /// The REST secret `/credentials` signs with (the first of `auth.secrets`).
    rest_secret: Option<String>,
    rest_separator: char,
    /// `auth.max-rest-ttl` at start: the longest credential `/credentials` mints.
    max_rest_ttl: u64,
    uris: Vec<String>,
    /// `admin.rest-api-keys` and `admin.rest-api-ttl` (like all of `[admin]`, read at start).
    rest_api_keys: Vec<String>,
    rest_api_ttl: u64,
    /// `/turn`'s rate limit per client IP.
    rest_rate: rest_api::RateLimit,
    started: Instant,
    /// Reload and drain (`POST /reload`, `POST /drain`); the REST secret in force.
    lifecycle: Option<Lifecycle>,
    /// The TCP/TLS listeners' counters for `/metrics`.
    streams: Option<StreamMetrics>,
    /// The fleet membership (`[redis]`): `/cluster`, `/revoke`, its `/metrics`.
    fleet: Option<Fleet>,
    /// The status and self-test pages' logins and samples.
    pages: pages::Pages,
    /// The kernel fast path (`server.kernel-offload`), for `/metrics`.
    kernel: Option<std::sync::Arc<crate::net::xdp::KernelPath>>,
}

/// A bound admin listener, not yet serving.
pub struct Admin {
    listener: StdTcpListener,
    settings: Settings,
    max_connections: usize,
}

impl Admin {
    /// Binds the listener when the config enables it (None when it does not). Binding here,
    /// before serving, makes a taken port fail the start.
    pub fn bind(cfg: &Config) -> Result<Option<Admin>, String> {
        let a = &cfg.admin;
        if !a.enabled {
            return Ok(None);
        }
        let listener = StdTcpListener::bind(a.listen)
            .map_err(|e| format!("cannot listen on admin {}: {e}", a.listen))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("admin {}: {e}", a.listen))?;
        let uris = rest_api::advertised_uris(cfg);
        Ok(Some(Admin {
            listener,
            settings: Settings {
                token: a.token.clone(),
                metrics_open_on_loopback: a.metrics_open_on_loopback,
                rest_secret: cfg.auth.secrets.first().cloned(),
                rest_separator: cfg.auth.rest_separator,
                max_rest_ttl: cfg.auth.max_rest_ttl,
                uris,
                rest_api_keys: a.rest_api_keys.clone(),
                rest_api_ttl: a.rest_api_ttl,
                rest_rate: rest_api::RateLimit::new(a.rest_api_rate),
                started: Instant::now(),
                lifecycle: None,
                streams: None,
                fleet: None,
                pages: pages::Pages::new(),
                kernel: None,
            },
            max_connections: a.max_connections,
        }))
    }

    /// Serves the fleet's routes (`GET /cluster`, `POST`/`DELETE /revoke`) and metrics.
    pub fn with_fleet(mut self, fleet: Option<Fleet>) -> Admin {
        self.settings.fleet = fleet;
        self
    }

    /// Adds the kernel fast path's counters to `/metrics`.
    pub fn with_kernel(
        mut self,
        kernel: Option<std::sync::Arc<crate::net::xdp::KernelPath>>,
    ) -> Admin {
        self.settings.kernel = kernel;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until the runtime stops. Must run inside a tokio runtime. `lifecycle` backs
    /// `POST /reload` and `POST /drain` (and keeps `/credentials` on the REST secret in force
    /// after a reload); `streams` adds the TCP/TLS counters to `/metrics`.
    pub async fn serve(
        mut self,
        control: Control,
        lifecycle: Option<Lifecycle>,
        streams: Option<StreamMetrics>,
    ) {
        self.settings.lifecycle = lifecycle;
        self.settings.streams = streams;
        let settings = Arc::new(self.settings);
        let listener = match TcpListener::from_std(self.listener) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot register the admin listener");
                return;
            }
        };
        if let Ok(a) = listener.local_addr() {
            info!(listen = %a, "admin listening");
        }
        tokio::spawn(pages::sample(control.clone(), settings.clone()));
        let slots = Slots::new(self.max_connections);
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // At the cap the oldest connection still waiting for its request is closed to
            // make room; when every slot is answering a request, the new one is closed.
            let Some(slot) = slots.admit() else {
                debug!(%peer, "admin connection refused: too many");
                continue;
            };
            let control = control.clone();
            let settings = settings.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    CONNECTION_DEADLINE,
                    handle_connection(stream, peer, control, settings, slot),
                )
                .await;
            });
        }
    }
}

async fn handle_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    control: Control,
    settings: Arc<Settings>,
    slot: Slot,
) {
    let read = tokio::select! {
        r = http::read_request(&mut stream) => r,
        _ = slot.evicted() => {
            debug!(%peer, "admin connection closed: its slot went to a newer one");
            return;
        }
    };
    let response = match read {
        // From here on the slot is this request's until it is answered.
        Ok(req) if slot.answering() => api::route(&req, peer, &control, &settings).await,
        Ok(_) | Err(http::ReadError::Closed) => return,
        Err(http::ReadError::Bad(status, why)) => {
            // Still evictable while it is answered and lingers.
            let refuse = async {
                let _ = http::write_response(&mut stream, &http::Response::text(status, why)).await;
                // Take (a bounded amount of) what the client is still sending, so closing
                // with unread data does not reset the connection before it reads the answer.
                let _ = tokio::time::timeout(LINGER, drain(&mut stream)).await;
            };
            tokio::select! {
                _ = refuse => {}
                _ = slot.evicted() => {}
            }
            return;
        }
    };
    let _ = http::write_response(&mut stream, &response).await;
}

/// The admin listener's connection slots (`admin.max-connections`). A connection that has
/// not delivered its request head yet (or is being refused one) can be evicted: at the cap,
/// a new connection takes the slot of the oldest such one, which is closed. A connection
/// whose request is being answered keeps its slot; only when every slot is answering is a
/// new connection refused. So clients that connect and stall, or send their request slowly,
/// cannot lock others out: the request that arrives whole is answered, and answering takes
/// no client's cooperation beyond reading a short reply.
struct Slots {
    max: usize,
    table: Mutex<SlotTable>,
}

#[derive(Default)]
struct SlotTable {
    next_id: u64,
    /// Connections holding a slot.
    live: HashSet<u64>,
    /// The evictable ones among them, oldest first, each with the way to close it.
    waiting: BTreeMap<u64, Arc<Notify>>,
}

/// One connection's slot, given back when dropped.
struct Slot {
    id: u64,
    slots: Arc<Slots>,
    evict: Arc<Notify>,
}

impl Slots {
    fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            table: Mutex::new(SlotTable::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotTable> {
        match self.table.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A slot for a new connection, evicting the oldest waiting one at the cap; None when
    /// every slot is answering a request.
    fn admit(self: &Arc<Slots>) -> Option<Slot> {
        let mut t = self.lock();
        if t.live.len() >= self.max {
            let (oldest, evict) = t.waiting.pop_first()?;
            t.live.remove(&oldest);
            evict.notify_one();
        }
        let id = t.next_id;
        t.next_id += 1;
        let evict = Arc::new(Notify::new());
        t.live.insert(id);
        t.waiting.insert(id, evict.clone());
        Some(Slot {
            id,
            slots: self.clone(),
            evict,
        })
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().live.len()
    }
}

impl Slot {
    /// Resolves once a newer connection has taken this slot.
    async fn evicted(&self) {
        self.evict.notified().await
    }

    /// Makes the slot this connection's until it ends; false if it was evicted already.
    fn answering(&self) -> bool {
        let mut t = self.slots.lock();
        t.waiting.remove(&self.id);
        t.live.contains(&self.id)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.slots.lock();
        t.live.remove(&self.id);
        t.waiting.remove(&self.id);
    }
}

/// How long a refused request's leftover input is read and discarded.
const LINGER: Duration = Duration::from_secs(2);

async fn drain(stream: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let mut left = 256 * 1024usize;
    while left > 0 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `slot` has been told to close, without waiting.
    fn is_evicted(slot: &Slot) -> bool {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let fut = std::pin::pin!(slot.evicted());
        matches!(
            fut.poll(&mut Context::from_waker(Waker::noop())),
            Poll::Ready(())
        )
    }

    #[test]
    fn at_the_cap_the_oldest_waiting_connection_makes_room() {
        let slots = Slots::new(3);
        let a = slots.admit().expect("a slot");
        let b = slots.admit().expect("a slot");
        let c = slots.admit().expect("a slot");
        assert!(b.answering(), "b's request arrived");
        // Full: d takes the slot of the oldest waiting one, a (b is answering).
        let d = slots.admit().expect("room made");
        assert!(is_evicted(&a) && !a.answering(), "a was closed");
        assert!(!is_evicted(&b) && !is_evicted(&c) && !is_evicted(&d));
        assert_eq!(slots.open(), 3);
        drop(a);
        assert_eq!(slots.open(), 3, "a's slot already went to d");
        // Then c, then d.
        let e = slots.admit().expect("room made");
        assert!(is_evicted(&c));
        assert!(d.answering() && e.answering());
        // Every slot answering: a new connection is refused, nothing is evicted.
        assert!(slots.admit().is_none());
        assert_eq!(slots.open(), 3);
        drop(b);
        assert_eq!(slots.open(), 2);
        assert!(slots.admit().is_some(), "a freed slot is used again");
        drop((c, d, e));
    }
}
