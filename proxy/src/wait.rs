//! The request flow's waits on tokio: a queue wait ([`queue`]) and a retry backoff
//! ([`backoff`]). The flow says until when; this is the only place that sleeps for it, for
//! both request paths.

use crate::flow::{Refused, RequestFlow, RouteCore, Start, Try};
use rand::Rng;
use vivremotion_protocol::{Clock, Nanos};

/// After [`Start::Queue`]: wait until a slot is handed over or the deadline passes; then the
/// first try, or the refusal (shed at the deadline, or no endpoint).
pub async fn queue<R: Rng + ?Sized>(
    flow: &mut RequestFlow,
    core: &RouteCore,
    clock: &dyn Clock,
    rng: &mut R,
) -> Result<Try, Refused> {
    loop {
        if let Some(wait) = flow.queued() {
            let left = wait.until().saturating_since(clock.now());
            // Either the wait settles or its time is up; the flow decides which it was.
            let _ = tokio::time::timeout(left, wait).await;
        }
        match flow.dequeue(core, clock.now(), rng) {
            // Woken a little early by the timer's rounding: wait for the rest.
            Start::Queue { .. } => continue,
            Start::Forward(t) => return Ok(t),
            Start::Refuse(r) => return Err(r),
        }
    }
}

/// After a `Next::Backoff`: sleep until `until`, then the retry to send.
pub async fn backoff(
    flow: &mut RequestFlow,
    core: &RouteCore,
    until: Nanos,
    clock: &dyn Clock,
) -> Try {
    tokio::time::sleep(until.saturating_since(clock.now())).await;
    flow.resume(core, clock.now())
}
