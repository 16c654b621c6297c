//! The brain's models, pure and IO-free: forecasters with prediction intervals, streaming
//! anomaly detectors, and the
//! measures they are judged by. Functions take slices; nothing here reads files, clocks or
//! sockets, so the brain, the simulator and the evaluation commands call the same code.

pub mod anomaly;
pub mod forecast;
pub mod latency;
pub mod metrics;
