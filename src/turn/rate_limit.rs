//! A per-source budget, in bytes, for the answers an unauthenticated request can earn
//! (Binding answers, 401 challenges and other errors sent before authentication).
//!
//! A STUN server answers anyone, so a spoofed source address turns it into a reflector
//! (RFC 8489 §16.1.4 discusses the attack; RFC 8656 §21.1.1 repeats it for TURN). The budget
//! bounds what one address can be sent: over any interval, the bytes answered to a source are
//! at most [`RATIO`] times the bytes received from it, plus a small first-contact allowance
//! (`burst` answers at once, `rate` answers per second, each counted at the size of this
//! server's 401). A request that is at least half the size of its answer pays for it itself,
//! whatever the flood; smaller ones draw on the allowance.
//!
//! The server skips the budget for an address that has proved it is real: one that holds an
//! authenticated allocation (see `Server::unauth_answer_allowed`), and for any request with
//! valid MESSAGE-INTEGRITY. So a crowd behind one NAT address is limited only until its first
//! member allocates, and a spoofer who floods with a real client's address cannot starve it.
//!
//! Per-source state is a fixed table of buckets indexed by a keyed hash (SipHash-2-4, key from
//! the driver's randomness) of the source, so an attacker cannot grow it. IPv6 sources are
//! keyed by their /64, the smallest block one subscriber is normally given. Two sources that
//! share a bucket share its budget; the key keeps an attacker from choosing a collision. One
//! table serves every worker thread (the kernel spreads a source's ports over the workers, so
//! per-worker tables would multiply the budget by the core count). Time is passed in.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets in the table (a power of two).
pub const BUCKETS: usize = 4096;
/// Bytes a source may be answered per byte received from it, beyond the allowance.
pub const RATIO: u64 = 2;
/// Tokens are kept in thousandths of a byte.
const MILLI: u64 = 1000;

/// The first-contact allowance per source, in answers: `burst` at once and `rate` per
/// second; `rate == 0` disables the budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub rate: u32,
    pub burst: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// Thousandths of a byte that may still be sent.
    tokens: u64,
    /// When the bucket was last touched; None when never.
    last: Option<Instant>,
}

/// The fixed table of byte buckets, shared by the workers.
pub struct ResponseLimiter {
    limit: RateLimit,
    /// What one answer of the allowance is worth, in bytes (the size of this server's 401).
    answer_bytes: u64,
    key: [u64; 2],
    buckets: Box<[Mutex<Bucket>]>,
}

