//! Load balancers: pure decision code.
//!
//! A [`Balancer`] is built from a cluster's endpoints and weights (config, overridden by the
//! brain's policy) whenever a snapshot is built, and answers one question on the hot path:
//! which endpoint gets this request? It reads load through [`LoadView`] and takes time, the
//! worker index and randomness as arguments, so the simulator drives the very same code.
//!
//! - [`wrr`]: smooth weighted round robin, precomputed cycle.
//! - least request: fewest in-flight per unit of weight (exact scan for small clusters, P2C for
//!   large ones).
//! - P2C peak-EWMA ([`ewma`]): two random candidates, the lower `latency × (in-flight + 1) / weight` wins.
//! - [`maglev`]: consistent hashing on a key hash.

pub mod ewma;
pub mod hash;
pub mod maglev;
pub mod wrr;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The balancing algorithm of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    /// Smooth weighted round robin (nginx's algorithm).
    RoundRobin,
    /// Fewest in-flight requests relative to weight.
    LeastRequest,
    /// Power of two choices over peak-EWMA latency × in-flight (linkerd / Finagle).
    #[default]
    P2cPeakEwma,
    /// Maglev consistent hashing on a header or the client IP.
    ConsistentHash,
}
use std::sync::atomic::{AtomicUsize, Ordering};
use vivremotion_protocol::Nanos;

/// What a balancer may know about an endpoint's load.
pub trait LoadView {
    fn in_flight(&self) -> u32;
    /// Peak-EWMA latency estimate at `now`, in nanoseconds.
    fn latency_ns(&self, now: Nanos) -> f64;
    /// Not ejected, not failing active health checks, breaker not open.
    fn available(&self, _now: Nanos) -> bool {
        true
    }
}

/// Everything a pick depends on besides the endpoints' load.
#[derive(Debug, Clone, Copy)]
pub struct PickInput {
    pub now: Nanos,
    /// Index of the worker thread asking (selects the WRR cursor).
    pub worker: usize,
    /// Affinity key hash, for consistent hashing. `None`: pick at random.
    pub key_hash: Option<u64>,
    /// Endpoints (by index, the first 64) not to pick unless nothing else is left: the ones a
    /// retried request already tried.
    pub avoid: u64,
}

impl PickInput {
    pub fn new(now: Nanos, worker: usize, key_hash: Option<u64>) -> PickInput {
        PickInput {
            now,
            worker,
            key_hash,
            avoid: 0,
        }
    }

    fn avoids(&self, i: usize) -> bool {
        i < 64 && self.avoid & (1 << i) != 0
    }
}

/// Scan every endpoint up to this size; above it least-request samples two (P2C).
const FULL_SCAN_MAX: usize = 8;

#[repr(align(64))]
#[derive(Debug, Default)]
struct Cursor(AtomicUsize);

#[derive(Debug)]
enum Strategy {
    RoundRobin {
        cycle: Box<[u32]>,
        cursors: Box<[Cursor]>,
    },
    LeastRequest,
    P2cPeakEwma,
    ConsistentHash(maglev::Maglev),
}

#[derive(Debug)]
pub struct Balancer {
    kind: BalancerKind,
    /// Below this share of available endpoints, availability is ignored (panic mode).
    panic_threshold: f64,
    weights: Box<[u32]>,
    /// Indices of endpoints with weight > 0.
    eligible: Box<[u32]>,
    strategy: Strategy,
}

impl Balancer {
    /// A balancer over endpoints named `names` (stable identities) with `weights`, serving
    /// `workers` worker threads.
    pub fn new(kind: BalancerKind, names: &[&str], weights: &[u32], workers: usize) -> Balancer {
        Self::with_panic_threshold(kind, names, weights, workers, 0.5)
    }

