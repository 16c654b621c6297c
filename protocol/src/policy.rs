//! The policy snapshot: everything the brain tunes, published as one versioned value.
//!
//! Proxies swap a policy in whole (never field by field) and only if its version is newer than
//! the one they run; an older or malformed policy is rejected and counted, and the last good
//! one keeps serving (fail-static).

use crate::telemetry::Priority;
use crate::SCHEMA_VERSION;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub schema_version: u32,
    /// Strictly increasing; a proxy ignores a policy whose version is not above its current one.
    pub version: u64,
    /// When the brain issued it, ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// Which brain issued it.
    pub issuer: String,
    /// Per route name.
    #[serde(default)]
    pub routes: BTreeMap<String, RoutePolicy>,
    /// Per virtual model name (LLM gateway).
    #[serde(default)]
    pub models: BTreeMap<String, ModelPolicy>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePolicy {
    /// Weight per upstream endpoint (its address as configured). Endpoints left out keep their
    /// configured weight.
    #[serde(default)]
    pub upstream_weights: BTreeMap<String, u32>,
    /// A fixed concurrency limit; replaces the route's configured (or adaptive) one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
    /// Rate and burst per rate limit name (the limits themselves, with their keys, come from
    /// the config).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_limits: BTreeMap<String, RateLimit>,
    /// Utilisation (0..=1 of the concurrency limit) above which a class is shed.
    #[serde(default)]
    pub shed_threshold: BTreeMap<Priority, f64>,
    /// Retries may add at most this share (%) of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget_percent: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPolicy {
    #[serde(default)]
    pub deployment_weights: BTreeMap<String, u32>,
    /// Deployments to try, in order, when the chosen one fails.
    #[serde(default)]
    pub fallback_order: Vec<String>,
}

/// Why a policy is malformed. The string is the field path.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyError {
    SchemaVersion {
        found: u32,
        expected: u32,
    },
    NotFinite {
        path: String,
    },
    OutOfRange {
        path: String,
        value: f64,
        min: f64,
        max: f64,
    },
    Stale {
        version: u64,
        current: u64,
    },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::SchemaVersion { found, expected } => {
                write!(
                    f,
                    "schema_version: {found} is not the supported version {expected}"
                )
            }
            PolicyError::NotFinite { path } => write!(f, "{path}: not a finite number"),
            PolicyError::OutOfRange {
                path,
                value,
                min,
                max,
            } => write!(f, "{path}: {value} is outside {min}..={max}"),
            PolicyError::Stale { version, current } => write!(
                f,
                "version: {version} is not newer than the current policy version {current}"
            ),
        }
    }
}

impl std::error::Error for PolicyError {}

impl Policy {
    /// An empty policy (no overrides) at `version`.
    pub fn empty(version: u64, issued_at_ms: u64, issuer: &str) -> Self {
        Policy {
            schema_version: SCHEMA_VERSION,
            version,
            issued_at_ms,
            issuer: issuer.to_string(),
            routes: BTreeMap::new(),
            models: BTreeMap::new(),
        }
    }

