//! The HTTP/1.1 fast path: plain requests forwarded byte for byte, without building `http`
//! types, in the connection's own task.
//!
//! Why: on one core, hyper's server and the `HeaderMap`s on both sides cost about twice what
//! nginx spends per request in user space (docs/benchmarks.md). Most API traffic is the
//! simple case — an HTTP/1.1 request with no body or a `Content-Length` body, to an HTTP/1.1
//! upstream — and that case is handled here: parse with httparse, route on the raw fields,
//! write the upstream head straight from the client's bytes (minus hop-by-hop fields, plus
//! forwarding headers, request id and trace context, exactly as [`crate::service`] does),
//! then copy the response back the same way.
//!
//! Anything else — HTTP/2 preface, HTTP/1.0, chunked or `Expect` uploads, upgrades, CONNECT,
//! fields named by `Connection`, oversized or malformed heads, routes to HTTP/2 upstreams,
//! and requests no route takes — hands the whole connection, with the bytes already read, to
//! the hyper pipeline, which owns every error answer for those. A connection never goes back
//! from hyper to the fast path. Both paths record the same telemetry through [`Guard`].

use crate::access_log::{AccessLog, RequestInfo};
use crate::body::{Guard, ScopeRef};
use crate::client::SendError;
use crate::error::ProxyError;
use crate::flow::{self, Next, Refused, RequestFlow, Start, Try, TryFailure};
use crate::h1::{self, Decode, H1Error, RawHead, Step};
use crate::headers;
use crate::limits::{self, Refusal};
use crate::routing::{self, RequestView};
use crate::service::{ConnInfo, Worker};
use crate::snapshot::Snapshot;
use crate::telemetry::Outcome;
use crate::wait;
use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderName;
use http::HeaderValue;
use rand::Rng;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tracing::Instrument;
use vivremotion_protocol::Nanos;

/// Most request fields the fast path takes; more go to hyper (which allows 100).
const MAX_FIELDS: usize = 64;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a connection left the fast path.
pub enum Served<IO> {
    /// Closed (client gone, error, shutdown, or `Connection: close`).
    Done,
    /// Serve the rest with hyper; the bytes read so far come first.
    Fallback(Prefixed<IO>),
}

/// An IO that replays bytes already read before reading more.
pub struct Prefixed<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, b)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A parsed request head, borrowing the read buffer.
struct RawRequest<'a> {
    method: &'a str,
    target: &'a str,
    path: &'a str,
    host_field: &'a str,
    host: &'a str,
    fields: &'a [httparse::Header<'a>],
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

/// Hop-by-hop fields (RFC 9110 §7.6.1) that never cross the proxy in either direction.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

fn listed(list: &[&str], name: &[u8]) -> bool {
    list.iter()
        .any(|s| s.len() == name.len() && s.as_bytes().eq_ignore_ascii_case(name))
}

/// Fields never copied from the client to the upstream: hop-by-hop, and the ones the proxy
/// writes itself (framing included).
fn skip_request_field(name: &str) -> bool {
    const OURS: [&str; 6] = [
        "content-length",
        "x-request-id",
        "traceparent",
        "x-forwarded-for",
        "x-forwarded-proto",
        "forwarded",
    ];
    listed(&HOP_BY_HOP, name.as_bytes()) || listed(&OURS, name.as_bytes())
}

/// Fields never copied from the upstream's response to the client.
fn skip_response_field(name: &[u8]) -> bool {
    listed(&HOP_BY_HOP, name) || listed(&["x-request-id", "content-length"], name)
}

fn in_ops(name: &[u8], ops: &crate::config::HeaderOps) -> bool {
    ops.remove
        .iter()
        .chain(ops.set.iter().map(|(n, _)| n))
        .any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name))
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn put_ops(out: &mut Vec<u8>, ops: &crate::config::HeaderOps) {
    for (n, v) in ops.set.iter().chain(ops.add.iter()) {
        put_field(out, n.as_str().as_bytes(), v.as_bytes());
    }
}

/// Everything decided about a request before any IO.
struct Plan {
    snap: Arc<Snapshot>,
    route: usize,
    /// The request's flow (taken by `forward`), and its first try unless it waits in the
    /// queue for one.
    flow: Option<RequestFlow>,
    first: Option<Try>,
    rid: HeaderValue,
    body_len: u64,
    client_close: bool,
    head_req: bool,
    idempotent: bool,
    t0: Nanos,
    /// The head to send upstream.
    head: Vec<u8>,
    access: Option<Box<RequestInfo>>,
    /// The request's record in its route's scope (taken by `forward`).
    request: Option<Guard>,
}

