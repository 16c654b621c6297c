//! The request path's side of `crate::guard`: choosing an endpoint past open breakers,
//! feeding try outcomes to breakers and outlier ejection, and deciding retries. Shared by the
//! HTTP/1.1 fast path and the hyper path so that both behave the same.

use crate::balance::PickInput;
use crate::endpoint::TryResult;
use crate::guard::breaker::Admit;
use crate::guard::budget::{BudgetConfig, RetryBudget};
use crate::snapshot::RouteRuntime;
use crate::telemetry::recorder::Ctr;
use rand::Rng;
use std::sync::Mutex;
use std::time::Duration;
use vivremotion_protocol::{Clock, Nanos};

/// Per-route state that outlives snapshots: one retry budget per worker (no sharing, no lock
/// contention; the bound holds per worker and so for their sum).
#[derive(Debug)]
pub struct RouteGuard {
    budgets: Box<[Mutex<RetryBudget>]>,
}

impl RouteGuard {
    pub fn new(workers: usize, cfg: BudgetConfig) -> RouteGuard {
        RouteGuard {
            budgets: (0..workers + 1)
                .map(|_| Mutex::new(RetryBudget::new(cfg)))
                .collect(),
        }
    }

    fn budget(&self, worker: usize) -> std::sync::MutexGuard<'_, RetryBudget> {
        self.budgets[worker.min(self.budgets.len() - 1)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn reconfigure(&self, cfg: BudgetConfig) {
        for b in self.budgets.iter() {
            let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
            if b.config() != cfg {
                b.reconfigure(cfg);
            }
        }
    }
}

/// Why no endpoint was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEndpoint {
    /// Nothing is available at all.
    None,
    /// Endpoints exist but their breakers are open.
    CircuitOpen,
}

/// How a failed try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryFailure {
    /// No connection: nothing was sent.
    Connect,
    /// The connection broke after the request was (maybe partly) sent.
    Reset,
    /// No response headers within the try's time.
    Timeout,
    /// The upstream answered with a status the route retries.
    Status(u16),
}

/// How one try ended: build with [`TryEnd::now`] when the try returns, then say how with
/// [`TryEnd::answered`] or [`TryEnd::failed`].
#[derive(Debug, Clone, Copy)]
pub struct TryEnd {
    pub endpoint: usize,
    pub probe: bool,
    /// The upstream's status when it answered.
    pub status: u16,
    /// `None`: it answered.
    pub failure: Option<TryFailure>,
    pub rtt: Duration,
    pub now: Nanos,
    pub unix_ms: u64,
}

impl TryEnd {
    /// A try to endpoint `ei` that started at `started` ends now.
    pub fn now(endpoint: usize, probe: bool, started: Nanos, clock: &dyn Clock) -> TryEnd {
        let now = clock.now();
        TryEnd {
            endpoint,
            probe,
            status: 0,
            failure: None,
            rtt: now.saturating_since(started),
            now,
            unix_ms: clock.unix_ms(),
        }
    }

    pub fn answered(self, status: u16) -> TryEnd {
        TryEnd {
            status,
            failure: None,
            ..self
        }
    }

    pub fn failed(self, failure: TryFailure) -> TryEnd {
        TryEnd {
            failure: Some(failure),
            ..self
        }
    }
}

/// One request's tries so far.
#[derive(Debug, Clone)]
pub struct Tries {
    pub count: u32,
    pub input: PickInput,
    pub deadline: Nanos,
}

impl Tries {
    pub fn new(input: PickInput, deadline: Nanos) -> Tries {
        Tries {
            count: 0,
            input,
            deadline,
        }
    }

    /// This try's time limit: the per-try timeout, within what is left of the total.
    pub fn try_timeout(&self, route: &RouteRuntime, now: Nanos) -> Duration {
        let left = self.deadline.saturating_since(now);
        route
            .cfg
            .retry
            .per_try_timeout
            .map_or(left, |t| t.min(left))
    }
}

impl RouteRuntime {
    /// The answer when no endpoint can be chosen.
    pub fn no_endpoint(&self, why: NoEndpoint) -> crate::error::ProxyError {
        let cluster = self.cfg.cluster.clone();
        match why {
            NoEndpoint::None => crate::error::ProxyError::NoEndpoint { cluster },
            NoEndpoint::CircuitOpen => crate::error::ProxyError::CircuitOpen { cluster },
        }
    }

    /// An original request arrives: it earns retry budget.
    pub fn deposit(&self, worker: usize, now: Nanos) {
        self.guard.budget(worker).deposit(now);
    }

    /// Choose an endpoint for the next try: the balancer's pick, passing over endpoints whose
    /// breaker refuses. Returns the endpoint and whether it goes as a half-open probe.
    pub fn choose<R: Rng + ?Sized>(
        &self,
        tries: &mut Tries,
        rng: &mut R,
    ) -> Result<(usize, bool), NoEndpoint> {
        let mut refused = false;
        for _ in 0..4 {
            let Some(ei) = self.balancer.pick(&self.endpoints, &tries.input, rng) else {
                break;
            };
            if ei < 64 {
                tries.input.avoid |= 1 << ei;
            }
            match self.endpoints[ei].breaker_admit(tries.input.now) {
                Admit::Yes => return Ok((ei, false)),
                Admit::Probe => return Ok((ei, true)),
                Admit::No => refused = true,
            }
        }
        Err(if refused {
            NoEndpoint::CircuitOpen
        } else {
            NoEndpoint::None
        })
    }

