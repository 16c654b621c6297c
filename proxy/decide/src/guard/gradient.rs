//! Adaptive concurrency limit, gradient style (Netflix Gradient2, Envoy adaptive concurrency).
//!
//! Every window the mean latency of the requests that finished in it (`short`) is compared
//! with a no-load baseline:
//!
//! ```text
//! gradient = clamp(tolerance · baseline / short, 0.5, 1)
//! target   = limit · gradient + headroom       (headroom = min(√limit, max(1, limit/10)))
//! limit    = (1 − smoothing) · limit + smoothing · target, clamped to [min, max]
//! ```
//!
//! When fewer than half the permits were in use, the limit does not grow (there is no evidence
//! the upstream could take more).
//!
//! The baseline is the smallest window mean since the last *probe*. Left alone, a baseline
//! learned under load ratchets up (Gradient2's known drift); so every `probe_interval` the
//! limit drops to `min_limit` for `probe_for`, the upstream drains, and the window means of
//! that short stretch become the new baseline (Envoy's min-RTT recalculation). Requests held
//! back meanwhile wait in the route's queue, highest priority first.

use std::time::Duration;
use vivremotion_protocol::Nanos;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradientConfig {
    pub initial_limit: u32,
    pub min_limit: u32,
    pub max_limit: u32,
    /// Latency may rise to `tolerance × baseline` before the limit shrinks.
    pub tolerance: f64,
    pub smoothing: f64,
    pub window: Duration,
    /// Windows with fewer samples are skipped.
    pub min_samples: u32,
    /// How often the baseline is measured afresh at `min_limit`.
    pub probe_interval: Duration,
    pub probe_for: Duration,
}

impl Default for GradientConfig {
    fn default() -> Self {
        GradientConfig {
            initial_limit: 32,
            min_limit: 4,
            max_limit: 2048,
            tolerance: 1.25,
            smoothing: 0.2,
            window: Duration::from_millis(100),
            min_samples: 10,
            probe_interval: Duration::from_secs(30),
            probe_for: Duration::from_millis(300),
        }
    }
}

/// What one window saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowStats {
    pub samples: u32,
    pub mean_ns: f64,
    pub max_in_flight: u32,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    until: Nanos,
    saved_limit: f64,
    min_ns: f64,
}

#[derive(Debug, Clone)]
pub struct GradientLimit {
    cfg: GradientConfig,
    limit: f64,
    baseline_ns: f64,
    next_probe: Option<Nanos>,
    probe: Option<Probe>,
    /// Last window's gradient, for explanation.
    pub last_gradient: f64,
}

impl GradientLimit {
    pub fn new(cfg: GradientConfig) -> GradientLimit {
        GradientLimit {
            cfg,
            limit: f64::from(cfg.initial_limit).clamp(Self::lo(&cfg), Self::hi(&cfg)),
            baseline_ns: f64::INFINITY,
            next_probe: None,
            probe: None,
            last_gradient: 1.0,
        }
    }

    fn lo(cfg: &GradientConfig) -> f64 {
        f64::from(cfg.min_limit.max(1))
    }

    fn hi(cfg: &GradientConfig) -> f64 {
        f64::from(cfg.max_limit).max(Self::lo(cfg))
    }

    pub fn limit(&self) -> u32 {
        self.limit.round() as u32
    }

    pub fn probing(&self) -> bool {
        self.probe.is_some()
    }

    pub fn baseline(&self) -> Option<Duration> {
        self.baseline_ns
            .is_finite()
            .then(|| Duration::from_nanos(self.baseline_ns as u64))
    }

    pub fn config(&self) -> GradientConfig {
        self.cfg
    }

