//! Global rate limits on the request path: tokens leased ahead of need.
//!
//! Each global limit has a [`LeaseBook`]: per key, the tokens this instance holds. The request
//! path spends them under a short shard lock and never talks to the store. The leaser
//! ([`LeaseBook::plan`] / [`LeaseBook::settle`], driven by the proxy's leaser loop) tops
//! every active key up to about two lease intervals of its recent demand and gives back what
//! an idle key holds, in one store round trip per interval for all keys.
//!
//! Until a key's first lease arrives, and while the store is unreachable, requests are decided
//! by the limit's fallback: a local GCRA at `local_share × rate` (or admit all / none).

use super::bucket::{Give, Grant, Take};
use crate::guard::gcra::Gcra;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;
use vivremotion_protocol::Nanos;

const SHARDS: usize = 16;
/// Keys tracked per limit; beyond this, new keys are decided by the fallback until idle keys
/// are forgotten.
pub const MAX_KEYS: usize = 100_000;
/// Intervals without demand after which a key's tokens go back and the key is forgotten.
const IDLE_INTERVALS: u32 = 100;

/// Key of the slot shared by new keys while a shard is full.
const OVERFLOW: u64 = u64::MAX;
/// Quiet intervals after which a key gives back what it holds (it keeps tokens through short
/// pauses, so a light key is not refused between two leases).
const RETURN_AFTER: u32 = 10;

#[derive(Debug, Default)]
struct Slot {
    /// Leased tokens not yet spent.
    tokens: u32,
    /// Spent and refused since the last plan.
    used: u32,
    denied: u32,
    /// Demand per interval, smoothed.
    demand: f64,
    /// The shared bucket still had tokens after the last grant: a key that runs dry is then
    /// below the limit, and the fallback decides rather than a refusal.
    spare: bool,
    /// Store key, formatted once.
    store_key: Option<Box<str>>,
    /// A lease arrived for this key at least once.
    leased: bool,
    /// A take is in flight for this key.
    asking: bool,
    idle: u32,
    /// Fallback GCRA state.
    tat: u64,
    /// From the last grant: time until the shared bucket has a token again.
    next_token_ms: u64,
}

/// How a request fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Admitted on a leased token.
    Leased,
    /// Decided by the fallback (no lease yet, or the store is down).
    Fallback {
        allowed: bool,
        retry_after: Duration,
    },
    /// Out of leased tokens; the next lease comes within `retry_after`.
    Denied { retry_after: Duration },
}

/// What a global limit does while its store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreDown {
    /// Admit up to `local_share × rate` on this instance alone.
    LocalShare,
    /// Admit everything.
    Open,
    /// Admit nothing.
    Closed,
}

/// Parameters the snapshot sets (config + policy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseParams {
    pub rate: f64,
    pub burst: u32,
    pub on_store_down: OnStoreDown,
    pub local_share: f64,
}

pub struct LeaseBook {
    /// Store key prefix, `vm:rl:{route}:{limit}:`.
    prefix: String,
    params: Mutex<LeaseParams>,
    fallback: Mutex<Gcra>,
    shards: [Mutex<HashMap<u64, Slot>>; SHARDS],
    store_up: AtomicBool,
    pub fallback_decisions: AtomicU64,
    pub store_errors: AtomicU64,
    pub leased_total: AtomicU64,
    pub returned_total: AtomicU64,
}

impl std::fmt::Debug for LeaseBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseBook")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn fallback_gcra(p: &LeaseParams) -> Gcra {
    let share = p.local_share.clamp(0.0, 1.0);
    Gcra::new(
        (p.rate * share).max(1e-9),
        (f64::from(p.burst) * share).round() as u32,
    )
}

