//! A fixed-size log-linear latency histogram: 32 sub-buckets per power of two (about 3%
//! relative error), no allocation after creation, mergeable across threads.

const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Enough buckets for any u64 nanosecond value.
const BUCKETS: usize = (64 - SUB_BITS as usize) * SUB + SUB;

pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < (2 * SUB) as u64 {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb - SUB_BITS;
        let sub = (v >> shift) as usize;
        ((shift as usize) << SUB_BITS) + sub
    }

    /// The middle of the values a bucket holds.
    fn midpoint(idx: usize) -> u64 {
        if idx < 2 * SUB {
            return idx as u64;
        }
        let shift = (idx >> SUB_BITS) - 1;
        let sub = (idx - (shift << SUB_BITS)) as u64;
        let low = sub << shift;
        low + ((1u64 << shift) - 1) / 2
    }

    pub fn record(&mut self, v: u64) {
        let i = Self::index(v).min(BUCKETS - 1);
        self.counts[i] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Adds `n` values to bucket `idx` (of this layout, as the kernel load's histogram
    /// counts them; `--kernel-load`).
    pub fn record_bucket(&mut self, idx: usize, n: u64) {
        self.counts[idx.min(BUCKETS - 1)] += n;
        self.total += n;
    }

    /// The largest value recorded, where values came in by bucket.
    pub fn note_max(&mut self, v: u64) {
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1), or 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::midpoint(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_close() {
        let mut last = 0;
        for v in (0..200_000u64).chain([u64::MAX / 2, u64::MAX]) {
            let i = Histogram::index(v);
            assert!(i >= last && i < BUCKETS, "{v} -> {i}");
            last = i;
            let mid = Histogram::midpoint(i);
            let err = mid.abs_diff(v) as f64 / (v.max(1)) as f64;
            assert!(err <= 0.04 || v < 64, "{v} -> {mid}");
        }
    }

    #[test]
    fn quantiles_of_a_uniform_range() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.04, "{p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.04, "{p99}");
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.max(), 10_000_000);
        let mut other = Histogram::new();
        other.record(1);
        h.merge(&other);
        assert_eq!(h.count(), 10_001);
        assert_eq!(Histogram::new().quantile(0.5), 0);
    }
}