    pub fn with_panic_threshold(
        kind: BalancerKind,
        names: &[&str],
        weights: &[u32],
        workers: usize,
        panic_threshold: f64,
    ) -> Balancer {
        let eligible: Box<[u32]> = weights
            .iter()
            .enumerate()
            .filter(|(_, &w)| w > 0)
            .map(|(i, _)| i as u32)
            .collect();
        let strategy = match kind {
            BalancerKind::RoundRobin => {
                let cycle: Box<[u32]> = wrr::smooth_cycle(weights).into();
                let len = cycle.len().max(1);
                // Workers start at different points of the cycle so that, right after a new
                // snapshot, they do not all hit the same endpoint at once.
                let cursors = (0..workers.max(1))
                    .map(|w| Cursor(AtomicUsize::new(w * 7919 % len)))
                    .collect();
                Strategy::RoundRobin { cycle, cursors }
            }
            BalancerKind::LeastRequest => Strategy::LeastRequest,
            BalancerKind::P2cPeakEwma => Strategy::P2cPeakEwma,
            BalancerKind::ConsistentHash => match maglev::Maglev::new(names, weights) {
                Some(m) => Strategy::ConsistentHash(m),
                None => Strategy::LeastRequest,
            },
        };
        Balancer {
            kind,
            panic_threshold,
            weights: weights.into(),
            eligible,
            strategy,
        }
    }

    pub fn kind(&self) -> BalancerKind {
        self.kind
    }

    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// Pick an endpoint index, or `None` if no endpoint can take traffic.
    ///
    /// Unavailable endpoints (ejected, unhealthy, breaker open) and those in `input.avoid`
    /// are passed over, unless fewer than `panic_threshold` of the eligible endpoints are
    /// available: then availability is ignored (but `avoid` still holds while anything else
    /// is left).
    pub fn pick<E: LoadView, R: Rng + ?Sized>(
        &self,
        endpoints: &[E],
        input: &PickInput,
        rng: &mut R,
    ) -> Option<usize> {
        if self.eligible.is_empty() || endpoints.len() != self.weights.len() {
            return None;
        }
        let now = input.now;
        let n = self.eligible.len();
        let mut available = 0usize;
        let mut usable = 0usize;
        for &i in self.eligible.iter() {
            let i = i as usize;
            if endpoints[i].available(now) {
                available += 1;
                if !input.avoids(i) {
                    usable += 1;
                }
            }
        }
        if usable == n {
            return self.pick_among(endpoints, input, rng, |_| true);
        }
        let panic = (available as f64) < self.panic_threshold * n as f64;
        let filter = |i: usize| (panic || endpoints[i].available(now)) && !input.avoids(i);
        if usable > 0 || (panic && self.eligible.iter().any(|&i| filter(i as usize))) {
            return self.pick_among(endpoints, input, rng, filter);
        }
        // Everything left was tried already: try again rather than fail.
        if panic || available > 0 {
            return self.pick_among(endpoints, input, rng, |i| {
                panic || endpoints[i].available(now)
            });
        }
        None
    }

