//! Limiter state that outlives snapshots, and the compiling of a route's limits from its
//! config and the policy's overrides: what the proxy's snapshot builds and the simulator's
//! instances build alike.

use super::concurrency::{ConcurrencyLimiter, Params};
use super::lease::{LeaseBook, LeaseParams};
use super::{RateLimiter, RateState, RouteLimits};
use crate::config::admission::{ConcurrencyConfig, LimitMode};
use crate::config::RouteConfig;
use crate::guard::gcra::{Gcra, KeyedGcra};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vivremotion_protocol::policy::RoutePolicy;
use vivremotion_protocol::Clock;

/// Keys per local limit before the least recently useful ones are forgotten.
const LOCAL_MAX_KEYS: usize = 100_000;

/// Limiter state that outlives snapshots.
#[derive(Default)]
pub struct LimitRegistry {
    local: Mutex<HashMap<(String, String), Arc<KeyedGcra>>>,
    global: Mutex<HashMap<(String, String), Arc<LeaseBook>>>,
    concurrency: Mutex<HashMap<String, Arc<ConcurrencyLimiter>>>,
    /// Limiters used by the snapshot being built; the rest go at [`Self::retain`].
    seen: Mutex<HashSet<(String, String)>>,
    /// Keys the hashers of local limits' shards (the process seed).
    pub seed: u64,
}

impl LimitRegistry {
    /// Every lease book, for the leaser and metrics.
    pub fn books(&self) -> Vec<((String, String), Arc<LeaseBook>)> {
        let m = self.global.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = m.iter().map(|(k, b)| (k.clone(), b.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Every route's concurrency limiter.
    pub fn limiters(&self) -> Vec<(String, Arc<ConcurrencyLimiter>)> {
        let m = self.concurrency.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = m.iter().map(|(k, l)| (k.clone(), l.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Compile a route's limits from its config and the policy's overrides.
    pub fn route(
        &self,
        rc: &RouteConfig,
        policy: Option<&RoutePolicy>,
        lease_interval: Duration,
        clock: &Arc<dyn Clock>,
    ) -> RouteLimits {
        let mut rate = Vec::with_capacity(rc.rate_limits.len());
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for l in &rc.rate_limits {
            let (r, burst) = match policy.and_then(|p| p.rate_limits.get(&l.name)) {
                Some(o) => (o.requests_per_second, o.burst.max(1)),
                None => (l.rate, l.burst),
            };
            let id = (rc.name.clone(), l.name.clone());
            seen.insert(id.clone());
            let state = if l.global {
                let params = LeaseParams {
                    rate: r,
                    burst,
                    on_store_down: l.on_store_down,
                    local_share: l.local_share,
                };
                let mut m = self.global.lock().unwrap_or_else(|e| e.into_inner());
                let book = m
                    .entry(id)
                    .or_insert_with(|| Arc::new(LeaseBook::new(&rc.name, &l.name, params)))
                    .clone();
                book.set_params(params);
                RateState::Global(book)
            } else {
                let mut m = self.local.lock().unwrap_or_else(|e| e.into_inner());
                RateState::Local(
                    m.entry(id)
                        .or_insert_with(|| Arc::new(KeyedGcra::new(LOCAL_MAX_KEYS, self.seed)))
                        .clone(),
                )
            };
            rate.push(RateLimiter::new(
                &l.name,
                l.key.clone(),
                Gcra::new(r, burst),
                state,
            ));
        }
        // A policy may limit a route the config leaves unlimited: defaults for the rest.
        let policy_limit = policy.and_then(|p| p.concurrency_limit);
        let configured = rc
            .concurrency
            .clone()
            .or_else(|| policy_limit.map(ConcurrencyConfig::fixed));
        let concurrency = configured.as_ref().map(|c| {
            seen.insert((rc.name.clone(), String::new()));
            let fixed = match (policy_limit, c.limit) {
                (Some(n), _) => Some(n.max(1)),
                (None, LimitMode::Fixed(n)) => Some(n),
                (None, LimitMode::Adaptive) => None,
            };
            let mut shed_at = c.shed_at;
            if let Some(p) = policy {
                for (prio, t) in &p.shed_threshold {
                    shed_at[*prio as usize] = t.clamp(0.0, 1.0);
                }
            }
            let params = Params {
                fixed,
                gradient: c.gradient,
                queue: c.queue,
                max_wait: c.max_wait,
                shed_at,
            };
            let mut m = self.concurrency.lock().unwrap_or_else(|e| e.into_inner());
            let lim = m
                .entry(rc.name.clone())
                .or_insert_with(|| ConcurrencyLimiter::new(clock.clone(), &params))
                .clone();
            lim.configure(&params);
            lim
        });
        RouteLimits {
            route: rc.name.clone(),
            rate: rate.into(),
            concurrency,
            retry_after: configured
                .as_ref()
                .map_or(Duration::from_secs(1), |c| c.retry_after),
            lease_interval,
        }
    }

    /// A snapshot build starts: forget what an abandoned build saw.
    pub fn begin(&self) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Forget the state of limits the snapshot just built does not use.
    pub fn retain(&self) {
        let seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()));
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| seen.contains(k));
        self.global
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| seen.contains(k));
        self.concurrency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| seen.contains(&(k.clone(), String::new())));
    }
}
