//! A request's whole life as one state machine, [`RequestFlow`]: admission, the queue, the
//! pick, each try, the retry decision, the backoff and the final answer.
//!
//! The flow does no IO and reads no clock. Its driver (the proxy's HTTP/1.1 fast path, its
//! hyper path, the simulator, a test on a `ManualClock`) passes `now` in, does what the
//! returned [`Start`] or [`Next`] says, and reports how it went:
//!
//! ```text
//! start ──► Queue{until} ──dequeue──► Forward(try) ──answered/failed──► Deliver | Fail
//!   │                                   ▲                    │
//!   ├──► Forward(try)                   └──resume── Backoff{until} ◄┘
//!   └──► Refuse (rate limited, shed, no endpoint, circuit open)
//! ```
//!
//! Everything decided along the way is counted where it happened: admission by priority on
//! the route, retries and exhausted budgets on the route, breaker trips and ejections on the
//! endpoint, and each try's outcome on the endpoint's passive health, latency estimate,
//! breaker and outlier detector.

use crate::balance::{Balancer, PickInput};
use crate::endpoint::{EndpointState, TryResult};
use crate::guard::breaker::Admit as BreakerAdmit;
use crate::guard::budget::{BudgetConfig, RetryBudget};
use crate::guard::outlier::OutlierConfig;
use crate::limits::concurrency::{Permit, Wait, WaitState};
use crate::limits::{Admit, Refusal, RouteLimits};
use crate::ser::{ser_duration, ser_opt_duration};
use crate::telemetry::recorder::{Ctr, ScopeStats, UpstreamFailure};
use rand::Rng;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vivremotion_protocol::telemetry::Priority;
use vivremotion_protocol::Nanos;

/// Which failures a route retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RetryOn {
    pub connect: bool,
    pub reset: bool,
    pub timeout: bool,
    pub status_502: bool,
    pub status_503: bool,
    pub status_504: bool,
}

impl RetryOn {
    pub fn status(&self, status: u16) -> bool {
        match status {
            502 => self.status_502,
            503 => self.status_503,
            504 => self.status_504,
            _ => false,
        }
    }
}

/// A route's retry settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RetryConfig {
    pub retries: u32,
    pub on: RetryOn,
    /// Each try's limit to response headers; `None`: only the route's `timeout` applies.
    #[serde(serialize_with = "ser_opt_duration")]
    pub per_try_timeout: Option<Duration>,
    #[serde(serialize_with = "ser_duration")]
    pub backoff_base: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub backoff_max: Duration,
    pub budget_percent: f64,
    pub budget_min_per_second: f64,
}

impl RetryConfig {
    /// The retry budget these settings describe (10 s sliding window).
    pub fn budget(&self) -> BudgetConfig {
        BudgetConfig {
            ratio: self.budget_percent / 100.0,
            min_per_second: self.budget_min_per_second,
            window: Duration::from_secs(10),
        }
    }

    /// Backoff before retry number `n` (1-based), before jitter: `base · 2^(n−1)`, capped.
    pub fn backoff(&self, n: u32) -> Duration {
        self.backoff_base
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.backoff_max)
    }
}

/// A route's retry budgets, one per worker (no sharing, no lock contention; the bound holds
/// per worker and so for their sum). Survive snapshots.
#[derive(Debug)]
pub struct RetryBudgets {
    budgets: Box<[Mutex<RetryBudget>]>,
}

impl RetryBudgets {
    pub fn new(workers: usize, cfg: BudgetConfig) -> RetryBudgets {
        RetryBudgets {
            budgets: (0..workers + 1)
                .map(|_| Mutex::new(RetryBudget::new(cfg)))
                .collect(),
        }
    }

