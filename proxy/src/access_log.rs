//! The optional access log: one JSON line per client request.
//!
//! Off by default (`[access_log]` in the config turns it on). The request path never formats
//! or writes: when a request is recorded, its [`Guard`](crate::body::Guard) hands a small
//! [`Entry`] (numbers, the request id, the path, and the snapshot it ran on, from which the
//! writer reads route and endpoint names) to a bounded channel with `try_send`. One writer
//! thread formats and writes the lines, flushing whenever it has caught up. If the writer
//! falls behind (a slow disk, a full pipe), new lines are dropped and counted in
//! `vivremotion_proxy_access_log_lines_dropped_total`; requests never wait for the log.

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

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessLogConfig {
    pub target: Target,
    /// Lines that may wait for the writer; more are dropped and counted.
    pub buffer: usize,
}

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

/// What the request path knows of a request for its log line, filled in as it goes.
#[derive(Debug)]
pub struct RequestInfo {
    log: Arc<AccessLog>,
    pub request_id: HeaderValue,
    pub method: http::Method,
    /// Path and query as the client sent them.
    pub target: String,
    pub t0: Nanos,
    pub retries: u32,
    pub priority: Option<Priority>,
    pub admission: Admission,
}

impl RequestInfo {
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

    /// Tries after the first.
    pub fn tries(info: &mut Option<Box<RequestInfo>>, tries: u32) {
        if let Some(i) = info {
            i.retries = tries.saturating_sub(1);
        }
    }
}

/// One line, as it crosses to the writer.
struct Entry {
    info: Box<RequestInfo>,
    snap: Arc<Snapshot>,
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

pub struct AccessLog {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
    written: Arc<AtomicU64>,
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
        let written = Arc::new(AtomicU64::new(0));
        let w = written.clone();
        std::thread::Builder::new()
            .name("vm-access-log".into())
            .spawn(move || write_loop(rx, std::io::BufWriter::with_capacity(64 * 1024, out), &w))
            .map_err(AccessLogError::Thread)?;
        Ok(Arc::new(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
            written,
        }))
    }

    /// The start of a request's record, or `None` when there is no access log.
    pub fn begin(
        log: &Option<Arc<AccessLog>>,
        request_id: &HeaderValue,
        method: &str,
        target: &str,
        t0: Nanos,
    ) -> Option<Box<RequestInfo>> {
        let log = log.as_ref()?;
        Some(Box::new(RequestInfo {
            log: log.clone(),
            request_id: request_id.clone(),
            method: http::Method::from_bytes(method.as_bytes()).unwrap_or_default(),
            target: target.to_string(),
            t0,
            retries: 0,
            priority: None,
            admission: Admission::None,
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

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    pub fn written(&self) -> u64 {
        self.written.load(Relaxed)
    }
}

/// Called by the guard when the request is recorded: never blocks.
pub(crate) fn submit(
    info: Box<RequestInfo>,
    snap: &Arc<Snapshot>,
    scope: ScopeRef,
    outcome: &Outcome,
) {
    let now = snap.clock.now();
    let duration_us = now.saturating_since(info.t0).as_nanos() as f64 / 1e3;
    let log = info.log.clone();
    let entry = Entry {
        info,
        snap: snap.clone(),
        scope,
        outcome: *outcome,
        unix_ms: snap.clock.unix_ms(),
        duration_us,
    };
    match log.tx.try_send(Msg::Line(entry)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            log.dropped.fetch_add(1, Relaxed);
        }
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
    /// Request received → last byte handed to the client (or the client left).
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
        request_id: e.info.request_id.to_str().unwrap_or(""),
        method: e.info.method.as_str(),
        path: &e.info.target,
        route,
        upstream,
        status: e.outcome.status,
        upstream_status: e.outcome.upstream_status,
        latency_ms: ms(e.outcome.latency_us),
        duration_ms: ms(e.duration_us),
        bytes_in: e.outcome.bytes_in,
        bytes_out: e.outcome.bytes_out,
        retries: e.info.retries,
        priority: e.info.priority,
        admission: e.info.admission,
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

fn write_loop(rx: Receiver<Msg>, mut out: impl Write, written: &AtomicU64) {
    let mut buf = Vec::with_capacity(512);
    let mut write = |e: Entry, out: &mut dyn Write| {
        buf.clear();
        format(&e, &mut buf);
        if out.write_all(&buf).is_ok() {
            written.fetch_add(1, Relaxed);
        }
    };
    // Block for the next message; after a burst, flush once caught up, so a quiet log is
    // never behind and a busy one is written in large pieces.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Msg::Line(e) => write(e, &mut out),
                Msg::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.try_send(());
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}
