//! Turns cumulative per-scope counters into one [`TelemetryBatch`] per tick.
//!
//! Windows are aligned to multiples of the tick on the Unix clock (a window covers
//! `[k·tick, (k+1)·tick)`), so the batches of several instances describe the same intervals.
//! Between ticks the driver calls [`Collector::sample`] a few times; the in-flight and queue
//! figures of a window are the mean and maximum of those samples. Scopes with nothing to say
//! (no request, nothing in flight, no protection event) are left out of the batch.

use super::recorder::{Ctr, ScopeStats, StatsRegistry, Totals};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use vivremotion_protocol::sketch::{bucket_value, LatencySketch};
use vivremotion_protocol::telemetry::{
    Admission, ErrorCounts, InForce, PerPriority, Priority, RetryReasons, Scope, StatusCounts,
    Telemetry, TelemetryBatch,
};
use vivremotion_protocol::SCHEMA_VERSION;

/// What the driver knows of the configuration in force, for the windows of a tick.
pub struct InForceView<'a> {
    pub policy_version: u64,
    pub config_fingerprint: &'a str,
    /// An endpoint scope's weight on its route.
    pub weight: &'a dyn Fn(&Scope) -> Option<u32>,
    /// A route scope's concurrency limit and the requests waiting for a slot now.
    pub concurrency: &'a dyn Fn(&Scope) -> Option<(u32, u64)>,
}

/// Samples of one scope over the current window.
#[derive(Debug, Default, Clone, Copy)]
struct Samples {
    n: u64,
    in_flight_sum: u64,
    in_flight_max: u64,
    queued_sum: u64,
    queued_max: u64,
}

/// Assembles batches. Owned by the tick task; nothing here is touched by the request path.
pub struct Collector {
    instance: String,
    tick_ms: u64,
    seq: u64,
    batch_seq: u64,
    window_start_ms: u64,
    prev: BTreeMap<Scope, (Arc<ScopeStats>, Totals)>,
    samples: BTreeMap<Scope, Samples>,
}

/// The start of the aligned window that holds `unix_ms`.
pub fn aligned(unix_ms: u64, tick_ms: u64) -> u64 {
    let t = tick_ms.max(1);
    unix_ms - unix_ms % t
}

impl Collector {
    pub fn new(instance: &str, tick_ms: u64, start_unix_ms: u64) -> Collector {
        Collector {
            instance: instance.to_string(),
            tick_ms: tick_ms.max(1),
            seq: 0,
            batch_seq: 0,
            window_start_ms: aligned(start_unix_ms, tick_ms),
            prev: BTreeMap::new(),
            samples: BTreeMap::new(),
        }
    }

    /// When the current window ends (the next multiple of the tick).
    pub fn window_end_ms(&self) -> u64 {
        self.window_start_ms + self.tick_ms
    }

    /// Sample what is in flight (and queued) now, for the window's mean and maximum.
    pub fn sample(&mut self, registry: &StatsRegistry, view: &InForceView<'_>) {
        for s in registry.all() {
            let e = self.samples.entry(s.scope.clone()).or_default();
            let inf = s.in_flight().max(0) as u64;
            let queued = (view.concurrency)(&s.scope).map_or(0, |(_, q)| q);
            e.n += 1;
            e.in_flight_sum += inf;
            e.in_flight_max = e.in_flight_max.max(inf);
            e.queued_sum += queued;
            e.queued_max = e.queued_max.max(queued);
        }
    }

