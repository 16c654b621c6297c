//! A time series: timestamps (Unix milliseconds, or milliseconds since an unknown start when
//! the source does not record one), values, and optional anomaly labels.

use crate::error::{DatasetError, Result};

/// How the values of one resampling bucket combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agg {
    /// Counts and rates summed over the bucket; an empty bucket is 0.
    Sum,
    /// Mean of the points in the bucket; an empty bucket has no point.
    Mean,
    /// Largest point; an empty bucket has no point.
    Max,
}

/// What the values are, which decides how buckets combine when resampling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Measure {
    /// Events per point (requests in the second): buckets sum, empty buckets are 0.
    Count,
    /// A level or a rate (CPU %, latency, requests/s over a window): buckets average.
    #[default]
    Gauge,
}

impl Measure {
    pub fn agg(self) -> Agg {
        match self {
            Measure::Count => Agg::Sum,
            Measure::Gauge => Agg::Mean,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    /// Milliseconds, non-decreasing (a source's repeated timestamp is kept: NAB scores rows).
    pub ts_ms: Vec<i64>,
    pub values: Vec<f64>,
    /// True where the point lies inside one of `windows` (NAB); `None` when unlabelled.
    pub labels: Option<Vec<bool>>,
    /// Labelled anomaly windows, inclusive `[start, end]` in the same time base.
    pub windows: Vec<(i64, i64)>,
    /// Whether `ts_ms` is Unix time (false: time since the start of an undated recording).
    pub absolute: bool,
    pub measure: Measure,
}

impl Series {
    /// Builds a series from points that must already be sorted by time.
    pub fn new(name: impl Into<String>, ts_ms: Vec<i64>, values: Vec<f64>) -> Result<Series> {
        let name = name.into();
        if ts_ms.len() != values.len() {
            return Err(DatasetError::Invalid(format!(
                "series {name}: {} timestamps but {} values",
                ts_ms.len(),
                values.len()
            )));
        }
        if let Some(i) = ts_ms.windows(2).position(|w| w[1] < w[0]) {
            return Err(DatasetError::Invalid(format!(
                "series {name}: timestamps go back at point {} ({} after {})",
                i + 1,
                ts_ms[i + 1],
                ts_ms[i]
            )));
        }
        Ok(Series::from_sorted(name, ts_ms, values))
    }

    /// Points the caller already knows are sorted and of equal length (Unix time, gauge,
    /// unlabelled).
    pub(crate) fn from_sorted(
        name: impl Into<String>,
        ts_ms: Vec<i64>,
        values: Vec<f64>,
    ) -> Series {
        Series {
            name: name.into(),
            ts_ms,
            values,
            labels: None,
            windows: Vec::new(),
            absolute: true,
            measure: Measure::Gauge,
        }
    }

    /// A regular series from `start_ms` with one value every `step_ms`.
    pub fn regular(
        name: impl Into<String>,
        start_ms: i64,
        step_ms: i64,
        values: Vec<f64>,
    ) -> Series {
        let ts_ms = (0..values.len() as i64)
            .map(|i| start_ms + i * step_ms)
            .collect();
        Series::from_sorted(name, ts_ms, values)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// First and last timestamp.
    pub fn span(&self) -> Option<(i64, i64)> {
        Some((*self.ts_ms.first()?, *self.ts_ms.last()?))
    }

    /// The most common gap between points (the nominal step of a series with a few holes).
    pub fn step_ms(&self) -> Option<i64> {
        let mut gaps: Vec<i64> = self.ts_ms.windows(2).map(|w| w[1] - w[0]).collect();
        if gaps.is_empty() {
            return None;
        }
        gaps.sort_unstable();
        let (mut best, mut best_n, mut i) = (gaps[0], 0usize, 0usize);
        while i < gaps.len() {
            let j = gaps[i..].partition_point(|g| *g == gaps[i]) + i;
            if j - i > best_n {
                best = gaps[i];
                best_n = j - i;
            }
            i = j;
        }
        Some(best)
    }

    /// Recomputes `labels` from `windows`.
    pub fn label_from_windows(&mut self) {
        let w = &self.windows;
        self.labels = Some(
            self.ts_ms
                .iter()
                .map(|t| w.iter().any(|(a, b)| a <= t && t <= b))
                .collect(),
        );
    }

    /// Buckets aligned to multiples of `step_ms` of the time base (so two series resampled to
    /// the same step line up). A bucket is labelled when any of its points is.
    pub fn resample(&self, step_ms: i64, agg: Agg) -> Result<Series> {
        if step_ms <= 0 {
            return Err(DatasetError::Invalid(format!(
                "resample step must be positive, got {step_ms} ms"
            )));
        }
        let mut ts = Vec::new();
        let mut vs = Vec::new();
        let mut ls = Vec::new();
        let mut i = 0;
        let n = self.len();
        let mut next_bucket: Option<i64> = None;
        while i < n {
            let b = self.ts_ms[i].div_euclid(step_ms) * step_ms;
            if agg == Agg::Sum {
                // Empty buckets of a count series are zeros, not holes.
                if let Some(mut e) = next_bucket {
                    while e < b {
                        ts.push(e);
                        vs.push(0.0);
                        ls.push(false);
                        e += step_ms;
                    }
                }
            }
            let (mut sum, mut max, mut k, mut lab) = (0.0, f64::NEG_INFINITY, 0usize, false);
            while i < n && self.ts_ms[i] < b + step_ms {
                let v = self.values[i];
                sum += v;
                max = max.max(v);
                k += 1;
                lab |= self.labels.as_ref().is_some_and(|l| l[i]);
                i += 1;
            }
            ts.push(b);
            vs.push(match agg {
                Agg::Sum => sum,
                Agg::Mean => sum / k as f64,
                Agg::Max => max,
            });
            ls.push(lab);
            next_bucket = Some(b + step_ms);
        }
        Ok(Series {
            name: self.name.clone(),
            ts_ms: ts,
            values: vs,
            labels: self.labels.as_ref().map(|_| ls),
            windows: self.windows.clone(),
            absolute: self.absolute,
            measure: self.measure,
        })
    }

    /// Resamples with the aggregation the measure calls for.
    pub fn resample_as_measured(&self, step_ms: i64) -> Result<Series> {
        self.resample(step_ms, self.measure.agg())
    }

    /// The points with `from_ms <= t < to_ms`.
    pub fn slice(&self, from_ms: i64, to_ms: i64) -> Series {
        let a = self.ts_ms.partition_point(|t| *t < from_ms);
        let b = self.ts_ms.partition_point(|t| *t < to_ms).max(a);
        self.range(a, b)
    }

    /// Points `a..b` by index.
    pub fn range(&self, a: usize, b: usize) -> Series {
        let b = b.min(self.len());
        let a = a.min(b);
        let (from, to) = match (
            self.ts_ms.get(a),
            b.checked_sub(1).and_then(|l| self.ts_ms.get(l)),
        ) {
            (Some(f), Some(t)) => (*f, *t),
            _ => (0, -1),
        };
        Series {
            name: self.name.clone(),
            ts_ms: self.ts_ms[a..b].to_vec(),
            values: self.values[a..b].to_vec(),
            labels: self.labels.as_ref().map(|l| l[a..b].to_vec()),
            windows: self
                .windows
                .iter()
                .copied()
                .filter(|(s, e)| *e >= from && *s <= to)
                .collect(),
            absolute: self.absolute,
            measure: self.measure,
        }
    }

    /// Train / test split: the first `fraction` of the points, and the rest.
    pub fn split(&self, fraction: f64) -> Result<(Series, Series)> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(DatasetError::Invalid(format!(
                "split fraction must be within [0, 1], got {fraction}"
            )));
        }
        let k = (self.len() as f64 * fraction).round() as usize;
        Ok((self.range(0, k), self.range(k, self.len())))
    }

    /// Stretches time around the first point by `factor` (0.5 replays twice as fast).
    pub fn scale_time(&self, factor: f64) -> Result<Series> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err(DatasetError::Invalid(format!(
                "time scale must be a positive number, got {factor}"
            )));
        }
        let t0 = self.ts_ms.first().copied().unwrap_or(0);
        let map = |t: i64| t0 + ((t - t0) as f64 * factor).round() as i64;
        let mut s = self.clone();
        s.ts_ms = self.ts_ms.iter().map(|t| map(*t)).collect();
        s.windows = self
            .windows
            .iter()
            .map(|(a, b)| (map(*a), map(*b)))
            .collect();
        Ok(s)
    }

    /// Multiplies every value (a rate or count scaled up or down).
    pub fn scale_values(&self, factor: f64) -> Series {
        let mut s = self.clone();
        s.values.iter_mut().for_each(|v| *v *= factor);
        s
    }

    pub fn stats(&self) -> Stats {
        Stats::of(&self.values)
    }
}

