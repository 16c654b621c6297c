//! A worker's drain signal for its fast-path connections.
//!
//! Why not the shutdown `watch` channel: every idle keep-alive wait polled
//! `watch::Receiver::changed()`, which takes the channel's one mutex (shared by every worker)
//! on each poll, and every request read the value through its lock (about 1 % of the proxy's
//! CPU, docs/benchmarks.md). Here a connection registers its task's waker once, and a request
//! reads one atomic flag.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

/// Set once when the worker stops taking connections; wakes every registered connection.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    tasks: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Drain {
    pub fn new() -> Arc<Drain> {
        Arc::new(Drain::default())
    }

    /// Whether the worker is draining.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Start draining: every registered connection is woken to see it.
    pub fn start(&self) {
        self.draining.store(true, Ordering::Release);
        let wakers: Vec<Waker> = {
            let mut s = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
            s.wakers.iter_mut().filter_map(Option::take).collect()
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Register the calling task; it is woken when draining starts, until the guard drops.
    /// The task's waker is the same for its whole life, so once per connection suffices.
    pub async fn register(self: &Arc<Self>) -> Registration {
        let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        let slot = {
            let mut s = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
            match s.free.pop() {
                Some(i) => {
                    s.wakers[i] = Some(waker);
                    i
                }
                None => {
                    s.wakers.push(Some(waker));
                    s.wakers.len() - 1
                }
            }
        };
        Registration {
            drain: self.clone(),
            slot,
        }
    }
}

/// A connection's place in the drain's wake list.
#[derive(Debug)]
pub struct Registration {
    drain: Arc<Drain>,
    slot: usize,
}

impl Registration {
    /// Resolves once draining has started. Polled only by the registered task: it relies on
    /// the registration's waker instead of storing its own.
    pub fn draining(&self) -> Draining<'_> {
        Draining(&self.drain)
    }

    pub fn is_draining(&self) -> bool {
        self.drain.draining()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut s = self
            .drain
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = s.wakers.get_mut(self.slot) {
            *w = None;
            s.free.push(self.slot);
        }
    }
}

/// See [`Registration::draining`].
pub struct Draining<'a>(&'a Drain);

impl Future for Draining<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        match self.0.draining() {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_registered_idle_task_wakes_when_draining_starts() {
        let drain = Drain::new();
        let d = drain.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let reg = d.register().await;
            let _ = tx.send(());
            reg.draining().await;
            reg.is_draining()
        });
        let _ = rx.await;
        drain.start();
        let woke = tokio::time::timeout(Duration::from_secs(10), task).await;
        assert!(matches!(woke, Ok(Ok(true))), "{woke:?}");
    }

    #[tokio::test]
    async fn slots_are_reused_and_released() {
        let drain = Drain::new();
        for _ in 0..3 {
            let a = drain.register().await;
            let b = drain.register().await;
            drop((a, b));
        }
        let s = drain.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(s.wakers.len(), 2);
        assert!(s.wakers.iter().all(Option::is_none));
    }

    #[tokio::test]
    async fn registering_after_the_start_sees_it() {
        let drain = Drain::new();
        drain.start();
        let reg = drain.register().await;
        assert!(reg.is_draining());
        reg.draining().await;
    }
}
