//! Passive outlier detection: which endpoints to eject, for how long, and never too many.
//!
//! Two detectors, as in Envoy: consecutive failures (checked on the request path when a
//! failure is recorded) and success-rate outliers among a cluster's peers (checked every
//! `interval` off the request path). An ejected endpoint takes no traffic until its ejection
//! ends; each repeat ejection lasts longer (`base_ejection × times ejected`, capped), and the
//! count decays by one for every clean interval. At most `max_ejection_share` of a cluster is
//! ejected at once, and if fewer than `panic_threshold` of its endpoints are available, the
//! balancer ignores availability altogether (a cluster-wide outage is better served by
//! trying everything than by hammering the one survivor).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct OutlierConfig {
    /// Gateway errors (connect failure, reset, timeout, 502–504) in a row that eject. 0: off.
    pub consecutive_gateway_errors: u32,
    /// Any 5xx in a row that eject. 0: off.
    pub consecutive_5xx: u32,
    /// How often success rates are compared (and ejection counts decay).
    #[serde(serialize_with = "crate::ser::ser_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "crate::ser::ser_duration")]
    pub base_ejection: Duration,
    #[serde(serialize_with = "crate::ser::ser_duration")]
    pub max_ejection: Duration,
    /// Share of a cluster that may be ejected at once (0..=1).
    pub max_ejection_share: f64,
    /// Success-rate detection needs this many endpoints with `min_requests` each. 0: off.
    pub success_rate_min_hosts: u32,
    pub success_rate_min_requests: u64,
    /// Eject below `mean − factor × stdev` of the peers' success rates.
    pub success_rate_stdev_factor: f64,
    /// Below this share of available endpoints, route to all of them.
    pub panic_threshold: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_gateway_errors: 5,
            consecutive_5xx: 0,
            interval: Duration::from_secs(5),
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejection_share: 0.5,
            success_rate_min_hosts: 3,
            success_rate_min_requests: 50,
            success_rate_stdev_factor: 1.9,
            panic_threshold: 0.5,
        }
    }
}

impl OutlierConfig {
    /// How long the `times`-th ejection (1-based) lasts.
    pub fn ejection_time(&self, times: u32) -> Duration {
        self.base_ejection
            .saturating_mul(times.max(1))
            .min(self.max_ejection.max(self.base_ejection))
    }

    /// May one more endpoint of a cluster of `total`, `ejected` already out, be ejected?
    pub fn may_eject(&self, ejected: usize, total: usize) -> bool {
        total > 0 && ((ejected + 1) as f64) <= self.max_ejection_share * total as f64 + 1e-9
    }

    /// Whether a cluster with `available` of `total` endpoints is in panic mode.
    pub fn panics(&self, available: usize, total: usize) -> bool {
        total > 0 && (available as f64) < self.panic_threshold * total as f64
    }
}

/// Success-rate outliers among peers: `stats[i] = (requests, successes)` over the last
/// interval. Endpoints below `min_requests` are neither judged nor counted in the mean.
pub fn success_rate_outliers(stats: &[(u64, u64)], cfg: &OutlierConfig) -> Vec<bool> {
    let mut out = vec![false; stats.len()];
    if cfg.success_rate_min_hosts == 0 {
        return out;
    }
    let rates: Vec<(usize, f64)> = stats
        .iter()
        .enumerate()
        .filter(|(_, (q, _))| *q >= cfg.success_rate_min_requests.max(1))
        .map(|(i, (q, s))| (i, (*s).min(*q) as f64 / *q as f64))
        .collect();
    if rates.len() < cfg.success_rate_min_hosts as usize {
        return out;
    }
    let n = rates.len() as f64;
    let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
    let var = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    let threshold = mean - cfg.success_rate_stdev_factor * var.sqrt();
    for (i, r) in rates {
        if r < threshold {
            out[i] = true;
        }
    }
    out
}

/// Active health checks: consecutive results against thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCounter {
    pub healthy: bool,
    ok_streak: u32,
    fail_streak: u32,
}

impl Default for HealthCounter {
    fn default() -> Self {
        // Endpoints start healthy: a fresh proxy must not refuse all traffic until the first
        // round of checks has run.
        HealthCounter {
            healthy: true,
            ok_streak: 0,
            fail_streak: 0,
        }
    }
}

impl HealthCounter {
    /// Record one check; returns true if the verdict changed.
    pub fn record(&mut self, ok: bool, healthy_threshold: u32, unhealthy_threshold: u32) -> bool {
        if ok {
            self.ok_streak += 1;
            self.fail_streak = 0;
            if !self.healthy && self.ok_streak >= healthy_threshold.max(1) {
                self.healthy = true;
                return true;
            }
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
            if self.healthy && self.fail_streak >= unhealthy_threshold.max(1) {
                self.healthy = false;
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let c = OutlierConfig {
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            ..Default::default()
        };
        assert_eq!(c.ejection_time(1), Duration::from_secs(10));
        assert_eq!(c.ejection_time(2), Duration::from_secs(20));
        assert_eq!(c.ejection_time(3), Duration::from_secs(25));
    }

    #[test]
    fn share_and_panic() {
        let c = OutlierConfig::default();
        assert!(c.may_eject(0, 3));
        assert!(!c.may_eject(1, 3), "two of three is above 50 %");
        assert!(c.may_eject(1, 4));
        assert!(
            !c.may_eject(0, 1),
            "a lone endpoint is never ejected at 50 %"
        );
        assert!(c.panics(1, 3));
        assert!(!c.panics(2, 3));
    }

    #[test]
    fn the_low_success_rate_stands_out() {
        let c = OutlierConfig {
            success_rate_stdev_factor: 1.0,
            ..Default::default()
        };
        let stats = [(100, 99), (100, 100), (100, 98), (100, 40), (10, 0)];
        assert_eq!(
            success_rate_outliers(&stats, &c),
            [false, false, false, true, false]
        );
        // Too few judged hosts: no verdict.
        assert_eq!(success_rate_outliers(&stats[3..], &c), [false, false]);
    }

    #[test]
    fn health_thresholds() {
        let mut h = HealthCounter::default();
        assert!(!h.record(false, 2, 3));
        assert!(!h.record(false, 2, 3));
        assert!(h.record(false, 2, 3));
        assert!(!h.healthy);
        assert!(!h.record(true, 2, 3));
        assert!(h.record(true, 2, 3));
        assert!(h.healthy);
    }

    proptest! {
        /// Ejecting one at a time while `may_eject` allows never exceeds the share.
        #[test]
        fn never_more_than_the_share(total in 1usize..64, share in 0.0f64..1.0) {
            let c = OutlierConfig { max_ejection_share: share, ..Default::default() };
            let mut ejected = 0;
            while c.may_eject(ejected, total) { ejected += 1; }
            prop_assert!(ejected as f64 <= share * total as f64 + 1e-9);
        }
    }
}