    /// Feed a finished try to the endpoint's latency estimate, breaker and outlier detector.
    #[allow(clippy::too_many_arguments)]
    pub fn record_try(
        &self,
        worker: usize,
        ei: usize,
        result: TryResult,
        probe: bool,
        rtt: Duration,
        now: Nanos,
        unix_ms: u64,
    ) {
        let Some(e) = self.endpoints.get(ei) else {
            return;
        };
        match result {
            TryResult::Answer(status) => e.record_answer(status, rtt, now, unix_ms),
            TryResult::Error => e.record_error(self.cfg.timeout, now, unix_ms),
        }
        let (eject, tripped) = e.record_try(result, probe, now, &self.outlier);
        if tripped {
            self.stats[ei].add(worker, Ctr::BreakerTrips, 1);
            if let Some((_, _, reason)) = e.breaker_view(now) {
                tracing::warn!(endpoint = %e.address, cluster = %e.cluster, ?reason, "circuit breaker opened");
            }
        }
        if eject {
            self.try_eject(worker, ei, now, "consecutive failures");
        }
    }

    /// Eject endpoint `ei` if the cluster's ejection share allows one more; counted and
    /// logged. Returns whether it was ejected.
    pub fn try_eject(&self, worker: usize, ei: usize, now: Nanos, why: &str) -> bool {
        let Some(e) = self.endpoints.get(ei) else {
            return false;
        };
        let ejected = self.endpoints.iter().filter(|x| x.ejected(now)).count();
        if !self.outlier.may_eject(ejected, self.endpoints.len()) || !e.eject(now, &self.outlier) {
            return false;
        }
        self.stats[ei].add(worker, Ctr::Ejections, 1);
        tracing::warn!(
            endpoint = %e.address,
            cluster = %e.cluster,
            times = e.times_ejected(),
            reason = why,
            "endpoint ejected"
        );
        true
    }

    /// A try ended (`result`; `failure` says how, if it failed): record it, then decide
    /// whether and where to try again, as [`Self::retry`]. An answer is retried only if its
    /// status is one the route retries.
    #[allow(clippy::too_many_arguments)]
    pub fn after_try<R: Rng + ?Sized>(
        &self,
        worker: usize,
        tries: &mut Tries,
        end: TryEnd,
        idempotent: bool,
        replayable: bool,
        rng: &mut R,
    ) -> Option<(usize, bool, Duration)> {
        let (result, failure) = match end.failure {
            Some(f) => (TryResult::Error, Some(f)),
            None => (
                TryResult::Answer(end.status),
                self.cfg
                    .retry
                    .on
                    .status(end.status)
                    .then_some(TryFailure::Status(end.status)),
            ),
        };
        self.record_try(
            worker,
            end.endpoint,
            result,
            end.probe,
            end.rtt,
            end.now,
            end.unix_ms,
        );
        let failure = failure?;
        self.retry(worker, tries, failure, idempotent, replayable, end.now, rng)
    }

    /// After a failed try: retry, and where? `replayable`: the request can be sent again as
    /// it was (no body, or nothing of it consumed); `idempotent`: its method is safe to repeat.
    /// `None` means answer the client with this failure.
    #[allow(clippy::too_many_arguments)]
    pub fn retry<R: Rng + ?Sized>(
        &self,
        worker: usize,
        tries: &mut Tries,
        failure: TryFailure,
        idempotent: bool,
        replayable: bool,
        now: Nanos,
        rng: &mut R,
    ) -> Option<(usize, bool, Duration)> {
        let rc = &self.cfg.retry;
        if tries.count > rc.retries {
            return None;
        }
        let (wanted, safe) = match failure {
            TryFailure::Connect => (rc.on.connect, true),
            TryFailure::Reset => (rc.on.reset, idempotent && replayable),
            TryFailure::Timeout => (rc.on.timeout, idempotent && replayable),
            TryFailure::Status(s) => (rc.on.status(s), idempotent && replayable),
        };
        if !wanted || !safe {
            return None;
        }
        let backoff = rc.backoff(tries.count);
        // Jitter: anywhere in [backoff / 2, backoff].
        let backoff = backoff.mul_f64(rng.random_range(0.5..=1.0));
        if now.saturating_add(backoff) >= tries.deadline {
            return None;
        }
        if !self.guard.budget(worker).try_withdraw(now) {
            self.route_stats.add(worker, Ctr::RetryBudgetExhausted, 1);
            return None;
        }
        tries.input.now = now;
        let (ei, probe) = self.choose(tries, rng).ok()?;
        self.route_stats.add(worker, Ctr::Retries, 1);
        Some((ei, probe, backoff))
    }
}