    /// Close the window ending at `end_ms` (a multiple of the tick; a late tick closes the
    /// window it is in) and return its batch.
    ///
    /// A scope removed by a reload is still read once more (its final requests are not lost),
    /// then forgotten.
    pub fn tick(
        &mut self,
        registry: &StatsRegistry,
        end_ms: u64,
        view: &InForceView<'_>,
    ) -> TelemetryBatch {
        self.sample(registry, view);
        let live = registry.all();
        for s in &live {
            self.prev.entry(s.scope.clone()).or_insert_with(|| {
                let t = s.totals();
                // A scope first seen now starts from zero: everything it holds is this window's.
                let zero = Totals {
                    counters: [0; super::recorder::NUM_COUNTERS],
                    hist: vec![0; t.hist.len()],
                    queue_hist: vec![0; t.queue_hist.len()],
                    in_flight: 0,
                };
                (s.clone(), zero)
            });
        }
        let end_ms = aligned(end_ms, self.tick_ms).max(self.window_start_ms + self.tick_ms);
        let window_start = self.window_start_ms;
        let window_ms = end_ms - window_start;
        self.window_start_ms = end_ms;

        let mut out = Vec::new();
        for (scope, (stats, prev)) in self.prev.iter_mut() {
            let now = stats.totals();
            let before = std::mem::replace(prev, now.clone());
            let d = |c: Ctr| now.get(c).saturating_sub(before.get(c));
            let delta = |a: &[u64], b: &[u64]| -> Vec<u64> {
                a.iter().zip(b).map(|(x, y)| x.saturating_sub(*y)).collect()
            };
            let hist = delta(&now.hist, &before.hist);
            let queue = delta(&now.queue_hist, &before.queue_hist);
            let (min, max) = stats.take_window_extremes();
            let smp = self.samples.remove(scope).unwrap_or_default();
            let moved = now.counters != before.counters;
            // Idle: nothing happened and nothing was in flight.
            if !moved && smp.in_flight_max == 0 && now.in_flight <= 0 {
                continue;
            }
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
            let lo = queue.iter().position(|&c| c > 0);
            let hi = queue.iter().rposition(|&c| c > 0);
            w.queue_wait = LatencySketch::from_dense(
                &queue,
                d(Ctr::QueueWaitSumUs) as f64,
                lo.map_or(0.0, bucket_value),
                hi.map_or(0.0, bucket_value),
            );
            w.in_flight = now.in_flight.max(0) as u64;
            w.bytes_in = d(Ctr::BytesIn);
            w.bytes_out = d(Ctr::BytesOut);
            w.resilience.retries = d(Ctr::Retries);
            w.resilience.retry_reasons = RetryReasons {
                connect: d(Ctr::RetryConnect),
                reset: d(Ctr::RetryReset),
                timeout: d(Ctr::RetryTimeout),
                status: d(Ctr::RetryStatus),
            };
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
            let mean = |sum: u64| {
                if smp.n == 0 {
                    0.0
                } else {
                    sum as f64 / smp.n as f64
                }
            };
            w.in_force = InForce {
                policy_version: view.policy_version,
                config_fingerprint: view.config_fingerprint.to_string(),
                weight: (view.weight)(scope),
                concurrency_limit: (view.concurrency)(scope).map(|(l, _)| l),
                queued_mean: mean(smp.queued_sum),
                queued_max: smp.queued_max,
                in_flight_mean: mean(smp.in_flight_sum),
                in_flight_max: smp.in_flight_max,
            };
            out.push(w);
        }
        let live_scopes: std::collections::BTreeSet<&Scope> =
            live.iter().map(|s| &s.scope).collect();
        self.prev.retain(|k, _| live_scopes.contains(k));
        self.samples.clear();
        self.batch_seq += 1;
        TelemetryBatch {
            schema_version: SCHEMA_VERSION,
            instance: self.instance.clone(),
            seq: self.batch_seq,
            window_start_ms: window_start,
            window_ms,
            policy_version: view.policy_version,
            config_fingerprint: view.config_fingerprint.to_string(),
            windows: out,
        }
    }
}

/// The latest batches, bounded: at most `keep` ticks.
#[derive(Debug)]
pub struct TelemetryStore {
    keep: usize,
    ticks: Mutex<VecDeque<Arc<TelemetryBatch>>>,
}

impl TelemetryStore {
    pub fn new(keep: usize) -> TelemetryStore {
        TelemetryStore {
            keep: keep.max(1),
            ticks: Mutex::new(VecDeque::new()),
        }
    }

    pub fn push(&self, batch: TelemetryBatch) {
        let mut t = self.ticks.lock().unwrap_or_else(|p| p.into_inner());
        t.push_back(Arc::new(batch));
        while t.len() > self.keep {
            t.pop_front();
        }
    }

    /// The batches after batch number `since` (all kept if `None`), oldest first.
    pub fn batches(&self, since: Option<u64>) -> Vec<Arc<TelemetryBatch>> {
        let t = self.ticks.lock().unwrap_or_else(|p| p.into_inner());
        t.iter()
            .filter(|b| since.is_none_or(|s| b.seq > s))
            .cloned()
            .collect()
    }

