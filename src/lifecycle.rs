//! Running the server as a service: readiness (sd_notify), reload (SIGHUP), drain (SIGTERM,
//! SIGINT) and exit.
//!
//! * **Reload** re-reads the `--config` file (command-line flags keep overriding it) and
//!   validates it; a config that fails to load is logged and the old one stays in force.
//!   Otherwise users, REST secrets, realm, peer policy, quotas, lifetimes and the log level
//!   take effect for new requests without ending any allocation; keys that need a rebind or a
//!   new worker layout are named in a warning as needing a restart.
//! * **Drain** stops granting allocations (300 to `server.alternate-server`, else 508), keeps
//!   relaying for the live ones until they end or `server.drain-timeout` passes, then ends the
//!   server. A SIGINT during a drain ends it at once.
//!
//! [`Lifecycle`] is cheap to clone, so an admin endpoint can call [`Lifecycle::reload`] and
//! [`Lifecycle::request_drain`] too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::cli::ServeArgs;
use crate::config::{Config, ConfigError};
use crate::logging::LogHandle;
use crate::net::tls::server_config;
use crate::net::{CertStore, Control, Running};
use crate::sd_notify::{monotonic_usec, notify_logged};

/// How often a drain counts the live allocations.
const DRAIN_POLL: Duration = Duration::from_millis(200);

/// Reload and drain for one running server.
#[derive(Clone)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

struct Inner {
    args: ServeArgs,
    control: Control,
    /// The TLS certificate in force, renewed on reload (None without TLS listeners).
    tls: Option<Arc<CertStore>>,
    log: Option<LogHandle>,
    /// The config in force. Keys that need a restart keep their running values here.
    applied: Mutex<Config>,
    drain_requested: Notify,
    /// One reload at a time (SIGHUP and an admin request may race).
    reloading: tokio::sync::Mutex<()>,
    /// Set once a drain has started: readiness is not reported again after a reload.
    draining: AtomicBool,
    /// Set by the first [`Lifecycle::request_drain`].
    drain_asked: AtomicBool,
}

/// What a successful reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Changed keys that only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainEnd {
    /// Every allocation had ended.
    Empty,
    /// `server.drain-timeout` passed with allocations still live.
    Timeout { left: usize },
    /// Cut short (a second SIGINT).
    Aborted { left: usize },
}

/// The keys whose change a reload cannot apply: they need sockets rebound, the worker layout
/// rebuilt, or would split the quota accounting of live allocations.
pub fn restart_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |key, changed: bool| {
        if changed {
            keys.push(key);
        }
    };
    check("server.listen", old.server.listen != new.server.listen);
    check("server.workers", old.server.workers != new.server.workers);
    check(
        "server.udp-offload",
        old.server.udp_offload != new.server.udp_offload,
    );
    check(
        "server.udp-io-uring",
        old.server.udp_io_uring != new.server.udp_io_uring,
    );
    check(
        "server.kernel-offload",
        old.server.kernel_offload != new.server.kernel_offload,
    );
    check("relay.ips", old.relay_ips() != new.relay_ips());
    check(
        "relay.external-ips",
        old.relay.external_ips != new.relay.external_ips,
    );
    check("relay.min-port", old.relay.min_port != new.relay.min_port);
    check("relay.max-port", old.relay.max_port != new.relay.max_port);
    check(
        "auth.rest-separator",
        old.auth.rest_separator != new.auth.rest_separator,
    );
    check("log.format", old.log.format != new.log.format);
    check("tcp", old.tcp != new.tcp);
    check("tls.listen", old.tls.listen != new.tls.listen);
    check(
        "tls.handshake-timeout",
        old.tls.handshake_timeout != new.tls.handshake_timeout,
    );
    check("tls.mux", old.tls.mux != new.tls.mux);
    let (a, b) = (&old.limits, &new.limits);
    check("limits.unauth-rate", a.unauth_rate != b.unauth_rate);
    check("limits.unauth-burst", a.unauth_burst != b.unauth_burst);
    check(
        "limits.permissions-per-allocation",
        a.permissions_per_allocation != b.permissions_per_allocation,
    );
    check(
        "limits.channels-per-allocation",
        a.channels_per_allocation != b.channels_per_allocation,
    );
    let (a, b) = (&old.admin, &new.admin);
    check(
        "admin",
        a.enabled != b.enabled
            || a.listen != b.listen
            || a.token != b.token
            || a.metrics_open_on_loopback != b.metrics_open_on_loopback
            || a.max_connections != b.max_connections
            || a.uris != b.uris,
    );
    // A certificate can be renewed live, but only where TLS was set up at start.
    check("tls.cert", old.tls.cert.is_some() != new.tls.cert.is_some());
    keys
}

