//! Per-connection deadlines that cost a store, not a timer-wheel update, per request.
//!
//! Why: a keep-alive connection starts a head-read deadline and a per-try deadline for every
//! request. With `tokio::time::sleep`/`timeout` each one is a timer-wheel insert and removal
//! (about 1 % of the proxy's CPU at 5 000 requests/s, docs/benchmarks.md). A [`LazyTimer`] is
//! armed once; a later deadline only records the new time, and when the armed timer fires
//! before the deadline it is moved forward once. Only a deadline earlier than the armed one
//! touches the wheel.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::Sleep;
use vivremotion_protocol::Nanos;

/// A deadline on the flow's clock, mapped onto one tokio timer.
#[derive(Debug, Default)]
pub struct LazyTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    /// The flow-clock time the tokio timer is set for.
    armed: Nanos,
    /// The deadline in force; never before `armed` unless just expired.
    want: Nanos,
    /// The waker the armed timer holds. While it is the caller's and the timer has not
    /// fired, polling the `Sleep` again would only re-register the same waker.
    waker: Option<Waker>,
}

impl LazyTimer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The deadline is now `want` (`now` is the flow clock's present, to place a first timer).
    pub fn set(&mut self, want: Nanos, now: Nanos) {
        self.want = want;
        match &mut self.sleep {
            None => {
                self.sleep = Some(Box::pin(tokio::time::sleep(want.saturating_since(now))));
                self.armed = want;
            }
            Some(s) if want < self.armed => {
                let earlier = self.armed.saturating_since(want);
                let at = s.deadline().checked_sub(earlier).unwrap_or(s.deadline());
                s.as_mut().reset(at);
                self.armed = want;
                self.waker = None;
            }
            Some(_) => {}
        }
    }

    /// Ready once the deadline has passed. Pending forever if none was set.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Some(s) = &mut self.sleep else {
                return Poll::Pending;
            };
            let holds_ours = self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
            if holds_ours && !s.is_elapsed() {
                return Poll::Pending;
            }
            if s.as_mut().poll(cx).is_pending() {
                if !holds_ours {
                    self.waker = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            if self.want <= self.armed {
                return Poll::Ready(());
            }
            // Fired for an earlier deadline that has since moved: follow it.
            let later = self.want.saturating_since(self.armed);
            let at = s.deadline() + later;
            s.as_mut().reset(at);
            self.armed = self.want;
            self.waker = None;
        }
    }

    /// A future for [`LazyTimer::poll_expired`].
    pub fn expired(&mut self) -> Expired<'_> {
        Expired(self)
    }

    /// The time left before the deadline, measured on the flow clock.
    pub fn left(&self, now: Nanos) -> Duration {
        self.want.saturating_since(now)
    }
}

/// Resolves when the timer's deadline has passed.
pub struct Expired<'a>(&'a mut LazyTimer);

impl Future for Expired<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().0.poll_expired(cx)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // reads tokio's paused virtual clock, not the real one
mod tests {
    use super::*;

    fn ms(n: u64) -> Nanos {
        Nanos::from_duration(Duration::from_millis(n))
    }

    // Paused tokio time: the timer's behaviour is checked against virtual time, not sleeps.
    #[tokio::test(start_paused = true)]
    async fn moved_later_fires_at_the_last_deadline() {
        let start = tokio::time::Instant::now();
        let mut t = LazyTimer::new();
        t.set(ms(100), ms(0));
        t.set(ms(250), ms(0));
        t.expired().await;
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn moved_earlier_fires_early() {
        let start = tokio::time::Instant::now();
        let mut t = LazyTimer::new();
        t.set(ms(300), ms(0));
        t.set(ms(40), ms(0));
        t.expired().await;
        assert_eq!(start.elapsed(), Duration::from_millis(40));
    }

    #[tokio::test(start_paused = true)]
    async fn rearmed_after_firing() {
        let start = tokio::time::Instant::now();
        let mut t = LazyTimer::new();
        t.set(ms(10), ms(0));
        t.expired().await;
        t.set(ms(70), ms(10));
        t.expired().await;
        assert_eq!(start.elapsed(), Duration::from_millis(70));
    }

    // Polled again and again by the same task (the skip path) while other wakeups come in.
    #[tokio::test(start_paused = true)]
    async fn polled_often_still_fires_on_time() {
        let start = tokio::time::Instant::now();
        let mut t = LazyTimer::new();
        t.set(ms(95), ms(0));
        let mut ticks = 0;
        loop {
            tokio::select! {
                _ = t.expired() => break,
                _ = tokio::time::sleep(Duration::from_millis(10)) => ticks += 1,
            }
            if ticks == 3 {
                t.set(ms(205), ms(30));
            }
        }
        assert_eq!(start.elapsed(), Duration::from_millis(205));
        assert!(ticks >= 19, "{ticks}");
    }

    #[tokio::test(start_paused = true)]
    async fn unset_never_fires() {
        let mut t = LazyTimer::new();
        let r = tokio::time::timeout(Duration::from_secs(3600), t.expired()).await;
        assert!(r.is_err());
    }
}
