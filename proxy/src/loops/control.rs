//! The control thread's side of the data plane's self-protection: it drives the decision
//! core's control step (adaptive concurrency windows, success-rate sweeps, the health-check
//! schedule) and performs the active health checks the step asks for. Never on a worker; it
//! acts only through the endpoints' and limiters' atomics, which the request path reads.

use crate::body::RequestBody;
use crate::control::{Check, ClusterView, Control};
use crate::snapshot::Snapshot;
use crate::state::Shared;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use vivremotion_decide::build;

/// How often the loop runs the control step.
const STEP: Duration = Duration::from_millis(20);

/// The control thread's driver of [`Control::tick`]: every [`STEP`], the step on the current
/// snapshot, then the health checks it says are due, each in its own task.
pub async fn control_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let workers = shared.config().proxy.workers;
    let mut control = Control::new(shared.seed, workers);
    let mut checks = Vec::new();
    let mut step = tokio::time::interval(STEP);
    step.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = step.tick() => {
                shared.loops.checkpoint(crate::loops::Loop::Control);
                let snap = shared.snapshot.load_full();
                let routes = snap.route_refs();
                let views = build::cluster_views(&snap.config, &routes);
                let limiters = shared.registries.limits.limiters();
                checks.clear();
                control.tick(shared.clock.now(), &views, &limiters, &mut checks);
                for &check in &checks {
                    spawn_check(&snap, &views, check, workers);
                }
            }
        }
    }
}

fn spawn_check(snap: &Arc<Snapshot>, views: &[ClusterView<'_>], check: Check, slot: usize) {
    let Some(view) = views.get(check.cluster) else {
        return;
    };
    let Some(hc) = snap
        .config
        .clusters
        .get(view.name)
        .and_then(|c| c.health_check.clone())
    else {
        return;
    };
    let Some(ri) = snap.routes.iter().position(|r| r.cfg.cluster == view.name) else {
        return;
    };
    let (snap, ei) = (snap.clone(), check.endpoint);
    tokio::spawn(async move {
        let ok = check_once(&snap, ri, ei, &hc.path, hc.timeout, slot).await;
        let Some(e) = snap.routes[ri].endpoints.get(ei) else {
            return;
        };
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