/// `new` with the restart-only keys put back to their running values from `old`.
fn keep_running_values(old: &Config, mut new: Config) -> Config {
    new.server.listen = old.server.listen.clone();
    new.server.workers = old.server.workers;
    new.server.udp_offload = old.server.udp_offload;
    new.server.udp_io_uring = old.server.udp_io_uring;
    new.server.kernel_offload = old.server.kernel_offload;
    new.relay.ips = old.relay.ips.clone();
    new.relay.external_ips = old.relay.external_ips.clone();
    new.relay.min_port = old.relay.min_port;
    new.relay.max_port = old.relay.max_port;
    new.auth.rest_separator = old.auth.rest_separator;
    new.log.format = old.log.format.clone();
    new.tcp = old.tcp.clone();
    new.limits.unauth_rate = old.limits.unauth_rate;
    new.limits.unauth_burst = old.limits.unauth_burst;
    new.limits.permissions_per_allocation = old.limits.permissions_per_allocation;
    new.limits.channels_per_allocation = old.limits.channels_per_allocation;
    new.tls.listen = old.tls.listen.clone();
    new.tls.handshake_timeout = old.tls.handshake_timeout;
    new.tls.mux = old.tls.mux;
    new.admin = old.admin.clone();
    if old.tls.cert.is_none() {
        new.tls.cert = None;
        new.tls.key = None;
    }
    new
}

impl Lifecycle {
    /// `config` is the config the server was started with, `args` the command line it was
    /// loaded from (re-read on reload).
    pub fn new(
        args: ServeArgs,
        config: Config,
        running: &Running,
        log: Option<LogHandle>,
    ) -> Lifecycle {
        Lifecycle {
            inner: Arc::new(Inner {
                args,
                control: running.control(),
                tls: running.tls_certs(),
                log,
                applied: Mutex::new(config),
                drain_requested: Notify::new(),
                reloading: tokio::sync::Mutex::new(()),
                draining: AtomicBool::new(false),
                drain_asked: AtomicBool::new(false),
            }),
        }
    }

    /// The config in force.
    pub fn config(&self) -> Config {
        self.lock_applied().clone()
    }

    fn lock_applied(&self) -> std::sync::MutexGuard<'_, Config> {
        match self.inner.applied.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Re-reads and applies the config. On error nothing changes.
    pub async fn reload(&self) -> Result<ReloadReport, ConfigError> {
        let _one_at_a_time = self.inner.reloading.lock().await;
        let new = self.inner.args.load_config()?;
        let old = self.config();
        let needs_restart = restart_keys(&old, &new);
        let new = keep_running_values(&old, new);
        // Everything that can fail is built before anything is swapped in.
        let live = new.live_settings(self.inner.control.nonce_key());
        let tls = match (&self.inner.tls, &new.tls.cert, &new.tls.key) {
            (Some(_), Some(cert), Some(key)) => Some(server_config(cert, key)?),
            _ => None,
        };
        if let Some(log) = &self.inner.log
            && let Err(e) = log.set_level(&new.log.level)
        {
            warn!(error = %e, "cannot change the log level");
        }
        self.inner.control.reconfigure(live).await;
        new.apply_quotas(self.inner.control.quotas());
        if let (Some(store), Some(tls)) = (&self.inner.tls, tls) {
            store.replace(tls);
        }
        *self.lock_applied() = new;
        Ok(ReloadReport { needs_restart })
    }

    /// [`Lifecycle::reload`] with the outcome logged and reported to systemd.
    pub async fn reload_logged(&self) {
        let _ = self.reload_reported().await;
    }

