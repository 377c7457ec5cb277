//! The store mirror: the realm's keys in coturn's layout (and turnd's revocations) copied
//! into memory, kept current by keyspace notifications (and `turnd/changes` messages), with
//! a full resync at start, after every reconnection and every `redis.resync-interval`. Each
//! change becomes a new [`StoreView`] pushed to every worker. While Redis is down the workers
//! keep the last view; reconnection backs off from 100 ms to 5 s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use tracing::{debug, info, warn};

use super::{CHANGES_CHANNEL, Fleet, StoreError};
use crate::auth::StoreView;
use crate::auth::store::{KeyCache, StoreValue, is_store_key, key_patterns};
use crate::net::Control;
use crate::turn::quota::StoreLimits;

/// Keys read per pipeline (and asked per SCAN page).
const BATCH: usize = 500;
/// Most keys a resync mirrors; past it the rest are ignored and the log says so.
const MAX_KEYS: usize = 2_000_000;
/// Changes coalesced into one push: the first waits this long for more.
const COALESCE: Duration = Duration::from_millis(10);
/// Keyspace events turnd needs: K (keyspace channel), $ (strings), s (sets), g (DEL,
/// EXPIRE, RENAME), x (expired).
const NOTIFY_FLAGS: &str = "K$sgx";

pub(super) async fn run(fleet: Fleet, control: Control) {
    let mut mirror = Mirror::default();
    let mut backoff = Duration::from_millis(100);
    let mut warned_notify = false;
    loop {
        let e = session(
            &fleet,
            &control,
            &mut mirror,
            &mut backoff,
            &mut warned_notify,
        )
        .await;
        fleet.note(false);
        warn!(error = %e, retry_ms = backoff.as_millis() as u64, "store sync: Redis lost, keeping the last good copy");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The realm's keys as last read, and the keys derived from their passwords.
#[derive(Default)]
struct Mirror {
    entries: BTreeMap<String, StoreValue>,
    keys: KeyCache,
}

/// One connection's life: subscribe, resync, then follow changes until something fails.
async fn session(
    fleet: &Fleet,
    control: &Control,
    mirror: &mut Mirror,
    backoff: &mut Duration,
    warned_notify: &mut bool,
) -> StoreError {
    let i = &fleet.inner;
    let db = i.client.get_connection_info().redis_settings().db();
    let connect = i.client.get_async_pubsub();
    let mut pubsub =
        match tokio::time::timeout(i.timeout.max(Duration::from_secs(1)), connect).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return e.into(),
            Err(_) => return StoreError("connect timed out".into()),
        };
    let prefix = format!("__keyspace@{db}__:");
    let subscribe = async {
        for p in key_patterns(&i.realm) {
            pubsub.psubscribe(format!("{prefix}{p}")).await?;
        }
        pubsub.subscribe(CHANGES_CHANNEL).await?;
        Ok::<_, StoreError>(())
    };
    match tokio::time::timeout(i.timeout.max(Duration::from_secs(1)), subscribe).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return e,
        Err(_) => return StoreError("subscribe timed out".into()),
    }
    if i.cfg.configure_notifications
        && let Err(e) = ensure_notifications(fleet).await
        && !*warned_notify
    {
        *warned_notify = true;
        warn!(error = %e, "cannot enable Redis keyspace notifications: changes made outside turnd are seen at the next resync (redis.resync-interval)");
    }
    if let Err(e) = resync(fleet, &mut mirror.entries).await {
        return e;
    }
    *backoff = Duration::from_millis(100);
    push(fleet, control, mirror).await;
    let mut stream = pubsub.on_message();
    let mut tick = tokio::time::interval(Duration::from_secs(i.cfg.resync_interval));
    tick.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return StoreError("subscription closed".into());
                };
                let mut keys = BTreeSet::new();
                note_key(&prefix, &i.realm, &msg, &mut keys);
                // Coalesce a burst of changes into one push.
                while keys.len() < BATCH {
                    match tokio::time::timeout(COALESCE, stream.next()).await {
                        Ok(Some(m)) => note_key(&prefix, &i.realm, &m, &mut keys),
                        Ok(None) => return StoreError("subscription closed".into()),
                        Err(_) => break,
                    }
                }
                if keys.is_empty() {
                    continue;
                }
                let keys: Vec<String> = keys.into_iter().collect();
                match read_keys(fleet, &keys).await {
                    Ok(values) => {
                        i.key_updates.fetch_add(keys.len() as u64, Ordering::Relaxed);
                        for (k, v) in keys.into_iter().zip(values) {
                            match v {
                                Some(v) => mirror.entries.insert(k, v),
                                None => mirror.entries.remove(&k),
                            };
                        }
                        push(fleet, control, mirror).await;
                    }
                    Err(e) => return e,
                }
            }
            _ = tick.tick() => {
                if let Err(e) = resync(fleet, &mut mirror.entries).await {
                    return e;
                }
                push(fleet, control, mirror).await;
            }
        }
    }
}

