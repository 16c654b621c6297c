//! Wiring: binds listeners, starts workers, the admin API, the telemetry tick and the config
//! reloader, and drains on shutdown. [`App::build`] binds everything (port 0 allowed) so
//! callers and tests learn the real addresses before [`App::run`].

use crate::access_log::AccessLog;
use crate::admin::{metrics_handle, Admin};
use crate::config::Config;
use crate::demo::DemoUpstreams;
use crate::limits::redis::RedisStore;
use crate::limits::store::{LeaseStore, MemoryStore};
use crate::loops::{reload::reload_loop, supervise, telemetry::tick_loop, Loop};
use crate::server::{self, BoundListener, ServerError};
use crate::snapshot::BuildError;
use crate::state::Shared;
use crate::telemetry::Collector;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
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

pub use crate::admin::ReloadRequest;

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
                supervise(&shared.loops, Loop::Control, stop.clone(), || {
                    crate::loops::control::control_loop(shared.clone(), stop.clone())
                })
                .await
            })
        };
        let lease_task = {
            let (shared, store) = (self.shared.clone(), self.limit_store.clone());
            let stop = control_stop.clone();
            tokio::spawn(async move {
                supervise(&shared.loops, Loop::Lease, stop.clone(), || {
                    crate::loops::lease::lease_loop(shared.clone(), store.clone(), stop.clone())
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
