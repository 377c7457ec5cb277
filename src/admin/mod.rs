//! The admin HTTP listener: Prometheus `/metrics`, `/health`, the session API,
//! `/credentials`, and `POST /reload` / `POST /drain` (the lifecycle's SIGHUP and SIGTERM). Off unless `[admin] enabled` (or `--admin-listen`); loopback by default.
//!
//! A small HTTP/1.1 server on the main thread's tokio runtime: one request per connection
//! (`Connection: close`), a request head of at most [`MAX_HEAD`] bytes and no body, a deadline
//! per connection and a cap on concurrent connections. It reaches the workers only through
//! [`Control`]: every answer is gathered from the workers' own plain counters at request
//! time, so the packet path never sees the admin side.

mod api;
mod http;
mod metrics;

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::Config;
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
    uris: Vec<String>,
    started: Instant,
    /// Reload and drain (`POST /reload`, `POST /drain`); the REST secret in force.
    lifecycle: Option<Lifecycle>,
    /// The TCP/TLS listeners' counters for `/metrics`.
    streams: Option<StreamMetrics>,
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
        let uris = if a.uris.is_empty() {
            cfg.server
                .listen
                .iter()
                .map(|l| format!("turn:{l}?transport=udp"))
                .collect()
        } else {
            a.uris.clone()
        };
        Ok(Some(Admin {
            listener,
            settings: Settings {
                token: a.token.clone(),
                metrics_open_on_loopback: a.metrics_open_on_loopback,
                rest_secret: cfg.auth.secrets.first().cloned(),
                rest_separator: cfg.auth.rest_separator,
                uris,
                started: Instant::now(),
                lifecycle: None,
                streams: None,
            },
            max_connections: a.max_connections,
        }))
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
        let slots = Arc::new(Semaphore::new(self.max_connections));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Over the cap the connection is closed at once rather than queued.
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                debug!(%peer, "admin connection refused: too many");
                continue;
            };
            let control = control.clone();
            let settings = settings.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tokio::time::timeout(
                    CONNECTION_DEADLINE,
                    handle_connection(stream, peer, control, settings),
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
) {
    let response = match http::read_request(&mut stream).await {
        Ok(req) => api::route(&req, peer, &control, &settings).await,
        Err(http::ReadError::Closed) => return,
        Err(http::ReadError::Bad(status, why)) => {
            let _ = http::write_response(&mut stream, &http::Response::text(status, why)).await;
            // Take (a bounded amount of) what the client is still sending, so closing with
            // unread data does not reset the connection before it reads the answer.
            let _ = tokio::time::timeout(LINGER, drain(&mut stream)).await;
            return;
        }
    };
    let _ = http::write_response(&mut stream, &response).await;
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
