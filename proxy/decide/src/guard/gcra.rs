//! GCRA (generic cell rate algorithm): a token bucket kept as one number per key, the
//! theoretical arrival time (TAT) of the next request.
//!
//! With emission interval `T = 1 / rate` and burst `B`, a request of cost `n` at `now` is
//! admitted when `max(TAT, now) + n·T ≤ now + B·T`, and then `TAT = max(TAT, now) + n·T`.
//! Over any interval of length `Δ` at most `rate·Δ + B` units are admitted (property-tested
//! below), and a key that has been idle for `B·T` is indistinguishable from a new one, which is
//! what lets [`KeyedGcra`] forget idle keys without changing any decision.

use crate::balance::hash::SeededState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::time::Duration;
use vivremotion_protocol::Nanos;

/// A rate and a burst, in the units the limit counts (requests, or tokens).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gcra {
    /// Nanoseconds per unit (`1 / rate`).
    emission_ns: f64,
    /// `burst · emission_ns`: how far ahead of `now` the TAT may run.
    capacity_ns: f64,
    rate: f64,
    burst: u32,
}

/// What a check decided, with what the `RateLimit` headers need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub allowed: bool,
    /// Units that could still be admitted right now (after this request, if it was admitted).
    pub remaining: u64,
    /// Until the bucket is full again (idle).
    pub reset: Duration,
    /// When refused: the earliest time this request would be admitted.
    pub retry_after: Duration,
}

impl Gcra {
    /// `rate` units per second (> 0), up to `burst` (≥ 1) at once.
    pub fn new(rate: f64, burst: u32) -> Gcra {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            f64::MIN_POSITIVE
        };
        let burst = burst.max(1);
        let emission_ns = 1e9 / rate;
        Gcra {
            emission_ns,
            capacity_ns: emission_ns * f64::from(burst),
            rate,
            burst,
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Decide a request of `cost` units at `now` against the key's `tat` (0 for a new key),
    /// updating `tat` if admitted.
    pub fn check(&self, tat: &mut u64, now: Nanos, cost: u32) -> Verdict {
        let now_f = now.0 as f64;
        let mut base = (*tat as f64).max(now_f);
        // Under one configuration the stored TAT never runs more than the capacity (plus the
        // nanosecond of rounding up) ahead of now. One that does was left by a slower rate
        // that a policy just raised: the key starts again from an empty bucket.
        if base > now_f + self.capacity_ns + 1.0 {
            base = now_f + self.capacity_ns - self.emission_ns;
        }
        let new_tat = base + self.emission_ns * f64::from(cost);
        let limit = now_f + self.capacity_ns;
        // The stored TAT is rounded up, so rounding can only make the limit stricter; the
        // picosecond of slack only absorbs float noise in `n·T`.
        let allowed = new_tat <= limit + 1e-3;
        let after = if allowed {
            *tat = new_tat.ceil() as u64;
            new_tat
        } else {
            base
        };
        let headroom = (limit - after).max(0.0);
        Verdict {
            allowed,
            remaining: (headroom / self.emission_ns + 1e-9).floor() as u64,
            reset: Duration::from_nanos((after - now_f).max(0.0) as u64),
            retry_after: if allowed {
                Duration::ZERO
            } else {
                Duration::from_nanos((new_tat - limit).max(0.0).ceil() as u64)
            },
        }
    }

    /// Whether a key whose TAT is `tat` is back to a full bucket at `now` (and can be forgotten).
    pub fn is_idle(&self, tat: u64, now: Nanos) -> bool {
        tat <= now.0
    }
}

const SHARDS: usize = 16;

/// GCRA state per key (client IP, API key, ...), sharded so that workers rarely meet on a lock.
/// Memory is bounded: idle keys are dropped (which changes no decision) and, past `max_keys`,
/// the busiest shard forgets its oldest entries (those keys start again with a full burst;
/// counted in `evicted`).
#[derive(Debug)]
pub struct KeyedGcra<S = SeededState> {
    shards: Box<[Mutex<HashMap<u64, u64>>]>,
    /// The TAT of a limit whose key is the same for every request (keyed by route alone):
    /// one atomic, so workers never queue on one shard's mutex for it.
    single: std::sync::atomic::AtomicU64,
    hasher: S,
    max_per_shard: usize,
    evicted: std::sync::atomic::AtomicU64,
}

impl KeyedGcra<SeededState> {
    /// Keys are sharded by a hasher keyed with `seed` (the process seed): reproducible.
    pub fn new(max_keys: usize, seed: u64) -> Self {
        Self::with_hasher(max_keys, SeededState(seed))
    }
}

impl<S: BuildHasher> KeyedGcra<S> {
    pub fn with_hasher(max_keys: usize, hasher: S) -> Self {
        KeyedGcra {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            single: std::sync::atomic::AtomicU64::new(0),
            hasher,
            max_per_shard: (max_keys / SHARDS).max(8),
            evicted: Default::default(),
        }
    }

