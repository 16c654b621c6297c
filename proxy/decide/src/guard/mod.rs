//! Self-protection of the data plane, as pure decision code on the `Clock` (time is passed
//! in as `Nanos`): the simulator and the property tests drive exactly what the proxy runs.
//!
//! - [`gcra`]: rate limits per key (local), the arithmetic global leases also use.
//! - [`budget`]: retry budget.
//! - [`breaker`]: circuit breaker per endpoint.
//! - [`outlier`]: passive outlier ejection, panic threshold, active health thresholds.
//! - [`gradient`]: adaptive concurrency limit.

pub mod breaker;
pub mod budget;
pub mod gcra;
pub mod gradient;
pub mod outlier;
