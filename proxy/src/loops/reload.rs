//! Config reloads: on SIGHUP, when the file changes (polled every second), and when the admin
//! API asks (`POST /api/v1/config/reload`, answered with the warnings or the errors).

use crate::admin::ReloadRequest;
use crate::config::Config;
use crate::state::Shared;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

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

pub async fn reload_loop(
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
