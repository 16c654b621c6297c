//! The token bucket global rate limits share, and the messages the leaser exchanges with its
//! store.
//!
//! A global limit is one token bucket per key, shared by every proxy instance. Instances never
//! ask the store per request: a background leaser takes small batches of tokens ahead of need
//! and gives back what it did not use ([`super::lease`]). The store only has to do two atomic
//! operations, both in one round trip for many keys:
//!
//! - `take`: refill the bucket for the time passed, hand out up to `want` whole tokens;
//! - `give`: put unused tokens back (never above the bucket's capacity).
//!
//! [`Bucket`] is that arithmetic and [`Buckets`] a bounded map of them: the proxy's in-process
//! store and the simulator run it directly; the proxy's Redis store runs the same arithmetic as
//! a Lua script inside Redis, on Redis' own clock, so that all instances agree on time.

use std::collections::HashMap;

/// One key's request for tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Take {
    /// Store key, e.g. `vm:rl:{route}:{limit}:{key hash}`.
    pub key: String,
    /// Refill rate, tokens per second (> 0).
    pub rate: f64,
    /// Bucket capacity in tokens (≥ 1).
    pub capacity: u32,
    /// Tokens wanted now (≥ 1).
    pub want: u32,
}

/// What a take got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: u32,
    /// Whole tokens left in the bucket after the take.
    pub remaining: u32,
    /// Time until the next whole token, ms (0 when tokens are left).
    pub next_token_ms: u64,
}

/// Unused tokens going back.
#[derive(Debug, Clone, PartialEq)]
pub struct Give {
    pub key: String,
    pub rate: f64,
    pub capacity: u32,
    pub tokens: u32,
}

/// A token bucket: `tokens` (fractional) as of `at_us`.
///
/// The Lua script in the proxy's Redis store is a transcription of these two functions; keep them in
/// step (the shared test suite runs the same cases against both).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub at_us: u64,
}

impl Bucket {
    /// A new bucket starts full.
    pub fn full(capacity: u32, now_us: u64) -> Bucket {
        Bucket {
            tokens: f64::from(capacity.max(1)),
            at_us: now_us,
        }
    }

    fn refill(&mut self, rate: f64, capacity: u32, now_us: u64) {
        let cap = f64::from(capacity.max(1));
        // A clock that went backwards refills nothing (and does not move `at_us` back).
        let dt = now_us.saturating_sub(self.at_us) as f64 / 1e6;
        self.tokens = (self.tokens + dt * rate.max(0.0)).min(cap);
        self.at_us = self.at_us.max(now_us);
    }

    pub fn take(&mut self, rate: f64, capacity: u32, want: u32, now_us: u64) -> Grant {
        self.refill(rate, capacity, now_us);
        let whole = self.tokens.floor().max(0.0);
        let granted = whole.min(f64::from(want)) as u32;
        self.tokens -= f64::from(granted);
        let remaining = self.tokens.floor().max(0.0) as u32;
        let next_token_ms = if self.tokens >= 1.0 || rate <= 0.0 {
            0
        } else {
            ((1.0 - self.tokens) / rate * 1000.0).ceil() as u64
        };
        Grant {
            granted,
            remaining,
            next_token_ms,
        }
    }

    pub fn give(&mut self, rate: f64, capacity: u32, tokens: u32, now_us: u64) {
        self.refill(rate, capacity, now_us);
        self.tokens = (self.tokens + f64::from(tokens)).min(f64::from(capacity.max(1)));
    }

    /// Whether the bucket is full again, so it can be forgotten (a new one starts full).
    pub fn is_full(&self, rate: f64, capacity: u32, now_us: u64) -> bool {
        let mut b = *self;
        b.refill(rate, capacity, now_us);
        b.tokens >= f64::from(capacity.max(1))
    }
}

/// Buckets in memory, bounded: beyond 4096 keys, full buckets are forgotten (a new bucket
/// starts full, so forgetting a full one changes nothing).
#[derive(Debug, Default)]
pub struct Buckets {
    map: HashMap<String, (Bucket, f64, u32)>,
}

