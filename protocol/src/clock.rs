//! Time for decision code.
//!
//! Balancers, limiters, breakers and controllers never read the system clock themselves: they
//! take a [`Nanos`] from a [`Clock`]. Production passes [`SystemClock`]; tests and the simulator
//! pass [`ManualClock`] (or their own virtual clock) and so replay the same code deterministically.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Monotonic time in nanoseconds since an arbitrary, clock-specific origin.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Nanos(pub u64);

impl Nanos {
    pub const ZERO: Nanos = Nanos(0);

    pub fn from_duration(d: Duration) -> Nanos {
        Nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Time elapsed since `earlier`, zero if `earlier` is in the future.
    pub fn saturating_since(self, earlier: Nanos) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    pub fn saturating_add(self, d: Duration) -> Nanos {
        Nanos(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }
}

/// A source of monotonic time (and of wall-clock time for records meant for people).
pub trait Clock: Send + Sync + 'static {
    /// Monotonic now.
    fn now(&self) -> Nanos;
    /// Milliseconds since the Unix epoch, for timestamps in telemetry and decisions.
    fn unix_ms(&self) -> u64;
}

/// The real clock: monotonic time from `std::time::Instant`, wall time from `SystemTime`.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: std::time::Instant,
}

impl SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place the real monotonic clock is read
    pub fn new() -> Self {
        SystemClock {
            origin: std::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Nanos {
        Nanos::from_duration(self.origin.elapsed())
    }

    #[allow(clippy::disallowed_methods)] // the one place the wall clock is read
    fn unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to. Cloning shares the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
    unix_origin_ms: u64,
}

impl ManualClock {
    /// A clock at monotonic zero whose wall time starts at `unix_origin_ms`.
    pub fn new(unix_origin_ms: u64) -> Self {
        ManualClock {
            nanos: Arc::new(AtomicU64::new(0)),
            unix_origin_ms,
        }
    }

    pub fn advance(&self, d: Duration) {
        let add = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(add, Ordering::SeqCst);
    }

    pub fn set(&self, t: Nanos) {
        self.nanos.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        Nanos(self.nanos.load(Ordering::SeqCst))
    }

    fn unix_ms(&self) -> u64 {
        self.unix_origin_ms + self.nanos.load(Ordering::SeqCst) / 1_000_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        assert_eq!(c.now(), Nanos(0));
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now(), Nanos(1_500_000_000));
        assert_eq!(c.unix_ms(), 2_500);
        let shared = c.clone();
        shared.advance(Duration::from_secs(1));
        assert_eq!(c.now().as_secs_f64(), 2.5);
    }

    #[test]
    fn system_clock_is_monotonic() {
        let c = SystemClock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
        assert!(c.unix_ms() > 1_600_000_000_000);
    }

    #[test]
    fn saturating_arithmetic() {
        assert_eq!(Nanos(5).saturating_since(Nanos(10)), Duration::ZERO);
        assert_eq!(
            Nanos(u64::MAX).saturating_add(Duration::from_secs(1)),
            Nanos(u64::MAX)
        );
    }
}
