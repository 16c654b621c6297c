//! Loaders for the public traces in `../shared/datasets` (polars, behind this crate only).
//!
//! Empty so far: loaders arrive with the simulator. polars will be added here, and only here,
//! with only the features the loaders use.
