//! The discrete-event engine: one run of one policy on one seed, on a virtual clock the
//! engine owns. Single-threaded, no runtime, no sockets.
//!
//! Every decision is the decision core's: each simulated proxy instance is built from the
//! scenario's proxy config by `decide::build` (as the live proxy's snapshot is), every
//! request is a `RequestFlow` driven step by step, `Control::tick` runs every 20 ms, the
//! telemetry `Collector` closes a batch every tick, and policies go through the proxy's
//! validation, version check and strict build. What this file adds is time: it turns the
//! flow's `Queue { until }`, `Backoff { until }` and try deadlines into events, and moves
//! tries through the simulated backends.

use super::backend::{Arrive, Backend, Draws, Job};
use super::controller::{Controller, Tick};
use super::scenario::{FaultKind, Scenario};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use vivremotion_decide::balance::BalancerKind;
use vivremotion_decide::build::{self, CoreRoute, Registries, RouteRef};
use vivremotion_decide::config::Config;
use vivremotion_decide::control::Control;
use vivremotion_decide::flow::{self, Next, Refused, RequestFlow, RouteCore, Start, TryFailure};
use vivremotion_decide::limits::Refusal;
use vivremotion_decide::telemetry::{Collector, Outcome};
use vivremotion_protocol::clock::ManualClock;
use vivremotion_protocol::sketch::{bucket_index, DENSE_BUCKETS};
use vivremotion_protocol::telemetry::Priority;
use vivremotion_protocol::telemetry::TelemetryBatch;
use vivremotion_protocol::{Clock, LatencySketch, Nanos, Policy};

/// The proxy's control loop period (`proxy::loops::control`).
const CONTROL_STEP: Duration = Duration::from_millis(20);
/// A refused connection is reported this fast.
const CONNECT_FAIL: Duration = Duration::from_micros(200);
/// An error answered at once (error burst, full queue) takes this long.
const QUICK_ANSWER: Duration = Duration::from_millis(1);

/// One arrival, prepared once per seed and shared by every policy.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Since the start of the run.
    pub t_ns: u64,
    pub priority: Priority,
    /// The trace's service time, where it has one.
    pub service_ns: Option<u64>,
}

/// The arrivals of one seed.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub seed: u64,
    pub arrivals: Vec<Arrival>,
    /// Simulated time the arrivals span.
    pub span: Duration,
    /// Unix time of the run's start (a multiple of the telemetry tick).
    pub start_unix_ms: u64,
    pub trace_median_ns: Option<f64>,
}

/// Which balancer the run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancing {
    /// As the config says.
    Config,
    /// Every cluster switched to this one.
    All(BalancerKind),
}

/// The result of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunResult {
    pub policy: String,
    pub seed: u64,
    pub totals: Totals,
    pub classes: Vec<ClassTotals>,
    /// The telemetry the proxies produced, one batch per instance per tick.
    #[serde(skip)]
    pub batches: Vec<TelemetryBatch>,
    pub decisions: Vec<Decision>,
}

/// Counts over the whole run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Totals {
    pub requests: u64,
    /// 2xx and 3xx to the client.
    pub ok: u64,
    /// 429 from a rate limit.
    pub limited: u64,
    /// 503 from the concurrency limit (shed).
    pub shed: u64,
    /// 503 without an endpoint (none available, or every circuit open).
    pub no_endpoint: u64,
    /// Upstream errors that reached the client (5xx answers, 502/504 failures).
    pub errors: u64,
    /// Tries after the first.
    pub retries: u64,
    pub retry_budget_exhausted: u64,
    /// Latency of the successful requests, from their scheduled arrival.
    pub latency: LatencySketch,
    /// Simulated seconds the arrivals span.
    pub span_s: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassTotals {
    pub priority: Priority,
    pub requests: u64,
    pub ok: u64,
    pub limited: u64,
    pub shed: u64,
    pub errors: u64,
    pub latency: LatencySketch,
}

/// Something the decision core or the controller did, for the timeline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Decision {
    pub at_s: f64,
    pub instance: String,
    pub what: String,
}

#[derive(Debug, Clone, Copy)]
enum TryRes {
    Answer(u16),
    Failed(TryFailure),
}

#[derive(Debug, Clone)]
enum Ev {
    Arrival,
    QueueDeadline { req: u32, token: u64 },
    TryResult { req: u32, token: u64, res: TryRes },
    Done { backend: u16, slot: u32, epoch: u32 },
    TryDeadline { req: u32, token: u64 },
    BackoffOver { req: u32, token: u64 },
    Control,
    Sample,
    Telemetry,
    ControllerTick { from: usize, to: usize },
    PolicyArrives { inst: u16, policy: Arc<Policy> },
    FaultStarts(usize),
    FaultEnds(usize),
}

