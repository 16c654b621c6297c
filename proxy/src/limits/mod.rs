//! Admission control on the request path, the proxy's side: compiling each route's limits
//! from config + policy ([`LimitRegistry`], whose state survives snapshots), the leaser that
//! feeds global limits from the shared store ([`lease_loop`]), and the admin and metrics views.
//! The decisions themselves are the decision core's ([`vivremotion_decide::limits`]).

pub mod redis;
pub mod store;

use crate::config::admission::{ConcurrencyConfig, LimitMode};
use crate::config::{Config, RouteConfig};
use crate::error::ProxyError;
use crate::guard::gcra::{Gcra, KeyedGcra};
use concurrency::{ConcurrencyLimiter, Params};
use lease::{LeaseBook, LeaseParams};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
pub use vivremotion_decide::limits::{
    concurrency, lease, Admit, KeyPart, RateLimiter, RateState, Refusal, RouteLimits,
};
use vivremotion_protocol::policy::RoutePolicy;
use vivremotion_protocol::telemetry::Priority;
use vivremotion_protocol::Clock;

/// Keys per local limit before the least recently useful ones are forgotten.
const LOCAL_MAX_KEYS: usize = 100_000;

/// The answer to a request admission turned away on `limits`' route.
pub fn refusal_error(limits: &RouteLimits, r: &Refusal) -> ProxyError {
    match *r {
        Refusal::RateLimited {
            limit,
            retry_after,
            remaining,
            reset,
        } => {
            let (name, policy) = limits
                .rate
                .get(limit)
                .map_or(("", ""), |rl| (rl.name.as_str(), rl.policy_field.as_str()));
            ProxyError::RateLimited {
                route: limits.route.clone(),
                limit: name.to_string(),
                retry_after,
                policy: policy.to_string(),
                state: format!(
                    "\"{name}\";r={remaining};t={}",
                    crate::error::retry_after_secs(reset.max(retry_after))
                ),
            }
        }
        Refusal::Overloaded { priority } => ProxyError::Overloaded {
            route: limits.route.clone(),
            priority: priority.as_str(),
            retry_after: limits.retry_after,
        },
    }
}

/// The priority of a request: the route's, unless a trusted client says otherwise.
pub fn priority<'a>(
    route: &RouteConfig,
    config: &Config,
    client: IpAddr,
    header: impl FnOnce() -> Option<&'a [u8]>,
) -> Priority {
    let trusted = &config.proxy.trusted_priority_from;
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(&client)) {
        return route.priority;
    }
    header()
        .and_then(crate::config::admission::parse_priority)
        .unwrap_or(route.priority)
}

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

