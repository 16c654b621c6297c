//! A small fixed scenario driven through the real [`RequestFlow`] and [`Control`] step on
//! virtual time, printing every decision: the reproducibility check (same seed, same bytes;
//! another seed, another trace) and the seed of the simulator's event loop.
//!
//! Three endpoints behind P2C peak-EWMA: `a` fast, `b` answering 503 three times in ten,
//! `c` slow. The route retries 503 once, and admits 8 at a time with a queue of 4 (50 ms).
//! Requests arrive as a Poisson stream at 600/s: enough to queue and shed.

use crate::balance::{Balancer, BalancerKind};
use crate::control::{Check, ClusterView, Control};
use crate::flow::{Next, Request, RequestFlow, RetryConfig, RetryOn, RouteCore};
use crate::flow::{Start, Try};
use crate::guard::gradient::GradientConfig;
use crate::guard::outlier::OutlierConfig;
use crate::limits::concurrency::{ConcurrencyLimiter, Params, WaitState};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use vivremotion_protocol::clock::ManualClock;
use vivremotion_protocol::telemetry::Priority;
use vivremotion_protocol::{Clock, Nanos};

const ENDPOINTS: [(&str, f64, f64); 3] =
    [("a:1", 5.0, 0.0), ("b:1", 10.0, 0.3), ("c:1", 40.0, 0.0)];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrive(usize),
    /// The try of request `.0` to endpoint `.1` ends.
    TryDone(usize, usize),
    QueueDeadline(usize),
    BackoffDone(usize),
}

/// Virtual time's event queue: earliest first, ties in the order scheduled.
#[derive(Default)]
struct Events {
    heap: BinaryHeap<Reverse<(Nanos, u64, Event)>>,
    seq: u64,
}

impl Events {
    fn push(&mut self, at: Nanos, e: Event) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, e)));
    }
}

/// Send a try: the endpoint answers after its latency (uniform in ½..1½ × its mean).
fn forward(core: &RouteCore, t: Try, i: usize, now: Nanos, world: &mut SmallRng, ev: &mut Events) {
    let ms = ENDPOINTS[t.endpoint].1 * (0.5 + world.random::<f64>());
    core.endpoints[t.endpoint].start();
    ev.push(
        now.saturating_add(Duration::from_secs_f64(ms / 1e3)),
        Event::TryDone(i, t.endpoint),
    );
}

fn core(clock: &ManualClock) -> RouteCore {
    let names: Vec<&str> = ENDPOINTS.iter().map(|e| e.0).collect();
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
        per_try_timeout: Some(Duration::from_secs(1)),
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        budget_percent: 20.0,
        budget_min_per_second: 5.0,
    };
    let limiter = ConcurrencyLimiter::new(
        Arc::new(clock.clone()),
        &Params {
            fixed: Some(8),
            gradient: GradientConfig::default(),
            queue: 4,
            max_wait: Duration::from_millis(50),
            shed_at: [1.0, 0.9, 0.5],
        },
    );
    let ms = Duration::from_millis;
    let balancer = Balancer::new(BalancerKind::P2cPeakEwma, &names, &[1, 1, 1], 1);
    let timeout = Duration::from_secs(2);
    let mut core =
        RouteCore::standalone(&names, balancer, retry, timeout, Some(limiter), clock.now());
    core.outlier = OutlierConfig {
        interval: ms(500),
        ..OutlierConfig::default()
    };
    core
}

