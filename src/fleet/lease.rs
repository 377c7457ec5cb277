//! Strict fleet quotas: the driver side of a parked Allocate (`turn::server::lease`).
//!
//! A worker's core asks for a lease through its `Io` ([`LeaseDesk::request`]); this task
//! runs one Lua script in Redis that counts the user's and the fleet's live leases and
//! takes one, atomically, and hands the answer back to that worker's core. Leases live in
//! two hashes per realm, `turnd/lease/<realm>/user/<user>` and `turnd/lease/<realm>/total`:
//! per node a count (`c:<node>`) and an expiry in Redis' clock (`t:<node>`, unix ms) that
//! the node's heartbeat renews ([`refresh`]). A count whose expiry has passed (a node
//! killed with SIGKILL) is not counted and is removed by the next script that sees it.
//!
//! Adopted leases (`a:<node>`): what this node granted by per-node counting (Redis down, no
//! answer in time) holds none; once Redis answers again the workers' cores hand over those
//! allocations and reservations ([`adopt`]) and the heartbeat writes their count per user,
//! as a whole value, beside the acquired ones. Ending one of them lowers that value at the
//! next heartbeat: no decrement of a count Redis never had, so no count goes negative.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use tracing::debug;

use super::{Fleet, StoreError, lock};
use crate::net::Control;
use crate::turn::{LeaseAnswer, LeaseRequest};

/// Counts the user's and the fleet's live leases (acquired and adopted) and takes `n` if
/// both stay within their quota. KEYS: the user's hash, the total hash. ARGV: node, user
/// quota, total quota, ttl in ms, n (0 quota: none). Returns 0 granted, 1 over the user's
/// quota, 2 over the total.
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node = ARGV[1]
local ttl = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local function live(key)
  local h = redis.call('HGETALL', key)
  local count, exp = {}, {}
  for i = 1, #h, 2 do
    local f = h[i]
    local p = string.sub(f, 1, 2)
    local who = string.sub(f, 3)
    if p == 't:' then exp[who] = tonumber(h[i + 1])
    elseif p == 'c:' or p == 'a:' then count[who] = (count[who] or 0) + tonumber(h[i + 1]) end
  end
  local sum = 0
  for who, c in pairs(count) do
    local e = exp[who]
    if e and e >= now then sum = sum + c
    else redis.call('HDEL', key, 'c:' .. who, 'a:' .. who, 't:' .. who) end
  end
  return sum
end
local tq = tonumber(ARGV[3])
local total = live(KEYS[2])
if tq > 0 and total + n > tq then return 2 end
local uq = tonumber(ARGV[2])
if uq > 0 and live(KEYS[1]) + n > uq then return 1 end
for i = 1, 2 do
  redis.call('HINCRBY', KEYS[i], 'c:' .. node, n)
  redis.call('HSET', KEYS[i], 't:' .. node, now + ttl)
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return 0
"#;

/// Gives one acquired lease back. KEYS: the user's hash, the total hash. ARGV: node. The
/// expiry stays while the node has adopted leases there.
const RELEASE: &str = r#"
for i = 1, 2 do
  local n = redis.call('HINCRBY', KEYS[i], 'c:' .. ARGV[1], -1)
  if n <= 0 then
    redis.call('HDEL', KEYS[i], 'c:' .. ARGV[1])
    if redis.call('HEXISTS', KEYS[i], 'a:' .. ARGV[1]) == 0 then
      redis.call('HDEL', KEYS[i], 't:' .. ARGV[1])
    end
  end
end
return 0
"#;

/// The heartbeat: renews this node's leases. KEYS: hashes. ARGV: node, ttl in ms, then
/// per key this node's acquired count and adopted count. An acquired count missing in
/// Redis (Redis restarted without its data) is written again, one present is left to the
/// increments and decrements; the adopted count is written as it is (0: removed).
const REFRESH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node = ARGV[1]
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do
  local c = tonumber(ARGV[2 * i + 1])
  local a = tonumber(ARGV[2 * i + 2])
  if c > 0 then redis.call('HSETNX', KEYS[i], 'c:' .. node, c) end
  if a > 0 then redis.call('HSET', KEYS[i], 'a:' .. node, a)
  else redis.call('HDEL', KEYS[i], 'a:' .. node) end
  if c > 0 or a > 0 then
    redis.call('HSET', KEYS[i], 't:' .. node, now + ttl)
    redis.call('PEXPIRE', KEYS[i], ttl)
  elseif redis.call('HEXISTS', KEYS[i], 'c:' .. node) == 0 then
    redis.call('HDEL', KEYS[i], 't:' .. node)
  end
end
return 0
"#;

/// Keys per REFRESH script call.
const REFRESH_CHUNK: usize = 256;

/// What the workers send the lease task.
pub(crate) enum LeaseMsg {
    Acquire {
        worker: usize,
        id: u64,
        user: String,
        user_quota: u32,
        total_quota: u32,
        count: u32,
    },
    Release {
        user: String,
    },
}

