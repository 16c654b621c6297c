//! Parsing a request head from the read buffer and deciding everything about it before any
//! IO: route, the request flow's first step, and the head to send upstream.

use super::fields::*;
use super::*;
use crate::access_log::{AccessLog, RequestInfo};
use crate::body::{Record, ScopeRef};
use crate::error::ProxyError;
use crate::flow::{self, RequestFlow, Start, Try};
use crate::h1::{self};
use crate::headers;
use crate::limits::{self};
use crate::routing::{self, RequestView};
use crate::service::{ConnInfo, Worker};
use crate::snapshot::Snapshot;
use http::header::HeaderName;
use http::HeaderValue;
use rand::Rng;
use std::mem::MaybeUninit;
use std::sync::Arc;
use vivremotion_protocol::Nanos;

/// A parsed request head, borrowing the read buffer.
pub(super) struct RawRequest<'a> {
    pub(super) method: &'a str,
    pub(super) target: &'a str,
    pub(super) path: &'a str,
    pub(super) host_field: &'a str,
    pub(super) host: &'a str,
    pub(super) fields: &'a [httparse::Header<'a>],
}

impl RequestView for RawRequest<'_> {
    fn method(&self) -> &str {
        self.method
    }
    fn path(&self) -> &str {
        self.path
    }
    fn host(&self) -> &str {
        self.host
    }
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |f| f.name.eq_ignore_ascii_case(name.as_str()))
            .map(|f| f.value)
    }
}

impl RawRequest<'_> {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value)
    }
}

/// Everything decided about a request before any IO.
pub(super) struct Plan {
    pub(super) snap: Arc<Snapshot>,
    pub(super) route: usize,
    /// The request's flow (taken by `forward`), and its first try unless it waits in the
    /// queue for one.
    pub(super) flow: Option<RequestFlow>,
    pub(super) first: Option<Try>,
    pub(super) rid: HeaderValue,
    pub(super) body_len: u64,
    pub(super) client_close: bool,
    pub(super) head_req: bool,
    pub(super) idempotent: bool,
    pub(super) t0: Nanos,
    /// The head to send upstream.
    pub(super) head: Vec<u8>,
    pub(super) access: Option<Box<RequestInfo>>,
    /// The request's record in its route's scope (taken by `forward`).
    pub(super) request: Option<Record>,
}

/// A request answered without going upstream (rate limited, shed, no endpoint).
pub(super) struct LocalAnswer {
    /// The request's record in its route's scope.
    pub(super) request: Record,
    pub(super) err: ProxyError,
    pub(super) rid: HeaderValue,
    pub(super) body_len: u64,
    pub(super) client_close: bool,
    pub(super) head_req: bool,
    pub(super) t0: Nanos,
    pub(super) access: Option<Box<RequestInfo>>,
}

pub(super) enum Parsed {
    /// Head complete and taken by the fast path: its length, and the plan.
    Go(usize, Box<Plan>),
    /// Head complete, answered here: its length, and the answer.
    Refuse(usize, Box<LocalAnswer>),
    /// Need more bytes.
    More,
    /// Not for the fast path: hand the connection to hyper.
    Fallback,
}

/// Parse the head at the front of `buf` and decide everything about the request.
/// The connection's client, with the text the forwarding headers carry for it.
pub(super) struct Peer {
    pub(super) info: ConnInfo,
    /// `X-Forwarded-For` element.
    pub(super) ip: String,
    /// `Forwarded` element up to (not including) the `host` parameter.
    pub(super) forwarded: Vec<u8>,
}

impl Peer {
    pub(super) fn new(info: ConnInfo) -> Peer {
        let mut forwarded = Vec::with_capacity(64);
        headers::write_forwarded_for(&mut forwarded, info.client.ip(), info.tls);
        Peer {
            info,
            ip: info.client.ip().to_string(),
            forwarded,
        }
    }
}

