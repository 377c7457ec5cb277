//! Per-allocation bandwidth limit: one token bucket per direction, refilled from the `now`
//! the driver passes in. A packet that finds too few tokens is dropped (and counted by the
//! caller), never queued: a relay that buffers turns a rate limit into unbounded latency.
//!
//! Tokens are relayed payload bytes (the application data of ChannelData, Send and Data, not
//! the STUN/ChannelData framing). The bucket keeps nanobyte precision so that a low rate
//! refilled by many small time steps loses nothing to rounding. No allocation, no lock.

use std::time::Instant;

const NANOS: u128 = 1_000_000_000;
/// Smallest burst: one full-size Ethernet datagram, so a limit never stalls normal packets.
pub const MIN_BURST: u64 = 1500;

/// The limit of one allocation in one direction: `bps` bits per second with a bucket of
/// `burst` bytes. `bps == 0` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    pub bps: u64,
    pub burst: u64,
}

impl Rate {
    /// The default burst for a rate: a quarter second of traffic, at least [`MIN_BURST`].
    pub fn default_burst(bps: u64) -> u64 {
        (bps / 8 / 4).max(MIN_BURST)
    }

    /// `burst == 0` picks [`Rate::default_burst`].
    pub fn new(bps: u64, burst: u64) -> Rate {
        let burst = if burst == 0 {
            Rate::default_burst(bps)
        } else {
            burst
        };
        Rate { bps, burst }
    }
}

/// A token bucket; starts full.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    /// Bytes per second.
    rate: u128,
    /// Capacity in nanobytes.
    cap: u128,
    /// Tokens in nanobytes.
    tokens: u128,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: Rate, now: Instant) -> TokenBucket {
        let cap = rate.burst as u128 * NANOS;
        TokenBucket {
            rate: rate.bps as u128 / 8,
            cap,
            tokens: cap,
            last: now,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.rate == 0
    }

    /// Takes `len` bytes worth of tokens; false means the packet is over the limit. A packet
    /// larger than the whole bucket passes when the bucket is full (and empties it), so no
    /// packet size is refused forever.
    pub fn allow(&mut self, now: Instant, len: usize) -> bool {
        if self.rate == 0 {
            return true;
        }
        if now > self.last {
            let elapsed = now.duration_since(self.last).as_nanos();
            self.tokens = self
                .tokens
                .saturating_add(elapsed.saturating_mul(self.rate))
                .min(self.cap);
            self.last = now;
        }
        let need = len as u128 * NANOS;
        if self.tokens >= need {
            self.tokens -= need;
            true
        } else if self.tokens == self.cap {
            self.tokens = 0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn unlimited_passes_everything() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::new(0, 0), t0);
        for _ in 0..10_000 {
            assert!(b.allow(t0, 65_000));
        }
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        // 80 kbit/s = 10,000 bytes/s, burst 2,000 bytes.
        let mut b = TokenBucket::new(Rate::new(80_000, 2_000), t0);
        assert!(b.allow(t0, 1_000));
        assert!(b.allow(t0, 1_000));
        assert!(!b.allow(t0, 1));
        // 100 ms later: 1,000 bytes of tokens.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.allow(t1, 1_000));
        assert!(!b.allow(t1, 1));
    }

    #[test]
    fn delivers_the_rate_over_time() {
        let t0 = Instant::now();
        // 1 Mbit/s = 125,000 bytes/s; offered 4x that in 500-byte packets over 10 s.
        let mut b = TokenBucket::new(Rate::new(1_000_000, 0), t0);
        let mut passed = 0u64;
        let step = Duration::from_micros(1_000);
        for i in 0..10_000u32 {
            let now = t0 + step * i;
            if b.allow(now, 500) {
                passed += 500;
            }
        }
        // 10 s at 125,000 B/s plus the initial burst (31,250 B).
        let expected = 125_000 * 10 + 31_250;
        assert!(
            passed.abs_diff(expected) <= 500,
            "passed {passed}, expected {expected}"
        );
    }

    #[test]
    fn oversize_packet_passes_on_a_full_bucket() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::new(8_000, 1_500), t0);
        assert!(b.allow(t0, 9_000));
        assert!(!b.allow(t0, 9_000));
        // Refills to full after 1.5 s (1,000 B/s).
        assert!(!b.allow(t0 + Duration::from_millis(1_000), 9_000));
        assert!(b.allow(t0 + Duration::from_millis(2_600), 9_000));
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(Rate::new(8_000, 1_500), t0);
        assert!(b.allow(t0, 1_500));
        assert!(!b.allow(t0 - Duration::from_secs(5), 1));
        assert!(b.allow(t0 + Duration::from_millis(1_000), 1_000));
    }
}
