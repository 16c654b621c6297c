//! Config + policy compiled into the decision half of every route ([`RouteCore`]): endpoint
//! state, balancer, retry budgets, limits and statistics, looked up in [`Registries`] so that
//! they survive rebuilds. The proxy's snapshot adds its IO half (connection pools,
//! authorities, header rules) around these cores; the simulator runs them as they are. One
//! copy of the compiling, so a simulated instance runs the routes a deployment would.

use crate::balance::hash::hash64;
use crate::balance::Balancer;
use crate::config::{Config, RouteConfig};
use crate::control::{ClusterView, HealthSchedule};
use crate::endpoint::EndpointState;
use crate::flow::{RetryBudgets, RouteCore};
use crate::guard::breaker::BreakerState;
use crate::limits::registry::LimitRegistry;
use crate::telemetry::collector::InForceView;
use crate::telemetry::Collector;
use crate::telemetry::{ScopeStats, StatsRegistry};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use vivremotion_protocol::policy::PolicyError;
use vivremotion_protocol::telemetry::Scope;
use vivremotion_protocol::telemetry::TelemetryBatch;
use vivremotion_protocol::{Clock, Nanos, Policy, Telemetry};

/// Scope name of requests answered before any route matched.
pub const UNMATCHED_ROUTE: &str = "(unmatched)";

/// Why a policy does not fit the config it is applied to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyMismatch {
    #[error("routes.{route}.rate_limits.{limit}: the route has no rate limit of that name")]
    UnknownLimit { route: String, limit: String },
    #[error("routes.{route}: the policy names a route the config does not have")]
    UnknownRoute { route: String },
    #[error("routes.{route}.upstream_weights.{endpoint}: not an endpoint of cluster {cluster:?}")]
    UnknownEndpoint {
        route: String,
        endpoint: String,
        cluster: String,
    },
    #[error("routes.{route}.upstream_weights: with this policy every endpoint of the route has weight 0")]
    AllZero { route: String },
}

/// Where an endpoint's effective weight came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightSource {
    Config,
    Policy,
}

/// Decision state that outlives snapshots: endpoint load, statistics, budgets and limiters.
#[derive(Default)]
pub struct Registries {
    pub stats: StatsRegistry,
    endpoints: Mutex<HashMap<(String, String), Arc<EndpointState>>>,
    route_budgets: Mutex<HashMap<String, Arc<RetryBudgets>>>,
    pub limits: LimitRegistry,
}

impl Registries {
    /// Every endpoint state, sorted by cluster then address.
    pub fn endpoints(&self) -> Vec<Arc<EndpointState>> {
        let map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map.values().cloned().collect();
        v.sort_by(|a, b| (&a.cluster, &a.address).cmp(&(&b.cluster, &b.address)));
        v
    }
}

/// One route's decision half.
pub struct CoreRoute {
    /// Index of the route in `config.routes`.
    pub index: usize,
    pub core: RouteCore,
    /// Per endpoint, in `core.endpoints` order.
    pub weight_sources: Box<[WeightSource]>,
}

/// What [`cores`] built.
pub struct Cores {
    pub routes: Vec<CoreRoute>,
    /// Statistics of requests no route matched.
    pub unmatched: Arc<ScopeStats>,
    /// Policy entries that no longer match the config (only when not strict).
    pub warnings: Vec<String>,
}

/// The checks a policy passes before anything is built from it: well formed, and newer than
/// the one in force (`current_version`, 0 for none). Then [`cores`] with `strict` checks that
/// it fits the config.
pub fn admit_policy(policy: &Policy, current_version: u64) -> Result<(), PolicyError> {
    policy.validate()?;
    policy.check_newer_than(current_version)
}

/// Every reason a new policy does not fit the config, checked before any state changes.
pub fn check_policy(config: &Config, p: &Policy) -> Result<(), PolicyMismatch> {
    for (name, o) in &p.routes {
        let Some(rc) = config.routes.iter().find(|r| &r.name == name) else {
            return Err(PolicyMismatch::UnknownRoute {
                route: name.clone(),
            });
        };
        if let Some(limit) = o
            .rate_limits
            .keys()
            .find(|l| !rc.rate_limits.iter().any(|c| &c.name == *l))
        {
            return Err(PolicyMismatch::UnknownLimit {
                route: name.clone(),
                limit: limit.clone(),
            });
        }
        let Some(cluster) = config.clusters.get(&rc.cluster) else {
            continue;
        };
        if let Some(ep) = o
            .upstream_weights
            .keys()
            .find(|ep| !cluster.endpoints.iter().any(|e| &e.address == *ep))
        {
            return Err(PolicyMismatch::UnknownEndpoint {
                route: name.clone(),
                endpoint: ep.clone(),
                cluster: cluster.name.clone(),
            });
        }
        let all_zero = cluster.endpoints.iter().all(|e| {
            o.upstream_weights
                .get(&e.address)
                .copied()
                .unwrap_or(e.weight)
                == 0
        });
        if all_zero {
            return Err(PolicyMismatch::AllZero {
                route: name.clone(),
            });
        }
    }
    Ok(())
}

