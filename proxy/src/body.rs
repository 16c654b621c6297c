//! Streaming bodies with accounting.
//!
//! Neither body buffers: frames pass through as they arrive, so SSE and large uploads stream.
//! [`RequestBody`] enforces the route's size limit on the fly (Content-Length alone cannot be
//! trusted: chunked uploads have none) and counts bytes. [`ResponseBody`] carries the request's
//! [`Record`], which records the outcome when the last frame is handed to hyper (before hyper
//! writes it, so a client that has the whole response finds it counted), or when the client
//! goes away, whichever comes first.

use crate::access_log::RequestInfo;
use crate::client::{Http1Conn, UpstreamBody};
use crate::snapshot::Snapshot;
use crate::telemetry::recorder::Outcome;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body went over the route's `max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// The client's request body broke while it was being forwarded: malformed framing (an
/// invalid chunk size), shorter than its `Content-Length`, or reset by the client. The
/// client's fault: answered 400 and never counted against the upstream.
#[derive(Debug, thiserror::Error)]
#[error("the request body is malformed or was cut short by the client: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// A try that failed through the client's fault, not the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFault {
    /// The body ran over the route's limit (413).
    TooLarge(u64),
    /// The body was malformed, short or reset (400).
    Broken(String),
}

/// Where a request's outcome is recorded.
#[derive(Debug, Clone, Copy)]
pub enum ScopeRef {
    /// Answered before a route matched (404, 431, 400).
    Unmatched,
    /// Answered by the proxy for a route, before an endpoint was picked.
    Route(u32),
    /// Sent to an endpoint of a route.
    Endpoint { route: u32, endpoint: u32 },
}

/// Records one request's outcome into the snapshot it started on, exactly once, on drop, and
/// gives the upstream connection back to its pool if the response was read to its end.
pub struct Record {
    snap: Arc<Snapshot>,
    scope: ScopeRef,
    worker: usize,
    /// Whether `start` was recorded (in-flight gauges must be released).
    started: bool,
    pub outcome: Outcome,
    /// The HTTP/1 connection the response is read from.
    conn: Option<Http1Conn>,
    /// The response was read completely: the connection may serve another request.
    reusable: bool,
    /// The route's concurrency slot, released after the outcome is recorded.
    pub permit: Option<crate::limits::concurrency::Permit>,
    /// The request's access log line, written when it is recorded (only the rec of the
    /// answer the client gets carries one; `None` without an access log).
    pub access: Option<Box<RequestInfo>>,
    /// On the rec of the try whose answer the client gets: the request's own record in
    /// its route's scope (status the client got, end-to-end latency), finished with this one.
    pub request: Option<Box<Record>>,
}

impl Record {
    /// The process clock in whole seconds (for rate-limited logging).
    pub fn now_secs(&self) -> u64 {
        self.snap.clock.now().0 / 1_000_000_000
    }

    /// A rec for a try that is now in flight in `scope`. Its status is 499 until the try
    /// ends: if the client leaves first, that is what happened.
    pub fn start(snap: Arc<Snapshot>, scope: ScopeRef, worker: usize) -> Record {
        let outcome = Outcome::new(499, 0.0);
        snap.stats(scope).start(worker);
        if let ScopeRef::Endpoint { route, endpoint } = scope {
            if let Some(e) = snap.endpoint(route, endpoint) {
                e.start();
            }
        }
        Record {
            snap,
            scope,
            worker,
            started: true,
            outcome,
            conn: None,
            reusable: false,
            permit: None,
            access: None,
            request: None,
        }
    }

    /// A rec for a request answered locally, never in flight upstream.
    pub fn local(snap: Arc<Snapshot>, scope: ScopeRef, worker: usize, outcome: Outcome) -> Record {
        Record {
            snap,
            scope,
            worker,
            started: false,
            outcome,
            conn: None,
            reusable: false,
            permit: None,
            access: None,
            request: None,
        }
    }

    pub fn scope(&self) -> ScopeRef {
        self.scope
    }

    /// Make this the rec that writes the request's access log line, after `tries` tries.
    pub fn carry(&mut self, mut access: Option<Box<RequestInfo>>, tries: u32) {
        if let Some(i) = access.as_mut() {
            i.set_tries(tries);
        }
        self.access = access;
    }

    /// Make this try's answer the client's: `request` (the route-scope record) is finished
    /// with this rec, with the status and bytes the client got and `latency_us` (end to
    /// end, where this rec's is the try's own).
    pub fn answers(&mut self, mut request: Record, latency_us: f64) {
        request.outcome.latency_us = latency_us;
        self.request = Some(Box::new(request));
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if let Some(mut r) = self.request.take() {
            let o = &self.outcome;
            r.outcome.status = o.status;
            r.outcome.upstream_status = o.upstream_status;
            r.outcome.failure = o.failure;
            r.outcome.bytes_in = o.bytes_in;
            r.outcome.bytes_out = o.bytes_out;
            // The slot is released after both records.
            if r.permit.is_none() {
                r.permit = self.permit.take();
            }
        }
        self.snap
            .stats(self.scope)
            .finish(self.worker, &self.outcome, self.started);
        if let Some(mut info) = self.access.take() {
            info.finish(self.scope, &self.outcome);
        }
        if self.started {
            if let ScopeRef::Endpoint { route, endpoint } = self.scope {
                if let Some(e) = self.snap.endpoint(route, endpoint) {
                    e.finish();
                    if let (true, Some(conn), Some(r)) = (
                        self.reusable,
                        self.conn.take(),
                        self.snap.routes.get(route as usize),
                    ) {
                        r.clients
                            .put_back(self.worker, e.id, conn, self.snap.clock.now());
                    }
                }
            }
        }
    }
}