/// Basic statistics of a set of values.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    pub n: usize,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// Share of values that are exactly zero.
    pub zeros: f64,
}

impl Stats {
    pub fn of(values: &[f64]) -> Stats {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Stats::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        let q = |p: f64| v[((n - 1) as f64 * p).round() as usize];
        Stats {
            n,
            mean,
            std: var.sqrt(),
            min: v[0],
            p50: q(0.5),
            p99: q(0.99),
            max: v[n - 1],
            zeros: v.iter().filter(|x| **x == 0.0).count() as f64 / n as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sum_resampling_fills_empty_buckets_with_zero_and_aligns_to_the_step() {
        let s = Series::new(
            "c",
            vec![1_000, 2_000, 61_000, 185_000],
            vec![1.0, 2.0, 3.0, 4.0],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let r = s
            .resample(60_000, Agg::Sum)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.ts_ms, vec![0, 60_000, 120_000, 180_000]);
        assert_eq!(r.values, vec![3.0, 3.0, 0.0, 4.0]);
        let m = s
            .resample(60_000, Agg::Mean)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.ts_ms, vec![0, 60_000, 180_000]);
        assert_eq!(m.values, vec![1.5, 3.0, 4.0]);
    }

    #[test]
    fn unsorted_points_are_refused_with_the_place() {
        assert!(Series::new("x", vec![0, 5, 5], vec![0.0; 3]).is_ok());
        let e = Series::new("x", vec![0, 5, 4], vec![0.0; 3])
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("series x: timestamps go back at point 2 (4 after 5)")
        );
    }