    /// [`Lifecycle::reload`] with the outcome logged and reported to systemd, and returned
    /// (the admin API's `POST /reload` answers with it).
    pub async fn reload_reported(&self) -> Result<ReloadReport, ConfigError> {
        // While stopping, systemd expects no READY=1: only the STATUS line changes.
        let draining = self.inner.draining.load(Ordering::Relaxed);
        let ready = if draining { "" } else { "READY=1\n" };
        if !draining {
            notify_logged(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        }
        let result = self.reload().await;
        match &result {
            Ok(report) => {
                if !report.needs_restart.is_empty() {
                    warn!(
                        keys = %report.needs_restart.join(", "),
                        "config reloaded, but these changed keys need a restart to take effect"
                    );
                }
                info!("config reloaded");
                notify_logged(&format!("{ready}STATUS=config reloaded"));
            }
            Err(e) => {
                error!(error = %e, "config reload failed; the old config stays in force");
                notify_logged(&format!("{ready}STATUS=reload failed: {e}"));
            }
        }
        result
    }

    /// Asks the serving loop ([`Lifecycle::serve`]) to drain, as SIGTERM does. Returns
    /// false when a drain was already asked for or under way (nothing changes then).
    pub fn request_drain(&self) -> bool {
        if self.is_draining() || self.inner.drain_asked.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.inner.drain_requested.notify_one();
        true
    }

    /// Whether a drain has been asked for or has started.
    pub fn is_draining(&self) -> bool {
        self.inner.drain_asked.load(Ordering::Acquire)
            || self.inner.draining.load(Ordering::Relaxed)
    }

    /// Drains: refuses new allocations, then waits until none is live, the drain timeout
    /// passes or `abort` completes.
    pub async fn drain(&self, abort: impl std::future::Future<Output = ()>) -> DrainEnd {
        self.inner.draining.store(true, Ordering::Relaxed);
        let cfg = self.config();
        let control = &self.inner.control;
        control.drain(cfg.server.alternate_server.clone()).await;
        let left = control.allocation_count().await;
        info!(
            allocations = left,
            timeout_secs = cfg.server.drain_timeout,
            "draining: new allocations are refused"
        );
        notify_logged(&format!("STOPPING=1\nSTATUS=draining {left} allocations"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.server.drain_timeout);
        tokio::pin!(abort);
        loop {
            let left = control.allocation_count().await;
            if left == 0 {
                return DrainEnd::Empty;
            }
            if tokio::time::Instant::now() >= deadline {
                return DrainEnd::Timeout { left };
            }
            tokio::select! {
                _ = tokio::time::sleep(DRAIN_POLL) => {}
                _ = &mut abort => return DrainEnd::Aborted { left },
            }
        }
    }

    /// Serves until told to stop: SIGHUP reloads; SIGTERM, SIGINT or
    /// [`Lifecycle::request_drain`] drains; a SIGINT during the drain ends it at once.
    pub async fn serve(&self, signals: Signals) -> DrainEnd {
        let Signals {
            mut term,
            mut int,
            mut hup,
        } = signals;
        let why = loop {
            tokio::select! {
                _ = hup.recv() => self.reload_logged().await,
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                _ = self.inner.drain_requested.notified() => break "drain request",
            }
        };
        info!(signal = why, "drain started (SIGINT ends it at once)");
        let abort = async {
            let _ = int.recv().await;
        };
        let drain = self.drain(abort);
        tokio::pin!(drain);
        // Reloads still apply while draining.
        loop {
            tokio::select! {
                end = &mut drain => break end,
                _ = hup.recv() => self.reload_logged().await,
            }
        }
    }
}

/// The signal handlers [`Lifecycle::serve`] listens to. Install them before reporting
/// readiness: until then SIGTERM and SIGHUP would end the process.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; call inside a tokio runtime (`Runtime::enter`).
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::from_toml_str(text).unwrap()
    }

    #[test]
    fn rebind_keys_are_reported_and_kept() {
        let old = cfg("[server]\nlisten = [\"127.0.0.1:3478\"]\nrealm = \"a\"\n\
             [relay]\nmin-port = 50000\nmax-port = 50100\n");
        let same = cfg("[server]\nlisten = [\"127.0.0.1:3478\"]\nrealm = \"b\"\n\
             [relay]\nmin-port = 50000\nmax-port = 50100\n\
             [auth]\nsecrets = [\"s\"]\n[allocation]\nuser-quota = 3\n\
             [log]\nlevel = \"debug\"\n");
        assert!(restart_keys(&old, &same).is_empty());

        let moved = cfg("[server]\nlisten = [\"127.0.0.1:3479\"]\nworkers = 3\n\
             [relay]\nmin-port = 50001\nmax-port = 50100\n\
             external-ips = [\"203.0.113.1\"]\n\
             [auth]\nrest-separator = \"-\"\n[log]\nformat = \"json\"\n\
             [tcp]\nidle-timeout = 60\n[limits]\nunauth-rate = 7\nallocations-per-ip = 3\n");
        assert_eq!(
            restart_keys(&old, &moved),
            vec![
                "server.listen",
                "server.workers",
                "relay.external-ips",
                "relay.min-port",
                "auth.rest-separator",
                "log.format",
                "tcp",
                "limits.unauth-rate"
            ]
        );
        let kept = keep_running_values(&old, moved);
        assert!(restart_keys(&old, &kept).is_empty());

        // The admin listener is set up once, at start.
        let admin = cfg("[server]\nlisten = [\"127.0.0.1:3478\"]\n\
             [relay]\nmin-port = 50000\nmax-port = 50100\n\
             [admin]\nenabled = true\ntoken = \"0123456789abcdef\"\n");
        assert_eq!(restart_keys(&old, &admin), vec!["admin"]);
        assert!(restart_keys(&old, &keep_running_values(&old, admin)).is_empty());
        assert_eq!(kept.server.realm, "turnd", "live keys take the new values");
    }
}
