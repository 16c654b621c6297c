//! A request trace: arrivals with what the source knows about each request.

use crate::error::{DatasetError, Result};
use crate::series::Series;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// What happened to a request, where the source records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Failed,
    /// Still queued or running when the trace was cut.
    Unfinished,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Unfinished => "unfinished",
        }
    }
}

/// One request. Fields the source does not record are `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Arrival {
    /// Microseconds since the trace's start.
    pub t_us: i64,
    pub tokens_in: Option<u32>,
    pub tokens_out: Option<u32>,
    /// Tenant / client id as the source numbers it (anonymous).
    pub client: Option<u32>,
    pub priority: Option<u8>,
    /// The first prefix-cache block of the prompt: requests with the same value share a
    /// KV-cache prefix (Mooncake's `hash_ids[0]`).
    pub prefix_hash: Option<u64>,
    /// Service time in microseconds.
    pub service_us: Option<u64>,
    pub status: Option<Status>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub name: String,
    /// Unix milliseconds of `t_us = 0`, when the source records real time.
    pub start_unix_ms: Option<i64>,
    /// Sorted by `t_us` (stable: equal times keep the source's order).
    pub arrivals: Vec<Arrival>,
}

impl Trace {
    pub fn new(
        name: impl Into<String>,
        start_unix_ms: Option<i64>,
        mut arrivals: Vec<Arrival>,
    ) -> Trace {
        arrivals.sort_by_key(|a| a.t_us);
        Trace {
            name: name.into(),
            start_unix_ms,
            arrivals,
        }
    }

    pub fn len(&self) -> usize {
        self.arrivals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.arrivals.is_empty()
    }

    /// Time from the first to the last arrival, in microseconds.
    pub fn duration_us(&self) -> i64 {
        match (self.arrivals.first(), self.arrivals.last()) {
            (Some(a), Some(b)) => b.t_us - a.t_us,
            _ => 0,
        }
    }

