//! The request pipeline: check → route → pick → forward → respond → record.
//!
//! One function, [`handle`], per request. It loads the snapshot once, so the whole request
//! runs against one consistent config + policy. Recording happens in the response body's
//! [`Record`] when the last byte has gone out (or the client left), off the critical path of
//! the response headers.

use crate::access_log::{AccessLog, RequestInfo};
use crate::balance::hash::mix64;
use crate::body::{client_fault, ClientFault, Record, RequestBody, ResponseBody, ScopeRef};
use crate::client::{SendError, UpstreamBody};
use crate::config::{PathMatch, UpstreamProtocol};
use crate::error::ProxyError;
use crate::flow::{self, Next, RequestFlow, Start, TryFailure};
use crate::headers::{self, X_REQUEST_ID};
use crate::limits;
use crate::routing;
use crate::snapshot::Snapshot;
use crate::state::Shared;
use crate::telemetry::Outcome;
use crate::wait;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tracing::Instrument;
use vivremotion_protocol::Nanos;

/// Per-worker request context.
pub struct Worker {
    pub id: usize,
    pub shared: Arc<Shared>,
    /// Wakes this worker's fast-path connections when it stops taking new ones.
    pub drain: Arc<crate::drain::Drain>,
    requests: AtomicU64,
}

/// What the request path knows about the connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub tls: bool,
}

impl Worker {
    pub fn new(id: usize, shared: Arc<Shared>) -> Worker {
        Worker {
            id,
            shared,
            drain: crate::drain::Drain::new(),
            requests: AtomicU64::new(0),
        }
    }

    /// A per-request RNG, derived from the process seed, the worker and a request counter:
    /// reproducible for a given seed and request order, and never shared between threads.
    pub(crate) fn rng(&self) -> SmallRng {
        let n = self.requests.fetch_add(1, Relaxed);
        SmallRng::seed_from_u64(mix64(
            self.shared.seed ^ mix64(((self.id as u64) << 48) ^ n),
        ))
    }
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Methods RFC 9110 calls idempotent: safe to send twice.
pub(crate) fn idempotent(m: &str) -> bool {
    matches!(m, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}

fn us(d: std::time::Duration) -> f64 {
    d.as_nanos() as f64 / 1e3
}

fn elapsed_us(shared: &Shared, t0: Nanos) -> f64 {
    shared.clock.now().saturating_since(t0).as_nanos() as f64 / 1e3
}

/// A JSON error response, recorded through `rec`.
fn error_response(
    err: &ProxyError,
    rid: &HeaderValue,
    mut rec: Record,
    latency_us: f64,
    head: bool,
) -> Response<ResponseBody> {
    rec.outcome.status = err.status().as_u16();
    rec.outcome.failure = rec.outcome.failure.or(err.upstream_failure());
    rec.outcome.latency_us = latency_us;
    crate::error::log_answer(err, rid.to_str().unwrap_or(""), rec.now_secs());
    let body = err.json_body(rid.to_str().ok());
    let mut resp = Response::new(ResponseBody::full(body, Some(rec), head));
    *resp.status_mut() = err.status();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(&X_REQUEST_ID, rid.clone());
    for (name, value) in err.extra_headers() {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    resp
}

/// Everything a request answered by the proxy itself needs: where it is counted and its
/// access log line.
struct Local<'a> {
    w: &'a Worker,
    snap: &'a Arc<Snapshot>,
    rid: &'a HeaderValue,
    t0: Nanos,
    head: bool,
}

impl Local<'_> {
    fn error(
        &self,
        scope: ScopeRef,
        err: ProxyError,
        access: Option<Box<RequestInfo>>,
    ) -> Response<ResponseBody> {
        let latency = elapsed_us(&self.w.shared, self.t0);
        let mut rec = Record::local(
            self.snap.clone(),
            scope,
            self.w.id,
            Outcome::new(0, latency),
        );
        rec.access = access;
        error_response(&err, self.rid, rec, latency, self.head)
    }

    /// Answer a routed request locally, through its route-scope record `request`.
    fn answer(
        &self,
        mut request: Record,
        err: ProxyError,
        access: Option<Box<RequestInfo>>,
    ) -> Response<ResponseBody> {
        let latency = elapsed_us(&self.w.shared, self.t0);
        request.access = access;
        error_response(&err, self.rid, request, latency, self.head)
    }
}

/// Handle one request.
pub async fn handle(
    w: Arc<Worker>,
    conn: ConnInfo,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    let shared = &w.shared;
    let t0 = shared.clock.now();
    let snap = shared.snapshot.load_full();
    let mut rng = w.rng();

    let rid = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if headers::valid_request_id(v) => v.clone(),
        _ => headers::new_request_id(rng.random()),
    };

