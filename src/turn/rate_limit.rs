//! A per-source budget for the responses an unauthenticated request can earn (Binding
//! answers, 401/438 challenges and other errors sent before authentication).
//!
//! A STUN server answers anyone, so a spoofed source address turns it into a reflector
//! (RFC 8489 §16.1.4 discusses the attack; RFC 8656 §21.1.1 repeats it for TURN). The
//! limiter bounds how much one victim address can be sent per second, and it does so without
//! per-source state that an attacker could grow: a fixed table of token buckets indexed by a
//! keyed hash (SipHash-2-4, key from the driver's randomness) of the source. IPv6 sources are
//! keyed by their /64, the smallest block one subscriber is normally given. Two sources that
//! share a bucket share its budget; the key keeps an attacker from choosing a collision.
//!
//! One table serves every worker thread (the kernel spreads a source's ports over the
//! workers, so per-worker tables would multiply the budget by the core count). Each bucket is
//! one `AtomicU64` updated with compare-and-swap: no lock, and memory is `buckets × 8` bytes
//! whatever the number of sources. Time is passed in.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Buckets in the table (a power of two).
pub const BUCKETS: usize = 4096;
/// Tokens are kept in thousandths.
const MILLI: u64 = 1000;
/// Compare-and-swap attempts before a contended bucket refuses.
const CAS_ATTEMPTS: usize = 16;

/// Responses per second and burst per source; `rate == 0` disables the limiter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub rate: u32,
    pub burst: u32,
}

/// The fixed table of token buckets, shared by the workers.
///
/// A bucket packs the tokens left (thousandths, high 32 bits) and the time it was last
/// touched (milliseconds since the table's first use, low 32 bits, wrapping after 49 days;
/// 0 means never touched).
pub struct ResponseLimiter {
    limit: RateLimit,
    key: [u64; 2],
    base: OnceLock<Instant>,
    buckets: Box<[AtomicU64]>,
}

impl ResponseLimiter {
    /// `key` seeds the hash; it must be secret from clients.
    pub fn new(limit: RateLimit, key: [u8; 16]) -> ResponseLimiter {
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&key[..8]);
        k1.copy_from_slice(&key[8..]);
        let size = if limit.rate == 0 { 0 } else { BUCKETS };
        ResponseLimiter {
            limit,
            key: [u64::from_le_bytes(k0), u64::from_le_bytes(k1)],
            base: OnceLock::new(),
            buckets: (0..size).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The rate and burst this limiter enforces.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Whether one more response may go to `source` at `now`; takes a token if so.
    pub fn allow(&self, source: IpAddr, now: Instant) -> bool {
        if self.limit.rate == 0 {
            return true;
        }
        let Some(bucket) = self.buckets.get(self.index(source)) else {
            return true;
        };
        let base = *self.base.get_or_init(|| now);
        // Offset by one so it is never 0 (the "untouched" mark) but at the wrap, every 49 days.
        let now_ms = (now.saturating_duration_since(base).as_millis() as u32)
            .wrapping_add(1)
            .max(1);
        let burst = u64::from(self.limit.burst.max(1)) * MILLI;
        let rate = u64::from(self.limit.rate); // thousandths of a token per millisecond
        for _ in 0..CAS_ATTEMPTS {
            let cur = bucket.load(Ordering::Relaxed);
            let (tokens, last) = if cur == 0 {
                (burst, now_ms)
            } else {
                (cur >> 32, cur as u32)
            };
            // Another worker may have stamped a slightly later time: no refill then.
            let elapsed = now_ms.wrapping_sub(last);
            let (elapsed, stamp) = if elapsed > u32::MAX / 2 {
                (0, last)
            } else {
                (u64::from(elapsed), now_ms)
            };
            let refilled = tokens.saturating_add(elapsed * rate).min(burst);
            let (left, ok) = if refilled >= MILLI {
                (refilled - MILLI, true)
            } else {
                (refilled, false)
            };
            let new = (left << 32) | u64::from(stamp);
            if bucket
                .compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return ok;
            }
        }
        false
    }

    fn index(&self, source: IpAddr) -> usize {
        let mut data = [0u8; 17];
        let len = match source.to_canonical() {
            IpAddr::V4(a) => {
                data[0] = 4;
                data[1..5].copy_from_slice(&a.octets());
                5
            }
            IpAddr::V6(a) => {
                data[0] = 6;
                data[1..9].copy_from_slice(&a.octets()[..8]);
                9
            }
        };
        let h = siphash24(self.key, &data[..len]);
        (h as usize) & (self.buckets.len().max(1) - 1)
    }
}

