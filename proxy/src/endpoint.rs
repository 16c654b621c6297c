//! Live state of one upstream endpoint, shared by every route and worker that uses it and kept
//! across config reloads and policy swaps (so a reload does not forget what was learned).
//!
//! Everything is a relaxed atomic: the hot path never locks. The peak-EWMA pair
//! (estimate, stamp) may be read torn by a racing update, which at worst misjudges one pick;
//! two racing observations may lose one, which an EWMA shrugs off.

use crate::balance::ewma::PeakEwma;
use crate::balance::LoadView;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
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
    last_failure_unix_ms: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Healthy,
    /// At least [`FAILING_AFTER`] gateway errors in a row (passive observation).
    Failing,
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
            last_failure_unix_ms: AtomicU64::new(0),
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
        if self.consecutive_failures.load(Relaxed) >= FAILING_AFTER {
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

impl LoadView for EndpointState {
    fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    fn latency_ns(&self, now: Nanos) -> f64 {
        self.ewma().estimate(now, self.decay())
    }
}

impl<T: LoadView> LoadView for std::sync::Arc<T> {
    fn in_flight(&self) -> u32 {
        (**self).in_flight()
    }

    fn latency_ns(&self, now: Nanos) -> f64 {
        (**self).latency_ns(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_never_wraps() {
        let e = EndpointState::new(
            "c",
            "a:1",
            Duration::from_millis(1),
            Duration::from_secs(10),
            Nanos(0),
        );
        e.finish();
        assert_eq!(e.in_flight(), 0);
        e.start();
        e.start();
        e.finish();
        assert_eq!(e.in_flight(), 1);
    }

    #[test]
    fn failures_mark_failing_and_success_clears() {
        let e = EndpointState::new(
            "c",
            "a:1",
            Duration::from_millis(1),
            Duration::from_secs(10),
            Nanos(0),
        );
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
        let e = EndpointState::new(
            "c",
            "a:1",
            Duration::from_millis(1),
            Duration::from_secs(10),
            Nanos(0),
        );
        e.observe_rtt(Duration::from_millis(40), Nanos(10));
        assert!((e.latency_ns(Nanos(10)) - 40e6).abs() < 1.0);
    }
}
