//! Admission: a route's rate limits (local GCRA per key, or global leased tokens) and its
//! concurrency limit with priority shedding, decided without IO.
//!
//! The proxy compiles each route's config + policy into a [`RouteLimits`] (its state objects
//! outlive snapshots); the request flow calls [`RouteLimits::admit`] once per request.
//!
//! - [`concurrency`]: the concurrency limiter, priority thresholds and queue (runtime-free).
//! - [`lease`]: the books of global limits (tokens leased ahead of need, fallback).
//! - [`bucket`]: the shared token bucket arithmetic and the store's messages.

pub mod bucket;
pub mod concurrency;
pub mod lease;
pub mod registry;

use crate::balance::hash::hash64;
use crate::guard::gcra::{Gcra, KeyedGcra};
use concurrency::{Acquire, ConcurrencyLimiter, Permit, Wait};
use lease::{LeaseBook, Spend};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use vivremotion_protocol::telemetry::Priority;
use vivremotion_protocol::Nanos;

/// One part of a rate limit key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    ClientIp,
    Route,
    /// A request header's first value, by its lowercase name.
    Header(Box<str>),
}

/// Where a rate limit keeps its state.
pub enum RateState {
    Local(Arc<KeyedGcra>),
    Global(Arc<LeaseBook>),
}

pub struct RateLimiter {
    pub name: String,
    pub key: Vec<KeyPart>,
    pub gcra: Gcra,
    pub state: RateState,
    /// `RateLimit-Policy` field value.
    pub policy_field: String,
    /// Every request has the same key (the route alone): decided without a lock.
    single: bool,
}

impl RateLimiter {
    pub fn new(name: &str, key: Vec<KeyPart>, gcra: Gcra, state: RateState) -> RateLimiter {
        RateLimiter {
            name: name.to_string(),
            single: key.iter().all(|p| *p == KeyPart::Route),
            key,
            policy_field: policy_field(name, gcra.rate()),
            gcra,
            state,
        }
    }

    fn key_hash<'a>(
        &self,
        header: &impl Fn(&str) -> Option<&'a [u8]>,
        client: IpAddr,
        route: &str,
    ) -> u64 {
        // Stable across processes: global limits name their store key by it.
        let mut h = 0x9e37_79b9_7f4a_7c15u64;
        for part in &self.key {
            h = match part {
                // An IPv4 client over an IPv6 socket is the same client.
                KeyPart::ClientIp => match client.to_canonical() {
                    IpAddr::V4(a) => hash64(&a.octets(), h ^ 1),
                    IpAddr::V6(a) => hash64(&a.octets(), h ^ 1),
                },
                KeyPart::Route => hash64(route.as_bytes(), h ^ 2),
                // A missing header is its own key: such requests share one bucket.
                KeyPart::Header(n) => match header(n) {
                    Some(v) => hash64(v, h ^ 3),
                    None => hash64(b"", h ^ 4),
                },
            };
        }
        h
    }
}

/// `RateLimit-Policy` for a limit: quota `q` per window `w` seconds (draft-ietf-httpapi-
/// ratelimit-headers). Sub-1/s rates get a window long enough for a whole request.
pub fn policy_field(name: &str, rate: f64) -> String {
    let w = if rate >= 1.0 {
        1.0
    } else {
        (1.0 / rate).ceil()
    };
    format!("\"{name}\";q={};w={}", (rate * w).floor().max(1.0), w)
}

/// Why admission turned a request away.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// Rate limit number `limit` of the route refused it (429).
    RateLimited {
        limit: usize,
        retry_after: Duration,
        /// Requests the key could still make now, and the time until its bucket is full.
        remaining: u64,
        reset: Duration,
    },
    /// The concurrency limit shed it (503): over its class's threshold, queue full or wait
    /// over.
    Overloaded { priority: Priority },
}

/// What admission decided.
pub enum Admit {
    /// Go; hold the permit (if the route limits concurrency) until the response is done.
    Go(Option<Permit>),
    /// Wait for a concurrency slot, then go (or be shed).
    Wait(Wait),
    Refuse(Refusal),
}

pub struct RouteLimits {
    pub route: String,
    pub rate: Box<[RateLimiter]>,
    pub concurrency: Option<Arc<ConcurrencyLimiter>>,
    /// `Retry-After` of a shed request.
    pub retry_after: Duration,
    pub lease_interval: Duration,
}

impl RouteLimits {
    /// Decide a request of priority `p`. `header` looks up a request header's first value by
    /// its lowercase name.
    pub fn admit<'a>(
        &self,
        p: Priority,
        header: impl Fn(&str) -> Option<&'a [u8]>,
        client: IpAddr,
        now: Nanos,
    ) -> Admit {
        for (i, rl) in self.rate.iter().enumerate() {
            let key = rl.key_hash(&header, client, &self.route);
            let refused = match &rl.state {
                RateState::Local(keys) => {
                    let v = if rl.single {
                        keys.check_single(&rl.gcra, now, 1)
                    } else {
                        keys.check(&rl.gcra, &key, now, 1)
                    };
                    (!v.allowed).then_some((v.retry_after, v.remaining, v.reset))
                }
                RateState::Global(book) => match book.spend(key, now, self.lease_interval) {
                    Spend::Leased | Spend::Fallback { allowed: true, .. } => None,
                    Spend::Fallback { retry_after, .. } | Spend::Denied { retry_after } => {
                        Some((retry_after, 0, retry_after))
                    }
                },
            };
            if let Some((retry_after, remaining, reset)) = refused {
                return Admit::Refuse(Refusal::RateLimited {
                    limit: i,
                    retry_after,
                    remaining,
                    reset,
                });
            }
        }
        let Some(c) = &self.concurrency else {
            return Admit::Go(None);
        };
        match c.acquire(p, now) {
            Acquire::Now(permit) => Admit::Go(Some(permit)),
            Acquire::Wait(w) => Admit::Wait(w),
            Acquire::Shed => Admit::Refuse(Refusal::Overloaded { priority: p }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_fields_follow_the_draft() {
        assert_eq!(policy_field("api", 100.0), "\"api\";q=100;w=1");
        assert_eq!(policy_field("slow", 0.1), "\"slow\";q=1;w=10");
        assert_eq!(policy_field("x", 2.5), "\"x\";q=2;w=1");
    }
}
