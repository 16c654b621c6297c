//! Demo upstreams: small HTTP servers with a latency profile that can be slowed, made to fail
//! or stopped at run time, so a user can watch the proxy (and later the brain) react.
//!
//! Every response is JSON describing what the upstream received (method, path, protocol
//! version, headers, body size), so the headers the proxy adds are visible. Extra paths:
//! `/sse?n=5&interval_ms=200` streams server-sent events; a request with `Upgrade` is answered
//! `101` and echoes bytes back on the upgraded connection.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Behaviour of a demo upstream.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DemoSettings {
    /// Base latency before answering.
    pub latency_ms: f64,
    /// Extra latency, uniform in `0..jitter_ms`.
    pub jitter_ms: f64,
    /// Share of requests answered 503.
    pub error_rate: f64,
    /// Stopped: connections are refused and open ones are closed.
    pub down: bool,
    /// Requests served at once (0: no limit); the rest wait in line, as on a server with a
    /// fixed pool of workers. Capacity is then `max_concurrent / latency`.
    #[serde(default)]
    pub max_concurrent: u32,
}

impl DemoSettings {
    pub fn with_latency(latency_ms: f64, jitter_ms: f64) -> Self {
        DemoSettings {
            latency_ms,
            jitter_ms,
            error_rate: 0.0,
            down: false,
            max_concurrent: 0,
        }
    }
}

/// A partial update, as sent to `POST /api/v1/demo/upstreams/{name}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoSettingsPatch {
    pub latency_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub error_rate: Option<f64>,
    pub down: Option<bool>,
    pub max_concurrent: Option<u32>,
}

impl DemoSettingsPatch {
    fn validate(&self) -> Result<(), String> {
        for (field, v, max) in [
            ("latency_ms", self.latency_ms, 600_000.0),
            ("jitter_ms", self.jitter_ms, 600_000.0),
            ("error_rate", self.error_rate, 1.0),
        ] {
            if let Some(v) = v {
                if !v.is_finite() || v < 0.0 || v > max {
                    return Err(format!("{field}: {v} is outside 0..={max}"));
                }
            }
        }
        Ok(())
    }
}

fn gate(max_concurrent: u32) -> Option<Arc<tokio::sync::Semaphore>> {
    (max_concurrent > 0).then(|| Arc::new(tokio::sync::Semaphore::new(max_concurrent as usize)))
}

pub struct DemoUpstream {
    pub name: String,
    addr: Mutex<SocketAddr>,
    settings: Mutex<DemoSettings>,
    /// The worker pool when `max_concurrent` is set; replaced when the setting changes.
    gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    served: AtomicU64,
    connections: AtomicU64,
    seed: u64,
    /// Stops the running server; `None` while down.
    stop: Mutex<Option<watch::Sender<bool>>>,
}

