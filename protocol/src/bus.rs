//! Names on the bus (Redis keys, streams and channels; the in-memory bus uses the same names).
//!
//! Streams are trimmed approximately (`MAXLEN ~`) so Redis memory stays bounded.

/// Stream of `Telemetry` windows, one entry per window.
pub const TELEMETRY_STREAM: &str = "vm:telemetry";
/// Key holding the current `Policy` snapshot (JSON).
pub const POLICY_KEY: &str = "vm:policy:current";
/// Pub/sub channel announcing a new policy version.
pub const POLICY_CHANNEL: &str = "vm:policy";
/// Stream of `Decision` records.
pub const DECISION_STREAM: &str = "vm:decisions";
/// Key of the brain leader lease (SET NX PX).
pub const LEADER_LEASE_KEY: &str = "vm:brain:leader";
/// Approximate maximum length of the telemetry stream.
pub const TELEMETRY_STREAM_MAXLEN: usize = 100_000;
/// Approximate maximum length of the decision stream.
pub const DECISION_STREAM_MAXLEN: usize = 100_000;