    let mut access = AccessLog::begin(
        &shared.access_log,
        &snap,
        &rid,
        req.method().as_str(),
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        t0,
    );
    let head_req = req.method() == Method::HEAD;
    let local = Local {
        w: &w,
        snap: &snap,
        rid: &rid,
        t0,
        head: head_req,
    };

    let head = headers::head_size(req.method(), req.uri(), req.headers());
    let limit = snap.config.proxy.max_header_bytes;
    if head > limit {
        let err = ProxyError::HeadersTooLarge { size: head, limit };
        return local.error(ScopeRef::Unmatched, err, access);
    }
    if req.method() == Method::CONNECT {
        let err = ProxyError::BadRequest(
            "CONNECT is not supported: vivremotion is a reverse proxy".into(),
        );
        return local.error(ScopeRef::Unmatched, err, access);
    }

    // RFC 9112 §3.2: exactly one Host in an HTTP/1.1 request.
    if req.version() == Version::HTTP_11 {
        let hosts = req.headers().get_all(HOST).iter().count();
        if hosts != 1 {
            let err = ProxyError::BadRequest(format!(
                "an HTTP/1.1 request must carry exactly one Host field, this one has {hosts}"
            ));
            return local.error(ScopeRef::Unmatched, err, access);
        }
    }

    let Some(ri) = snap.route_for(req.method(), req.uri(), req.headers()) else {
        let err = ProxyError::NoRoute {
            method: req.method().to_string(),
            host: routing::request_host(req.uri(), req.headers()).to_string(),
            path: req.uri().path().to_string(),
        };
        return local.error(ScopeRef::Unmatched, err, access);
    };
    let route = &snap.routes[ri];
    let route_scope = ScopeRef::Route(ri as u32);
    RequestInfo::route(&mut access, ri);
    // The request as its client sees it, in the route's scope; each try is recorded in its
    // endpoint's.
    let request = Record::start(snap.clone(), route_scope, w.id);

    if let Some(len) = content_length(req.headers()) {
        if len > route.cfg.max_body_bytes {
            let err = ProxyError::BodyTooLarge {
                limit: route.cfg.max_body_bytes,
            };
            return local.answer(request, err, access);
        }
    }

    let client_ip = conn.client.ip();
    let prio = limits::priority(&route.cfg, &snap.config, client_ip, || {
        req.headers()
            .get(&headers::X_PRIORITY)
            .map(|v| v.as_bytes())
    });
    let hdrs = req.headers();
    let facts = flow::Request {
        worker: w.id,
        priority: prio,
        client: client_ip,
        affinity: route.key_hash(hdrs, client_ip),
        idempotent: idempotent(req.method().as_str()),
        // A bodiless request can be sent again as it was; one with a body only goes once.
        replayable: req.body().is_end_stream(),
        unix_ms: shared.clock.unix_ms(),
    };
    let header = |n: &str| hdrs.get(n).map(|v| v.as_bytes());
    let (mut flow, step) = RequestFlow::start(route, facts, header, t0, &mut rng);
    let mut request = request;
    let first = match step {
        Start::Forward(t) => Ok(t),
        Start::Refuse(r) => Err(r),
        Start::Queue { .. } => {
            let waited = wait::queue(&mut flow, route, &*shared.clock, &mut rng).await;
            request.outcome.queue_wait_us = Some(elapsed_us(shared, t0));
            waited
        }
    };
    let mut next = match first {
        Ok(t) => t,
        Err(r) => {
            let err = route.refused(&r, prio, &mut access);
            return local.answer(request, err, access);
        }
    };
    RequestInfo::admission(&mut access, prio, None);

