//! Allocation quotas shared by every worker: per user (486) and in total (508)
//! (RFC 8656 §7.2), per-user overrides, and the server's bandwidth capacity: the sum of the
//! bandwidth limits of live allocations may not exceed `bps-capacity` (508 over it).
//! Touched only when an allocation starts or ends (and on reload), never per packet.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use super::bandwidth::Rate;
use super::error::RequestError;

#[derive(Debug, Default)]
struct Counts {
    per_user: FxHashMap<String, u32>,
    total: u32,
    /// Sum of the `bps` of live allocations.
    bps_reserved: u64,
    /// Live allocations per client IP (IPv6 by /64); entries exist only while the IP holds
    /// an authenticated allocation, so spoofed traffic cannot grow the map.
    per_ip: FxHashMap<IpAddr, u32>,
    /// Allocations the other nodes of a fleet hold, per user and in total, as they last
    /// published them (empty without a fleet, or while its store is down).
    fleet_per_user: FxHashMap<String, u32>,
    fleet_total: u32,
}

/// What one user may hold instead of the server-wide defaults; `None` keeps the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserLimits {
    /// Most live allocations (0: no limit).
    pub quota: Option<u32>,
    /// Bandwidth limit of each allocation, bits per second each way (0: none).
    pub max_bps: Option<u64>,
}

/// The limits in force; a reload replaces them while the counts carry on.
#[derive(Debug, Default)]
struct Limits {
    user_quota: u32,
    total_quota: u32,
    max_bps: u64,
    burst: u64,
    bps_capacity: u64,
    overrides: FxHashMap<String, UserLimits>,
    /// Most live allocations per client IP; 0 means none.
    ip_quota: u32,
    /// The shared store's realm limits (coturn's `user-quota`, `total-quota`, `max-bps`),
    /// over the file's; a reload of the file leaves them.
    store: StoreLimits,
}

/// Realm limits from a fleet's shared store; None keeps the file's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreLimits {
    pub user_quota: Option<u32>,
    pub total_quota: Option<u32>,
    pub max_bps: Option<u64>,
}

impl Limits {
    fn rate_for(&self, user: &str) -> Rate {
        let bps = self
            .overrides
            .get(user)
            .and_then(|o| o.max_bps)
            .or(self.store.max_bps)
            .unwrap_or(self.max_bps);
        Rate::new(bps, self.burst)
    }

    fn quota_for(&self, user: &str) -> u32 {
        self.overrides
            .get(user)
            .and_then(|o| o.quota)
            .or(self.store.user_quota)
            .unwrap_or(self.user_quota)
    }

    fn total_quota(&self) -> u32 {
        self.store.total_quota.unwrap_or(self.total_quota)
    }
}

#[derive(Debug, Default)]
struct State {
    limits: Limits,
    counts: Counts,
}

/// Live allocation counts against their limits; a limit of 0 means none.
#[derive(Debug, Default)]
pub struct Quotas {
    state: Mutex<State>,
}

impl Quotas {
    pub fn new(user_quota: u32, total_quota: u32) -> Quotas {
        let q = Quotas::default();
        {
            let mut s = q.lock();
            s.limits.user_quota = user_quota;
            s.limits.total_quota = total_quota;
        }
        q
    }

    /// Sets the default per-allocation limit (`max_bps`, bits per second each way, with a
    /// bucket of `burst` bytes, 0 for the default burst) and the server's capacity (the most
    /// the limits of live allocations may add up to); 0 means none.
    pub fn with_bandwidth(self, max_bps: u64, burst: u64, bps_capacity: u64) -> Quotas {
        {
            let mut s = self.lock();
            s.limits.max_bps = max_bps;
            s.limits.burst = burst;
            s.limits.bps_capacity = bps_capacity;
        }
        self
    }

