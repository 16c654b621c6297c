//! Global token buckets in Redis.
//!
//! [`RedisStore`] runs the [`Bucket`](super::store::Bucket) arithmetic as Lua scripts inside
//! Redis: a script runs atomically, so concurrent proxies cannot interleave a read-modify-write
//! of one bucket, and it reads Redis' own clock (`TIME`), so instances with skewed clocks still
//! agree on how much a bucket has refilled.
//!
//! Per key, Redis holds a hash `{tokens, at}` (fractional tokens as of `at`, in microseconds of
//! Redis time). A missing key is a full bucket, which lets idle keys expire: each write sets a
//! PEXPIRE of about twice the time the bucket needs to refill from empty, after which it would
//! be full anyway.
//!
//! Availability matters more than the limit here (the leaser falls back when the store fails),
//! so every call is bounded by `op_timeout`, the store can be built while Redis is down, and
//! reconnects are quick once Redis is back.

use super::store::{BoxFuture, Give, Grant, LeaseStore, StoreError, Take};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ErrorKind, Pipeline, RedisError, Script, ServerErrorKind, Value};
use std::sync::Mutex;
use std::time::Duration;

/// Default bound on one store call (connect, round trip, script reload included).
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(250);

/// Idle keys must go away eventually even for buckets that take ages to refill (or never do,
/// at rate 0); past this, forgetting a bucket early is the lesser evil than keeping it forever.
const MAX_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// Transcription of `Bucket::refill` + `Bucket::take`; keep in step with store.rs.
///
/// KEYS[1] = bucket; ARGV = rate (tokens/s, ≥ 0), capacity, want, ttl (ms).
/// Returns {granted, remaining, next_token_ms}.
const TAKE_LUA: &str = r#"
-- Redis < 5 refuses writes after TIME unless effects (not the script) are replicated.
if redis.replicate_commands then redis.replicate_commands() end
local rate = tonumber(ARGV[1])
local cap = math.max(tonumber(ARGV[2]), 1)
local want = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(s[1])
local at = tonumber(s[2])
if tokens == nil or at == nil then
  tokens = cap
  at = now
end
local dt = now - at
if dt < 0 then dt = 0 end
tokens = math.min(tokens + dt / 1e6 * math.max(rate, 0), cap)
if now > at then at = now end
local granted = math.min(math.max(math.floor(tokens), 0), want)
tokens = tokens - granted
local remaining = math.max(math.floor(tokens), 0)
local next_ms = 0
if tokens < 1 and rate > 0 then
  -- Bounded so the integer reply conversion cannot overflow on absurd rates.
  next_ms = math.min(math.ceil((1 - tokens) / rate * 1000), 9007199254740992)
end
-- %.17g: Lua's tostring keeps 14 digits, which would drift from the Rust arithmetic.
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%.0f', at))
redis.call('PEXPIRE', KEYS[1], ttl)
return {granted, remaining, next_ms}
"#;

/// Transcription of `Bucket::refill` + `Bucket::give`; keep in step with store.rs.
///
/// KEYS[1] = bucket; ARGV = rate (tokens/s, ≥ 0), capacity, tokens, ttl (ms). Returns 1.
const GIVE_LUA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local rate = tonumber(ARGV[1])
local cap = math.max(tonumber(ARGV[2]), 1)
local back = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(s[1])
local at = tonumber(s[2])
-- A missing bucket is full: giving to it changes nothing.
if tokens == nil or at == nil then return 1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local dt = now - at
if dt < 0 then dt = 0 end
tokens = math.min(tokens + dt / 1e6 * math.max(rate, 0), cap)
if now > at then at = now end
tokens = math.min(tokens + back, cap)
if tokens >= cap then
  -- A full bucket and a missing one behave the same; the missing one costs no memory.
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%.0f', at))
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"#;

