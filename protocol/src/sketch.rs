//! A mergeable latency sketch with relative-error guarantees (DDSketch's logarithmic mapping).
//!
//! Values are microseconds. Bucket `i > 0` holds values in `(γ^(i-1), γ^i]` with
//! `γ = (1+α)/(1-α)` and α = [`RELATIVE_ACCURACY`], so any quantile read back is within α of a
//! real sample's value. Bucket 0 holds values below 1 µs. Merging two sketches adds their
//! buckets, so windows from many proxies and ticks combine without loss, unlike averages.
//!
//! The mapping is fixed by the schema version, which is what lets the proxy keep a dense array
//! of atomic counters indexed by [`bucket_index`] and ship it as a sparse [`LatencySketch`].

use serde::{Deserialize, Serialize};

/// Relative accuracy α of every quantile read from a sketch.
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Number of dense buckets: covers values up to γ^(N-1) µs ≈ 7 hours; larger values clamp.
pub const DENSE_BUCKETS: usize = 1200;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

fn ln_gamma() -> f64 {
    gamma().ln()
}

/// Bucket index for a value in microseconds, in `0..DENSE_BUCKETS`.
#[inline]
pub fn bucket_index(value_us: f64) -> usize {
    if value_us.is_nan() || value_us < 1.0 {
        return 0;
    }
    let i = (value_us.ln() / ln_gamma()).ceil();
    // ln(1) = 0 lands in bucket 0 otherwise; 1 µs belongs to bucket 1 so bucket 0 is "< 1 µs".
    let i = if i < 1.0 { 1.0 } else { i };
    if i >= (DENSE_BUCKETS - 1) as f64 {
        DENSE_BUCKETS - 1
    } else {
        i as usize
    }
}

/// Representative value (µs) of a bucket: the point whose relative error to both bucket
/// bounds is α.
pub fn bucket_value(index: usize) -> f64 {
    if index == 0 {
        return 0.0;
    }
    let g = gamma();
    2.0 * g.powi(index as i32) / (g + 1.0)
}

/// Upper bound (µs, inclusive) of a bucket.
pub fn bucket_upper_bound(index: usize) -> f64 {
    if index == 0 {
        return 1.0;
    }
    gamma().powi(index as i32)
}

/// The serialized sketch: sparse, sorted `(bucket, count)` pairs plus exact count, sum, min, max.
///
/// Decoding validates it (see [`LatencySketch::validate`]): a sketch from another process is
/// either well-formed or rejected with the reason, never silently merged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawSketch")]
pub struct LatencySketch {
    pub count: u64,
    /// Sum of recorded values in µs (for exact means).
    pub sum_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    /// `(bucket index, count)`, sorted by index, no zero counts.
    pub bins: Vec<(u32, u64)>,
}

/// The wire form, before validation.
#[derive(Deserialize)]
struct RawSketch {
    count: u64,
    sum_us: f64,
    min_us: f64,
    max_us: f64,
    bins: Vec<(u32, u64)>,
}

/// Why a decoded sketch was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SketchError {
    #[error("sketch bins are not strictly increasing at bin {0}")]
    Unsorted(usize),
    #[error("sketch bin index {index} is out of range (0..{DENSE_BUCKETS})")]
    IndexOutOfRange { index: u32 },
    #[error("sketch bin {0} has a zero count")]
    ZeroCount(usize),
    #[error("sketch count {count} is not the sum of its bins ({sum})")]
    CountMismatch { count: u64, sum: u64 },
    #[error("sketch sum, min or max is not a finite, ordered, non-negative value")]
    BadStats,
}

impl TryFrom<RawSketch> for LatencySketch {
    type Error = SketchError;
    fn try_from(r: RawSketch) -> Result<Self, SketchError> {
        let s = LatencySketch {
            count: r.count,
            sum_us: r.sum_us,
            min_us: r.min_us,
            max_us: r.max_us,
            bins: r.bins,
        };
        s.validate()?;
        Ok(s)
    }
}

