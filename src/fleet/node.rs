//! This node in the fleet, once a second: publish its entry (load, draining, allocation
//! counts per user) with a short expiry, read everyone's, count the quotas across the
//! fleet, redirect new allocations when draining or over a threshold, and append the
//! workers' allocation events to the capped stream.
//!
//! Quota leases: each allocation holds one in Redis ([`super::lease`]); the heartbeat here
//! renews this node's with a `redis.node-ttl` expiry, so a node killed with SIGKILL gives its
//! counts back by itself, and registers the leases of what was granted by per-node counting
//! once Redis answers again. The per-user counts in the entry are for `GET /cluster`.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tracing::{info, warn};

use super::{Fleet, NODE_PREFIX, NodeEntry, StoreError, lock};
use crate::auth::display_user;
use crate::lifecycle::Lifecycle;
use crate::net::Control;
use crate::turn::{AllocationEvent, MAX_PENDING_EVENTS};

const PERIOD: Duration = Duration::from_secs(1);

/// CPU time of this process, from /proc/self/stat (user + system, in clock ticks).
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (USER_HZ), 100 on every Linux turnd runs on.
const TICKS_PER_SEC: f64 = 100.0;

struct Load {
    at: Instant,
    cpu: Option<u64>,
    bytes: u64,
}

pub(super) async fn run(fleet: Fleet, control: Control, lifecycle: Option<Lifecycle>) {
    let i = &fleet.inner;
    let events_on = !i.cfg.events_stream.is_empty();
    if events_on {
        control
            .on_each_worker(|core, _| core.capture_events(true))
            .await;
    }
    let mut held: VecDeque<AllocationEvent> = VecDeque::new();
    let mut last = Load {
        at: Instant::now(),
        cpu: cpu_ticks(),
        bytes: 0,
    };
    let mut redirecting = false;
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let draining = lifecycle.as_ref().is_some_and(Lifecycle::is_draining);
        let entry = own_entry(&fleet, &control, draining, &mut last).await;
        if events_on {
            let mut lost = 0;
            for (events, l) in control.on_each_worker(|core, _| core.take_events()).await {
                lost += l;
                held.extend(events);
            }
            while held.len() > MAX_PENDING_EVENTS {
                held.pop_front();
                lost += 1;
            }
            i.events_lost.fetch_add(lost, Ordering::Relaxed);
        }
        let round = exchange(&fleet, &entry, &mut held).await;
        match round {
            Ok(nodes) => {
                if i.cfg.fleet_quotas {
                    // Strict: each Allocate takes a lease in Redis, so the local check counts
                    // this node alone; the others' published counts are for `GET /cluster`.
                    control.quotas().set_fleet_counts(FxHashMap::default(), 0);
                    let renewed = super::lease::refresh(&fleet).await;
                    let was = i.strict_active.swap(renewed.is_ok(), Ordering::Relaxed);
                    if renewed.is_ok() && !i.fleet_quotas_active.swap(true, Ordering::Relaxed) {
                        info!(nodes = nodes.len(), "quotas counted across the fleet");
                    }
                    if renewed.is_ok() {
                        // What was granted by per-node counting gets its leases now: all of
                        // it when Redis has just come back, else what the cores flag.
                        let n = super::lease::adopt(&fleet, &control, !was).await;
                        if n > 0 {
                            i.adopted.fetch_add(n as u64, Ordering::Relaxed);
                            info!(
                                leases = n,
                                "leases registered in Redis for allocations and reservations granted by per-node counting"
                            );
                            // Written now rather than at the next heartbeat.
                            let _ = super::lease::refresh(&fleet).await;
                        }
                    }
                }
                *lock(&i.cluster) = nodes;
            }
            Err(e) => {
                i.strict_active.store(false, Ordering::Relaxed);
                if i.fleet_quotas_active.swap(false, Ordering::Relaxed) {
                    warn!(error = %e, "Redis down: quotas fall back to per-node counting");
                }
                control.quotas().set_fleet_counts(FxHashMap::default(), 0);
                // Other nodes' entries expire while we cannot see them renewed.
                let ttl = i.cfg.node_ttl;
                lock(&i.cluster).retain(|n| n.node == i.node || entry.unix < n.unix + ttl);
            }
        }
        let nodes = fleet.cluster();
        let target = if draining || entry.overloaded {
            least_loaded(&nodes, &i.node)
        } else {
            None
        };
        match (draining, target) {
            (true, Some(t)) => {
                let alts = t.addresses.clone();
                let domain = (!t.domain.is_empty()).then(|| t.domain.clone());
                control
                    .on_each_worker(move |core, _| {
                        core.drain(&alts);
                        core.set_redirect(None, domain.clone());
                    })
                    .await;
            }
            (false, Some(t)) => {
                let alts = t.addresses.clone();
                let domain = (!t.domain.is_empty()).then(|| t.domain.clone());
                if !redirecting {
                    info!(to = %t.node, "over the load threshold: new allocations are redirected");
                }
                redirecting = true;
                control
                    .on_each_worker(move |core, _| core.set_redirect(Some(&alts), domain.clone()))
                    .await;
            }
            (_, None) if redirecting => {
                redirecting = false;
                info!("new allocations are granted here again");
                control
                    .on_each_worker(|core, _| core.set_redirect(None, None))
                    .await;
            }
            _ => {}
        }
    }
}

