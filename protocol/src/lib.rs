//! The contract between the data plane (proxy) and the control plane (brain).
//!
//! Everything that crosses the bus is defined here, versioned and serde-serializable, and
//! nothing else lives here: this crate depends on `serde` only so that the proxy's hot path
//! never compiles the brain's heavy dependencies.
//!
//! Layout:
//! - [`telemetry`]: the per-tick `Telemetry` window a proxy emits per route × upstream.
//! - [`policy`]: the versioned `Policy` snapshot the brain publishes and proxies swap in whole.
//! - [`decision`]: the `Decision` record behind every policy change (the explain API's unit).
//! - [`sketch`]: the mergeable latency sketch (DDSketch-style log buckets) used by telemetry.
//! - [`clock`]: the `Clock` trait all decision code takes time from (real or simulated).
//! - [`bus`]: bus key, stream and channel names.

pub mod bus;
pub mod clock;
pub mod decision;
pub mod policy;
pub mod sketch;
pub mod telemetry;

pub use clock::{Clock, ManualClock, Nanos, SystemClock};
pub use decision::Decision;
pub use policy::Policy;
pub use sketch::LatencySketch;
pub use telemetry::Telemetry;

/// Version of the wire schema. Bumped on any incompatible change to the types in this crate;
/// readers reject payloads whose `schema_version` they do not know.
pub const SCHEMA_VERSION: u32 = 1;