impl DemoUpstream {
    pub fn new(
        name: &str,
        addr: SocketAddr,
        settings: DemoSettings,
        seed: u64,
    ) -> Arc<DemoUpstream> {
        Arc::new(DemoUpstream {
            name: name.to_string(),
            addr: Mutex::new(addr),
            gate: Mutex::new(gate(settings.max_concurrent)),
            settings: Mutex::new(settings),
            served: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            seed,
            stop: Mutex::new(None),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        *self.addr.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn settings(&self) -> DemoSettings {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }

    pub fn describe(&self) -> serde_json::Value {
        json!({
            "name": self.name,
            "address": self.addr().to_string(),
            "settings": self.settings(),
            "served": self.served(),
        })
    }

    /// Bind (port 0 picks a free port, kept for restarts) and serve until stopped.
    pub async fn start(self: &Arc<Self>) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(self.addr()).await?;
        let local = listener.local_addr()?;
        *self.addr.lock().unwrap_or_else(|p| p.into_inner()) = local;
        let (tx, rx) = watch::channel(false);
        if let Some(old) = self
            .stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(tx)
        {
            let _ = old.send(true);
        }
        tokio::spawn(self.clone().serve(listener, rx));
        Ok(local)
    }

    /// Stop listening and close every open connection.
    pub fn stop(&self) {
        if let Some(tx) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(true);
        }
    }

    /// Apply a settings patch; `down` stops or restarts the server.
    pub async fn apply(self: &Arc<Self>, patch: DemoSettingsPatch) -> Result<(), String> {
        patch.validate()?;
        let was_down;
        let now_down;
        {
            let mut s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
            was_down = s.down;
            if let Some(v) = patch.latency_ms {
                s.latency_ms = v;
            }
            if let Some(v) = patch.jitter_ms {
                s.jitter_ms = v;
            }
            if let Some(v) = patch.error_rate {
                s.error_rate = v;
            }
            if let Some(v) = patch.down {
                s.down = v;
            }
            if let Some(v) = patch.max_concurrent {
                s.max_concurrent = v;
                *self.gate.lock().unwrap_or_else(|p| p.into_inner()) = gate(v);
            }
            now_down = s.down;
        }
        match (was_down, now_down) {
            (false, true) => self.stop(),
            (true, false) => {
                if let Err(e) = self.start().await {
                    self.settings.lock().unwrap_or_else(|p| p.into_inner()).down = true;
                    return Err(format!("cannot listen on {} again: {e}", self.addr()));
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        mut stop: watch::Receiver<bool>,
    ) {
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    self.connections.fetch_add(1, Relaxed);
                    let me = self.clone();
                    let builder = builder.clone();
                    let mut stop = stop.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            let me = me.clone();
                            async move { Ok::<_, Infallible>(me.respond(req).await) }
                        });
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                        // Going down drops the connection at once, like a crashed process.
                        tokio::select! {
                            _ = conn => {}
                            _ = stop.changed() => {}
                        }
                    });
                }
            }
        }
    }

    async fn respond(self: Arc<Self>, mut req: Request<Incoming>) -> Response<DemoBody> {
        let n = self.served.fetch_add(1, Relaxed);
        let mut rng = SmallRng::seed_from_u64(self.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let s = self.settings();
        let gate = self.gate.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Held until the answer is ready: later requests queue behind the busy workers.
        let _worker = match gate {
            Some(g) => g.acquire_owned().await.ok(),
            None => None,
        };
        let delay = s.latency_ms
            + if s.jitter_ms > 0.0 {
                rng.random_range(0.0..s.jitter_ms)
            } else {
                0.0
            };
        if delay > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(delay / 1000.0)).await;
        }
        if s.error_rate > 0.0 && rng.random::<f64>() < s.error_rate {
            let body = json!({"error": {"type": "demo_error", "message": format!("{} injected a failure", self.name)}});
            return json_response(StatusCode::SERVICE_UNAVAILABLE, body.to_string());
        }
        if req.headers().contains_key(http::header::UPGRADE) {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = Response::new(DemoBody::Full(None));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut().insert(
                http::header::UPGRADE,
                req.headers()[http::header::UPGRADE].clone(),
            );
            r.headers_mut().insert(
                http::header::CONNECTION,
                HeaderValue::from_static("upgrade"),
            );
            return r;
        }
        if req.uri().path() == "/sse" {
            return self.sse(&req);
        }
        let method = req.method().to_string();
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let version = format!("{:?}", req.version());
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("<binary>"))))
            .collect();
        let mut body_bytes = 0u64;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => body_bytes += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => break,
            }
        }
        let v = json!({
            "upstream": self.name,
            "method": method,
            "path": path,
            "version": version,
            "body_bytes": body_bytes,
            "latency_ms": (delay * 1000.0).round() / 1000.0,
            "headers": headers,
        });
        json_response(StatusCode::OK, v.to_string())
    }

    fn sse(&self, req: &Request<Incoming>) -> Response<DemoBody> {
        let q = req.uri().query().unwrap_or("");
        let param = |name: &str, default: u64| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == name)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(default)
        };
        let n = param("n", 5).min(10_000);
        let interval = Duration::from_millis(param("interval_ms", 200).min(60_000));
        let (tx, rx) = mpsc::channel(4);
        let name = self.name.clone();
        tokio::spawn(async move {
            for i in 0..n {
                let event = format!("id: {i}\ndata: {{\"upstream\":\"{name}\",\"event\":{i}}}\n\n");
                if tx.send(Bytes::from(event)).await.is_err() {
                    return;
                }
                if i + 1 < n {
                    tokio::time::sleep(interval).await;
                }
            }
        });
        let mut r = Response::new(DemoBody::Stream(rx));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        r.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        r
    }
}

fn json_response(status: StatusCode, body: String) -> Response<DemoBody> {
    let mut r = Response::new(DemoBody::Full(Some(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A whole body or a stream of chunks.
pub enum DemoBody {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for DemoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            DemoBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            DemoBody::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, DemoBody::Full(None))
    }
}

/// The named demo upstreams of `vivremotion up`.
pub struct DemoUpstreams {
    list: Vec<Arc<DemoUpstream>>,
}

impl DemoUpstreams {
    /// The default trio: fast, medium and slow, each on a free loopback port.
    pub async fn start_default(seed: u64) -> std::io::Result<Arc<DemoUpstreams>> {
        let profiles = [
            ("alpha", 2.0, 3.0),
            ("beta", 8.0, 6.0),
            ("gamma", 25.0, 15.0),
        ];
        let mut list = Vec::new();
        for (i, (name, lat, jit)) in profiles.into_iter().enumerate() {
            let u = DemoUpstream::new(
                name,
                SocketAddr::from(([127, 0, 0, 1], 0)),
                DemoSettings::with_latency(lat, jit),
                seed.wrapping_add(i as u64),
            );
            u.start().await?;
            list.push(u);
        }
        Ok(Arc::new(DemoUpstreams { list }))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<DemoUpstream>> {
        self.list.iter().find(|u| u.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(|u| u.name.as_str()).collect()
    }

    pub fn all(&self) -> &[Arc<DemoUpstream>] {
        &self.list
    }

    pub fn describe(&self) -> Vec<serde_json::Value> {
        self.list.iter().map(|u| u.describe()).collect()
    }
}