    fn get(&self, worker: usize) -> std::sync::MutexGuard<'_, RetryBudget> {
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

/// The decision half of a route: what the flow needs to admit, pick, record and retry.
pub struct RouteCore {
    pub endpoints: Box<[Arc<EndpointState>]>,
    /// Per endpoint, in `endpoints` order.
    pub stats: Box<[Arc<ScopeStats>]>,
    pub route_stats: Arc<ScopeStats>,
    pub balancer: Balancer,
    /// The cluster's outlier settings (ejection share, thresholds).
    pub outlier: OutlierConfig,
    pub retry: RetryConfig,
    /// The whole request's limit.
    pub timeout: Duration,
    pub budgets: Arc<RetryBudgets>,
    /// Rate limits and the concurrency limit.
    pub limits: RouteLimits,
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

impl RouteCore {
    /// A route of one worker over endpoints `names` of cluster `c`, without a config: what the
    /// simulator's scenarios and the tests drive. Outlier settings are the defaults; no rate
    /// limits.
    pub fn standalone(
        names: &[&str],
        balancer: Balancer,
        retry: RetryConfig,
        timeout: Duration,
        concurrency: Option<Arc<crate::limits::concurrency::ConcurrencyLimiter>>,
        now: Nanos,
    ) -> RouteCore {
        use vivremotion_protocol::telemetry::Scope;
        let scope = |upstream: Option<&str>| {
            Arc::new(ScopeStats::new(
                Scope {
                    route: "r".into(),
                    cluster: Some("c".into()),
                    upstream: upstream.map(str::to_string),
                },
                1,
            ))
        };
        let ms = Duration::from_millis;
        RouteCore {
            endpoints: names
                .iter()
                .map(|n| Arc::new(EndpointState::new("c", n, ms(10), ms(100), now)))
                .collect(),
            stats: names.iter().map(|n| scope(Some(n))).collect(),
            route_stats: scope(None),
            balancer,
            outlier: OutlierConfig::default(),
            budgets: Arc::new(RetryBudgets::new(1, retry.budget())),
            retry,
            timeout,
            limits: RouteLimits {
                route: "r".into(),
                rate: Box::new([]),
                concurrency,
                retry_after: Duration::from_secs(1),
                lease_interval: ms(50),
            },
        }
    }

    /// Choose an endpoint for the next try: the balancer's pick, passing over endpoints whose
    /// breaker refuses. Returns the endpoint and whether it goes as a half-open probe.
    pub fn choose<R: Rng + ?Sized>(
        &self,
        input: &mut PickInput,
        rng: &mut R,
    ) -> Result<(usize, bool), NoEndpoint> {
        let mut refused = false;
        for _ in 0..4 {
            let Some(ei) = self.balancer.pick(&self.endpoints, input, rng) else {
                break;
            };
            if ei < 64 {
                input.avoid |= 1 << ei;
            }
            match self.endpoints[ei].breaker_admit(input.now) {
                BreakerAdmit::Yes => return Ok((ei, false)),
                BreakerAdmit::Probe => return Ok((ei, true)),
                BreakerAdmit::No => refused = true,
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
            TryResult::Error => e.record_error(self.timeout, now, unix_ms),
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

    fn count_refused(&self, worker: usize, r: &Refusal, p: Priority) {
        let c = match r {
            Refusal::RateLimited { .. } => Ctr::limited(p),
            Refusal::Overloaded { .. } => Ctr::shed(p),
        };
        self.route_stats.add(worker, c, 1);
    }
}

/// What the flow knows of a request.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// The worker (thread) driving it: selects per-worker shards, cursors and budgets.
    pub worker: usize,
    pub priority: Priority,
    pub client: IpAddr,
    /// Hash of the affinity key, for hashing balancers.
    pub affinity: Option<u64>,
    /// Its method is safe to repeat (RFC 9110 idempotent).
    pub idempotent: bool,
    /// It can be sent again as it was: no body (or none of it consumed).
    pub replayable: bool,
    /// The wall clock at `now` of [`RequestFlow::start`], for endpoint failure times.
    pub unix_ms: u64,
}

/// One try to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Try {
    pub endpoint: usize,
    /// It goes as a half-open breaker probe.
    pub probe: bool,
    /// 1 for the first try.
    pub attempt: u32,
    /// Response headers are due by then (the per-try timeout, within the request's).
    pub deadline: Nanos,
}

/// Why the request is answered without an upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refused {
    Admission(Refusal),
    NoEndpoint(NoEndpoint),
}

impl Refused {
    /// The status the client gets: 429 for a rate limit, 503 for shedding, no endpoint or an
    /// open circuit.
    pub fn status(&self) -> u16 {
        match self {
            Refused::Admission(Refusal::RateLimited { .. }) => 429,
            Refused::Admission(Refusal::Overloaded { .. }) | Refused::NoEndpoint(_) => 503,
        }
    }
}

impl TryFailure {
    /// The status the client gets when this is the last try's failure: 504 for a timeout,
    /// 502 for a connection that failed, the upstream's own status otherwise.
    pub fn status(&self) -> u16 {
        match self {
            TryFailure::Connect | TryFailure::Reset => 502,
            TryFailure::Timeout => 504,
            TryFailure::Status(s) => *s,
        }
    }

