//! Allocation quotas shared by every worker: per user (486) and in total (508)
//! (RFC 8656 §7.2). Touched only when an allocation starts or ends, never per packet.

use std::net::IpAddr;
use std::sync::Mutex;

use rustc_hash::FxHashMap;

use super::error;

#[derive(Debug, Default)]
struct Counts {
    per_user: FxHashMap<String, u32>,
    total: u32,
    /// Live allocations per client IP (IPv6 by /64); entries exist only while the IP holds
    /// an authenticated allocation, so spoofed traffic cannot grow the map.
    per_ip: FxHashMap<IpAddr, u32>,
}

/// Live allocation counts against their limits; a limit of 0 means none.
#[derive(Debug, Default)]
pub struct Quotas {
    user_quota: u32,
    total_quota: u32,
    /// Most live allocations per client IP; 0 means none.
    ip_quota: u32,
    counts: Mutex<Counts>,
}

impl Quotas {
    pub fn new(user_quota: u32, total_quota: u32) -> Quotas {
        Quotas {
            user_quota,
            total_quota,
            ip_quota: 0,
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Also caps live allocations per client IP (an IPv6 client by its /64); 0 means none.
    pub fn with_ip_quota(mut self, ip_quota: u32) -> Quotas {
        self.ip_quota = ip_quota;
        self
    }

    /// Counts one more allocation from `ip`, or refuses it with 486 (Allocation Quota
    /// Reached, RFC 8656 §7.2) when the IP holds its quota.
    pub fn acquire_ip(&self, ip: IpAddr) -> Result<(), u16> {
        if self.ip_quota == 0 {
            return Ok(());
        }
        let key = ip_key(ip);
        let mut c = self.lock();
        let n = c.per_ip.get(&key).copied().unwrap_or(0);
        if n >= self.ip_quota {
            return Err(error::ALLOCATION_QUOTA_REACHED);
        }
        c.per_ip.insert(key, n + 1);
        Ok(())
    }

    pub fn release_ip(&self, ip: IpAddr) {
        if self.ip_quota == 0 {
            return;
        }
        let key = ip_key(ip);
        let mut c = self.lock();
        if let Some(n) = c.per_ip.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_ip.remove(&key);
            }
        }
    }

    /// Live allocations counted against a client IP's quota.
    pub fn ip_count(&self, ip: IpAddr) -> u32 {
        self.lock().per_ip.get(&ip_key(ip)).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        match self.counts.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Counts one more allocation for `user`, or says which error code refuses it.
    pub fn acquire(&self, user: &str) -> Result<(), u16> {
        let mut c = self.lock();
        if self.total_quota > 0 && c.total >= self.total_quota {
            return Err(error::INSUFFICIENT_CAPACITY);
        }
        let n = c.per_user.get(user).copied().unwrap_or(0);
        if self.user_quota > 0 && n >= self.user_quota {
            return Err(error::ALLOCATION_QUOTA_REACHED);
        }
        c.per_user.insert(user.to_string(), n + 1);
        c.total += 1;
        Ok(())
    }

    pub fn release(&self, user: &str) {
        let mut c = self.lock();
        if let Some(n) = c.per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                c.per_user.remove(user);
            }
            c.total = c.total.saturating_sub(1);
        }
    }

    /// Live allocations of a user.
    pub fn user_count(&self, user: &str) -> u32 {
        self.lock().per_user.get(user).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u32 {
        self.lock().total
    }
}

/// The key a client IP is counted under: IPv4 (mapped ones too) as itself, IPv6 by its /64.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(a) => IpAddr::V4(a),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & !((1u128 << 64) - 1)).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_total_limits() {
        let q = Quotas::new(2, 3);
        assert_eq!(q.acquire("a"), Ok(()));
        assert_eq!(q.acquire("a"), Ok(()));
        assert_eq!(q.acquire("a"), Err(486));
        assert_eq!(q.acquire("b"), Ok(()));
        assert_eq!(q.acquire("c"), Err(508));
        q.release("a");
        assert_eq!(q.acquire("c"), Ok(()));
        assert_eq!(q.total(), 3);
        assert_eq!(q.user_count("a"), 1);
        q.release("nobody");
        assert_eq!(q.total(), 3);
    }

    #[test]
    fn zero_means_unlimited() {
        let q = Quotas::new(0, 0);
        for _ in 0..1000 {
            assert_eq!(q.acquire("a"), Ok(()));
        }
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
        assert_eq!(q.acquire_ip(a), Err(486));
        q.release_ip(a);
        assert_eq!(q.ip_count(a), 1);
        assert_eq!(q.acquire_ip(a), Ok(()));
        assert_eq!(q.acquire_ip(v6a), Ok(()));
        assert_eq!(q.acquire_ip(v6b), Ok(()));
        assert_eq!(q.acquire_ip("2001:db8::ffff".parse().unwrap()), Err(486));
        assert_eq!(q.acquire_ip("2001:db8:0:1::1".parse().unwrap()), Ok(()));
        q.release_ip(a);
        q.release_ip(a);
        assert_eq!(q.ip_count(a), 0);
        assert!(!q.lock().per_ip.contains_key(&a), "no entry left behind");
        // Unlimited: nothing is counted.
        let u = Quotas::new(0, 0);
        assert_eq!(u.acquire_ip(a), Ok(()));
        assert_eq!(u.ip_count(a), 0);
    }
}