    fn pick_among<E: LoadView, R: Rng + ?Sized>(
        &self,
        endpoints: &[E],
        input: &PickInput,
        rng: &mut R,
        ok: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let all = self.eligible.iter().all(|&i| ok(i as usize));
        match &self.strategy {
            Strategy::RoundRobin { cycle, cursors } => {
                let cursor = &cursors[input.worker % cursors.len()].0;
                let len = cycle.len().max(1);
                for _ in 0..len {
                    let n = cursor.fetch_add(1, Ordering::Relaxed);
                    if let Some(&i) = cycle.get(n % len) {
                        if ok(i as usize) {
                            return Some(i as usize);
                        }
                    }
                }
                None
            }
            Strategy::LeastRequest if all => Some(self.least_request(endpoints, rng)),
            Strategy::P2cPeakEwma if all => Some(self.p2c(endpoints, input.now, rng)),
            Strategy::ConsistentHash(table) if input.key_hash.is_some() => {
                let h = input.key_hash.unwrap_or_default();
                // The key's own endpoint, else a stable alternative for the same key.
                for k in 0..16u64 {
                    let probe = if k == 0 {
                        h
                    } else {
                        hash::mix64(h ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                    };
                    let i = table.lookup(probe) as usize;
                    if ok(i) {
                        return Some(i);
                    }
                }
                self.random_among(rng, &ok)
            }
            Strategy::ConsistentHash(_) if all => {
                let i = rng.random_range(0..self.eligible.len());
                Some(self.eligible[i] as usize)
            }
            Strategy::LeastRequest => {
                let score = |i: usize| {
                    (f64::from(endpoints[i].in_flight()) + 1.0) / f64::from(self.weights[i])
                };
                self.best_of_two_among(rng, &ok, score)
            }
            Strategy::P2cPeakEwma => {
                let now = input.now;
                let cost = |i: usize| {
                    let e = &endpoints[i];
                    e.latency_ns(now) * (f64::from(e.in_flight()) + 1.0)
                        / f64::from(self.weights[i])
                };
                self.best_of_two_among(rng, &ok, cost)
            }
            Strategy::ConsistentHash(_) => self.random_among(rng, &ok),
        }
    }

    /// Among the endpoints `ok` accepts: two at random, the cheaper wins.
    fn best_of_two_among<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        ok: &impl Fn(usize) -> bool,
        cost: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let a = self.random_among(rng, ok)?;
        let b = self.random_among(rng, &|i| i != a && ok(i)).unwrap_or(a);
        Some(if cost(b) < cost(a) { b } else { a })
    }

    /// A uniformly random eligible endpoint that `ok` accepts.
    fn random_among<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        ok: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let count = self.eligible.iter().filter(|&&i| ok(i as usize)).count();
        if count == 0 {
            return None;
        }
        let k = rng.random_range(0..count);
        self.eligible
            .iter()
            .map(|&i| i as usize)
            .filter(|&i| ok(i))
            .nth(k)
    }

    fn least_request<E: LoadView, R: Rng + ?Sized>(&self, endpoints: &[E], rng: &mut R) -> usize {
        let score =
            |i: usize| (f64::from(endpoints[i].in_flight()) + 1.0) / f64::from(self.weights[i]);
        let n = self.eligible.len();
        if n <= FULL_SCAN_MAX {
            // Start the scan at a random point so ties do not always favour the first endpoint.
            let start = rng.random_range(0..n);
            let mut best = self.eligible[start] as usize;
            let mut best_score = score(best);
            for k in 1..n {
                let i = self.eligible[(start + k) % n] as usize;
                let s = score(i);
                if s < best_score {
                    best = i;
                    best_score = s;
                }
            }
            best
        } else {
            let (a, b) = self.two_distinct(rng);
            if score(b) < score(a) {
                b
            } else {
                a
            }
        }
    }

    fn p2c<E: LoadView, R: Rng + ?Sized>(&self, endpoints: &[E], now: Nanos, rng: &mut R) -> usize {
        if self.eligible.len() == 1 {
            return self.eligible[0] as usize;
        }
        let cost = |i: usize| {
            let e = &endpoints[i];
            e.latency_ns(now) * (f64::from(e.in_flight()) + 1.0) / f64::from(self.weights[i])
        };
        let (a, b) = self.two_distinct(rng);
        if cost(b) < cost(a) {
            b
        } else {
            a
        }
    }

    /// Two different eligible endpoints, uniformly (the same one if only one is eligible).
    fn two_distinct<R: Rng + ?Sized>(&self, rng: &mut R) -> (usize, usize) {
        let n = self.eligible.len();
        if n == 1 {
            let i = self.eligible[0] as usize;
            return (i, i);
        }
        let a = rng.random_range(0..n);
        let mut b = rng.random_range(0..n - 1);
        if b >= a {
            b += 1;
        }
        (self.eligible[a] as usize, self.eligible[b] as usize)
    }
}

#[cfg(test)]
mod tests;
