//! Forwarding one request and its response byte for byte, with the tries, backoffs and
//! answers the request flow decides; and the proxy's own answers (refusals, errors).

use super::fields::*;
use super::plan::*;
use crate::access_log::RequestInfo;
use crate::body::{Record, ScopeRef};
use crate::client::SendError;
use crate::drain::Registration;
use crate::error::ProxyError;
use crate::flow::{Next, TryFailure};
use crate::h1::{self, Decode, H1Error, RawHead, Step};
use crate::service::Worker;
use crate::timer::LazyTimer;
use crate::wait;
use bytes::{Buf, BytesMut};
use http::HeaderValue;
use std::io;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::Instrument;

/// Request bodies up to this size are read and dropped after a refusal, so the connection
/// can go on (and closing on unread bytes cannot reset the answer away); larger: close.
pub(super) const DRAIN_MAX: u64 = 256 * 1024;

/// Answer a refused request; returns whether the connection stays open.
pub(super) async fn refuse<IO>(
    w: &Worker,
    r: LocalAnswer,
    io: &mut IO,
    rbuf: &mut BytesMut,
    wbuf: &mut Vec<u8>,
    shutdown: &Registration,
) -> io::Result<bool>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let drained = drain_body(w, io, rbuf, r.body_len).await;
    let keep = drained && !r.client_close && !shutdown.is_draining();
    let latency_us = w.shared.clock.now().saturating_since(r.t0).as_nanos() as f64 / 1e3;
    let mut rec = r.request;
    rec.access = r.access;
    write_error(io, wbuf, &r.err, &r.rid, rec, latency_us, keep, r.head_req).await?;
    Ok(keep)
}

/// Read and drop a request body of `len` bytes (some may be in `rbuf` already), within the
/// header read timeout. Returns false if it is too large, late, or the client went away.
pub(super) async fn drain_body<IO>(w: &Worker, io: &mut IO, rbuf: &mut BytesMut, len: u64) -> bool
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

