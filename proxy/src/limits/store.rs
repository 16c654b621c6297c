//! Where global rate limits keep their shared token buckets: the store seam of the leaser.
//!
//! The bucket arithmetic and the messages live in the decision core
//! ([`vivremotion_decide::limits::bucket`]); here are the async store interface, the
//! in-process store (the embedded default: one proxy, no Redis) and its error type. The
//! Redis store is `super::redis`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
pub use vivremotion_decide::limits::bucket::{Bucket, Buckets, Give, Grant, Take};
use vivremotion_protocol::Clock;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rate limit store unreachable: {0}")]
    Unreachable(String),
    #[error("rate limit store timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("rate limit store answered something unexpected: {0}")]
    Protocol(String),
}

/// A shared home for global token buckets.
pub trait LeaseStore: Send + Sync + 'static {
    /// Take tokens for each request, atomically per key; answers in request order.
    fn take<'a>(&'a self, takes: &'a [Take]) -> BoxFuture<'a, Result<Vec<Grant>, StoreError>>;
    /// Return unused tokens.
    fn give<'a>(&'a self, gives: &'a [Give]) -> BoxFuture<'a, Result<(), StoreError>>;
    /// For logs and metrics: "memory" or "redis".
    fn kind(&self) -> &'static str;
}

/// [`Buckets`] in process memory, on the process clock.
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    buckets: Mutex<Buckets>,
}

impl MemoryStore {
    pub fn new(clock: Arc<dyn Clock>) -> MemoryStore {
        MemoryStore {
            clock,
            buckets: Mutex::new(Buckets::default()),
        }
    }

    fn now_us(&self) -> u64 {
        self.clock.now().0 / 1_000
    }

    fn buckets(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.buckets().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl LeaseStore for MemoryStore {
    fn take<'a>(&'a self, takes: &'a [Take]) -> BoxFuture<'a, Result<Vec<Grant>, StoreError>> {
        let out = self.buckets().take(takes, self.now_us());
        Box::pin(std::future::ready(Ok(out)))
    }

    fn give<'a>(&'a self, gives: &'a [Give]) -> BoxFuture<'a, Result<(), StoreError>> {
        self.buckets().give(gives, self.now_us());
        Box::pin(std::future::ready(Ok(())))
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
