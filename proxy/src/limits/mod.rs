//! Admission control on the request path, the proxy's side: compiling each route's limits
//! from config + policy ([`LimitRegistry`], whose state survives snapshots), the leaser that
//! feeds global limits from the shared store ([`lease_loop`]), and the admin and metrics views.
//! The decisions themselves are the decision core's ([`vivremotion_decide::limits`]).

pub mod redis;
pub mod store;

use crate::config::{Config, RouteConfig};
use crate::error::ProxyError;
use concurrency::ConcurrencyLimiter;
use lease::LeaseBook;
use std::net::IpAddr;
pub use vivremotion_decide::limits::{
    concurrency, lease, registry::LimitRegistry, Admit, KeyPart, RateLimiter, RateState, Refusal,
    RouteLimits,
};
use vivremotion_protocol::telemetry::Priority;

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