/// Compile `config` + `policy` into every route's [`RouteCore`].
///
/// With `strict`, a policy naming unknown routes or endpoints is an error (a new policy is
/// being applied), returned before any state is touched; without, such entries are skipped
/// with a warning (the config changed under a policy that was valid when it arrived). State
/// the new config no longer has is forgotten once the whole set is built.
pub fn cores(
    config: &Config,
    policy: Option<&Policy>,
    strict: bool,
    reg: &Registries,
    clock: &Arc<dyn Clock>,
) -> Result<Cores, PolicyMismatch> {
    let now = clock.now();
    let workers = config.proxy.workers;
    let mut warnings = Vec::new();
    // Building touches state that outlives snapshots (limiters, budgets, breakers): a policy
    // that is going to be rejected must be rejected before anything is touched. Past this
    // check, policy entries that do not fit are only warned about (the config changed).
    if let (true, Some(p)) = (strict, policy) {
        check_policy(config, p)?;
    }
    reg.limits.begin();
    if let Some(p) = policy {
        for name in p.routes.keys() {
            if !config.routes.iter().any(|r| &r.name == name) {
                warnings.push(format!(
                    "policy route {name:?} is not in the config; ignored"
                ));
            }
        }
    }

    let mut endpoints_map = reg.endpoints.lock().unwrap_or_else(|p| p.into_inner());
    let mut route_budgets = reg.route_budgets.lock().unwrap_or_else(|p| p.into_inner());
    let mut live_budgets = HashSet::new();
    let mut routes = Vec::with_capacity(config.routes.len());
    let mut live_scopes = HashSet::new();
    let mut live_endpoints = HashSet::new();
    for (index, rc) in config.routes.iter().enumerate() {
        // Validation guarantees the cluster exists; a missing one would be a bug, skip safely.
        let Some(cluster) = config.clusters.get(&rc.cluster) else {
            continue;
        };
        let overrides = policy.and_then(|p| p.routes.get(&rc.name));
        if let Some(o) = overrides {
            for limit in o.rate_limits.keys() {
                if !rc.rate_limits.iter().any(|l| &l.name == limit) {
                    warnings.push(format!(
                        "policy rate limit {limit:?} of route {:?} is not in the config; ignored",
                        rc.name
                    ));
                }
            }
            for ep in o.upstream_weights.keys() {
                if !cluster.endpoints.iter().any(|e| &e.address == ep) {
                    warnings.push(format!(
                        "policy endpoint {ep:?} of route {:?} is not in cluster {:?}; ignored",
                        rc.name, cluster.name
                    ));
                }
            }
        }
        let n = cluster.endpoints.len();
        let mut eps = Vec::with_capacity(n);
        let mut weights = Vec::with_capacity(n);
        let mut sources = Vec::with_capacity(n);
        let mut stats = Vec::with_capacity(n);
        for e in &cluster.endpoints {
            let key = (cluster.name.clone(), e.address.clone());
            let state = endpoints_map
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(EndpointState::new(
                        &cluster.name,
                        &e.address,
                        cluster.ewma_default_rtt,
                        cluster.ewma_decay,
                        now,
                    ))
                })
                .clone();
            state.set_decay(cluster.ewma_decay);
            state.set_breaker(cluster.breaker);
            if cluster.health_check.is_none() {
                state.clear_health();
            }
            live_endpoints.insert(key);
            let (w, src) = match overrides.and_then(|o| o.upstream_weights.get(&e.address)) {
                Some(&w) => (w, WeightSource::Policy),
                None => (e.weight, WeightSource::Config),
            };
            let scope = Scope {
                route: rc.name.clone(),
                cluster: Some(cluster.name.clone()),
                upstream: Some(e.address.clone()),
            };
            live_scopes.insert(scope.clone());
            stats.push(reg.stats.get_or_create(scope, workers));
            eps.push(state);
            weights.push(w);
            sources.push(src);
        }
        let names: Vec<&str> = cluster
            .endpoints
            .iter()
            .map(|e| e.address.as_str())
            .collect();
        let route_scope = Scope {
            route: rc.name.clone(),
            cluster: Some(cluster.name.clone()),
            upstream: None,
        };
        live_scopes.insert(route_scope.clone());
        let mut budget = rc.retry.budget();
        if let Some(pct) = overrides.and_then(|o| o.retry_budget_percent) {
            budget.ratio = pct / 100.0;
        }
        let budgets = route_budgets
            .entry(rc.name.clone())
            .or_insert_with(|| Arc::new(RetryBudgets::new(workers, budget)))
            .clone();
        budgets.reconfigure(budget);
        let limits = reg
            .limits
            .route(rc, overrides, config.global_limits.lease_interval, clock);
        live_budgets.insert(rc.name.clone());
        routes.push(CoreRoute {
            index,
            weight_sources: sources.into(),
            core: RouteCore {
                balancer: Balancer::with_panic_threshold(
                    cluster.balancer,
                    &names,
                    &weights,
                    workers,
                    cluster.outlier.panic_threshold,
                ),
                endpoints: eps.into(),
                stats: stats.into(),
                route_stats: reg.stats.get_or_create(route_scope, workers),
                outlier: cluster.outlier,
                retry: rc.retry.clone(),
                timeout: rc.timeout,
                budgets,
                limits,
            },
        });
    }
    let unmatched_scope = Scope {
        route: UNMATCHED_ROUTE.into(),
        cluster: None,
        upstream: None,
    };
    live_scopes.insert(unmatched_scope.clone());
    let unmatched = reg.stats.get_or_create(unmatched_scope, workers);

    // Only now, with the whole set built, forget what the new config no longer has.
    endpoints_map.retain(|k, _| live_endpoints.contains(k));
    route_budgets.retain(|k, _| live_budgets.contains(k));
    reg.limits.retain();
    reg.stats.retain(&live_scopes);
    Ok(Cores {
        routes,
        unmatched,
        warnings,
    })
}

