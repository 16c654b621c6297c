//! The telemetry tick: closes one batch at every multiple of `telemetry.tick` on the Unix
//! clock (samples in-flight and queue depth ten times a window in between), marks endpoint
//! state on the endpoint windows, stores the batch, and sweeps idle upstream connections.

use super::Loop;
use crate::state::Shared;
use crate::telemetry::collector::InForceView;
use crate::telemetry::Collector;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use vivremotion_decide::build;

pub async fn tick_loop(
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
    let routes = snap.route_refs();
    build::with_view(&routes, snap.policy_version(), &snap.config_fingerprint, f)
}

fn close_window(shared: &Shared, collector: &std::sync::Mutex<Collector>, end_ms: u64) {
    let snap = shared.snapshot.load();
    let now = shared.clock.now();
    let batch = build::close_window(
        &mut collector
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        &shared.registries,
        &snap.route_refs(),
        snap.policy_version(),
        &snap.config_fingerprint,
        end_ms,
        now,
    );
    shared.telemetry.push(batch);
    for r in snap.routes.iter() {
        r.clients.sweep(now);
    }
}