    /// Per-user overrides, keyed by user (a REST user without its timestamp).
    pub fn with_user_limits(self, overrides: FxHashMap<String, UserLimits>) -> Quotas {
        self.lock().limits.overrides = overrides;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The bandwidth limit an allocation of `user` gets.
    pub fn rate_for(&self, user: &str) -> Rate {
        self.lock().limits.rate_for(user)
    }

    /// Counts one more allocation for `user` and returns its bandwidth limit, or says which
    /// error code refuses it: 508 over the total quota or the bandwidth capacity, 486 over
    /// the user's quota.
    pub fn acquire(&self, user: &str) -> Result<Rate, RequestError> {
        let mut s = self.lock();
        let State { limits, counts: c } = &mut *s;
        let rate = limits.rate_for(user);
        let quota = limits.quota_for(user);
        let total_quota = limits.total_quota();
        if total_quota > 0 && c.total.saturating_add(c.fleet_total) >= total_quota {
            return Err(RequestError::InsufficientCapacity);
        }
        if limits.bps_capacity > 0 && c.bps_reserved.saturating_add(rate.bps) > limits.bps_capacity
        {
            return Err(RequestError::InsufficientCapacity);
        }
        let n = c.per_user.get(user).copied().unwrap_or(0);
        let elsewhere = c.fleet_per_user.get(user).copied().unwrap_or(0);
        if quota > 0 && n.saturating_add(elsewhere) >= quota {
            return Err(RequestError::AllocationQuotaReached);
        }
        c.per_user.insert(user.to_string(), n + 1);
        c.total += 1;
        c.bps_reserved = c.bps_reserved.saturating_add(rate.bps);
        Ok(rate)
    }

    /// Whether `acquire(user)` would succeed now, without counting anything: the local check
    /// an Allocate passes before it is parked for a fleet lease.
    pub fn check(&self, user: &str) -> Result<(), RequestError> {
        let s = self.lock();
        let State { limits, counts: c } = &*s;
        let rate = limits.rate_for(user);
        let quota = limits.quota_for(user);
        let total_quota = limits.total_quota();
        if total_quota > 0 && c.total.saturating_add(c.fleet_total) >= total_quota {
            return Err(RequestError::InsufficientCapacity);
        }
        if limits.bps_capacity > 0 && c.bps_reserved.saturating_add(rate.bps) > limits.bps_capacity
        {
            return Err(RequestError::InsufficientCapacity);
        }
        let n = c.per_user.get(user).copied().unwrap_or(0);
        let elsewhere = c.fleet_per_user.get(user).copied().unwrap_or(0);
        if quota > 0 && n.saturating_add(elsewhere) >= quota {
            return Err(RequestError::AllocationQuotaReached);
        }
        Ok(())
    }

    /// The (user, total) allocation limits that apply to `user` (its override, the store's
    /// realm limits, the file's); 0 means none.
    pub fn limits_for(&self, user: &str) -> (u32, u32) {
        let s = self.lock();
        (s.limits.quota_for(user), s.limits.total_quota())
    }

    /// The (per-user, total) allocation limits in force; 0 means none.
    pub fn limits(&self) -> (u32, u32) {
        let s = self.lock();
        let user = s.limits.store.user_quota.unwrap_or(s.limits.user_quota);
        (user, s.limits.total_quota())
    }

    /// The shared store's realm limits, over the file's (None keeps the file's).
    pub fn set_store_limits(&self, store: StoreLimits) {
        self.lock().limits.store = store;
    }

    /// What the other nodes of a fleet hold, counted with this node's own against the user
    /// and total quotas. Empty maps and 0: per-node counting (no fleet, or its store down).
    pub fn set_fleet_counts(&self, per_user: FxHashMap<String, u32>, total: u32) {
        let mut s = self.lock();
        s.counts.fleet_per_user = per_user;
        s.counts.fleet_total = total;
    }

    /// This node's own live allocations per user, for the fleet to publish.
    pub fn user_counts(&self) -> Vec<(String, u32)> {
        self.lock()
            .counts
            .per_user
            .iter()
            .map(|(u, n)| (u.clone(), *n))
            .collect()
    }

    /// Changes the allocation limits on reload. The live counts are kept: allocations over a
    /// lowered limit go on, and new ones are refused until the count is back under it.
    pub fn set_limits(&self, user_quota: u32, total_quota: u32) {
        let mut s = self.lock();
        s.limits.user_quota = user_quota;
        s.limits.total_quota = total_quota;
    }

    /// Changes the bandwidth limits and per-user overrides on reload. Live allocations keep
    /// the rate they were granted (and its reservation); new ones get the new limits.
    pub fn set_bandwidth(
        &self,
        max_bps: u64,
        burst: u64,
        bps_capacity: u64,
        overrides: FxHashMap<String, UserLimits>,
    ) {
        let mut s = self.lock();
        s.limits.max_bps = max_bps;
        s.limits.burst = burst;
        s.limits.bps_capacity = bps_capacity;
        s.limits.overrides = overrides;
    }

    /// Also caps live allocations per client IP (an IPv6 client by its /64); 0 means none.
    pub fn with_ip_quota(self, ip_quota: u32) -> Quotas {
        self.lock().limits.ip_quota = ip_quota;
        self
    }

    /// Changes the per-IP cap on reload; live counts are kept.
    pub fn set_ip_quota(&self, ip_quota: u32) {
        self.lock().limits.ip_quota = ip_quota;
    }

    /// Counts one more allocation from `ip`, or refuses it with 486 (Allocation Quota
    /// Reached, RFC 8656 §7.2) when the IP holds its quota. Counted even without a cap, so a
    /// cap set by a reload sees the allocations already live.
    pub fn acquire_ip(&self, ip: IpAddr) -> Result<(), RequestError> {
        let key = ip_key(ip);
        let mut s = self.lock();
        let quota = s.limits.ip_quota;
        let c = &mut s.counts;
        let n = c.per_ip.get(&key).copied().unwrap_or(0);
        if quota > 0 && n >= quota {
            return Err(RequestError::AllocationQuotaReached);
        }
        c.per_ip.insert(key, n + 1);
        Ok(())
    }

    pub fn release_ip(&self, ip: IpAddr) {
        let key = ip_key(ip);
        let mut s = self.lock();
        let c = &mut s.counts;
        if let Some(n) = c.per_ip.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_ip.remove(&key);
            }
        }
    }

    /// Live allocations counted against a client IP's quota.
    pub fn ip_count(&self, ip: IpAddr) -> u32 {
        self.lock()
            .counts
            .per_ip
            .get(&ip_key(ip))
            .copied()
            .unwrap_or(0)
    }

    /// Gives back what [`Quotas::acquire`] took; `bps` is the limit it returned.
    pub fn release(&self, user: &str, bps: u64) {
        let mut s = self.lock();
        let c = &mut s.counts;
        if let Some(n) = c.per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                c.per_user.remove(user);
            }
            c.total = c.total.saturating_sub(1);
            c.bps_reserved = c.bps_reserved.saturating_sub(bps);
        }
    }

    /// Live allocations of a user.
    pub fn user_count(&self, user: &str) -> u32 {
        self.lock().counts.per_user.get(user).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u32 {
        self.lock().counts.total
    }

    /// Sum of the bandwidth limits of live allocations, bits per second.
    pub fn bps_reserved(&self) -> u64 {
        self.lock().counts.bps_reserved
    }

    /// The configured capacity (0: none).
    pub fn bps_capacity(&self) -> u64 {
        self.lock().limits.bps_capacity
    }
}