/// Token buckets shared by all proxy instances through one Redis.
pub struct RedisStore {
    client: Client,
    /// The URL without credentials, for error messages and logs.
    shown_url: String,
    op_timeout: Duration,
    /// Built on first use: a `ConnectionManager` needs a running Tokio runtime, and `new`
    /// must work before there is one (and while Redis is down).
    conn: Mutex<Option<ConnectionManager>>,
    take_script: Script,
    give_script: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shown_url)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Checks the URL only; the connection is made on first use, so a proxy can start before
    /// its Redis does. Each later call is bounded by `op_timeout`.
    pub fn new(url: &str, op_timeout: Duration) -> Result<RedisStore, StoreError> {
        let shown_url = redact(url);
        let client = Client::open(url).map_err(|e| {
            StoreError::Unreachable(format!("invalid Redis URL `{shown_url}`: {e}"))
        })?;
        Ok(RedisStore {
            client,
            shown_url,
            op_timeout,
            conn: Mutex::new(None),
            take_script: Script::new(TAKE_LUA),
            give_script: Script::new(GIVE_LUA),
        })
    }

    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// The URL without credentials.
    pub fn url(&self) -> &str {
        &self.shown_url
    }

    fn manager(&self) -> Result<ConnectionManager, StoreError> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        // Short timeouts and a short, fast backoff: while Redis is down a call should fail
        // quickly (the caller has a fallback), and once it is back the next call should find
        // a fresh connection rather than wait out a long backoff.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.op_timeout))
            .set_response_timeout(Some(self.op_timeout))
            .set_min_delay(Duration::from_millis(10))
            .set_exponent_base(2.0)
            .set_max_delay(Duration::from_millis(200))
            .set_number_of_retries(2);
        let m = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| self.error(&e))?;
        *slot = Some(m.clone());
        Ok(m)
    }

    /// After a timeout the connection may be wedged (half-open TCP, stuck reply), which the
    /// manager would not notice; a fresh one is cheap.
    fn forget_connection(&self) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn error(&self, e: &RedisError) -> StoreError {
        if e.is_timeout() {
            return StoreError::Timeout(self.op_timeout);
        }
        match e.kind() {
            ErrorKind::Io
            | ErrorKind::AuthenticationFailed
            | ErrorKind::InvalidClientConfig
            | ErrorKind::Client
            | ErrorKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::NoPerm,
            ) => StoreError::Unreachable(format!("{}: {e}", self.shown_url)),
            _ => StoreError::Protocol(format!("{}: {e}", self.shown_url)),
        }
    }

    /// Runs `script` once per call, all in one pipeline (one round trip), bounded by
    /// `op_timeout`; replies come back in call order.
    async fn eval_all(
        &self,
        script: &Script,
        calls: &[Call<'_>],
    ) -> Result<Vec<Value>, StoreError> {
        match tokio::time::timeout(self.op_timeout, self.eval_all_untimed(script, calls)).await {
            Ok(r) => r,
            Err(_) => {
                self.forget_connection();
                Err(StoreError::Timeout(self.op_timeout))
            }
        }
    }

    async fn eval_all_untimed(
        &self,
        script: &Script,
        calls: &[Call<'_>],
    ) -> Result<Vec<Value>, StoreError> {
        let mut con = self.manager()?;
        let all: Vec<&Call<'_>> = calls.iter().collect();
        let pipe = pipeline(script, &all);
        let mut replies = match pipe.query_async::<Vec<Value>>(&mut con).await {
            Ok(r) => r,
            // The manager keeps its last failed connect attempt and only starts a new one when
            // a call trips over it, so right after Redis comes back the first call would fail
            // for nothing. A refused connection sent nothing, so one retry cannot double-apply.
            Err(e) if e.is_connection_refusal() => pipe
                .query_async::<Vec<Value>>(&mut con)
                .await
                .map_err(|e| self.error(&e))?,
            Err(e) => return Err(self.error(&e)),
        };
        if replies.len() != calls.len() {
            return Err(StoreError::Protocol(format!(
                "{}: {} replies for {} scripts",
                self.shown_url,
                replies.len(),
                calls.len()
            )));
        }
        // Scripts vanish on restart, failover or SCRIPT FLUSH. NOSCRIPT means that call did
        // nothing, so loading the script and re-sending exactly those calls is safe.
        let missing: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, v)| is_noscript(v))
            .map(|(i, _)| i)
            .collect();
        if !missing.is_empty() {
            script
                .load_async(&mut con)
                .await
                .map_err(|e| self.error(&e))?;
            let again: Vec<&Call<'_>> = missing.iter().map(|&i| &calls[i]).collect();
            let retried = pipeline(script, &again)
                .query_async::<Vec<Value>>(&mut con)
                .await
                .map_err(|e| self.error(&e))?;
            if retried.len() != missing.len() {
                return Err(StoreError::Protocol(format!(
                    "{}: {} replies for {} scripts",
                    self.shown_url,
                    retried.len(),
                    missing.len()
                )));
            }
            for (i, v) in missing.into_iter().zip(retried) {
                replies[i] = v;
            }
        }
        if let Some(Value::ServerError(err)) =
            replies.iter().find(|v| matches!(v, Value::ServerError(_)))
        {
            return Err(self.error(&RedisError::from(err.clone())));
        }
        Ok(replies)
    }
}

