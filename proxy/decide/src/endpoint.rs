//! Live state of one upstream endpoint, shared by every route and worker that uses it and kept
//! across config reloads and policy swaps (so a reload does not forget what was learned).
//!
//! Everything is a relaxed atomic: the hot path never locks. The peak-EWMA pair
//! (estimate, stamp) may be read torn by a racing update, which at worst misjudges one pick;
//! two racing observations may lose one, which an EWMA shrugs off.

use crate::balance::ewma::PeakEwma;
use crate::balance::LoadView;
use crate::guard::breaker::{Admit, Breaker, BreakerConfig, BreakerState, TripReason};
use crate::guard::outlier::{HealthCounter, OutlierConfig};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;
use vivremotion_protocol::Nanos;

/// Consecutive gateway errors after which an endpoint is reported as failing.
pub const FAILING_AFTER: u32 = 3;

#[derive(Debug)]
pub struct EndpointState {
    /// Unique for the life of the process: keys this endpoint's connection pools.
    pub id: u64,
    pub cluster: String,
    pub address: String,
    in_flight: AtomicU32,
    ewma_estimate_bits: AtomicU64,
    ewma_stamp: AtomicU64,
    ewma_primed: AtomicBool,
    decay_ns: AtomicU64,
    consecutive_failures: AtomicU32,
    consecutive_5xx: AtomicU32,
    last_failure_unix_ms: AtomicU64,
    /// Outlier ejection: until when (monotonic ns; 0 = not ejected), how often so far.
    ejected_until: AtomicU64,
    times_ejected: AtomicU32,
    pub ejections_total: AtomicU64,
    /// Requests and successes since the last success-rate evaluation.
    sr_requests: AtomicU64,
    sr_successes: AtomicU64,
    /// Active health checks (true until checks say otherwise).
    active_healthy: AtomicBool,
    health: Mutex<HealthCounter>,
    pub health_check_failures: AtomicU64,
    /// `None`: breaker disabled for this endpoint's cluster.
    breaker: Mutex<Option<Breaker>>,
    /// Lock-free view of the breaker for the balancer: while open, the time it reopens.
    breaker_blocked_until: AtomicU64,
    /// A breaker is configured: without one, the pick and the record never touch its mutex.
    breaker_on: AtomicBool,
}

/// How a try ended, as the endpoint's guards see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryResult {
    /// The upstream answered with this status.
    Answer(u16),
    /// Connect failure, reset, timeout, or an unreadable response.
    Error,
}

impl TryResult {
    fn is_gateway_error(self) -> bool {
        matches!(self, TryResult::Error | TryResult::Answer(502..=504))
    }

    fn is_5xx(self) -> bool {
        matches!(self, TryResult::Error | TryResult::Answer(500..=599))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Healthy,
    /// At least [`FAILING_AFTER`] gateway errors in a row (passive observation).
    Failing,
    /// Failing active health checks.
    Unhealthy,
}

impl EndpointState {
    pub fn new(
        cluster: &str,
        address: &str,
        default_rtt: Duration,
        decay: Duration,
        now: Nanos,
    ) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let e = PeakEwma::new(default_rtt, now);
        EndpointState {
            id: NEXT_ID.fetch_add(1, Relaxed),
            cluster: cluster.to_string(),
            address: address.to_string(),
            in_flight: AtomicU32::new(0),
            ewma_estimate_bits: AtomicU64::new(e.estimate_ns.to_bits()),
            ewma_stamp: AtomicU64::new(e.stamp.0),
            ewma_primed: AtomicBool::new(false),
            decay_ns: AtomicU64::new(Nanos::from_duration(decay).0),
            consecutive_failures: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            last_failure_unix_ms: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            times_ejected: AtomicU32::new(0),
            ejections_total: AtomicU64::new(0),
            sr_requests: AtomicU64::new(0),
            sr_successes: AtomicU64::new(0),
            active_healthy: AtomicBool::new(true),
            health: Mutex::new(HealthCounter::default()),
            health_check_failures: AtomicU64::new(0),
            breaker: Mutex::new(None),
            breaker_blocked_until: AtomicU64::new(0),
            breaker_on: AtomicBool::new(false),
        }
    }

    /// Install (or remove, with `None`) the cluster's breaker settings; a running breaker keeps
    /// its state.
    pub fn set_breaker(&self, cfg: Option<BreakerConfig>) {
        let mut b = lock(&self.breaker);
        self.breaker_on.store(cfg.is_some(), Relaxed);
        match (cfg, b.as_mut()) {
            (None, _) => {
                *b = None;
                self.breaker_blocked_until.store(0, Relaxed);
            }
            (Some(c), Some(existing)) => existing.set_config(c),
            (Some(c), None) => *b = Some(Breaker::new(c)),
        }
    }