/// The store key a message names, if it is one of the realm's.
fn note_key(prefix: &str, realm: &str, msg: &redis::Msg, keys: &mut BTreeSet<String>) {
    let channel = msg.get_channel_name();
    let key = match channel.strip_prefix(prefix) {
        Some(k) => k.to_owned(),
        None if channel == CHANGES_CHANNEL => match msg.get_payload::<String>() {
            Ok(k) => k,
            Err(_) => return,
        },
        None => return,
    };
    if is_store_key(realm, &key) {
        keys.insert(key);
    }
}

/// Adds the keyspace-event classes turnd needs to Redis' `notify-keyspace-events`.
async fn ensure_notifications(fleet: &Fleet) -> Result<(), StoreError> {
    let mut conn = fleet.conn().await?;
    let r = fleet
        .timed(async {
            let (_, current): (String, String) = redis::cmd("CONFIG")
                .arg("GET")
                .arg("notify-keyspace-events")
                .query_async(&mut conn)
                .await?;
            let has = |c: char| {
                current.contains(c)
                    || (current.contains('A') && c != 'K' && c != 'E' && c != 'm' && c != 'n')
            };
            if NOTIFY_FLAGS.chars().all(has) {
                return Ok(());
            }
            let mut want = current.clone();
            want.extend(NOTIFY_FLAGS.chars().filter(|c| !current.contains(*c)));
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("notify-keyspace-events")
                .arg(&want)
                .query_async(&mut conn)
                .await?;
            info!(flags = %want, "enabled Redis keyspace notifications");
            Ok(())
        })
        .await;
    fleet.inner.commands.fetch_add(2, Ordering::Relaxed);
    fleet.note(r.is_ok());
    r
}