impl LeaseBook {
    pub fn new(route: &str, limit: &str, params: LeaseParams) -> LeaseBook {
        LeaseBook {
            prefix: format!("vm:rl:{route}:{limit}:"),
            fallback: Mutex::new(fallback_gcra(&params)),
            params: Mutex::new(params),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            store_up: AtomicBool::new(true),
            fallback_decisions: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            leased_total: AtomicU64::new(0),
            returned_total: AtomicU64::new(0),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn params(&self) -> LeaseParams {
        *self.params.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_params(&self, p: LeaseParams) {
        let mut cur = self.params.lock().unwrap_or_else(|e| e.into_inner());
        if *cur != p {
            *cur = p;
            *self.fallback.lock().unwrap_or_else(|e| e.into_inner()) = fallback_gcra(&p);
        }
    }

    pub fn store_up(&self) -> bool {
        self.store_up.load(Relaxed)
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The shared bucket's capacity: the burst, but never less than two intervals' worth of
    /// tokens, or tokens would overflow between two leases and the limit would under-admit.
    pub fn capacity(p: &LeaseParams, interval: Duration) -> u32 {
        let two = (p.rate * interval.as_secs_f64() * 2.0).ceil();
        f64::from(p.burst).max(two).clamp(1.0, 1e9) as u32
    }

    /// Spend one token for `key` (request path).
    pub fn spend(&self, key: u64, now: Nanos, interval: Duration) -> Spend {
        let mut shard = self.shard(key);
        // A full shard sends new keys to one shared slot: limited together, never unlimited.
        let key = if shard.len() >= MAX_KEYS / SHARDS && !shard.contains_key(&key) {
            OVERFLOW
        } else {
            key
        };
        let slot = shard.entry(key).or_default();
        if slot.tokens > 0 {
            slot.tokens -= 1;
            slot.used += 1;
            return Spend::Leased;
        }
        let up = self.store_up.load(Relaxed);
        if slot.leased && up && !slot.spare {
            slot.denied += 1;
            let wait = Duration::from_millis(slot.next_token_ms).max(interval);
            return Spend::Denied { retry_after: wait };
        }
        // No lease yet, the shared bucket has room, or the store is down: this instance
        // decides alone.
        slot.used += 1;
        self.fallback_decisions.fetch_add(1, Relaxed);
        let mode = if up {
            // A fresh key is never refused outright for want of a lease.
            OnStoreDown::LocalShare
        } else {
            self.params().on_store_down
        };
        match mode {
            OnStoreDown::Open => Spend::Fallback {
                allowed: true,
                retry_after: Duration::ZERO,
            },
            OnStoreDown::Closed => Spend::Fallback {
                allowed: false,
                retry_after: interval.max(Duration::from_secs(1)),
            },
            OnStoreDown::LocalShare => {
                let g = *self.fallback.lock().unwrap_or_else(|e| e.into_inner());
                let v = g.check(&mut slot.tat, now, 1);
                if !v.allowed {
                    slot.used -= 1;
                    slot.denied += 1;
                }
                Spend::Fallback {
                    allowed: v.allowed,
                    retry_after: v.retry_after,
                }
            }
        }
    }

    /// What to take and give now (leaser). Marks keys being asked for, resets demand counts,
    /// gives back what quiet keys hold and forgets idle ones.
    pub fn plan(&self, interval: Duration, takes: &mut Vec<(u64, Take)>, gives: &mut Vec<Give>) {
        let p = self.params();
        let capacity = Self::capacity(&p, interval);
        let mut given = 0u64;
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|&key, s| {
                let demand = s.used + s.denied;
                s.used = 0;
                s.denied = 0;
                s.demand = 0.7 * s.demand + 0.3 * f64::from(demand);
                s.idle = if demand == 0 { s.idle + 1 } else { 0 };
                let prefix = &self.prefix;
                let store_key = s
                    .store_key
                    .get_or_insert_with(|| format!("{prefix}{key:016x}").into_boxed_str());
                if s.asking {
                    return true;
                }
                if s.idle >= RETURN_AFTER {
                    if s.tokens > 0 {
                        given += u64::from(s.tokens);
                        gives.push(Give {
                            key: store_key.to_string(),
                            rate: p.rate,
                            capacity,
                            tokens: std::mem::take(&mut s.tokens),
                        });
                    }
                    return s.idle < IDLE_INTERVALS;
                }
                // Hold about two intervals of demand: more invites unfairness between
                // instances, less makes requests wait for the next lease.
                let want = (f64::from(demand).max(s.demand) * 2.0).ceil() as u32;
                let target = want.min(capacity);
                if demand > 0 && s.tokens < target {
                    s.asking = true;
                    takes.push((
                        key,
                        Take {
                            key: store_key.to_string(),
                            rate: p.rate,
                            capacity,
                            want: target - s.tokens,
                        },
                    ));
                }
                true
            });
        }
        self.returned_total.fetch_add(given, Relaxed);
    }

    /// Apply the store's answer to `takes` (same order), or its failure. Tokens for keys
    /// forgotten meanwhile are returned in `gives`.
    pub fn settle(
        &self,
        takes: &[(u64, Take)],
        result: Result<&[Grant], ()>,
        gives: &mut Vec<Give>,
    ) {
        match result {
            Ok(grants) => {
                self.store_up.store(true, Relaxed);
                for ((key, t), g) in takes.iter().zip(grants) {
                    self.leased_total.fetch_add(u64::from(g.granted), Relaxed);
                    let mut shard = self.shard(*key);
                    match shard.get_mut(key) {
                        Some(s) => {
                            s.asking = false;
                            s.leased = true;
                            s.spare = g.remaining > 0;
                            s.tokens = s.tokens.saturating_add(g.granted);
                            s.next_token_ms = g.next_token_ms;
                        }
                        None if g.granted > 0 => gives.push(Give {
                            key: t.key.clone(),
                            rate: t.rate,
                            capacity: t.capacity,
                            tokens: g.granted,
                        }),
                        None => {}
                    }
                }
            }
            Err(()) => {
                self.store_up.store(false, Relaxed);
                self.store_errors.fetch_add(1, Relaxed);
                for (key, _) in takes {
                    if let Some(s) = self.shard(*key).get_mut(key) {
                        s.asking = false;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::bucket::Buckets;
    use vivremotion_protocol::clock::ManualClock;
    use vivremotion_protocol::Clock;

    const TICK: Duration = Duration::from_millis(10);

    fn params(rate: f64) -> LeaseParams {
        LeaseParams {
            rate,
            burst: 10,
            on_store_down: OnStoreDown::LocalShare,
            local_share: 0.5,
        }
    }

    fn lease_round(book: &LeaseBook, store: &mut Buckets, clock: &ManualClock) {
        let (mut takes, mut gives) = (Vec::new(), Vec::new());
        book.plan(TICK, &mut takes, &mut gives);
        let list: Vec<Take> = takes.iter().map(|(_, t)| t.clone()).collect();
        let now_us = clock.now().0 / 1_000;
        let grants = store.take(&list, now_us);
        book.settle(&takes, Ok(&grants), &mut gives);
        store.give(&gives, now_us);
    }

    /// Two instances, each offered 5× the limit, share one store: together they admit the
    /// limit (± the bucket's capacity and the first fallback decisions).
    #[test]
    fn two_books_on_one_store_admit_the_shared_rate() {
        let clock = ManualClock::new(0);
        let mut store = Buckets::default();
        let books = [
            LeaseBook::new("r", "l", params(1000.0)),
            LeaseBook::new("r", "l", params(1000.0)),
        ];
        let mut admitted = 0u64;
        // 10 s; each book sees 50 requests per 10 ms tick (5000/s each).
        for _ in 0..1000 {
            for b in &books {
                for i in 0..50u64 {
                    let now = clock.now().saturating_add(Duration::from_micros(i * 200));
                    match b.spend(7, now, TICK) {
                        Spend::Leased | Spend::Fallback { allowed: true, .. } => admitted += 1,
                        _ => {}
                    }
                }
            }
            for b in &books {
                lease_round(b, &mut store, &clock);
            }
            clock.advance(TICK);
        }
        let expected = 10_000.0;
        let err = (admitted as f64 - expected).abs() / expected;
        assert!(err < 0.02, "admitted {admitted}, expected ~{expected}");
    }

    #[test]
    fn store_down_falls_back_to_the_local_share_and_recovers() {
        let book = LeaseBook::new("r", "l", params(100.0));
        let (mut takes, mut gives) = (Vec::new(), Vec::new());
        // Demand on key 1, lease it, spend it all.
        book.spend(1, Nanos(0), TICK);
        book.plan(TICK, &mut takes, &mut gives);
        assert_eq!(takes.len(), 1);
        // The shared bucket is drained (by other instances): nothing spare.
        let g = Grant {
            granted: takes[0].1.want,
            remaining: 0,
            next_token_ms: 10,
        };
        book.settle(&takes, Ok(&[g]), &mut gives);
        let mut leased = 0;
        while let Spend::Leased = book.spend(1, Nanos(0), TICK) {
            leased += 1;
        }
        assert_eq!(leased, 2);
        assert!(matches!(
            book.spend(1, Nanos(0), TICK),
            Spend::Denied { .. }
        ));
        // The store fails: the local share (50/s, burst 5) decides.
        takes.clear();
        book.plan(TICK, &mut takes, &mut gives);
        book.settle(&takes, Err(()), &mut gives);
        assert!(!book.store_up());
        let allowed = (0..100)
            .filter(|_| {
                matches!(
                    book.spend(1, Nanos(1_000_000_000), TICK),
                    Spend::Fallback { allowed: true, .. }
                )
            })
            .count();
        assert_eq!(allowed, 5);
        assert!(book.store_errors.load(Relaxed) == 1);
        // Back up at the next successful take.
        takes.clear();
        book.plan(TICK, &mut takes, &mut gives);
        let grants: Vec<Grant> = takes
            .iter()
            .map(|_| Grant {
                granted: 3,
                remaining: 0,
                next_token_ms: 0,
            })
            .collect();
        book.settle(&takes, Ok(&grants), &mut gives);
        assert!(book.store_up());
        assert!(matches!(
            book.spend(1, Nanos(1_000_000_000), TICK),
            Spend::Leased
        ));
    }

    /// A key well under its limit, sending less often than every lease interval, is never
    /// refused (its leases must not be given back between two requests).
    #[test]
    fn a_light_key_under_the_limit_is_always_admitted() {
        let clock = ManualClock::new(0);
        let mut store = Buckets::default();
        let book = LeaseBook::new("r", "l", params(100.0));
        let mut refused = 0;
        // 50/s against 100/s: one request every 20 ms, leases every 10 ms, for 10 s.
        for i in 0..1000u32 {
            if i % 2 == 0 {
                match book.spend(3, clock.now(), TICK) {
                    Spend::Leased | Spend::Fallback { allowed: true, .. } => {}
                    _ => refused += 1,
                }
            }
            lease_round(&book, &mut store, &clock);
            clock.advance(TICK);
        }
        assert_eq!(refused, 0);
    }

    #[test]
    fn a_full_book_limits_new_keys_together() {
        let book = LeaseBook::new("r", "l", params(10.0));
        for k in 0..(MAX_KEYS as u64 + 64) {
            book.spend(k * SHARDS as u64, Nanos(0), TICK);
        }
        // Shard 0 is full: unknown keys share its overflow slot and its fallback GCRA
        // (5/s, burst 5), which is long spent.
        let fresh = (0..10)
            .filter(|i| {
                matches!(
                    book.spend((MAX_KEYS as u64 + 100 + i) * SHARDS as u64, Nanos(0), TICK),
                    Spend::Fallback { allowed: true, .. }
                )
            })
            .count();
        assert_eq!(fresh, 0);
    }

    #[test]
    fn idle_keys_give_their_tokens_back_and_are_forgotten() {
        let book = LeaseBook::new("r", "l", params(100.0));
        let (mut takes, mut gives) = (Vec::new(), Vec::new());
        book.spend(9, Nanos(0), TICK);
        book.plan(TICK, &mut takes, &mut gives);
        let g = Grant {
            granted: 2,
            remaining: 0,
            next_token_ms: 0,
        };
        book.settle(&takes, Ok(&[g]), &mut gives);
        for _ in 0..IDLE_INTERVALS {
            takes.clear();
            book.plan(TICK, &mut takes, &mut gives);
        }
        assert_eq!(book.keys(), 0);
        assert_eq!(gives.iter().map(|g| g.tokens).sum::<u32>(), 2);
        assert!(gives[0].key.starts_with("vm:rl:r:l:"));
    }
}
