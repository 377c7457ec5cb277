//! Allocation quotas shared by every worker: per user (486) and in total (508)
//! (RFC 8656 §7.2). Touched only when an allocation starts or ends, never per packet.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use rustc_hash::FxHashMap;

use super::error;

#[derive(Debug, Default)]
struct Counts {
    per_user: FxHashMap<String, u32>,
    total: u32,
}

/// Live allocation counts against their limits; a limit of 0 means none.
#[derive(Debug, Default)]
pub struct Quotas {
    user_quota: AtomicU32,
    total_quota: AtomicU32,
    counts: Mutex<Counts>,
}

impl Quotas {
    pub fn new(user_quota: u32, total_quota: u32) -> Quotas {
        Quotas {
            user_quota: AtomicU32::new(user_quota),
            total_quota: AtomicU32::new(total_quota),
            counts: Mutex::new(Counts::default()),
        }
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
        let (user_quota, total_quota) = self.limits();
        if total_quota > 0 && c.total >= total_quota {
            return Err(error::INSUFFICIENT_CAPACITY);
        }
        let n = c.per_user.get(user).copied().unwrap_or(0);
        if user_quota > 0 && n >= user_quota {
            return Err(error::ALLOCATION_QUOTA_REACHED);
        }
        c.per_user.insert(user.to_string(), n + 1);
        c.total += 1;
        Ok(())
    }

    /// The (per-user, total) limits in force; 0 means none.
    pub fn limits(&self) -> (u32, u32) {
        (
            self.user_quota.load(Ordering::Relaxed),
            self.total_quota.load(Ordering::Relaxed),
        )
    }

    /// Changes the limits on reload. The live counts are kept: allocations over a lowered
    /// limit go on, and new ones are refused until the count is back under it.
    pub fn set_limits(&self, user_quota: u32, total_quota: u32) {
        self.user_quota.store(user_quota, Ordering::Relaxed);
        self.total_quota.store(total_quota, Ordering::Relaxed);
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
    fn new_limits_keep_the_live_counts() {
        let q = Quotas::new(0, 0);
        for _ in 0..3 {
            assert_eq!(q.acquire("a"), Ok(()));
        }
        q.set_limits(2, 10);
        assert_eq!(q.limits(), (2, 10));
        assert_eq!(q.user_count("a"), 3);
        assert_eq!(q.acquire("a"), Err(486));
        q.release("a");
        assert_eq!(q.acquire("a"), Err(486));
        q.release("a");
        assert_eq!(q.acquire("a"), Ok(()));
        q.set_limits(0, 2);
        assert_eq!(q.acquire("b"), Err(508));
        assert_eq!(q.total(), 2);
    }

    #[test]
    fn zero_means_unlimited() {
        let q = Quotas::new(0, 0);
        for _ in 0..1000 {
            assert_eq!(q.acquire("a"), Ok(()));
        }
    }
}