    /// Stretches time by `factor` (0.5 replays twice as fast at twice the rate).
    pub fn scale_time(&self, factor: f64) -> Result<Trace> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err(DatasetError::Invalid(format!(
                "time scale must be a positive number, got {factor}"
            )));
        }
        let mut t = self.clone();
        for a in &mut t.arrivals {
            a.t_us = (a.t_us as f64 * factor).round() as i64;
        }
        Ok(t)
    }

    /// Changes the rate by `factor` on the same time axis: below 1 each arrival is kept with
    /// probability `factor`; above 1 each is repeated `floor(factor)` times plus once more with
    /// the fractional probability, each copy placed uniformly in the gap before the next
    /// arrival so the copies do not pile up on one instant. Seeded.
    pub fn scale_rate(&self, factor: f64, seed: u64) -> Result<Trace> {
        if !(factor.is_finite() && factor >= 0.0) {
            return Err(DatasetError::Invalid(format!(
                "rate scale must be a non-negative number, got {factor}"
            )));
        }
        let mut rng = SmallRng::seed_from_u64(seed);
        let whole = factor.floor() as usize;
        let frac = factor - whole as f64;
        let mut out = Vec::with_capacity((self.len() as f64 * factor) as usize + 1);
        for (i, a) in self.arrivals.iter().enumerate() {
            let gap = self
                .arrivals
                .get(i + 1)
                .map(|n| n.t_us - a.t_us)
                .unwrap_or(0)
                .max(0);
            let copies = whole + usize::from(rng.random_bool(frac));
            for c in 0..copies {
                let mut b = *a;
                if c > 0 && gap > 0 {
                    b.t_us += rng.random_range(0..gap);
                }
                out.push(b);
            }
        }
        Ok(Trace::new(self.name.clone(), self.start_unix_ms, out))
    }

    /// The arrivals with `from_us <= t < to_us`, re-based so the slice starts at 0.
    pub fn slice(&self, from_us: i64, to_us: i64) -> Trace {
        let a = self.arrivals.partition_point(|x| x.t_us < from_us);
        let b = self.arrivals.partition_point(|x| x.t_us < to_us).max(a);
        let arrivals = self.arrivals[a..b]
            .iter()
            .map(|x| Arrival {
                t_us: x.t_us - from_us,
                ..*x
            })
            .collect();
        Trace {
            name: self.name.clone(),
            start_unix_ms: self.start_unix_ms.map(|s| s + from_us / 1000),
            arrivals,
        }
    }

    /// Train / test split by time: the first `fraction` of the duration, and the rest.
    pub fn split(&self, fraction: f64) -> Result<(Trace, Trace)> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(DatasetError::Invalid(format!(
                "split fraction must be within [0, 1], got {fraction}"
            )));
        }
        let t0 = self.arrivals.first().map_or(0, |a| a.t_us);
        let cut = t0 + (self.duration_us() as f64 * fraction).round() as i64;
        let end = self.arrivals.last().map_or(0, |a| a.t_us) + 1;
        Ok((self.slice(t0, cut), self.slice(cut, end)))
    }

    /// Arrivals per bucket of `step_ms`, zeros included: the load series of the trace.
    pub fn counts(&self, step_ms: i64) -> Result<Series> {
        if step_ms <= 0 {
            return Err(DatasetError::Invalid(format!(
                "count step must be positive, got {step_ms} ms"
            )));
        }
        let base = self.start_unix_ms.unwrap_or(0);
        let Some(last) = self.arrivals.last() else {
            return Ok(Series::regular(
                self.name.clone(),
                base,
                step_ms,
                Vec::new(),
            ));
        };
        let start = (base + self.arrivals[0].t_us.div_euclid(1000)).div_euclid(step_ms) * step_ms;
        let end = (base + last.t_us.div_euclid(1000)).div_euclid(step_ms) * step_ms;
        let n = ((end - start) / step_ms + 1) as usize;
        let mut v = vec![0.0; n];
        for a in &self.arrivals {
            let k =
                ((base + a.t_us.div_euclid(1000)).div_euclid(step_ms) * step_ms - start) / step_ms;
            v[k as usize] += 1.0;
        }
        let mut s = Series::regular(self.name.clone(), start, step_ms, v);
        s.absolute = self.start_unix_ms.is_some();
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(ts: &[i64]) -> Trace {
        Trace::new(
            "t",
            None,
            ts.iter()
                .map(|t| Arrival {
                    t_us: *t,
                    ..Arrival::default()
                })
                .collect(),
        )
    }

    #[test]
    fn counts_per_second_include_empty_seconds() {
        let t = at(&[0, 999_999, 1_000_000, 3_500_000]);
        let c = t.counts(1000).unwrap();
        assert_eq!(c.values, vec![2.0, 1.0, 0.0, 1.0]);
        assert_eq!(c.ts_ms, vec![0, 1000, 2000, 3000]);
    }

    #[test]
    fn a_split_is_by_time_and_rebased() {
        let t = at(&[0, 10, 20, 30, 40]);
        let (a, b) = t.split(0.5).unwrap();
        assert_eq!(
            a.arrivals.iter().map(|x| x.t_us).collect::<Vec<_>>(),
            vec![0, 10]
        );
        assert_eq!(
            b.arrivals.iter().map(|x| x.t_us).collect::<Vec<_>>(),
            vec![0, 10, 20]
        );
    }

    proptest! {
        #[test]
        fn rate_scaling_is_seeded_sorted_and_near_the_factor(f in 0.0f64..3.0, seed in 0u64..1000) {
            let t = at(&(0..2000).map(|i| i * 1000).collect::<Vec<_>>());
            let a = t.scale_rate(f, seed).unwrap();
            let b = t.scale_rate(f, seed).unwrap();
            prop_assert_eq!(&a, &b);
            prop_assert!(a.arrivals.windows(2).all(|w| w[0].t_us <= w[1].t_us));
            let want = 2000.0 * f;
            // Binomial spread: well inside 6 standard deviations.
            prop_assert!((a.len() as f64 - want).abs() <= 6.0 * (2000.0f64 * 0.25).sqrt() + 1.0);
        }
    }
}
