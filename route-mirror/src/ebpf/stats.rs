//! Ring statistics kept by the consumer: lag and batch-size histograms.

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two: quantiles are exact below 16 and within 1/16 (6.25%)
/// above. The first version had one bucket per power of two, so a p99 anywhere between
/// 0.54 and 1.07 s read "1.07 s" (BENCHMARKS.md); this resolves 1.00 ms from 1.06 ms.
const SUB: usize = 16;
const SUB_BITS: u32 = 4;
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * SUB;

/// A log-linear histogram (HDR-style): constant memory (~8 KiB) and O(1) insert.
/// The exact maximum and sum are kept beside it.
#[derive(Debug, Clone)]
pub struct Hist {
    buckets: Box<[u64; BUCKETS]>,
    count: u64,
    max: u64,
    sum: u128,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            buckets: Box::new([0; BUCKETS]),
            count: 0,
            max: 0,
            sum: 0,
        }
    }
}

/// Bucket of `v`: `v` itself below [`SUB`], else [`SUB`] per power of two.
fn bucket(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = e - SUB_BITS;
    let sub = ((v >> shift) as usize) & (SUB - 1);
    SUB + shift as usize * SUB + sub
}

/// Largest value of bucket `i`.
fn upper(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let shift = ((i - SUB) / SUB) as u32;
    let sub = ((i - SUB) % SUB) as u64;
    let lower = (SUB as u64 + sub) << shift;
    lower.saturating_add((1u64 << shift) - 1)
}

impl Hist {
    pub fn add(&mut self, v: u64) {
        self.buckets[bucket(v)] += 1;
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

    pub fn sum(&self) -> u128 {
        self.sum
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
                return upper(i).min(self.max);
            }
        }
        self.max
    }

    /// Values `<= le`, counted exactly when `le` is a bucket's upper bound, else
    /// conservatively (the bucket holding `le` is left out).
    pub fn count_le(&self, le: u64) -> u64 {
        let b = bucket(le);
        let last = if upper(b) == le { b + 1 } else { b };
        self.buckets[..last].iter().sum()
    }
}

/// Bounds of the cumulative lag buckets exported (`le`, nanoseconds): the [`Hist`]
/// bucket bounds nearest above 10, 20, 50, 100... µs up to 10 s, so every count is
/// exact (10.239 µs, 20.479 µs, ..., 1.015807 ms, ...). The `+Inf` bucket is `count`.
pub const LAG_BOUNDS_NS: [u64; 19] = [
    10_239,
    20_479,
    51_199,
    102_399,
    204_799,
    507_903,
    1_015_807,
    2_031_615,
    5_242_879,
    10_485_759,
    20_971_519,
    50_331_647,
    100_663_295,
    201_326_591,
    503_316_479,
    1_006_632_959,
    2_013_265_919,
    5_100_273_663,
    10_200_547_327,
];

/// One cumulative bucket: records with lag `<= le_us`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LagBucket {
    pub le_us: f64,
    pub count: u64,
}

/// Kernel→mirror lag summary, in microseconds: the time from the socket filter seeing
/// a notification to the consumer reading it (the change is applied within the same
/// batch, microseconds later).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LagSummary {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub sum_us: f64,
    /// Cumulative buckets (Prometheus histogram shape; `+Inf` is `count`, `sum_us`
    /// the sum).
    pub buckets: Vec<LagBucket>,
}

impl LagSummary {
    pub fn of(h: &Hist) -> LagSummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        LagSummary {
            count: h.count(),
            p50_us: us(h.quantile(0.5)),
            p90_us: us(h.quantile(0.9)),
            p99_us: us(h.quantile(0.99)),
            p999_us: us(h.quantile(0.999)),
            max_us: us(h.max()),
            sum_us: h.sum() as f64 / 1000.0,
            buckets: LAG_BOUNDS_NS
                .iter()
                .map(|&le| LagBucket {
                    le_us: le as f64 / 1000.0,
                    count: h.count_le(le),
                })
                .collect(),
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
    pub fn of(h: &Hist) -> BatchSummary {
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
    /// Kernel memory charged for the ring map (its fdinfo `memlock`): the ring's data
    /// pages plus its metadata pages.
    pub memlock_bytes: u64,
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
        let mut h = Hist::default();
        for v in 1..=100u64 {
            h.add(v * 1000);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.max(), 100_000);
        let p50 = h.quantile(0.5);
        assert!((50_000..=52_000).contains(&p50), "{p50}");
        assert!((99_000..=100_000).contains(&h.quantile(0.99)));
        assert_eq!(Hist::default().quantile(0.5), 0);
        h.add(0);
        assert_eq!(h.count(), 101);
    }

    #[test]
    fn buckets_are_contiguous_and_within_a_sixteenth() {
        let mut prev = None;
        for i in 0..BUCKETS - 1 {
            let u = upper(i);
            assert_eq!(bucket(u), i, "upper({i}) = {u}");
            assert_eq!(bucket(u + 1), i + 1, "upper({i}) + 1");
            if let Some(p) = prev {
                assert!(u > p);
                if u >= 16 {
                    // width / lower bound <= 1/16
                    assert!((u - p) * 16 <= p + 1, "bucket {i}: ({p}, {u}]");
                }
            }
            prev = Some(u);
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        for v in [0u64, 1, 15, 16, 17, 1_000, 999_999, 1_000_000, 1 << 40] {
            let b = bucket(v);
            assert!(v <= upper(b) && (b == 0 || v > upper(b - 1)), "{v}");
        }
    }

    #[test]
    fn lag_bounds_are_exact_bucket_bounds() {
        let mut h = Hist::default();
        for v in [
            1_000u64,
            10_239,
            10_240,
            1_000_000,
            1_015_807,
            1_015_808,
            3_000_000_000,
        ] {
            h.add(v);
        }
        for &le in &LAG_BOUNDS_NS {
            assert_eq!(upper(bucket(le)), le, "{le} is not a bucket bound");
        }
        let s = LagSummary::of(&h);
        let at = |le_us: f64| s.buckets.iter().find(|b| b.le_us == le_us).unwrap().count;
        assert_eq!(at(10.239), 2);
        assert_eq!(at(1015.807), 5);
        assert_eq!(s.buckets.last().unwrap().count, 7);
        assert_eq!(s.count, 7);
        // A p99 of ~1 ms reads as ~1 ms, not as the next power of two.
        let mut h = Hist::default();
        for _ in 0..100 {
            h.add(1_000_000);
        }
        assert!((1_000_000..=1_065_000).contains(&h.quantile(0.99)));
    }
}
