//! Controllers: telemetry batches in, policies out, at tick times. The brain plugs in here
//! (issue 15); until then a static controller (publishes nothing: the config's own balancer
//! and limits run alone) and an oracle (told the faults in advance) exercise the interface.

use super::scenario::{Fault, FaultKind};
use std::collections::BTreeMap;
use std::time::Duration;
use vivremotion_protocol::policy::RoutePolicy;
use vivremotion_protocol::telemetry::TelemetryBatch;
use vivremotion_protocol::Policy;

/// What a controller sees at each tick.
pub struct Tick<'a> {
    /// Simulated time since the start.
    pub at: Duration,
    pub unix_ms: u64,
    /// The batches of the tick that just closed, one per instance the bus reaches.
    pub batches: &'a [TelemetryBatch],
}

pub trait Controller {
    fn name(&self) -> &str;
    /// One tick; policies to publish go into `out`.
    fn tick(&mut self, tick: &Tick<'_>, out: &mut Vec<Policy>);
}

/// Publishes nothing.
pub struct Static;

impl Controller for Static {
    fn name(&self) -> &str {
        "static"
    }
    fn tick(&mut self, _: &Tick<'_>, _: &mut Vec<Policy>) {}
}

/// Told the injected faults: at each tick it weights each endpoint of the route by the share
/// of its healthy capacity left (crashed 0, slowed ×k 1/k, an error burst 1 − share, a
/// brownout its capacity factor), relative to its configured weight, and publishes when that
/// changes. An upper bound on what reweighting alone could gain, not a controller to ship.
pub struct Oracle {
    route: String,
    /// (address, configured weight, backend index).
    endpoints: Vec<(String, u32, usize)>,
    faults: Vec<Fault>,
    version: u64,
    last: Option<BTreeMap<String, u32>>,
}

/// Policy weights are integers: a healthy endpoint of weight 1 gets this.
const SCALE: f64 = 100.0;

impl Oracle {
    pub fn new(route: &str, endpoints: Vec<(String, u32, usize)>, faults: Vec<Fault>) -> Oracle {
        Oracle {
            route: route.to_string(),
            endpoints,
            faults,
            version: 0,
            last: None,
        }
    }

    fn health(&self, backend: usize, at: Duration) -> f64 {
        let mut h = 1.0;
        for f in &self.faults {
            if at < f.from || at >= f.until || f.kind.backend() != Some(backend) {
                continue;
            }
            h *= match f.kind {
                FaultKind::Crash { .. } => 0.0,
                FaultKind::Slowdown { factor, .. } => 1.0 / factor,
                FaultKind::ErrorBurst { share, .. } => 1.0 - share,
                FaultKind::Brownout { factor, .. } => factor,
                FaultKind::LatencySpike { share, .. } => 1.0 - 0.5 * share,
                FaultKind::LatencyRamp { factor, .. } => {
                    let ns = |d: Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
                    let len = ns(f.until.saturating_sub(f.from));
                    1.0 / super::scenario::ramp(factor, ns(f.from), len, ns(at))
                }
                FaultKind::Surge { .. } | FaultKind::Partition => 1.0,
            };
        }
        h
    }
}

impl Controller for Oracle {
    fn name(&self) -> &str {
        "oracle"
    }

    fn tick(&mut self, tick: &Tick<'_>, out: &mut Vec<Policy>) {
        let weights: BTreeMap<String, u32> = self
            .endpoints
            .iter()
            .map(|(addr, w, b)| {
                let h = self.health(*b, tick.at);
                (addr.clone(), (f64::from(*w) * SCALE * h).round() as u32)
            })
            .collect();
        // A policy that zeroes every endpoint is refused by the proxy; nothing is better.
        if weights.values().all(|w| *w == 0) || self.last.as_ref() == Some(&weights) {
            return;
        }
        self.version += 1;
        let mut p = Policy::empty(self.version, tick.unix_ms, "oracle");
        p.routes.insert(
            self.route.clone(),
            RoutePolicy {
                upstream_weights: weights.clone(),
                ..RoutePolicy::default()
            },
        );
        self.last = Some(weights);
        out.push(p);
    }
}
