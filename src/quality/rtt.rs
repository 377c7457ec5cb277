//! Round-trip times of the two legs from the ICE Binding transactions crossing the relay: a
//! request relayed towards the peer and its response coming back time the peer leg (relay to
//! peer and back); a request relayed towards the client and its response time the client leg.
//! Transactions wait in a small fixed table; one left unanswered for [`CHECK_TIMEOUT_US`]
//! counts as an unanswered check.

use super::{Direction, Leg};

/// Transactions waiting for their response, per allocation. ICE paces its checks (RFC 8445
/// §6.1.4.2: one per Ta, 50 ms by default), so a few in flight is the normal case.
pub const PENDING: usize = 16;
/// A check not answered within this time is unanswered (RFC 7675 §5.1 gives consent 30 s;
/// an answer later than 5 s is no use for a call).
pub const CHECK_TIMEOUT_US: u64 = 5_000_000;

/// Upper bounds of the RTT histogram buckets in microseconds (the last bucket is above the
/// last bound). Shared by the per-session summary and the Prometheus histogram.
pub const RTT_BOUNDS_US: [u32; 20] = [
    1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 40_000, 50_000, 75_000,
    100_000, 150_000, 200_000, 300_000, 500_000, 750_000, 1_000_000, 2_000_000,
];
pub const RTT_BUCKETS: usize = RTT_BOUNDS_US.len() + 1;

/// The bucket of a value against ascending bounds (the last slot is above them all).
pub fn bucket(bounds: &[u32], v: u32) -> usize {
    bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len())
}

/// One leg's round trips: the last, a smoothed value (RFC 6298 §2's SRTT, gain 1/8) and a
/// fixed-bucket histogram for percentiles; no sample is kept.
#[derive(Clone, Copy, Debug, Default)]
pub struct LegRtt {
    pub last_us: u32,
    pub srtt_us: u32,
    pub max_us: u32,
    pub samples: u32,
    pub hist: [u32; RTT_BUCKETS],
    /// Requests relayed towards the far end of this leg.
    pub checks: u32,
    pub answered: u32,
    pub unanswered: u32,
}

impl LegRtt {
    pub fn add(&mut self, us: u32) {
        self.last_us = us;
        self.srtt_us = if self.samples == 0 {
            us
        } else {
            // SRTT <- 7/8 SRTT + 1/8 R, in integers.
            ((u64::from(self.srtt_us) * 7 + u64::from(us)) / 8) as u32
        };
        self.max_us = self.max_us.max(us);
        self.samples = self.samples.saturating_add(1);
        let b = bucket(&RTT_BOUNDS_US, us);
        self.hist[b] = self.hist[b].saturating_add(1);
    }

    /// The `q` quantile (0 to 1) from the histogram, interpolated linearly inside its bucket
    /// (the top bucket reports the largest sample). None without samples.
    pub fn quantile_us(&self, q: f64) -> Option<u32> {
        let n: u64 = self.hist.iter().map(|&c| u64::from(c)).sum();
        if n == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * n as f64).max(1.0);
        let mut below = 0u64;
        for (i, &c) in self.hist.iter().enumerate() {
            let c = u64::from(c);
            if c > 0 && (below + c) as f64 >= rank {
                let lo = if i == 0 { 0 } else { RTT_BOUNDS_US[i - 1] };
                let Some(&hi) = RTT_BOUNDS_US.get(i) else {
                    return Some(self.max_us);
                };
                let hi = hi.min(self.max_us.max(lo));
                let frac = (rank - below as f64) / c as f64;
                return Some(lo + ((f64::from(hi - lo)) * frac) as u32);
            }
            below += c;
        }
        Some(self.max_us)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    txid: [u8; 12],
    /// Microseconds since the observer's epoch; 0: free.
    sent_us: u64,
    toward: Direction,
    /// Sent again with the same id: its answer cannot be timed (Karn's rule).
    retransmitted: bool,
}

/// The table of Binding transactions in flight across one allocation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Transactions {
    pending: [Pending; PENDING],
}

/// What a request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requested {
    /// A new check, and the leg of the one it pushed out of a full table unanswered.
    New { evicted: Option<Leg> },
    /// The same transaction again: its answer will not be timed.
    Retransmission,
}

