//! The control plane: bus ingestion, feature windows, controllers, guardrails, shadow mode,
//! leader lease, decision log and explain API.
//!
//! Empty so far: the brain arrives in a later issue. Until then the proxy serves its telemetry
//! windows on its admin API and accepts policies there.
