//! The decision core: the parts of the data plane that decide, without doing any IO.
//!
//! The proxy's IO shell (listeners, codecs, upstream connections, admin API, Redis, control
//! loops) and the simulator both drive this code, so what the simulator predicts is what the
//! proxy does. Time comes in as `Nanos` (from a `protocol::Clock`), randomness from a seeded
//! RNG; nothing here reads a clock, opens a socket or spawns a task.
//!
//! Layout:
//! - [`balance`]: smooth WRR, least-request, P2C peak-EWMA, Maglev; [`balance::BalancerKind`].
//! - [`guard`]: GCRA, retry budget, circuit breaker, outlier ejection, gradient limit.
//! - [`limits`]: admission: rate limits (local GCRA, leased global tokens), the concurrency
//!   limit with priority thresholds and queue.
//! - [`flow`]: [`flow::RequestFlow`], a request's life from admission to its answer, and
//!   [`flow::RouteCore`], the decision half of a route it runs on.
//! - [`control`]: the periodic control step (`Control::tick`): adaptive concurrency windows,
//!   success-rate sweeps, the health-check schedule.
//! - [`endpoint`]: per-endpoint live state (in-flight, peak-EWMA, health, ejection, breaker).
//! - [`telemetry`]: per-worker recording shards and the per-tick window collector.
//! - [`trace`]: a fixed scenario on virtual time that prints every decision (reproducibility).
//! - [`ser`]: serde helpers shared with the proxy's config.

pub mod balance;
pub mod build;
pub mod config;
pub mod control;
pub mod endpoint;
pub mod flow;
pub mod guard;
pub mod limits;
pub mod ser;
pub mod telemetry;
pub mod trace;
