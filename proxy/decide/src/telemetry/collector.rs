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

    /// One page of windows, oldest first, with the cursor for the next one.
    ///
    /// - `since: Some(s)`: windows with `seq > s`, at most `limit` (all if `None`);
    /// - `since: None, limit: Some(n)`: the `n` most recent windows;
    /// - neither: the windows of the most recent tick.
    pub fn page(&self, since: Option<u64>, limit: Option<usize>) -> TelemetryPage {
        let t = self.ticks.lock().unwrap_or_else(|p| p.into_inner());
        let all = || t.iter().flat_map(|tick| tick.iter());
        let last_seq = t.iter().rev().find_map(|tick| tick.last()).map(|w| w.seq);
        let first_seq = all().next().map(|w| w.seq);
        // A cursor from before a restart (sequence numbers start again at 1) would wait for
        // the new process to catch up: start it over instead, and say so.
        let reset = matches!((since, last_seq), (Some(s), l) if s > l.unwrap_or(0));
        let since = if reset { Some(0) } else { since };
        let windows: Vec<Telemetry> = match (since, limit) {
            (Some(s), limit) => all()
                .filter(|w| w.seq > s)
                .take(limit.unwrap_or(usize::MAX))
                .cloned()
                .collect(),
            (None, Some(n)) => {
                let total: usize = t.iter().map(|tick| tick.len()).sum();
                all().skip(total.saturating_sub(n)).cloned().collect()
            }
            (None, None) => t.back().map(|tick| tick.to_vec()).unwrap_or_default(),
        };
        let next_since = windows
            .last()
            .map(|w| w.seq)
            .or(since)
            .or(last_seq)
            .unwrap_or(0);
        // Windows the caller asked for that are no longer kept (it fell behind by more than
        // `keep_windows` ticks).
        let missed = match (since, first_seq) {
            (Some(s), Some(first)) if first > s.saturating_add(1) => first - s - 1,
            _ => 0,
        };
        TelemetryPage {
            more: last_seq.is_some_and(|l| l > next_since),
            windows,
            next_since,
            missed,
            reset,
        }
    }
}

/// What `GET /api/v1/telemetry` answers.
#[derive(Debug, serde::Serialize)]
pub struct TelemetryPage {
    pub windows: Vec<Telemetry>,
    /// Pass as `since` to get the windows after these.
    pub next_since: u64,
    /// More windows after `next_since` are already stored.
    pub more: bool,
    /// Windows after `since` that were dropped from the store before they were read.
    pub missed: u64,
    /// `since` was beyond the newest window (the proxy restarted, so sequence numbers began
    /// again): this page starts from the oldest window kept.
    pub reset: bool,
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
        assert_eq!(store.page(None, None).windows.len(), 2);
        let all = store.page(Some(0), Some(100)).windows;
        assert_eq!(
            all.iter().map(|w| w.seq).collect::<Vec<_>>(),
            vec![3, 4, 5, 6]
        );
        assert_eq!(store.page(Some(5), Some(100)).windows.len(), 1);
        assert_eq!(store.page(Some(0), Some(1)).windows.len(), 1);
    }

    #[test]
    fn pages_follow_the_store_with_a_cursor() {
        let store = TelemetryStore::new(3);
        let reg = StatsRegistry::default();
        reg.get_or_create(scope("a"), 1);
        reg.get_or_create(scope("b"), 1);
        let mut c = Collector::new("p1", 0);
        for t in 1..=4 {
            store.push(c.tick(&reg, t * 1000));
        }
        let seqs = |p: &TelemetryPage| p.windows.iter().map(|w| w.seq).collect::<Vec<_>>();
        // Kept: ticks 2..=4, windows 3..=8.
        let latest = store.page(None, None);
        assert_eq!(
            (seqs(&latest), latest.next_since, latest.more),
            (vec![7, 8], 8, false)
        );
        let newest = store.page(None, Some(3));
        assert_eq!((seqs(&newest), newest.next_since), (vec![6, 7, 8], 8));
        let first = store.page(Some(0), Some(4));
        assert_eq!(seqs(&first), vec![3, 4, 5, 6]);
        assert_eq!((first.next_since, first.more, first.missed), (6, true, 2));
        let second = store.page(Some(first.next_since), Some(4));
        assert_eq!(
            (seqs(&second), second.next_since, second.more),
            (vec![7, 8], 8, false)
        );
        let empty = store.page(Some(8), None);
        assert_eq!(
            (empty.windows.len(), empty.next_since, empty.more),
            (0, 8, false)
        );
        assert!(!empty.reset);
        // A cursor from a previous run of the process starts over.
        let stale = store.page(Some(5000), Some(2));
        assert_eq!(
            (seqs(&stale), stale.reset, stale.missed),
            (vec![3, 4], true, 2)
        );
    }
}