/// This node's entry from its workers' counters.
async fn own_entry(fleet: &Fleet, control: &Control, draining: bool, last: &mut Load) -> NodeEntry {
    let i = &fleet.inner;
    let per_worker = control
        .on_each_worker(|core, _| {
            let t = core.stats().traffic;
            (
                core.allocation_count() as u64,
                t.rcvb + t.sentb + t.peer_rcvb + t.peer_sentb,
            )
        })
        .await;
    let allocations = per_worker.iter().map(|w| w.0).sum();
    let bytes: u64 = per_worker.iter().map(|w| w.1).sum();
    let now = Instant::now();
    let secs = now.duration_since(last.at).as_secs_f64().max(0.001);
    let bps = (bytes.saturating_sub(last.bytes) as f64 * 8.0 / secs) as u64;
    let cpu = cpu_ticks();
    let cpu_percent = match (cpu, last.cpu) {
        (Some(c), Some(p)) => c.saturating_sub(p) as f64 / TICKS_PER_SEC / secs * 100.0,
        _ => 0.0,
    };
    *last = Load {
        at: now,
        cpu,
        bytes,
    };
    let c = &i.cfg;
    let overloaded = (c.redirect_allocations > 0 && allocations >= c.redirect_allocations)
        || (c.redirect_bps > 0 && bps >= c.redirect_bps)
        || (c.redirect_cpu_percent > 0 && cpu_percent >= f64::from(c.redirect_cpu_percent));
    let mut users = BTreeMap::new();
    for (user, n) in control.quotas().user_counts() {
        users.insert(user, n);
    }
    NodeEntry {
        node: i.node.clone(),
        addresses: i.advertise.clone(),
        domain: c.advertise_domain.clone(),
        allocations,
        bps,
        cpu_percent: (cpu_percent * 10.0).round() / 10.0,
        draining,
        overloaded,
        users,
        unix: crate::net::now().unix,
    }
}