/// One allocation (or one EVEN-PORT reservation) counted against the quotas: the user's
/// count, the total, the bandwidth capacity and the client IP's count. Given back when
/// dropped, so no failure path can leak a count.
#[derive(Debug)]
pub struct QuotaHold {
    quotas: Arc<Quotas>,
    user: String,
    ip: IpAddr,
    rate: Rate,
}

impl QuotaHold {
    /// Counts one more allocation of `user` from `ip`, or says which error code refuses it
    /// (see [`Quotas::acquire`] and [`Quotas::acquire_ip`]).
    pub fn acquire(
        quotas: &Arc<Quotas>,
        user: &str,
        ip: IpAddr,
    ) -> Result<QuotaHold, RequestError> {
        let rate = quotas.acquire(user)?;
        if let Err(code) = quotas.acquire_ip(ip) {
            quotas.release(user, rate.bps);
            return Err(code);
        }
        Ok(QuotaHold {
            quotas: quotas.clone(),
            user: user.to_string(),
            ip,
            rate,
        })
    }

    /// The bandwidth limit granted with this hold.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The user this hold counts for.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Whether this hold counts for `user` from `ip` (an IPv6 client by its /64).
    pub fn is_for(&self, user: &str, ip: IpAddr) -> bool {
        self.user == user && ip_key(self.ip) == ip_key(ip)
    }
}

