//! Robust z-scores of one-step forecast residuals.
//!
//! Each point is compared with the forecast made before it was seen. The error is divided by a
//! robust running scale of past errors (an exponentially weighted mean absolute error whose
//! updates are clipped, so an incident does not widen the band it is judged by), and the mean
//! of the last few |z| is compared with how that mean has been distributed over a long
//! window: a tail probability, as in Numenta's anomaly likelihood (Ahmad et al. 2017). That
//! last step is what lets one threshold serve a smooth series and a spiky one.

use super::{ln_normal_tail, Reason, Signal, Streaming, Window};
use crate::forecast::online::{HoltWinters, HwParams, Online};

/// Mean absolute deviation of a normal variable, in standard deviations.
const MAD_TO_SIGMA: f64 = 1.253_314_137_315_500_3;

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResidualParams {
    /// Smoothing of the error scale.
    pub scale_alpha: f64,
    /// Errors beyond this many scales update the scale as if they were this large.
    pub clip: f64,
    /// Points averaged into the scored z.
    pub short: usize,
    /// Points of history the averaged z is judged against.
    pub long: usize,
    /// Points before the first score.
    pub warmup: usize,
}

impl Default for ResidualParams {
    fn default() -> ResidualParams {
        ResidualParams {
            scale_alpha: 0.02,
            clip: 4.0,
            short: 1,
            long: 1000,
            warmup: 200,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Residual<F = HoltWinters> {
    p: ResidualParams,
    model: F,
    /// Running mean absolute error.
    mae: f64,
    short: Window,
    long: Window,
    seen: usize,
}

impl Default for Residual<HoltWinters> {
    /// A level model with half-life about one point: the error is close to the step from
    /// the previous point, which is what a spike or a drop is.
    fn default() -> Residual<HoltWinters> {
        Residual::level(0.5, ResidualParams::default())
    }
}

impl Residual<HoltWinters> {
    /// A level model (no season) with the given level smoothing; the default for a series of
    /// unknown shape.
    pub fn level(alpha: f64, p: ResidualParams) -> Residual<HoltWinters> {
        let hw = HwParams {
            alpha,
            beta: 0.0,
            gamma: 0.0,
            ..HwParams::default()
        };
        Residual::new(HoltWinters::new(1, hw), p)
    }
}

impl<F: Online> Residual<F> {
    pub fn new(model: F, p: ResidualParams) -> Residual<F> {
        Residual {
            p,
            model,
            mae: 0.0,
            short: Window::new(p.short),
            long: Window::new(p.long),
            seen: 0,
        }
    }

    pub fn model(&self) -> &F {
        &self.model
    }
}

impl<F: Online> Streaming for Residual<F> {
    fn update(&mut self, x: f64) -> Signal {
        if !x.is_finite() {
            return Signal::quiet(Reason::Missing);
        }
        let forecast = self.model.predict(1);
        let fresh = self.model.seen() == 0;
        self.model.update(x);
        self.seen += 1;
        if fresh {
            return warmup(self.seen, self.p.warmup);
        }
        let err = x - forecast;
        let sigma = self.mae * MAD_TO_SIGMA;
        // A series that has not moved yet has no scale; any move is then as large as the
        // clip allows, not infinite.
        let z = if sigma > 0.0 {
            err / sigma
        } else if err == 0.0 {
            0.0
        } else {
            self.p.clip * err.signum()
        };
        let a = err.abs();
        let bound = if self.mae > 0.0 {
            self.p.clip * self.mae
        } else {
            a
        };
        let rate = self.p.scale_alpha.max(1.0 / (self.seen - 1).max(1) as f64);
        self.mae += rate * (a.min(bound) - self.mae);
        self.short.push(z.abs());
        let recent = self.short.mean();
        let (mean, std) = (self.long.mean(), self.long.std());
        let ready = self.seen > self.p.warmup && self.long.len() >= self.p.short;
        self.long.push(recent);
        if !ready {
            return warmup(self.seen, self.p.warmup);
        }
        // A history of near-identical z would call the smallest wobble impossible.
        let ln_tail = ln_normal_tail((recent - mean) / std.max(0.05 * mean.max(0.1)));
        Signal::of_ln_tail(
            ln_tail,
            Reason::Residual {
                value: x,
                forecast,
                scale: sigma,
                z,
                recent_z: recent,
                tail: ln_tail.exp(),
            },
        )
    }
}

fn warmup(seen: usize, needed: usize) -> Signal {
    Signal::quiet(Reason::Warmup { seen, needed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn noise(n: usize, seed: u64) -> Vec<f64> {
        let mut r = rand::rngs::SmallRng::seed_from_u64(seed);
        (0..n)
            .map(|i| 100.0 + 10.0 * (i as f64 / 50.0).sin() + r.random_range(-3.0..3.0))
            .collect()
    }

    #[test]
    fn a_spike_scores_high_and_noise_does_not() {
        let mut d = Residual::default();
        let mut xs = noise(3000, 7);
        xs[2500] += 60.0;
        let s: Vec<Signal> = xs.iter().map(|&x| d.update(x)).collect();
        let spike = s[2500].score;
        let worst_noise = s[300..2500].iter().map(|s| s.score).fold(0.0, f64::max);
        assert!(spike > 0.9, "spike scored {spike}");
        assert!(worst_noise < spike, "noise {worst_noise} vs spike {spike}");
        assert!(s.iter().all(|s| (0.0..=1.0).contains(&s.score)));
        match s[2500].reason {
            Reason::Residual {
                value, forecast, ..
            } => assert!(value - forecast > 40.0),
            r => panic!("reason {r:?}"),
        }
        assert!(s[2500].reason.to_string().contains("against a forecast of"));
    }

    #[test]
    fn constant_and_missing_input_do_not_panic_or_score() {
        let mut d = Residual::default();
        for i in 0..1000 {
            let x = if i % 10 == 0 { f64::NAN } else { 5.0 };
            let s = d.update(x);
            assert!(s.score.is_finite() && s.score < 0.1, "{i}: {s:?}");
        }
        // The first move out of a flat history scores, but is bounded.
        let s = d.update(6.0);
        assert!((0.0..=1.0).contains(&s.score));
    }
}