    /// How telemetry counts this failure: a connection that failed or broke, or a timeout;
    /// an answered status is not a failure kind.
    pub fn upstream_failure(&self) -> Option<UpstreamFailure> {
        match self {
            TryFailure::Connect => Some(UpstreamFailure::Connect),
            TryFailure::Reset => Some(UpstreamFailure::Reset),
            TryFailure::Timeout => Some(UpstreamFailure::Timeout),
            TryFailure::Status(_) => None,
        }
    }
}

/// What the driver does with an arriving (or dequeued) request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Start {
    /// Send this try; report with [`RequestFlow::answered`] or [`RequestFlow::failed`].
    Forward(Try),
    /// Wait for a concurrency slot: await [`RequestFlow::queued`] until `until` at the
    /// latest, then call [`RequestFlow::dequeue`].
    Queue { until: Nanos },
    /// Answer the client with this refusal.
    Refuse(Refused),
}

/// What the driver does after a try.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// Wait until `until`, then call [`RequestFlow::resume`] for the retry.
    Backoff { until: Nanos },
    /// The last try's answer goes to the client.
    Deliver,
    /// Answer the client with the last try's failure.
    Fail(TryFailure),
}

/// One request, from admission to its answer. See the module docs.
#[derive(Debug)]
pub struct RequestFlow {
    req: Request,
    t0: Nanos,
    deadline: Nanos,
    input: PickInput,
    tries: u32,
    permit: Option<Permit>,
    wait: Option<Wait>,
    /// The try under way (after `Forward`) and when it started.
    current: Option<(Try, Nanos)>,
    /// The endpoint chosen for the try after the backoff.
    next: Option<(usize, bool)>,
}