    /// May a request go to this endpoint now, as far as its breaker is concerned?
    pub fn breaker_admit(&self, now: Nanos) -> Admit {
        // The common cases without the lock: no breaker, or one that is open.
        if !self.breaker_on.load(Relaxed) {
            return Admit::Yes;
        }
        if self.breaker_blocked_until.load(Relaxed) > now.0 {
            return Admit::No;
        }
        let mut g = lock(&self.breaker);
        let Some(b) = g.as_mut() else {
            return Admit::Yes;
        };
        let a = b.admit(now);
        self.sync_breaker(b);
        a
    }

    fn sync_breaker(&self, b: &Breaker) {
        self.breaker_blocked_until
            .store(b.reopens_at().map_or(0, |t| t.0), Relaxed);
    }

    pub fn breaker_view(&self, now: Nanos) -> Option<(BreakerState, u64, Option<TripReason>)> {
        lock(&self.breaker)
            .as_ref()
            .map(|b| (b.state(now), b.trips, b.last_trip))
    }

    /// Whether the balancer may choose this endpoint: healthy by active checks, not ejected,
    /// breaker not open.
    pub fn is_available(&self, now: Nanos) -> bool {
        self.active_healthy.load(Relaxed)
            && self.ejected_until.load(Relaxed) <= now.0
            && self.breaker_blocked_until.load(Relaxed) <= now.0
    }

    pub fn ejected(&self, now: Nanos) -> bool {
        self.ejected_until.load(Relaxed) > now.0
    }

