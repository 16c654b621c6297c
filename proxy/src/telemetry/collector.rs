//! Turns cumulative per-scope counters into per-tick `Telemetry` windows.

use super::recorder::{Ctr, ScopeStats, StatsRegistry, Totals};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use vivremotion_protocol::sketch::LatencySketch;
use vivremotion_protocol::telemetry::{
    Admission, ErrorCounts, PerPriority, Priority, Scope, StatusCounts, Telemetry,
};

/// Assembles windows. Owned by the tick task; nothing here is touched by the request path.
pub struct Collector {
    instance: String,
    seq: u64,
    last_tick_unix_ms: u64,
    prev: HashMap<Scope, (Arc<ScopeStats>, Totals)>,
}

impl Collector {
    pub fn new(instance: &str, start_unix_ms: u64) -> Collector {
        Collector {
            instance: instance.to_string(),
            seq: 0,
            last_tick_unix_ms: start_unix_ms,
            prev: HashMap::new(),
        }
    }

    /// Close the current window at `now_unix_ms` and return one window per scope.
    ///
    /// A scope removed by a reload is still read once more (its final requests are not lost),
    /// then forgotten.
    pub fn tick(&mut self, registry: &StatsRegistry, now_unix_ms: u64) -> Vec<Telemetry> {
        let live = registry.all();
        for s in &live {
            self.prev.entry(s.scope.clone()).or_insert_with(|| {
                let t = s.totals();
                // A scope first seen now starts from zero: everything it holds is this window's.
                let zero = Totals {
                    counters: [0; super::recorder::NUM_COUNTERS],
                    hist: vec![0; t.hist.len()],
                    in_flight: 0,
                };
                (s.clone(), zero)
            });
        }
        let window_start = self.last_tick_unix_ms;
        let window_ms = now_unix_ms.saturating_sub(window_start);
        self.last_tick_unix_ms = now_unix_ms;

        let mut scopes: Vec<&Scope> = self.prev.keys().collect();
        scopes.sort();
        let scopes: Vec<Scope> = scopes.into_iter().cloned().collect();
        let mut out = Vec::with_capacity(scopes.len());
        for scope in scopes {
            let Some((stats, prev)) = self.prev.get_mut(&scope) else {
                continue;
            };
            let now = stats.totals();
            let d = |c: Ctr| now.get(c).saturating_sub(prev.get(c));
            let hist: Vec<u64> = now
                .hist
                .iter()
                .zip(&prev.hist)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect();
            let (min, max) = stats.take_window_extremes();
            self.seq += 1;
            let mut w = Telemetry::empty(
                &self.instance,
                self.seq,
                window_start,
                window_ms,
                scope.clone(),
            );
            w.requests = d(Ctr::Requests);
            w.status = StatusCounts {
                informational: d(Ctr::S1xx),
                success: d(Ctr::S2xx),
                redirect: d(Ctr::S3xx),
                client_error: d(Ctr::S4xx),
                server_error: d(Ctr::S5xx),
            };
            w.errors = ErrorCounts {
                connect: d(Ctr::ErrConnect),
                timeout: d(Ctr::ErrTimeout),
                reset: d(Ctr::ErrReset),
                upstream_5xx: d(Ctr::Upstream5xx),
                upstream_429: d(Ctr::Upstream429),
            };
            w.latency = LatencySketch::from_dense(&hist, d(Ctr::LatencySumUs) as f64, min, max);
            w.in_flight = now.in_flight.max(0) as u64;
            w.bytes_in = d(Ctr::BytesIn);
            w.bytes_out = d(Ctr::BytesOut);
            w.resilience.retries = d(Ctr::Retries);
            w.resilience.retry_budget_exhausted = d(Ctr::RetryBudgetExhausted);
            w.resilience.ejections = d(Ctr::Ejections);
            w.resilience.breaker_trips = d(Ctr::BreakerTrips);
            let per = |f: fn(Priority) -> Ctr| PerPriority {
                critical: d(f(Priority::Critical)),
                default: d(f(Priority::Default)),
                sheddable: d(f(Priority::Sheddable)),
            };
            w.admission = Admission {
                admitted: per(Ctr::admitted),
                limited: per(Ctr::limited),
                shed: per(Ctr::shed),
            };
            out.push(w);
            *prev = now;
        }
        let live_scopes: std::collections::HashSet<&Scope> =
            live.iter().map(|s| &s.scope).collect();
        self.prev.retain(|k, _| live_scopes.contains(k));
        out
    }
}

