//! A route's concurrency limit with priority classes and a short priority queue.
//!
//! Each class `p` is admitted while the route's in-flight count is below
//! `limit × shed_at[p]`; so as load rises, sheddable traffic is turned away first, then
//! default, and critical keeps the last slots. A request over its threshold may wait (critical
//! and default only, at most `max_wait`, at most `queue` waiting) for a slot; a freed slot
//! goes to the highest waiting class whose threshold it fits.
//!
//! Hot path: one compare-and-swap on the in-flight counter. The waiter lists are locked only
//! when a request cannot be admitted at once, and on release only when someone waits.
//!
//! A waiter is a plain grant/refuse flag with a [`Waker`]: no runtime. The proxy awaits a
//! [`Wait`] (it is a `Future`) under a tokio timer; the simulator polls [`Wait::state`] on its
//! own event queue. Either way [`Wait::finish`] settles it at the deadline or on the grant.

use crate::guard::gradient::{GradientConfig, GradientLimit, WindowStats};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use vivremotion_protocol::telemetry::Priority;
use vivremotion_protocol::{Clock, Nanos};

/// What the snapshot decides (config + policy); the limiter's state outlives snapshots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// `None`: adaptive.
    pub fixed: Option<u32>,
    pub gradient: GradientConfig,
    pub queue: u32,
    pub max_wait: Duration,
    pub shed_at: [f64; 3],
}

/// How a wait stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitState {
    Waiting,
    /// A slot was handed over: it is counted in flight for this waiter.
    Granted,
    /// Evicted from a full queue by a more important request.
    Refused,
}

/// The cell a waiter and the limiter share.
#[derive(Debug)]
struct Signal {
    state: Mutex<(WaitState, Option<Waker>)>,
}

impl Signal {
    fn lock(&self) -> std::sync::MutexGuard<'_, (WaitState, Option<Waker>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Settle the wait (called with the queue lock held, on a waiter taken off its list).
    fn settle(&self, to: WaitState) {
        let mut s = self.lock();
        s.0 = to;
        if let Some(w) = s.1.take() {
            w.wake();
        }
    }
}

struct Waiter {
    id: u64,
    signal: Arc<Signal>,
}

#[derive(Default)]
struct Queues {
    /// Index: `Priority as usize` (critical, default); sheddable never waits.
    by_class: [VecDeque<Waiter>; 2],
    next_id: u64,
}

pub struct ConcurrencyLimiter {
    clock: Arc<dyn Clock>,
    in_flight: AtomicU32,
    limit: AtomicU32,
    /// `shed_at` per class in 1/1000, so the hot path reads integers.
    shed_milli: [AtomicU32; 3],
    queue_cap: AtomicU32,
    max_wait_us: AtomicU64,
    waiting: AtomicU32,
    queues: Mutex<Queues>,
    // Window samples for the adaptive limit.
    sum_ns: AtomicU64,
    samples: AtomicU32,
    max_in_flight: AtomicU32,
    adaptive: Mutex<Option<GradientLimit>>,
}

impl std::fmt::Debug for ConcurrencyLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyLimiter")
            .field("in_flight", &self.in_flight)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// The admission decision.
pub enum Acquire {
    Now(Permit),
    /// Wait for a slot (see [`Wait::wait`]).
    Wait(Wait),
    /// Over the class's threshold and no queue room.
    Shed,
}

/// A slot; released on drop, feeding the request's latency to the adaptive limit.
#[derive(Debug)]
pub struct Permit {
    lim: Arc<ConcurrencyLimiter>,
    started: Nanos,
    sample: bool,
}

impl Permit {
    /// The request never reached an upstream (no endpoint, circuit open): its time says
    /// nothing about the upstream's latency, so the adaptive limit must not learn from it.
    pub fn no_sample(&mut self) {
        self.sample = false;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.sample {
            let rtt = self.lim.clock.now().saturating_since(self.started);
            self.lim.sum_ns.fetch_add(rtt.as_nanos() as u64, Relaxed);
            self.lim.samples.fetch_add(1, Relaxed);
        }
        self.lim.release();
    }
}

/// A request waiting in the queue until its deadline ([`Wait::until`]). As a `Future` it
/// completes when the wait is settled (granted or refused); [`Wait::finish`] then, or at the
/// deadline, turns it into a permit or a refusal. Dropping it unfinished (the client left)
/// gives up its place, or the slot it was just handed.
pub struct Wait {
    lim: Arc<ConcurrencyLimiter>,
    class: usize,
    id: u64,
    signal: Arc<Signal>,
    until: Nanos,
    done: bool,
}

