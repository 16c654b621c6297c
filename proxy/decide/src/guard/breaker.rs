//! Circuit breaker per endpoint: closed → open → half-open → closed.
//!
//! - **Closed**: requests flow; outcomes are counted over a sliding window. The breaker trips
//!   on `consecutive_failures` in a row, or when at least `min_requests` were seen in the
//!   window and the failure ratio reaches `failure_ratio`.
//! - **Open** for `open_for`, doubling on each consecutive trip up to `max_open_for`: nothing
//!   is sent.
//! - **Half-open**: at most `probes` requests at a time are let through as probes. `probes`
//!   successes in a row close the breaker; any probe failure opens it again.
//!
//! The only way into Closed is a successful probe (property-tested below).

use serde::Serialize;
use std::time::Duration;
use vivremotion_protocol::Nanos;

const BUCKETS: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub failure_ratio: f64,
    pub min_requests: u32,
    #[serde(serialize_with = "crate::ser::ser_duration")]
    pub window: Duration,
    #[serde(serialize_with = "crate::ser::ser_duration")]
    pub open_for: Duration,
    #[serde(serialize_with = "crate::ser::ser_duration")]
    pub max_open_for: Duration,
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
            probes: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Why the breaker last opened.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum TripReason {
    ConsecutiveFailures { failures: u32 },
    FailureRatio { failures: u64, requests: u64 },
    ProbeFailed,
}