/// A request answered without going upstream (rate limited, shed, no endpoint).
struct LocalAnswer {
    /// The request's record in its route's scope.
    request: Guard,
    err: ProxyError,
    rid: HeaderValue,
    body_len: u64,
    client_close: bool,
    head_req: bool,
    t0: Nanos,
    access: Option<Box<RequestInfo>>,
}

/// Request bodies up to this size are read and dropped after a refusal, so the connection
/// can go on (and closing on unread bytes cannot reset the answer away); larger: close.
const DRAIN_MAX: u64 = 256 * 1024;

/// Answer a refused request; returns whether the connection stays open.
async fn refuse<IO>(
    w: &Worker,
    r: LocalAnswer,
    io: &mut IO,
    rbuf: &mut BytesMut,
    wbuf: &mut Vec<u8>,
    shutdown: &watch::Receiver<bool>,
) -> io::Result<bool>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let drained = drain_body(w, io, rbuf, r.body_len).await;
    let keep = drained && !r.client_close && !*shutdown.borrow();
    let latency_us = w.shared.clock.now().saturating_since(r.t0).as_nanos() as f64 / 1e3;
    let mut guard = r.request;
    guard.access = r.access;
    write_error(
        io, wbuf, &r.err, &r.rid, guard, latency_us, keep, r.head_req,
    )
    .await?;
    Ok(keep)
}

/// Read and drop a request body of `len` bytes (some may be in `rbuf` already), within the
/// header read timeout. Returns false if it is too large, late, or the client went away.
async fn drain_body<IO>(w: &Worker, io: &mut IO, rbuf: &mut BytesMut, len: u64) -> bool
where
    IO: AsyncRead + Unpin,
{
    let have = (rbuf.len() as u64).min(len);
    rbuf.advance(have as usize);
    let mut left = len - have;
    if left == 0 {
        return true;
    }
    if left > DRAIN_MAX {
        return false;
    }
    let limit = w.shared.snapshot.load().config.proxy.header_read_timeout;
    let read = async {
        while left > 0 {
            rbuf.reserve(16 * 1024);
            match h1::read_into(io, rbuf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {
                    let used = (rbuf.len() as u64).min(left);
                    rbuf.advance(used as usize);
                    left -= used;
                }
            }
        }
        true
    };
    tokio::time::timeout(limit, read).await.unwrap_or(false)
}

enum Parsed {
    /// Head complete and taken by the fast path: its length, and the plan.
    Go(usize, Box<Plan>),
    /// Head complete, answered here: its length, and the answer.
    Refuse(usize, Box<LocalAnswer>),
    /// Need more bytes.
    More,
    /// Not for the fast path: hand the connection to hyper.
    Fallback,
}

