//! Forecasting: the seasonal naive baseline, online Holt-Winters, MSTL + ETS (augurs), season
//! detection, and the rolling-origin backtest that picks one per series.

pub mod backtest;
pub mod mstl;
pub mod online;
pub mod seasons;

pub use backtest::{Score, Setup, Spec};
pub use online::{Calibrated, HoltWinters, HwParams, Online, SeasonalNaive};
