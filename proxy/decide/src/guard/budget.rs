//! Retry budget (Finagle / linkerd style): retries may add at most `ratio` of the original
//! requests, plus a small floor so that a quiet service can still retry, over a sliding window.
//! Retries themselves earn nothing, so a failing upstream can never turn one request into a
//! storm of them.
//!
//! The window is kept as `BUCKETS` time buckets; a retry is granted only if, counted over the
//! buckets the window covers now, `retries + 1 ≤ ratio · requests + floor`.

use std::time::Duration;
use vivremotion_protocol::Nanos;

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries per original request allowed over the window (0.2 = 20 %).
    pub ratio: f64,
    /// Retries per second allowed regardless of traffic.
    pub min_per_second: f64,
    /// Length of the sliding window.
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.2,
            min_per_second: 5.0,
            window: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Index of the bucket period this slot holds (time / bucket width).
    period: u64,
    requests: u64,
    retries: u64,
}

/// One budget; the proxy keeps one per route per worker (no sharing, no lock), so the bound
/// holds per worker and therefore for their sum.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    cfg: BudgetConfig,
    width_ns: u64,
    buckets: [Bucket; BUCKETS],
    /// Retries refused for lack of budget (for telemetry; never reset here).
    pub exhausted: u64,
}

impl RetryBudget {
    pub fn new(cfg: BudgetConfig) -> RetryBudget {
        let width_ns = (Nanos::from_duration(cfg.window).0 / BUCKETS as u64).max(1);
        RetryBudget {
            cfg,
            width_ns,
            buckets: [Bucket::default(); BUCKETS],
            exhausted: 0,
        }
    }

    pub fn config(&self) -> BudgetConfig {
        self.cfg
    }

    /// Change ratio and floor in place (policy update); a new window length starts afresh.
    pub fn reconfigure(&mut self, cfg: BudgetConfig) {
        if cfg.window != self.cfg.window {
            let exhausted = self.exhausted;
            *self = RetryBudget::new(cfg);
            self.exhausted = exhausted;
        } else {
            self.cfg = cfg;
        }
    }

    fn slot(&mut self, now: Nanos) -> &mut Bucket {
        let period = now.0 / self.width_ns;
        let b = &mut self.buckets[(period % BUCKETS as u64) as usize];
        if b.period != period {
            *b = Bucket {
                period,
                requests: 0,
                retries: 0,
            };
        }
        b
    }

    /// Sums over the buckets inside the window ending at `now`.
    fn totals(&self, now: Nanos) -> (u64, u64) {
        let period = now.0 / self.width_ns;
        let oldest = period.saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| b.period >= oldest && b.period <= period)
            .fold((0, 0), |(q, r), b| (q + b.requests, r + b.retries))
    }

    /// An original request was made.
    pub fn deposit(&mut self, now: Nanos) {
        self.slot(now).requests += 1;
    }

    /// Ask to retry once; `true` spends the budget.
    pub fn try_withdraw(&mut self, now: Nanos) -> bool {
        let (requests, retries) = self.totals(now);
        let allowance = self.allowance(requests);
        if (retries + 1) as f64 <= allowance {
            self.slot(now).retries += 1;
            true
        } else {
            self.exhausted += 1;
            false
        }
    }

    fn allowance(&self, requests: u64) -> f64 {
        self.cfg.ratio * requests as f64 + self.cfg.min_per_second * self.cfg.window.as_secs_f64()
    }

    /// Retries still available now.
    pub fn available(&self, now: Nanos) -> u64 {
        let (requests, retries) = self.totals(now);
        (self.allowance(requests) - retries as f64).max(0.0).floor() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn twenty_percent_plus_floor() {
        let cfg = BudgetConfig {
            ratio: 0.2,
            min_per_second: 1.0,
            window: Duration::from_secs(10),
        };
        let mut b = RetryBudget::new(cfg);
        let now = Nanos(1_000 * 1_000 * MS);
        for _ in 0..100 {
            b.deposit(now);
        }
        // 0.2 · 100 + 1/s · 10 s = 30.
        let granted = (0..100).filter(|_| b.try_withdraw(now)).count();
        assert_eq!(granted, 30);
        assert_eq!(b.exhausted, 70);
        // The window slides: 11 s later nothing of the above counts, only the floor.
        let later = Nanos(now.0 + 11_000 * MS);
        assert_eq!(b.available(later), 10);
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Request(u64),
        Retry(u64),
    }

    fn events() -> impl Strategy<Value = Vec<Ev>> {
        prop::collection::vec(
            prop_oneof![
                (0u64..50 * MS).prop_map(Ev::Request),
                (0u64..50 * MS).prop_map(Ev::Retry),
            ],
            1..600,
        )
    }

    proptest! {
        /// Checked against an independent count of the event log: for every grant, retries in
        /// the window (including it) ≤ ratio · requests in the window + floor.
        #[test]
        fn budget_is_never_exceeded(
            ratio in 0.0f64..1.0,
            floor in 0.0f64..5.0,
            window_ms in 100u64..5_000,
            evs in events(),
        ) {
            let cfg = BudgetConfig { ratio, min_per_second: floor, window: Duration::from_millis(window_ms) };
            let mut b = RetryBudget::new(cfg);
            let width = (window_ms * MS / BUCKETS as u64).max(1);
            let mut now = 7 * 1_000 * MS;
            let mut log: Vec<(u64, bool)> = Vec::new(); // (time, is_retry) of deposits and grants
            for ev in evs {
                match ev {
                    Ev::Request(gap) => { now += gap; b.deposit(Nanos(now)); log.push((now, false)); }
                    Ev::Retry(gap) => {
                        now += gap;
                        if b.try_withdraw(Nanos(now)) {
                            log.push((now, true));
                            let period = now / width;
                            let oldest = period.saturating_sub(BUCKETS as u64 - 1);
                            let inside = |t: u64| t / width >= oldest;
                            let reqs = log.iter().filter(|(t, r)| !r && inside(*t)).count() as f64;
                            let rets = log.iter().filter(|(t, r)| *r && inside(*t)).count() as f64;
                            let bound = ratio * reqs + floor * window_ms as f64 / 1000.0;
                            prop_assert!(rets <= bound + 1e-9, "{} retries, bound {}", rets, bound);
                        }
                    }
                }
            }
        }
    }
}
