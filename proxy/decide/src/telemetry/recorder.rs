//! Per-scope, per-worker request statistics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use vivremotion_protocol::sketch::{bucket_index, DENSE_BUCKETS};
use vivremotion_protocol::telemetry::{Priority, Scope};

/// Upstream failure kinds, as counted in telemetry windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    Timeout,
    Reset,
}

/// Counter slots in a shard.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum Ctr {
    Requests,
    S1xx,
    S2xx,
    S3xx,
    S4xx,
    S5xx,
    ErrConnect,
    ErrTimeout,
    ErrReset,
    Upstream5xx,
    Upstream429,
    BytesIn,
    BytesOut,
    /// Sum of latencies in µs.
    LatencySumUs,
    /// Route scope: tries after the first.
    Retries,
    /// Route scope: retries refused for lack of budget.
    RetryBudgetExhausted,
    /// Endpoint scope: outlier ejections.
    Ejections,
    /// Endpoint scope: circuit breaker trips.
    BreakerTrips,
    /// Route scope, by priority (critical, default, sheddable): admitted past admission
    /// control, refused by a rate limit (429), shed by the concurrency limit (503).
    AdmittedCritical,
    AdmittedDefault,
    AdmittedSheddable,
    LimitedCritical,
    LimitedDefault,
    LimitedSheddable,
    ShedCritical,
    ShedDefault,
    ShedSheddable,
    /// Route scope: sum of queue waits in µs (their distribution is the queue histogram).
    QueueWaitSumUs,
    /// Route scope: retries by the failure that caused them.
    RetryConnect,
    RetryReset,
    RetryTimeout,
    RetryStatus,
}

pub const NUM_COUNTERS: usize = Ctr::RetryStatus as usize + 1;

impl Ctr {
    pub fn admitted(p: Priority) -> Ctr {
        [
            Ctr::AdmittedCritical,
            Ctr::AdmittedDefault,
            Ctr::AdmittedSheddable,
        ][p as usize]
    }

    pub fn limited(p: Priority) -> Ctr {
        [
            Ctr::LimitedCritical,
            Ctr::LimitedDefault,
            Ctr::LimitedSheddable,
        ][p as usize]
    }

    pub fn shed(p: Priority) -> Ctr {
        [Ctr::ShedCritical, Ctr::ShedDefault, Ctr::ShedSheddable][p as usize]
    }
}

/// What happened to one request, recorded when it is finished.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Status sent to the client.
    pub status: u16,
    /// Status the upstream answered, if it did.
    pub upstream_status: Option<u16>,
    pub failure: Option<UpstreamFailure>,
    /// Request received → response headers (from upstream, or local answer), µs.
    pub latency_us: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Route scope: how long the request waited for a concurrency slot, if it waited.
    pub queue_wait_us: Option<f64>,
}

impl Outcome {
    /// A status and a latency, nothing else known yet.
    pub fn new(status: u16, latency_us: f64) -> Outcome {
        Outcome {
            status,
            upstream_status: None,
            failure: None,
            latency_us,
            bytes_in: 0,
            bytes_out: 0,
            queue_wait_us: None,
        }
    }
}

/// One worker's counters for one scope, on its own cache lines.
#[repr(align(64))]
struct Shard {
    counters: [AtomicU64; NUM_COUNTERS],
    hist: Box<[AtomicU64]>,
    /// Queue waits (route scopes only; empty elsewhere).
    queue_hist: Box<[AtomicU64]>,
    /// Window minimum and maximum latency (µs), reset by the collector each tick.
    window_min_us: AtomicU64,
    window_max_us: AtomicU64,
    in_flight: AtomicI64,
}

