//! Control-side loops of the data plane's self-protection: active health checks and
//! success-rate outlier detection. They run on the control thread, never on a worker, and act
//! only through the endpoints' atomics, which the request path reads.

use crate::body::RequestBody;
use crate::guard::outlier::success_rate_outliers;
use crate::snapshot::Snapshot;
use crate::state::Shared;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use vivremotion_protocol::Nanos;

/// How often the loop looks for due work.
const STEP: Duration = Duration::from_millis(20);

pub async fn guard_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut rng = SmallRng::seed_from_u64(shared.seed ^ 0x4845_414c_5448);
    // Next check per (cluster, endpoint address); next success-rate sweep per cluster.
    let mut next_check: HashMap<(String, String), Nanos> = HashMap::new();
    let mut next_sweep: HashMap<String, Nanos> = HashMap::new();
    let mut next_window: HashMap<String, Nanos> = HashMap::new();
    let mut step = tokio::time::interval(STEP);
    step.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = step.tick() => {
                let snap = shared.snapshot.load_full();
                let now = shared.clock.now();
                schedule_checks(&snap, now, &mut next_check, &mut rng);
                sweep_success_rates(&snap, now, &mut next_sweep);
                adapt_concurrency(&shared, now, &mut next_window);
            }
        }
    }
}

/// Close the adaptive concurrency windows that are due (to the nearest step).
fn adapt_concurrency(shared: &Shared, now: Nanos, next: &mut HashMap<String, Nanos>) {
    let limiters = shared.registries.limits.limiters();
    for (route, lim) in &limiters {
        let Some(window) = lim.window() else {
            continue;
        };
        let due = next
            .entry(route.clone())
            .or_insert(now.saturating_add(window));
        if now >= *due {
            let before = lim.limit();
            let after = lim.tick(now);
            if before != after {
                tracing::trace!(route = %route, before, after, "adaptive concurrency limit");
            }
            *due = now.saturating_add(window);
        }
    }
    next.retain(|r, _| limiters.iter().any(|(n, _)| n == r));
}

fn schedule_checks(
    snap: &Arc<Snapshot>,
    now: Nanos,
    next: &mut HashMap<(String, String), Nanos>,
    rng: &mut SmallRng,
) {
    let workers = snap.config.proxy.workers;
    let mut seen = std::collections::HashSet::new();
    for (cname, cluster) in &snap.config.clusters {
        let Some(hc) = &cluster.health_check else {
            continue;
        };
        // Any route of the cluster carries its endpoints and connection pools.
        let Some((ri, route)) = snap
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| &r.cfg.cluster == cname)
        else {
            continue;
        };
        for (ei, e) in route.endpoints.iter().enumerate() {
            let key = (cname.clone(), e.address.clone());
            seen.insert(key.clone());
            let due = next.entry(key.clone()).or_insert_with(|| {
                // Spread the first checks over one interval.
                now.saturating_add(hc.interval.mul_f64(rng.random_range(0.0..1.0)))
            });
            if now < *due {
                continue;
            }
            let jitter = hc.jitter.mul_f64(rng.random_range(0.0..=1.0));
            *due = now.saturating_add(hc.interval + jitter);
            let (snap, hc) = (snap.clone(), hc.clone());
            tokio::spawn(async move {
                let route = &snap.routes[ri];
                let e = &route.endpoints[ei];
                let ok = check_once(&snap, ri, ei, &hc.path, hc.timeout, workers).await;
                if let Some(healthy) =
                    e.record_health_check(ok, hc.healthy_threshold, hc.unhealthy_threshold)
                {
                    if healthy {
                        tracing::info!(endpoint = %e.address, cluster = %e.cluster, "health check passing: endpoint back in rotation");
                    } else {
                        tracing::warn!(endpoint = %e.address, cluster = %e.cluster, "health check failing: endpoint out of rotation");
                    }
                }
            });
        }
    }
    next.retain(|k, _| seen.contains(k));
}

/// One check: `GET path` through the cluster's own transport (TLS, HTTP/2 as configured), on
/// the pool slot no worker uses. 2xx and 3xx are healthy.
async fn check_once(
    snap: &Snapshot,
    ri: usize,
    ei: usize,
    path: &str,
    timeout: Duration,
    slot: usize,
) -> bool {
    let route = &snap.routes[ri];
    let e = &route.endpoints[ei];
    let auth = &route.authorities[ei];
    let uri = format!("{}://{}{}", route.clients.scheme, auth, path);
    let Ok(req) = http::Request::get(uri)
        .header(http::header::HOST, auth.as_str())
        .header(http::header::USER_AGENT, "vivremotion-health-check")
        .body(RequestBody::empty())
    else {
        return false;
    };
    let now = snap.clock.now();
    let send = route.clients.send(slot, e.id, auth, req, now);
    match tokio::time::timeout(timeout, send).await {
        Ok(Ok(resp)) => {
            let ok = resp.status().is_success() || resp.status().is_redirection();
            // Read the body so the connection can serve the next check.
            let _ =
                tokio::time::timeout(timeout, http_body_util::BodyExt::collect(resp.into_body()))
                    .await;
            ok
        }
        _ => false,
    }
}

/// Every cluster's `outlier.interval`: eject endpoints whose success rate is far below their
/// peers' (within the ejection share), forgive one past ejection of the others.
fn sweep_success_rates(snap: &Snapshot, now: Nanos, next: &mut HashMap<String, Nanos>) {
    for (cname, cluster) in &snap.config.clusters {
        let cfg = &cluster.outlier;
        let due = next
            .entry(cname.clone())
            .or_insert_with(|| now.saturating_add(cfg.interval));
        if now < *due {
            continue;
        }
        *due = now.saturating_add(cfg.interval);
        let Some(route) = snap.routes.iter().find(|r| &r.cfg.cluster == cname) else {
            continue;
        };
        let stats: Vec<(u64, u64)> = route
            .endpoints
            .iter()
            .map(|e| e.take_success_counts())
            .collect();
        let outliers = success_rate_outliers(&stats, cfg);
        for (i, e) in route.endpoints.iter().enumerate() {
            if outliers[i] {
                let (q, ok) = stats[i];
                let why = format!("success rate {ok}/{q} far below its peers");
                route.try_eject(snap.config.proxy.workers, i, now, &why);
            } else {
                e.forgive_one(now);
            }
        }
    }
}