    let upgrade = req.version() <= Version::HTTP_11 && headers::is_upgrade_request(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // Path (rewritten if the route says so) on the endpoint's authority.
    let pq = match (&route.cfg.rewrite.path_prefix, &route.cfg.matcher.path) {
        (Some(new), Some(PathMatch::Prefix(old))) => {
            let cur = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            match PathAndQuery::try_from(routing::rewrite_prefix(cur, old, new)) {
                Ok(p) => p,
                Err(e) => {
                    let err = ProxyError::BadRequest(format!("rewritten path is invalid: {e}"));
                    return local.answer(request, err, access);
                }
            }
        }
        _ => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };

    // HTTP/2 requests carry the host in the URI; HTTP/1 upstreams need it as Host.
    if !parts.headers.contains_key(HOST) {
        if let Some(v) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(HOST, v);
        }
    }
    let host = parts.headers.get(HOST).cloned();
    let mut uri_parts = http::uri::Parts::default();
    uri_parts.scheme = Some(route.clients.scheme.clone());
    uri_parts.authority = Some(route.authorities[next.endpoint].clone());
    uri_parts.path_and_query = Some(pq);
    parts.uri = match Uri::from_parts(uri_parts) {
        Ok(u) => u,
        Err(e) => {
            let err = ProxyError::BadRequest(format!("cannot build upstream URI: {e}"));
            return local.answer(request, err, access);
        }
    };
    parts.version = if route.clients.transport.protocol == UpstreamProtocol::Http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h, upgrade);
    headers::add_forwarding(
        h,
        conn.client.ip(),
        conn.tls,
        host.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
    );
    if let Some(v) = &route.cfg.rewrite.host {
        h.insert(HOST, v.clone());
    }
    h.insert(&X_REQUEST_ID, rid.clone());
    let (tp, _trace_id) =
        headers::next_traceparent(h.get(&headers::TRACEPARENT), rng.random(), rng.random());
    h.insert(&headers::TRACEPARENT, tp);
    headers::apply_ops(h, &route.cfg.request_headers);

    let replayable = body.is_end_stream();
    let mut body = Some(if replayable {
        RequestBody::empty()
    } else {
        let mut b = RequestBody::new(body, route.cfg.max_body_bytes);
        b.account_to(route.route_stats.clone(), w.id);
        b.count_into(RequestInfo::count_body(&mut access));
        b
    });
    let (mut rec, mut resp, try_us, latency_us) = loop {
        let ei = next.endpoint;
        let scope = ScopeRef::Endpoint {
            route: ri as u32,
            endpoint: ei as u32,
        };
        let mut rec = Record::start(snap.clone(), scope, w.id);
        let endpoint = &route.endpoints[ei];
        let span = tracing::debug_span!(
            "request",
            request_id = ?rid,
            route = %route.cfg.name,
            upstream = %endpoint.address,
            try_ = next.attempt,
        );
        let mut try_parts = parts.clone();
        let mut uri = std::mem::take(&mut try_parts.uri).into_parts();
        uri.authority = Some(route.authorities[ei].clone());
        try_parts.uri = Uri::from_parts(uri).unwrap_or_default();
        let try_body = body.take().unwrap_or_else(RequestBody::empty);
        let limit = next.deadline.saturating_since(shared.clock.now());
        let send = route.clients.send(
            w.id,
            endpoint.id,
            &route.authorities[ei],
            Request::from_parts(try_parts, try_body),
            t0,
        );
        let result = tokio::time::timeout(limit, send).instrument(span).await;
        let now = shared.clock.now();
        // Each try is measured from its own start; the request from its arrival.
        let try_us = us(now.saturating_since(flow.try_started().unwrap_or(t0)));
        let latency_us = us(now.saturating_since(t0));
        let (failure, err) = match result {
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                match flow.answered(route, status, now, &mut rng) {
                    Next::Backoff { until } => {
                        rec.outcome.status = status;
                        rec.outcome.upstream_status = Some(status);
                        rec.outcome.latency_us = try_us;
                        drop((rec, resp));
                        next = wait::backoff(&mut flow, route, until, &*shared.clock).await;
                        continue;
                    }
                    Next::Deliver | Next::Fail(_) => break (rec, resp, try_us, latency_us),
                }
            }
            Ok(Err(e)) => match e {
                SendError::Request(e) => {
                    if let Some(fault) = client_fault(&*e) {
                        // The client's own doing: not the upstream's failure.
                        flow.client_failed(route);
                        let err = match fault {
                            ClientFault::TooLarge(limit) => ProxyError::BodyTooLarge { limit },
                            ClientFault::Broken(detail) => ProxyError::BadRequest(detail),
                        };
                        rec.carry(access, flow.tries());
                        rec.answers(request, latency_us);
                        return error_response(&err, &rid, rec, try_us, head_req);
                    }
                    (
                        TryFailure::Reset,
                        ProxyError::UpstreamReset {
                            endpoint: endpoint.address.clone(),
                            detail: crate::error::error_chain(&*e),
                        },
                    )
                }
                SendError::Connect(detail) => (
                    TryFailure::Connect,
                    ProxyError::UpstreamConnect {
                        endpoint: endpoint.address.clone(),
                        detail,
                    },
                ),
            },
            Err(_elapsed) => (
                TryFailure::Timeout,
                ProxyError::UpstreamTimeout {
                    endpoint: endpoint.address.clone(),
                    timeout: limit,
                },
            ),
        };
        if let Next::Backoff { until } = flow.failed(route, failure, replayable, now, &mut rng) {
            rec.outcome.status = err.status().as_u16();
            rec.outcome.failure = err.upstream_failure();
            rec.outcome.latency_us = try_us;
            drop(rec);
            next = wait::backoff(&mut flow, route, until, &*shared.clock).await;
            continue;
        }
        rec.carry(access, flow.tries());
        rec.answers(request, latency_us);
        return error_response(&err, &rid, rec, try_us, head_req);
    };

    let status = resp.status().as_u16();
    rec.outcome.status = status;
    rec.outcome.upstream_status = Some(status);
    rec.outcome.latency_us = try_us;
    rec.answers(request, latency_us);

    let switching = status == 101;
    if switching {
        if let Some(client_side) = client_upgrade {
            match resp.body_mut() {
                UpstreamBody::H1(b) => {
                    if let Some(upstream_side) = b.take_upgraded() {
                        tokio::spawn(tunnel(client_side, upstream_side));
                    }
                }
                // HTTP/2 has no 101: upgrades never go to an h2 upstream.
                UpstreamBody::H2(_) => {}
            }
        }
    }
    let h = resp.headers_mut();
    headers::strip_hop_by_hop(h, switching);
    headers::apply_ops(h, &route.cfg.response_headers);
    h.insert(&X_REQUEST_ID, rid);
    rec.permit = flow.take_permit();
    rec.carry(access, flow.tries());
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, ResponseBody::upstream(body, rec))
}