/// A worker's way to the lease task, held by its driver `Io`.
#[derive(Clone)]
pub(crate) struct LeaseDesk {
    tx: mpsc::UnboundedSender<LeaseMsg>,
    /// Strict quotas are on: fleet quotas configured and Redis answering.
    active: Arc<AtomicBool>,
}

impl LeaseDesk {
    /// Asks for a lease for parked Allocate `lease.id` of `worker`; false when strict
    /// quotas are off now (the core then counts per node).
    pub(crate) fn request(&self, worker: usize, lease: LeaseRequest<'_>) -> bool {
        if !self.active.load(Ordering::Relaxed) {
            return false;
        }
        self.tx
            .send(LeaseMsg::Acquire {
                worker,
                id: lease.id,
                user: lease.user.to_owned(),
                user_quota: lease.user_quota,
                total_quota: lease.total_quota,
                count: lease.count.max(1),
            })
            .is_ok()
    }

    pub(crate) fn release(&self, user: &str) {
        let _ = self.tx.send(LeaseMsg::Release {
            user: user.to_owned(),
        });
    }
}

/// This node's leases as the lease task knows them.
#[derive(Default)]
pub(super) struct Held {
    /// Granted and not given back, per user.
    per_user: FxHashMap<String, u32>,
    total: u32,
    /// Releases that failed (Redis down), retried by the heartbeat.
    owed: Vec<String>,
    /// Adopted leases per user, and in total under the empty name: written whole by the
    /// heartbeat. An entry at 0 stays until a heartbeat has removed it from Redis.
    adopted: FxHashMap<String, u32>,
}

impl Held {
    fn add(&mut self, user: &str, n: u32) {
        *self.per_user.entry(user.to_owned()).or_default() += n;
        self.total += n;
    }

    /// Counts the leases of allocations and reservations a core has just handed over
    /// (one entry per lease).
    pub(super) fn adopt(&mut self, users: &[String]) {
        for u in users {
            *self.adopted.entry(u.clone()).or_default() += 1;
        }
        *self.adopted.entry(String::new()).or_default() += users.len() as u32;
    }

    /// Gives back one adopted lease of `user`, if it has one (the heartbeat writes the new
    /// count). Leases of one user are alike: whichever of its allocations ended.
    fn take_adopted(&mut self, user: &str) -> bool {
        match self.adopted.get_mut(user) {
            Some(n) if *n > 0 => {
                *n -= 1;
                if let Some(t) = self.adopted.get_mut("") {
                    *t = t.saturating_sub(1);
                }
                true
            }
            _ => false,
        }
    }

    /// Adopted leases held now (users and total each count).
    pub(super) fn adopted_total(&self) -> u32 {
        self.adopted.get("").copied().unwrap_or(0)
    }

    /// What the heartbeat writes: per key (a user, or the empty name for the total) the
    /// acquired and the adopted count.
    fn snapshot(&self) -> Vec<(String, u32, u32)> {
        let adopted = |u: &str| self.adopted.get(u).copied().unwrap_or(0);
        let mut keys: Vec<(String, u32, u32)> = self
            .per_user
            .iter()
            .map(|(u, n)| (u.clone(), *n, adopted(u)))
            .collect();
        for (u, a) in &self.adopted {
            if !u.is_empty() && !self.per_user.contains_key(u) {
                keys.push((u.clone(), 0, *a));
            }
        }
        if self.total > 0 || self.adopted.contains_key("") {
            keys.push((String::new(), self.total, adopted("")));
        }
        keys
    }

    fn remove(&mut self, user: &str) {
        if let Some(n) = self.per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(user);
            }
            self.total = self.total.saturating_sub(1);
        }
    }
}

fn user_key(realm: &str, user: &str) -> String {
    format!("turnd/lease/{realm}/user/{user}")
}

fn total_key(realm: &str) -> String {
    format!("turnd/lease/{realm}/total")
}

/// Starts the lease task and hands every worker its desk and the timeout.
pub(super) async fn start(fleet: Fleet, control: Control) {
    let (tx, rx) = mpsc::unbounded_channel();
    let desk = LeaseDesk {
        tx,
        active: fleet.inner.strict_active.clone(),
    };
    let timeout = fleet.inner.timeout;
    control
        .on_each_worker_indexed(move |i, core, io| {
            core.set_lease_timeout(timeout);
            io.set_lease_desk(desk.clone(), i);
        })
        .await;
    tokio::spawn(run(fleet, control, rx));
}

