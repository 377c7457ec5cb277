//! A fleet of turnd nodes on one Redis (the `[redis]` section): shared users and secrets in
//! coturn's layout, revocation, fleet-wide quotas, load-aware redirects and allocation
//! events. The tokio side only: the core sees a [`StoreView`] swapped in whole, quota counts
//! of the other nodes, a redirect switch, and hands back allocation events
//! (`turn::server::fleet`). Nothing on the packet or request path waits on Redis: every
//! decision reads the last good copy, and a Redis command that takes longer than
//! `redis.command-timeout-ms` counts as the store being down.
//!
//! Two tasks on the main runtime:
//! * [`sync`]: mirrors the realm's keys (SCAN at start and every `redis.resync-interval`,
//!   then one key at a time as keyspace notifications and `turnd/changes` messages name
//!   them), and pushes each new view to every worker, which also ends revoked allocations.
//! * [`node`]: once a second publishes this node's entry (`turnd/node/<name>`: addresses,
//!   load, draining, its allocation counts per user) with a `redis.node-ttl` expiry, reads
//!   the other nodes' entries (quota counts, the redirect target, `GET /cluster`), and
//!   appends the workers' allocation events to the capped stream.

mod lease;
mod node;
mod sync;

pub(crate) use lease::LeaseDesk;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::auth::store::{REVOKED_PREFIX, revoked_key};
use crate::config::{Config, RedisSection, redact_url};
use crate::lifecycle::Lifecycle;
use crate::net::Control;

/// Channel on which turnd announces the keys it changed (revocations), for nodes whose Redis
/// sends no keyspace notifications.
pub const CHANGES_CHANNEL: &str = "turnd/changes";
/// Prefix of the node entries.
pub const NODE_PREFIX: &str = "turnd/node/";

/// One node as it last published itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeEntry {
    pub node: String,
    /// Where clients reach it (ALTERNATE-SERVER), at most one per family.
    pub addresses: Vec<SocketAddr>,
    /// ALTERNATE-DOMAIN for its TLS clients; empty: none.
    pub domain: String,
    pub allocations: u64,
    /// Relayed bits per second, both ways, over the last second.
    pub bps: u64,
    /// CPU use over the last second, percent of one core.
    pub cpu_percent: f64,
    pub draining: bool,
    /// Over one of its `redis.redirect-*` thresholds.
    pub overloaded: bool,
    /// Its own live allocations per user (a REST user without its timestamp).
    pub users: BTreeMap<String, u32>,
    /// Unix time of the entry.
    pub unix: u64,
}

impl NodeEntry {
    /// Accepts new allocations: neither draining nor over a threshold.
    pub fn healthy(&self) -> bool {
        !self.draining && !self.overloaded
    }
}

/// A running fleet membership: the handle the admin API and `/metrics` read.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RedisSection,
    node: String,
    realm: String,
    rest_separator: char,
    max_rest_ttl: u64,
    advertise: Vec<SocketAddr>,
    client: redis::Client,
    timeout: Duration,
    conn: Mutex<Option<MultiplexedConnection>>,
    up: AtomicBool,
    /// Quotas counted across the fleet right now (false: per node, the store is down).
    fleet_quotas_active: AtomicBool,
    /// Strict quotas: Allocates park for a lease in Redis (fleet quotas on, Redis up).
    strict_active: Arc<AtomicBool>,
    /// This node's leases ([`lease`]).
    held: Mutex<lease::Held>,
    /// Lease scripts run (acquire and release).
    lease_commands: AtomicU64,
    /// Leases registered for what was granted by per-node counting ([`lease::adopt`]).
    adopted: AtomicU64,
    /// Every node's entry as last read, this one included.
    cluster: Mutex<Vec<NodeEntry>>,
    commands: AtomicU64,
    command_errors: AtomicU64,
    resyncs: AtomicU64,
    key_updates: AtomicU64,
    events_written: AtomicU64,
    events_lost: AtomicU64,
    revoked_ended: AtomicU64,
    store_users: AtomicU64,
    store_secrets: AtomicU64,
    store_revocations: AtomicU64,
}

/// An error talking to Redis (a reply error, a lost connection or a timeout).
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> StoreError {
        StoreError(e.to_string())
    }
}