/// Forward one request and its response. Returns whether the client connection stays open.
pub(super) async fn forward<IO>(
    w: &Worker,
    mut plan: Box<Plan>,
    io: &mut IO,
    rbuf: &mut BytesMut,
    wbuf: &mut Vec<u8>,
    shutdown: &Registration,
    deadline: &mut LazyTimer,
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
            let waited = wait::queue(&mut flow, route, &*shared.clock, rng).await;
            if let Some(r) = plan.request.as_mut() {
                let waited = shared.clock.now().saturating_since(plan.t0);
                r.outcome.queue_wait_us = Some(waited.as_nanos() as f64 / 1e3);
            }
            match waited {
                Ok(t) => {
                    RequestInfo::admission(&mut plan.access, prio, None);
                    t
                }
                Err(r) => {
                    let err = route.refused(&r, prio, &mut plan.access);
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
    let (mut rec, mut up, raw, body_read, try_us, latency_us, ei) = loop {
        let ei = next.endpoint;
        let endpoint = &route.endpoints[ei];
        let scope = ScopeRef::Endpoint {
            route: plan.route as u32,
            endpoint: ei as u32,
        };
        let mut rec = Record::start(plan.snap.clone(), scope, w.id);
        let started = shared.clock.now();
        let limit = next.deadline.saturating_since(started);
        deadline.set(next.deadline, started);
        let span = tracing::debug_span!(
            "request",
            request_id = ?plan.rid,
            route = %route.cfg.name,
            upstream = %endpoint.address,
            try_ = next.attempt,
        );
        let exchange = exchange(w, plan, ei, &out, &mut remaining, io, rbuf);
        let result = tokio::select! {
            biased;
            r = exchange.instrument(span) => Ok(r),
            _ = deadline.expired() => Err(()),
        };
        let now = shared.clock.now();
        // Each try is measured from its own start; the request from its arrival.
        let latency_us = now.saturating_since(plan.t0).as_nanos() as f64 / 1e3;
        let try_us = now
            .saturating_since(flow.try_started().unwrap_or(plan.t0))
            .as_nanos() as f64
            / 1e3;
        rec.outcome.latency_us = try_us;
        rec.outcome.bytes_in = plan.body_len;
        let replayable = plan.body_len == 0;
        let rng = rng.get_or_insert_with(|| w.rng());
        let (failure, body_read, err) = match result {
            Ok(Ok((up, raw, body_read))) => {
                let status = raw.status;
                match flow.answered(route, status, now, rng) {
                    Next::Backoff { until } => {
                        // The answer is dropped unread, and its connection with it.
                        rec.outcome.status = status;
                        rec.outcome.upstream_status = Some(status);
                        drop((rec, up));
                        next = wait::backoff(&mut flow, route, until, &*shared.clock).await;
                        continue;
                    }
                    Next::Deliver | Next::Fail(_) => {
                        break (rec, up, raw, body_read, try_us, latency_us, ei)
                    }
                }
            }
            Ok(Err((Failure::Client(e), _))) => {
                // The client went away or broke its own request: nothing to answer (the
                // rec's status stays 499) and nothing against the upstream.
                flow.client_failed(route);
                rec.carry(access, flow.tries());
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
            rec.outcome.status = err.status().as_u16();
            rec.outcome.failure = err.upstream_failure();
            drop(rec);
            next = wait::backoff(&mut flow, route, until, &*shared.clock).await;
            continue;
        }
        let keep = body_read && !plan.client_close;
        rec.carry(access, flow.tries());
        if let Some(r) = request.take() {
            rec.answers(r, latency_us);
        }
        write_error(io, wbuf, &err, &plan.rid, rec, try_us, keep, plan.head_req).await?;
        return Ok(keep);
    };
    let endpoint = &route.endpoints[ei];
    rec.permit = flow.take_permit();
    rec.carry(access, flow.tries());
    if let Some(r) = request.take() {
        rec.answers(r, latency_us);
    }

    let status = raw.status;
    rec.outcome.status = status;
    rec.outcome.upstream_status = Some(status);

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
                rec.outcome.upstream_status = None;
                write_error(
                    io,
                    wbuf,
                    &err,
                    &plan.rid,
                    rec,
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
    let close = plan.client_close || shutdown.is_draining();

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
    rec.outcome.bytes_out = bytes_out;
    match result {
        Ok(()) => {}
        Err(Failure::Upstream(e)) => {
            rec.outcome.failure = Some(crate::error::UpstreamFailure::Reset);
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
    drop(rec);
    io.write_all(wbuf).await?;
    Ok(body_read && !close)
}

pub(super) enum Failure {
    /// No connection to the upstream.
    Connect(String),
    /// The upstream broke the exchange.
    Upstream(H1Error),
    /// The client broke it (closed, reset, short body).
    Client(io::Error),
}

/// Send the head and body upstream and read the response head. On failure, also says whether
/// the request body was read completely from the client.
pub(super) async fn exchange<IO>(
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
pub(super) async fn copy_body<IO>(
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

/// Answer with a JSON error, recorded through `rec`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn write_error<IO>(
    io: &mut IO,
    wbuf: &mut Vec<u8>,
    err: &ProxyError,
    rid: &HeaderValue,
    mut rec: Record,
    latency_us: f64,
    keep: bool,
    head_req: bool,
) -> io::Result<()>
where
    IO: AsyncWrite + Unpin,
{
    use std::io::Write as _;
    let status = err.status();
    rec.outcome.status = status.as_u16();
    rec.outcome.failure = rec.outcome.failure.or(err.upstream_failure());
    rec.outcome.latency_us = latency_us;
    crate::error::log_answer(err, rid.to_str().unwrap_or(""), rec.now_secs());
    let body = err.json_body(rid.to_str().ok());
    rec.outcome.bytes_out = if head_req { 0 } else { body.len() as u64 };
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
    drop(rec);
    io.write_all(wbuf).await
}