/// May a request go to this endpoint?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as a half-open probe: report its outcome with `probe = true`.
    Probe,
    No,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    period: u64,
    requests: u64,
    failures: u64,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: BreakerState,
    opened_at: Nanos,
    open_for: Duration,
    /// Trips since the breaker was last closed by probes (drives the back-off).
    streak: u32,
    consecutive: u32,
    buckets: [Bucket; BUCKETS as usize],
    probes_in_flight: u32,
    probe_successes: u32,
    pub trips: u64,
    pub last_trip: Option<TripReason>,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker {
            cfg,
            state: BreakerState::Closed,
            opened_at: Nanos::ZERO,
            open_for: cfg.open_for,
            streak: 0,
            consecutive: 0,
            buckets: [Bucket::default(); BUCKETS as usize],
            probes_in_flight: 0,
            probe_successes: 0,
            trips: 0,
            last_trip: None,
        }
    }

    pub fn config(&self) -> BreakerConfig {
        self.cfg
    }

    pub fn set_config(&mut self, cfg: BreakerConfig) {
        self.cfg = cfg;
    }

    /// The state as of `now` (an open breaker whose time is up reads as half-open).
    pub fn state(&self, now: Nanos) -> BreakerState {
        match self.state {
            BreakerState::Open if now.saturating_since(self.opened_at) >= self.open_for => {
                BreakerState::HalfOpen
            }
            s => s,
        }
    }

    /// When an open breaker lets probes through.
    pub fn reopens_at(&self) -> Option<Nanos> {
        (self.state == BreakerState::Open).then(|| self.opened_at.saturating_add(self.open_for))
    }

    fn width_ns(&self) -> u64 {
        (Nanos::from_duration(self.cfg.window).0 / BUCKETS).max(1)
    }

    pub fn admit(&mut self, now: Nanos) -> Admit {
        if self.state == BreakerState::Open {
            if now.saturating_since(self.opened_at) < self.open_for {
                return Admit::No;
            }
            self.state = BreakerState::HalfOpen;
            self.probes_in_flight = 0;
            self.probe_successes = 0;
        }
        match self.state {
            BreakerState::Closed => Admit::Yes,
            BreakerState::HalfOpen if self.probes_in_flight < self.cfg.probes.max(1) => {
                self.probes_in_flight += 1;
                Admit::Probe
            }
            _ => Admit::No,
        }
    }

    /// A probe ended with no verdict on the endpoint (the client broke its own request): its
    /// slot goes back.
    pub fn cancel_probe(&mut self) {
        if self.state == BreakerState::HalfOpen {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
    }

    /// The outcome of a request admitted at `admit`. `probe`: it was admitted as a probe.
    pub fn record(&mut self, now: Nanos, success: bool, probe: bool) {
        if probe {
            if self.state != BreakerState::HalfOpen {
                return; // a probe from an earlier half-open period; already decided
            }
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
            if !success {
                self.trip(now, TripReason::ProbeFailed);
            } else {
                self.probe_successes += 1;
                if self.probe_successes >= self.cfg.probes.max(1) {
                    self.close();
                }
            }
            return;
        }
        if self.state != BreakerState::Closed {
            return; // admitted before the breaker opened: the window it belonged to is gone
        }
        let width = self.width_ns();
        let period = now.0 / width;
        let b = &mut self.buckets[(period % BUCKETS) as usize];
        if b.period != period {
            *b = Bucket {
                period,
                requests: 0,
                failures: 0,
            };
        }
        b.requests += 1;
        if success {
            self.consecutive = 0;
            return;
        }
        b.failures += 1;
        self.consecutive += 1;
        if self.cfg.consecutive_failures > 0 && self.consecutive >= self.cfg.consecutive_failures {
            let failures = self.consecutive;
            self.trip(now, TripReason::ConsecutiveFailures { failures });
            return;
        }
        let oldest = period.saturating_sub(BUCKETS - 1);
        let (requests, failures) = self
            .buckets
            .iter()
            .filter(|b| b.period >= oldest && b.period <= period)
            .fold((0, 0), |(q, f), b| (q + b.requests, f + b.failures));
        if requests >= u64::from(self.cfg.min_requests.max(1))
            && failures as f64 >= self.cfg.failure_ratio * requests as f64
        {
            self.trip(now, TripReason::FailureRatio { failures, requests });
        }
    }

    fn trip(&mut self, now: Nanos, reason: TripReason) {
        self.open_for = if self.streak == 0 {
            self.cfg.open_for
        } else {
            (self.open_for * 2).min(self.cfg.max_open_for.max(self.cfg.open_for))
        };
        self.streak += 1;
        self.state = BreakerState::Open;
        self.opened_at = now;
        self.trips += 1;
        self.last_trip = Some(reason);
        self.probes_in_flight = 0;
        self.probe_successes = 0;
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.streak = 0;
        self.consecutive = 0;
        self.buckets = [Bucket::default(); BUCKETS as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            min_requests: 10,
            window: Duration::from_secs(1),
            open_for: Duration::from_millis(100),
            max_open_for: Duration::from_millis(400),
            probes: 2,
        }
    }

    #[test]
    fn trips_on_consecutive_failures_and_recovers_through_probes() {
        let mut b = Breaker::new(cfg());
        let t = Nanos(1_000 * MS);
        for _ in 0..3 {
            assert_eq!(b.admit(t), Admit::Yes);
            b.record(t, false, false);
        }
        assert_eq!(b.state(t), BreakerState::Open);
        assert_eq!(
            b.last_trip,
            Some(TripReason::ConsecutiveFailures { failures: 3 })
        );
        assert_eq!(b.admit(Nanos(t.0 + 50 * MS)), Admit::No);
        let t2 = Nanos(t.0 + 100 * MS);
        assert_eq!(b.state(t2), BreakerState::HalfOpen);
        assert_eq!(b.admit(t2), Admit::Probe);
        assert_eq!(b.admit(t2), Admit::Probe);
        assert_eq!(b.admit(t2), Admit::No, "only two probes at a time");
        b.record(t2, true, true);
        assert_eq!(b.state(t2), BreakerState::HalfOpen);
        b.record(t2, true, true);
        assert_eq!(b.state(t2), BreakerState::Closed);
    }

    #[test]
    fn failed_probe_reopens_for_longer() {
        let mut b = Breaker::new(cfg());
        let mut t = Nanos(1_000 * MS);
        for _ in 0..3 {
            b.admit(t);
            b.record(t, false, false);
        }
        for expected in [200, 400, 400] {
            t = b.reopens_at().unwrap();
            assert_eq!(b.admit(t), Admit::Probe);
            b.record(t, false, true);
            assert_eq!(b.last_trip, Some(TripReason::ProbeFailed));
            assert_eq!(b.reopens_at().unwrap().0 - t.0, expected * MS);
        }
    }

    #[test]
    fn trips_on_failure_ratio() {
        let mut b = Breaker::new(BreakerConfig {
            consecutive_failures: 0,
            ..cfg()
        });
        let t = Nanos(1_000 * MS);
        for i in 0..10 {
            b.admit(t);
            b.record(t, i % 2 == 0, false);
        }
        assert_eq!(b.state(t), BreakerState::Open);
        assert_eq!(
            b.last_trip,
            Some(TripReason::FailureRatio {
                failures: 5,
                requests: 10
            })
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit(u64),
        /// Outcome of the n-th oldest outstanding admission.
        Finish(usize, bool),
    }

    proptest! {
        /// Every transition into Closed is caused by recording a successful probe.
        #[test]
        fn no_path_from_open_to_closed_without_a_successful_probe(
            ops in prop::collection::vec(prop_oneof![
                (0u64..80 * MS).prop_map(Op::Admit),
                (0usize..8, any::<bool>()).prop_map(|(i, ok)| Op::Finish(i, ok)),
            ], 1..500)
        ) {
            let mut b = Breaker::new(cfg());
            let mut now = 1_000 * MS;
            let mut outstanding: Vec<bool> = Vec::new(); // probe?
            let mut seen_open = false;
            for op in ops {
                let before = b.state(Nanos(now));
                match op {
                    Op::Admit(gap) => {
                        now += gap;
                        let before = b.state(Nanos(now));
                        match b.admit(Nanos(now)) {
                            Admit::Yes => { prop_assert_eq!(before, BreakerState::Closed); outstanding.push(false) }
                            Admit::Probe => { prop_assert_eq!(before, BreakerState::HalfOpen); outstanding.push(true) }
                            Admit::No => prop_assert_ne!(before, BreakerState::Closed),
                        }
                        prop_assert_ne!(b.state(Nanos(now)) == BreakerState::Closed && before != BreakerState::Closed, true);
                    }
                    Op::Finish(i, ok) => {
                        if outstanding.is_empty() { continue; }
                        let probe = outstanding.remove(i % outstanding.len());
                        b.record(Nanos(now), ok, probe);
                        let after = b.state(Nanos(now));
                        if before != BreakerState::Closed && after == BreakerState::Closed {
                            prop_assert!(probe && ok, "closed by a non-probe or a failure");
                        }
                    }
                }
                if b.state(Nanos(now)) == BreakerState::Open { seen_open = true; }
            }
            let _ = seen_open;
        }
    }
}
