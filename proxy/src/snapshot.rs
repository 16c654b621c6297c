//! The runtime snapshot: config + policy compiled into what the request path reads.
//!
//! A snapshot is immutable. Config reloads and policy swaps build a whole new one off the
//! request path and publish it with one `ArcSwap::store`; a request loads it once and uses that
//! version to the end, so no request ever sees half a change. Endpoint state, statistics and
//! connection pools are looked up in [`Registries`] while building, so they survive rebuilds.

use crate::balance::{hash::hash64, Balancer, PickInput};
use crate::body::ScopeRef;
use crate::client::{ClientError, ClusterClients};
use crate::config::{Config, HashOn, RouteConfig};
use crate::endpoint::EndpointState;
use crate::routing;
use crate::telemetry::{ScopeStats, StatsRegistry};
use http::header::HeaderName;
use http::uri::Authority;
use http::{HeaderMap, Method, Uri};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use vivremotion_decide::flow::{NoEndpoint, Refused, RetryBudgets, RouteCore};
use vivremotion_protocol::telemetry::Scope;
use vivremotion_protocol::Policy;

/// Scope name of requests answered before any route matched.
pub const UNMATCHED_ROUTE: &str = "(unmatched)";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("routes.{route}.rate_limits.{limit}: the route has no rate limit of that name")]
    PolicyUnknownLimit { route: String, limit: String },
    #[error("routes.{route}: the policy names a route the config does not have")]
    PolicyUnknownRoute { route: String },
    #[error("routes.{route}.upstream_weights.{endpoint}: not an endpoint of cluster {cluster:?}")]
    PolicyUnknownEndpoint {
        route: String,
        endpoint: String,
        cluster: String,
    },
    #[error("routes.{route}.upstream_weights: with this policy every endpoint of the route has weight 0")]
    PolicyAllZero { route: String },
    #[error("clusters.{cluster}: {source}")]
    Client {
        cluster: String,
        #[source]
        source: ClientError,
    },
}

/// Where an endpoint's effective weight came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightSource {
    Config,
    Policy,
}

pub struct RouteRuntime {
    pub cfg: RouteConfig,
    pub clients: Arc<ClusterClients>,
    pub authorities: Box<[Authority]>,
    pub weight_sources: Box<[WeightSource]>,
    pub hash_on: Option<HashOn>,
    /// What the request flow decides with: endpoints, balancer, limits, budgets, stats.
    pub core: RouteCore,
}

/// A route is read mostly for its decision half: `route.endpoints` is `route.core.endpoints`.
impl std::ops::Deref for RouteRuntime {
    type Target = RouteCore;
    fn deref(&self) -> &RouteCore {
        &self.core
    }
}

impl RouteRuntime {
    /// The affinity key hash of a request, if the cluster hashes and the key is present.
    pub fn key_hash(&self, headers: &HeaderMap, client: IpAddr) -> Option<u64> {
        self.key_hash_with(|n| headers.get(n).map(|v| v.as_bytes()), client)
    }

    /// [`Self::key_hash`] with the first value of a header looked up by `header`.
    pub fn key_hash_with<'a>(
        &self,
        header: impl FnOnce(&HeaderName) -> Option<&'a [u8]>,
        client: IpAddr,
    ) -> Option<u64> {
        match &self.hash_on {
            None => None,
            Some(HashOn::ClientIp) => Some(match client {
                IpAddr::V4(a) => hash64(&a.octets(), 0),
                IpAddr::V6(a) => hash64(&a.octets(), 0),
            }),
            Some(HashOn::Header(n)) => header(n).map(|v| hash64(v, 0)),
        }
    }

    pub fn pick<R: rand::Rng + ?Sized>(&self, input: &PickInput, rng: &mut R) -> Option<usize> {
        self.balancer.pick(&self.endpoints, input, rng)
    }

    /// The answer to a request the flow refused; an admission refusal also goes into its
    /// access log line.
    pub fn refused(
        &self,
        r: &Refused,
        priority: vivremotion_protocol::telemetry::Priority,
        access: &mut Option<Box<crate::access_log::RequestInfo>>,
    ) -> crate::error::ProxyError {
        let err = self.refusal(r);
        let shed = matches!(r, Refused::Admission(_)).then_some(&err);
        crate::access_log::RequestInfo::admission(access, priority, shed);
        err
    }

    fn refusal(&self, r: &Refused) -> crate::error::ProxyError {
        use crate::error::ProxyError;
        let cluster = self.cfg.cluster.clone();
        match r {
            Refused::Admission(a) => crate::limits::refusal_error(&self.limits, a),
            Refused::NoEndpoint(NoEndpoint::None) => ProxyError::NoEndpoint { cluster },
            Refused::NoEndpoint(NoEndpoint::CircuitOpen) => ProxyError::CircuitOpen { cluster },
        }
    }
}

