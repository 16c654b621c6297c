//! Wiring: binds listeners, starts workers, the admin API, the telemetry tick and the config
//! reloader, and drains on shutdown. [`App::build`] binds everything (port 0 allowed) so
//! callers and tests learn the real addresses before [`App::run`].

use crate::access_log::AccessLog;
use crate::admin::{metrics_handle, Admin};
use crate::config::Config;
use crate::demo::DemoUpstreams;
use crate::limits::redis::RedisStore;
use crate::limits::store::{LeaseStore, MemoryStore};
use crate::server::{self, BoundListener, ServerError};
use crate::snapshot::BuildError;
use crate::state::Shared;
use crate::supervise::{supervise, Loop};
use crate::telemetry::collector::InForceView;
use crate::telemetry::Collector;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use vivremotion_protocol::telemetry::Scope;
use vivremotion_protocol::{Clock, SystemClock};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("global_limits.redis_url: {0}")]
    LimitStore(crate::limits::store::StoreError),
    #[error(transparent)]
    AccessLog(#[from] crate::access_log::AccessLogError),
    #[error("admin API: cannot listen on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct AppOptions {
    pub config: Config,
    /// File the config came from, watched for changes and re-read on SIGHUP.
    pub config_path: Option<PathBuf>,
    pub demo: Option<Arc<DemoUpstreams>>,
    pub clock: Arc<dyn Clock>,
}

impl AppOptions {
    pub fn new(config: Config) -> AppOptions {
        AppOptions {
            config,
            config_path: None,
            demo: None,
            clock: Arc::new(SystemClock::new()),
        }
    }
}

pub struct App {
    shared: Arc<Shared>,
    listeners: Vec<BoundListener>,
    admin: std::net::TcpListener,
    admin_addr: SocketAddr,
    config_path: Option<PathBuf>,
    demo: Option<Arc<DemoUpstreams>>,
    /// Where global rate limits lease tokens (Redis, or this process).
    limit_store: Arc<dyn LeaseStore>,
}

/// A request to re-read the config file, answered with the warnings or the errors.
pub type ReloadRequest = oneshot::Sender<Result<Vec<String>, String>>;