/// Reads every key of the realm's part of the store into `mirror`, replacing it.
async fn resync(
    fleet: &Fleet,
    mirror: &mut BTreeMap<String, StoreValue>,
) -> Result<(), StoreError> {
    let i = &fleet.inner;
    let mut keys = BTreeSet::new();
    for pattern in key_patterns(&i.realm) {
        let mut cursor: u64 = 0;
        loop {
            let mut conn = fleet.conn().await?;
            let page = fleet
                .timed(async {
                    let r: (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(&mut conn)
                        .await?;
                    Ok(r)
                })
                .await;
            i.commands.fetch_add(1, Ordering::Relaxed);
            fleet.note(page.is_ok());
            let (next, found) = page?;
            keys.extend(found.into_iter().filter(|k| is_store_key(&i.realm, k)));
            if keys.len() >= MAX_KEYS {
                warn!(
                    limit = MAX_KEYS,
                    "store resync: too many keys, the rest are ignored"
                );
                break;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    let keys: Vec<String> = keys.into_iter().collect();
    let mut fresh = BTreeMap::new();
    for chunk in keys.chunks(BATCH) {
        let values = read_keys(fleet, chunk).await?;
        for (k, v) in chunk.iter().zip(values) {
            if let Some(v) = v {
                fresh.insert(k.clone(), v);
            }
        }
    }
    *mirror = fresh;
    i.resyncs.fetch_add(1, Ordering::Relaxed);
    debug!(keys = mirror.len(), "store resynced");
    Ok(())
}

/// Reads `keys` (TYPE, then GET or SMEMBERS), two pipelines; None for a key that is gone or
/// of another type.
async fn read_keys(fleet: &Fleet, keys: &[String]) -> Result<Vec<Option<StoreValue>>, StoreError> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(BATCH) {
        let mut conn = fleet.conn().await?;
        let r = fleet.timed(read_chunk(&mut conn, chunk)).await;
        fleet
            .inner
            .commands
            .fetch_add(2 * chunk.len() as u64, Ordering::Relaxed);
        fleet.note(r.is_ok());
        out.extend(r?);
    }
    Ok(out)
}

async fn read_chunk(
    conn: &mut MultiplexedConnection,
    keys: &[String],
) -> Result<Vec<Option<StoreValue>>, StoreError> {
    let mut types = redis::pipe();
    for k in keys {
        types.cmd("TYPE").arg(k);
    }
    let types: Vec<String> = types.query_async(conn).await?;
    let mut reads = redis::pipe();
    let mut kinds = Vec::with_capacity(keys.len());
    for (k, t) in keys.iter().zip(&types) {
        match t.as_str() {
            "string" => {
                reads.cmd("GET").arg(k);
                kinds.push(Some(false));
            }
            "set" => {
                reads.cmd("SMEMBERS").arg(k);
                kinds.push(Some(true));
            }
            _ => kinds.push(None),
        }
    }
    let mut values: Vec<redis::Value> = if kinds.iter().any(Option::is_some) {
        reads.query_async(conn).await?
    } else {
        Vec::new()
    };
    values.reverse();
    let mut out = Vec::with_capacity(keys.len());
    for kind in kinds {
        let Some(is_set) = kind else {
            out.push(None);
            continue;
        };
        let v = values.pop();
        out.push(v.and_then(|v| {
            if is_set {
                redis::from_redis_value::<Vec<String>>(v)
                    .ok()
                    .map(StoreValue::Members)
            } else {
                redis::from_redis_value::<Option<String>>(v)
                    .ok()
                    .flatten()
                    .map(StoreValue::Text)
            }
        }));
    }
    Ok(out)
}

/// Builds the view from the mirror and swaps it into every worker; they end the allocations
/// it revokes. The realm limits go to the shared quotas.
async fn push(fleet: &Fleet, control: &Control, mirror: &mut Mirror) {
    let i = &fleet.inner;
    let view = StoreView::build_cached(&i.realm, &mirror.entries, &mut mirror.keys);
    for key in &view.rejected {
        warn!(%key, "store: value not usable (a key must be 32 hex digits), ignored");
    }
    for range in view.allowed_peers.iter().chain(&view.denied_peers) {
        if crate::turn::peer_policy::parse_range(range).is_err() {
            warn!(%range, "store: peer IP range not understood, ignored");
        }
    }
    i.store_users
        .store(view.user_count() as u64, Ordering::Relaxed);
    i.store_secrets
        .store(view.secret_count() as u64, Ordering::Relaxed);
    i.store_revocations
        .store(view.revoked_count() as u64, Ordering::Relaxed);
    let l = view.limits;
    control.quotas().set_store_limits(StoreLimits {
        user_quota: l.user_quota,
        total_quota: l.total_quota,
        max_bps: l.max_bps,
    });
    let view = Arc::new(view);
    let now = crate::net::now();
    let ended: usize = control
        .on_each_worker(move |core, io| core.set_store(view.clone(), now, io))
        .await
        .into_iter()
        .sum();
    if ended > 0 {
        i.revoked_ended.fetch_add(ended as u64, Ordering::Relaxed);
        info!(
            allocations = ended,
            "ended allocations of revoked credentials"
        );
    }
}
