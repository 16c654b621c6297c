//! The telemetry window: what one proxy instance saw for one scope during one tick.
//!
//! Counters are per window (deltas, not totals), so the brain can sum windows from many
//! instances. Latencies travel as mergeable sketches, never as averages.

use crate::sketch::LatencySketch;
use crate::SCHEMA_VERSION;
use serde::{Deserialize, Serialize};

/// Request priority classes, lowest shed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Critical,
    Default,
    Sheddable,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::Default, Priority::Sheddable];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Default => "default",
            Priority::Sheddable => "sheddable",
        }
    }
}

/// One counter per priority class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerPriority {
    pub critical: u64,
    pub default: u64,
    pub sheddable: u64,
}

impl PerPriority {
    pub fn get(&self, p: Priority) -> u64 {
        match p {
            Priority::Critical => self.critical,
            Priority::Default => self.default,
            Priority::Sheddable => self.sheddable,
        }
    }

    pub fn total(&self) -> u64 {
        self.critical + self.default + self.sheddable
    }
}

/// What a window is about: a route, and the upstream endpoint (or LLM deployment) it went to.
/// `upstream` is `None` for requests answered before an upstream was chosen (413, 400, ...).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Scope {
    pub route: String,
    pub cluster: Option<String>,
    pub upstream: Option<String>,
}

/// Responses by status class, as sent to the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    pub informational: u64,
    pub success: u64,
    pub redirect: u64,
    pub client_error: u64,
    pub server_error: u64,
}

impl StatusCounts {
    pub fn total(&self) -> u64 {
        self.informational + self.success + self.redirect + self.client_error + self.server_error
    }
}

/// Upstream failures by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// Could not connect (refused, unreachable, TLS handshake failure).
    pub connect: u64,
    /// No response headers within the route's timeout.
    pub timeout: u64,
    /// Connection reset or closed before a complete response.
    pub reset: u64,
    /// The upstream answered 5xx.
    pub upstream_5xx: u64,
    /// The upstream answered 429.
    pub upstream_429: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.reset + self.upstream_5xx + self.upstream_429
    }
}

/// Admission outcomes by priority class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    pub admitted: PerPriority,
    /// Refused by a rate or concurrency limit (429).
    pub limited: PerPriority,
    /// Dropped by load shedding (503).
    pub shed: PerPriority,
}

/// Retries by the failure of the try before them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryReasons {
    pub connect: u64,
    pub reset: u64,
    pub timeout: u64,
    /// The upstream answered a status the route retries (502, 503, 504 as configured).
    pub status: u64,
}

/// What the data plane's own protection did in the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resilience {
    /// Tries after the first (route scope).
    pub retries: u64,
    /// The same, by reason (route scope).
    #[serde(default)]
    pub retry_reasons: RetryReasons,
    /// Retries refused because the retry budget was spent (route scope).
    pub retry_budget_exhausted: u64,
    /// Outlier ejections (endpoint scope).
    pub ejections: u64,
    /// Circuit breaker trips (endpoint scope).
    pub breaker_trips: u64,
    /// At the end of the window (endpoint scope): ejected, breaker open, failing active
    /// health checks.
    pub ejected: bool,
    pub breaker_open: bool,
    pub unhealthy: bool,
}

/// What was in force during a window: the policy and config, and the limits and load the
/// scope ran under (sampled through the window, not only read at its end).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InForce {
    /// Version of the policy in force at the end of the window (0: none).
    pub policy_version: u64,
    /// Fingerprint of the config in force at the end of the window.
    pub config_fingerprint: String,
    /// Endpoint scopes: the endpoint's weight on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Route scopes with a concurrency limit: the limit, and requests waiting for a slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
    pub queued_mean: f64,
    pub queued_max: u64,
    /// Requests (route) or tries (endpoint) in flight, sampled through the window.
    pub in_flight_mean: f64,
    pub in_flight_max: u64,
}

/// LLM-specific signals, present only for LLM gateway scopes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmTelemetry {
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Time to first token.
    pub ttft: LatencySketch,
    /// Inter-token latency.
    pub itl: LatencySketch,
    pub cost_usd: f64,
}