impl ResponseLimiter {
    /// `answer_bytes` is the size the allowance counts an answer at; `key` seeds the hash
    /// and must be secret from clients.
    pub fn new(limit: RateLimit, answer_bytes: usize, key: [u8; 16]) -> ResponseLimiter {
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&key[..8]);
        k1.copy_from_slice(&key[8..]);
        let size = if limit.rate == 0 { 0 } else { BUCKETS };
        ResponseLimiter {
            limit,
            answer_bytes: answer_bytes.max(1) as u64,
            key: [u64::from_le_bytes(k0), u64::from_le_bytes(k1)],
            buckets: (0..size).map(|_| Mutex::new(Bucket::default())).collect(),
        }
    }

    /// The allowance this limiter grants.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Whether an answer of `answer` bytes to a request of `received` bytes from `source`
    /// may be sent at `now`; takes its bytes from the source's budget if so. The request's
    /// own bytes are credited first, whether or not it is answered.
    pub fn allow(&self, source: IpAddr, now: Instant, received: usize, answer: usize) -> bool {
        if self.limit.rate == 0 {
            return true;
        }
        let Some(bucket) = self.buckets.get(self.index(source)) else {
            return true;
        };
        let mut b = match bucket.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let cap = u64::from(self.limit.burst.max(1))
            .saturating_mul(self.answer_bytes)
            .saturating_mul(MILLI);
        let refilled = match b.last {
            None => cap,
            Some(last) => {
                // Bytes per second times microseconds, over a thousand: thousandths of a byte.
                let micros = now.saturating_duration_since(last).as_micros();
                let per_sec = u128::from(self.limit.rate) * u128::from(self.answer_bytes);
                let add = (per_sec * micros / 1000).min(u128::from(u64::MAX)) as u64;
                b.tokens.saturating_add(add).min(cap)
            }
        };
        // Another worker may have stamped a slightly later time: keep the later one.
        b.last = Some(b.last.map_or(now, |l| l.max(now)));
        let available =
            refilled.saturating_add(RATIO.saturating_mul(received as u64).saturating_mul(MILLI));
        let cost = (answer as u64).saturating_mul(MILLI);
        let ok = available >= cost;
        b.tokens = if ok { available - cost } else { available }.min(cap);
        ok
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

    /// Answers counted at 100 bytes.
    const A: usize = 100;

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
    fn the_allowance_is_a_burst_then_a_rate() {
        let l = ResponseLimiter::new(RateLimit { rate: 2, burst: 5 }, A, [1; 16]);
        let t0 = Instant::now();
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!((0..20).filter(|_| l.allow(ip, t0, 0, A)).count(), 5);
        // One second later, two more answers' worth.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| l.allow(ip, t1, 0, A)).count(), 2);
        // With the allowance spent, 20-byte requests earn 40 bytes each: two answers of
        // 100 bytes for every five requests.
        let earned = (0..100).filter(|_| l.allow(ip, t1, 20, A)).count();
        assert_eq!(earned, 40);
        // A long pause refills only up to the burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..20).filter(|_| l.allow(ip, t2, 0, A)).count(), 5);
        // Time going backwards (never from the driver) adds nothing.
        assert!(!l.allow(ip, t0, 0, A));
    }

    #[test]
    fn a_request_half_the_size_of_its_answer_pays_for_it() {
        let l = ResponseLimiter::new(RateLimit { rate: 1, burst: 1 }, A, [1; 16]);
        let t = Instant::now();
        let ip: IpAddr = "198.51.100.2".parse().unwrap();
        assert!((0..10_000).all(|_| l.allow(ip, t, 50, A)));
        // A bigger answer than the request pays for, once the allowance is gone.
        assert!(l.allow(ip, t, 50, A + 100));
        assert!(!l.allow(ip, t, 50, A + 100));
    }

    /// The reflection bound: over any window, bytes answered <= RATIO x bytes received +
    /// burst + rate x window, whatever mix of request and answer sizes.
    #[test]
    fn answered_bytes_never_exceed_twice_received_plus_the_allowance() {
        let l = ResponseLimiter::new(RateLimit { rate: 1, burst: 8 }, A, [7; 16]);
        let t0 = Instant::now();
        let ip: IpAddr = "198.51.100.3".parse().unwrap();
        let (mut sent, mut received) = (0u64, 0u64);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let req = 20 + (x % 80) as usize;
            let ans = 32 + (x >> 8) as usize % 120;
            let t = t0 + Duration::from_micros(i * 500);
            received += req as u64;
            if l.allow(ip, t, req, ans) {
                sent += ans as u64;
            }
        }
        let window = 20_000 * 500 / 1_000_000 + 1;
        let bound = RATIO * received + (8 + window) * A as u64;
        assert!(sent <= bound, "{sent} > {bound}");
        assert!(sent > received, "the budget lets answers out: {sent}");
    }

    #[test]
    fn sources_are_independent_and_ipv6_is_keyed_by_its_64() {
        let l = ResponseLimiter::new(RateLimit { rate: 1, burst: 3 }, A, [2; 16]);
        let t = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!((0..3).filter(|_| l.allow(a, t, 0, A)).count(), 3);
        assert!(!l.allow(b, t, 0, A), "same /64 shares the budget");
        // Count sources of another /64 that still get their burst: nearly all (a few share
        // a bucket with `a` by chance).
        let fresh = (0..200u16)
            .filter(|i| {
                let ip = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 9, *i, 0, 0, 0, 1));
                l.allow(ip, t, 0, A)
            })
            .count();
        assert!(fresh >= 190, "{fresh}");
    }

    #[test]
    fn mapped_ipv4_shares_the_ipv4_bucket() {
        let l = ResponseLimiter::new(RateLimit { rate: 1, burst: 1 }, A, [3; 16]);
        let t = Instant::now();
        assert!(l.allow("192.0.2.1".parse().unwrap(), t, 0, A));
        assert!(!l.allow("::ffff:192.0.2.1".parse().unwrap(), t, 0, A));
    }

    #[test]
    fn zero_rate_disables_and_allocates_nothing() {
        let l = ResponseLimiter::new(RateLimit { rate: 0, burst: 0 }, A, [0; 16]);
        assert!(l.buckets.is_empty());
        let t = Instant::now();
        assert!((0..10_000).all(|_| l.allow("192.0.2.1".parse().unwrap(), t, 0, 1000)));
    }

    #[test]
    fn one_table_serves_several_threads() {
        let l = std::sync::Arc::new(ResponseLimiter::new(
            RateLimit { rate: 1, burst: 50 },
            A,
            [5; 16],
        ));
        let t = Instant::now();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || (0..100).filter(|_| l.allow(ip, t, 0, A)).count())
            })
            .collect();
        let total: usize = threads.into_iter().map(|h| h.join().unwrap()).sum();
        // Never more than the burst in all, whichever thread asks.
        assert_eq!(total, 50);
    }

    #[test]
    fn memory_does_not_grow_with_sources() {
        let l = ResponseLimiter::new(RateLimit { rate: 5, burst: 5 }, A, [4; 16]);
        let t = Instant::now();
        for i in 0..100_000u32 {
            l.allow(IpAddr::V4(i.into()), t, 20, A);
        }
        assert_eq!(l.buckets.len(), BUCKETS);
    }
}