async fn run(fleet: Fleet, control: Control, mut rx: mpsc::UnboundedReceiver<LeaseMsg>) {
    while let Some(m) = rx.recv().await {
        let fleet = fleet.clone();
        match m {
            LeaseMsg::Acquire {
                worker,
                id,
                user,
                user_quota,
                total_quota,
                count,
            } => {
                let control = control.clone();
                tokio::spawn(async move {
                    let answer = match acquire(&fleet, &user, user_quota, total_quota, count).await
                    {
                        Ok(a) => a,
                        Err(e) => {
                            debug!(error = %e, "lease not taken");
                            LeaseAnswer::Unavailable
                        }
                    };
                    if answer == LeaseAnswer::Granted {
                        lock(&fleet.inner.held).add(&user, count);
                    }
                    let taken = control
                        .on_worker(worker, move |core, io| {
                            core.handle_lease_reply(crate::net::now(), id, answer, io)
                        })
                        .await
                        .unwrap_or(false);
                    if answer == LeaseAnswer::Granted && !taken {
                        // Too late (timed out, the client gone): given back at once.
                        for _ in 0..count {
                            release(fleet.clone(), user.clone()).await;
                        }
                    }
                });
            }
            LeaseMsg::Release { user } => {
                // An adopted lease goes back with the next heartbeat's write.
                if !lock(&fleet.inner.held).take_adopted(&user) {
                    tokio::spawn(release(fleet, user));
                }
            }
        }
    }
}

async fn acquire(
    fleet: &Fleet,
    user: &str,
    user_quota: u32,
    total_quota: u32,
    count: u32,
) -> Result<LeaseAnswer, StoreError> {
    let i = &fleet.inner;
    let mut conn = fleet.conn().await?;
    let ttl_ms = i.cfg.node_ttl.saturating_mul(1000).max(1000);
    let fut = async {
        let r: i64 = redis::cmd("EVAL")
            .arg(ACQUIRE)
            .arg(2)
            .arg(user_key(&i.realm, user))
            .arg(total_key(&i.realm))
            .arg(&i.node)
            .arg(user_quota)
            .arg(total_quota)
            .arg(ttl_ms)
            .arg(count)
            .query_async(&mut conn)
            .await?;
        Ok(r)
    };
    let r = fleet.timed(fut).await;
    i.commands
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    i.lease_commands
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    fleet.note(r.is_ok());
    Ok(match r? {
        0 => LeaseAnswer::Granted,
        1 => LeaseAnswer::UserQuota,
        _ => LeaseAnswer::TotalQuota,
    })
}

/// Gives a lease of `user` back; on failure it stays counted, owed, and the heartbeat
/// retries it.
async fn release(fleet: Fleet, user: String) {
    let i = &fleet.inner;
    let r = async {
        let mut conn = fleet.conn().await?;
        let fut = async {
            let _: i64 = redis::cmd("EVAL")
                .arg(RELEASE)
                .arg(2)
                .arg(user_key(&i.realm, &user))
                .arg(total_key(&i.realm))
                .arg(&i.node)
                .query_async(&mut conn)
                .await?;
            Ok(())
        };
        fleet.timed(fut).await
    }
    .await;
    i.commands
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    i.lease_commands
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    fleet.note(r.is_ok());
    let mut held = lock(&i.held);
    if r.is_ok() {
        held.remove(&user);
    } else {
        // Still counted (and renewed) until Redis has it back: a quota errs on refusing.
        held.owed.push(user);
    }
}

/// The heartbeat's part: retries the owed releases, then renews the expiry of this node's
/// leases (and writes back counts Redis lost), and writes the adopted counts.
pub(super) async fn refresh(fleet: &Fleet) -> Result<(), StoreError> {
    let i = &fleet.inner;
    let owed = std::mem::take(&mut lock(&i.held).owed);
    for user in owed {
        // A failure puts it back on the list.
        release(fleet.clone(), user).await;
    }
    let counts = lock(&i.held).snapshot();
    let ttl_ms = i.cfg.node_ttl.saturating_mul(1000).max(1000);
    for chunk in counts.chunks(REFRESH_CHUNK) {
        let mut conn = fleet.conn().await?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(REFRESH).arg(chunk.len());
        for (user, _, _) in chunk {
            if user.is_empty() {
                cmd.arg(total_key(&i.realm));
            } else {
                cmd.arg(user_key(&i.realm, user));
            }
        }
        cmd.arg(&i.node).arg(ttl_ms);
        for (_, c, a) in chunk {
            cmd.arg(*c).arg(*a);
        }
        let fut = async {
            let _: i64 = cmd.query_async(&mut conn).await?;
            Ok(())
        };
        let r = fleet.timed(fut).await;
        i.commands
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        fleet.note(r.is_ok());
        r?;
    }
    // Adopted counts written as 0 are gone from Redis: forget them, unless one was adopted
    // again meanwhile.
    let mut h = lock(&i.held);
    for (user, _, a) in &counts {
        if *a == 0 && h.adopted.get(user) == Some(&0) {
            h.adopted.remove(user);
        }
    }
    Ok(())
}

/// Has every worker's core hand over what it granted by per-node counting under a quota
/// (all of it with `all`, else only when something new was), counts those leases as
/// adopted, and returns how many. Each core's hand-over is counted on its own thread
/// before it goes on, so the release of one of them can never come first.
pub(super) async fn adopt(fleet: &Fleet, control: &Control, all: bool) -> usize {
    let f = fleet.clone();
    control
        .on_each_worker(move |core, _| {
            let users = core.adopt_unleased(all);
            if !users.is_empty() {
                lock(&f.inner.held).adopt(&users);
            }
            users.len()
        })
        .await
        .into_iter()
        .sum()
}