impl Shard {
    fn new(queue: bool) -> Shard {
        Shard {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            hist: (0..DENSE_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            queue_hist: (0..if queue { DENSE_BUCKETS } else { 0 })
                .map(|_| AtomicU64::new(0))
                .collect(),
            window_min_us: AtomicU64::new(u64::MAX),
            window_max_us: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
        }
    }
}

/// Statistics of one scope (route × upstream endpoint).
pub struct ScopeStats {
    pub scope: Scope,
    shards: Box<[Shard]>,
}

impl std::fmt::Debug for ScopeStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeStats")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Cumulative totals of a scope, summed over shards.
#[derive(Debug, Clone)]
pub struct Totals {
    pub counters: [u64; NUM_COUNTERS],
    pub hist: Vec<u64>,
    /// Queue waits (route scopes; empty elsewhere).
    pub queue_hist: Vec<u64>,
    pub in_flight: i64,
}

impl Totals {
    pub fn get(&self, c: Ctr) -> u64 {
        self.counters[c as usize]
    }
}

impl ScopeStats {
    pub fn new(scope: Scope, workers: usize) -> ScopeStats {
        let route_scope = scope.upstream.is_none();
        ScopeStats {
            scope,
            // One shard per worker plus one for any other thread.
            shards: (0..workers + 1).map(|_| Shard::new(route_scope)).collect(),
        }
    }

    fn shard(&self, worker: usize) -> &Shard {
        &self.shards[worker.min(self.shards.len() - 1)]
    }

    pub fn start(&self, worker: usize) {
        self.shard(worker).in_flight.fetch_add(1, Relaxed);
    }

    /// Record a finished request. `started` says whether [`start`](Self::start) was called.
    pub fn finish(&self, worker: usize, o: &Outcome, started: bool) {
        let s = self.shard(worker);
        if started {
            s.in_flight.fetch_sub(1, Relaxed);
        }
        let add = |c: Ctr, v: u64| {
            if v != 0 {
                s.counters[c as usize].fetch_add(v, Relaxed);
            }
        };
        add(Ctr::Requests, 1);
        let class = match o.status {
            100..=199 => Ctr::S1xx,
            200..=299 => Ctr::S2xx,
            300..=399 => Ctr::S3xx,
            400..=499 => Ctr::S4xx,
            _ => Ctr::S5xx,
        };
        add(class, 1);
        match o.failure {
            Some(UpstreamFailure::Connect) => add(Ctr::ErrConnect, 1),
            Some(UpstreamFailure::Timeout) => add(Ctr::ErrTimeout, 1),
            Some(UpstreamFailure::Reset) => add(Ctr::ErrReset, 1),
            None => {}
        }
        match o.upstream_status {
            Some(429) => add(Ctr::Upstream429, 1),
            Some(st) if st >= 500 => add(Ctr::Upstream5xx, 1),
            _ => {}
        }
        add(Ctr::BytesIn, o.bytes_in);
        add(Ctr::BytesOut, o.bytes_out);
        let us = if o.latency_us.is_finite() {
            o.latency_us.max(0.0)
        } else {
            0.0
        };
        add(Ctr::LatencySumUs, us as u64);
        s.hist[bucket_index(us)].fetch_add(1, Relaxed);
        let us_int = us as u64;
        s.window_min_us.fetch_min(us_int, Relaxed);
        s.window_max_us.fetch_max(us_int, Relaxed);
        if let Some(q) = o.queue_wait_us.filter(|q| q.is_finite()) {
            let q = q.max(0.0);
            if let Some(b) = s.queue_hist.get(bucket_index(q)) {
                b.fetch_add(1, Relaxed);
                add(Ctr::QueueWaitSumUs, q as u64);
            }
        }
    }

    /// Count an event that is not a finished request (retries, ejections, ...).
    pub fn add(&self, worker: usize, c: Ctr, n: u64) {
        self.shard(worker).counters[c as usize].fetch_add(n, Relaxed);
    }

    /// Count request body bytes (recorded separately: the body may outlive the response).
    pub fn add_bytes_in(&self, worker: usize, n: u64) {
        if n > 0 {
            self.shard(worker).counters[Ctr::BytesIn as usize].fetch_add(n, Relaxed);
        }
    }

    /// In flight now, over all shards (what a sample needs, without summing histograms).
    pub fn in_flight(&self) -> i64 {
        self.shards.iter().map(|s| s.in_flight.load(Relaxed)).sum()
    }