/// A route as the periodic steps see it: its config and its decision half.
pub type RouteRef<'a> = (&'a RouteConfig, &'a RouteCore);

/// The config's fingerprint (hash of the config as `/api/v1/config` shows it), hex: the same
/// config gives the same fingerprint in every instance, so telemetry says which config it
/// ran under.
pub fn fingerprint(config: &Config) -> String {
    format!(
        "{:016x}",
        hash64(config.redacted_json().to_string().as_bytes(), 0)
    )
}

/// The clusters as the control step sees them: each with the first route that uses it (whose
/// endpoints and outlier settings are the cluster's).
pub fn cluster_views<'a>(config: &'a Config, routes: &[RouteRef<'a>]) -> Vec<ClusterView<'a>> {
    config
        .clusters
        .iter()
        .filter_map(|(name, c)| {
            let (_, core) = routes.iter().find(|(rc, _)| &rc.cluster == name)?;
            Some(ClusterView {
                name,
                core,
                health: c.health_check.as_ref().map(|hc| HealthSchedule {
                    interval: hc.interval,
                    jitter: hc.jitter,
                }),
            })
        })
        .collect()
}

/// What is in force for each scope, for the telemetry collector: the weight of an endpoint,
/// the concurrency limit and queue depth of a route.
pub fn with_view<R>(
    routes: &[RouteRef<'_>],
    policy_version: u64,
    config_fingerprint: &str,
    f: impl FnOnce(&InForceView<'_>) -> R,
) -> R {
    let route = |s: &Scope| {
        routes
            .iter()
            .find(|(rc, _)| rc.name == s.route)
            .map(|r| r.1)
    };
    let weight = |s: &Scope| -> Option<u32> {
        let up = s.upstream.as_ref()?;
        let r = route(s)?;
        let i = r.endpoints.iter().position(|e| &e.address == up)?;
        r.balancer.weights().get(i).copied()
    };
    let concurrency = |s: &Scope| -> Option<(u32, u64)> {
        if s.upstream.is_some() {
            return None;
        }
        let c = route(s)?.limits.concurrency.as_ref()?;
        Some((c.limit(), u64::from(c.waiting())))
    };
    f(&InForceView {
        policy_version,
        config_fingerprint,
        weight: &weight,
        concurrency: &concurrency,
    })
}

/// Closes the collector's window ending at `end_ms`: the batch of every scope, with what was
/// in force and each endpoint's state at `now`.
#[allow(clippy::too_many_arguments)]
pub fn close_window(
    collector: &mut Collector,
    reg: &Registries,
    routes: &[RouteRef<'_>],
    policy_version: u64,
    config_fingerprint: &str,
    end_ms: u64,
    now: Nanos,
) -> TelemetryBatch {
    let mut batch = with_view(routes, policy_version, config_fingerprint, |view| {
        collector.tick(&reg.stats, end_ms, view)
    });
    mark_endpoint_state(&reg.endpoints(), &mut batch.windows, now);
    batch
}

/// Marks each endpoint window with the endpoint's state at the window's end: ejected,
/// actively unhealthy, breaker open.
fn mark_endpoint_state(eps: &[Arc<EndpointState>], windows: &mut [Telemetry], now: Nanos) {
    for w in windows.iter_mut() {
        let (Some(c), Some(u)) = (&w.scope.cluster, &w.scope.upstream) else {
            continue;
        };
        if let Some(e) = eps.iter().find(|e| &e.cluster == c && &e.address == u) {
            w.resilience.ejected = e.ejected(now);
            w.resilience.unhealthy = !e.actively_healthy();
            w.resilience.breaker_open =
                matches!(e.breaker_view(now), Some((BreakerState::Open, _, _)));
        }
    }
}
