//! Level shifts by a two-sided CUSUM (Page 1954) on robustly standardised points.
//!
//! The baseline is a slow, clipped running mean and scale; every point adds its standardised
//! distance beyond a slack `k` to an upper and a lower sum, which fall back to zero while the
//! series behaves. A sum is evidence of a sustained move, not of one wild point, which is what
//! a latency step or an error ratio that settles higher looks like. When a sum passes `limit`,
//! the change is accepted: the baseline jumps to the mean since the move began, so the new
//! level is judged as the new normal instead of alarming forever.

use super::{Reason, Signal, Streaming};

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CusumParams {
    /// Smoothing of the baseline mean and scale.
    pub alpha: f64,
    /// Slack per point, in scales: moves smaller than this never accumulate.
    pub k: f64,
    /// Evidence at which the shift is accepted and the baseline reset.
    pub limit: f64,
    /// Points beyond this many scales update the baseline as if they were this far.
    pub clip: f64,
    /// Points before the first score.
    pub warmup: usize,
}

impl Default for CusumParams {
    fn default() -> CusumParams {
        CusumParams {
            alpha: 0.01,
            k: 2.0,
            limit: 48.0,
            clip: 3.0,
            warmup: 200,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Changepoint {
    p: CusumParams,
    mean: f64,
    /// Running mean absolute deviation from `mean`.
    mad: f64,
    up: f64,
    down: f64,
    /// Points and their sum since the active sum last left zero.
    run: usize,
    run_sum: f64,
    seen: usize,
}

impl Changepoint {
    pub fn new(p: CusumParams) -> Changepoint {
        Changepoint {
            p,
            mean: 0.0,
            mad: 0.0,
            up: 0.0,
            down: 0.0,
            run: 0,
            run_sum: 0.0,
            seen: 0,
        }
    }
}

impl Streaming for Changepoint {
    fn update(&mut self, x: f64) -> Signal {
        if !x.is_finite() {
            return Signal::quiet(Reason::Missing);
        }
        self.seen += 1;
        if self.seen == 1 {
            self.mean = x;
        }
        let before = self.mean;
        let dev = x - self.mean;
        let sigma = self.mad * 1.253_314_137_315_500_3;
        let u = if sigma > 0.0 { dev / sigma } else { 0.0 };
        // Learn the baseline from clipped points, and not at all while evidence builds, so
        // the baseline does not walk after the shift it is measuring.
        if self.up == 0.0 && self.down == 0.0 {
            let bound = if self.mad > 0.0 {
                self.p.clip * self.mad
            } else {
                dev.abs()
            };
            // A plain running mean until 1/n falls below alpha, so the start is not biased
            // towards the first point.
            let a = self.p.alpha.max(1.0 / self.seen as f64);
            self.mean += a * dev.clamp(-bound, bound);
            self.mad += a * (dev.abs().min(bound) - self.mad);
        }
        if self.seen <= self.p.warmup {
            return Signal::quiet(Reason::Warmup {
                seen: self.seen,
                needed: self.p.warmup,
            });
        }
        if sigma == 0.0 {
            return Signal::quiet(Reason::Flat { value: self.mean });
        }
        self.up = (self.up + u - self.p.k).max(0.0);
        self.down = (self.down - u - self.p.k).max(0.0);
        // The run is empty whenever both sums are at zero (here or at an accepted shift), so
        // a new excursion always starts counting from nothing.
        if self.up == 0.0 && self.down == 0.0 {
            self.run = 0;
            self.run_sum = 0.0;
        } else {
            self.run += 1;
            self.run_sum += x;
        }
        let evidence = self.up.max(self.down);
        let after = if self.run > 0 {
            self.run_sum / self.run as f64
        } else {
            x
        };
        let reason = Reason::Shift {
            before,
            after,
            sigmas: (after - before) / sigma,
            since: self.run,
            cusum: evidence,
            limit: self.p.limit,
        };
        // Under no change, CUSUM evidence above s has probability about e^-s per excursion.
        let signal = Signal::of_ln_tail(-evidence, reason);
        if evidence >= self.p.limit {
            self.mean = after;
            self.up = 0.0;
            self.down = 0.0;
            self.run = 0;
            self.run_sum = 0.0;
        }
        signal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn a_step_is_found_soon_and_then_accepted() {
        let mut r = rand::rngs::SmallRng::seed_from_u64(3);
        let mut d = Changepoint::new(CusumParams::default());
        let xs: Vec<f64> = (0..3000)
            .map(|i| if i < 2000 { 50.0 } else { 65.0 } + r.random_range(-5.0..5.0))
            .collect();
        let s: Vec<Signal> = xs.iter().map(|&x| d.update(x)).collect();
        let quiet = s[300..2000].iter().map(|s| s.score).fold(0.0, f64::max);
        let first = (2000..3000).find(|&i| s[i].score > quiet.max(0.5));
        let first = first.unwrap_or_else(|| panic!("step not found; quiet max {quiet}"));
        assert!(first < 2030, "found at {first}");
        match s[first].reason {
            Reason::Shift { after, before, .. } => assert!(after - before > 8.0, "{:?}", s[first]),
            r => panic!("{r:?}"),
        }
        // Accepted: the new level stops scoring.
        let late = s[2500..].iter().map(|s| s.score).fold(0.0, f64::max);
        assert!(late <= quiet.max(0.5), "late {late}");
    }
}