impl Buckets {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Take tokens for each request at `now_us`; answers in request order.
    pub fn take(&mut self, takes: &[Take], now_us: u64) -> Vec<Grant> {
        if self.map.len() > 4096 {
            self.map
                .retain(|_, (b, rate, cap)| !b.is_full(*rate, *cap, now_us));
        }
        takes
            .iter()
            .map(|t| {
                let e = self
                    .map
                    .entry(t.key.clone())
                    .or_insert_with(|| (Bucket::full(t.capacity, now_us), t.rate, t.capacity));
                e.1 = t.rate;
                e.2 = t.capacity;
                e.0.take(t.rate, t.capacity, t.want, now_us)
            })
            .collect()
    }

    /// Return unused tokens at `now_us`.
    pub fn give(&mut self, gives: &[Give], now_us: u64) {
        for g in gives {
            if let Some((b, _, _)) = self.map.get_mut(&g.key) {
                b.give(g.rate, g.capacity, g.tokens, now_us);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_bucket_starts_full_refills_and_caps() {
        let mut b = Bucket::full(10, 0);
        let g = b.take(100.0, 10, 25, 0);
        assert_eq!(
            g,
            Grant {
                granted: 10,
                remaining: 0,
                next_token_ms: 10
            }
        );
        // 50 ms at 100/s: 5 tokens.
        assert_eq!(b.take(100.0, 10, 25, 50_000).granted, 5);
        // A long pause refills only to capacity.
        assert_eq!(b.take(100.0, 10, 25, 60_000_000).granted, 10);
        b.give(100.0, 10, 50, 60_000_000);
        assert_eq!(b.take(100.0, 10, 25, 60_000_000).granted, 10);
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let mut b = Bucket::full(5, 1_000_000);
        assert_eq!(b.take(10.0, 5, 5, 1_000_000).granted, 5);
        assert_eq!(b.take(10.0, 5, 5, 0).granted, 0);
        assert_eq!(b.take(10.0, 5, 5, 1_100_000).granted, 1);
    }

    proptest! {
        /// Over any run, tokens handed out minus tokens given back never exceed
        /// capacity + rate × elapsed.
        #[test]
        fn bucket_never_hands_out_more_than_rate_times_time_plus_capacity(
            rate in 1.0f64..5000.0,
            capacity in 1u32..500,
            ops in proptest::collection::vec((0u64..50_000, 1u32..100, 0u32..50), 1..200),
        ) {
            let mut b = Bucket::full(capacity, 0);
            let mut now = 0u64;
            let mut net: i64 = 0;
            for (dt, want, back) in ops {
                now += dt;
                let g = b.take(rate, capacity, want, now);
                prop_assert!(g.granted <= want);
                net += i64::from(g.granted);
                let back = back.min(g.granted);
                b.give(rate, capacity, back, now);
                net -= i64::from(back);
                let bound = f64::from(capacity) + rate * now as f64 / 1e6;
                prop_assert!(net as f64 <= bound + 1e-6, "net {} > bound {}", net, bound);
            }
        }
    }

    #[test]
    fn buckets_answer_in_order_and_forget_nothing_they_need() {
        let mut store = Buckets::default();
        let takes = vec![
            Take {
                key: "a".into(),
                rate: 10.0,
                capacity: 3,
                want: 5,
            },
            Take {
                key: "b".into(),
                rate: 10.0,
                capacity: 1,
                want: 5,
            },
        ];
        let g = store.take(&takes, 0);
        assert_eq!((g[0].granted, g[1].granted), (3, 1));
        let g = store.take(&takes, 0);
        assert_eq!((g[0].granted, g[1].granted), (0, 0));
        store.give(
            &[Give {
                key: "a".into(),
                rate: 10.0,
                capacity: 3,
                tokens: 2,
            }],
            0,
        );
        let g = store.take(&takes, 100_000);
        assert_eq!((g[0].granted, g[1].granted), (3, 1));
        assert_eq!(store.len(), 2);
    }
}
