//! vivremotion's data plane.
pub mod balance;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod headers;
pub mod routing;
pub mod telemetry;