impl std::fmt::Debug for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wait")
            .field("class", &self.class)
            .field("until", &self.until)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Wait {
    /// When the wait ends unless a slot comes first: arrival + the route's `max_wait`.
    pub fn until(&self) -> Nanos {
        self.until
    }

    pub fn state(&self) -> WaitState {
        self.signal.lock().0
    }

    /// End the wait at `now`: the permit if a slot was handed over (even at the last
    /// moment), else `None` (timed out or evicted: shed), and the place in the queue is
    /// given up.
    pub fn finish(mut self, now: Nanos) -> Option<Permit> {
        let granted = self.state() == WaitState::Granted || !self.leave();
        self.done = true;
        granted.then(|| Permit {
            lim: self.lim.clone(),
            started: now,
            sample: true,
        })
    }

    /// Leave the queue. Returns false if a slot was handed over meanwhile (it is ours).
    fn leave(&mut self) -> bool {
        let mut q = self.lim.lock();
        let list = &mut q.by_class[self.class];
        if let Some(i) = list.iter().position(|w| w.id == self.id) {
            list.remove(i);
            self.lim.waiting.fetch_sub(1, SeqCst);
            return true;
        }
        drop(q);
        // Off the list: settled, under the queue lock, before we looked.
        self.state() != WaitState::Granted
    }
}

