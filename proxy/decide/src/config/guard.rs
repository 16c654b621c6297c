//! Config of the self-protection mechanisms (`crate::guard`): per cluster `health_check`,
//! `outlier`, `breaker`; per route `retry`. Raw shapes and their validation live together here.

use super::{ser_duration, Errors};
use crate::guard::breaker::BreakerConfig;
use crate::guard::outlier::OutlierConfig;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub jitter: Option<String>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_gateway_errors: Option<u32>,
    pub consecutive_5xx: Option<u32>,
    pub interval: Option<String>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_time: Option<String>,
    pub max_ejection_percent: Option<f64>,
    pub success_rate_min_hosts: Option<u32>,
    pub success_rate_min_requests: Option<u64>,
    pub success_rate_stdev_factor: Option<f64>,
    pub panic_threshold_percent: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub enabled: Option<bool>,
    pub consecutive_failures: Option<u32>,
    pub failure_ratio: Option<f64>,
    pub min_requests: Option<u32>,
    pub window: Option<String>,
    pub open_for: Option<String>,
    pub max_open_for: Option<String>,
    pub probes: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Retries after the first try (0 turns retries off).
    pub retries: Option<u32>,
    pub on: Option<Vec<String>>,
    pub per_try_timeout: Option<String>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
    pub budget_percent: Option<f64>,
    pub budget_min_per_second: Option<f64>,
}

/// Active health checks of a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheckConfig {
    pub path: String,
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub jitter: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

pub use crate::flow::{RetryConfig, RetryOn};

pub(super) fn health_check(base: &str, r: &RawHealthCheck, errs: &mut Errors) -> HealthCheckConfig {
    let base = format!("{base}.health_check");
    let path = r.path.clone().unwrap_or_else(|| "/healthz".into());
    if !path.starts_with('/') {
        errs.push(
            format!("{base}.path"),
            format!("{path:?} must start with '/'"),
        );
    }
    let interval = errs.duration(
        &format!("{base}.interval"),
        &r.interval,
        Duration::from_secs(5),
    );
    if interval < Duration::from_millis(10) {
        errs.push(format!("{base}.interval"), "must be at least 10ms");
    }
    let timeout = errs.duration(
        &format!("{base}.timeout"),
        &r.timeout,
        Duration::from_secs(1),
    );
    if timeout.is_zero() {
        errs.push(format!("{base}.timeout"), "must be greater than zero");
    }
    HealthCheckConfig {
        path,
        interval,
        timeout,
        jitter: errs.duration(&format!("{base}.jitter"), &r.jitter, interval / 10),
        healthy_threshold: errs.range_u32(
            &format!("{base}.healthy_threshold"),
            r.healthy_threshold,
            2,
            1,
            100,
        ),
        unhealthy_threshold: errs.range_u32(
            &format!("{base}.unhealthy_threshold"),
            r.unhealthy_threshold,
            3,
            1,
            100,
        ),
    }
}

pub(super) fn outlier(base: &str, r: &RawOutlier, errs: &mut Errors) -> OutlierConfig {
    let base = format!("{base}.outlier");
    let d = OutlierConfig::default();
    let p = |f: &str| format!("{base}.{f}");
    let interval = errs.duration(&p("interval"), &r.interval, d.interval);
    if interval < Duration::from_millis(10) {
        errs.push(p("interval"), "must be at least 10ms");
    }
    OutlierConfig {
        consecutive_gateway_errors: errs.range_u32(
            &p("consecutive_gateway_errors"),
            r.consecutive_gateway_errors,
            d.consecutive_gateway_errors,
            0,
            1_000_000,
        ),
        consecutive_5xx: errs.range_u32(
            &p("consecutive_5xx"),
            r.consecutive_5xx,
            d.consecutive_5xx,
            0,
            1_000_000,
        ),
        interval,
        base_ejection: errs.duration(
            &p("base_ejection_time"),
            &r.base_ejection_time,
            d.base_ejection,
        ),
        max_ejection: errs.duration(
            &p("max_ejection_time"),
            &r.max_ejection_time,
            d.max_ejection,
        ),
        max_ejection_share: errs.range_f64(
            &p("max_ejection_percent"),
            r.max_ejection_percent,
            d.max_ejection_share * 100.0,
            0.0,
            100.0,
        ) / 100.0,
        success_rate_min_hosts: errs.range_u32(
            &p("success_rate_min_hosts"),
            r.success_rate_min_hosts,
            d.success_rate_min_hosts,
            0,
            10_000,
        ),
        success_rate_min_requests: r
            .success_rate_min_requests
            .unwrap_or(d.success_rate_min_requests),
        success_rate_stdev_factor: errs.range_f64(
            &p("success_rate_stdev_factor"),
            r.success_rate_stdev_factor,
            d.success_rate_stdev_factor,
            0.0,
            100.0,
        ),
        panic_threshold: errs.range_f64(
            &p("panic_threshold_percent"),
            r.panic_threshold_percent,
            d.panic_threshold * 100.0,
            0.0,
            100.0,
        ) / 100.0,
    }
}