/// Run `n` requests with `seed` and write one line per decision to `out`.
pub fn run(seed: u64, n: usize, out: &mut impl Write) -> std::fmt::Result {
    let clock = ManualClock::new(0);
    let core = core(&clock);
    let mut decide = SmallRng::seed_from_u64(seed);
    let mut world = SmallRng::seed_from_u64(seed ^ 0x0077_6f72_6c64);
    let mut control = Control::new(seed, 1);
    let mut events = Events::default();
    let mut t = Nanos(0);
    for i in 0..n {
        // Exponential gaps: 600 requests a second.
        let gap = -(1.0 - world.random::<f64>()).ln() / 600.0;
        t = t.saturating_add(Duration::from_secs_f64(gap));
        events.push(t, Event::Arrive(i));
    }
    let mut flows: Vec<Option<RequestFlow>> = (0..n).map(|_| None).collect();
    let mut queued: Vec<usize> = Vec::new();
    let mut next_tick = Nanos(0);
    let mut checks: Vec<Check> = Vec::new();
    while let Some(Reverse((at, _, event))) = events.heap.pop() {
        clock.set(at);
        let now = clock.now();
        while next_tick <= now {
            let views = [ClusterView {
                name: "c",
                core: &core,
                health: None,
            }];
            let limiters = core
                .limits
                .concurrency
                .iter()
                .map(|l| ("r".to_string(), l.clone()))
                .collect::<Vec<_>>();
            checks.clear();
            control.tick(next_tick, &views, &limiters, &mut checks);
            next_tick = next_tick.saturating_add(Duration::from_millis(100));
        }
        let us = now.0 / 1_000;
        match event {
            Event::Arrive(i) => {
                let req = Request {
                    worker: 0,
                    priority: [Priority::Critical, Priority::Default, Priority::Sheddable]
                        [world.random_range(0..3)],
                    client: IpAddr::from([10, 0, 0, (i % 250) as u8]),
                    affinity: None,
                    idempotent: true,
                    replayable: true,
                    unix_ms: 0,
                };
                let (flow, step) = RequestFlow::start(&core, req, |_| None, now, &mut decide);
                writeln!(out, "{us} {i} start {:?} -> {step:?}", req.priority)?;
                flows[i] = Some(flow);
                match step {
                    Start::Forward(t) => forward(&core, t, i, now, &mut world, &mut events),
                    Start::Queue { until } => {
                        queued.push(i);
                        events.push(until, Event::QueueDeadline(i));
                    }
                    Start::Refuse(_) => flows[i] = None,
                }
            }
            Event::TryDone(i, ei) => {
                core.endpoints[ei].finish();
                let Some(flow) = flows[i].as_mut() else {
                    continue;
                };
                let failing = ENDPOINTS[ei].2;
                let status = if world.random::<f64>() < failing {
                    503
                } else {
                    200
                };
                let next = flow.answered(&core, status, now, &mut decide);
                writeln!(
                    out,
                    "{us} {i} answered {status} by {} -> {next:?}",
                    ENDPOINTS[ei].0
                )?;
                match next {
                    Next::Backoff { until } => events.push(until, Event::BackoffDone(i)),
                    Next::Deliver | Next::Fail(_) => {
                        // The response is sent: the slot goes back, maybe to a waiter.
                        flows[i] = None;
                    }
                }
            }
            Event::BackoffDone(i) => {
                if let Some(flow) = flows[i].as_mut() {
                    let t = flow.resume(&core, now);
                    writeln!(out, "{us} {i} retry -> {t:?}")?;
                    forward(&core, t, i, now, &mut world, &mut events);
                }
            }
            Event::QueueDeadline(_) => {}
        }
        // Waiters whose wait was settled (a slot handed over) or whose deadline came.
        let mut k = 0;
        while k < queued.len() {
            let i = queued[k];
            let settled = flows[i]
                .as_mut()
                .and_then(|f| f.queued())
                .map(|w| w.state() != WaitState::Waiting || now >= w.until());
            if settled == Some(false) {
                k += 1;
                continue;
            }
            queued.swap_remove(k);
            let Some(flow) = flows[i].as_mut() else {
                continue;
            };
            let step = flow.dequeue(&core, now, &mut decide);
            writeln!(out, "{us} {i} dequeued -> {step:?}")?;
            match step {
                Start::Forward(t) => forward(&core, t, i, now, &mut world, &mut events),
                Start::Queue { .. } => queued.push(i),
                Start::Refuse(_) => flows[i] = None,
            }
        }
    }
    let totals = core.route_stats.totals();
    writeln!(out, "end route counters {:?}", totals.counters)?;
    for (e, s) in core.endpoints.iter().zip(core.stats.iter()) {
        writeln!(
            out,
            "end {} ewma_ms={:.3} failures={} counters={:?}",
            e.address,
            crate::balance::LoadView::latency_ns(e, clock.now()) / 1e6,
            e.consecutive_failures(),
            s.totals().counters
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_trace_depends_on_the_seed_only() {
        let (mut a, mut b, mut c) = (String::new(), String::new(), String::new());
        super::run(1, 300, &mut a).unwrap();
        super::run(1, 300, &mut b).unwrap();
        super::run(2, 300, &mut c).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(
            a.contains("answered 503"),
            "the scenario exercises retries:\n{a}"
        );
        assert!(
            a.contains("Queue"),
            "the scenario exercises the queue:\n{a}"
        );
    }
}