impl Future for Wait {
    type Output = WaitState;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<WaitState> {
        let mut s = self.signal.lock();
        match s.0 {
            WaitState::Waiting => {
                if !s.1.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.1 = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            done => Poll::Ready(done),
        }
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if !self.done && !self.leave() {
            self.lim.release();
        }
    }
}

impl ConcurrencyLimiter {
    pub fn new(clock: Arc<dyn Clock>, p: &Params) -> Arc<ConcurrencyLimiter> {
        let lim = Arc::new(ConcurrencyLimiter {
            clock,
            in_flight: AtomicU32::new(0),
            limit: AtomicU32::new(1),
            shed_milli: Default::default(),
            queue_cap: AtomicU32::new(0),
            max_wait_us: AtomicU64::new(0),
            waiting: AtomicU32::new(0),
            queues: Mutex::new(Queues::default()),
            sum_ns: AtomicU64::new(0),
            samples: AtomicU32::new(0),
            max_in_flight: AtomicU32::new(0),
            adaptive: Mutex::new(None),
        });
        lim.configure(p);
        lim
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Apply new parameters (a snapshot was built). An adaptive limit keeps what it learned
    /// unless its settings changed.
    pub fn configure(&self, p: &Params) {
        for (i, s) in p.shed_at.iter().enumerate() {
            self.shed_milli[i].store((s.clamp(0.0, 1.0) * 1000.0).round() as u32, Relaxed);
        }
        self.queue_cap.store(p.queue, Relaxed);
        self.max_wait_us.store(
            p.max_wait.as_micros().min(u128::from(u64::MAX)) as u64,
            Relaxed,
        );
        let mut a = self.adaptive.lock().unwrap_or_else(|e| e.into_inner());
        match p.fixed {
            Some(n) => {
                *a = None;
                self.limit.store(n.max(1), Relaxed);
            }
            None => {
                if a.as_ref().map(GradientLimit::config) != Some(p.gradient) {
                    let g = GradientLimit::new(p.gradient);
                    self.limit.store(g.limit().max(1), Relaxed);
                    *a = Some(g);
                }
            }
        }
        drop(a);
        // A higher limit may let waiters in.
        self.drain_waiters();
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    pub fn waiting(&self) -> u32 {
        self.waiting.load(Relaxed)
    }

    pub fn is_adaptive(&self) -> bool {
        self.adaptive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// How long a request may wait for a slot.
    pub fn max_wait(&self) -> Duration {
        Duration::from_micros(self.max_wait_us.load(Relaxed))
    }

    /// The in-flight count below which `class` is admitted.
    fn threshold(&self, class: usize) -> u32 {
        let limit = u64::from(self.limit.load(Relaxed));
        let milli = u64::from(self.shed_milli[class].load(Relaxed));
        // Round up, and let every class with a non-zero threshold have at least one slot.
        let t = (limit * milli).div_ceil(1000);
        if milli > 0 {
            t.max(1) as u32
        } else {
            0
        }
    }

    fn try_take(&self, class: usize) -> bool {
        let t = self.threshold(class);
        let mut cur = self.in_flight.load(SeqCst);
        loop {
            if cur >= t {
                return false;
            }
            match self
                .in_flight
                .compare_exchange_weak(cur, cur + 1, SeqCst, SeqCst)
            {
                Ok(_) => {
                    self.max_in_flight.fetch_max(cur + 1, Relaxed);
                    return true;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Ask for a slot for a request of priority `p`.
    pub fn acquire(self: &Arc<Self>, p: Priority, now: Nanos) -> Acquire {
        let class = p as usize;
        if self.try_take(class) {
            return Acquire::Now(Permit {
                lim: self.clone(),
                started: now,
                sample: true,
            });
        }
        if p == Priority::Sheddable || self.max_wait_us.load(Relaxed) == 0 {
            return Acquire::Shed;
        }
        let mut q = self.lock();
        // Announce the wait before trying again: a release frees its slot and then reads
        // `waiting`, we raise `waiting` and then read the slots, so one of us sees the other
        // (all SeqCst) and no slot stays free while we wait.
        let before = self.waiting.fetch_add(1, SeqCst);
        if self.try_take(class) {
            self.waiting.fetch_sub(1, SeqCst);
            return Acquire::Now(Permit {
                lim: self.clone(),
                started: now,
                sample: true,
            });
        }
        if before >= self.queue_cap.load(Relaxed) {
            // A full queue makes room for a more important request: the youngest waiter of a
            // lower class is shed in its place (its wait ends at once, refused). Otherwise a
            // burst of default requests that fills the queue would shed critical ones.
            let evicted = (class + 1..q.by_class.len())
                .rev()
                .find_map(|c| q.by_class[c].pop_back());
            self.waiting.fetch_sub(1, SeqCst);
            match evicted {
                Some(w) => w.signal.settle(WaitState::Refused),
                None => return Acquire::Shed,
            }
        }
        let signal = Arc::new(Signal {
            state: Mutex::new((WaitState::Waiting, None)),
        });
        let id = q.next_id;
        q.next_id += 1;
        q.by_class[class].push_back(Waiter {
            id,
            signal: signal.clone(),
        });
        let max_wait = Duration::from_micros(self.max_wait_us.load(Relaxed));
        Acquire::Wait(Wait {
            lim: self.clone(),
            class,
            id,
            signal,
            until: now.saturating_add(max_wait),
            done: false,
        })
    }

    fn release(&self) {
        if self.waiting.load(SeqCst) > 0 && self.hand_over() {
            return;
        }
        self.in_flight.fetch_sub(1, SeqCst);
        if self.waiting.load(SeqCst) > 0 {
            self.drain_waiters();
        }
    }

    /// Give a finishing request's slot straight to the best waiter that fits; the slot stays
    /// counted. Returns whether it was handed over.
    fn hand_over(&self) -> bool {
        let mut q = self.lock();
        // The slot being released counts as free for the fit test.
        let free_at = self.in_flight.load(SeqCst).saturating_sub(1);
        for class in 0..2 {
            if free_at >= self.threshold(class) {
                continue;
            }
            // A waiter on the list is alive (it leaves under this lock), so the first one
            // takes the slot.
            if let Some(w) = q.by_class[class].pop_front() {
                self.waiting.fetch_sub(1, SeqCst);
                w.signal.settle(WaitState::Granted);
                return true;
            }
        }
        false
    }

    /// Admit waiters while slots are free (after a release raced a new waiter, or the limit
    /// rose).
    fn drain_waiters(&self) {
        let mut q = self.lock();
        for class in 0..2 {
            while !q.by_class[class].is_empty() && self.try_take(class) {
                if let Some(w) = q.by_class[class].pop_front() {
                    self.waiting.fetch_sub(1, SeqCst);
                    w.signal.settle(WaitState::Granted);
                }
            }
        }
    }

    /// Close an adaptive window (control thread, every `window`): feed the gradient and
    /// publish its new limit. Returns the limit.
    pub fn tick(&self, now: Nanos) -> u32 {
        let samples = self.samples.swap(0, Relaxed);
        let sum = self.sum_ns.swap(0, Relaxed);
        let max_in_flight = self
            .max_in_flight
            .swap(self.in_flight.load(Relaxed), Relaxed);
        let mut a = self.adaptive.lock().unwrap_or_else(|e| e.into_inner());
        let Some(g) = a.as_mut() else {
            return self.limit();
        };
        let stats = WindowStats {
            samples,
            mean_ns: if samples == 0 {
                0.0
            } else {
                sum as f64 / f64::from(samples)
            },
            max_in_flight,
        };
        let limit = g.update(now, stats).max(1);
        // Under the lock, so a concurrent `configure` to a fixed limit is not overwritten.
        let old = self.limit.swap(limit, Relaxed);
        drop(a);
        if limit > old {
            self.drain_waiters();
        }
        limit
    }

    /// The adaptive limit's window length, if adaptive.
    pub fn window(&self) -> Option<Duration> {
        self.adaptive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|g| g.config().window)
    }

    /// Baseline latency the adaptive limit compares against, for the admin API.
    pub fn baseline(&self) -> Option<Duration> {
        self.adaptive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(GradientLimit::baseline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vivremotion_protocol::clock::ManualClock;

    fn params(limit: u32, queue: u32) -> Params {
        Params {
            fixed: Some(limit),
            gradient: GradientConfig::default(),
            queue,
            max_wait: Duration::from_millis(50),
            shed_at: [1.0, 0.9, 0.5],
        }
    }

    fn lim(limit: u32, queue: u32) -> Arc<ConcurrencyLimiter> {
        ConcurrencyLimiter::new(Arc::new(ManualClock::new(0)), &params(limit, queue))
    }

    fn now_permit(a: Acquire) -> Option<Permit> {
        match a {
            Acquire::Now(p) => Some(p),
            _ => None,
        }
    }

    #[test]
    fn lower_classes_are_turned_away_first() {
        let l = lim(10, 0);
        let mut held = Vec::new();
        // Sheddable fits below 5, default below 9, critical below 10.
        while let Some(p) = now_permit(l.acquire(Priority::Sheddable, Nanos(0))) {
            held.push(p);
        }
        assert_eq!(held.len(), 5);
        while let Some(p) = now_permit(l.acquire(Priority::Default, Nanos(0))) {
            held.push(p);
        }
        assert_eq!(held.len(), 9);
        while let Some(p) = now_permit(l.acquire(Priority::Critical, Nanos(0))) {
            held.push(p);
        }
        assert_eq!(held.len(), 10);
        assert_eq!(l.in_flight(), 10);
        drop(held);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn a_freed_slot_goes_to_the_highest_waiting_class() {
        let l = lim(2, 8);
        let a = now_permit(l.acquire(Priority::Critical, Nanos(0)));
        let b = now_permit(l.acquire(Priority::Critical, Nanos(0)));
        assert!(a.is_some() && b.is_some());
        let Acquire::Wait(wd) = l.acquire(Priority::Default, Nanos(0)) else {
            panic!("default should wait");
        };
        let Acquire::Wait(wc) = l.acquire(Priority::Critical, Nanos(0)) else {
            panic!("critical should wait");
        };
        assert!(matches!(
            l.acquire(Priority::Sheddable, Nanos(0)),
            Acquire::Shed
        ));
        assert_eq!(l.waiting(), 2);
        assert_eq!(wd.until(), Nanos(50_000_000));
        drop(a);
        // The critical waiter got the slot; the default one times out at its deadline.
        assert_eq!(wc.state(), WaitState::Granted);
        assert_eq!(wd.state(), WaitState::Waiting);
        let c = wc.finish(Nanos(1));
        assert!(c.is_some());
        assert!(wd.finish(Nanos(50_000_000)).is_none());
        assert_eq!(l.waiting(), 0);
        assert_eq!(l.in_flight(), 2);
        drop((b, c));
        assert_eq!(l.in_flight(), 0);
    }

    /// A wait is a future that completes when the wait is settled, with no runtime: a
    /// hand-rolled waker sees the wake-up.
    #[test]
    fn a_wait_wakes_its_task_when_granted() {
        use std::sync::atomic::AtomicBool;
        use std::task::Wake;
        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, SeqCst);
            }
        }
        let l = lim(1, 1);
        let held = now_permit(l.acquire(Priority::Critical, Nanos(0)));
        let Acquire::Wait(mut w) = l.acquire(Priority::Critical, Nanos(0)) else {
            panic!("should wait");
        };
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(Pin::new(&mut w).poll(&mut cx), Poll::Pending);
        drop(held);
        assert!(flag.0.load(SeqCst));
        assert_eq!(
            Pin::new(&mut w).poll(&mut cx),
            Poll::Ready(WaitState::Granted)
        );
        let p = w.finish(Nanos(5));
        assert!(p.is_some());
        assert_eq!(l.in_flight(), 1);
        drop(p);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn a_full_queue_sheds() {
        let l = lim(1, 1);
        let a = now_permit(l.acquire(Priority::Critical, Nanos(0)));
        let w = l.acquire(Priority::Critical, Nanos(0));
        assert!(matches!(w, Acquire::Wait(_)));
        assert!(matches!(
            l.acquire(Priority::Critical, Nanos(0)),
            Acquire::Shed
        ));
        // A waiter that leaves (its client went away) frees its place...
        drop(w);
        assert_eq!(l.waiting(), 0);
        let w = l.acquire(Priority::Critical, Nanos(0));
        assert!(matches!(w, Acquire::Wait(_)));
        // ...and one handed a slot it never took gives the slot back.
        drop(a);
        assert_eq!(l.in_flight(), 1);
        drop(w);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn a_full_queue_makes_room_for_a_higher_class() {
        let l = lim(1, 2);
        let held = now_permit(l.acquire(Priority::Critical, Nanos(0)));
        assert!(held.is_some());
        let Acquire::Wait(d1) = l.acquire(Priority::Default, Nanos(0)) else {
            panic!("default should wait");
        };
        let Acquire::Wait(d2) = l.acquire(Priority::Default, Nanos(0)) else {
            panic!("default should wait");
        };
        // Full of default waiters: another default is shed, a critical one takes the place
        // of the youngest default waiter.
        assert!(matches!(
            l.acquire(Priority::Default, Nanos(0)),
            Acquire::Shed
        ));
        let Acquire::Wait(c) = l.acquire(Priority::Critical, Nanos(0)) else {
            panic!("critical should wait in a full queue of default requests");
        };
        assert_eq!(l.waiting(), 2);
        // The evicted waiter is refused at once, long before its deadline.
        assert_eq!(d2.state(), WaitState::Refused);
        assert!(d2.finish(Nanos(1)).is_none());
        // The freed slot goes to the critical waiter; the older default one times out.
        drop(held);
        assert_eq!(c.state(), WaitState::Granted);
        let p = c.finish(Nanos(2));
        assert!(p.is_some());
        assert!(d1.finish(Nanos(50_000_000)).is_none());
        assert_eq!(l.waiting(), 0);
        drop(p);
        assert_eq!(l.in_flight(), 0);
        // With only critical waiters, a full queue sheds critical too.
        let l = lim(1, 1);
        let _held = now_permit(l.acquire(Priority::Critical, Nanos(0)));
        let _w = l.acquire(Priority::Critical, Nanos(0));
        assert!(matches!(
            l.acquire(Priority::Critical, Nanos(0)),
            Acquire::Shed
        ));
    }

    #[test]
    fn the_adaptive_limit_shrinks_when_latency_rises() {
        let clock = ManualClock::new(0);
        let mut p = params(0, 0);
        p.fixed = None;
        p.gradient.initial_limit = 100;
        p.gradient.min_samples = 1;
        let l = ConcurrencyLimiter::new(Arc::new(clock.clone()), &p);
        assert!(l.is_adaptive());
        // Fast windows at full use set the baseline.
        for _ in 0..5 {
            let held: Vec<_> = (0..80)
                .filter_map(|_| now_permit(l.acquire(Priority::Critical, clock.now())))
                .collect();
            clock.advance(Duration::from_millis(10));
            drop(held);
            clock.advance(Duration::from_millis(90));
            l.tick(clock.now());
        }
        let before = l.limit();
        for _ in 0..10 {
            let held: Vec<_> = (0..80)
                .filter_map(|_| now_permit(l.acquire(Priority::Critical, clock.now())))
                .collect();
            clock.advance(Duration::from_millis(60));
            drop(held);
            clock.advance(Duration::from_millis(40));
            l.tick(clock.now());
        }
        assert!(
            l.limit() < before,
            "limit {} should fall below {before}",
            l.limit()
        );
    }

    proptest! {
        /// Whatever the order of acquires and releases, in-flight never exceeds the limit,
        /// no class is admitted at once above its threshold, and everything returns to zero.
        #[test]
        fn in_flight_never_exceeds_the_limit(
            limit in 1u32..20,
            ops in proptest::collection::vec((0usize..3, any::<bool>()), 1..300),
        ) {
            let l = lim(limit, 0);
            let mut held: Vec<Permit> = Vec::new();
            for (class, release) in ops {
                if release && !held.is_empty() {
                    held.remove(0);
                } else {
                    let before = l.in_flight();
                    let p = Priority::ALL[class];
                    if let Some(permit) = now_permit(l.acquire(p, Nanos(0))) {
                        prop_assert!(before < l.threshold(class));
                        held.push(permit);
                    }
                }
                prop_assert!(l.in_flight() <= limit);
                prop_assert_eq!(l.in_flight() as usize, held.len());
            }
            held.clear();
            prop_assert_eq!(l.in_flight(), 0);
        }
    }
}
