//! The optional access log: one JSON line per client request.
//!
//! Off by default (`[access_log]` in the config turns it on). A request's [`RequestInfo`] is
//! created when its head is read and filled in as the request goes; dropping it writes the
//! line, exactly once. Normally the request's final [`Record`](crate::body::Record) carries it
//! and hands it the outcome when the request is recorded; if the request ends any other way
//! (the client resets an HTTP/2 stream or goes away while the request waits in the admission
//! queue or in a retry backoff, or the drain timeout cuts the connection), the line is still
//! written, with status 499.
//!
//! The request path never formats or writes: dropping the info hands a small [`Entry`]
//! (numbers, the request id, the path, and the snapshot it ran on, from which the writer reads
//! route and endpoint names) to a bounded channel with `try_send`. One writer thread formats
//! and writes the lines, flushing whenever it has caught up. If the writer falls behind (a slow
//! disk, a full pipe), new lines are dropped and counted in
//! `vivremotion_proxy_access_log_lines_dropped_total`; lines lost to a write error are counted
//! in `..._write_errors_total`. Requests never wait for the log.

use crate::body::ScopeRef;
use crate::snapshot::Snapshot;
use crate::telemetry::Outcome;
use http::HeaderValue;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use vivremotion_protocol::telemetry::Priority;
use vivremotion_protocol::Nanos;

pub use crate::config::{AccessLogConfig, Target};

/// What admission control decided about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// Answered before admission (no route, bad request).
    None,
    Admitted,
    /// Refused by a rate limit (429).
    Limited,
    /// Shed by the concurrency limit (503).
    Shed,
}

/// A request's access log line in the making. Dropping it writes the line.
pub struct RequestInfo {
    log: Arc<AccessLog>,
    snap: Arc<Snapshot>,
    request_id: HeaderValue,
    method: http::Method,
    /// Path and query as the client sent them.
    target: String,
    t0: Nanos,
    retries: u32,
    priority: Option<Priority>,
    admission: Admission,
    route: Option<u32>,
    /// Request body bytes, counted by the body as it streams (hyper path).
    bytes_in: Option<Arc<AtomicU64>>,
    /// Set when the request is recorded.
    end: Option<(ScopeRef, Outcome)>,
}

impl std::fmt::Debug for RequestInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestInfo")
            .field("request_id", &self.request_id)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl RequestInfo {
    /// The request runs on `route` of its snapshot.
    pub fn route(info: &mut Option<Box<RequestInfo>>, route: usize) {
        if let Some(i) = info {
            i.route = Some(route as u32);
        }
    }

    /// Admission's verdict: `refused` is the error it answered with, if it refused.
    pub fn admission(
        info: &mut Option<Box<RequestInfo>>,
        priority: Priority,
        refused: Option<&crate::error::ProxyError>,
    ) {
        if let Some(i) = info {
            i.priority = Some(priority);
            i.admission = match refused {
                None => Admission::Admitted,
                Some(crate::error::ProxyError::RateLimited { .. }) => Admission::Limited,
                Some(_) => Admission::Shed,
            };
        }
    }

    /// Tries so far (the line reports the tries after the first).
    pub(crate) fn set_tries(&mut self, tries: u32) {
        self.retries = tries.saturating_sub(1);
    }

    /// A counter the request body adds its bytes to, when there is an access log.
    pub fn count_body(info: &mut Option<Box<RequestInfo>>) -> Option<Arc<AtomicU64>> {
        let i = info.as_mut()?;
        Some(i.bytes_in.get_or_insert_with(Default::default).clone())
    }

    /// The request was recorded with this outcome (called by the guard that records it).
    pub(crate) fn finish(&mut self, scope: ScopeRef, outcome: &Outcome) {
        self.end = Some((scope, *outcome));
    }
}

impl Drop for RequestInfo {
    fn drop(&mut self) {
        let clock = &self.snap.clock;
        let duration_us = clock.now().saturating_since(self.t0).as_nanos() as f64 / 1e3;
        let (scope, mut outcome) = self.end.take().unwrap_or_else(|| {
            // Never answered: the client left (or the drain timeout closed the connection).
            let scope = self.route.map_or(ScopeRef::Unmatched, ScopeRef::Route);
            (scope, Outcome::new(499, duration_us))
        });
        if let Some(n) = &self.bytes_in {
            outcome.bytes_in = outcome.bytes_in.max(n.load(Relaxed));
        }
        let entry = Entry {
            snap: self.snap.clone(),
            request_id: std::mem::replace(&mut self.request_id, HeaderValue::from_static("")),
            method: std::mem::take(&mut self.method),
            target: std::mem::take(&mut self.target),
            retries: self.retries,
            priority: self.priority,
            admission: self.admission,
            scope,
            outcome,
            unix_ms: clock.unix_ms(),
            duration_us,
        };
        if self.log.tx.try_send(Msg::Line(entry)).is_err() {
            self.log.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// One line, as it crosses to the writer.
struct Entry {
    snap: Arc<Snapshot>,
    request_id: HeaderValue,
    method: http::Method,
    target: String,
    retries: u32,
    priority: Option<Priority>,
    admission: Admission,
    scope: ScopeRef,
    outcome: Outcome,
    unix_ms: u64,
    duration_us: f64,
}

enum Msg {
    Line(Entry),
    /// Write out everything before this, then answer.
    Flush(SyncSender<()>),
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    write_errors: AtomicU64,
}

pub struct AccessLog {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("dropped", &self.dropped.load(Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("access_log.path: cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the access log writer: {0}")]
    Thread(std::io::Error),
}

impl AccessLog {
    /// Open the target and start the writer thread. It ends when the last handle is dropped,
    /// after writing what is queued.
    pub fn start(cfg: &AccessLogConfig) -> Result<Arc<AccessLog>, AccessLogError> {
        let out: Box<dyn Write + Send> = match &cfg.target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::Stderr => Box::new(std::io::stderr()),
            Target::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| AccessLogError::Open {
                        path: p.clone(),
                        source,
                    })?,
            ),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.buffer.max(1));
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        std::thread::Builder::new()
            .name("vm-access-log".into())
            .spawn(move || write_loop(rx, std::io::BufWriter::with_capacity(64 * 1024, out), &c))
            .map_err(AccessLogError::Thread)?;
        Ok(Arc::new(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
            counters,
        }))
    }