pub struct Snapshot {
    /// Increases with every snapshot built by this process.
    pub generation: u64,
    /// Hash of the config (as `/api/v1/config` shows it), hex: the same config gives the same
    /// fingerprint in every instance, so telemetry says which config it ran under.
    pub config_fingerprint: String,
    /// The process clock, for work done when a request ends (pooling connections).
    pub clock: Arc<dyn vivremotion_protocol::Clock>,
    pub config: Arc<Config>,
    pub policy: Option<Arc<Policy>>,
    pub routes: Box<[RouteRuntime]>,
    unmatched: Arc<ScopeStats>,
}

impl Snapshot {
    pub fn stats(&self, scope: ScopeRef) -> &ScopeStats {
        match scope {
            ScopeRef::Unmatched => &self.unmatched,
            ScopeRef::Route(r) => self
                .routes
                .get(r as usize)
                .map_or(&*self.unmatched, |r| &*r.route_stats),
            ScopeRef::Endpoint { route, endpoint } => self
                .routes
                .get(route as usize)
                .and_then(|r| r.stats.get(endpoint as usize))
                .map_or(&*self.unmatched, |s| &**s),
        }
    }

    pub fn endpoint(&self, route: u32, endpoint: u32) -> Option<&EndpointState> {
        self.routes
            .get(route as usize)
            .and_then(|r| r.endpoints.get(endpoint as usize))
            .map(|e| &**e)
    }

