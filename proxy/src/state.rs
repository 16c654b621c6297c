//! State shared by the workers and the control tasks of one proxy process.

use crate::config::Config;
use crate::snapshot::{self, BuildError, Registries, Snapshot};
use crate::telemetry::TelemetryStore;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vivremotion_protocol::policy::PolicyError;
use vivremotion_protocol::{Clock, Policy};

/// Why a policy was not applied.
#[derive(Debug, thiserror::Error)]
pub enum PolicyRejected {
    #[error("{0}")]
    Invalid(#[from] PolicyError),
    #[error("{0}")]
    DoesNotFit(#[from] BuildError),
}

impl PolicyRejected {
    /// Every value [`reason`](Self::reason) can take.
    pub const REASONS: [&'static str; 3] = ["stale", "invalid", "does_not_fit_config"];

    pub fn reason(&self) -> &'static str {
        match self {
            PolicyRejected::Invalid(PolicyError::Stale { .. }) => "stale",
            PolicyRejected::Invalid(_) => "invalid",
            PolicyRejected::DoesNotFit(_) => "does_not_fit_config",
        }
    }
}

pub struct Shared {
    /// What the request path reads: swapped whole, never mutated.
    pub snapshot: ArcSwap<Snapshot>,
    pub registries: Registries,
    pub clock: Arc<dyn Clock>,
    pub telemetry: TelemetryStore,
    /// Set once shutdown starts: `/readyz` turns 503 so load balancers stop sending.
    pub draining: AtomicBool,
    /// Seed of the workers' RNGs.
    pub seed: u64,
    /// The access log, if the config asks for one (read at start).
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    /// The control loops' supervision state.
    pub loops: crate::loops::Loops,
    generation: AtomicU64,
    /// The generation of the snapshot last published (stored after the snapshot itself).
    published: AtomicU64,
    /// Serializes snapshot builds (config reloads and policy swaps).
    build_lock: Mutex<()>,
}

impl Shared {
    pub fn new(
        config: Config,
        clock: Arc<dyn Clock>,
        seed: u64,
        access_log: Option<Arc<crate::access_log::AccessLog>>,
    ) -> Result<Arc<Shared>, BuildError> {
        let mut registries = Registries::default();
        registries.limits.seed = seed;
        let keep = config.telemetry.keep_windows;
        let built = snapshot::build(Arc::new(config), None, true, &registries, 1, &clock)?;
        Ok(Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(built.snapshot),
            registries,
            clock,
            telemetry: TelemetryStore::new(keep),
            draining: AtomicBool::new(false),
            seed,
            access_log,
            loops: Default::default(),
            generation: AtomicU64::new(1),
            published: AtomicU64::new(1),
            build_lock: Mutex::new(()),
        }))
    }

    /// The generation of the snapshot in force: a relaxed load, cheaper than loading the
    /// snapshot, for callers that only need to know whether it changed.
    pub fn generation(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    pub fn config(&self) -> Arc<Config> {
        self.snapshot.load().config.clone()
    }

    /// Apply a new config, keeping the current policy. Settings that need a restart keep their
    /// running values, and a warning says so.
    pub fn apply_config(&self, mut config: Config) -> Result<Vec<String>, BuildError> {
        let _g = self.build_lock.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.snapshot.load_full();
        let mut warnings = Vec::new();
        let old = &cur.config;
        if config.listeners != old.listeners {
            warnings.push(
                "listeners changed: restart to apply; the old listeners keep serving".to_string(),
            );
            config.listeners = old.listeners.clone();
        }
        if config.admin != old.admin {
            warnings.push("admin.listen changed: restart to apply".to_string());
            config.admin = old.admin.clone();
        }
        if config.proxy.workers != old.proxy.workers {
            warnings.push("proxy.workers changed: restart to apply".to_string());
            config.proxy.workers = old.proxy.workers;
        }
        if config.telemetry.keep_windows != old.telemetry.keep_windows
            || config.telemetry.tick != old.telemetry.tick
        {
            warnings.push("telemetry settings changed: restart to apply".to_string());
            config.telemetry = old.telemetry.clone();
        }
        if config.access_log != old.access_log {
            warnings.push("access_log changed: restart to apply".to_string());
            config.access_log = old.access_log.clone();
        }
        if config.proxy.instance_id != old.proxy.instance_id {
            config.proxy.instance_id = old.proxy.instance_id.clone();
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let built = snapshot::build(
            Arc::new(config),
            cur.policy.clone(),
            false,
            &self.registries,
            generation,
            &self.clock,
        )?;
        warnings.extend(built.warnings);
        self.snapshot.store(Arc::new(built.snapshot));
        self.published.store(generation, Ordering::Release);
        Ok(warnings)
    }

    /// Apply a policy from the brain (or an operator). It must be valid, newer than the one in
    /// force, and fit the config; otherwise nothing changes.
    pub fn apply_policy(&self, policy: Policy) -> Result<u64, PolicyRejected> {
        let result = self.apply_policy_inner(policy);
        match &result {
            Ok(v) => {
                metrics::counter!("vivremotion_proxy_policy_applied_total").increment(1);
                metrics::gauge!("vivremotion_proxy_policy_version").set(*v as f64);
            }
            Err(e) => {
                metrics::counter!("vivremotion_proxy_policy_rejected_total", "reason" => e.reason()).increment(1);
            }
        }
        result
    }

    fn apply_policy_inner(&self, policy: Policy) -> Result<u64, PolicyRejected> {
        let _g = self.build_lock.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.snapshot.load_full();
        vivremotion_decide::build::admit_policy(&policy, cur.policy_version())?;
        let version = policy.version;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let built = snapshot::build(
            cur.config.clone(),
            Some(Arc::new(policy)),
            true,
            &self.registries,
            generation,
            &self.clock,
        )?;
        self.snapshot.store(Arc::new(built.snapshot));
        self.published.store(generation, Ordering::Release);
        Ok(version)
    }
}
