//! The leaser: feeds global rate limits' books from the shared store, one round trip per
//! `global_limits.lease_interval` for all keys. A slow or dead store delays only this loop.

use crate::limits::lease::LeaseBook;
use crate::limits::store::{Give, LeaseStore, Take};
use std::sync::Arc;
use std::time::Duration;

/// One round of the leaser: plan every book, one store call for all takes, settle, return
/// what is not needed. Store failures are counted in each book (its fallback takes over).
pub async fn lease_round(books: &[Arc<LeaseBook>], store: &dyn LeaseStore, interval: Duration) {
    let mut plans: Vec<Vec<(u64, Take)>> = Vec::with_capacity(books.len());
    let mut gives: Vec<Give> = Vec::new();
    for b in books {
        let mut takes = Vec::new();
        b.plan(interval, &mut takes, &mut gives);
        plans.push(takes);
    }
    let all: Vec<Take> = plans
        .iter()
        .flat_map(|p| p.iter().map(|(_, t)| t.clone()))
        .collect();
    let result = if all.is_empty() {
        Ok(Vec::new())
    } else {
        store.take(&all).await
    };
    match &result {
        Ok(grants) if grants.len() == all.len() => {
            let mut at = 0;
            for (b, takes) in books.iter().zip(&plans) {
                // A book that asked for nothing learned nothing about the store.
                if !takes.is_empty() {
                    b.settle(takes, Ok(&grants[at..at + takes.len()]), &mut gives);
                }
                at += takes.len();
            }
        }
        other => {
            if let Err(e) = other {
                tracing::debug!(error = %e, "global rate limit store failed");
            }
            for (b, takes) in books.iter().zip(&plans) {
                if !takes.is_empty() {
                    b.settle(takes, Err(()), &mut gives);
                }
            }
            // Tokens that could not go back are simply not returned: the shared bucket
            // refills by itself, so the only cost is a little under-admission.
            return;
        }
    }
    if !gives.is_empty() {
        if let Err(e) = store.give(&gives).await {
            tracing::debug!(error = %e, "returning unused rate limit tokens failed");
        }
    }
}

/// The leaser: every `global_limits.lease_interval`, one [`lease_round`] for all global
/// limits. Runs on the control thread; a slow or dead store delays only this loop.
pub async fn lease_loop(
    shared: Arc<crate::state::Shared>,
    store: Arc<dyn LeaseStore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut was_up = true;
    loop {
        let interval = shared.config().global_limits.lease_interval;
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        shared.loops.checkpoint(crate::loops::Loop::Lease);
        let books: Vec<Arc<LeaseBook>> = shared
            .registries
            .limits
            .books()
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        if books.is_empty() {
            continue;
        }
        lease_round(&books, &*store, interval).await;
        let up = books.iter().all(|b| b.store_up());
        if up != was_up {
            if up {
                tracing::info!(
                    store = store.kind(),
                    "global rate limit store is back: shared limits apply again"
                );
            } else {
                tracing::warn!(
                    store = store.kind(),
                    "global rate limit store unreachable: limits fall back to their local share"
                );
            }
            was_up = up;
        }
    }
}