/// The latest windows, bounded: at most `keep` ticks.
#[derive(Debug)]
pub struct TelemetryStore {
    keep: usize,
    ticks: Mutex<VecDeque<Arc<Vec<Telemetry>>>>,
}

impl TelemetryStore {
    pub fn new(keep: usize) -> TelemetryStore {
        TelemetryStore {
            keep: keep.max(1),
            ticks: Mutex::new(VecDeque::new()),
        }
    }

    pub fn push(&self, windows: Vec<Telemetry>) {
        let mut t = self.ticks.lock().unwrap_or_else(|p| p.into_inner());
        t.push_back(Arc::new(windows));
        while t.len() > self.keep {
            t.pop_front();
        }
    }

    /// Windows of the most recent tick.
    pub fn latest(&self) -> Arc<Vec<Telemetry>> {
        let t = self.ticks.lock().unwrap_or_else(|p| p.into_inner());
        t.back().cloned().unwrap_or_default()
    }

    /// Windows with `seq > since`, oldest first, at most `limit`.
    pub fn since(&self, since: u64, limit: usize) -> Vec<Telemetry> {
        let t = self.ticks.lock().unwrap_or_else(|p| p.into_inner());
        t.iter()
            .flat_map(|tick| tick.iter())
            .filter(|w| w.seq > since)
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::recorder::Outcome;

    fn scope(route: &str) -> Scope {
        Scope {
            route: route.into(),
            cluster: Some("c".into()),
            upstream: Some("a:1".into()),
        }
    }

    fn outcome(status: u16, us: f64) -> Outcome {
        Outcome {
            status,
            upstream_status: Some(status),
            failure: None,
            latency_us: us,
            bytes_in: 0,
            bytes_out: 5,
        }
    }

    #[test]
    fn windows_hold_deltas_not_totals() {
        let reg = StatsRegistry::default();
        let s = reg.get_or_create(scope("r"), 1);
        let mut c = Collector::new("p1", 1000);
        s.finish(0, &outcome(200, 500.0), false);
        s.finish(0, &outcome(503, 1500.0), false);
        let w1 = c.tick(&reg, 2000);
        assert_eq!(w1.len(), 1);
        assert_eq!(
            (
                w1[0].requests,
                w1[0].status.success,
                w1[0].status.server_error
            ),
            (2, 1, 1)
        );
        assert_eq!(w1[0].errors.upstream_5xx, 1);
        assert_eq!(
            (w1[0].window_start_ms, w1[0].window_ms, w1[0].seq),
            (1000, 1000, 1)
        );
        assert_eq!(w1[0].latency.count, 2);
        assert_eq!(
            (w1[0].latency.min_us, w1[0].latency.max_us),
            (500.0, 1500.0)
        );

        s.finish(0, &outcome(200, 700.0), false);
        let w2 = c.tick(&reg, 3000);
        assert_eq!(w2[0].requests, 1);
        assert_eq!(w2[0].latency.count, 1);
        assert_eq!(w2[0].seq, 2);
        assert_eq!(w2[0].bytes_out, 5);

        let w3 = c.tick(&reg, 4000);
        assert_eq!(w3[0].requests, 0);
        assert!(w3[0].latency.is_empty());
    }

    #[test]
    fn removed_scopes_are_read_one_last_time() {
        let reg = StatsRegistry::default();
        let s = reg.get_or_create(scope("old"), 1);
        let mut c = Collector::new("p1", 0);
        c.tick(&reg, 1000);
        s.finish(0, &outcome(200, 1.0), false);
        reg.retain(&Default::default());
        let w = c.tick(&reg, 2000);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].requests, 1);
        assert!(c.tick(&reg, 3000).is_empty());
    }

    #[test]
    fn store_is_bounded_and_followable() {
        let store = TelemetryStore::new(2);
        let reg = StatsRegistry::default();
        reg.get_or_create(scope("a"), 1);
        reg.get_or_create(scope("b"), 1);
        let mut c = Collector::new("p1", 0);
        for t in 1..=3 {
            store.push(c.tick(&reg, t * 1000));
        }
        assert_eq!(store.latest().len(), 2);
        let all = store.since(0, 100);
        assert_eq!(
            all.iter().map(|w| w.seq).collect::<Vec<_>>(),
            vec![3, 4, 5, 6]
        );
        assert_eq!(store.since(5, 100).len(), 1);
        assert_eq!(store.since(0, 1).len(), 1);
    }
}
