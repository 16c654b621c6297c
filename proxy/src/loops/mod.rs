//! The control thread's loops, and their supervision.
//!
//! - [`control`]: drives the decision core's control step and performs health checks.
//! - [`lease`]: leases tokens of global rate limits from the shared store.
//! - [`telemetry`]: closes one telemetry batch per aligned tick.
//! - [`reload`]: config reloads (SIGHUP, file change, admin API).
//!
//! Supervision: a loop that panics is logged, counted and started again (after a growing
//! pause), and `/readyz` says not ready while it is down, so a proxy whose health checks or
//! telemetry silently died does not keep claiming to be fine.
//!
//! Fault injection for tests: with `VIVREMOTION_TEST_FAULTS=1` in the environment, the admin
//! API's `POST /api/v1/debug/faults` arms a loop to panic at its next checkpoint, and keeps it
//! panicking on every restart until disarmed.

pub mod control;
pub mod lease;
pub mod reload;
pub mod telemetry;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::watch;

/// The control loops under supervision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loop {
    /// Telemetry windows and pool sweeps.
    Telemetry = 0,
    /// The control step: health checks, sweeps, adaptive limits.
    Control = 1,
    /// Global rate limit leases.
    Lease = 2,
}

impl Loop {
    pub const ALL: [Loop; 3] = [Loop::Telemetry, Loop::Control, Loop::Lease];

    pub fn name(self) -> &'static str {
        match self {
            Loop::Telemetry => "telemetry",
            Loop::Control => "control",
            Loop::Lease => "lease",
        }
    }

    pub fn parse(s: &str) -> Option<Loop> {
        Loop::ALL.into_iter().find(|l| l.name() == s)
    }
}

/// Up/down state and restart counts of the loops.
#[derive(Debug)]
pub struct Loops {
    down: [AtomicBool; 3],
    restarts: [AtomicU64; 3],
    armed: [AtomicBool; 3],
    /// Fault injection is allowed (test environment).
    pub faults: bool,
}

impl Default for Loops {
    fn default() -> Self {
        Loops {
            down: Default::default(),
            restarts: Default::default(),
            armed: Default::default(),
            faults: std::env::var("VIVREMOTION_TEST_FAULTS").is_ok_and(|v| v == "1"),
        }
    }
}

impl Loops {
    pub fn is_down(&self, l: Loop) -> bool {
        self.down[l as usize].load(Relaxed)
    }

    pub fn restarts(&self, l: Loop) -> u64 {
        self.restarts[l as usize].load(Relaxed)
    }

    /// The loops that are down now.
    pub fn down(&self) -> Vec<&'static str> {
        Loop::ALL
            .into_iter()
            .filter(|l| self.is_down(*l))
            .map(Loop::name)
            .collect()
    }

    /// Arm (or disarm) an injected panic; false if fault injection is off.
    pub fn arm(&self, l: Loop, on: bool) -> bool {
        if self.faults {
            self.armed[l as usize].store(on, Relaxed);
        }
        self.faults
    }

    /// Called by a loop on each round: panics if a fault is armed for it.
    pub fn checkpoint(&self, l: Loop) {
        if self.faults && self.armed[l as usize].load(Relaxed) {
            panic!("injected fault in the {} loop", l.name());
        }
    }
}

/// Run the loop `make` builds under supervision until it returns (it returns when `stop`
/// says so). A panic is logged and counted, the loop is marked down, and after a pause
/// (100 ms, doubling to 5 s while it keeps failing) a fresh one starts.
pub async fn supervise<F, Fut>(
    loops: &Loops,
    which: Loop,
    mut stop: watch::Receiver<bool>,
    mut make: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let i = which as usize;
    let mut pause = Duration::from_millis(100);
    loop {
        let run = tokio::spawn(make());
        match run.await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                let what = e.into_panic();
                let msg = what
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| what.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                loops.down[i].store(true, Relaxed);
                loops.restarts[i].fetch_add(1, Relaxed);
                tracing::error!(
                    loop_ = which.name(),
                    panic = %msg,
                    restart_in = ?pause,
                    "control loop panicked; it is restarted, and /readyz says not ready until then"
                );
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
                loops.down[i].store(false, Relaxed);
            }
            // Cancelled: the runtime is shutting down.
            Err(_) => return,
        }
    }
}