struct Entry {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    /// Earliest first (the heap is a max-heap); equal times in scheduling order.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// A snapshot of one instance: what a request runs on from arrival to answer.
struct Snap {
    routes: Vec<CoreRoute>,
    /// Index in `routes` of the scenario's route.
    route: usize,
    /// Backend index of each endpoint of that route.
    backend_of: Vec<usize>,
    policy: Option<Arc<Policy>>,
}

impl Snap {
    fn core(&self) -> &RouteCore {
        &self.routes[self.route].core
    }
    fn policy_version(&self) -> u64 {
        self.policy.as_ref().map_or(0, |p| p.version)
    }
}

struct Instance {
    name: String,
    config: Arc<Config>,
    reg: Registries,
    snap: Arc<Snap>,
    control: Control,
    collector: Collector,
    rng: SmallRng,
    fingerprint: String,
    workers: usize,
}

/// Every route's config and decision half, for the periodic steps.
fn refs<'a>(config: &'a Config, snap: &'a Snap) -> Vec<RouteRef<'a>> {
    snap.routes
        .iter()
        .filter_map(|r| Some((config.routes.get(r.index)?, &r.core)))
        .collect()
}

/// A request in flight.
struct Req {
    flow: RequestFlow,
    snap: Arc<Snap>,
    inst: u16,
    worker: usize,
    idx: u32,
    t0: Nanos,
    /// The token of the wait, try or backoff under way; events with another are stale.
    token: u64,
    /// The try under way: endpoint, start.
    try_at: Option<(usize, Nanos)>,
    queued_since: Option<Nanos>,
    queue_wait_us: Option<f64>,
    service_ns: Option<u64>,
}

/// Queue waiters that were handed a slot, by the limiter's own wake-up.
struct Woken {
    list: Arc<Mutex<Vec<(u32, u64)>>>,
    req: u32,
    token: u64,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((self.req, self.token));
    }
}

struct ClassAcc {
    requests: u64,
    ok: u64,
    limited: u64,
    shed: u64,
    errors: u64,
    hist: Vec<u64>,
    sum_us: f64,
    min_us: f64,
    max_us: f64,
}

impl ClassAcc {
    fn new() -> ClassAcc {
        ClassAcc {
            requests: 0,
            ok: 0,
            limited: 0,
            shed: 0,
            errors: 0,
            hist: vec![0; DENSE_BUCKETS],
            sum_us: 0.0,
            min_us: f64::INFINITY,
            max_us: 0.0,
        }
    }

    fn sketch(&self) -> LatencySketch {
        if self.ok == 0 {
            return LatencySketch::new();
        }
        LatencySketch::from_dense(&self.hist, self.sum_us, self.min_us, self.max_us)
    }
}

/// Why a run could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("building proxy instance {instance}: {message}")]
    Build { instance: usize, message: String },
}

pub struct Engine<'a> {
    scenario: &'a Scenario,
    prep: &'a Prepared,
    seed: u64,
    clock: Arc<ManualClock>,
    heap: BinaryHeap<Entry>,
    /// Events pushed in time order (mostly try and queue deadlines, each a fixed time ahead):
    /// kept out of the heap so it stays as small as what is in service.
    fifo: VecDeque<Entry>,
    seq: u64,
    now: Nanos,
    instances: Vec<Instance>,
    backends: Vec<Backend>,
    backend_by_addr: HashMap<String, usize>,
    reqs: Vec<Option<Req>>,
    free: Vec<u32>,
    live: usize,
    next_arrival: usize,
    token: u64,
    woken: Arc<Mutex<Vec<(u32, u64)>>>,
    woken_scratch: Vec<(u32, u64)>,
    started: Vec<(Job, Arrive)>,
    lost: Vec<Job>,
    checks: Vec<vivremotion_decide::control::Check>,
    controller: Box<dyn Controller + 'a>,
    policies_out: Vec<Policy>,
    partitioned: bool,
    bus_delay: Duration,
    tick: Duration,
    /// Requests arriving before this are left out of the totals.
    warmup: Nanos,
    classes: [ClassAcc; 3],
    batches: Vec<TelemetryBatch>,
    decisions: Vec<Decision>,
}

fn class_index(p: Priority) -> usize {
    match p {
        Priority::Critical => 0,
        Priority::Default => 1,
        Priority::Sheddable => 2,
    }
}

