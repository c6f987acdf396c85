//! Ring statistics kept by the consumer: lag and batch-size histograms.

use serde::{Deserialize, Serialize};

/// A log2 histogram: bucket `i` holds values in `[2^i, 2^(i+1))` (0 goes to bucket 0).
/// Constant memory and O(1) insert, precise enough for p50/p99 of latencies that span
/// microseconds to seconds; the exact maximum is kept beside it.
#[derive(Debug, Clone)]
pub struct Log2Hist {
    buckets: [u64; 64],
    count: u64,
    max: u64,
    sum: u128,
}

impl Default for Log2Hist {
    fn default() -> Self {
        Log2Hist {
            buckets: [0; 64],
            count: 0,
            max: 0,
            sum: 0,
        }
    }
}

impl Log2Hist {
    pub fn add(&mut self, v: u64) {
        let i = 63 - (v | 1).leading_zeros() as usize;
        self.buckets[i] += 1;
        self.count += 1;
        self.max = self.max.max(v);
        self.sum += v as u128;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// Upper bound of the bucket holding quantile `q` (capped at the exact max).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper = if i >= 63 { u64::MAX } else { (2u64 << i) - 1 };
                return upper.min(self.max);
            }
        }
        self.max
    }
}

/// Kernel→mirror lag summary, in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LagSummary {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl LagSummary {
    pub fn of(h: &Log2Hist) -> LagSummary {
        LagSummary {
            count: h.count(),
            p50_us: h.quantile(0.5) as f64 / 1000.0,
            p99_us: h.quantile(0.99) as f64 / 1000.0,
            max_us: h.max() as f64 / 1000.0,
        }
    }
}

/// Consumer batch sizes (records per drain that found any).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BatchSummary {
    pub batches: u64,
    pub mean: f64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl BatchSummary {
    pub fn of(h: &Log2Hist) -> BatchSummary {
        BatchSummary {
            batches: h.count(),
            mean: h.mean(),
            p50: h.quantile(0.5),
            p99: h.quantile(0.99),
            max: h.max(),
        }
    }
}

/// What `stats` shows under `"ring"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RingStats {
    pub size_bytes: u64,
    /// Kernel counters (summed over CPUs; `high_water` is the max), by name.
    pub kernel: std::collections::BTreeMap<String, u64>,
    /// Records the consumer read.
    pub records_read: u64,
    pub bytes_read: u64,
    /// Ring drops + truncations that forced a resync.
    pub loss_resyncs: u64,
    pub high_water_bytes: u64,
    /// high_water as a fraction of the ring size.
    pub high_water_fill: f64,
    pub lag: LagSummary,
    pub batch: BatchSummary,
    /// Where the program and maps are pinned (bpftool), if pinned.
    pub pinned: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let mut h = Log2Hist::default();
        for v in 1..=100u64 {
            h.add(v * 1000);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.max(), 100_000);
        let p50 = h.quantile(0.5);
        assert!((50_000..=65_535).contains(&p50), "{p50}");
        assert_eq!(h.quantile(0.99), 100_000);
        assert_eq!(Log2Hist::default().quantile(0.5), 0);
        h.add(0);
        assert_eq!(h.count(), 101);
    }
}