pub(super) fn plan(w: &Worker, peer: &Peer, buf: &[u8], max_head: usize) -> Parsed {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let n = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Parsed::More,
        _ => return Parsed::Fallback,
    };
    if n > max_head || req.version != Some(1) {
        return Parsed::Fallback;
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parsed::Fallback;
    };
    // Origin form only; absolute form and `*` are rare enough for hyper.
    if !target.starts_with('/') || method == "CONNECT" {
        return Parsed::Fallback;
    }
    let fields: &[httparse::Header] = req.headers;
    let mut host_field = None;
    let mut declared: Option<u64> = None;
    let mut client_close = false;
    for f in fields {
        let name = f.name;
        if name.eq_ignore_ascii_case("host") {
            if host_field.is_some() {
                return Parsed::Fallback;
            }
            host_field = std::str::from_utf8(f.value).ok();
        } else if name.eq_ignore_ascii_case("content-length") {
            // Differing values (`0` then `N` too) are hyper's to refuse (400, close).
            match h1::parse_decimal(f.value) {
                Some(n) if declared.is_none_or(|d| d == n) => declared = Some(n),
                _ => return Parsed::Fallback,
            }
        } else if name.eq_ignore_ascii_case("connection") {
            // Only the two tokens that name no other field.
            for t in f.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if t.eq_ignore_ascii_case(b"close") {
                    client_close = true;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") && !t.is_empty() {
                    return Parsed::Fallback;
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("te")
        {
            return Parsed::Fallback;
        }
    }
    let Some(host_field) = host_field else {
        return Parsed::Fallback;
    };
    let body_len = declared.unwrap_or(0);
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let raw = RawRequest {
        method,
        target,
        path,
        host_field,
        host: routing::strip_port(host_field),
        fields,
    };

    let shared = &w.shared;
    let t0 = shared.clock.now();
    let snap = shared.snapshot.load_full();
    let Some(ri) = snap.route_for_view(&raw) else {
        return Parsed::Fallback;
    };
    let route = &snap.routes[ri];
    if body_len > route.cfg.max_body_bytes || !route.clients.speaks_h1_only() {
        return Parsed::Fallback;
    }
    let mut rng = w.rng();
    let rid = match raw
        .first("x-request-id")
        .and_then(|v| HeaderValue::from_bytes(v).ok())
    {
        Some(v) if headers::valid_request_id(&v) => v,
        _ => headers::new_request_id(rng.random()),
    };
    let client_ip = peer.info.client.ip();
    let head_req = method == "HEAD";
    let mut access = AccessLog::begin(&shared.access_log, &snap, &rid, method, target, t0);
    RequestInfo::route(&mut access, ri);
    let refuse = |request: Record, err: ProxyError, rid: HeaderValue, access| {
        Parsed::Refuse(
            n,
            Box::new(LocalAnswer {
                request,
                err,
                rid,
                body_len,
                client_close,
                head_req,
                t0,
                access,
            }),
        )
    };
    // From here on the request is the fast path's: admission has counted it, and it is
    // recorded as its client sees it in the route's scope (each try in its endpoint's).
    let request = Record::start(snap.clone(), ScopeRef::Route(ri as u32), w.id);
    let prio = limits::priority(&route.cfg, &snap.config, client_ip, || {
        raw.first("x-priority")
    });
    let idempotent = crate::service::idempotent(method);
    let facts = flow::Request {
        worker: w.id,
        priority: prio,
        client: client_ip,
        affinity: route.key_hash_with(|n| raw.first(n.as_str()), client_ip),
        idempotent,
        replayable: body_len == 0,
        unix_ms: shared.clock.unix_ms(),
    };
    let (flow, start) = RequestFlow::start(route, facts, |n| raw.first(n), t0, &mut rng);
    let first = match start {
        Start::Forward(t) => {
            RequestInfo::admission(&mut access, prio, None);
            Some(t)
        }
        // A request that waits for a slot picks its endpoint once it has one (`forward`).
        Start::Queue { .. } => None,
        Start::Refuse(r) => {
            let err = route.refused(&r, prio, &mut access);
            return refuse(request, err, rid, access);
        }
    };
    let plan = Plan {
        snap,
        route: ri,
        flow: Some(flow),
        first,
        rid,
        body_len,
        client_close,
        head_req,
        idempotent,
        t0,
        head: Vec::new(),
        access,
        request: Some(request),
    };
    let mut plan = Box::new(plan);
    let mut out = Vec::with_capacity(n + 256);
    encode_upstream_head(&raw, &plan, peer, &mut out, &mut rng);
    plan.head = out;
    Parsed::Go(n, plan)
}

/// The request head as the upstream gets it: the same rules as `service::handle` applies to
/// `http` types (hop-by-hop removal, forwarding headers, request id, trace context, rewrites).
pub(super) fn encode_upstream_head(
    raw: &RawRequest<'_>,
    plan: &Plan,
    peer: &Peer,
    out: &mut Vec<u8>,
    rng: &mut impl Rng,
) {
    let route = &plan.snap.routes[plan.route];
    let ops = &route.cfg.request_headers;
    out.extend_from_slice(raw.method.as_bytes());
    out.push(b' ');
    match (&route.cfg.rewrite.path_prefix, &route.cfg.matcher.path) {
        (Some(new), Some(crate::config::PathMatch::Prefix(old))) => {
            out.extend_from_slice(routing::rewrite_prefix(raw.target, old, new).as_bytes())
        }
        _ => out.extend_from_slice(raw.target.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let rewrite_host = route.cfg.rewrite.host.as_ref();
    for f in raw.fields {
        if skip_request_field(f.name)
            || in_ops(f.name.as_bytes(), ops)
            || (rewrite_host.is_some() && f.name.eq_ignore_ascii_case("host"))
        {
            continue;
        }
        put_field(out, f.name.as_bytes(), f.value);
    }
    if let Some(h) = rewrite_host {
        put_field(out, b"host", h.as_bytes());
    }
    // Forwarding headers, as headers::add_forwarding writes them (appending to the first value).
    let proto: &[u8] = if peer.info.tls { b"https" } else { b"http" };
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prev) = raw
        .first("x-forwarded-for")
        .filter(|p| !p.trim_ascii().is_empty())
    {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer.ip.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(proto);
    out.extend_from_slice(b"\r\nforwarded: ");
    if let Some(prev) = raw
        .first("forwarded")
        .filter(|p| !p.trim_ascii().is_empty())
    {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(&peer.forwarded);
    headers::write_forwarded_host(out, raw.host_field);
    out.extend_from_slice(b"\r\n");
    put_field(out, b"x-request-id", plan.rid.as_bytes());
    let incoming = raw.first("traceparent");
    let (tp, _) = headers::next_traceparent_bytes(incoming, rng.random(), rng.random());
    put_field(out, b"traceparent", &tp);
    put_ops(out, ops);
    if plan.body_len > 0 {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(plan.body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}