/// One script invocation: its key and ARGV.
struct Call<'a> {
    key: &'a str,
    rate: f64,
    capacity: u32,
    amount: u32,
}

fn pipeline(script: &Script, calls: &[&Call<'_>]) -> Pipeline {
    let mut pipe = redis::pipe();
    // Per-call errors (NOSCRIPT above all) come back as values, so they can be told apart.
    pipe.ignore_errors();
    for c in calls {
        pipe.cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(1)
            .arg(c.key)
            .arg(c.rate)
            .arg(c.capacity)
            .arg(c.amount)
            .arg(ttl_ms(c.rate, c.capacity));
    }
    pipe
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
}

/// Lua cannot take NaN or infinity as a rate through `tonumber`, and `Bucket` treats a NaN or
/// negative rate as "no refill", which is what 0 does in the script.
fn clean_rate(rate: f64) -> f64 {
    if rate.is_nan() || rate < 0.0 {
        0.0
    } else {
        rate.min(f64::MAX)
    }
}

/// Twice the time to refill from empty: by then the bucket is full, and a missing key is too.
fn ttl_ms(rate: f64, capacity: u32) -> u64 {
    let cap = f64::from(capacity.max(1));
    let ms = if rate > 0.0 {
        2.0 * cap / rate * 1000.0
    } else {
        f64::INFINITY
    };
    ms.clamp(1000.0, MAX_TTL_MS as f64).ceil() as u64
}

/// Drops `user:password@` so URLs can go into errors and logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => format!("{}***@{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

fn grant(store: &RedisStore, v: &Value) -> Result<Grant, StoreError> {
    let bad = || StoreError::Protocol(format!("{}: unexpected take reply {v:?}", store.shown_url));
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let [Value::Int(granted), Value::Int(remaining), Value::Int(next)] = items.as_slice() else {
        return Err(bad());
    };
    Ok(Grant {
        granted: u32::try_from(*granted).map_err(|_| bad())?,
        remaining: u32::try_from(*remaining).map_err(|_| bad())?,
        next_token_ms: u64::try_from(*next).map_err(|_| bad())?,
    })
}

impl LeaseStore for RedisStore {
    fn take<'a>(&'a self, takes: &'a [Take]) -> BoxFuture<'a, Result<Vec<Grant>, StoreError>> {
        Box::pin(async move {
            if takes.is_empty() {
                return Ok(Vec::new());
            }
            let calls: Vec<Call<'_>> = takes
                .iter()
                .map(|t| Call {
                    key: &t.key,
                    rate: clean_rate(t.rate),
                    capacity: t.capacity,
                    amount: t.want,
                })
                .collect();
            let replies = self.eval_all(&self.take_script, &calls).await?;
            replies.iter().map(|v| grant(self, v)).collect()
        })
    }

    fn give<'a>(&'a self, gives: &'a [Give]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let calls: Vec<Call<'_>> = gives
                .iter()
                .filter(|g| g.tokens > 0)
                .map(|g| Call {
                    key: &g.key,
                    rate: clean_rate(g.rate),
                    capacity: g.capacity,
                    amount: g.tokens,
                })
                .collect();
            if calls.is_empty() {
                return Ok(());
            }
            self.eval_all(&self.give_script, &calls).await.map(|_| ())
        })
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // these tests time a real Redis restart
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::limits::store::Bucket;
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use tokio::time::Instant;

    /// A private redis-server on its own port, killed on drop.
    struct RedisServer {
        child: Option<Child>,
        port: u16,
    }

    impl RedisServer {
        fn start() -> RedisServer {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            RedisServer::start_on(port)
        }

        fn start_on(port: u16) -> RedisServer {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start `redis-server` ({e}); these tests need redis-server on PATH \
                         (e.g. apt-get install redis-server)"
                    )
                });
            let mut server = RedisServer {
                child: Some(child),
                port,
            };
            server.wait_ready();
            server
        }

        fn wait_ready(&mut self) {
            let deadline = std::time::Duration::from_secs(5);
            let started = std::time::SystemTime::now();
            loop {
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return;
                }
                if let Some(child) = self.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("redis-server on port {} exited: {status}", self.port);
                    }
                }
                assert!(
                    started.elapsed().unwrap_or_default() < deadline,
                    "redis-server on port {} not accepting connections after {deadline:?}",
                    self.port
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }

        fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn take(key: &str, rate: f64, capacity: u32, want: u32) -> Take {
        Take {
            key: key.into(),
            rate,
            capacity,
            want,
        }
    }

    fn give(key: &str, rate: f64, capacity: u32, tokens: u32) -> Give {
        Give {
            key: key.into(),
            rate,
            capacity,
            tokens,
        }
    }

    async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
        Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_redis_bucket_starts_full_refills_and_caps() {
        let server = RedisServer::start();
        let store = RedisStore::new(&server.url(), DEFAULT_OP_TIMEOUT).unwrap();
        assert_eq!(store.kind(), "redis");
        let t = [take("k", 100.0, 10, 25)];
        let g = store.take(&t).await.unwrap();
        assert_eq!(g[0].granted, 10);
        assert_eq!(g[0].remaining, 0);
        // 1 token at 100/s, minus the few µs since the take.
        assert!((9..=10).contains(&g[0].next_token_ms), "{g:?}");

        // 100 ms at 100/s: about 10 tokens (capped at 10).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let g = store.take(&t).await.unwrap();
        assert!((8..=10).contains(&g[0].granted), "{g:?}");

        // Giving back more than was taken fills only to capacity.
        store.give(&[give("k", 100.0, 10, 50)]).await.unwrap();
        let g = store.take(&t).await.unwrap();
        assert_eq!(g[0].granted, 10);

        // Idle keys expire: about 2 × capacity / rate, at least 1 s.
        let mut con = raw(&server).await;
        let pttl: i64 = redis::cmd("PTTL")
            .arg("k")
            .query_async(&mut con)
            .await
            .unwrap();
        assert!((900..=1000).contains(&pttl), "pttl {pttl}");
        // A full bucket is the same as none, so a give that fills it removes the key.
        store.give(&[give("k", 100.0, 10, 50)]).await.unwrap();
        let exists: i64 = redis::cmd("EXISTS")
            .arg("k")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(exists, 0);
        // Giving to a missing (full) bucket creates nothing.
        store.give(&[give("k", 100.0, 10, 5)]).await.unwrap();
        let exists: i64 = redis::cmd("EXISTS")
            .arg("k")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(exists, 0);
    }

    #[tokio::test]
    async fn keys_in_one_call_answer_in_order() {
        let server = RedisServer::start();
        let store = RedisStore::new(&server.url(), DEFAULT_OP_TIMEOUT).unwrap();
        let takes = [
            take("a", 0.001, 3, 5),
            take("b", 0.001, 1, 5),
            take("a", 0.001, 3, 1),
        ];
        let g = store.take(&takes).await.unwrap();
        let got: Vec<u32> = g.iter().map(|g| g.granted).collect();
        assert_eq!(got, [3, 1, 0]);
        store
            .give(&[give("a", 0.001, 3, 2), give("b", 0.001, 1, 0)])
            .await
            .unwrap();
        let g = store.take(&takes).await.unwrap();
        let got: Vec<u32> = g.iter().map(|g| g.granted).collect();
        assert_eq!(got, [2, 0, 0]);
        assert!(store.take(&[]).await.unwrap().is_empty());
        store.give(&[]).await.unwrap();
    }

    #[tokio::test]
    async fn redis_grants_what_bucket_grants() {
        let server = RedisServer::start();
        let store = RedisStore::new(&server.url(), DEFAULT_OP_TIMEOUT).unwrap();
        // Refill over the test's run time is < 0.01 token, so whole-token answers must match a
        // Bucket whose clock stands still.
        let rate = 0.001;
        let caps = [1u32, 7, 50];
        let mut model: Vec<Bucket> = caps.iter().map(|&c| Bucket::full(c, 0)).collect();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u32| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((seed >> 33) % u64::from(n)) as u32
        };
        for round in 0..150 {
            let takes: Vec<Take> = caps
                .iter()
                .enumerate()
                .map(|(i, &c)| take(&format!("d{i}"), rate, c, 1 + next(c + 3)))
                .collect();
            let got = store.take(&takes).await.unwrap();
            for (i, t) in takes.iter().enumerate() {
                let want = model[i].take(rate, t.capacity, t.want, 0);
                assert_eq!(
                    (got[i].granted, got[i].remaining),
                    (want.granted, want.remaining),
                    "round {round}, key {i}"
                );
            }
            let gives: Vec<Give> = caps
                .iter()
                .enumerate()
                .map(|(i, &c)| give(&format!("d{i}"), rate, c, next(c / 2 + 2)))
                .collect();
            store.give(&gives).await.unwrap();
            for (i, g) in gives.iter().enumerate() {
                model[i].give(rate, g.capacity, g.tokens, 0);
            }
        }
    }

    #[tokio::test]
    async fn scripts_flushed_from_redis_are_reloaded() {
        let server = RedisServer::start();
        let store = RedisStore::new(&server.url(), DEFAULT_OP_TIMEOUT).unwrap();
        let t = [take("f", 0.001, 5, 2), take("g", 0.001, 5, 1)];
        assert_eq!(store.take(&t).await.unwrap()[0].granted, 2);
        let mut con = raw(&server).await;
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut con)
            .await
            .unwrap();
        let g = store.take(&t).await.unwrap();
        assert_eq!((g[0].granted, g[1].granted), (2, 1));
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut con)
            .await
            .unwrap();
        store.give(&[give("f", 0.001, 5, 1)]).await.unwrap();
        assert_eq!(store.take(&t).await.unwrap()[0].granted, 2);
    }

    #[test]
    fn a_bad_url_is_refused_at_construction_without_leaking_secrets() {
        let err = RedisStore::new("http://user:hunter2@nowhere/", DEFAULT_OP_TIMEOUT)
            .unwrap_err()
            .to_string();
        assert!(err.contains("http://***@nowhere/"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
    }

    #[test]
    fn ttl_is_twice_the_refill_time_within_bounds() {
        assert_eq!(ttl_ms(100.0, 10), 1000);
        assert_eq!(ttl_ms(1.0, 10), 20_000);
        assert_eq!(ttl_ms(0.0, 10), MAX_TTL_MS);
        assert_eq!(ttl_ms(clean_rate(f64::NAN), 10), MAX_TTL_MS);
        assert_eq!(ttl_ms(clean_rate(f64::INFINITY), 10), 1000);
    }

    /// Polls `take` every 50 ms until it succeeds; returns how long that took.
    async fn time_to_recover(store: &RedisStore) -> Duration {
        let start = Instant::now();
        loop {
            match store.take(&[take("r", 10.0, 5, 1)]).await {
                Ok(g) => {
                    assert_eq!(g.len(), 1);
                    return start.elapsed();
                }
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(5),
                        "no recovery after 5 s: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_dead_redis_fails_fast_and_a_restarted_one_is_used_again() {
        let mut server = RedisServer::start();
        let port = server.port;
        let store = RedisStore::new(&server.url(), DEFAULT_OP_TIMEOUT).unwrap();
        let t = [take("r", 10.0, 5, 1)];
        assert_eq!(store.take(&t).await.unwrap()[0].granted, 1);

        server.stop();
        for i in 0..3 {
            let start = Instant::now();
            let r = store.take(&t).await;
            let took = start.elapsed();
            eprintln!("redis down, take #{i}: {took:?} -> {r:?}");
            assert!(r.is_err(), "{r:?}");
            assert!(took < Duration::from_secs(1), "took {took:?}");
        }
        let start = Instant::now();
        let r = store.give(&[give("r", 10.0, 5, 1)]).await;
        eprintln!("redis down, give: {:?} -> {r:?}", start.elapsed());
        assert!(r.is_err() && start.elapsed() < Duration::from_secs(1));

        // Long enough for the manager's own reconnect attempts to have given up.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let spawned = Instant::now();
        let _server = RedisServer::start_on(port);
        let ready = spawned.elapsed();
        let took = time_to_recover(&store).await;
        eprintln!(
            "redis restarted: accepting after {ready:?}, first successful take {took:?} later"
        );
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }

    #[tokio::test]
    async fn a_store_made_before_redis_starts_works_once_it_does() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store =
            RedisStore::new(&format!("redis://127.0.0.1:{port}/"), DEFAULT_OP_TIMEOUT).unwrap();
        let start = Instant::now();
        let r = store.take(&[take("s", 10.0, 5, 1)]).await;
        eprintln!("redis not started yet: {:?} -> {r:?}", start.elapsed());
        assert!(r.is_err() && start.elapsed() < Duration::from_secs(1));
        let _server = RedisServer::start_on(port);
        let took = time_to_recover(&store).await;
        eprintln!("redis started: first successful take after {took:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
}