pub(super) fn breaker(base: &str, r: &RawBreaker, errs: &mut Errors) -> Option<BreakerConfig> {
    let base = format!("{base}.breaker");
    let d = BreakerConfig::default();
    let p = |f: &str| format!("{base}.{f}");
    let open_for = errs.duration(&p("open_for"), &r.open_for, d.open_for);
    if open_for.is_zero() {
        errs.push(p("open_for"), "must be greater than zero");
    }
    let window = errs.duration(&p("window"), &r.window, d.window);
    if window < Duration::from_millis(10) {
        errs.push(p("window"), "must be at least 10ms");
    }
    let cfg = BreakerConfig {
        consecutive_failures: errs.range_u32(
            &p("consecutive_failures"),
            r.consecutive_failures,
            d.consecutive_failures,
            0,
            1_000_000,
        ),
        failure_ratio: errs.range_f64(
            &p("failure_ratio"),
            r.failure_ratio,
            d.failure_ratio,
            0.01,
            1.0,
        ),
        min_requests: errs.range_u32(
            &p("min_requests"),
            r.min_requests,
            d.min_requests,
            1,
            1_000_000,
        ),
        window,
        open_for,
        max_open_for: errs.duration(&p("max_open_for"), &r.max_open_for, d.max_open_for),
        probes: errs.range_u32(&p("probes"), r.probes, d.probes, 1, 1000),
    };
    r.enabled.unwrap_or(true).then_some(cfg)
}

pub(super) fn retry(base: &str, r: &RawRetry, errs: &mut Errors) -> RetryConfig {
    let base = format!("{base}.retry");
    let p = |f: &str| format!("{base}.{f}");
    let mut on = RetryOn {
        connect: false,
        reset: false,
        timeout: false,
        status_502: false,
        status_503: false,
        status_504: false,
    };
    let conds: Vec<String> =
        r.on.clone()
            .unwrap_or_else(|| vec!["connect".into(), "reset".into()]);
    for (i, c) in conds.iter().enumerate() {
        match c.trim() {
            "connect" => on.connect = true,
            "reset" => on.reset = true,
            "timeout" => on.timeout = true,
            "502" => on.status_502 = true,
            "503" => on.status_503 = true,
            "504" => on.status_504 = true,
            "gateway_error" => {
                on.status_502 = true;
                on.status_503 = true;
                on.status_504 = true;
            }
            other => errs.push(
                format!("{base}.on[{i}]"),
                format!(
                    "unknown retry condition {other:?}; one of connect, reset, timeout, 502, 503, 504, gateway_error"
                ),
            ),
        }
    }
    let per_try_timeout = r.per_try_timeout.as_ref().map(|_| {
        errs.duration(
            &p("per_try_timeout"),
            &r.per_try_timeout,
            Duration::from_secs(1),
        )
    });
    if per_try_timeout.is_some_and(|d| d.is_zero()) {
        errs.push(p("per_try_timeout"), "must be greater than zero");
    }
    let budget_percent = errs.range_f64(&p("budget_percent"), r.budget_percent, 20.0, 0.0, 1000.0);
    let budget_min_per_second = errs.range_f64(
        &p("budget_min_per_second"),
        r.budget_min_per_second,
        5.0,
        0.0,
        1e6,
    );
    RetryConfig {
        retries: errs.range_u32(&p("retries"), r.retries, 2, 0, 10),
        on,
        per_try_timeout,
        backoff_base: errs.duration(
            &p("backoff_base"),
            &r.backoff_base,
            Duration::from_millis(5),
        ),
        backoff_max: errs.duration(
            &p("backoff_max"),
            &r.backoff_max,
            Duration::from_millis(250),
        ),
        budget_percent,
        budget_min_per_second,
    }
}
