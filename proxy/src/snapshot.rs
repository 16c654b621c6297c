//! The runtime snapshot: config + policy compiled into what the request path reads.
//!
//! A snapshot is immutable. Config reloads and policy swaps build a whole new one off the
//! request path and publish it with one `ArcSwap::store`; a request loads it once and uses that
//! version to the end, so no request ever sees half a change. Endpoint state, statistics and
//! connection pools are looked up in [`Registries`] while building, so they survive rebuilds.

use crate::balance::{hash::hash64, PickInput};
use crate::body::ScopeRef;
use crate::client::{ClientError, ClusterClients};
use crate::config::{Config, HashOn, RouteConfig};
use crate::endpoint::EndpointState;
use crate::routing;
use crate::telemetry::ScopeStats;
use http::header::HeaderName;
use http::uri::Authority;
use http::{HeaderMap, Method, Uri};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use vivremotion_decide::build::{self, PolicyMismatch};
use vivremotion_decide::flow::{NoEndpoint, Refused, RouteCore};
use vivremotion_protocol::Policy;

pub use vivremotion_decide::build::{WeightSource, UNMATCHED_ROUTE};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Policy(#[from] PolicyMismatch),
    #[error("clusters.{cluster}: {source}")]
    Client {
        cluster: String,
        #[source]
        source: ClientError,
    },
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

    /// Every route's config and decision half, for the periodic steps.
    pub fn route_refs(&self) -> Vec<build::RouteRef<'_>> {
        self.routes.iter().map(|r| (&r.cfg, &r.core)).collect()
    }

    pub fn policy_version(&self) -> u64 {
        self.policy.as_ref().map_or(0, |p| p.version)
    }
}

/// State that outlives snapshots: the decision core's (endpoint load, statistics, budgets,
/// limiters; reached through `Deref`) and the connection pools.
#[derive(Default)]
pub struct Registries {
    pub core: build::Registries,
    clients: Mutex<HashMap<String, Arc<ClusterClients>>>,
}

impl std::ops::Deref for Registries {
    type Target = build::Registries;
    fn deref(&self) -> &build::Registries {
        &self.core
    }
}

impl std::ops::DerefMut for Registries {
    fn deref_mut(&mut self) -> &mut build::Registries {
        &mut self.core
    }
}

/// What a build produced besides the snapshot.
pub struct Built {
    pub snapshot: Snapshot,
    /// Policy entries that no longer match the config (only when not strict).
    pub warnings: Vec<String>,
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
    let workers = config.proxy.workers;
    if let (true, Some(p)) = (strict, &policy) {
        build::check_policy(&config, p)?;
    }
    // Connection pools first: a transport that cannot be built fails the build before the
    // decision state is touched.
    let mut clients_map = reg.clients.lock().unwrap_or_else(|p| p.into_inner());
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
    let cores = build::cores(&config, policy.as_deref(), strict, &reg.core, clock)?;
    let mut routes = Vec::with_capacity(cores.routes.len());
    for cr in cores.routes {
        let rc = &config.routes[cr.index];
        let (Some(cluster), Some(clients)) = (
            config.clusters.get(&rc.cluster),
            new_clients.get(&rc.cluster),
        ) else {
            continue;
        };
        // Validation has parsed every address as an authority.
        let authorities = cluster
            .endpoints
            .iter()
            .map(|e| {
                e.address
                    .parse::<Authority>()
                    .unwrap_or_else(|_| Authority::from_static("invalid.invalid"))
            })
            .collect();
        routes.push(RouteRuntime {
            cfg: rc.clone(),
            clients: clients.clone(),
            authorities,
            weight_sources: cr.weight_sources,
            hash_on: cluster.hash_on.clone(),
            core: cr.core,
        });
    }
    *clients_map = new_clients;
    let warnings = cores.warnings;
    let unmatched = cores.unmatched;

    Ok(Built {
        snapshot: Snapshot {
            generation,
            config_fingerprint: build::fingerprint(&config),
            clock: clock.clone(),
            config,
            policy,
            routes: routes.into(),
            unmatched,
        },
        warnings,
    })
}
