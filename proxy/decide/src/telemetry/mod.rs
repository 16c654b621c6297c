//! Telemetry recording, IO-free: the request path records into per-worker shards
//! ([`recorder`]); every tick the [`collector`] turns them into `protocol::Telemetry` windows
//! and keeps a bounded store of them.

pub mod collector;
pub mod recorder;

pub use collector::{Collector, TelemetryPage, TelemetryStore};
pub use recorder::{Outcome, ScopeStats, StatsRegistry};