/// Serve an HTTP/1 connection. `sniff_h2`: the listener also speaks cleartext HTTP/2, so a
/// connection that opens with the h2 preface goes to hyper.
pub async fn serve<IO>(
    w: Arc<Worker>,
    conn: ConnInfo,
    mut io: IO,
    mut shutdown: watch::Receiver<bool>,
    sniff_h2: bool,
) -> Served<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut rbuf = BytesMut::with_capacity(8 * 1024);
    let mut wbuf: Vec<u8> = Vec::with_capacity(8 * 1024);
    let mut first = true;
    // The client's address as forwarding headers spell it, formatted once per connection.
    let peer = Peer::new(conn);
    let (mut max_head, mut head_timeout, mut limits_of) = (0, std::time::Duration::ZERO, 0);
    loop {
        // Limits for reading this head; the request itself runs on the snapshot current when
        // its head is complete (`plan`).
        // The head limits of the snapshot in force, read again only when a new one was
        // published (the request itself loads the snapshot once, in `plan`).
        let generation = w.shared.generation();
        if generation != limits_of {
            let snap = w.shared.snapshot.load();
            let p = &snap.config.proxy;
            (max_head, head_timeout) = (p.max_header_bytes, p.header_read_timeout);
            limits_of = snap.generation;
        }
        // Polled after the read, so a head that is already buffered never touches the timer wheel.
        let expiry = tokio::time::sleep(head_timeout);
        tokio::pin!(expiry);
        let (head_len, next) = 'head: loop {
            if rbuf.is_empty() && *shutdown.borrow() {
                return Served::Done;
            }
            if !rbuf.is_empty() {
                if first {
                    let n = rbuf.len().min(H2_PREFACE.len());
                    if rbuf[..n] == H2_PREFACE[..n] {
                        if n == H2_PREFACE.len() {
                            // HTTP/2 with prior knowledge; refused where the listener (or
                            // ALPN) said HTTP/1.1 only.
                            return match sniff_h2 {
                                true => fallback(rbuf, io),
                                false => Served::Done,
                            };
                        }
                        // Could still be the preface: wait for more.
                    } else {
                        first = false;
                    }
                }
                if !first {
                    match plan(&w, &peer, &rbuf, max_head) {
                        Parsed::Go(n, p) => break 'head (n, Ok(p)),
                        Parsed::Refuse(n, r) => break 'head (n, Err(r)),
                        Parsed::More => {}
                        Parsed::Fallback => return fallback(rbuf, io),
                    }
                }
            }
            rbuf.reserve(4096);
            let idle = rbuf.is_empty();
            tokio::select! {
                biased;
                _ = shutdown.changed(), if idle => return Served::Done,
                r = h1::read_into(&mut io, &mut rbuf) => match r {
                    Ok(0) | Err(_) => return Served::Done,
                    Ok(_) => {}
                },
                _ = &mut expiry => {
                    // Part of a head came and the rest did not: say so before closing
                    // (RFC 9110 408). An idle keep-alive connection just closes.
                    if !rbuf.is_empty() {
                        let _ = head_timeout_answer(&w, &mut io, &mut wbuf, head_timeout).await;
                    }
                    return Served::Done;
                }
            }
        };
        first = false;
        rbuf.advance(head_len);
        // An IO error on either side ends the connection.
        let keep: bool = match next {
            Ok(plan) => forward(&w, plan, &mut io, &mut rbuf, &mut wbuf, &shutdown)
                .await
                .unwrap_or_default(),
            Err(r) => refuse(&w, *r, &mut io, &mut rbuf, &mut wbuf, &shutdown)
                .await
                .unwrap_or_default(),
        };
        if !keep {
            let _ = io.shutdown().await;
            return Served::Done;
        }
    }
}

/// The 408 for a head that did not arrive in time, counted as an unmatched request.
async fn head_timeout_answer<IO>(
    w: &Worker,
    io: &mut IO,
    wbuf: &mut Vec<u8>,
    timeout: std::time::Duration,
) -> io::Result<()>
where
    IO: AsyncWrite + Unpin,
{
    let snap = w.shared.snapshot.load_full();
    let rid = headers::new_request_id(w.rng().random());
    let guard = Guard::local(snap, ScopeRef::Unmatched, w.id, Outcome::new(0, 0.0));
    let err = ProxyError::RequestTimeout { timeout };
    let latency_us = timeout.as_secs_f64() * 1e6;
    write_error(io, wbuf, &err, &rid, guard, latency_us, false, false).await?;
    io.shutdown().await
}

fn fallback<IO>(rbuf: BytesMut, io: IO) -> Served<IO> {
    Served::Fallback(Prefixed {
        prefix: rbuf.freeze(),
        io,
    })
}

/// Parse the head at the front of `buf` and decide everything about the request.
/// The connection's client, with the text the forwarding headers carry for it.
struct Peer {
    info: ConnInfo,
    /// `X-Forwarded-For` element.
    ip: String,
    /// `Forwarded` element up to (not including) the `host` parameter.
    forwarded: Vec<u8>,
}

impl Peer {
    fn new(info: ConnInfo) -> Peer {
        let mut forwarded = Vec::with_capacity(64);
        headers::write_forwarded_for(&mut forwarded, info.client.ip(), info.tls);
        Peer {
            info,
            ip: info.client.ip().to_string(),
            forwarded,
        }
    }
}

