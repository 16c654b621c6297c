//! Learned and statistical models for the brain: forecasters, anomaly detectors, latency
//! predictors and routing bandits. Pure and IO-free.
//!
//! Empty so far: the models arrive with the brain. The crate exists now so that the workspace
//! layout (and its dependency rules) are fixed from the first commit.