/// What a response did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub leg: Leg,
    /// None for a retransmitted request's answer.
    pub rtt_us: Option<u32>,
}

/// The leg a request relayed `toward` a side times.
pub fn leg_of(toward: Direction) -> Leg {
    match toward {
        Direction::ToPeer => Leg::Peer,
        Direction::ToClient => Leg::Client,
    }
}

impl Transactions {
    /// A request relayed `toward` a side at `now_us` (never 0: the observer's clock starts
    /// at 1).
    pub fn request(
        &mut self,
        now_us: u64,
        toward: Direction,
        txid: [u8; 12],
        legs: &mut [LegRtt; 2],
    ) -> Requested {
        if let Some(p) = self
            .pending
            .iter_mut()
            .find(|p| p.sent_us != 0 && p.txid == txid && p.toward == toward)
        {
            p.retransmitted = true;
            return Requested::Retransmission;
        }
        legs[leg_of(toward) as usize].checks += 1;
        let mut evicted = None;
        let slot = match self.pending.iter().position(|p| p.sent_us == 0) {
            Some(i) => i,
            None => {
                // Full: the oldest goes, counted as unanswered (it has waited longest).
                let (i, oldest) = self
                    .pending
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, p)| p.sent_us)
                    .map(|(i, p)| (i, *p))
                    .unwrap_or((0, Pending::default()));
                let leg = leg_of(oldest.toward);
                legs[leg as usize].unanswered += 1;
                evicted = Some(leg);
                i
            }
        };
        self.pending[slot] = Pending {
            txid,
            sent_us: now_us,
            toward,
            retransmitted: false,
        };
        Requested::New { evicted }
    }

    /// A response relayed in direction `dir`: it answers a request relayed the other way.
    pub fn response(
        &mut self,
        now_us: u64,
        dir: Direction,
        txid: [u8; 12],
        legs: &mut [LegRtt; 2],
    ) -> Option<Answer> {
        let p = self
            .pending
            .iter_mut()
            .find(|p| p.sent_us != 0 && p.txid == txid && p.toward == dir.reverse())?;
        let sent = std::mem::take(p);
        let leg = leg_of(sent.toward);
        let l = &mut legs[leg as usize];
        l.answered += 1;
        let rtt_us = (!sent.retransmitted).then(|| {
            let us = now_us.saturating_sub(sent.sent_us).min(u64::from(u32::MAX)) as u32;
            l.add(us);
            us
        });
        Some(Answer { leg, rtt_us })
    }

    /// Frees the checks older than [`CHECK_TIMEOUT_US`], counting them unanswered; calls
    /// `each` with the leg of each.
    pub fn expire(&mut self, now_us: u64, legs: &mut [LegRtt; 2], mut each: impl FnMut(Leg)) {
        for p in self.pending.iter_mut() {
            if p.sent_us != 0 && now_us.saturating_sub(p.sent_us) >= CHECK_TIMEOUT_US {
                let leg = leg_of(p.toward);
                legs[leg as usize].unanswered += 1;
                each(leg);
                *p = Pending::default();
            }
        }
    }

    /// Checks still in flight that are past the timeout at `now_us` (not yet expired by
    /// [`Transactions::expire`]), per leg.
    pub fn overdue(&self, now_us: u64) -> [u32; 2] {
        let mut n = [0u32; 2];
        for p in &self.pending {
            if p.sent_us != 0 && now_us.saturating_sub(p.sent_us) >= CHECK_TIMEOUT_US {
                n[leg_of(p.toward) as usize] += 1;
            }
        }
        n
    }

    /// Checks in flight, per leg.
    pub fn in_flight(&self) -> [u32; 2] {
        let mut n = [0u32; 2];
        for p in self.pending.iter().filter(|p| p.sent_us != 0) {
            n[leg_of(p.toward) as usize] += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> [u8; 12] {
        [n; 12]
    }

    #[test]
    fn request_toward_peer_and_answer_time_the_peer_leg() {
        let mut t = Transactions::default();
        let mut legs = [LegRtt::default(); 2];
        t.request(1_000, Direction::ToPeer, id(1), &mut legs);
        t.request(2_000, Direction::ToClient, id(2), &mut legs);
        // A response in the same direction as the request answers nothing.
        assert_eq!(t.response(3_000, Direction::ToPeer, id(1), &mut legs), None);
        let a = t.response(31_000, Direction::ToClient, id(1), &mut legs);
        assert_eq!(
            a,
            Some(Answer {
                leg: Leg::Peer,
                rtt_us: Some(30_000)
            })
        );
        let a = t.response(12_000, Direction::ToPeer, id(2), &mut legs);
        assert_eq!(
            a,
            Some(Answer {
                leg: Leg::Client,
                rtt_us: Some(10_000)
            })
        );
        assert_eq!(legs[Leg::Peer as usize].last_us, 30_000);
        assert_eq!(legs[Leg::Client as usize].last_us, 10_000);
        // Answered once only.
        assert_eq!(
            t.response(40_000, Direction::ToClient, id(1), &mut legs),
            None
        );
        assert_eq!(t.in_flight(), [0, 0]);
    }

    #[test]
    fn retransmitted_checks_are_not_timed() {
        let mut t = Transactions::default();
        let mut legs = [LegRtt::default(); 2];
        assert_eq!(
            t.request(1, Direction::ToPeer, id(1), &mut legs),
            Requested::New { evicted: None }
        );
        assert_eq!(
            t.request(500_001, Direction::ToPeer, id(1), &mut legs),
            Requested::Retransmission
        );
        let a = t.response(510_000, Direction::ToClient, id(1), &mut legs);
        assert_eq!(
            a,
            Some(Answer {
                leg: Leg::Peer,
                rtt_us: None
            })
        );
        let l = legs[Leg::Peer as usize];
        assert_eq!((l.checks, l.answered, l.samples), (1, 1, 0));
    }

    #[test]
    fn unanswered_checks_time_out_and_a_full_table_evicts_the_oldest() {
        let mut t = Transactions::default();
        let mut legs = [LegRtt::default(); 2];
        t.request(1, Direction::ToClient, id(0), &mut legs);
        assert_eq!(t.overdue(CHECK_TIMEOUT_US), [0, 0]);
        assert_eq!(t.overdue(CHECK_TIMEOUT_US + 1), [1, 0]);
        let mut seen = Vec::new();
        t.expire(CHECK_TIMEOUT_US + 1, &mut legs, |l| seen.push(l));
        assert_eq!(seen, vec![Leg::Client]);
        assert_eq!(legs[Leg::Client as usize].unanswered, 1);
        for i in 0..PENDING as u8 {
            assert_eq!(
                t.request(10 + u64::from(i), Direction::ToPeer, id(i + 1), &mut legs),
                Requested::New { evicted: None }
            );
        }
        assert_eq!(
            t.request(100, Direction::ToPeer, id(200), &mut legs),
            Requested::New {
                evicted: Some(Leg::Peer)
            }
        );
        // The oldest (id 1) went; id 2 is still answerable.
        assert_eq!(t.response(200, Direction::ToClient, id(1), &mut legs), None);
        assert!(
            t.response(200, Direction::ToClient, id(2), &mut legs)
                .is_some()
        );
        assert_eq!(legs[Leg::Peer as usize].unanswered, 1);
    }

    #[test]
    fn quantiles_from_the_histogram() {
        let mut l = LegRtt::default();
        assert_eq!(l.quantile_us(0.5), None);
        for _ in 0..90 {
            l.add(20_000);
        }
        for _ in 0..10 {
            l.add(180_000);
        }
        let p50 = l.quantile_us(0.5).unwrap();
        assert!((15_000..=20_000).contains(&p50), "{p50}");
        let p95 = l.quantile_us(0.95).unwrap();
        assert!((150_000..=180_000).contains(&p95), "{p95}");
        // Above the last bound: the largest sample.
        l.add(9_000_000);
        assert_eq!(l.quantile_us(1.0), Some(9_000_000));
        // The smoothed value moves by 1/8 of the difference.
        let mut s = LegRtt::default();
        s.add(80_000);
        s.add(160_000);
        assert_eq!(s.srtt_us, 90_000);
    }
}