    /// Cumulative totals over all shards.
    pub fn totals(&self) -> Totals {
        let queue_len = self.shards.first().map_or(0, |s| s.queue_hist.len());
        let mut t = Totals {
            counters: [0; NUM_COUNTERS],
            hist: vec![0; DENSE_BUCKETS],
            queue_hist: vec![0; queue_len],
            in_flight: 0,
        };
        for s in self.shards.iter() {
            for (acc, c) in t.counters.iter_mut().zip(s.counters.iter()) {
                *acc += c.load(Relaxed);
            }
            for (acc, c) in t.hist.iter_mut().zip(s.hist.iter()) {
                *acc += c.load(Relaxed);
            }
            for (acc, c) in t.queue_hist.iter_mut().zip(s.queue_hist.iter()) {
                *acc += c.load(Relaxed);
            }
            t.in_flight += s.in_flight.load(Relaxed);
        }
        t
    }

    /// Take the window's min and max latency (µs) and start a new window.
    pub fn take_window_extremes(&self) -> (f64, f64) {
        let mut min = u64::MAX;
        let mut max = 0;
        for s in self.shards.iter() {
            min = min.min(s.window_min_us.swap(u64::MAX, Relaxed));
            max = max.max(s.window_max_us.swap(0, Relaxed));
        }
        (if min == u64::MAX { 0.0 } else { min as f64 }, max as f64)
    }
}

/// All scopes' stats by scope. Locked only when snapshots are built and when the collector
/// looks for new scopes, never on the request path.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    scopes: Mutex<HashMap<Scope, Arc<ScopeStats>>>,
}

impl StatsRegistry {
    pub fn get_or_create(&self, scope: Scope, workers: usize) -> Arc<ScopeStats> {
        let mut map = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(scope.clone())
            .or_insert_with(|| Arc::new(ScopeStats::new(scope, workers)))
            .clone()
    }

    /// Keep only the scopes in `live`.
    pub fn retain(&self, live: &std::collections::HashSet<Scope>) {
        let mut map = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, _| live.contains(k));
    }

    pub fn all(&self) -> Vec<Arc<ScopeStats>> {
        let map = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map.values().cloned().collect();
        v.sort_by(|a, b| a.scope.cmp(&b.scope));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        Scope {
            route: "r".into(),
            cluster: Some("c".into()),
            upstream: Some("a:1".into()),
        }
    }

    fn ok(latency_us: f64) -> Outcome {
        Outcome {
            status: 200,
            upstream_status: Some(200),
            failure: None,
            latency_us,
            bytes_in: 10,
            bytes_out: 100,
            queue_wait_us: None,
        }
    }

    #[test]
    fn shards_sum_up() {
        let s = ScopeStats::new(scope(), 2);
        s.start(0);
        s.start(1);
        s.start(7); // out-of-range worker lands on the spare shard
        s.finish(0, &ok(1000.0), true);
        s.finish(1, &ok(3000.0), true);
        s.finish(
            7,
            &Outcome {
                status: 502,
                upstream_status: None,
                failure: Some(UpstreamFailure::Connect),
                ..ok(10.0)
            },
            true,
        );
        let t = s.totals();
        assert_eq!(t.get(Ctr::Requests), 3);
        assert_eq!(t.get(Ctr::S2xx), 2);
        assert_eq!(t.get(Ctr::S5xx), 1);
        assert_eq!(t.get(Ctr::ErrConnect), 1);
        assert_eq!(t.get(Ctr::BytesOut), 300);
        assert_eq!(t.in_flight, 0);
        assert_eq!(t.hist.iter().sum::<u64>(), 3);
        assert_eq!(s.take_window_extremes(), (10.0, 3000.0));
        assert_eq!(s.take_window_extremes(), (0.0, 0.0));
    }

    #[test]
    fn registry_reuses_and_prunes() {
        let r = StatsRegistry::default();
        let a = r.get_or_create(scope(), 1);
        let b = r.get_or_create(scope(), 1);
        assert!(Arc::ptr_eq(&a, &b));
        r.retain(&Default::default());
        assert!(r.all().is_empty());
    }
}