    #[test]
    fn slicing_keeps_the_windows_that_overlap() {
        let mut s = Series::regular("w", 0, 10, vec![0.0; 10]);
        s.windows = vec![(20, 30), (70, 80)];
        s.label_from_windows();
        let t = s.slice(0, 50);
        assert_eq!(t.len(), 5);
        assert_eq!(t.windows, vec![(20, 30)]);
        assert_eq!(t.labels, Some(vec![false, false, true, true, false]));
    }

    proptest! {
        #[test]
        fn sum_resampling_preserves_the_total(gaps in proptest::collection::vec(1i64..5_000, 1..200),
                                              step in 1i64..20_000) {
            let mut t = 0;
            let ts: Vec<i64> = gaps.iter().map(|g| { t += g; t }).collect();
            let vs: Vec<f64> = (0..ts.len()).map(|i| (i % 7) as f64).collect();
            let s = Series::new("p", ts, vs.clone()).unwrap_or_else(|e| panic!("{e}"));
            let r = s.resample(step, Agg::Sum).unwrap_or_else(|e| panic!("{e}"));
            prop_assert_eq!(r.values.iter().sum::<f64>(), vs.iter().sum::<f64>());
            prop_assert!(r.ts_ms.windows(2).all(|w| w[1] - w[0] == step));
        }

        #[test]
        fn a_split_is_a_partition(n in 0usize..300, f in 0.0f64..=1.0) {
            let s = Series::regular("s", 0, 1000, (0..n).map(|i| i as f64).collect());
            let (a, b) = s.split(f).unwrap_or_else(|e| panic!("{e}"));
            prop_assert_eq!(a.len() + b.len(), n);
            let mut joined = a.values.clone();
            joined.extend(b.values);
            prop_assert_eq!(joined, s.values);
        }
    }
}
