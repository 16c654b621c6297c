//! Peak-EWMA latency estimate (Finagle / linkerd / tower's `PeakEwma`).
//!
//! A slower observation replaces the estimate at once (the *peak*), so an endpoint that turns
//! slow is avoided on its next response. A faster observation is blended in with weight
//! `1 - e^(-Δt/τ)`, so recovery is gradual. Reads decay the estimate toward zero with the same
//! time constant: an endpoint nobody picks becomes cheap again and is eventually probed, which
//! is how a recovered endpoint wins its traffic back.

use std::time::Duration;
use vivremotion_protocol::Nanos;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakEwma {
    /// Estimate in nanoseconds as of `stamp`.
    pub estimate_ns: f64,
    pub stamp: Nanos,
    /// False while the estimate is only the configured default: the first real observation
    /// then replaces it outright instead of being blended into a guess.
    pub primed: bool,
}

impl PeakEwma {
    pub fn new(default_rtt: Duration, now: Nanos) -> Self {
        PeakEwma {
            estimate_ns: default_rtt.as_nanos() as f64,
            stamp: now,
            primed: false,
        }
    }

    fn decay_factor(&self, now: Nanos, decay: Duration) -> f64 {
        let elapsed = now.saturating_since(self.stamp).as_nanos() as f64;
        let tau = (decay.as_nanos() as f64).max(1.0);
        (-elapsed / tau).exp()
    }

    /// The estimate at `now`, in nanoseconds.
    pub fn estimate(&self, now: Nanos, decay: Duration) -> f64 {
        self.estimate_ns * self.decay_factor(now, decay)
    }

    /// Record one round-trip time observed at `now`.
    pub fn observe(&mut self, rtt: Duration, now: Nanos, decay: Duration) {
        let rtt_ns = rtt.as_nanos() as f64;
        if !self.primed || rtt_ns > self.estimate_ns {
            self.primed = true;
            self.estimate_ns = rtt_ns;
        } else {
            let w = self.decay_factor(now, decay);
            self.estimate_ns = self.estimate_ns * w + rtt_ns * (1.0 - w);
        }
        if now > self.stamp {
            self.stamp = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: Duration = Duration::from_secs(10);

    #[test]
    fn peaks_jump_and_valleys_blend() {
        let mut e = PeakEwma::new(Duration::from_millis(10), Nanos(0));
        e.observe(Duration::from_millis(100), Nanos(1_000), TAU);
        assert!(e.primed);
        assert_eq!(e.estimate_ns, 100e6);
        // one second later a fast answer pulls it down by about 1 - e^-0.1 ≈ 9.5 %
        e.observe(Duration::from_millis(10), Nanos(1_000 + 1_000_000_000), TAU);
        assert!(
            (e.estimate_ns - (100e6 * (-0.1f64).exp() + 10e6 * (1.0 - (-0.1f64).exp()))).abs()
                < 1.0
        );
    }

    #[test]
    fn the_first_observation_replaces_the_default() {
        let mut e = PeakEwma::new(Duration::from_millis(30), Nanos(0));
        e.observe(Duration::from_millis(2), Nanos(5), TAU);
        assert_eq!(e.estimate_ns, 2e6);
        e.observe(Duration::from_millis(1), Nanos(5), TAU);
        assert_eq!(
            e.estimate_ns, 2e6,
            "later observations blend by elapsed time"
        );
    }

    #[test]
    fn idle_estimates_decay_toward_zero() {
        let e = PeakEwma::new(Duration::from_millis(100), Nanos(0));
        let later = Nanos(10_000_000_000);
        assert!((e.estimate(later, TAU) - 100e6 / std::f64::consts::E).abs() < 1.0);
        assert_eq!(e.estimate(Nanos(0), TAU), 100e6);
    }

    #[test]
    fn out_of_order_observations_do_not_move_time_back() {
        let mut e = PeakEwma::new(Duration::from_millis(1), Nanos(100));
        e.observe(Duration::from_millis(1), Nanos(50), TAU);
        assert_eq!(e.stamp, Nanos(100));
    }
}