/// Relay bytes both ways once both sides have switched protocols.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: crate::h1::Upgraded) {
    use tokio::io::AsyncWriteExt;
    match client.await {
        Ok(c) => {
            let mut c = TokioIo::new(c);
            let mut u = upstream.io;
            // What the upstream sent right after its 101 head was read along with it.
            if !upstream.read_ahead.is_empty() {
                if let Err(e) = c.write_all(&upstream.read_ahead).await {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                    return;
                }
            }
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        Err(e) => tracing::debug!(error = %e, "protocol upgrade failed"),
    }
}

#[cfg(test)]
mod tests {
    /// The request future is moved into hyper's connection task and through combinators;
    /// keep it small so those moves stay cheap (see client.rs on boxing the connect path).
    #[test]
    fn request_future_stays_small() {
        fn size_of_future<F: std::future::Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let clients = crate::client::ClusterClients::build(
            &crate::config::Config::parse("[clusters.c]\nendpoints = [\"127.0.0.1:1\"]\n")
                .map(|c| c.clusters["c"].transport.clone())
                .unwrap(),
            1,
        )
        .unwrap();
        let auth: http::uri::Authority = "127.0.0.1:1".parse().unwrap();
        let req = http::Request::new(crate::body::RequestBody::empty());
        let fut = clients.send(0, 1, &auth, req, vivremotion_protocol::Nanos(0));
        let size = size_of_future(&fut);
        // Unboxed, the connect path made it 8.6 KB; boxed it is about 1.7 KB.
        assert!(size < 2048, "ClusterClients::send future is {size} bytes");
    }
}