    /// Index of the first route matching the request.
    pub fn route_for(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<usize> {
        self.route_for_view(&routing::HttpRequest {
            method,
            uri,
            headers,
        })
    }

    pub fn route_for_view(&self, r: &impl routing::RequestView) -> Option<usize> {
        self.routes
            .iter()
            .position(|rt| routing::matches_view(&rt.cfg.matcher, r))
    }

    pub fn policy_version(&self) -> u64 {
        self.policy.as_ref().map_or(0, |p| p.version)
    }
}

/// State that outlives snapshots: endpoint load, statistics and connection pools.
#[derive(Default)]
pub struct Registries {
    pub stats: StatsRegistry,
    endpoints: Mutex<HashMap<(String, String), Arc<EndpointState>>>,
    clients: Mutex<HashMap<String, Arc<ClusterClients>>>,
    route_budgets: Mutex<HashMap<String, Arc<RetryBudgets>>>,
    pub limits: crate::limits::LimitRegistry,
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

/// What a build produced besides the snapshot.
pub struct Built {
    pub snapshot: Snapshot,
    /// Policy entries that no longer match the config (only when not strict).
    pub warnings: Vec<String>,
}

/// Every reason a new policy does not fit the config, checked before any state changes.
fn check_policy(config: &Config, p: &Policy) -> Result<(), BuildError> {
    for (name, o) in &p.routes {
        let Some(rc) = config.routes.iter().find(|r| &r.name == name) else {
            return Err(BuildError::PolicyUnknownRoute {
                route: name.clone(),
            });
        };
        if let Some(limit) = o
            .rate_limits
            .keys()
            .find(|l| !rc.rate_limits.iter().any(|c| &c.name == *l))
        {
            return Err(BuildError::PolicyUnknownLimit {
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
            return Err(BuildError::PolicyUnknownEndpoint {
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
            return Err(BuildError::PolicyAllZero {
                route: name.clone(),
            });
        }
    }
    Ok(())
}

/// Compile `config` + `policy` into a snapshot.
///
/// With `strict`, a policy naming unknown routes or endpoints is an error (a new policy is
/// being applied); without, such entries are skipped with a warning (the config changed under
/// a policy that was valid when it arrived).
pub fn build(
    config: Arc<Config>,
    policy: Option<Arc<Policy>>,
    strict: bool,
    reg: &Registries,
    generation: u64,
    clock: &Arc<dyn vivremotion_protocol::Clock>,
) -> Result<Built, BuildError> {
    let now = clock.now();
    let workers = config.proxy.workers;
    let mut warnings = Vec::new();
    // Building touches state that outlives snapshots (limiters, budgets, breakers): a policy
    // that is going to be rejected must be rejected before anything is touched. Past this
    // check, policy entries that do not fit are only warned about (the config changed).
    if let (true, Some(p)) = (strict, &policy) {
        check_policy(&config, p)?;
    }
    reg.limits.begin();
    if let Some(p) = &policy {
        for name in p.routes.keys() {
            if !config.routes.iter().any(|r| &r.name == name) {
                warnings.push(format!(
                    "policy route {name:?} is not in the config; ignored"
                ));
            }
        }
    }

    let mut clients_map = reg.clients.lock().unwrap_or_else(|p| p.into_inner());
    let mut endpoints_map = reg.endpoints.lock().unwrap_or_else(|p| p.into_inner());
    let mut route_budgets = reg.route_budgets.lock().unwrap_or_else(|p| p.into_inner());
    let mut live_budgets = HashSet::new();
    let mut new_clients = HashMap::new();
    for (name, c) in &config.clusters {
        let clients = match clients_map.get(name) {
            Some(existing) if existing.transport == c.transport => existing.clone(),
            _ => Arc::new(
                ClusterClients::build(&c.transport, workers).map_err(|source| {
                    BuildError::Client {
                        cluster: name.clone(),
                        source,
                    }
                })?,
            ),
        };
        new_clients.insert(name.clone(), clients);
    }

    let mut routes = Vec::with_capacity(config.routes.len());
    let mut live_scopes = HashSet::new();
    let mut live_endpoints = HashSet::new();
    for rc in &config.routes {
        // Validation guarantees the cluster exists; a missing one would be a bug, skip safely.
        let (Some(cluster), Some(clients)) = (
            config.clusters.get(&rc.cluster),
            new_clients.get(&rc.cluster),
        ) else {
            continue;
        };
        let overrides = policy.as_ref().and_then(|p| p.routes.get(&rc.name));
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
        let mut eps = Vec::new();
        let mut auths = Vec::new();
        let mut weights = Vec::new();
        let mut sources = Vec::new();
        let mut stats = Vec::new();
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
            let Ok(auth) = e.address.parse::<Authority>() else {
                continue;
            };
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
            auths.push(auth);
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
        routes.push(RouteRuntime {
            cfg: rc.clone(),
            clients: clients.clone(),
            authorities: auths.into(),
            weight_sources: sources.into(),
            hash_on: cluster.hash_on.clone(),
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

    // Only now, with the whole snapshot built, forget what the new config no longer has.
    *clients_map = new_clients;
    endpoints_map.retain(|k, _| live_endpoints.contains(k));
    route_budgets.retain(|k, _| live_budgets.contains(k));
    reg.limits.retain();
    reg.stats.retain(&live_scopes);

    Ok(Built {
        snapshot: Snapshot {
            generation,
            config_fingerprint: format!(
                "{:016x}",
                hash64(config.redacted_json().to_string().as_bytes(), 0)
            ),
            clock: clock.clone(),
            config,
            policy,
            routes: routes.into(),
            unmatched,
        },
        warnings,
    })
}