impl App {
    pub fn build(opts: AppOptions) -> Result<App, AppError> {
        let cfg = &opts.config;
        let seed = cfg
            .proxy
            .seed
            // The binary's edge: the one place a seed is drawn from the OS.
            .unwrap_or_else(|| {
                #[allow(clippy::disallowed_methods)]
                let mut os = SmallRng::from_os_rng();
                os.random()
            });
        let workers = cfg.proxy.workers;
        let listeners = cfg
            .listeners
            .iter()
            .map(|l| server::bind(l, workers))
            .collect::<Result<Vec<_>, _>>()?;
        let admin_addr = cfg.admin.listen;
        let admin = std::net::TcpListener::bind(admin_addr)
            .and_then(|l| l.set_nonblocking(true).map(|_| l))
            .map_err(|source| AppError::AdminBind {
                addr: admin_addr,
                source,
            })?;
        let admin_addr = admin.local_addr().map_err(|source| AppError::AdminBind {
            addr: admin_addr,
            source,
        })?;
        // Read at start only: a reload cannot move global limits to another store.
        let limit_store: Arc<dyn LeaseStore> = match &cfg.global_limits.redis_url {
            Some(url) => Arc::new(
                RedisStore::new(url, cfg.global_limits.timeout).map_err(AppError::LimitStore)?,
            ),
            None => Arc::new(MemoryStore::new(opts.clock.clone())),
        };
        let access_log = match &cfg.access_log {
            Some(c) => Some(AccessLog::start(c)?),
            None => None,
        };
        let shared = Shared::new(opts.config, opts.clock, seed, access_log)?;
        Ok(App {
            limit_store,
            shared,
            listeners,
            admin,
            admin_addr,
            config_path: opts.config_path,
            demo: opts.demo,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Name and bound address of each proxy listener.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .map(|l| (l.name.clone(), l.local))
            .collect()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The seed of every decision's RNG: `proxy.seed`, or drawn at start (printed in the ready
    /// line so that a run can be reproduced).
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// Serve until `shutdown` resolves, then drain in-flight requests (up to the configured
    /// drain timeout) and return.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        metrics_handle();
        let (stop_tx, stop_rx) = watch::channel(false);
        let workers = server::spawn_workers(&self.shared, &mut self.listeners, &stop_rx)?;

        let (reload_tx, reload_rx) = mpsc::channel::<ReloadRequest>(4);
        let admin = Arc::new(Admin {
            shared: self.shared.clone(),
            demo: self.demo.clone(),
            reload: self.config_path.as_ref().map(|_| reload_tx),
        });
        let admin_listener = tokio::net::TcpListener::from_std(self.admin).map_err(|source| {
            AppError::AdminBind {
                addr: self.admin_addr,
                source,
            }
        })?;
        // The control plane outlives the drain: `/readyz` must answer 503 (not refuse the
        // connection) while requests finish, and leases, health checks and telemetry keep
        // serving the requests still in flight.
        let (control_stop_tx, control_stop) = watch::channel(false);
        let admin_task = tokio::spawn(serve_admin(admin_listener, admin, control_stop.clone()));
        let tick_task = {
            let shared = self.shared.clone();
            let stop = control_stop.clone();
            let instance = shared.config().proxy.instance_id.clone();
            // The collector outlives a restart of its loop: its cursors make the deltas.
            let tick_ms = shared.config().telemetry.tick.as_millis() as u64;
            let collector = Arc::new(std::sync::Mutex::new(Collector::new(
                &instance,
                tick_ms,
                shared.clock.unix_ms(),
            )));
            tokio::spawn(async move {
                supervise(&shared.loops, Loop::Telemetry, stop.clone(), || {
                    tick_loop(shared.clone(), collector.clone(), stop.clone())
                })
                .await
            })
        };
        let guard_task = {
            let shared = self.shared.clone();
            let stop = control_stop.clone();
            tokio::spawn(async move {
                supervise(&shared.loops, Loop::Guard, stop.clone(), || {
                    crate::health::guard_loop(shared.clone(), stop.clone())
                })
                .await
            })
        };
        let lease_task = {
            let (shared, store) = (self.shared.clone(), self.limit_store.clone());
            let stop = control_stop.clone();
            tokio::spawn(async move {
                supervise(&shared.loops, Loop::Lease, stop.clone(), || {
                    crate::limits::lease_loop(shared.clone(), store.clone(), stop.clone())
                })
                .await
            })
        };
        let reload_task = tokio::spawn(reload_loop(
            self.shared.clone(),
            self.config_path.clone(),
            reload_rx,
            stop_rx.clone(),
        ));

        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
        let joined = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        });
        let _ = joined.await;
        tracing::info!("drained");
        if let Some(log) = &self.shared.access_log {
            let log = log.clone();
            let _ = tokio::task::spawn_blocking(move || log.flush(Duration::from_secs(5))).await;
        }
        let _ = control_stop_tx.send(true);
        let _ = tokio::join!(admin_task, tick_task, guard_task, lease_task, reload_task);
        tracing::info!("stopped");
        Ok(())
    }
}

async fn serve_admin(
    listener: tokio::net::TcpListener,
    admin: Arc<Admin>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let admin = admin.clone();
                let builder = builder.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let admin = admin.clone();
                        async move { Ok::<_, Infallible>(admin.handle(req).await) }
                    });
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        }
    }
}

async fn tick_loop(
    shared: Arc<Shared>,
    collector: Arc<std::sync::Mutex<Collector>>,
    mut stop: watch::Receiver<bool>,
) {
    let tick = shared.config().telemetry.tick;
    // Ten samples of in-flight and queue depth per window (at most every 10 ms).
    let mut sampler = tokio::time::interval((tick / 10).max(Duration::from_millis(10)));
    sampler.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lock = |c: &std::sync::Mutex<Collector>| {
        c.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .window_end_ms()
    };
    loop {
        shared.loops.checkpoint(Loop::Telemetry);
        // Windows end on multiples of the tick on the Unix clock, in every instance alike.
        let end = lock(&collector);
        let wait = Duration::from_millis(end.saturating_sub(shared.clock.unix_ms()));
        tokio::select! {
            _ = stop.changed() => {
                // The requests that finished during the drain go into one last window.
                close_window(&shared, &collector, shared.clock.unix_ms());
                break;
            }
            _ = tokio::time::sleep(wait) => close_window(&shared, &collector, end),
            _ = sampler.tick() => with_view(&shared, |view| {
                collector
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .sample(&shared.registries.stats, view);
            }),
        }
    }
}

