//! Discrete-event simulator on a virtual clock: trace replay, fault injection, policy
//! comparison, reports and plots.
//!
//! Empty so far: the simulator arrives in a later issue. It will drive `vivremotion-proxy`'s
//! balancers and limiters as libraries, which is why that code takes time from a `Clock`.