/// The body sent upstream: the client's body, size-limited and counted.
pub struct RequestBody {
    inner: Option<Incoming>,
    limit: u64,
    seen: u64,
    /// Where to add the bytes once the body is done.
    account: Option<(Arc<crate::telemetry::ScopeStats>, usize)>,
    /// The access log's count of this request's body bytes, if there is an access log.
    count: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64) -> RequestBody {
        RequestBody {
            inner: Some(inner),
            limit,
            seen: 0,
            account: None,
            count: None,
        }
    }

    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            limit: 0,
            seen: 0,
            account: None,
            count: None,
        }
    }

    pub fn account_to(&mut self, stats: Arc<crate::telemetry::ScopeStats>, worker: usize) {
        self.account = Some((stats, worker));
    }

    pub fn count_into(&mut self, count: Option<Arc<std::sync::atomic::AtomicU64>>) {
        self.count = count;
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some((stats, worker)) = &self.account {
            stats.add_bytes_in(*worker, self.seen);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    if let Some(c) = &this.count {
                        c.fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    if this.seen > this.limit {
                        this.inner = None;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(ClientBodyError(e))))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

enum Kind {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

/// The body sent to the client.
pub struct ResponseBody {
    kind: Kind,
    rec: Option<Record>,
    /// The upstream body's exact length, when known: once that much has passed the request is
    /// recorded, even if the upstream signals its end only in a later (empty) frame, which
    /// hyper may poll for only after the client has the last byte.
    expect: Option<u64>,
}

impl ResponseBody {
    pub fn upstream(inner: UpstreamBody, rec: Record) -> ResponseBody {
        ResponseBody {
            expect: inner.size_hint().exact(),
            kind: Kind::Upstream(inner),
            rec: Some(rec),
        }
    }

    /// A body held in memory. `head`: the answer to a HEAD request, which hyper sends
    /// without its body (the length still goes out), so none of it is counted as sent.
    pub fn full(bytes: Bytes, rec: Option<Record>, head: bool) -> ResponseBody {
        let mut rec = rec;
        if let Some(g) = rec.as_mut() {
            g.outcome.bytes_out = if head { 0 } else { bytes.len() as u64 };
        }
        ResponseBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            rec,
            expect: None,
        }
    }

    pub fn empty() -> ResponseBody {
        ResponseBody {
            kind: Kind::Full(None),
            rec: None,
            expect: None,
        }
    }
}

impl ResponseBody {
    /// The upstream response was read to its end: record, and let the connection be reused.
    fn finish_upstream(&mut self) {
        if let Some(mut g) = self.rec.take() {
            if let Kind::Upstream(UpstreamBody::H1(b)) = &mut self.kind {
                g.conn = b.take_reusable();
            }
            g.reusable = true;
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body hyper never polled (empty, or fully sent) is still complete.
        if let Kind::Upstream(inner) = &self.kind {
            if inner.is_end_stream() {
                self.finish_upstream();
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Full(b) => match b.take() {
                Some(bytes) => {
                    // The only frame: record before the client can have it.
                    this.rec = None;
                    Poll::Ready(Some(Ok(Frame::data(bytes))))
                }
                None => {
                    this.rec = None;
                    Poll::Ready(None)
                }
            },
            Kind::Upstream(inner) => match ready!(Pin::new(&mut *inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let mut sent = None;
                    if let (Some(d), Some(g)) = (frame.data_ref(), this.rec.as_mut()) {
                        g.outcome.bytes_out += d.len() as u64;
                        sent = Some(g.outcome.bytes_out);
                    }
                    if inner.is_end_stream() || (sent.is_some() && sent == this.expect) {
                        // hyper may not poll again after the last frame: finish now.
                        this.finish_upstream();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Some(Err(e)) => {
                    if let Some(g) = this.rec.as_mut() {
                        g.outcome.failure = Some(crate::error::UpstreamFailure::Reset);
                    }
                    this.rec = None;
                    Poll::Ready(Some(Err(e)))
                }
                None => {
                    this.finish_upstream();
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(i) => i.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(i) => i.size_hint(),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            UpstreamBody::H2(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b) => b.size_hint(),
        }
    }
}

/// Whether `err` (or anything in its source chain) is the client's fault: a
/// [`BodyTooLarge`] or a [`ClientBodyError`].
pub fn client_fault(err: &(dyn std::error::Error + 'static)) -> Option<ClientFault> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(b) = e.downcast_ref::<BodyTooLarge>() {
            return Some(ClientFault::TooLarge(b.limit));
        }
        if let Some(b) = e.downcast_ref::<ClientBodyError>() {
            return Some(ClientFault::Broken(b.0.to_string()));
        }
        cur = e.source();
    }
    None
}