impl RequestFlow {
    /// A routed request arrives at `now`: admission (rate limits in order, then the
    /// concurrency limit), then the first pick. `header` looks up a request header's first
    /// value by lowercase name (rate limit keys).
    pub fn start<'a, R: Rng + ?Sized>(
        core: &RouteCore,
        req: Request,
        header: impl Fn(&str) -> Option<&'a [u8]>,
        now: Nanos,
        rng: &mut R,
    ) -> (RequestFlow, Start) {
        let mut flow = RequestFlow {
            req,
            t0: now,
            deadline: now.saturating_add(core.timeout),
            input: PickInput::new(now, req.worker, req.affinity),
            tries: 0,
            permit: None,
            wait: None,
            current: None,
            next: None,
        };
        let step = match core.limits.admit(req.priority, header, req.client, now) {
            Admit::Go(permit) => {
                core.route_stats
                    .add(req.worker, Ctr::admitted(req.priority), 1);
                flow.permit = permit;
                flow.first_try(core, now, rng)
            }
            Admit::Wait(w) => {
                let until = w.until();
                flow.wait = Some(w);
                Start::Queue { until }
            }
            Admit::Refuse(r) => {
                core.count_refused(req.worker, &r, req.priority);
                Start::Refuse(Refused::Admission(r))
            }
        };
        (flow, step)
    }

    /// The queue wait to await after [`Start::Queue`] (it completes when a slot is handed over
    /// or the request is evicted).
    pub fn queued(&mut self) -> Option<&mut Wait> {
        self.wait.as_mut()
    }

    /// After [`Start::Queue`]: the wait was settled, or its deadline came. Admitted (and the
    /// first pick made), shed at the deadline, or still waiting if neither happened yet.
    pub fn dequeue<R: Rng + ?Sized>(&mut self, core: &RouteCore, now: Nanos, rng: &mut R) -> Start {
        let Some(w) = self.wait.take() else {
            // Not queued (dequeued twice): refused as a wait that is over.
            return Start::Refuse(Refused::Admission(Refusal::Overloaded {
                priority: self.req.priority,
            }));
        };
        if w.state() == WaitState::Waiting && now < w.until() {
            let until = w.until();
            self.wait = Some(w);
            return Start::Queue { until };
        }
        let p = self.req.priority;
        match w.finish(now) {
            Some(permit) => {
                core.route_stats.add(self.req.worker, Ctr::admitted(p), 1);
                self.permit = Some(permit);
                self.first_try(core, now, rng)
            }
            None => {
                let r = Refusal::Overloaded { priority: p };
                core.count_refused(self.req.worker, &r, p);
                Start::Refuse(Refused::Admission(r))
            }
        }
    }

    /// Admitted: choose the first endpoint. Only now does the request earn retry budget and
    /// hold a breaker probe, so a shed request does neither.
    fn first_try<R: Rng + ?Sized>(&mut self, core: &RouteCore, now: Nanos, rng: &mut R) -> Start {
        self.input.now = now;
        match core.choose(&mut self.input, rng) {
            Ok((ei, probe)) => {
                core.budgets.get(self.req.worker).deposit(now);
                Start::Forward(self.forward(core, ei, probe, now))
            }
            Err(why) => {
                // Its time says nothing about the upstream: the adaptive limit must not learn
                // from it.
                if let Some(p) = self.permit.as_mut() {
                    p.no_sample();
                }
                Start::Refuse(Refused::NoEndpoint(why))
            }
        }
    }

    fn forward(&mut self, core: &RouteCore, endpoint: usize, probe: bool, now: Nanos) -> Try {
        self.tries += 1;
        let left = self.deadline;
        let deadline = core
            .retry
            .per_try_timeout
            .map_or(left, |t| now.saturating_add(t).min(left));
        let t = Try {
            endpoint,
            probe,
            attempt: self.tries,
            deadline,
        };
        self.current = Some((t, now));
        t
    }

    /// After [`Next::Backoff`]: the retry to send. (Without a backoff before it, the last try
    /// again.)
    pub fn resume(&mut self, core: &RouteCore, now: Nanos) -> Try {
        let (ei, probe) = self
            .next
            .take()
            .or(self.current.map(|(t, _)| (t.endpoint, false)))
            .unwrap_or((0, false));
        self.forward(core, ei, probe, now)
    }

    /// The try answered with `status` at `now` (response headers in). Delivered, or (a status
    /// the route retries, and a retry is allowed) backed off for another try.
    pub fn answered<R: Rng + ?Sized>(
        &mut self,
        core: &RouteCore,
        status: u16,
        now: Nanos,
        rng: &mut R,
    ) -> Next {
        self.record(core, TryResult::Answer(status), now);
        if !core.retry.on.status(status) {
            return Next::Deliver;
        }
        self.retry(core, TryFailure::Status(status), now, rng)
            .unwrap_or(Next::Deliver)
    }

    /// The try failed at `now`. `replayable`: the request can still be sent again as it was
    /// (a connect failure consumed nothing of it). Backed off for another try, or answered
    /// with the failure.
    pub fn failed<R: Rng + ?Sized>(
        &mut self,
        core: &RouteCore,
        failure: TryFailure,
        replayable: bool,
        now: Nanos,
        rng: &mut R,
    ) -> Next {
        self.req.replayable = replayable;
        self.record(core, TryResult::Error, now);
        self.retry(core, failure, now, rng)
            .unwrap_or(Next::Fail(failure))
    }

    /// The try ended through the client's fault (its body was malformed, too large or cut
    /// short; it reset the stream): nothing is recorded against the endpoint (no failure,
    /// latency, breaker or ejection count), a probe's half-open slot goes back, and the
    /// request is not retried. The driver answers 400/413, or nothing if the client is gone.
    pub fn client_failed(&mut self, core: &RouteCore) {
        if let Some((t, _)) = self.current {
            if t.probe {
                if let Some(e) = core.endpoints.get(t.endpoint) {
                    e.cancel_probe();
                }
            }
        }
        if let Some(p) = self.permit.as_mut() {
            p.no_sample();
        }
    }

    fn unix_ms(&self, now: Nanos) -> u64 {
        self.req.unix_ms + now.saturating_since(self.t0).as_millis() as u64
    }

    fn record(&mut self, core: &RouteCore, result: TryResult, now: Nanos) {
        let Some((t, started)) = self.current else {
            return;
        };
        let rtt = now.saturating_since(started);
        let unix_ms = self.unix_ms(now);
        core.record_try(
            self.req.worker,
            t.endpoint,
            result,
            t.probe,
            rtt,
            now,
            unix_ms,
        );
    }

    /// After a failed try: retry, and where? Conditions, safety, attempts left, time left,
    /// then the budget, then a pick (avoiding the endpoints tried).
    fn retry<R: Rng + ?Sized>(
        &mut self,
        core: &RouteCore,
        failure: TryFailure,
        now: Nanos,
        rng: &mut R,
    ) -> Option<Next> {
        let rc = &core.retry;
        if self.tries > rc.retries {
            return None;
        }
        let safe = self.req.idempotent && self.req.replayable;
        let (wanted, safe) = match failure {
            // Nothing was sent: always safe.
            TryFailure::Connect => (rc.on.connect, true),
            TryFailure::Reset => (rc.on.reset, safe),
            TryFailure::Timeout => (rc.on.timeout, safe),
            TryFailure::Status(s) => (rc.on.status(s), safe),
        };
        if !wanted || !safe {
            return None;
        }
        // Jitter: anywhere in [backoff / 2, backoff].
        let backoff = rc.backoff(self.tries).mul_f64(rng.random_range(0.5..=1.0));
        let until = now.saturating_add(backoff);
        if until >= self.deadline {
            return None;
        }
        let worker = self.req.worker;
        if !core.budgets.get(worker).try_withdraw(now) {
            core.route_stats.add(worker, Ctr::RetryBudgetExhausted, 1);
            return None;
        }
        self.input.now = now;
        let next = core.choose(&mut self.input, rng).ok()?;
        core.route_stats.add(worker, Ctr::Retries, 1);
        let why = match failure {
            TryFailure::Connect => Ctr::RetryConnect,
            TryFailure::Reset => Ctr::RetryReset,
            TryFailure::Timeout => Ctr::RetryTimeout,
            TryFailure::Status(_) => Ctr::RetryStatus,
        };
        core.route_stats.add(worker, why, 1);
        self.next = Some(next);
        Some(Next::Backoff { until })
    }

    /// The concurrency slot, for the driver to hold until the response has been sent.
    pub fn take_permit(&mut self) -> Option<Permit> {
        self.permit.take()
    }

    /// The try under way or last made.
    pub fn current(&self) -> Option<Try> {
        self.current.map(|(t, _)| t)
    }

    /// When the try under way started.
    pub fn try_started(&self) -> Option<Nanos> {
        self.current.map(|(_, s)| s)
    }

    /// Tries made so far.
    pub fn tries(&self) -> u32 {
        self.tries
    }

    pub fn started(&self) -> Nanos {
        self.t0
    }

    pub fn priority(&self) -> Priority {
        self.req.priority
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::BalancerKind;
    use crate::guard::gradient::GradientConfig;
    use crate::limits::concurrency::{ConcurrencyLimiter, Params};
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use vivremotion_protocol::clock::ManualClock;
    use vivremotion_protocol::Clock;

    const MS: Duration = Duration::from_millis(1);

    /// A route over endpoints `a` and `b` (round robin), retrying 503 once after 10 ms, and
    /// a concurrency limit of one with a queue of one waiting up to 50 ms.
    fn core(clock: &ManualClock) -> RouteCore {
        let names = ["a:1", "b:1"];
        let retry = RetryConfig {
            retries: 1,
            on: RetryOn {
                connect: true,
                reset: true,
                timeout: false,
                status_502: true,
                status_503: true,
                status_504: false,
            },
            per_try_timeout: Some(Duration::from_secs(2)),
            backoff_base: 10 * MS,
            backoff_max: 100 * MS,
            budget_percent: 20.0,
            budget_min_per_second: 10.0,
        };
        let limiter = ConcurrencyLimiter::new(
            Arc::new(clock.clone()),
            &Params {
                fixed: Some(1),
                gradient: GradientConfig::default(),
                queue: 1,
                max_wait: 50 * MS,
                shed_at: [1.0, 1.0, 1.0],
            },
        );
        let balancer = Balancer::new(BalancerKind::RoundRobin, &names, &[1, 1], 1);
        let timeout = Duration::from_secs(5);
        RouteCore::standalone(&names, balancer, retry, timeout, Some(limiter), clock.now())
    }

    fn request() -> Request {
        Request {
            worker: 0,
            priority: Priority::Default,
            client: IpAddr::from([127, 0, 0, 1]),
            affinity: None,
            idempotent: true,
            replayable: true,
            unix_ms: 1_000,
        }
    }

    /// The retry path, step by step on virtual time: the first try's 503 is recorded on its
    /// endpoint, the backoff is the computed one (10 ms jittered into [5, 10] ms), and the
    /// retry goes to the other endpoint and is delivered.
    #[test]
    fn a_503_is_retried_on_another_endpoint_after_the_backoff() {
        let clock = ManualClock::new(1_000_000);
        let core = core(&clock);
        let mut rng = SmallRng::seed_from_u64(7);
        let t0 = clock.now();
        let (mut flow, step) = RequestFlow::start(&core, request(), |_| None, t0, &mut rng);
        let Start::Forward(first) = step else {
            panic!("expected a first try, got {step:?}");
        };
        assert_eq!(first.attempt, 1);
        assert!(!first.probe);
        assert_eq!(first.deadline, t0.saturating_add(Duration::from_secs(2)));

        clock.advance(3 * MS);
        let step = flow.answered(&core, 503, clock.now(), &mut rng);
        let Next::Backoff { until } = step else {
            panic!("expected a backoff, got {step:?}");
        };
        let backoff = until.saturating_since(clock.now());
        assert!(
            (5 * MS..=10 * MS).contains(&backoff),
            "backoff {backoff:?} outside the jittered first backoff"
        );
        // Recorded on the endpoint that answered it (a gateway error in a row).
        assert_eq!(core.endpoints[first.endpoint].consecutive_failures(), 1);

        clock.set(until);
        let second = flow.resume(&core, clock.now());
        assert_ne!(
            second.endpoint, first.endpoint,
            "the retry avoids the failed endpoint"
        );
        assert_eq!(second.attempt, 2);
        clock.advance(20 * MS);
        assert_eq!(
            flow.answered(&core, 200, clock.now(), &mut rng),
            Next::Deliver
        );
        assert_eq!(core.endpoints[second.endpoint].consecutive_failures(), 0);
        assert_eq!(flow.tries(), 2);

        // Counted where it happened: one admission and one retry (for a status) on the route.
        let route = core.route_stats.totals();
        assert_eq!(
            (route.get(Ctr::Retries), route.get(Ctr::RetryStatus)),
            (1, 1)
        );
        assert_eq!(
            core.route_stats
                .totals()
                .get(Ctr::admitted(Priority::Default)),
            1
        );
        // A second 503 would not be retried again (retries = 1): delivered as it is.
        let permit = flow.take_permit();
        assert!(permit.is_some());
    }

    /// A request over the concurrency limit waits in the queue and is shed at exactly
    /// `max_wait` of virtual time, not a moment before.
    #[test]
    fn a_queued_request_expires_at_exactly_max_wait() {
        let clock = ManualClock::new(1_000_000);
        let core = core(&clock);
        let mut rng = SmallRng::seed_from_u64(7);
        let (mut holder, step) =
            RequestFlow::start(&core, request(), |_| None, clock.now(), &mut rng);
        assert!(matches!(step, Start::Forward(_)));

        let t0 = clock.now();
        let (mut flow, step) = RequestFlow::start(&core, request(), |_| None, t0, &mut rng);
        assert_eq!(
            step,
            Start::Queue {
                until: t0.saturating_add(50 * MS)
            }
        );
        assert!(flow.queued().is_some());
        // Asked a nanosecond early, it is still waiting.
        clock.advance(50 * MS - Duration::from_nanos(1));
        assert_eq!(
            flow.dequeue(&core, clock.now(), &mut rng),
            Start::Queue {
                until: t0.saturating_add(50 * MS)
            }
        );
        clock.advance(Duration::from_nanos(1));
        assert_eq!(
            flow.dequeue(&core, clock.now(), &mut rng),
            Start::Refuse(Refused::Admission(Refusal::Overloaded {
                priority: Priority::Default
            }))
        );
        assert_eq!(
            core.route_stats.totals().get(Ctr::shed(Priority::Default)),
            1
        );
        assert_eq!(
            core.limits.concurrency.as_ref().map(|c| c.waiting()),
            Some(0)
        );

        // A request queued behind the holder gets the slot when the holder finishes.
        let (mut next, step) =
            RequestFlow::start(&core, request(), |_| None, clock.now(), &mut rng);
        assert!(matches!(step, Start::Queue { .. }));
        clock.advance(MS);
        assert_eq!(
            holder.answered(&core, 200, clock.now(), &mut rng),
            Next::Deliver
        );
        drop(holder.take_permit());
        let step = next.dequeue(&core, clock.now(), &mut rng);
        assert!(
            matches!(step, Start::Forward(t) if t.attempt == 1),
            "{step:?}"
        );
    }
}
