//! Telemetry: recorded on the request path into per-worker shards, assembled off it.
//!
//! - [`recorder`]: [`ScopeStats`], one per route × upstream endpoint: per-worker shards of
//!   relaxed atomic counters and a dense log-bucket latency histogram. Recording is a handful
//!   of uncontended atomic adds: no lock, no allocation.
//! - [`collector`]: every tick, sums the shards, takes deltas against the previous tick and
//!   emits one `protocol::Telemetry` window per scope into a bounded in-memory store.
//! - [`prometheus`]: renders the same cumulative counters in the Prometheus text format.

pub mod prometheus;

// Recording and collection are decision-core code (IO-free, driven by the simulator too).
pub use vivremotion_decide::telemetry::{collector, recorder};
pub use vivremotion_decide::telemetry::{
    Collector, Outcome, ScopeStats, StatsRegistry, TelemetryStore,
};