/// Prometheus families of the limiters' state.
pub fn render_metrics(out: &mut String, reg: &LimitRegistry) {
    use crate::telemetry::prometheus::escape;
    use std::fmt::Write;
    let limiters = reg.limiters();
    type Gauge = fn(&ConcurrencyLimiter) -> u32;
    let gauges: [(&str, &str, Gauge); 3] = [
        (
            "concurrency_limit",
            "The route's current concurrency limit (fixed, from policy, or adaptive).",
            ConcurrencyLimiter::limit,
        ),
        (
            "concurrency_in_flight",
            "Requests holding a concurrency slot of the route.",
            ConcurrencyLimiter::in_flight,
        ),
        (
            "concurrency_queued",
            "Requests waiting for a concurrency slot of the route.",
            ConcurrencyLimiter::waiting,
        ),
    ];
    for (name, help, f) in gauges {
        let _ = writeln!(out, "# HELP vivremotion_proxy_{name} {help}");
        let _ = writeln!(out, "# TYPE vivremotion_proxy_{name} gauge");
        for (route, l) in &limiters {
            let _ = writeln!(
                out,
                "vivremotion_proxy_{name}{{route=\"{}\"}} {}",
                escape(route),
                f(l)
            );
        }
    }
    let books = reg.books();
    type Family = fn(&LeaseBook) -> u64;
    let families: [(&str, &str, &str, Family); 5] = [
        (
            "rate_limit_store_up",
            "gauge",
            "1 if the global rate limit's store answered the last lease request.",
            |b| u64::from(b.store_up()),
        ),
        (
            "rate_limit_store_errors_total",
            "counter",
            "Lease rounds of a global rate limit that failed (store unreachable or slow).",
            |b| b.store_errors.load(std::sync::atomic::Ordering::Relaxed),
        ),
        (
            "rate_limit_fallback_total",
            "counter",
            "Requests a global rate limit decided locally (no lease yet, or store down).",
            |b| {
                b.fallback_decisions
                    .load(std::sync::atomic::Ordering::Relaxed)
            },
        ),
        (
            "rate_limit_leased_tokens_total",
            "counter",
            "Tokens this instance leased from the shared store.",
            |b| b.leased_total.load(std::sync::atomic::Ordering::Relaxed),
        ),
        (
            "rate_limit_returned_tokens_total",
            "counter",
            "Unused leased tokens given back to the shared store.",
            |b| b.returned_total.load(std::sync::atomic::Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, f) in families {
        let _ = writeln!(out, "# HELP vivremotion_proxy_{name} {help}");
        let _ = writeln!(out, "# TYPE vivremotion_proxy_{name} {kind}");
        for ((route, limit), b) in &books {
            let _ = writeln!(
                out,
                "vivremotion_proxy_{name}{{route=\"{}\",limit=\"{}\"}} {}",
                escape(route),
                escape(limit),
                f(b)
            );
        }
    }
}

/// The admission state of every route, for `GET /api/v1/limits`.
pub fn describe(snap: &crate::snapshot::Snapshot) -> serde_json::Value {
    use serde_json::json;
    let routes: Vec<_> = snap
        .routes
        .iter()
        .map(|r| {
            let rate: Vec<_> = r
                .cfg
                .rate_limits
                .iter()
                .zip(r.limits.rate.iter())
                .map(|(cfg, rl)| {
                    let mut v = json!({
                        "name": rl.name,
                        "key": cfg.key,
                        "rate": rl.gcra.rate(),
                        "burst": rl.gcra.burst(),
                        "from_policy": (rl.gcra.rate(), rl.gcra.burst()) != (cfg.rate, cfg.burst),
                        "global": cfg.global,
                        "ratelimit_policy": rl.policy_field,
                    });
                    match &rl.state {
                        RateState::Local(keys) => {
                            v["keys"] = json!(keys.len());
                        }
                        RateState::Global(b) => {
                            let p = b.params();
                            v["keys"] = json!(b.keys());
                            v["store_up"] = json!(b.store_up());
                            v["on_store_down"] = json!(p.on_store_down);
                            v["local_share"] = json!(p.local_share);
                            v["store_key_prefix"] = json!(b.prefix());
                        }
                    }
                    v
                })
                .collect();
            let concurrency = r.limits.concurrency.as_ref().map(|c| {
                json!({
                    "mode": if c.is_adaptive() { "adaptive" } else { "fixed" },
                    "limit": c.limit(),
                    "in_flight": c.in_flight(),
                    "queued": c.waiting(),
                    "baseline_ms": c.baseline().map(|d| d.as_secs_f64() * 1e3),
                })
            });
            json!({
                "route": r.cfg.name,
                "priority": r.cfg.priority,
                "rate_limits": rate,
                "concurrency": concurrency,
                "shed_at": r.cfg.concurrency.as_ref().map(|c| json!({
                    "critical": c.shed_at[0], "default": c.shed_at[1], "sheddable": c.shed_at[2],
                })),
            })
        })
        .collect();
    json!({
        "trusted_priority_from": snap.config.proxy.trusted_priority_from.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "routes": routes,
    })
}