    /// The start of a request's line, or `None` when there is no access log.
    pub fn begin(
        log: &Option<Arc<AccessLog>>,
        snap: &Arc<Snapshot>,
        request_id: &HeaderValue,
        method: &str,
        target: &str,
        t0: Nanos,
    ) -> Option<Box<RequestInfo>> {
        let log = log.as_ref()?;
        Some(Box::new(RequestInfo {
            log: log.clone(),
            snap: snap.clone(),
            request_id: request_id.clone(),
            method: http::Method::from_bytes(method.as_bytes()).unwrap_or_default(),
            target: target.to_string(),
            t0,
            retries: 0,
            priority: None,
            admission: Admission::None,
            route: None,
            bytes_in: None,
            end: None,
        }))
    }

    /// Write out every line queued so far; waits at most `within`. Called once requests have
    /// drained, so the last lines are on disk before the process exits.
    pub fn flush(&self, within: Duration) -> bool {
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let mut msg = Msg::Flush(done_tx);
        // Room comes quickly (the writer drains continuously) unless its output is stuck:
        // then give up after `within`, counted in 1 ms steps.
        let mut tries = within.as_millis().max(1);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if tries > 0 => {
                    msg = m;
                    tries -= 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        done_rx.recv_timeout(within).is_ok()
    }

    /// Lines dropped because the writer's buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Lines written and flushed.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Relaxed)
    }

    /// Lines lost to a failed write or flush.
    pub fn write_errors(&self) -> u64 {
        self.counters.write_errors.load(Relaxed)
    }
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    request_id: &'a str,
    method: &'a str,
    path: &'a str,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    status: u16,
    upstream_status: Option<u16>,
    /// Request received → response headers.
    latency_ms: f64,
    /// Request received → the response's last byte handed to the connection (or the end of
    /// the request, if it ended otherwise).
    duration_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
    retries: u32,
    priority: Option<Priority>,
    admission: Admission,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_error: Option<&'static str>,
}

fn ms(us: f64) -> f64 {
    (us / 1e3 * 1000.0).round() / 1000.0
}

fn format(e: &Entry, out: &mut Vec<u8>) {
    let (route, upstream) = match e.scope {
        ScopeRef::Unmatched => (None, None),
        ScopeRef::Route(r) => (e.snap.routes.get(r as usize).map(|r| &*r.cfg.name), None),
        ScopeRef::Endpoint { route, endpoint } => {
            let r = e.snap.routes.get(route as usize);
            (
                r.map(|r| &*r.cfg.name),
                r.and_then(|r| r.endpoints.get(endpoint as usize))
                    .map(|ep| &*ep.address),
            )
        }
    };
    let ts = std::time::UNIX_EPOCH + Duration::from_millis(e.unix_ms);
    let line = Line {
        ts: humantime::format_rfc3339_millis(ts).to_string(),
        request_id: e.request_id.to_str().unwrap_or(""),
        method: e.method.as_str(),
        path: &e.target,
        route,
        upstream,
        status: e.outcome.status,
        upstream_status: e.outcome.upstream_status,
        latency_ms: ms(e.outcome.latency_us),
        duration_ms: ms(e.duration_us),
        bytes_in: e.outcome.bytes_in,
        bytes_out: e.outcome.bytes_out,
        retries: e.retries,
        priority: e.priority,
        admission: e.admission,
        upstream_error: e.outcome.failure.map(|f| match f {
            crate::error::UpstreamFailure::Connect => "connect",
            crate::error::UpstreamFailure::Timeout => "timeout",
            crate::error::UpstreamFailure::Reset => "reset",
        }),
    };
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        out.push(b'\n');
    }
}

fn write_loop(rx: Receiver<Msg>, mut out: impl Write, counters: &Counters) {
    let mut buf = Vec::with_capacity(512);
    // Lines handed to `out` since its last flush: written once the flush succeeds.
    let mut unflushed = 0u64;
    let flush = |out: &mut dyn Write, unflushed: &mut u64| {
        let n = std::mem::take(unflushed);
        match out.flush() {
            Ok(()) => counters.written.fetch_add(n, Relaxed),
            Err(e) => {
                let before = counters.write_errors.fetch_add(n, Relaxed);
                // Once, and then every 10,000 lost lines: the counter says how many.
                if before == 0 || before / 10_000 != (before + n) / 10_000 {
                    tracing::warn!(error = %e, "access log: cannot write; lines are lost");
                }
                before
            }
        };
    };
    // Block for the next message; after a burst, flush once caught up, so a quiet log is
    // never behind and a busy one is written in large pieces.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Msg::Line(e) => {
                    buf.clear();
                    format(&e, &mut buf);
                    drop(e);
                    match out.write_all(&buf) {
                        Ok(()) => unflushed += 1,
                        Err(_) => {
                            counters.write_errors.fetch_add(1, Relaxed);
                        }
                    }
                }
                Msg::Flush(done) => {
                    flush(&mut out, &mut unflushed);
                    let _ = done.try_send(());
                }
            }
            next = rx.try_recv().ok();
        }
        flush(&mut out, &mut unflushed);
    }
    flush(&mut out, &mut unflushed);
}