    /// Feed the window that ended at `now`; returns the new limit.
    pub fn update(&mut self, now: Nanos, w: WindowStats) -> u32 {
        let usable =
            w.samples >= self.cfg.min_samples.max(1) && w.mean_ns.is_finite() && w.mean_ns > 0.0;
        if let Some(p) = &mut self.probe {
            if usable {
                p.min_ns = p.min_ns.min(w.mean_ns);
            }
            if now >= p.until {
                if p.min_ns.is_finite() {
                    self.baseline_ns = p.min_ns;
                }
                self.limit = p.saved_limit;
                self.probe = None;
                self.next_probe = Some(now.saturating_add(self.cfg.probe_interval));
            }
            return self.limit();
        }
        if !usable {
            return self.limit();
        }
        let next = *self
            .next_probe
            .get_or_insert(now.saturating_add(self.cfg.probe_interval));
        if now >= next {
            self.probe = Some(Probe {
                until: now.saturating_add(self.cfg.probe_for),
                saved_limit: self.limit,
                min_ns: f64::INFINITY,
            });
            self.limit = Self::lo(&self.cfg);
            return self.limit();
        }
        let short = w.mean_ns;
        self.baseline_ns = self.baseline_ns.min(short);
        let gradient = (self.cfg.tolerance * self.baseline_ns / short).clamp(0.5, 1.0);
        self.last_gradient = gradient;
        // Headroom to probe for more. At equilibrium the upstream queues about `headroom`
        // requests (gradient = 1 − headroom/limit), so Gradient2's √limit would add a third to
        // the latency of a limit of 10; small limits probe by one request instead.
        let headroom = self.limit.sqrt().min((self.limit / 10.0).max(1.0));
        let mut target = self.limit * gradient + headroom;
        if f64::from(w.max_in_flight) < self.limit / 2.0 {
            target = target.min(self.limit);
        }
        self.limit = ((1.0 - self.cfg.smoothing) * self.limit + self.cfg.smoothing * target)
            .clamp(Self::lo(&self.cfg), Self::hi(&self.cfg));
        self.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream with `capacity` slots and `base` latency queues the rest: latency grows
    /// with in-flight beyond capacity. The limit settles near capacity, well below the
    /// offered concurrency.
    #[test]
    fn settles_near_an_upstreams_capacity() {
        let mut g = GradientLimit::new(GradientConfig::default());
        let base = 10e6;
        let capacity = 50.0;
        let offered = 400.0f64;
        let mut settled = Vec::new();
        for i in 0..2_000u64 {
            let in_flight = offered.min(f64::from(g.limit()));
            let latency = base * (in_flight / capacity).max(1.0);
            g.update(
                Nanos(i * 100_000_000),
                WindowStats {
                    samples: 100,
                    mean_ns: latency,
                    max_in_flight: in_flight as u32,
                },
            );
            if i >= 1_400 && !g.probing() {
                settled.push(f64::from(g.limit()));
            }
        }
        let mean = settled.iter().sum::<f64>() / settled.len() as f64;
        assert!(
            mean > capacity * 0.9 && mean < capacity * 1.6,
            "limit {mean}"
        );
        assert!(settled.iter().all(|&l| l < capacity * 2.0), "{settled:?}");
        assert!(g.baseline().unwrap() <= Duration::from_nanos(base as u64));
    }

    #[test]
    fn idle_routes_do_not_grow_and_sparse_windows_are_skipped() {
        let mut g = GradientLimit::new(GradientConfig::default());
        for i in 0..100u64 {
            g.update(
                Nanos(i * 100_000_000),
                WindowStats {
                    samples: 100,
                    mean_ns: 1e6,
                    max_in_flight: 2,
                },
            );
        }
        assert_eq!(g.limit(), 32);
        g.update(
            Nanos(10_000_000_000),
            WindowStats {
                samples: 1,
                mean_ns: 1e9,
                max_in_flight: 32,
            },
        );
        assert_eq!(g.limit(), 32);
    }

    #[test]
    fn a_latency_spike_halves_at_most_per_window_and_respects_bounds() {
        let cfg = GradientConfig {
            smoothing: 1.0,
            ..Default::default()
        };
        let mut g = GradientLimit::new(cfg);
        g.update(
            Nanos(1),
            WindowStats {
                samples: 50,
                mean_ns: 1e6,
                max_in_flight: 32,
            },
        );
        let before = f64::from(g.limit());
        g.update(
            Nanos(2),
            WindowStats {
                samples: 50,
                mean_ns: 1e9,
                max_in_flight: 32,
            },
        );
        let after = f64::from(g.limit());
        assert!(
            after >= before * 0.5 && after < before,
            "{before} -> {after}"
        );
        for i in 0..100u64 {
            g.update(
                Nanos(3 + i),
                WindowStats {
                    samples: 50,
                    mean_ns: 1e12,
                    max_in_flight: 32,
                },
            );
        }
        assert_eq!(g.limit(), cfg.min_limit);
    }
}