impl Drop for QuotaHold {
    fn drop(&mut self) {
        self.quotas.release(&self.user, self.rate.bps);
        self.quotas.release_ip(self.ip);
    }
}

/// The key a client IP is counted under: IPv4 (mapped ones too) as itself, IPv6 by its /64.
use super::client_ip_key as ip_key;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_counts_and_store_limits_add_up() {
        let q = Quotas::new(5, 0);
        let mut elsewhere = FxHashMap::default();
        elsewhere.insert("a".to_owned(), 1);
        q.set_fleet_counts(elsewhere, 4);
        q.set_store_limits(StoreLimits {
            user_quota: Some(2),
            total_quota: Some(6),
            max_bps: Some(64_000),
        });
        assert_eq!(q.limits(), (2, 6));
        assert_eq!(q.acquire("a").map(|r| r.bps), Ok(64_000));
        // 1 here + 1 elsewhere: a's quota of 2 (the store's, over the file's 5) is reached.
        assert_eq!(q.acquire("a"), Err(RequestError::AllocationQuotaReached));
        assert!(q.acquire("b").is_ok());
        // 2 here + 4 elsewhere: the total of 6 is reached.
        assert_eq!(q.acquire("c"), Err(RequestError::InsufficientCapacity));
        assert_eq!(q.user_counts().len(), 2);
        // The store down: per-node counting again; a reload keeps the store's limits.
        q.set_fleet_counts(FxHashMap::default(), 0);
        q.set_limits(9, 9);
        assert_eq!(q.limits(), (2, 6));
        assert!(q.acquire("a").is_ok());
        q.set_store_limits(StoreLimits::default());
        assert_eq!(q.limits(), (9, 9));
    }

    #[test]
    fn user_and_total_limits() {
        let q = Quotas::new(2, 3);
        assert!(q.acquire("a").is_ok());
        assert!(q.acquire("a").is_ok());
        assert_eq!(q.acquire("a"), Err(RequestError::AllocationQuotaReached));
        assert!(q.acquire("b").is_ok());
        assert_eq!(q.acquire("c"), Err(RequestError::InsufficientCapacity));
        q.release("a", 0);
        assert!(q.acquire("c").is_ok());
        assert_eq!(q.total(), 3);
        assert_eq!(q.user_count("a"), 1);
        q.release("nobody", 0);
        assert_eq!(q.total(), 3);
    }

    #[test]
    fn a_hold_gives_its_counts_back_when_dropped() {
        let q = Arc::new(Quotas::new(1, 0).with_ip_quota(1));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let h = QuotaHold::acquire(&q, "a", ip).unwrap();
        assert_eq!(
            QuotaHold::acquire(&q, "a", ip).unwrap_err(),
            RequestError::AllocationQuotaReached
        );
        // Over the IP's cap: the user's count taken on the way is given back.
        assert_eq!(
            QuotaHold::acquire(&q, "b", ip).unwrap_err(),
            RequestError::AllocationQuotaReached
        );
        assert_eq!(q.user_count("b"), 0);
        assert!(h.is_for("a", ip) && !h.is_for("b", ip));
        drop(h);
        assert_eq!((q.total(), q.ip_count(ip), q.user_count("a")), (0, 0, 0));
        assert!(QuotaHold::acquire(&q, "a", ip).is_ok());
    }

    #[test]
    fn zero_means_unlimited() {
        let q = Quotas::new(0, 0);
        for _ in 0..1000 {
            assert_eq!(q.acquire("a"), Ok(Rate::new(0, 0)));
        }
    }

    #[test]
    fn overrides_replace_the_defaults() {
        let mut o = FxHashMap::default();
        o.insert(
            "vip".to_string(),
            UserLimits {
                quota: Some(0),
                max_bps: Some(8_000_000),
            },
        );
        o.insert(
            "small".to_string(),
            UserLimits {
                quota: Some(1),
                max_bps: None,
            },
        );
        let q = Quotas::new(2, 0)
            .with_bandwidth(1_000_000, 0, 0)
            .with_user_limits(o);
        for _ in 0..5 {
            assert_eq!(q.acquire("vip").map(|r| r.bps), Ok(8_000_000));
        }
        assert_eq!(q.acquire("small").map(|r| r.bps), Ok(1_000_000));
        assert_eq!(
            q.acquire("small"),
            Err(RequestError::AllocationQuotaReached)
        );
        assert!(q.acquire("other").is_ok());
        assert!(q.acquire("other").is_ok());
        assert_eq!(
            q.acquire("other"),
            Err(RequestError::AllocationQuotaReached)
        );
    }

    #[test]
    fn bandwidth_capacity() {
        let mut o = FxHashMap::default();
        o.insert(
            "big".to_string(),
            UserLimits {
                quota: None,
                max_bps: Some(3_000),
            },
        );
        let q = Quotas::new(0, 0)
            .with_bandwidth(1_000, 0, 4_000)
            .with_user_limits(o);
        assert!(q.acquire("a").is_ok());
        assert!(q.acquire("big").is_ok());
        assert_eq!(q.bps_reserved(), 4_000);
        assert_eq!(q.acquire("a"), Err(RequestError::InsufficientCapacity));
        q.release("big", 3_000);
        assert_eq!(q.bps_reserved(), 1_000);
        assert!(q.acquire("a").is_ok());
        assert_eq!(q.acquire("big"), Err(RequestError::InsufficientCapacity));
    }

    #[test]
    fn new_limits_keep_the_live_counts() {
        let q = Quotas::new(0, 0);
        for _ in 0..3 {
            assert_eq!(q.acquire("a"), Ok(Rate::new(0, 0)));
        }
        q.set_limits(2, 10);
        assert_eq!(q.limits(), (2, 10));
        assert_eq!(q.user_count("a"), 3);
        assert_eq!(q.acquire("a"), Err(RequestError::AllocationQuotaReached));
        q.release("a", 0);
        assert_eq!(q.acquire("a"), Err(RequestError::AllocationQuotaReached));
        q.release("a", 0);
        assert_eq!(q.acquire("a"), Ok(Rate::new(0, 0)));
        q.set_limits(0, 2);
        assert_eq!(q.acquire("b"), Err(RequestError::InsufficientCapacity));
        assert_eq!(q.total(), 2);
    }

    #[test]
    fn reloaded_bandwidth_limits_apply_to_new_allocations() {
        let q = Quotas::new(0, 0).with_bandwidth(1_000, 0, 2_000);
        assert!(q.acquire("a").is_ok());
        q.set_bandwidth(500, 0, 1_500, FxHashMap::default());
        assert_eq!(q.acquire("a").map(|r| r.bps), Ok(500));
        assert_eq!(q.bps_reserved(), 1_500);
        assert_eq!(q.acquire("a"), Err(RequestError::InsufficientCapacity));
        assert_eq!(q.bps_capacity(), 1_500);
    }

    #[test]
    fn per_ip_limit() {
        let q = Quotas::new(0, 0).with_ip_quota(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2:1".parse().unwrap();
        assert_eq!(q.acquire_ip(a), Ok(()));
        assert_eq!(q.acquire_ip(mapped), Ok(()));
        assert_eq!(q.acquire_ip(a), Err(RequestError::AllocationQuotaReached));
        q.release_ip(a);
        assert_eq!(q.ip_count(a), 1);
        assert_eq!(q.acquire_ip(a), Ok(()));
        assert_eq!(q.acquire_ip(v6a), Ok(()));
        assert_eq!(q.acquire_ip(v6b), Ok(()));
        assert_eq!(
            q.acquire_ip("2001:db8::ffff".parse().unwrap()),
            Err(RequestError::AllocationQuotaReached)
        );
        assert_eq!(q.acquire_ip("2001:db8:0:1::1".parse().unwrap()), Ok(()));
        q.release_ip(a);
        q.release_ip(a);
        assert_eq!(q.ip_count(a), 0);
        assert!(
            !q.lock().counts.per_ip.contains_key(&a),
            "no entry left behind"
        );
        // Unlimited: counted (for a later cap), never refused.
        let u = Quotas::new(0, 0);
        assert_eq!(u.acquire_ip(a), Ok(()));
        assert_eq!(u.ip_count(a), 1);
    }
}