/// Opens a client for `[redis]` (no connection yet). rustls needs a process-wide crypto
/// provider for `rediss://`: ring, as the TLS listeners use.
pub fn client(cfg: &RedisSection) -> Result<redis::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = redis::Client::open(cfg.url.as_str()).map_err(|e| format!("redis.url: {e}"))?;
    let mut info = client.get_connection_info().clone();
    let mut settings = info.redis_settings().clone();
    if !cfg.password.is_empty() {
        settings = settings.set_password(&cfg.password);
    }
    if let Some(db) = cfg.database {
        settings = settings.set_db(i64::from(db));
    }
    info = info.set_redis_settings(settings);
    if cfg.tls_ca_file.is_empty() {
        return redis::Client::open(info).map_err(|e| format!("redis.url: {e}"));
    }
    let pem = std::fs::read(&cfg.tls_ca_file)
        .map_err(|e| format!("redis.tls-ca-file: cannot read {}: {e}", cfg.tls_ca_file))?;
    let certs = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    };
    redis::Client::build_with_tls(info, certs).map_err(|e| format!("redis.tls-ca-file: {e}"))
}

impl Fleet {
    /// Joins the fleet: starts the store mirror and the node tasks on the current tokio
    /// runtime. Returns at once; Redis being down at start is not an error (the tasks retry
    /// with backoff, and the file's users and secrets serve meanwhile).
    pub fn start(
        config: &Config,
        control: Control,
        lifecycle: Option<Lifecycle>,
    ) -> Result<Option<Fleet>, String> {
        let Some(cfg) = &config.redis else {
            return Ok(None);
        };
        let client = client(cfg)?;
        let fleet = Fleet {
            inner: Arc::new(Inner {
                node: cfg.node_name(config),
                realm: config.server.realm.clone(),
                rest_separator: config.auth.rest_separator,
                max_rest_ttl: config.auth.max_rest_ttl,
                advertise: cfg.advertised(config),
                client,
                timeout: Duration::from_millis(cfg.command_timeout_ms),
                conn: Mutex::new(None),
                up: AtomicBool::new(false),
                fleet_quotas_active: AtomicBool::new(false),
                strict_active: Arc::new(AtomicBool::new(false)),
                held: Mutex::new(lease::Held::default()),
                lease_commands: AtomicU64::new(0),
                adopted: AtomicU64::new(0),
                cluster: Mutex::new(Vec::new()),
                commands: AtomicU64::new(0),
                command_errors: AtomicU64::new(0),
                resyncs: AtomicU64::new(0),
                key_updates: AtomicU64::new(0),
                events_written: AtomicU64::new(0),
                events_lost: AtomicU64::new(0),
                revoked_ended: AtomicU64::new(0),
                store_users: AtomicU64::new(0),
                store_secrets: AtomicU64::new(0),
                store_revocations: AtomicU64::new(0),
                cfg: cfg.clone(),
            }),
        };
        info!(
            url = %redact_url(&cfg.url),
            node = %fleet.inner.node,
            realm = %fleet.inner.realm,
            "joining the fleet on Redis"
        );
        tokio::spawn(sync::run(fleet.clone(), control.clone()));
        if cfg.fleet_quotas {
            let (f, c) = (fleet.clone(), control.clone());
            tokio::spawn(async move { lease::start(f, c).await });
        }
        tokio::spawn(node::run(fleet.clone(), control, lifecycle));
        Ok(Some(fleet))
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Whether the last Redis command succeeded.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Every node as last read (this one included), sorted by name.
    pub fn cluster(&self) -> Vec<NodeEntry> {
        lock(&self.inner.cluster).clone()
    }

    /// The fleet's counters in Prometheus' text format, for `/metrics`.
    pub fn render_metrics(&self) -> String {
        let i = &self.inner;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let up = u8::from(self.is_up());
        let fleet = u8::from(i.fleet_quotas_active.load(Ordering::Relaxed));
        let nodes = lock(&i.cluster).len();
        format!(
            "# HELP turnd_redis_up Whether the last command to the fleet's Redis succeeded.\n\
             # TYPE turnd_redis_up gauge\nturnd_redis_up {up}\n\
             # HELP turnd_fleet_quota_mode How allocation quotas are counted: across the fleet, or per node while Redis is down.\n\
             # TYPE turnd_fleet_quota_mode gauge\n\
             turnd_fleet_quota_mode{{mode=\"fleet\"}} {fleet}\nturnd_fleet_quota_mode{{mode=\"node\"}} {}\n\
             # HELP turnd_fleet_nodes Nodes with a live entry in Redis, this one included.\n\
             # TYPE turnd_fleet_nodes gauge\nturnd_fleet_nodes {nodes}\n\
             # HELP turnd_redis_commands_total Commands sent to Redis (a pipeline counts its commands).\n\
             # TYPE turnd_redis_commands_total counter\nturnd_redis_commands_total {}\n\
             # HELP turnd_redis_command_errors_total Commands or pipelines to Redis that failed or timed out.\n\
             # TYPE turnd_redis_command_errors_total counter\nturnd_redis_command_errors_total {}\n\
             # HELP turnd_fleet_resyncs_total Full reads of the user database.\n\
             # TYPE turnd_fleet_resyncs_total counter\nturnd_fleet_resyncs_total {}\n\
             # HELP turnd_fleet_key_updates_total Single keys re-read after a change notification.\n\
             # TYPE turnd_fleet_key_updates_total counter\nturnd_fleet_key_updates_total {}\n\
             # HELP turnd_fleet_store_users Users in the store's cached view.\n\
             # TYPE turnd_fleet_store_users gauge\nturnd_fleet_store_users {}\n\
             # HELP turnd_fleet_store_secrets REST secrets in the store's cached view.\n\
             # TYPE turnd_fleet_store_secrets gauge\nturnd_fleet_store_secrets {}\n\
             # HELP turnd_fleet_revocations Revocations in the store's cached view.\n\
             # TYPE turnd_fleet_revocations gauge\nturnd_fleet_revocations {}\n\
             # HELP turnd_fleet_revoked_allocations_total Live allocations ended by a revocation.\n\
             # TYPE turnd_fleet_revoked_allocations_total counter\nturnd_fleet_revoked_allocations_total {}\n\
             # HELP turnd_fleet_events_total Allocation events appended to the Redis stream, or lost.\n\
             # TYPE turnd_fleet_events_total counter\n\
             turnd_fleet_events_total{{outcome=\"written\"}} {}\nturnd_fleet_events_total{{outcome=\"lost\"}} {}\n\
             # HELP turnd_fleet_adopted_leases_total Leases registered in Redis, once it answered again, for allocations and reservations granted by per-node counting.\n\
             # TYPE turnd_fleet_adopted_leases_total counter\nturnd_fleet_adopted_leases_total {}\n\
             # HELP turnd_fleet_adopted_leases Adopted leases this node holds now.\n\
             # TYPE turnd_fleet_adopted_leases gauge\nturnd_fleet_adopted_leases {}\n",
            1 - fleet,
            g(&i.commands),
            g(&i.command_errors),
            g(&i.resyncs),
            g(&i.key_updates),
            g(&i.store_users),
            g(&i.store_secrets),
            g(&i.store_revocations),
            g(&i.revoked_ended),
            g(&i.events_written),
            g(&i.events_lost),
            g(&i.adopted),
            lock(&i.held).adopted_total(),
        )
    }

    /// Revokes `name` fleet-wide (see [`revoke`]) through this node's connection.
    pub async fn revoke(
        &self,
        name: &str,
        ttl: Option<u64>,
        unix_now: u64,
    ) -> Result<u64, StoreError> {
        let i = &self.inner;
        let until = revocation_until(name, ttl, unix_now, i.rest_separator, i.max_rest_ttl);
        let mut conn = self.conn().await?;
        let fut = write_revocation(&mut conn, &i.realm, name, until, unix_now);
        let r = self.timed(fut).await;
        i.commands.fetch_add(3, Ordering::Relaxed);
        self.note(r.is_ok());
        r.map(|()| until)
    }

    /// Lifts a revocation of `name`.
    pub async fn unrevoke(&self, name: &str) -> Result<bool, StoreError> {
        let i = &self.inner;
        let mut conn = self.conn().await?;
        let key = revoked_key(&i.realm, name);
        let fut = async {
            let n: u64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
            let _: u64 = redis::cmd("PUBLISH")
                .arg(CHANGES_CHANNEL)
                .arg(&key)
                .query_async(&mut conn)
                .await?;
            Ok::<_, StoreError>(n > 0)
        };
        let r = self.timed(fut).await;
        i.commands.fetch_add(2, Ordering::Relaxed);
        self.note(r.is_ok());
        r
    }

    /// The command connection, opened (within the timeout) when there is none.
    async fn conn(&self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(c) = lock(&self.inner.conn).clone() {
            return Ok(c);
        }
        let fut = self.inner.client.get_multiplexed_async_connection();
        let c =
            match tokio::time::timeout(self.inner.timeout.max(Duration::from_secs(1)), fut).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    self.note(false);
                    return Err(e.into());
                }
                Err(_) => {
                    self.note(false);
                    return Err(StoreError("connect timed out".into()));
                }
            };
        *lock(&self.inner.conn) = Some(c.clone());
        Ok(c)
    }

    /// Runs `fut` within `redis.command-timeout-ms`; on failure the command connection is
    /// dropped, so the next command reconnects.
    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let r = match tokio::time::timeout(self.inner.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError("command timed out".into())),
        };
        if r.is_err() {
            *lock(&self.inner.conn) = None;
        }
        r
    }

    fn note(&self, ok: bool) {
        let was = self.inner.up.swap(ok, Ordering::Relaxed);
        if !ok {
            self.inner.command_errors.fetch_add(1, Ordering::Relaxed);
        }
        if was && !ok {
            warn!("Redis unreachable: serving from the last good copy of the store");
        } else if !was && ok {
            info!("Redis reachable");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// When a revocation of `name` lapses (unix seconds; 0: never): `ttl` seconds from now when
/// given; for a REST username, its own expiry (the credential is refused after it anyway);
/// for a name without a timestamp, the latest expiry any REST credential of that user
/// minted until now can have (`now + auth.max-rest-ttl`)... unless that ceiling is off,
/// then never. A static user is revoked until the revocation is lifted: pass no ttl and it
/// is the REST ceiling that lapses, so `turnd revoke --ttl 0` (never) is the form for them.
pub fn revocation_until(
    name: &str,
    ttl: Option<u64>,
    unix_now: u64,
    separator: char,
    max_rest_ttl: u64,
) -> u64 {
    match ttl {
        Some(0) => 0,
        Some(t) => unix_now.saturating_add(t),
        None => match crate::auth::split_rest_username(name, separator) {
            Some((expiry, _)) => expiry.max(unix_now.saturating_add(1)),
            None if max_rest_ttl == u64::MAX => 0,
            None => unix_now.saturating_add(max_rest_ttl),
        },
    }
}

/// Writes the revocation of `name` (SET with the lapse as its expiry) and announces it.
async fn write_revocation(
    conn: &mut MultiplexedConnection,
    realm: &str,
    name: &str,
    until: u64,
    unix_now: u64,
) -> Result<(), StoreError> {
    let key = revoked_key(realm, name);
    let mut set = redis::cmd("SET");
    set.arg(&key).arg(until);
    if until > 0 {
        set.arg("EXAT").arg(until.max(unix_now + 1));
    }
    let _: () = set.query_async(conn).await?;
    let _: u64 = redis::cmd("PUBLISH")
        .arg(CHANGES_CHANNEL)
        .arg(&key)
        .query_async(conn)
        .await?;
    Ok(())
}

/// `turnd revoke`: writes a revocation with a connection of its own (the server need not
/// run on this machine). Returns when it lapses (0: never).
pub async fn revoke_once(
    config: &Config,
    name: &str,
    ttl: Option<u64>,
    unix_now: u64,
) -> Result<u64, String> {
    let Some(cfg) = &config.redis else {
        return Err("the config has no [redis] section: revocation needs the fleet's Redis".into());
    };
    let client = client(cfg)?;
    let timeout = Duration::from_millis(cfg.command_timeout_ms).max(Duration::from_secs(2));
    let until = revocation_until(
        name,
        ttl,
        unix_now,
        config.auth.rest_separator,
        config.auth.max_rest_ttl,
    );
    let work = async {
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(StoreError::from)?;
        write_revocation(&mut conn, &config.server.realm, name, until, unix_now).await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => Ok(until),
        Ok(Err(e)) => Err(format!("redis {}: {e}", redact_url(&cfg.url))),
        Err(_) => Err(format!("redis {}: timed out", redact_url(&cfg.url))),
    }
}

/// Prefix of the revocations, for the docs and tests.
pub fn revoked_prefix() -> &'static str {
    REVOKED_PREFIX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_lapse_with_the_credential() {
        let now = 1_000_000;
        // A REST username: with its own expiry.
        assert_eq!(
            revocation_until("1000500:alice", None, now, ':', 90_000),
            1_000_500
        );
        // A user: once every credential minted until now has expired.
        assert_eq!(
            revocation_until("alice", None, now, ':', 90_000),
            now + 90_000
        );
        assert_eq!(revocation_until("alice", None, now, ':', u64::MAX), 0);
        assert_eq!(
            revocation_until("alice", Some(60), now, ':', 90_000),
            now + 60
        );
        assert_eq!(revocation_until("alice", Some(0), now, ':', 90_000), 0);
        // Already expired: kept a second, so nodes still see the write.
        assert_eq!(revocation_until("5:alice", None, now, ':', 90_000), now + 1);
    }
}