/// Publishes `entry`, appends the held events, and reads every node's entry.
async fn exchange(
    fleet: &Fleet,
    entry: &NodeEntry,
    held: &mut VecDeque<AllocationEvent>,
) -> Result<Vec<NodeEntry>, StoreError> {
    let i = &fleet.inner;
    let json = serde_json::to_string(entry).map_err(|e| StoreError(e.to_string()))?;
    let key = format!("{NODE_PREFIX}{}", i.node);
    let mut conn = fleet.conn().await?;
    let r = fleet
        .timed(async {
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(&json)
                .arg("EX")
                .arg(i.cfg.node_ttl)
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
        .await;
    i.commands.fetch_add(1, Ordering::Relaxed);
    fleet.note(r.is_ok());
    r?;
    if !held.is_empty() {
        write_events(fleet, &mut conn, held).await?;
    }
    // Every node's entry: SCAN, then MGET.
    let mut names = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let page = fleet
            .timed(async {
                let r: (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{NODE_PREFIX}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await?;
                Ok(r)
            })
            .await;
        i.commands.fetch_add(1, Ordering::Relaxed);
        fleet.note(page.is_ok());
        let (next, found) = page?;
        names.extend(found);
        cursor = next;
        if cursor == 0 || names.len() > 100_000 {
            break;
        }
    }
    names.sort();
    names.dedup();
    let mut nodes = Vec::with_capacity(names.len());
    for chunk in names.chunks(500) {
        let values = fleet
            .timed(async {
                let v: Vec<Option<String>> =
                    redis::cmd("MGET").arg(chunk).query_async(&mut conn).await?;
                Ok(v)
            })
            .await;
        i.commands.fetch_add(1, Ordering::Relaxed);
        fleet.note(values.is_ok());
        for v in values?.into_iter().flatten() {
            if let Ok(n) = serde_json::from_str::<NodeEntry>(&v) {
                nodes.push(n);
            }
        }
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(nodes)
}

/// XADD of every held event to the capped stream, one pipeline; on failure they stay held.
async fn write_events(
    fleet: &Fleet,
    conn: &mut redis::aio::MultiplexedConnection,
    held: &mut VecDeque<AllocationEvent>,
) -> Result<(), StoreError> {
    let i = &fleet.inner;
    let n = held.len().min(5000);
    let mut pipe = redis::pipe();
    for ev in held.iter().take(n) {
        let relayed: Vec<String> = ev.relayed.iter().map(SocketAddr::to_string).collect();
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&i.cfg.events_stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(i.cfg.events_maxlen)
            .arg("*")
            .arg("event")
            .arg(ev.kind.as_str())
            .arg("node")
            .arg(&i.node)
            .arg("id")
            .arg(ev.id)
            .arg("unix")
            .arg(ev.unix)
            .arg("user")
            .arg(display_user(&ev.username, i.rest_separator))
            .arg("username")
            .arg(&ev.username)
            .arg("client")
            .arg(ev.client.to_string())
            .arg("transport")
            .arg(ev.transport)
            .arg("relayed")
            .arg(relayed.join(","))
            .arg("lifetime")
            .arg(ev.lifetime_secs)
            .arg("bytes_to_peer")
            .arg(ev.bytes_to_peer)
            .arg("bytes_from_peer")
            .arg(ev.bytes_from_peer)
            .arg("packets_to_peer")
            .arg(ev.packets_to_peer)
            .arg("packets_from_peer")
            .arg(ev.packets_from_peer);
        if let Some(q) = &ev.quality {
            cmd.arg("quality_state")
                .arg(q.state)
                .arg("client_rtt_p50_ms")
                .arg(q.client_rtt_ms.0)
                .arg("client_rtt_p95_ms")
                .arg(q.client_rtt_ms.1)
                .arg("peer_rtt_p50_ms")
                .arg(q.peer_rtt_ms.0)
                .arg("peer_rtt_p95_ms")
                .arg(q.peer_rtt_ms.1)
                .arg("checks_unanswered")
                .arg(q.checks_unanswered)
                .arg("streams")
                .arg(&q.streams);
        }
        if let Some(r) = ev.reason {
            cmd.arg("reason").arg(format!("{r:?}").to_lowercase());
        }
        pipe.add_command(cmd).ignore();
    }
    let r = fleet
        .timed(async {
            let _: () = pipe.query_async(conn).await?;
            Ok(())
        })
        .await;
    i.commands.fetch_add(n as u64, Ordering::Relaxed);
    fleet.note(r.is_ok());
    r?;
    held.drain(..n);
    i.events_written.fetch_add(n as u64, Ordering::Relaxed);
    Ok(())
}

/// The healthy node other than `me` with the fewest allocations (then the least CPU).
fn least_loaded<'a>(nodes: &'a [NodeEntry], me: &str) -> Option<&'a NodeEntry> {
    nodes
        .iter()
        .filter(|n| n.node != me && n.healthy() && !n.addresses.is_empty())
        .min_by(|a, b| {
            a.allocations
                .cmp(&b.allocations)
                .then(a.cpu_percent.total_cmp(&b.cpu_percent))
                .then(a.node.cmp(&b.node))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, allocations: u64, draining: bool, users: &[(&str, u32)]) -> NodeEntry {
        NodeEntry {
            node: name.into(),
            addresses: vec!["127.0.0.1:3478".parse().unwrap()],
            allocations,
            draining,
            users: users.iter().map(|(u, n)| ((*u).to_owned(), *n)).collect(),
            ..NodeEntry::default()
        }
    }

    #[test]
    fn redirect_target_leaves_out_this_node() {
        let nodes = [
            node("a", 1, false, &[("alice", 1)]),
            node("b", 5, false, &[("alice", 2), ("bob", 3)]),
            node("c", 0, true, &[]),
            node("d", 3, false, &[]),
        ];
        // c is draining: the least loaded healthy other node is d.
        assert_eq!(
            least_loaded(&nodes, "a").map(|n| n.node.as_str()),
            Some("d")
        );
        assert_eq!(
            least_loaded(&nodes, "d").map(|n| n.node.as_str()),
            Some("a")
        );
        assert!(least_loaded(&nodes[..1], "a").is_none());
    }

    #[test]
    fn cpu_ticks_read_from_proc() {
        assert!(cpu_ticks().is_some());
    }
}