    /// One page of windows, oldest first, with the cursor for the next one.
    ///
    /// - `since: Some(s)`: windows with `seq > s`, at most `limit` (all if `None`);
    /// - `since: None, limit: Some(n)`: the `n` most recent windows;
    /// - neither: the windows of the most recent tick.
    pub fn page(&self, since: Option<u64>, limit: Option<usize>) -> TelemetryPage {
        let t = self.ticks.lock().unwrap_or_else(|p| p.into_inner());
        let all = || t.iter().flat_map(|tick| tick.windows.iter());
        let last_seq = t
            .iter()
            .rev()
            .find_map(|tick| tick.windows.last())
            .map(|w| w.seq);
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
                let total: usize = t.iter().map(|tick| tick.windows.len()).sum();
                all().skip(total.saturating_sub(n)).cloned().collect()
            }
            (None, None) => t
                .back()
                .map(|tick| tick.windows.clone())
                .unwrap_or_default(),
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
            upstream_status: Some(status),
            bytes_out: 5,
            ..Outcome::new(status, us)
        }
    }

    fn none(_: &Scope) -> Option<u32> {
        None
    }

    fn no_limit(_: &Scope) -> Option<(u32, u64)> {
        None
    }

    const VIEW: InForceView<'static> = InForceView {
        policy_version: 3,
        config_fingerprint: "cfg",
        weight: &none,
        concurrency: &no_limit,
    };

    fn tick(c: &mut Collector, reg: &StatsRegistry, end_ms: u64) -> Vec<Telemetry> {
        c.tick(reg, end_ms, &VIEW).windows
    }

    #[test]
    fn windows_hold_deltas_not_totals() {
        let reg = StatsRegistry::default();
        let s = reg.get_or_create(scope("r"), 1);
        let mut c = Collector::new("p1", 1000, 1500);
        s.finish(0, &outcome(200, 500.0), false);
        s.finish(0, &outcome(503, 1500.0), false);
        let w1 = tick(&mut c, &reg, 2000);
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

        assert_eq!(w1[0].in_force.policy_version, 3);
        assert_eq!(w1[0].in_force.config_fingerprint, "cfg");

        s.finish(0, &outcome(200, 700.0), false);
        // A late tick closes the window it fell in, on its aligned end.
        let w2 = tick(&mut c, &reg, 3004);
        assert_eq!(w2[0].requests, 1);
        assert_eq!(w2[0].latency.count, 1);
        assert_eq!(w2[0].seq, 2);
        assert_eq!(w2[0].bytes_out, 5);

        assert_eq!((w2[0].window_start_ms, w2[0].window_ms), (2000, 1000));

        // An idle scope sends nothing.
        assert!(tick(&mut c, &reg, 4000).is_empty());
    }

    /// Two instances started at different moments close the same aligned windows.
    #[test]
    fn windows_of_two_instances_line_up() {
        let (ra, rb) = (StatsRegistry::default(), StatsRegistry::default());
        let (sa, sb) = (
            ra.get_or_create(scope("r"), 1),
            rb.get_or_create(scope("r"), 1),
        );
        let mut a = Collector::new("a", 200, 10_037);
        let mut b = Collector::new("b", 200, 10_151);
        sa.finish(0, &outcome(200, 1.0), false);
        sb.finish(0, &outcome(200, 1.0), false);
        let (ba, bb) = (a.tick(&ra, 10_200, &VIEW), b.tick(&rb, 10_203, &VIEW));
        assert_eq!((ba.window_start_ms, ba.window_ms), (10_000, 200));
        assert_eq!((bb.window_start_ms, bb.window_ms), (10_000, 200));
        assert_eq!(ba.windows[0].window_start_ms, bb.windows[0].window_start_ms);
        assert_eq!((ba.seq, bb.seq), (1, 1));
    }

    #[test]
    fn removed_scopes_are_read_one_last_time() {
        let reg = StatsRegistry::default();
        let s = reg.get_or_create(scope("old"), 1);
        let mut c = Collector::new("p1", 1000, 0);
        tick(&mut c, &reg, 1000);
        s.finish(0, &outcome(200, 1.0), false);
        reg.retain(&Default::default());
        let w = tick(&mut c, &reg, 2000);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].requests, 1);
        assert!(tick(&mut c, &reg, 3000).is_empty());
    }

    #[test]
    fn store_is_bounded_and_followable() {
        let store = TelemetryStore::new(2);
        let reg = StatsRegistry::default();
        let a = reg.get_or_create(scope("a"), 1);
        let b = reg.get_or_create(scope("b"), 1);
        let mut c = Collector::new("p1", 1000, 0);
        for t in 1..=3 {
            a.finish(0, &outcome(200, 1.0), false);
            b.finish(0, &outcome(200, 1.0), false);
            store.push(c.tick(&reg, t * 1000, &VIEW));
        }
        assert_eq!(
            store
                .batches(Some(1))
                .iter()
                .map(|b| b.seq)
                .collect::<Vec<_>>(),
            vec![2, 3]
        );
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
        let a = reg.get_or_create(scope("a"), 1);
        let b = reg.get_or_create(scope("b"), 1);
        let mut c = Collector::new("p1", 1000, 0);
        for t in 1..=4 {
            a.finish(0, &outcome(200, 1.0), false);
            b.finish(0, &outcome(200, 1.0), false);
            store.push(c.tick(&reg, t * 1000, &VIEW));
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
