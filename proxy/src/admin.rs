//! The admin API, on its own port: metrics, health, config, upstreams, telemetry, policy, and
//! (under `vivremotion up`) the demo upstreams' controls.
//!
//! Every error is JSON `{"error":{"type","message"}}` with a fitting status.

use crate::balance::LoadView;
use crate::demo::{DemoSettingsPatch, DemoUpstreams};
use crate::error::json_error_body;
use crate::state::Shared;

/// A request to re-read the config file, answered with the warnings or the errors.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<Vec<String>, String>>;
use crate::telemetry::prometheus::{escape, render_scopes};
use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};
use std::fmt::Write;
use std::sync::{Arc, OnceLock};

/// Largest request body the admin API reads (policies, demo settings).
const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// The process-wide `metrics` recorder, installed on first use, with every family it will
/// carry described and its known series registered at 0: `promtool check metrics` wants a
/// HELP line for each family, and `rate()` needs a series to exist before its first event.
pub fn metrics_handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let h = PrometheusBuilder::new().install_recorder().ok();
            if h.is_some() {
                register_process_metrics();
            }
            h
        })
        .as_ref()
}

fn register_process_metrics() {
    use metrics::{counter, describe_counter, describe_gauge, gauge};
    describe_counter!(
        "vivremotion_proxy_config_reloads_total",
        "Config reloads by result (applied, rejected: the previous config kept serving)."
    );
    for result in ["applied", "rejected"] {
        counter!("vivremotion_proxy_config_reloads_total", "result" => result).increment(0);
    }
    describe_counter!(
        "vivremotion_proxy_policy_applied_total",
        "Policies applied (admin API or bus)."
    );
    counter!("vivremotion_proxy_policy_applied_total").increment(0);
    describe_counter!(
        "vivremotion_proxy_policy_rejected_total",
        "Policies rejected by reason; nothing changed."
    );
    for reason in crate::state::PolicyRejected::REASONS {
        counter!("vivremotion_proxy_policy_rejected_total", "reason" => reason).increment(0);
    }
    describe_gauge!(
        "vivremotion_proxy_policy_version",
        "Version of the policy in force (0: none, the config's values apply)."
    );
    gauge!("vivremotion_proxy_policy_version").set(0.0);
    describe_counter!(
        "vivremotion_proxy_accept_errors_total",
        "Failed accepts on a proxy listener (e.g. out of file descriptors)."
    );
    counter!("vivremotion_proxy_accept_errors_total").increment(0);
}