    pub fn check<K: Hash + ?Sized>(&self, g: &Gcra, key: &K, now: Nanos, cost: u32) -> Verdict {
        let h = self.hasher.hash_one(key);
        let shard = &self.shards[(h as usize) % SHARDS];
        let mut map = match shard.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() >= self.max_per_shard && !map.contains_key(&h) {
            map.retain(|_, tat| !g.is_idle(*tat, now));
            if map.len() >= self.max_per_shard {
                // All busy: forget the half that would be full again soonest.
                let mut tats: Vec<u64> = map.values().copied().collect();
                let mid = tats.len() / 2;
                let (_, cut, _) = tats.select_nth_unstable(mid);
                let cut = *cut;
                let before = map.len();
                map.retain(|_, tat| *tat > cut);
                self.evicted.fetch_add(
                    (before - map.len()) as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
        }
        let tat = map.entry(h).or_insert(0);
        g.check(tat, now, cost)
    }

    /// [`Self::check`] for a limit with one key for all requests: a compare-and-swap on one
    /// TAT, no lock.
    pub fn check_single(&self, g: &Gcra, now: Nanos, cost: u32) -> Verdict {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        let mut cur = self.single.load(Acquire);
        loop {
            let mut tat = cur;
            let v = g.check(&mut tat, now, cost);
            if tat == cur {
                return v;
            }
            match self
                .single
                .compare_exchange_weak(cur, tat, Acquire, Relaxed)
            {
                Ok(_) => return v,
                Err(seen) => cur = seen,
            }
        }
    }

    pub fn evicted(&self) -> u64 {
        self.evicted.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        let single = usize::from(self.single.load(std::sync::atomic::Ordering::Relaxed) != 0);
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum::<usize>()
            + single
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_raised_rate_applies_at_once() {
        let slow = Gcra::new(2.0, 3);
        let mut tat = 0;
        for _ in 0..3 {
            assert!(slow.check(&mut tat, Nanos(0), 1).allowed);
        }
        assert!(!slow.check(&mut tat, Nanos(0), 1).allowed);
        // 1000/s with a burst of 100: the key starts from an empty bucket, not 1.5 s behind.
        let fast = Gcra::new(1000.0, 100);
        assert!(fast.check(&mut tat, Nanos(0), 1).allowed);
        assert!(!fast.check(&mut tat, Nanos(0), 1).allowed);
        assert!(fast.check(&mut tat, Nanos(1_000_000), 1).allowed);
    }

    #[test]
    fn burst_then_rate() {
        let g = Gcra::new(10.0, 5);
        let mut tat = 0;
        let t0 = Nanos(100 * S);
        for i in 0..5 {
            let v = g.check(&mut tat, t0, 1);
            assert!(v.allowed, "request {i} of the burst");
            assert_eq!(v.remaining, 4 - i);
        }
        let v = g.check(&mut tat, t0, 1);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, Duration::from_millis(100));
        assert_eq!(v.remaining, 0);
        assert_eq!(v.reset, Duration::from_millis(500));
        // One emission interval later, exactly one more.
        let t1 = Nanos(t0.0 + S / 10);
        assert!(g.check(&mut tat, t1, 1).allowed);
        assert!(!g.check(&mut tat, t1, 1).allowed);
    }

    #[test]
    fn cost_above_burst_never_fits() {
        let g = Gcra::new(100.0, 10);
        let mut tat = 0;
        assert!(!g.check(&mut tat, Nanos(S), 11).allowed);
        assert!(g.check(&mut tat, Nanos(S), 10).allowed);
    }

    #[test]
    fn keyed_limits_are_per_key_and_memory_is_bounded() {
        let k = KeyedGcra::new(64, 7);
        let g = Gcra::new(1.0, 1);
        let now = Nanos(10 * S);
        assert!(k.check(&g, "a", now, 1).allowed);
        assert!(!k.check(&g, "a", now, 1).allowed);
        assert!(k.check(&g, "b", now, 1).allowed);
        for i in 0..10_000u32 {
            k.check(&g, &i, now, 1);
        }
        assert!(k.len() <= 64 + SHARDS * 8, "{} keys kept", k.len());
        assert!(k.evicted() > 0);
        // Idle keys are dropped without evictions once time passes.
        let later = Nanos(now.0 + 5 * S);
        let before = k.evicted();
        for i in 0..10_000u32 {
            k.check(&g, &(i + 1_000_000), later, 1);
        }
        assert!(k.evicted() - before < 10_000);
    }

    proptest! {
        /// Over every interval [a, b] of the run, admitted units ≤ rate·(b − a) + burst.
        #[test]
        fn never_admits_more_than_rate_times_t_plus_burst(
            rate in 0.5f64..5000.0,
            burst in 1u32..50,
            gaps in prop::collection::vec((0u64..20_000_000, 1u32..4), 1..400),
        ) {
            let g = Gcra::new(rate, burst);
            let mut tat = 0u64;
            let mut now = 1_000 * S;
            let mut admitted: Vec<(u64, u32)> = Vec::new();
            for (gap, cost) in gaps {
                now += gap;
                if g.check(&mut tat, Nanos(now), cost).allowed {
                    admitted.push((now, cost));
                }
            }
            for i in 0..admitted.len() {
                let mut sum = 0u64;
                for j in i..admitted.len() {
                    sum += u64::from(admitted[j].1);
                    let span = (admitted[j].0 - admitted[i].0) as f64 / 1e9;
                    let bound = rate * span + f64::from(burst);
                    prop_assert!(
                        sum as f64 <= bound + 1e-6,
                        "{} units admitted in {:.6}s, bound {:.3}", sum, span, bound
                    );
                }
            }
        }

        /// A request refused now is admitted at now + retry_after (nothing else in between).
        #[test]
        fn retry_after_is_exact(rate in 1.0f64..1000.0, burst in 1u32..20, n in 1usize..60) {
            let g = Gcra::new(rate, burst);
            let mut tat = 0u64;
            let now = Nanos(5 * S);
            let mut refused = None;
            for _ in 0..n {
                let v = g.check(&mut tat, now, 1);
                if !v.allowed { refused = Some(v); break; }
            }
            if let Some(v) = refused {
                let mut t2 = tat;
                prop_assert!(g.check(&mut t2, now.saturating_add(v.retry_after), 1).allowed);
                let early = v.retry_after.saturating_sub(Duration::from_micros(10));
                if early > Duration::ZERO && v.retry_after > Duration::from_micros(20) {
                    let mut t3 = tat;
                    prop_assert!(!g.check(&mut t3, now.saturating_add(early), 1).allowed);
                }
            }
        }
    }

    /// The lock-free single-key path admits exactly what the keyed path admits.
    #[test]
    fn the_single_key_path_decides_like_the_keyed_one() {
        let g = Gcra::new(100.0, 10);
        let (a, b) = (KeyedGcra::new(64, 1), KeyedGcra::new(64, 1));
        for i in 0..500u64 {
            let now = Nanos(i * 3_000_000);
            let (x, y) = (a.check(&g, &7u64, now, 1), b.check_single(&g, now, 1));
            assert_eq!(
                (x.allowed, x.remaining),
                (y.allowed, y.remaining),
                "request {i}"
            );
        }
    }
}