    pub fn ejected_until(&self) -> Option<Nanos> {
        Some(self.ejected_until.load(Relaxed))
            .filter(|&t| t > 0)
            .map(Nanos)
    }

    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Relaxed)
    }

    /// Eject until `now + ejection_time(times)`. Returns false if it already was ejected.
    pub fn eject(&self, now: Nanos, cfg: &OutlierConfig) -> bool {
        let cur = self.ejected_until.load(Relaxed);
        if cur > now.0 {
            return false;
        }
        let times = self.times_ejected.load(Relaxed) + 1;
        let until = now.saturating_add(cfg.ejection_time(times)).0;
        if self
            .ejected_until
            .compare_exchange(cur, until, Relaxed, Relaxed)
            .is_err()
        {
            return false; // another worker ejected it first
        }
        self.times_ejected.store(times, Relaxed);
        self.ejections_total.fetch_add(1, Relaxed);
        self.consecutive_failures.store(0, Relaxed);
        self.consecutive_5xx.store(0, Relaxed);
        true
    }

    /// One clean success-rate interval: repeat ejections are forgiven one at a time.
    pub fn forgive_one(&self, now: Nanos) {
        if !self.ejected(now) {
            let _ = self
                .times_ejected
                .fetch_update(Relaxed, Relaxed, |t| Some(t.saturating_sub(1)));
        }
    }

    /// Requests and successes since the last call (success-rate detection).
    pub fn take_success_counts(&self) -> (u64, u64) {
        (
            self.sr_requests.swap(0, Relaxed),
            self.sr_successes.swap(0, Relaxed),
        )
    }

    /// Record an active health check; returns Some(new verdict) when it changed.
    pub fn record_health_check(&self, ok: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        if !ok {
            self.health_check_failures.fetch_add(1, Relaxed);
        }
        let mut h = lock(&self.health);
        let changed = h.record(ok, healthy, unhealthy);
        self.active_healthy.store(h.healthy, Relaxed);
        changed.then_some(h.healthy)
    }

    /// Forget active health results (health checks were turned off).
    pub fn clear_health(&self) {
        *lock(&self.health) = HealthCounter::default();
        self.active_healthy.store(true, Relaxed);
    }

    pub fn actively_healthy(&self) -> bool {
        self.active_healthy.load(Relaxed)
    }

    /// Feed a finished try to the breaker and the outlier counters. Returns whether the
    /// consecutive-failure detector asks for an ejection (the caller checks the cluster's
    /// share), and whether the breaker tripped.
    pub fn record_try(
        &self,
        result: TryResult,
        probe: bool,
        now: Nanos,
        cfg: &OutlierConfig,
    ) -> (bool, bool) {
        self.sr_requests.fetch_add(1, Relaxed);
        let success = !result.is_5xx();
        if success {
            self.sr_successes.fetch_add(1, Relaxed);
        }
        // An open breaker ignores what non-probes report (their window is gone).
        let breaker = self.breaker_on.load(Relaxed)
            && (probe || self.breaker_blocked_until.load(Relaxed) <= now.0);
        let tripped = breaker && {
            let mut g = lock(&self.breaker);
            match g.as_mut() {
                Some(b) => {
                    let before = b.trips;
                    b.record(now, success, probe);
                    self.sync_breaker(b);
                    b.trips != before
                }
                None => false,
            }
        };
        let c5 = if result.is_5xx() {
            self.consecutive_5xx.fetch_add(1, Relaxed) + 1
        } else {
            if self.consecutive_5xx.load(Relaxed) != 0 {
                self.consecutive_5xx.store(0, Relaxed);
            }
            0
        };
        let cg = if result.is_gateway_error() {
            self.consecutive_failures.load(Relaxed)
        } else {
            0
        };
        let eject = (cfg.consecutive_5xx > 0 && c5 >= cfg.consecutive_5xx)
            || (cfg.consecutive_gateway_errors > 0 && cg >= cfg.consecutive_gateway_errors);
        (eject, tripped)
    }

    /// A probe try ended through the client's fault (it says nothing about the endpoint):
    /// give its half-open slot back without a verdict.
    pub fn cancel_probe(&self) {
        if let Some(b) = lock(&self.breaker).as_mut() {
            b.cancel_probe();
        }
    }

    pub fn set_decay(&self, decay: Duration) {
        self.decay_ns.store(Nanos::from_duration(decay).0, Relaxed);
    }

    fn decay(&self) -> Duration {
        Duration::from_nanos(self.decay_ns.load(Relaxed))
    }

    fn ewma(&self) -> PeakEwma {
        PeakEwma {
            estimate_ns: f64::from_bits(self.ewma_estimate_bits.load(Relaxed)),
            stamp: Nanos(self.ewma_stamp.load(Relaxed)),
            primed: self.ewma_primed.load(Relaxed),
        }
    }

    /// A request was sent to this endpoint.
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// A request to this endpoint finished (successfully or not).
    pub fn finish(&self) {
        // Saturating: a finish without a start must not wrap to 4 billion in-flight.
        let _ = self
            .in_flight
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
    }

    /// Record the time to response headers of a request that got an answer.
    pub fn observe_rtt(&self, rtt: Duration, now: Nanos) {
        let mut e = self.ewma();
        e.observe(rtt, now, self.decay());
        self.ewma_estimate_bits
            .store(e.estimate_ns.to_bits(), Relaxed);
        self.ewma_stamp.store(e.stamp.0, Relaxed);
        if !self.ewma_primed.load(Relaxed) {
            self.ewma_primed.store(true, Relaxed);
        }
    }

    /// The upstream answered with `status` after `rtt`: feed the latency estimate, and count
    /// gateway errors (502–504) as failures.
    pub fn record_answer(&self, status: u16, rtt: Duration, now: Nanos, unix_ms: u64) {
        self.observe_rtt(rtt, now);
        if matches!(status, 502..=504) {
            self.record_failure(unix_ms);
        } else {
            self.record_success();
        }
    }

    /// The exchange failed (refused, reset, timed out). A failing endpoint answers fast;
    /// without a penalty, latency-aware balancing would pour traffic into it, so the failure
    /// counts as slow as the route's `timeout`.
    pub fn record_error(&self, timeout: Duration, now: Nanos, unix_ms: u64) {
        self.observe_rtt(timeout, now);
        self.record_failure(unix_ms);
    }

    pub fn record_success(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    pub fn record_failure(&self, unix_ms: u64) {
        self.consecutive_failures.fetch_add(1, Relaxed);
        self.last_failure_unix_ms.store(unix_ms, Relaxed);
    }

    pub fn health(&self) -> HealthState {
        if !self.actively_healthy() {
            HealthState::Unhealthy
        } else if self.consecutive_failures.load(Relaxed) >= FAILING_AFTER {
            HealthState::Failing
        } else {
            HealthState::Healthy
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    pub fn last_failure_unix_ms(&self) -> Option<u64> {
        Some(self.last_failure_unix_ms.load(Relaxed)).filter(|&t| t > 0)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LoadView for EndpointState {
    fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    fn latency_ns(&self, now: Nanos) -> f64 {
        self.ewma().estimate(now, self.decay())
    }

    fn available(&self, now: Nanos) -> bool {
        self.is_available(now)
    }
}

impl<T: LoadView> LoadView for std::sync::Arc<T> {
    fn in_flight(&self) -> u32 {
        (**self).in_flight()
    }

    fn latency_ns(&self, now: Nanos) -> f64 {
        (**self).latency_ns(now)
    }

    fn available(&self, now: Nanos) -> bool {
        (**self).available(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> EndpointState {
        EndpointState::new(
            "c",
            "a:1",
            Duration::from_millis(1),
            Duration::from_secs(10),
            Nanos(0),
        )
    }

    #[test]
    fn in_flight_never_wraps() {
        let e = endpoint();
        e.finish();
        assert_eq!(e.in_flight(), 0);
        e.start();
        e.start();
        e.finish();
        assert_eq!(e.in_flight(), 1);
    }

    #[test]
    fn failures_mark_failing_and_success_clears() {
        let e = endpoint();
        for _ in 0..FAILING_AFTER {
            e.record_failure(5);
        }
        assert_eq!(e.health(), HealthState::Failing);
        assert_eq!(e.last_failure_unix_ms(), Some(5));
        e.record_success();
        assert_eq!(e.health(), HealthState::Healthy);
    }

    #[test]
    fn rtt_observations_feed_the_estimate() {
        let e = endpoint();
        e.observe_rtt(Duration::from_millis(40), Nanos(10));
        assert!((e.latency_ns(Nanos(10)) - 40e6).abs() < 1.0);
    }
}