pub struct Admin {
    pub shared: Arc<Shared>,
    pub demo: Option<Arc<DemoUpstreams>>,
    /// Asks the control loop to re-read the config file.
    pub reload: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, kind: &str, message: &str) -> Resp {
    let mut r = Response::new(Full::new(json_error_body(kind, message, None)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("use {allow}"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Resp> {
    let body = Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|e| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("cannot read body (limit {MAX_ADMIN_BODY} bytes): {e}"),
            )
        })?
        .to_bytes();
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let msg = if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        };
        error(StatusCode::BAD_REQUEST, "invalid_json", &msg)
    })
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Admin {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_string();
        let m = req.method().clone();
        // HEAD is GET without the body (hyper leaves the body out and keeps its length).
        let get = m == Method::GET || m == Method::HEAD;
        match path.as_str() {
            "/metrics" if get => self.metrics(),
            "/healthz" if get => json_response(StatusCode::OK, &json!({"status": "ok"})),
            "/readyz" if get => self.readyz(),
            "/api/v1/config" if get => self.config(),
            "/api/v1/config/reload" if m == Method::POST => self.reload().await,
            "/api/v1/upstreams" if get => self.upstreams(),
            "/api/v1/limits" if get => json_response(
                StatusCode::OK,
                &crate::limits::describe(&self.shared.snapshot.load()),
            ),
            "/api/v1/telemetry" if get => self.telemetry(&req),
            "/api/v1/telemetry/batches" if get => {
                let since = query_param(&req, "since").and_then(|s| s.parse().ok());
                let batches = self.shared.telemetry.batches(since);
                let batches: Vec<&vivremotion_protocol::telemetry::TelemetryBatch> =
                    batches.iter().map(|b| &**b).collect();
                json_response(StatusCode::OK, &json!({ "batches": batches }))
            }
            "/api/v1/policy" if get => self.get_policy(),
            "/api/v1/policy" if m == Method::PUT || m == Method::POST => self.put_policy(req).await,
            "/api/v1/debug/faults" if m == Method::POST => self.faults(req).await,
            "/api/v1/demo/upstreams" if get => self.demo_list(),
            p if p.starts_with("/api/v1/demo/upstreams/") && m == Method::POST => {
                let name = p["/api/v1/demo/upstreams/".len()..].to_string();
                self.demo_set(&name, req).await
            }
            p if p.starts_with("/api/v1/demo/upstreams/") && get => {
                let name = p["/api/v1/demo/upstreams/".len()..].to_string();
                self.demo_get(&name)
            }
            "/metrics" | "/healthz" | "/readyz" | "/api/v1/config" | "/api/v1/upstreams" | "/api/v1/limits"
            | "/api/v1/telemetry" | "/api/v1/telemetry/batches" | "/api/v1/demo/upstreams" => {
                method_not_allowed("GET, HEAD")
            }
            "/api/v1/policy" => method_not_allowed("GET, HEAD, PUT, POST"),
            "/api/v1/config/reload" => method_not_allowed("POST"),
            p if p.starts_with("/api/v1/demo/upstreams/") => method_not_allowed("GET, HEAD, POST"),
            _ => error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no admin endpoint {path}; see /api/v1/config, /api/v1/upstreams, /api/v1/telemetry, /api/v1/policy, /metrics"),
            ),
        }
    }

    fn readyz(&self) -> Resp {
        if self
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            // Requests with a try in progress at an upstream (not those waiting in an
            // admission queue or a retry backoff).
            let in_flight: i64 = self
                .shared
                .registries
                .stats
                .all()
                .iter()
                .filter(|s| s.scope.upstream.is_some())
                .map(|s| s.totals().in_flight.max(0))
                .sum();
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "draining", "upstream_in_flight": in_flight}),
            )
        } else {
            let loops = &self.shared.loops;
            let detail: serde_json::Map<String, serde_json::Value> = crate::loops::Loop::ALL
                .into_iter()
                .map(|l| {
                    let v = json!({"up": !loops.is_down(l), "restarts": loops.restarts(l)});
                    (l.name().to_string(), v)
                })
                .collect();
            let down = loops.down();
            if down.is_empty() {
                json_response(
                    StatusCode::OK,
                    &json!({"status": "ready", "control_loops": detail}),
                )
            } else {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "control_loop_down", "down": down, "control_loops": detail}),
                )
            }
        }
    }

    /// `POST /api/v1/debug/faults {"loop": "guard", "panic": true}`: arm or disarm an injected
    /// panic in a control loop. Only with `VIVREMOTION_TEST_FAULTS=1` (tests).
    async fn faults(&self, req: Request<Incoming>) -> Resp {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fault {
            #[serde(rename = "loop")]
            which: String,
            panic: bool,
        }
        if !self.shared.loops.faults {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "fault injection is off (set VIVREMOTION_TEST_FAULTS=1)",
            );
        }
        let f: Fault = match read_json(req).await {
            Ok(f) => f,
            Err(r) => return r,
        };
        let Some(l) = crate::loops::Loop::parse(&f.which) else {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_loop",
                &format!(
                    "no control loop {:?}; one of telemetry, control, lease",
                    f.which
                ),
            );
        };
        self.shared.loops.arm(l, f.panic);
        json_response(StatusCode::OK, &json!({"loop": l.name(), "panic": f.panic}))
    }

    fn config(&self) -> Resp {
        let snap = self.shared.snapshot.load();
        json_response(
            StatusCode::OK,
            &json!({
                "generation": snap.generation,
                "policy_version": snap.policy_version(),
                "config": snap.config.redacted_json(),
            }),
        )
    }

    async fn reload(&self) -> Resp {
        let Some(tx) = &self.reload else {
            return error(
                StatusCode::CONFLICT,
                "no_config_file",
                "this process was not started from a config file; nothing to reload",
            );
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        if tx.send(done_tx).await.is_err() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the reloader has stopped",
            );
        }
        match done_rx.await {
            Ok(Ok(warnings)) => json_response(
                StatusCode::OK,
                &json!({"reloaded": true, "warnings": warnings}),
            ),
            Ok(Err(msg)) => error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", &msg),
            Err(_) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the reloader has stopped",
            ),
        }
    }

    fn upstreams(&self) -> Resp {
        let snap = self.shared.snapshot.load();
        let now = self.shared.clock.now();
        let mut endpoints = Vec::new();
        for (cname, cluster) in &snap.config.clusters {
            for e in &cluster.endpoints {
                let state = snap
                    .routes
                    .iter()
                    .filter(|r| &r.cfg.cluster == cname)
                    .find_map(|r| r.endpoints.iter().find(|s| s.address == e.address));
                let mut routes = serde_json::Map::new();
                for r in snap.routes.iter().filter(|r| &r.cfg.cluster == cname) {
                    if let Some(i) = r.endpoints.iter().position(|s| s.address == e.address) {
                        routes.insert(
                            r.cfg.name.clone(),
                            json!({"weight": r.balancer.weights()[i], "source": r.weight_sources[i]}),
                        );
                    }
                }
                let mut v = json!({
                    "cluster": cname,
                    "address": e.address,
                    "balancer": cluster.balancer,
                    "weight": e.weight,
                    "route_weights": routes,
                });
                if let Some(s) = state {
                    v["in_flight"] = json!(s.in_flight());
                    v["ewma_ms"] = json!((s.latency_ns(now) / 1e6 * 1000.0).round() / 1000.0);
                    v["health"] = json!(s.health());
                    v["consecutive_failures"] = json!(s.consecutive_failures());
                    v["last_failure_unix_ms"] = json!(s.last_failure_unix_ms());
                    v["available"] = json!(s.is_available(now));
                    v["active_health"] = json!(if s.actively_healthy() {
                        "healthy"
                    } else {
                        "unhealthy"
                    });
                    v["health_check_failures"] = json!(s
                        .health_check_failures
                        .load(std::sync::atomic::Ordering::Relaxed));
                    v["ejection"] = json!({
                        "ejected": s.ejected(now),
                        "remaining_ms": s.ejected_until().map(|t| t.saturating_since(now).as_millis() as u64).filter(|&ms| ms > 0),
                        "times_ejected": s.times_ejected(),
                        "ejections_total": s.ejections_total.load(std::sync::atomic::Ordering::Relaxed),
                    });
                    v["breaker"] = match s.breaker_view(now) {
                        Some((state, trips, last)) => {
                            json!({"state": state, "trips": trips, "last_trip": last})
                        }
                        None => json!(null),
                    };
                } else {
                    // The cluster is not used by any route: nothing is known about it.
                    v["health"] = json!("unused");
                }
                endpoints.push(v);
            }
        }
        json_response(
            StatusCode::OK,
            &json!({"policy_version": snap.policy_version(), "endpoints": endpoints}),
        )
    }

    fn telemetry(&self, req: &Request<Incoming>) -> Resp {
        let limit = match query_param(req, "limit").map(str::parse::<usize>) {
            None => None,
            Some(Ok(n)) if n > 0 => Some(n.min(100_000)),
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    "limit: expected a whole number from 1 to 100000",
                )
            }
        };
        let since = match query_param(req, "since").map(str::parse::<u64>) {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(_)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    "since: not a sequence number (use next_since from the previous answer)",
                )
            }
        };
        // A follower that gives no limit still gets a bounded answer.
        let limit = limit.or(since.map(|_| 10_000));
        json_response(
            StatusCode::OK,
            &json!(self.shared.telemetry.page(since, limit)),
        )
    }

    fn get_policy(&self) -> Resp {
        match &self.shared.snapshot.load().policy {
            Some(p) => json_response(StatusCode::OK, &json!(p.as_ref())),
            None => error(
                StatusCode::NOT_FOUND,
                "no_policy",
                "no policy has been applied; the config's weights are in force",
            ),
        }
    }

    async fn put_policy(&self, req: Request<Incoming>) -> Resp {
        let policy: vivremotion_protocol::Policy = match read_json(req).await {
            Ok(p) => p,
            Err(r) => return r,
        };
        match self.shared.apply_policy(policy) {
            Ok(v) => json_response(StatusCode::OK, &json!({"applied": true, "version": v})),
            Err(e) => {
                let status = if e.reason() == "stale" {
                    StatusCode::CONFLICT
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                };
                error(status, &format!("policy_{}", e.reason()), &e.to_string())
            }
        }
    }

    fn no_demo() -> Resp {
        error(
            StatusCode::NOT_FOUND,
            "no_demo",
            "demo upstreams run only under `vivremotion up`",
        )
    }

    fn demo_list(&self) -> Resp {
        match &self.demo {
            Some(d) => json_response(StatusCode::OK, &json!({"upstreams": d.describe()})),
            None => Self::no_demo(),
        }
    }

    fn demo_get(&self, name: &str) -> Resp {
        let Some(d) = &self.demo else {
            return Self::no_demo();
        };
        match d.get(name) {
            Some(u) => json_response(StatusCode::OK, &u.describe()),
            None => error(
                StatusCode::NOT_FOUND,
                "unknown_upstream",
                &format!("no demo upstream {name:?}; have {}", d.names().join(", ")),
            ),
        }
    }

    async fn demo_set(&self, name: &str, req: Request<Incoming>) -> Resp {
        let Some(d) = &self.demo else {
            return Self::no_demo();
        };
        let Some(u) = d.get(name) else {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_upstream",
                &format!("no demo upstream {name:?}; have {}", d.names().join(", ")),
            );
        };
        let patch: DemoSettingsPatch = match read_json(req).await {
            Ok(p) => p,
            Err(r) => return r,
        };
        match u.apply(patch).await {
            Ok(()) => json_response(StatusCode::OK, &u.describe()),
            Err(msg) => error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_settings", &msg),
        }
    }

    fn metrics(&self) -> Resp {
        let mut out = String::with_capacity(16 * 1024);
        if let Some(h) = metrics_handle() {
            out.push_str(&h.render());
        }
        render_scopes(&mut out, &self.shared.registries.stats.all());
        crate::limits::render_metrics(&mut out, &self.shared.registries.limits);
        let loops = &self.shared.loops;
        let _ = writeln!(out, "# HELP vivremotion_proxy_control_loop_up 1 while a control loop runs, 0 while it is down after a panic.");
        let _ = writeln!(out, "# TYPE vivremotion_proxy_control_loop_up gauge");
        for l in crate::loops::Loop::ALL {
            let up = u8::from(!loops.is_down(l));
            let _ = writeln!(
                out,
                "vivremotion_proxy_control_loop_up{{loop=\"{}\"}} {up}",
                l.name()
            );
        }
        let _ = writeln!(out, "# HELP vivremotion_proxy_control_loop_restarts_total Control loops restarted after a panic.");
        let _ = writeln!(
            out,
            "# TYPE vivremotion_proxy_control_loop_restarts_total counter"
        );
        for l in crate::loops::Loop::ALL {
            let _ = writeln!(
                out,
                "vivremotion_proxy_control_loop_restarts_total{{loop=\"{}\"}} {}",
                l.name(),
                loops.restarts(l)
            );
        }
        let snap = self.shared.snapshot.load();
        let now = self.shared.clock.now();
        let eps = self.shared.registries.endpoints();
        let _ = writeln!(
            out,
            "# HELP vivremotion_proxy_upstream_in_flight Requests in flight to an endpoint."
        );
        let _ = writeln!(out, "# TYPE vivremotion_proxy_upstream_in_flight gauge");
        for e in &eps {
            let _ = writeln!(
                out,
                "vivremotion_proxy_upstream_in_flight{{cluster=\"{}\",upstream=\"{}\"}} {}",
                escape(&e.cluster),
                escape(&e.address),
                e.in_flight()
            );
        }
        let _ = writeln!(out, "# HELP vivremotion_proxy_upstream_ewma_seconds Peak-EWMA latency estimate of an endpoint.");
        let _ = writeln!(out, "# TYPE vivremotion_proxy_upstream_ewma_seconds gauge");
        for e in &eps {
            let _ = writeln!(
                out,
                "vivremotion_proxy_upstream_ewma_seconds{{cluster=\"{}\",upstream=\"{}\"}} {}",
                escape(&e.cluster),
                escape(&e.address),
                e.latency_ns(now) / 1e9
            );
        }
        let _ = writeln!(out, "# HELP vivremotion_proxy_upstream_healthy 1 if the endpoint is healthy, 0 if it is failing.");
        let _ = writeln!(out, "# TYPE vivremotion_proxy_upstream_healthy gauge");
        for e in &eps {
            let v = u8::from(e.health() == crate::endpoint::HealthState::Healthy);
            let _ = writeln!(
                out,
                "vivremotion_proxy_upstream_healthy{{cluster=\"{}\",upstream=\"{}\"}} {v}",
                escape(&e.cluster),
                escape(&e.address)
            );
        }
        let _ = writeln!(out, "# HELP vivremotion_proxy_upstream_available 1 if the balancer may pick the endpoint: not ejected, not failing active health checks, breaker not open.");
        let _ = writeln!(out, "# TYPE vivremotion_proxy_upstream_available gauge");
        for e in &eps {
            let _ = writeln!(
                out,
                "vivremotion_proxy_upstream_available{{cluster=\"{}\",upstream=\"{}\"}} {}",
                escape(&e.cluster),
                escape(&e.address),
                u8::from(e.is_available(now))
            );
        }
        let _ = writeln!(out, "# HELP vivremotion_proxy_upstream_breaker_state Circuit breaker: 0 closed, 1 half-open, 2 open (absent: no breaker).");
        let _ = writeln!(out, "# TYPE vivremotion_proxy_upstream_breaker_state gauge");
        for e in &eps {
            if let Some((state, _, _)) = e.breaker_view(now) {
                let v = match state {
                    crate::guard::breaker::BreakerState::Closed => 0,
                    crate::guard::breaker::BreakerState::HalfOpen => 1,
                    crate::guard::breaker::BreakerState::Open => 2,
                };
                let _ = writeln!(
                    out,
                    "vivremotion_proxy_upstream_breaker_state{{cluster=\"{}\",upstream=\"{}\"}} {v}",
                    escape(&e.cluster),
                    escape(&e.address)
                );
            }
        }
        let _ = writeln!(out, "# HELP vivremotion_proxy_upstream_weight Effective balancer weight of an endpoint for a route.");
        let _ = writeln!(out, "# TYPE vivremotion_proxy_upstream_weight gauge");
        for r in snap.routes.iter() {
            for (i, e) in r.endpoints.iter().enumerate() {
                let _ = writeln!(out, "vivremotion_proxy_upstream_weight{{route=\"{}\",cluster=\"{}\",upstream=\"{}\"}} {}", escape(&r.cfg.name), escape(&e.cluster), escape(&e.address), r.balancer.weights()[i]);
            }
        }
        let _ = writeln!(out, "# HELP vivremotion_proxy_config_generation Snapshots built since start (config reloads + policy swaps + 1).");
        let _ = writeln!(out, "# TYPE vivremotion_proxy_config_generation gauge");
        let _ = writeln!(
            out,
            "vivremotion_proxy_config_generation {}",
            snap.generation
        );
        let log = self.shared.access_log.as_deref();
        for (name, help, v) in [
            (
                "vivremotion_proxy_access_log_lines_total",
                "Access log lines written and flushed (0 without an access log).",
                log.map_or(0, |l| l.written()),
            ),
            (
                "vivremotion_proxy_access_log_lines_dropped_total",
                "Access log lines dropped because the writer fell behind and its buffer was full.",
                log.map_or(0, |l| l.dropped()),
            ),
            (
                "vivremotion_proxy_access_log_write_errors_total",
                "Access log lines lost to a failed write (disk full, closed pipe).",
                log.map_or(0, |l| l.write_errors()),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {v}");
        }
        let mut r = Response::new(Full::new(Bytes::from(out)));
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }
}
