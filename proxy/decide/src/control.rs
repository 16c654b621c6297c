//! The control step: the data plane's periodic decisions, in one function that the proxy's
//! control thread and the simulator both call with `now`.
//!
//! Each [`Control::tick`] closes the adaptive-concurrency windows that are due (to the nearest
//! tick), runs each cluster's success-rate sweep when its `outlier.interval` has passed
//! (ejecting outliers within the ejection share, forgiving one past ejection of the others),
//! and says which active health checks are due; the driver performs them (the proxy over the
//! cluster's transport, the simulator from its fault model) and reports each result to
//! `EndpointState::record_health_check`. Ejections expire by their own timestamp, read on
//! every pick: nothing to do here.
//!
//! Schedules are keyed in ordered maps and jittered from a seeded RNG, so a seed and the
//! same ticks give the same checks in the same order.

use crate::flow::RouteCore;
use crate::guard::outlier::success_rate_outliers;
use crate::limits::concurrency::ConcurrencyLimiter;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use vivremotion_protocol::Nanos;

/// When a cluster's endpoints are actively checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSchedule {
    pub interval: Duration,
    /// Up to this much is added to each interval, at random.
    pub jitter: Duration,
}

/// A cluster as the control step sees it.
pub struct ClusterView<'a> {
    pub name: &'a str,
    /// The decision state of the cluster's endpoints (any route of the cluster: they share
    /// endpoint states) and its outlier settings.
    pub core: &'a RouteCore,
    pub health: Option<HealthSchedule>,
}

/// A health check that is due: endpoint `endpoint` of `clusters[cluster]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub cluster: usize,
    pub endpoint: usize,
}

/// The schedules of the control step; state that outlives snapshots.
#[derive(Debug)]
pub struct Control {
    rng: SmallRng,
    next_check: BTreeMap<(String, String), Nanos>,
    next_sweep: BTreeMap<String, Nanos>,
    next_window: BTreeMap<String, Nanos>,
    /// Shard the step's own counts (ejections) go to: the one no worker uses.
    slot: usize,
}

impl Control {
    pub fn new(seed: u64, slot: usize) -> Control {
        Control {
            rng: SmallRng::seed_from_u64(seed ^ 0x4845_414c_5448),
            next_check: BTreeMap::new(),
            next_sweep: BTreeMap::new(),
            next_window: BTreeMap::new(),
            slot,
        }
    }

    /// One step at `now`. Due health checks are appended to `checks`.
    pub fn tick(
        &mut self,
        now: Nanos,
        clusters: &[ClusterView<'_>],
        limiters: &[(String, Arc<ConcurrencyLimiter>)],
        checks: &mut Vec<Check>,
    ) {
        self.adapt_concurrency(now, limiters);
        self.sweep_success_rates(now, clusters);
        self.schedule_checks(now, clusters, checks);
    }

    fn adapt_concurrency(&mut self, now: Nanos, limiters: &[(String, Arc<ConcurrencyLimiter>)]) {
        for (route, lim) in limiters {
            let Some(window) = lim.window() else {
                continue;
            };
            let due = self
                .next_window
                .entry(route.clone())
                .or_insert(now.saturating_add(window));
            if now >= *due {
                let before = lim.limit();
                let after = lim.tick(now);
                if before != after {
                    tracing::debug!(route = %route, before, after, "adaptive concurrency limit");
                }
                *due = now.saturating_add(window);
            }
        }
        self.next_window
            .retain(|r, _| limiters.iter().any(|(n, _)| n == r));
    }

    fn sweep_success_rates(&mut self, now: Nanos, clusters: &[ClusterView<'_>]) {
        for c in clusters {
            let cfg = &c.core.outlier;
            let due = self
                .next_sweep
                .entry(c.name.to_string())
                .or_insert_with(|| now.saturating_add(cfg.interval));
            if now < *due {
                continue;
            }
            *due = now.saturating_add(cfg.interval);
            let endpoints = &c.core.endpoints;
            let stats: Vec<(u64, u64)> =
                endpoints.iter().map(|e| e.take_success_counts()).collect();
            let outliers = success_rate_outliers(&stats, cfg);
            for (i, e) in endpoints.iter().enumerate() {
                if outliers[i] {
                    let (q, ok) = stats[i];
                    let why = format!("success rate {ok}/{q} far below its peers");
                    c.core.try_eject(self.slot, i, now, &why);
                } else {
                    e.forgive_one(now);
                }
            }
        }
        self.next_sweep
            .retain(|n, _| clusters.iter().any(|c| c.name == n));
    }

    fn schedule_checks(
        &mut self,
        now: Nanos,
        clusters: &[ClusterView<'_>],
        checks: &mut Vec<Check>,
    ) {
        let mut seen = BTreeSet::new();
        for (ci, c) in clusters.iter().enumerate() {
            let Some(hc) = c.health else {
                continue;
            };
            for (ei, e) in c.core.endpoints.iter().enumerate() {
                let key = (c.name.to_string(), e.address.clone());
                let rng = &mut self.rng;
                let due = self.next_check.entry(key.clone()).or_insert_with(|| {
                    // Spread the first checks over one interval.
                    now.saturating_add(hc.interval.mul_f64(rng.random_range(0.0..1.0)))
                });
                seen.insert(key);
                if now < *due {
                    continue;
                }
                let jitter = hc.jitter.mul_f64(self.rng.random_range(0.0..=1.0));
                *due = now.saturating_add(hc.interval.saturating_add(jitter));
                checks.push(Check {
                    cluster: ci,
                    endpoint: ei,
                });
            }
        }
        self.next_check.retain(|k, _| seen.contains(k));
    }
}