/// What the snapshot in force says of each scope, for the collector.
fn with_view<R>(shared: &Shared, f: impl FnOnce(&InForceView<'_>) -> R) -> R {
    let snap = shared.snapshot.load();
    let route = |s: &Scope| snap.routes.iter().find(|r| r.cfg.name == s.route);
    let weight = |s: &Scope| -> Option<u32> {
        let up = s.upstream.as_ref()?;
        let r = route(s)?;
        let i = r.endpoints.iter().position(|e| &e.address == up)?;
        r.balancer.weights().get(i).copied()
    };
    let concurrency = |s: &Scope| -> Option<(u32, u64)> {
        if s.upstream.is_some() {
            return None;
        }
        let c = route(s)?.limits.concurrency.as_ref()?;
        Some((c.limit(), u64::from(c.waiting())))
    };
    f(&InForceView {
        policy_version: snap.policy_version(),
        config_fingerprint: &snap.config_fingerprint,
        weight: &weight,
        concurrency: &concurrency,
    })
}

fn close_window(shared: &Shared, collector: &std::sync::Mutex<Collector>, end_ms: u64) {
    let mut batch = with_view(shared, |view| {
        collector
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .tick(&shared.registries.stats, end_ms, view)
    });
    let now = shared.clock.now();
    mark_endpoint_state(shared, &mut batch.windows, now);
    shared.telemetry.push(batch);
    let snap = shared.snapshot.load();
    for r in snap.routes.iter() {
        r.clients.sweep(now);
    }
}

fn mark_endpoint_state(
    shared: &Shared,
    windows: &mut [vivremotion_protocol::Telemetry],
    now: vivremotion_protocol::Nanos,
) {
    use crate::guard::breaker::BreakerState;
    let eps = shared.registries.endpoints();
    for w in windows.iter_mut() {
        let (Some(c), Some(u)) = (&w.scope.cluster, &w.scope.upstream) else {
            continue;
        };
        if let Some(e) = eps.iter().find(|e| &e.cluster == c && &e.address == u) {
            w.resilience.ejected = e.ejected(now);
            w.resilience.unhealthy = !e.actively_healthy();
            w.resilience.breaker_open =
                matches!(e.breaker_view(now), Some((BreakerState::Open, _, _)));
        }
    }
}

/// Hash of the file's content, or `None` if it cannot be read.
fn fingerprint(path: &Path) -> Option<u64> {
    std::fs::read(path)
        .ok()
        .map(|b| crate::balance::hash::hash64(&b, 0))
}

fn reload_now(shared: &Shared, path: &Path, trigger: &str) -> Result<Vec<String>, String> {
    let result = Config::load(path).map_err(|e| e.to_string()).and_then(|c| {
        let mut warnings = c.warnings();
        let applied = shared.apply_config(c).map_err(|e| e.to_string())?;
        warnings.extend(applied);
        Ok(warnings)
    });
    match &result {
        Ok(warnings) => {
            metrics::counter!("vivremotion_proxy_config_reloads_total", "result" => "applied")
                .increment(1);
            tracing::info!(trigger, path = %path.display(), "config reloaded");
            for w in warnings {
                tracing::warn!(trigger, "{w}");
            }
        }
        Err(e) => {
            metrics::counter!("vivremotion_proxy_config_reloads_total", "result" => "rejected")
                .increment(1);
            tracing::error!(trigger, path = %path.display(), "config rejected, the previous config keeps serving:\n{e}");
        }
    }
    result
}

async fn reload_loop(
    shared: Arc<Shared>,
    path: Option<PathBuf>,
    mut requests: mpsc::Receiver<ReloadRequest>,
    mut stop: watch::Receiver<bool>,
) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by file change or the admin API");
            None
        }
    };
    let mut last = path.as_deref().and_then(fingerprint);
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => break,
            _ = hup_recv => match &path {
                Some(p) => {
                    last = fingerprint(p);
                    let _ = reload_now(&shared, p, "SIGHUP");
                }
                None => tracing::info!("SIGHUP: no config file to reload"),
            },
            Some(done) = requests.recv() => {
                if let Some(p) = &path {
                    last = fingerprint(p);
                    let _ = done.send(reload_now(&shared, p, "admin API"));
                }
            }
            _ = poll.tick() => {
                let Some(p) = &path else { continue };
                let now = fingerprint(p);
                if now.is_some() && now != last {
                    // An editor may be half-way through writing: wait for the content to settle.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let settled = fingerprint(p);
                    if settled == now {
                        last = now;
                        let _ = reload_now(&shared, p, "file change");
                    }
                }
            }
        }
    }
}