impl LatencySketch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bins sorted and in range with non-zero counts that add up to `count`; sum, min and max
    /// finite, non-negative and ordered.
    pub fn validate(&self) -> Result<(), SketchError> {
        let mut sum = 0u64;
        for (i, &(index, c)) in self.bins.iter().enumerate() {
            if index as usize >= DENSE_BUCKETS {
                return Err(SketchError::IndexOutOfRange { index });
            }
            if i > 0 && self.bins[i - 1].0 >= index {
                return Err(SketchError::Unsorted(i));
            }
            if c == 0 {
                return Err(SketchError::ZeroCount(i));
            }
            sum = sum.saturating_add(c);
        }
        if sum != self.count {
            return Err(SketchError::CountMismatch {
                count: self.count,
                sum,
            });
        }
        let finite = [self.sum_us, self.min_us, self.max_us]
            .iter()
            .all(|v| v.is_finite() && *v >= 0.0);
        if !finite || self.min_us > self.max_us {
            return Err(SketchError::BadStats);
        }
        Ok(())
    }

    /// Build from a dense array of bucket counts, as the proxy's recorder keeps them.
    pub fn from_dense(counts: &[u64], sum_us: f64, min_us: f64, max_us: f64) -> Self {
        let mut bins = Vec::new();
        let mut count = 0u64;
        for (i, &c) in counts.iter().enumerate() {
            if c > 0 {
                bins.push((i as u32, c));
                count += c;
            }
        }
        LatencySketch {
            count,
            sum_us,
            min_us: if count == 0 { 0.0 } else { min_us },
            max_us: if count == 0 { 0.0 } else { max_us },
            bins,
        }
    }

    pub fn record(&mut self, value_us: f64) {
        self.record_n(value_us, 1);
    }

    pub fn record_n(&mut self, value_us: f64, n: u64) {
        if n == 0 || value_us.is_nan() {
            return;
        }
        let value_us = value_us.max(0.0);
        let idx = bucket_index(value_us) as u32;
        match self.bins.binary_search_by_key(&idx, |&(i, _)| i) {
            Ok(pos) => self.bins[pos].1 += n,
            Err(pos) => self.bins.insert(pos, (idx, n)),
        }
        if self.count == 0 {
            self.min_us = value_us;
            self.max_us = value_us;
        } else {
            self.min_us = self.min_us.min(value_us);
            self.max_us = self.max_us.max(value_us);
        }
        self.count += n;
        self.sum_us += value_us * n as f64;
    }

    /// Add another sketch's samples to this one.
    pub fn merge(&mut self, other: &LatencySketch) {
        if other.count == 0 {
            return;
        }
        let mut merged = Vec::with_capacity(self.bins.len() + other.bins.len());
        let (mut a, mut b) = (self.bins.iter().peekable(), other.bins.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(&&(ia, ca)), Some(&&(ib, cb))) => {
                    if ia == ib {
                        merged.push((ia, ca + cb));
                        a.next();
                        b.next();
                    } else if ia < ib {
                        merged.push((ia, ca));
                        a.next();
                    } else {
                        merged.push((ib, cb));
                        b.next();
                    }
                }
                (Some(&&x), None) => {
                    merged.push(x);
                    a.next();
                }
                (None, Some(&&x)) => {
                    merged.push(x);
                    b.next();
                }
                (None, None) => break,
            }
        }
        self.bins = merged;
        if self.count == 0 {
            self.min_us = other.min_us;
            self.max_us = other.max_us;
        } else {
            self.min_us = self.min_us.min(other.min_us);
            self.max_us = self.max_us.max(other.max_us);
        }
        self.count += other.count;
        self.sum_us += other.sum_us;
    }

    /// The q-quantile (0 ≤ q ≤ 1) in µs, or `None` for an empty sketch. The estimate is within
    /// [`RELATIVE_ACCURACY`] of the sample of rank `⌊q·(n-1)⌋`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || q.is_nan() {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        for &(idx, c) in &self.bins {
            seen += c;
            if seen > rank {
                let v = bucket_value(idx as usize);
                return Some(v.clamp(self.min_us, self.max_us));
            }
        }
        Some(self.max_us)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_us / self.count as f64)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_cover_the_range_monotonically() {
        let mut last = 0;
        for v in [0.5, 1.0, 2.0, 10.0, 1e3, 1e6, 1e9, 1e12] {
            let i = bucket_index(v);
            assert!(i >= last, "{v} -> {i} after {last}");
            last = i;
        }
        assert_eq!(bucket_index(0.0), 0);
        assert_eq!(bucket_index(f64::NAN), 0);
        assert_eq!(bucket_index(1.0), 1);
        assert_eq!(bucket_index(1e300), DENSE_BUCKETS - 1);
        assert!(bucket_upper_bound(DENSE_BUCKETS - 2) > 3.6e9 * 6.0); // over six hours
    }

    #[test]
    fn empty_sketch_has_no_quantile() {
        let s = LatencySketch::new();
        assert_eq!(s.quantile(0.5), None);
        assert_eq!(s.mean(), None);
    }

    #[test]
    fn dense_and_sparse_agree() {
        let mut dense = vec![0u64; DENSE_BUCKETS];
        let mut sparse = LatencySketch::new();
        for v in [3.0, 3.0, 150.0, 9_000.0] {
            dense[bucket_index(v)] += 1;
            sparse.record(v);
        }
        let from_dense = LatencySketch::from_dense(&dense, sparse.sum_us, 3.0, 9_000.0);
        assert_eq!(from_dense, sparse);
    }

    proptest! {
        #[test]
        fn quantiles_are_within_relative_accuracy(
            mut values in prop::collection::vec(1.0f64..1e8, 1..400),
            q in 0.0f64..=1.0,
        ) {
            let mut s = LatencySketch::new();
            for &v in &values { s.record(v); }
            values.sort_by(|a, b| a.total_cmp(b));
            let rank = (q * (values.len() - 1) as f64).floor() as usize;
            let exact = values[rank];
            let est = s.quantile(q).unwrap_or(f64::NAN);
            let err = (est - exact).abs() / exact;
            prop_assert!(err <= RELATIVE_ACCURACY + 1e-9, "q={q} exact={exact} est={est} err={err}");
        }

        #[test]
        fn merge_equals_recording_everything(
            a in prop::collection::vec(0.0f64..1e7, 0..200),
            b in prop::collection::vec(0.0f64..1e7, 0..200),
        ) {
            let (mut sa, mut sb, mut all) = (LatencySketch::new(), LatencySketch::new(), LatencySketch::new());
            for &v in &a { sa.record(v); all.record(v); }
            for &v in &b { sb.record(v); all.record(v); }
            sa.merge(&sb);
            prop_assert_eq!(sa.count, all.count);
            prop_assert_eq!(&sa.bins, &all.bins);
            prop_assert_eq!(sa.min_us, all.min_us);
            prop_assert_eq!(sa.max_us, all.max_us);
            prop_assert!((sa.sum_us - all.sum_us).abs() <= 1e-6 * all.sum_us.max(1.0));
        }
    }

    #[test]
    fn decoding_validates_the_sketch() {
        let mut good = LatencySketch::new();
        good.record(100.0);
        good.record(2000.0);
        let json = serde_json::to_string(&good).unwrap();
        assert_eq!(serde_json::from_str::<LatencySketch>(&json).unwrap(), good);
        let bad = [
            (
                r#"{"count":2,"sum_us":3,"min_us":1,"max_us":2,"bins":[[5,1],[3,1]]}"#,
                "not strictly increasing",
            ),
            (
                r#"{"count":1,"sum_us":3,"min_us":1,"max_us":2,"bins":[[99999,1]]}"#,
                "out of range",
            ),
            (
                r#"{"count":3,"sum_us":3,"min_us":1,"max_us":2,"bins":[[5,1],[6,1]]}"#,
                "not the sum",
            ),
            (
                r#"{"count":1,"sum_us":3,"min_us":1,"max_us":2,"bins":[[5,1],[6,0]]}"#,
                "zero count",
            ),
            (
                r#"{"count":1,"sum_us":-3,"min_us":1,"max_us":2,"bins":[[5,1]]}"#,
                "finite",
            ),
        ];
        for (text, why) in bad {
            let e = serde_json::from_str::<LatencySketch>(text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
