//! The decision record: why the brain changed (or chose not to change) a policy.
//!
//! One record per decision, with everything needed to answer "why did traffic move?": what the
//! brain saw, what it forecast, which anomalies fired, every candidate it weighed with its
//! objective terms, the winner and runner-up, what guardrails clamped, and what it expected to
//! happen. `observed_effect` is filled in later, once the effect could be measured.

use crate::SCHEMA_VERSION;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Weights,
    Limits,
    Shedding,
    ModelRouting,
    Rollback,
    Freeze,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionMode {
    /// Published to the proxies.
    Applied,
    /// Computed and logged, not published.
    Shadow,
    /// Blocked by a guardrail.
    Vetoed,
}

/// Summary of the telemetry the decision was based on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowSummary {
    pub windows: u64,
    pub rps: f64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub in_flight: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    pub signal: String,
    pub horizon_s: f64,
    pub point: f64,
    pub lower: f64,
    pub upper: f64,
    /// Coverage of the interval, e.g. 0.9.
    pub level: f64,
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalySignal {
    pub detector: String,
    pub signal: String,
    pub score: f64,
    pub threshold: f64,
    /// The action it is tied to, or "observe only".
    pub action: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Human-readable description of the action.
    pub action: String,
    /// The action's parameters (for example endpoint → weight).
    pub params: BTreeMap<String, f64>,
    /// Objective terms (latency, errors, saturation, cost, ...); lower is better.
    pub objective: BTreeMap<String, f64>,
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardrailClamp {
    pub guardrail: String,
    pub field: String,
    pub from: f64,
    pub to: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effect {
    pub metric: String,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub schema_version: u32,
    pub id: String,
    pub at_ms: u64,
    /// Policy version this decision produced (or would have, for shadow / vetoed).
    pub policy_version: u64,
    pub kind: DecisionKind,
    /// What it applies to, e.g. `route:api`.
    pub scope: String,
    pub mode: DecisionMode,
    pub inputs: WindowSummary,
    #[serde(default)]
    pub forecast: Option<Forecast>,
    #[serde(default)]
    pub anomalies: Vec<AnomalySignal>,
    pub candidates: Vec<Candidate>,
    /// Index into `candidates`.
    pub chosen: usize,
    #[serde(default)]
    pub runner_up: Option<usize>,
    /// Score difference between runner-up and chosen.
    #[serde(default)]
    pub margin: Option<f64>,
    #[serde(default)]
    pub guardrails: Vec<GuardrailClamp>,
    #[serde(default)]
    pub expected_effect: Vec<Effect>,
    #[serde(default)]
    pub observed_effect: Option<Vec<Effect>>,
}

impl Decision {
    pub fn new(
        id: String,
        at_ms: u64,
        kind: DecisionKind,
        scope: String,
        mode: DecisionMode,
    ) -> Self {
        Decision {
            schema_version: SCHEMA_VERSION,
            id,
            at_ms,
            policy_version: 0,
            kind,
            scope,
            mode,
            inputs: WindowSummary::default(),
            forecast: None,
            anomalies: Vec::new(),
            candidates: Vec::new(),
            chosen: 0,
            runner_up: None,
            margin: None,
            guardrails: Vec::new(),
            expected_effect: Vec::new(),
            observed_effect: None,
        }
    }

    pub fn chosen_candidate(&self) -> Option<&Candidate> {
        self.candidates.get(self.chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_round_trips_through_json() {
        let mut d = Decision::new(
            "d-42".into(),
            1_700_000_000_000,
            DecisionKind::Weights,
            "route:api".into(),
            DecisionMode::Applied,
        );
        d.policy_version = 9;
        d.inputs = WindowSummary {
            windows: 3,
            rps: 120.0,
            error_rate: 0.01,
            p50_ms: Some(4.0),
            p99_ms: Some(40.0),
            in_flight: 3.5,
        };
        d.forecast = Some(Forecast {
            signal: "rps".into(),
            horizon_s: 30.0,
            point: 150.0,
            lower: 120.0,
            upper: 180.0,
            level: 0.9,
            model: "mstl+ets".into(),
        });
        d.anomalies.push(AnomalySignal {
            detector: "robust_z".into(),
            signal: "p99_ms".into(),
            score: 5.1,
            threshold: 3.5,
            action: "observe only".into(),
        });
        for (i, s) in [1.0, 1.4].into_iter().enumerate() {
            d.candidates.push(Candidate {
                action: format!("candidate {i}"),
                params: [("10.0.0.1:80".to_string(), 70.0)].into(),
                objective: [("latency".to_string(), s)].into(),
                score: s,
            });
        }
        d.runner_up = Some(1);
        d.margin = Some(0.4);
        d.guardrails.push(GuardrailClamp {
            guardrail: "max_step".into(),
            field: "weights.10.0.0.1:80".into(),
            from: 90.0,
            to: 70.0,
        });
        d.expected_effect.push(Effect {
            metric: "p99_ms".into(),
            value: 30.0,
        });
        let json = serde_json::to_string(&d).unwrap();
        let back: Decision = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.chosen_candidate().map(|c| c.score), Some(1.0));
    }
}