/// SipHash-2-4 (Aumasson and Bernstein), 64-bit output.
pub fn siphash24(key: [u64; 2], data: &[u8]) -> u64 {
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13);
        v[1] ^= v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16);
        v[3] ^= v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21);
        v[3] ^= v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17);
        v[1] ^= v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut chunks = data.chunks_exact(8);
    let mut v = [
        key[0] ^ 0x736f_6d65_7073_6575,
        key[1] ^ 0x646f_7261_6e64_6f6d,
        key[0] ^ 0x6c79_6765_6e65_7261,
        key[1] ^ 0x7465_6462_7974_6573,
    ];
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let m = u64::from_le_bytes(w);
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    }
    let rest = chunks.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    last[7] = data.len() as u8;
    let m = u64::from_le_bytes(last);
    v[3] ^= m;
    round(&mut v);
    round(&mut v);
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn siphash_matches_the_reference_vector() {
        // The reference vector of the SipHash paper (appendix A): key 00..0f, message 00..0e.
        let key = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];
        let msg: Vec<u8> = (0u8..15).collect();
        assert_eq!(siphash24(key, &msg), 0xa129_ca61_49be_45e5);
        // And the empty message (first line of the reference implementation's vectors).
        assert_eq!(siphash24(key, &[]), 0x726f_db47_dd0e_0e31);
    }

    #[test]
    fn burst_then_rate() {
        let l = ResponseLimiter::new(RateLimit { rate: 2, burst: 5 }, [1; 16]);
        let t0 = Instant::now();
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let allowed = (0..20).filter(|_| l.allow(ip, t0)).count();
        assert_eq!(allowed, 5);
        // One second later, two more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| l.allow(ip, t1)).count(), 2);
        // A long pause refills only up to the burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..20).filter(|_| l.allow(ip, t2)).count(), 5);
        // Time going backwards (never from the driver) takes nothing and adds nothing.
        assert!(!l.allow(ip, t0));
    }

    #[test]
    fn sources_are_independent_and_ipv6_is_keyed_by_its_64() {
        let l = ResponseLimiter::new(RateLimit { rate: 1, burst: 3 }, [2; 16]);
        let t = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!((0..3).filter(|_| l.allow(a, t)).count(), 3);
        assert!(!l.allow(b, t), "same /64 shares the budget");
        // Count sources of another /64 that still get their burst: nearly all (a few share
        // a bucket with `a` by chance).
        let fresh = (0..200u16)
            .filter(|i| {
                let ip = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 9, *i, 0, 0, 0, 1));
                l.allow(ip, t)
            })
            .count();
        assert!(fresh >= 190, "{fresh}");
    }

    #[test]
    fn mapped_ipv4_shares_the_ipv4_bucket() {
        let l = ResponseLimiter::new(RateLimit { rate: 1, burst: 1 }, [3; 16]);
        let t = Instant::now();
        assert!(l.allow("192.0.2.1".parse().unwrap(), t));
        assert!(!l.allow("::ffff:192.0.2.1".parse().unwrap(), t));
    }

    #[test]
    fn zero_rate_disables_and_allocates_nothing() {
        let l = ResponseLimiter::new(RateLimit { rate: 0, burst: 0 }, [0; 16]);
        assert!(l.buckets.is_empty());
        let t = Instant::now();
        assert!((0..10_000).all(|_| l.allow("192.0.2.1".parse().unwrap(), t)));
    }

    #[test]
    fn one_table_serves_several_threads() {
        let l = std::sync::Arc::new(ResponseLimiter::new(
            RateLimit { rate: 1, burst: 50 },
            [5; 16],
        ));
        let t = Instant::now();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || (0..100).filter(|_| l.allow(ip, t)).count())
            })
            .collect();
        let total: usize = threads.into_iter().map(|h| h.join().unwrap()).sum();
        // Never more than the burst in all, whichever thread asks.
        assert!((1..=50).contains(&total), "{total}");
    }

    #[test]
    fn memory_does_not_grow_with_sources() {
        let l = ResponseLimiter::new(RateLimit { rate: 5, burst: 5 }, [4; 16]);
        let t = Instant::now();
        for i in 0..100_000u32 {
            l.allow(IpAddr::V4(i.into()), t);
        }
        assert_eq!(l.buckets.len(), BUCKETS);
    }
}