fn plan(w: &Worker, peer: &Peer, buf: &[u8], max_head: usize) -> Parsed {
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
    let refuse = |request: Guard, err: ProxyError, rid: HeaderValue, access| {
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
    let request = Guard::start(snap.clone(), ScopeRef::Route(ri as u32), w.id);
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
            let err = route.refused(&r);
            let shed = matches!(r, Refused::Admission(_)).then_some(&err);
            RequestInfo::admission(&mut access, prio, shed);
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
fn encode_upstream_head(
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
    let incoming = raw
        .first("traceparent")
        .and_then(|v| HeaderValue::from_bytes(v).ok());
    let (tp, _) = headers::next_traceparent(incoming.as_ref(), rng.random(), rng.random());
    put_field(out, b"traceparent", tp.as_bytes());
    put_ops(out, ops);
    if plan.body_len > 0 {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(plan.body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Forward one request and its response. Returns whether the client connection stays open.
async fn forward<IO>(
    w: &Worker,
    mut plan: Box<Plan>,
    io: &mut IO,
    rbuf: &mut BytesMut,
    wbuf: &mut Vec<u8>,
    shutdown: &watch::Receiver<bool>,
) -> io::Result<bool>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let shared = &w.shared;
    let mut out = std::mem::take(&mut plan.head);
    let Some(mut flow) = plan.flow.take() else {
        return Ok(false);
    };
    let mut rng = None;
    let first_try = match plan.first {
        Some(t) => t,
        None => {
            let route = &plan.snap.routes[plan.route];
            let prio = flow.priority();
            let rng = rng.get_or_insert_with(|| w.rng());
            let step = wait::queue(&mut flow, route, &*shared.clock, rng).await;
            if let Some(r) = plan.request.as_mut() {
                let waited = shared.clock.now().saturating_since(plan.t0);
                r.outcome.queue_wait_us = Some(waited.as_nanos() as f64 / 1e3);
            }
            match step {
                Start::Forward(t) => {
                    RequestInfo::admission(&mut plan.access, prio, None);
                    t
                }
                step => {
                    let r = match step {
                        Start::Refuse(r) => r,
                        _ => Refused::Admission(Refusal::Overloaded { priority: prio }),
                    };
                    let err = route.refused(&r);
                    let shed = matches!(r, Refused::Admission(_)).then_some(&err);
                    RequestInfo::admission(&mut plan.access, prio, shed);
                    let Some(request) = plan.request.take() else {
                        return Ok(false);
                    };
                    let r = LocalAnswer {
                        request,
                        err,
                        rid: plan.rid.clone(),
                        body_len: plan.body_len,
                        client_close: plan.client_close,
                        head_req: plan.head_req,
                        t0: plan.t0,
                        access: plan.access.take(),
                    };
                    return refuse(w, r, io, rbuf, wbuf, shutdown).await;
                }
            }
        }
    };
    let access = plan.access.take();
    let mut request = plan.request.take();
    let plan = &*plan;
    let route = &plan.snap.routes[plan.route];
    // The body bytes already read go along with the head (and again with a retried head:
    // only bodiless requests are retried after anything was sent).
    let first = (rbuf.len() as u64).min(plan.body_len) as usize;
    out.extend_from_slice(&rbuf[..first]);
    rbuf.advance(first);
    let mut remaining = plan.body_len - first as u64;
    let mut next = first_try;
    let (mut guard, mut up, raw, body_read, try_us, latency_us, ei) = loop {
        let ei = next.endpoint;
        let endpoint = &route.endpoints[ei];
        let scope = ScopeRef::Endpoint {
            route: plan.route as u32,
            endpoint: ei as u32,
        };
        let mut guard = Guard::start(plan.snap.clone(), scope, w.id);
        let limit = next.deadline.saturating_since(shared.clock.now());
        let span = tracing::debug_span!(
            "request",
            request_id = ?plan.rid,
            route = %route.cfg.name,
            upstream = %endpoint.address,
            try_ = next.attempt,
        );
        let exchange = exchange(w, plan, ei, &out, &mut remaining, io, rbuf);
        let result = tokio::time::timeout(limit, exchange).instrument(span).await;
        let now = shared.clock.now();
        // Each try is measured from its own start; the request from its arrival.
        let latency_us = now.saturating_since(plan.t0).as_nanos() as f64 / 1e3;
        let try_us = now
            .saturating_since(flow.try_started().unwrap_or(plan.t0))
            .as_nanos() as f64
            / 1e3;
        guard.outcome.latency_us = try_us;
        guard.outcome.bytes_in = plan.body_len;
        let replayable = plan.body_len == 0;
        let rng = rng.get_or_insert_with(|| w.rng());
        let (failure, body_read, err) = match result {
            Ok(Ok((up, raw, body_read))) => {
                let status = raw.status;
                match flow.answered(route, status, now, rng) {
                    Next::Backoff { until } => {
                        // The answer is dropped unread, and its connection with it.
                        guard.outcome.status = status;
                        guard.outcome.upstream_status = Some(status);
                        drop((guard, up));
                        next = wait::backoff(&mut flow, route, until, &*shared.clock).await;
                        continue;
                    }
                    Next::Deliver | Next::Fail(_) => {
                        break (guard, up, raw, body_read, try_us, latency_us, ei)
                    }
                }
            }
            Ok(Err((Failure::Client(e), _))) => {
                // The client went away or broke its own request: nothing to answer (the
                // guard's status stays 499) and nothing against the upstream.
                flow.client_failed(route);
                guard.carry(access, flow.tries());
                return Err(e);
            }
            Ok(Err((Failure::Connect(detail), body_read))) => (
                TryFailure::Connect,
                body_read,
                ProxyError::UpstreamConnect {
                    endpoint: endpoint.address.clone(),
                    detail,
                },
            ),
            Ok(Err((Failure::Upstream(e), body_read))) => (
                TryFailure::Reset,
                body_read,
                ProxyError::UpstreamReset {
                    endpoint: endpoint.address.clone(),
                    detail: e.to_string(),
                },
            ),
            // The request body may be half read: the connection cannot be trusted further.
            Err(_elapsed) => (
                TryFailure::Timeout,
                false,
                ProxyError::UpstreamTimeout {
                    endpoint: endpoint.address.clone(),
                    timeout: limit,
                },
            ),
        };
        // A connect failure consumed nothing of the request; anything else only a bodiless one
        // can be sent again.
        let replayable = replayable || failure == TryFailure::Connect;
        if let Next::Backoff { until } = flow.failed(route, failure, replayable, now, rng) {
            guard.outcome.status = err.status().as_u16();
            guard.outcome.failure = err.upstream_failure();
            drop(guard);
            next = wait::backoff(&mut flow, route, until, &*shared.clock).await;
            continue;
        }
        let keep = body_read && !plan.client_close;
        guard.carry(access, flow.tries());
        if let Some(r) = request.take() {
            guard.answers(r, latency_us);
        }
        write_error(
            io,
            wbuf,
            &err,
            &plan.rid,
            guard,
            try_us,
            keep,
            plan.head_req,
        )
        .await?;
        return Ok(keep);
    };
    let endpoint = &route.endpoints[ei];
    guard.permit = flow.take_permit();
    guard.carry(access, flow.tries());
    if let Some(r) = request.take() {
        guard.answers(r, latency_us);
    }

    let status = raw.status;
    guard.outcome.status = status;
    guard.outcome.upstream_status = Some(status);

    let te_last = raw.values("transfer-encoding").next_back();
    let mut decode =
        match h1::framing_raw(plan.head_req, status, te_last, raw.values("content-length")) {
            Ok(d) => d,
            Err(e) => {
                endpoint.record_failure(shared.clock.unix_ms());
                let err = ProxyError::UpstreamReset {
                    endpoint: endpoint.address.clone(),
                    detail: e.to_string(),
                };
                guard.outcome.upstream_status = None;
                write_error(
                    io,
                    wbuf,
                    &err,
                    &plan.rid,
                    guard,
                    try_us,
                    !plan.client_close,
                    plan.head_req,
                )
                .await?;
                return Ok(!plan.client_close);
            }
        };
    let upstream_keep =
        h1::keep_alive_raw(raw.http11, raw.values("connection")) && decode != Decode::Eof;
    let bodiless = plan.head_req || status == 204 || status == 304 || status < 200;
    let close = plan.client_close || *shutdown.borrow();

    // Response head.
    wbuf.clear();
    wbuf.extend_from_slice(b"HTTP/1.1 ");
    wbuf.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    wbuf.push(b' ');
    wbuf.extend_from_slice(&raw.bytes[raw.reason.0..raw.reason.1]);
    wbuf.extend_from_slice(b"\r\n");
    let ops = &route.cfg.response_headers;
    let named = connection_named(&raw);
    for f in &raw.fields {
        let name = raw.name(f);
        let keep_len = bodiless && name.eq_ignore_ascii_case(b"content-length");
        if (!keep_len && skip_response_field(name))
            || in_ops(name, ops)
            || named.iter().any(|n| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        put_field(wbuf, name, raw.value(f));
    }
    put_field(wbuf, b"x-request-id", plan.rid.as_bytes());
    put_ops(wbuf, ops);
    let chunked = match decode {
        Decode::Length(n) if !bodiless => {
            wbuf.extend_from_slice(b"content-length: ");
            wbuf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            wbuf.extend_from_slice(b"\r\n");
            false
        }
        Decode::Length(_) => false,
        Decode::Chunked(_) | Decode::Eof => {
            wbuf.extend_from_slice(b"transfer-encoding: chunked\r\n");
            true
        }
    };
    if close {
        wbuf.extend_from_slice(b"connection: close\r\n");
    }
    wbuf.extend_from_slice(b"\r\n");

    // Body: gather what is already here with the head, then stream the rest. The last piece
    // stays in `wbuf`: the request is recorded before the client can see its end, so whoever
    // has read a whole response finds it counted in /metrics and telemetry.
    let mut bytes_out = 0u64;
    let result = copy_body(&mut up, &mut decode, chunked, io, wbuf, &mut bytes_out).await;
    guard.outcome.bytes_out = bytes_out;
    match result {
        Ok(()) => {}
        Err(Failure::Upstream(e)) => {
            guard.outcome.failure = Some(crate::error::UpstreamFailure::Reset);
            tracing::debug!(error = %e, "upstream failed in the middle of a response body");
            return Ok(false);
        }
        Err(Failure::Client(e)) => return Err(e),
        Err(Failure::Connect(_)) => return Ok(false),
    }
    if upstream_keep && up.buf.is_empty() {
        route
            .clients
            .put_back(w.id, endpoint.id, up, shared.clock.now());
    }
    drop(guard);
    io.write_all(wbuf).await?;
    Ok(body_read && !close)
}

/// Fields the upstream's `Connection` names: hop-by-hop too.
fn connection_named(raw: &RawHead) -> Vec<&[u8]> {
    let mut v = Vec::new();
    for c in raw.values("connection") {
        for t in c.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            if !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
            {
                v.push(t);
            }
        }
    }
    v
}

enum Failure {
    /// No connection to the upstream.
    Connect(String),
    /// The upstream broke the exchange.
    Upstream(H1Error),
    /// The client broke it (closed, reset, short body).
    Client(io::Error),
}

/// Send the head and body upstream and read the response head. On failure, also says whether
/// the request body was read completely from the client.
async fn exchange<IO>(
    w: &Worker,
    plan: &Plan,
    ei: usize,
    out: &[u8],
    remaining: &mut u64,
    io: &mut IO,
    rbuf: &mut BytesMut,
) -> Result<(h1::Conn, RawHead, bool), (Failure, bool)>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let route = &plan.snap.routes[plan.route];
    let endpoint = &route.endpoints[ei];
    let authority = &route.authorities[ei];
    let mut fresh = false;
    loop {
        let (mut up, pooled) = route
            .clients
            .checkout_h1(w.id, endpoint.id, authority, plan.t0, fresh)
            .await
            .map_err(|e| match e {
                SendError::Connect(d) => (Failure::Connect(d), *remaining == 0),
                SendError::Request(e) => (Failure::Connect(e.to_string()), *remaining == 0),
            })?;
        if let Err(e) = up.io.write_all(out).await {
            // A pooled connection that died idle fails here; nothing reached anyone.
            if pooled {
                fresh = true;
                continue;
            }
            return Err((Failure::Upstream(H1Error::Write(e)), *remaining == 0));
        }
        // Stream the rest of the body from the client.
        while *remaining > 0 {
            if rbuf.is_empty() {
                rbuf.reserve(16 * 1024);
                match h1::read_into(io, rbuf).await {
                    Ok(0) => {
                        let e =
                            io::Error::new(io::ErrorKind::UnexpectedEof, "client body cut short");
                        return Err((Failure::Client(e), false));
                    }
                    Ok(_) => {}
                    Err(e) => return Err((Failure::Client(e), false)),
                }
            }
            let k = (rbuf.len() as u64).min(*remaining) as usize;
            let chunk = rbuf.split_to(k);
            *remaining -= k as u64;
            if let Err(e) = up.io.write_all(&chunk).await {
                return Err((Failure::Upstream(H1Error::Write(e)), *remaining == 0));
            }
        }
        match up.read_raw_head().await {
            Ok(head) => return Ok((up, head, true)),
            // The keep-alive race: the pooled connection closed as the request went out.
            Err(H1Error::ClosedBeforeResponse)
                if pooled && plan.idempotent && plan.body_len == 0 =>
            {
                fresh = true;
            }
            Err(e) => return Err((Failure::Upstream(e), true)),
        }
    }
}

/// Copy the response body to the client, re-chunking when the length is not known. `wbuf`
/// holds the response head on entry and is written with the first piece of body; on success
/// it holds the last piece (at least the end of the framing), not yet written.
async fn copy_body<IO>(
    up: &mut h1::Conn,
    decode: &mut Decode,
    chunked: bool,
    io: &mut IO,
    wbuf: &mut Vec<u8>,
    bytes_out: &mut u64,
) -> Result<(), Failure>
where
    IO: AsyncWrite + Unpin,
{
    loop {
        match h1::decode_step(decode, &mut up.buf).map_err(Failure::Upstream)? {
            Step::Data(d) => {
                *bytes_out += d.len() as u64;
                if chunked {
                    use std::io::Write as _;
                    let _ = write!(wbuf, "{:x}\r\n", d.len());
                    wbuf.extend_from_slice(&d);
                    wbuf.extend_from_slice(b"\r\n");
                } else {
                    wbuf.extend_from_slice(&d);
                }
            }
            Step::Trailers(t) => {
                wbuf.extend_from_slice(b"0\r\n");
                for (n, v) in t.iter() {
                    put_field(wbuf, n.as_str().as_bytes(), v.as_bytes());
                }
                wbuf.extend_from_slice(b"\r\n");
                return Ok(());
            }
            Step::End => {
                if chunked {
                    wbuf.extend_from_slice(b"0\r\n\r\n");
                }
                return Ok(());
            }
            Step::NeedMore => {
                // Send what we have before waiting on the upstream (SSE must not be held).
                if !wbuf.is_empty() {
                    io.write_all(wbuf).await.map_err(Failure::Client)?;
                    wbuf.clear();
                }
                up.buf.reserve(h1::READ_BODY_CHUNK);
                let n = h1::read_into(&mut up.io, &mut up.buf)
                    .await
                    .map_err(|e| Failure::Upstream(H1Error::Read(e)))?;
                if n == 0 {
                    if *decode == Decode::Eof {
                        *decode = Decode::Length(0);
                        up.buf.clear();
                        // The connection ended the body: it cannot be reused.
                        continue;
                    }
                    return Err(Failure::Upstream(H1Error::ClosedInBody));
                }
            }
        }
    }
}

/// Answer with a JSON error, recorded through `guard`.
#[allow(clippy::too_many_arguments)]
async fn write_error<IO>(
    io: &mut IO,
    wbuf: &mut Vec<u8>,
    err: &ProxyError,
    rid: &HeaderValue,
    mut guard: Guard,
    latency_us: f64,
    keep: bool,
    head_req: bool,
) -> io::Result<()>
where
    IO: AsyncWrite + Unpin,
{
    use std::io::Write as _;
    let status = err.status();
    guard.outcome.status = status.as_u16();
    guard.outcome.failure = guard.outcome.failure.or(err.upstream_failure());
    guard.outcome.latency_us = latency_us;
    crate::error::log_answer(err, rid.to_str().unwrap_or(""), guard.now_secs());
    let body = err.json_body(rid.to_str().ok());
    guard.outcome.bytes_out = if head_req { 0 } else { body.len() as u64 };
    wbuf.clear();
    let _ = write!(
        wbuf,
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    put_field(wbuf, b"x-request-id", rid.as_bytes());
    for (name, value) in err.extra_headers() {
        put_field(wbuf, name.as_bytes(), value.as_bytes());
    }
    if !keep {
        wbuf.extend_from_slice(b"connection: close\r\n");
    }
    wbuf.extend_from_slice(b"\r\n");
    // A HEAD answer has the body's length but no body (RFC 9110 9.3.2).
    if !head_req {
        wbuf.extend_from_slice(&body);
    }
    drop(guard);
    io.write_all(wbuf).await
}