    /// Structural checks that need no knowledge of the proxy's config.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(PolicyError::SchemaVersion {
                found: self.schema_version,
                expected: SCHEMA_VERSION,
            });
        }
        for (name, r) in &self.routes {
            // Whether some endpoint keeps a weight depends on the config (unlisted endpoints
            // keep theirs), so the all-zero check is the proxy's, not this structural one's.
            let base = format!("routes.{name}");
            for (limit, rl) in &r.rate_limits {
                let path = format!("{base}.rate_limits.{limit}.requests_per_second");
                if !rl.requests_per_second.is_finite() {
                    return Err(PolicyError::NotFinite { path });
                }
                if !(1e-6..=1e9).contains(&rl.requests_per_second) {
                    return Err(PolicyError::OutOfRange {
                        path,
                        value: rl.requests_per_second,
                        min: 1e-6,
                        max: 1e9,
                    });
                }
            }
            if r.concurrency_limit == Some(0) {
                return Err(PolicyError::OutOfRange {
                    path: format!("{base}.concurrency_limit"),
                    value: 0.0,
                    min: 1.0,
                    max: f64::from(u32::MAX),
                });
            }
            if let Some(b) = r.retry_budget_percent {
                let path = format!("{base}.retry_budget_percent");
                if !b.is_finite() {
                    return Err(PolicyError::NotFinite { path });
                }
                if !(0.0..=1000.0).contains(&b) {
                    return Err(PolicyError::OutOfRange {
                        path,
                        value: b,
                        min: 0.0,
                        max: 1000.0,
                    });
                }
            }
            for (p, &t) in &r.shed_threshold {
                let path = format!("{base}.shed_threshold.{}", p.as_str());
                if !t.is_finite() {
                    return Err(PolicyError::NotFinite { path });
                }
                if !(0.0..=1.0).contains(&t) {
                    return Err(PolicyError::OutOfRange {
                        path,
                        value: t,
                        min: 0.0,
                        max: 1.0,
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether this policy may replace one at `current` version.
    pub fn check_newer_than(&self, current: u64) -> Result<(), PolicyError> {
        if self.version <= current {
            return Err(PolicyError::Stale {
                version: self.version,
                current,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Policy {
        let mut p = Policy::empty(3, 1_700_000_000_000, "brain-1");
        let mut r = RoutePolicy::default();
        r.upstream_weights.insert("10.0.0.1:80".into(), 80);
        r.upstream_weights.insert("10.0.0.2:80".into(), 20);
        r.concurrency_limit = Some(128);
        r.rate_limits.insert(
            "per-key".into(),
            RateLimit {
                requests_per_second: 500.0,
                burst: 50,
            },
        );
        r.retry_budget_percent = Some(10.0);
        r.shed_threshold.insert(Priority::Sheddable, 0.8);
        p.routes.insert("api".into(), r);
        p.models.insert(
            "gpt-4o".into(),
            ModelPolicy {
                deployment_weights: [("azure-east".to_string(), 3)].into(),
                fallback_order: vec!["openai".into()],
            },
        );
        p
    }

    #[test]
    fn policy_round_trips_through_json() {
        let p = sample();
        let json = serde_json::to_string(&p).unwrap();
        let back: Policy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.validate(), Ok(()));
    }

    #[test]
    fn malformed_policies_name_the_field() {
        // Draining one endpoint is fine: unlisted endpoints keep their configured weights.
        let mut p = sample();
        if let Some(r) = p.routes.get_mut("api") {
            r.upstream_weights.values_mut().for_each(|w| *w = 0);
        }
        assert_eq!(p.validate(), Ok(()));

        let mut p = sample();
        if let Some(r) = p.routes.get_mut("api") {
            r.shed_threshold.insert(Priority::Default, 1.5);
        }
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("routes.api.shed_threshold.default"));

        let mut p = sample();
        if let Some(r) = p.routes.get_mut("api") {
            r.concurrency_limit = Some(0);
        }
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("routes.api.concurrency_limit"));

        let mut p = sample();
        if let Some(r) = p.routes.get_mut("api") {
            r.rate_limits.insert(
                "x".into(),
                RateLimit {
                    requests_per_second: f64::NAN,
                    burst: 1,
                },
            );
        }
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("routes.api.rate_limits.x.requests_per_second"));

        let mut p = sample();
        p.schema_version = 99;
        assert!(matches!(
            p.validate(),
            Err(PolicyError::SchemaVersion { found: 99, .. })
        ));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let json = r#"{"schema_version":1,"version":1,"issued_at_ms":0,"issuer":"x","routez":{}}"#;
        let err = serde_json::from_str::<Policy>(json).unwrap_err();
        assert!(err.to_string().contains("unknown field `routez`"), "{err}");
    }

    #[test]
    fn only_newer_versions_replace() {
        let p = sample();
        assert!(p.check_newer_than(2).is_ok());
        assert_eq!(
            p.check_newer_than(3),
            Err(PolicyError::Stale {
                version: 3,
                current: 3
            })
        );
    }
}
