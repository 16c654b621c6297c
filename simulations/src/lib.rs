//! Discrete-event simulator on a virtual clock (a later issue), and the evaluations the
//! models are judged by: `eval forecast` (MASE against seasonal naive on real series) and
//! `eval anomaly` (NAB). Reports are Markdown and JSON, plots SVG.

pub mod eval;
pub mod plot;
pub mod sim;