/// The draws of try `attempt` of request `idx`: the same for every policy.
fn draws(seed: u64, idx: u32, attempt: u32) -> Draws {
    let mut x = seed ^ (u64::from(idx) << 20) ^ u64::from(attempt);
    // splitmix64, so neighbouring requests get unrelated streams.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let mut rng = SmallRng::seed_from_u64(z);
    Draws {
        z: rng.sample(StandardNormal),
        u_error: rng.random(),
        u_spike: rng.random(),
    }
}

impl<'a> Engine<'a> {
    pub fn new(
        scenario: &'a Scenario,
        prep: &'a Prepared,
        balancing: Balancing,
        controller: Box<dyn Controller + 'a>,
    ) -> Result<Engine<'a>, EngineError> {
        let clock = Arc::new(ManualClock::new(prep.start_unix_ms));
        let dyn_clock: Arc<dyn Clock> = clock.clone();
        let mut config = (*scenario.config).clone();
        if let Balancing::All(kind) = balancing {
            for c in config.clusters.values_mut() {
                c.balancer = kind;
            }
        }
        let config = Arc::new(config);
        let backends: Vec<Backend> = scenario
            .file
            .backends
            .iter()
            .map(|b| Backend::new(b, prep.trace_median_ns))
            .collect();
        let backend_by_addr: HashMap<String, usize> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.address.clone(), i))
            .collect();
        let tick = config.telemetry.tick;
        let mut instances = Vec::new();
        for i in 0..scenario.file.proxies.count {
            let name = format!("sim-proxy-{i}");
            let mut reg = Registries::default();
            let inst_seed = prep.seed ^ ((i as u64 + 1) << 40);
            reg.limits.seed = inst_seed;
            let snap = build_snap(&config, None, &reg, &dyn_clock, scenario, &backend_by_addr)
                .map_err(|message| EngineError::Build {
                    instance: i,
                    message,
                })?;
            instances.push(Instance {
                collector: Collector::new(&name, tick.as_millis() as u64, prep.start_unix_ms),
                name,
                fingerprint: build::fingerprint(&config),
                config: config.clone(),
                reg,
                snap: Arc::new(snap),
                control: Control::new(inst_seed, config.proxy.workers),
                rng: SmallRng::seed_from_u64(inst_seed),
                workers: config.proxy.workers.max(1),
            });
        }
        let mut e = Engine {
            scenario,
            prep,
            seed: prep.seed,
            clock,
            heap: BinaryHeap::with_capacity(4096),
            fifo: VecDeque::with_capacity(4096),
            seq: 0,
            now: Nanos(0),
            instances,
            backends,
            backend_by_addr,
            reqs: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_arrival: 0,
            token: 0,
            woken: Arc::new(Mutex::new(Vec::new())),
            woken_scratch: Vec::new(),
            started: Vec::new(),
            lost: Vec::new(),
            checks: Vec::new(),
            controller,
            policies_out: Vec::new(),
            partitioned: false,
            bus_delay: scenario.file.bus.delay,
            tick,
            warmup: Nanos::from_duration(scenario.file.warmup.unwrap_or_default()),
            classes: [ClassAcc::new(), ClassAcc::new(), ClassAcc::new()],
            batches: Vec::new(),
            decisions: Vec::new(),
        };
        if let Some(a) = prep.arrivals.first() {
            e.push(Nanos(a.t_ns), Ev::Arrival);
        }
        e.push(Nanos(0).saturating_add(CONTROL_STEP), Ev::Control);
        e.push(Nanos(0).saturating_add(e.sample_every()), Ev::Sample);
        let first_end = e
            .instances
            .first()
            .map_or(0, |i| i.collector.window_end_ms());
        e.push(e.at_unix_ms(first_end), Ev::Telemetry);
        for (i, f) in scenario.faults.iter().enumerate() {
            e.push(Nanos::from_duration(f.from), Ev::FaultStarts(i));
            if f.until != Duration::MAX {
                e.push(Nanos::from_duration(f.until), Ev::FaultEnds(i));
            }
        }
        Ok(e)
    }

    fn sample_every(&self) -> Duration {
        (self.tick / 10).max(Duration::from_millis(10))
    }

    fn at_unix_ms(&self, unix_ms: u64) -> Nanos {
        Nanos(unix_ms.saturating_sub(self.prep.start_unix_ms) * 1_000_000)
    }

    fn push(&mut self, at: Nanos, ev: Ev) {
        self.seq += 1;
        let e = Entry {
            at: at.0,
            seq: self.seq,
            ev,
        };
        // The fifo stays sorted by (at, seq): seq only grows, and only events no earlier than
        // its last go in.
        if self.fifo.back().is_none_or(|b| e.at >= b.at) {
            self.fifo.push_back(e);
        } else {
            self.heap.push(e);
        }
    }

    /// The earliest event of the heap and the fifo (by time, then scheduling order).
    fn pop(&mut self) -> Option<Entry> {
        let fifo_first = match (self.heap.peek(), self.fifo.front()) {
            (Some(h), Some(f)) => (f.at, f.seq) < (h.at, h.seq),
            (None, Some(_)) => true,
            (_, None) => false,
        };
        if fifo_first {
            self.fifo.pop_front()
        } else {
            self.heap.pop()
        }
    }

    fn next_token(&mut self) -> u64 {
        self.token += 1;
        self.token
    }

    fn busy(&self) -> bool {
        self.live > 0 || self.next_arrival < self.prep.arrivals.len()
    }

    /// Runs to the end; `progress(done, total)` is called now and then with arrivals seen.
    pub fn run(mut self, progress: &mut dyn FnMut(usize, usize)) -> RunResult {
        let total = self.prep.arrivals.len();
        let mut reported = 0;
        while let Some(Entry { at, ev, .. }) = self.pop() {
            self.now = Nanos(at);
            self.clock.set(self.now);
            self.handle(ev);
            self.drain_woken();
            if self.next_arrival >= reported + 65_536 {
                reported = self.next_arrival;
                progress(reported, total);
            }
        }
        progress(total, total);
        self.finish()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Arrival => self.arrival(),
            Ev::QueueDeadline { req, token } => {
                if self.is_current(req, token) {
                    self.dequeue(req);
                }
            }
            Ev::TryResult { req, token, res } => self.try_ended(req, token, res),
            Ev::Done {
                backend,
                slot,
                epoch,
            } => {
                let b = usize::from(backend);
                let mut started = std::mem::take(&mut self.started);
                let job = self.backends[b].complete(slot, epoch, self.now, &mut started);
                self.schedule_started(b, &mut started);
                self.started = started;
                if let Some(j) = job {
                    self.try_ended(j.req, j.token, TryRes::Answer(200));
                }
            }
            Ev::TryDeadline { req, token } => {
                self.try_ended(req, token, TryRes::Failed(TryFailure::Timeout))
            }
            Ev::BackoffOver { req, token } => {
                if self.is_current(req, token) {
                    self.resume(req);
                }
            }
            Ev::Control => {
                self.control();
                if self.busy() {
                    self.push(self.now.saturating_add(CONTROL_STEP), Ev::Control);
                }
            }
            Ev::Sample => {
                for inst in &mut self.instances {
                    let refs = refs(&inst.config, &inst.snap);
                    let version = inst.snap.policy_version();
                    build::with_view(&refs, version, &inst.fingerprint, |view| {
                        inst.collector.sample(&inst.reg.stats, view)
                    });
                }
                if self.busy() {
                    self.push(self.now.saturating_add(self.sample_every()), Ev::Sample);
                }
            }
            Ev::Telemetry => self.telemetry(),
            Ev::ControllerTick { from, to } => self.controller_tick(from, to),
            Ev::PolicyArrives { inst, policy } => self.apply_policy(usize::from(inst), policy),
            Ev::FaultStarts(i) => self.fault(i, true),
            Ev::FaultEnds(i) => self.fault(i, false),
        }
    }

    fn is_current(&self, req: u32, token: u64) -> bool {
        matches!(self.reqs.get(req as usize), Some(Some(r)) if r.token == token)
    }

    fn arrival(&mut self) {
        let Some(a) = self.prep.arrivals.get(self.next_arrival).copied() else {
            return;
        };
        let idx = self.next_arrival as u32;
        self.next_arrival += 1;
        if let Some(n) = self.prep.arrivals.get(self.next_arrival) {
            self.push(Nanos(n.t_ns), Ev::Arrival);
        }
        let ii = idx as usize % self.instances.len();
        let now = self.now;
        let inst = &mut self.instances[ii];
        let worker = if inst.workers > 1 {
            inst.rng.random_range(0..inst.workers)
        } else {
            0
        };
        let snap = inst.snap.clone();
        let core = snap.core();
        core.route_stats.start(worker);
        let facts = flow::Request {
            worker,
            priority: a.priority,
            client: IpAddr::V4(Ipv4Addr::new(10, 0, (idx >> 8) as u8, idx as u8)),
            affinity: None,
            idempotent: true,
            replayable: true,
            unix_ms: self.clock.unix_ms(),
        };
        let (flow, step) = RequestFlow::start(core, facts, |_| None, now, &mut inst.rng);
        let req = Req {
            flow,
            snap: snap.clone(),
            inst: ii as u16,
            worker,
            idx,
            t0: now,
            token: 0,
            try_at: None,
            queued_since: None,
            queue_wait_us: None,
            service_ns: a.service_ns,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.reqs[s as usize] = Some(req);
                s
            }
            None => {
                self.reqs.push(Some(req));
                (self.reqs.len() - 1) as u32
            }
        };
        self.live += 1;
        self.started_step(slot, step);
    }

    /// What the flow said at admission (or dequeue).
    fn started_step(&mut self, slot: u32, step: Start) {
        match step {
            Start::Forward(t) => self.send(slot, t),
            Start::Refuse(r) => self.finish_request(slot, Fate::Refused(r)),
            Start::Queue { until } => {
                let token = self.next_token();
                let now = self.now;
                let list = self.woken.clone();
                let Some(Some(r)) = self.reqs.get_mut(slot as usize) else {
                    return;
                };
                r.token = token;
                r.queued_since.get_or_insert(now);
                let waker = Waker::from(Arc::new(Woken {
                    list,
                    req: slot,
                    token,
                }));
                let mut cx = Context::from_waker(&waker);
                let ready = r
                    .flow
                    .queued()
                    .is_some_and(|w| matches!(Pin::new(w).poll(&mut cx), Poll::Ready(_)));
                if ready {
                    self.woken
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((slot, token));
                }
                self.push(until, Ev::QueueDeadline { req: slot, token });
            }
        }
    }

    fn drain_woken(&mut self) {
        loop {
            std::mem::swap(
                &mut self.woken_scratch,
                &mut *self.woken.lock().unwrap_or_else(|p| p.into_inner()),
            );
            if self.woken_scratch.is_empty() {
                return;
            }
            let list = std::mem::take(&mut self.woken_scratch);
            for &(req, token) in &list {
                if self.is_current(req, token) {
                    self.dequeue(req);
                }
            }
            self.woken_scratch = list;
            self.woken_scratch.clear();
        }
    }

    fn dequeue(&mut self, slot: u32) {
        let now = self.now;
        let Some(Some(r)) = self.reqs.get_mut(slot as usize) else {
            return;
        };
        let inst = &mut self.instances[usize::from(r.inst)];
        let step = r.flow.dequeue(r.snap.core(), now, &mut inst.rng);
        if !matches!(step, Start::Queue { .. }) {
            if let Some(q) = r.queued_since {
                r.queue_wait_us = Some(now.saturating_since(q).as_secs_f64() * 1e6);
            }
        }
        self.started_step(slot, step);
    }

    fn resume(&mut self, slot: u32) {
        let now = self.now;
        let Some(Some(r)) = self.reqs.get_mut(slot as usize) else {
            return;
        };
        let t = r.flow.resume(r.snap.core(), now);
        self.send(slot, t);
    }

    /// Sends a try to its endpoint's backend.
    fn send(&mut self, slot: u32, t: flow::Try) {
        let now = self.now;
        let token = self.next_token();
        let Some(Some(r)) = self.reqs.get_mut(slot as usize) else {
            return;
        };
        let core = r.snap.core();
        let ep = t.endpoint;
        if let (Some(s), Some(e)) = (core.stats.get(ep), core.endpoints.get(ep)) {
            s.start(r.worker);
            e.start();
        }
        r.token = token;
        r.try_at = Some((ep, now));
        let b = r.snap.backend_of.get(ep).copied().unwrap_or(0);
        let job = Job {
            req: slot,
            token,
            draws: draws(self.seed, r.idx, t.attempt),
            trace_ns: r.service_ns,
        };
        if t.deadline.0 < u64::MAX / 2 {
            self.push(t.deadline, Ev::TryDeadline { req: slot, token });
        }
        match self.backends[b].arrive(job, now) {
            Arrive::Refused => self.push(
                now.saturating_add(CONNECT_FAIL),
                Ev::TryResult {
                    req: slot,
                    token,
                    res: TryRes::Failed(TryFailure::Connect),
                },
            ),
            Arrive::Status(s) => self.push(
                now.saturating_add(QUICK_ANSWER),
                Ev::TryResult {
                    req: slot,
                    token,
                    res: TryRes::Answer(s),
                },
            ),
            a @ Arrive::Started { .. } => self.schedule_start(b, a),
            Arrive::Queued => {}
        }
    }

    fn schedule_start(&mut self, b: usize, a: Arrive) {
        if let Arrive::Started { done, slot, epoch } = a {
            self.push(
                done,
                Ev::Done {
                    backend: b as u16,
                    slot,
                    epoch,
                },
            );
        }
    }

    fn schedule_started(&mut self, b: usize, started: &mut Vec<(Job, Arrive)>) {
        for (_, a) in started.drain(..) {
            self.schedule_start(b, a);
        }
    }

    /// A try ended (answer, failure, or its deadline). Stale tokens are ignored: the request
    /// moved on (timed out, was reset) before the backend answered.
    fn try_ended(&mut self, slot: u32, token: u64, res: TryRes) {
        let now = self.now;
        let Some(Some(r)) = self.reqs.get_mut(slot as usize) else {
            return;
        };
        if r.token != token {
            return;
        }
        let Some((ep, started)) = r.try_at.take() else {
            return;
        };
        let core = r.snap.core();
        let latency_us = now.saturating_since(started).as_secs_f64() * 1e6;
        let mut o = Outcome::new(0, latency_us);
        match res {
            TryRes::Answer(s) => {
                o.status = s;
                o.upstream_status = Some(s);
            }
            TryRes::Failed(f) => {
                o.status = f.status();
                o.failure = f.upstream_failure();
            }
        }
        if let (Some(s), Some(e)) = (core.stats.get(ep), core.endpoints.get(ep)) {
            s.finish(r.worker, &o, true);
            e.finish();
        }
        let rng = &mut self.instances[usize::from(r.inst)].rng;
        let next = match res {
            TryRes::Answer(s) => r.flow.answered(core, s, now, rng),
            TryRes::Failed(f) => r.flow.failed(core, f, true, now, rng),
        };
        match next {
            Next::Deliver => {
                let s = match res {
                    TryRes::Answer(s) => s,
                    TryRes::Failed(f) => f.status(),
                };
                self.finish_request(slot, Fate::Answered(s));
            }
            Next::Fail(f) => self.finish_request(slot, Fate::Failed(f)),
            Next::Backoff { until } => {
                self.token += 1;
                let token = self.token;
                r.token = token;
                self.push(until, Ev::BackoffOver { req: slot, token });
            }
        }
    }

    fn finish_request(&mut self, slot: u32, fate: Fate) {
        let now = self.now;
        let Some(r) = self.reqs.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(slot);
        self.live -= 1;
        let core = r.snap.core();
        let latency_us = now.saturating_since(r.t0).as_secs_f64() * 1e6;
        let status = match fate {
            Fate::Answered(s) => s,
            Fate::Failed(f) => f.status(),
            Fate::Refused(x) => x.status(),
        };
        let mut o = Outcome::new(status, latency_us);
        o.queue_wait_us = r.queue_wait_us;
        if let Fate::Answered(s) = fate {
            o.upstream_status = Some(s);
        }
        core.route_stats.finish(r.worker, &o, true);
        if r.t0 < self.warmup {
            return;
        }
        let c = &mut self.classes[class_index(r.flow.priority())];
        c.requests += 1;
        match fate {
            Fate::Refused(Refused::Admission(Refusal::RateLimited { .. })) => c.limited += 1,
            Fate::Refused(Refused::Admission(Refusal::Overloaded { .. })) => c.shed += 1,
            Fate::Refused(Refused::NoEndpoint(_)) => c.errors += 1,
            Fate::Answered(s) if s < 400 => {
                c.ok += 1;
                c.hist[bucket_index(latency_us)] += 1;
                c.sum_us += latency_us;
                c.min_us = c.min_us.min(latency_us);
                c.max_us = c.max_us.max(latency_us);
            }
            Fate::Answered(_) | Fate::Failed(_) => c.errors += 1,
        }
        // Dropping the request releases its concurrency slot (on the virtual clock), which may
        // hand the slot to a waiter: `drain_woken` picks that up.
        drop(r);
    }

    fn control(&mut self) {
        let now = self.now;
        for inst in &mut self.instances {
            let refs = refs(&inst.config, &inst.snap);
            let views = build::cluster_views(&inst.config, &refs);
            let limiters = inst.reg.limits.limiters();
            self.checks.clear();
            inst.control.tick(now, &views, &limiters, &mut self.checks);
            // The checks themselves are IO in the proxy; here the backend answers at once.
            for check in &self.checks {
                let Some(view) = views.get(check.cluster) else {
                    continue;
                };
                let Some(hc) = inst
                    .config
                    .clusters
                    .get(view.name)
                    .and_then(|c| c.health_check.as_ref())
                else {
                    continue;
                };
                let Some(e) = view.core.endpoints.get(check.endpoint) else {
                    continue;
                };
                let ok = self
                    .backend_by_addr
                    .get(&e.address)
                    .is_some_and(|b| self.backends[*b].healthy());
                if let Some(healthy) =
                    e.record_health_check(ok, hc.healthy_threshold, hc.unhealthy_threshold)
                {
                    self.decisions.push(Decision {
                        at_s: now.as_secs_f64(),
                        instance: inst.name.clone(),
                        what: format!(
                            "health check {}: {} {}",
                            if healthy { "passing" } else { "failing" },
                            e.address,
                            if healthy {
                                "back in rotation"
                            } else {
                                "out of rotation"
                            }
                        ),
                    });
                }
            }
        }
    }

    fn telemetry(&mut self) {
        let now = self.now;
        let from = self.batches.len();
        let mut end_ms = 0;
        for inst in &mut self.instances {
            end_ms = inst.collector.window_end_ms();
            let batch = build::close_window(
                &mut inst.collector,
                &inst.reg,
                &refs(&inst.config, &inst.snap),
                inst.snap.policy_version(),
                &inst.fingerprint,
                end_ms,
                now,
            );
            for w in &batch.windows {
                if w.scope.upstream.is_none() {
                    continue;
                }
                let up = w.scope.upstream.as_deref().unwrap_or("");
                if w.resilience.ejections > 0 {
                    self.decisions.push(Decision {
                        at_s: now.as_secs_f64(),
                        instance: inst.name.clone(),
                        what: format!("outlier ejection: {up}"),
                    });
                }
                if w.resilience.breaker_trips > 0 {
                    self.decisions.push(Decision {
                        at_s: now.as_secs_f64(),
                        instance: inst.name.clone(),
                        what: format!("circuit breaker opened: {up}"),
                    });
                }
            }
            self.batches.push(batch);
        }
        let to = self.batches.len();
        if !self.partitioned {
            self.push(
                now.saturating_add(self.bus_delay),
                Ev::ControllerTick { from, to },
            );
        }
        if self.busy() {
            let next = end_ms + self.tick.as_millis() as u64;
            self.push(self.at_unix_ms(next), Ev::Telemetry);
        }
    }

    fn controller_tick(&mut self, from: usize, to: usize) {
        let now = self.now;
        let tick = Tick {
            at: now.saturating_since(Nanos(0)),
            unix_ms: self.clock.unix_ms(),
            batches: self.batches.get(from..to).unwrap_or(&[]),
        };
        self.controller.tick(&tick, &mut self.policies_out);
        let name = self.controller.name().to_string();
        for p in std::mem::take(&mut self.policies_out) {
            if self.partitioned {
                self.decisions.push(Decision {
                    at_s: now.as_secs_f64(),
                    instance: name.clone(),
                    what: format!("policy v{} lost: bus partitioned", p.version),
                });
                continue;
            }
            let p = Arc::new(p);
            for i in 0..self.instances.len() {
                self.push(
                    now.saturating_add(self.bus_delay),
                    Ev::PolicyArrives {
                        inst: i as u16,
                        policy: p.clone(),
                    },
                );
            }
        }
    }

    /// A policy reaches an instance: the proxy's checks (valid, newer, fits the config), then
    /// a strict build; a rejected policy changes nothing.
    fn apply_policy(&mut self, i: usize, policy: Arc<Policy>) {
        let now = self.now;
        let Some(inst) = self.instances.get_mut(i) else {
            return;
        };
        let dyn_clock: Arc<dyn Clock> = self.clock.clone();
        let outcome = build::admit_policy(&policy, inst.snap.policy_version())
            .map_err(|e| e.to_string())
            .and_then(|_| {
                build_snap(
                    &inst.config,
                    Some(policy.clone()),
                    &inst.reg,
                    &dyn_clock,
                    self.scenario,
                    &self.backend_by_addr,
                )
            });
        let what = match outcome {
            Ok(snap) => {
                inst.snap = Arc::new(snap);
                let weights = policy
                    .routes
                    .get(&self.scenario.route)
                    .map(|r| {
                        r.upstream_weights
                            .iter()
                            .map(|(a, w)| format!("{a}={w}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                format!("policy v{} applied: {weights}", policy.version)
            }
            Err(e) => format!("policy v{} rejected: {e}", policy.version),
        };
        self.decisions.push(Decision {
            at_s: now.as_secs_f64(),
            instance: inst.name.clone(),
            what,
        });
    }

    fn fault(&mut self, i: usize, starts: bool) {
        let Some(f) = self.scenario.faults.get(i).cloned() else {
            return;
        };
        let now = self.now;
        if let Some(b) = f.kind.backend() {
            let be = &mut self.backends[b];
            let st = &mut be.faults;
            match f.kind {
                FaultKind::Crash { .. } => {
                    if starts {
                        let mut lost = std::mem::take(&mut self.lost);
                        be.crash(&mut lost);
                        for j in lost.drain(..) {
                            self.try_ended(j.req, j.token, TryRes::Failed(TryFailure::Reset));
                        }
                        self.lost = lost;
                    } else {
                        st.crashed = false;
                    }
                }
                FaultKind::Slowdown { factor, .. } => {
                    st.slow = if starts {
                        st.slow * factor
                    } else {
                        st.slow / factor
                    }
                }
                FaultKind::ErrorBurst { status, share, .. } => {
                    st.errors = starts.then_some((status, share))
                }
                FaultKind::Brownout { factor, .. } => {
                    st.capacity = if starts { factor } else { 1.0 };
                    let mut started = std::mem::take(&mut self.started);
                    self.backends[b].pump(now, &mut started);
                    self.schedule_started(b, &mut started);
                    self.started = started;
                }
                FaultKind::LatencySpike { extra, share, .. } => {
                    st.spike = starts.then_some((extra.as_nanos() as u64, share))
                }
                FaultKind::LatencyRamp { factor, .. } => {
                    st.ramp = starts.then_some((
                        Nanos::from_duration(f.from),
                        Nanos::from_duration(f.until),
                        factor,
                    ))
                }
                FaultKind::Surge { .. } | FaultKind::Partition => {}
            }
        } else if let FaultKind::Partition = f.kind {
            self.partitioned = starts;
        }
        self.decisions.push(Decision {
            at_s: now.as_secs_f64(),
            instance: "scenario".into(),
            what: format!(
                "{} {}{}",
                f.kind.label(),
                if starts { "starts" } else { "ends" },
                f.kind
                    .backend()
                    .map(|b| format!(": {}", self.backends[b].address))
                    .unwrap_or_default()
            ),
        });
    }

    fn finish(mut self) -> RunResult {
        let mut totals = Totals {
            span_s: self
                .prep
                .span
                .saturating_sub(self.warmup.saturating_since(Nanos(0)))
                .as_secs_f64(),
            ..Totals::default()
        };
        for inst in &self.instances {
            let t = inst.snap.core().route_stats.totals();
            use vivremotion_decide::telemetry::recorder::Ctr;
            totals.retries += t.get(Ctr::Retries);
            totals.retry_budget_exhausted += t.get(Ctr::RetryBudgetExhausted);
        }
        let mut latency = LatencySketch::new();
        let mut classes = Vec::new();
        for (i, p) in Priority::ALL.iter().enumerate() {
            let c = &self.classes[i];
            totals.requests += c.requests;
            totals.ok += c.ok;
            totals.limited += c.limited;
            totals.shed += c.shed;
            totals.errors += c.errors;
            let s = c.sketch();
            latency.merge(&s);
            if c.requests > 0 {
                classes.push(ClassTotals {
                    priority: *p,
                    requests: c.requests,
                    ok: c.ok,
                    limited: c.limited,
                    shed: c.shed,
                    errors: c.errors,
                    latency: s,
                });
            }
        }
        totals.latency = latency;
        RunResult {
            policy: self.controller.name().to_string(),
            seed: self.seed,
            totals,
            classes,
            batches: std::mem::take(&mut self.batches),
            decisions: std::mem::take(&mut self.decisions),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fate {
    Answered(u16),
    Failed(TryFailure),
    Refused(Refused),
}

/// An instance's snapshot from config + policy, through `decide::build` (strict when a policy
/// is being applied).
fn build_snap(
    config: &Config,
    policy: Option<Arc<Policy>>,
    reg: &Registries,
    clock: &Arc<dyn Clock>,
    scenario: &Scenario,
    backend_by_addr: &HashMap<String, usize>,
) -> Result<Snap, String> {
    let cores = build::cores(config, policy.as_deref(), policy.is_some(), reg, clock)
        .map_err(|e| e.to_string())?;
    let route = cores
        .routes
        .iter()
        .position(|r| {
            config
                .routes
                .get(r.index)
                .is_some_and(|c| c.name == scenario.route)
        })
        .ok_or_else(|| format!("route {:?} is not in the config", scenario.route))?;
    let backend_of = cores.routes[route]
        .core
        .endpoints
        .iter()
        .map(|e| {
            backend_by_addr
                .get(&e.address)
                .copied()
                .ok_or_else(|| format!("no backend for endpoint {}", e.address))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Snap {
        routes: cores.routes,
        route,
        backend_of,
        policy,
    })
}
