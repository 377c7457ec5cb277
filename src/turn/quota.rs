//! Allocation quotas shared by every worker: per user (486) and in total (508)
//! (RFC 8656 §7.2). Touched only when an allocation starts or ends, never per packet.

use std::sync::Mutex;

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
    user_quota: u32,
    total_quota: u32,
    counts: Mutex<Counts>,
}

impl Quotas {
    pub fn new(user_quota: u32, total_quota: u32) -> Quotas {
        Quotas {
            user_quota,
            total_quota,
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
}
