//! The status page's plot: the server's totals sampled at a fixed interval into a ring
//! buffer of fixed size (one hour), in memory; nothing is stored elsewhere.

use std::collections::VecDeque;

/// One sample of the server's totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub unix: u64,
    /// Bytes relayed to and from peers since the start (a counter: the plot takes differences).
    pub relayed_bytes: u64,
    /// Live allocations.
    pub allocations: u64,
}

/// The last `capacity` samples, oldest first.
pub struct History {
    capacity: usize,
    samples: VecDeque<Sample>,
}

impl History {
    pub fn new(capacity: usize) -> History {
        History {
            capacity: capacity.max(1),
            samples: VecDeque::with_capacity(capacity.max(1)),
        }
    }

    /// Adds a sample, dropping the oldest when full.
    pub fn push(&mut self, s: Sample) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_capacity_samples_in_order() {
        let mut h = History::new(3);
        for i in 0..5u64 {
            h.push(Sample {
                unix: i,
                relayed_bytes: i * 10,
                allocations: i,
            });
        }
        let got: Vec<u64> = h.iter().map(|s| s.unix).collect();
        assert_eq!(got, [2, 3, 4]);
    }
}