/// One window: one proxy instance × one scope × one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    pub schema_version: u32,
    /// Proxy instance that produced the window.
    pub instance: String,
    /// Per-instance sequence number, increasing by one per window emitted.
    pub seq: u64,
    /// Wall-clock start of the window, ms since the Unix epoch.
    pub window_start_ms: u64,
    /// Window length in ms.
    pub window_ms: u64,
    pub scope: Scope,
    /// Route scope: client requests that finished in the window, with the status the client
    /// got. Endpoint scope: tries that ended, each with its own outcome.
    pub requests: u64,
    pub status: StatusCounts,
    pub errors: ErrorCounts,
    /// Route scope: request received → response headers (or the local answer), queueing,
    /// tries and backoffs included. Endpoint scope: each try from its own start.
    pub latency: LatencySketch,
    /// Route scope: time spent waiting for a concurrency slot, by requests that waited.
    #[serde(default)]
    pub queue_wait: LatencySketch,
    /// Requests in flight at the end of the window.
    pub in_flight: u64,
    /// Request body bytes received from clients.
    pub bytes_in: u64,
    /// Response body bytes sent to clients.
    pub bytes_out: u64,
    pub admission: Admission,
    #[serde(default)]
    pub resilience: Resilience,
    #[serde(default)]
    pub in_force: InForce,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmTelemetry>,
}

/// Everything one instance saw in one tick: one batch per instance per tick, the unit the
/// proxy ships to the brain. Windows of idle scopes are left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryBatch {
    pub schema_version: u32,
    pub instance: String,
    /// Per-instance batch number, increasing by one per tick.
    pub seq: u64,
    /// The tick's interval: aligned to multiples of the tick on the Unix clock, so batches
    /// of several instances describe the same interval.
    pub window_start_ms: u64,
    pub window_ms: u64,
    pub policy_version: u64,
    pub config_fingerprint: String,
    pub windows: Vec<Telemetry>,
}

impl Telemetry {
    /// An empty window for a scope.
    pub fn empty(
        instance: &str,
        seq: u64,
        window_start_ms: u64,
        window_ms: u64,
        scope: Scope,
    ) -> Self {
        Telemetry {
            schema_version: SCHEMA_VERSION,
            instance: instance.to_string(),
            seq,
            window_start_ms,
            window_ms,
            scope,
            requests: 0,
            status: StatusCounts::default(),
            errors: ErrorCounts::default(),
            latency: LatencySketch::new(),
            queue_wait: LatencySketch::new(),
            in_flight: 0,
            bytes_in: 0,
            bytes_out: 0,
            admission: Admission::default(),
            resilience: Resilience::default(),
            in_force: InForce::default(),
            llm: None,
        }
    }

    /// Requests per second over the window.
    pub fn rps(&self) -> f64 {
        if self.window_ms == 0 {
            return 0.0;
        }
        self.requests as f64 * 1000.0 / self.window_ms as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_round_trips_through_json() {
        let mut t = Telemetry::empty(
            "proxy-a",
            7,
            1_700_000_000_000,
            1000,
            Scope {
                route: "api".into(),
                cluster: Some("backend".into()),
                upstream: Some("10.0.0.1:80".into()),
            },
        );
        t.requests = 12;
        t.status.success = 10;
        t.status.server_error = 2;
        t.errors.upstream_5xx = 2;
        t.latency.record(1500.0);
        t.latency.record(2500.0);
        t.admission.admitted.default = 12;
        t.llm = Some(LlmTelemetry {
            tokens_in: 100,
            tokens_out: 50,
            ..Default::default()
        });
        let json = serde_json::to_string(&t).unwrap();
        let back: Telemetry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert!((t.rps() - 12.0).abs() < 1e-9);
    }

    #[test]
    fn priorities_serialize_snake_case() {
        assert_eq!(
            serde_json::to_string(&Priority::Sheddable).unwrap(),
            "\"sheddable\""
        );
        assert_eq!(
            Priority::ALL.map(|p| p.as_str()),
            ["critical", "default", "sheddable"]
        );
    }
}
