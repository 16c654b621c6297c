//! Prometheus text exposition of the per-scope request statistics.
//!
//! These families are rendered straight from the recorder's shards rather than through the
//! `metrics` facade: the request path records once, into its per-worker shards, and both the
//! telemetry windows and `/metrics` read the same numbers.

use super::recorder::{Ctr, ScopeStats};
use std::fmt::Write;
use std::sync::Arc;
use vivremotion_protocol::sketch::bucket_upper_bound;
use vivremotion_protocol::telemetry::Priority;

/// Histogram bucket bounds in seconds.
pub const LATENCY_BUCKETS_S: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Escape a label value per the exposition format.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(s: &ScopeStats) -> String {
    format!(
        "route=\"{}\",cluster=\"{}\",upstream=\"{}\"",
        escape(&s.scope.route),
        escape(s.scope.cluster.as_deref().unwrap_or("")),
        escape(s.scope.upstream.as_deref().unwrap_or(""))
    )
}

/// What a scope counts, and so which series it exports.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Requests no route took.
    Unmatched,
    /// A route: admission, retries, and requests answered before an endpoint was picked.
    Route,
    /// An endpoint of a route: its tries.
    Endpoint,
}

fn kind(s: &ScopeStats) -> Kind {
    if s.scope.upstream.is_some() {
        Kind::Endpoint
    } else if s.scope.route == crate::snapshot::UNMATCHED_ROUTE {
        Kind::Unmatched
    } else {
        Kind::Route
    }
}

const CODE_CLASSES: [(&str, Ctr); 5] = [
    ("1xx", Ctr::S1xx),
    ("2xx", Ctr::S2xx),
    ("3xx", Ctr::S3xx),
    ("4xx", Ctr::S4xx),
    ("5xx", Ctr::S5xx),
];

const ERROR_KINDS: [(&str, Ctr); 5] = [
    ("connect", Ctr::ErrConnect),
    ("timeout", Ctr::ErrTimeout),
    ("reset", Ctr::ErrReset),
    ("5xx", Ctr::Upstream5xx),
    ("429", Ctr::Upstream429),
];

/// Render request families for all scopes.
///
/// Every series a scope can have is exported from its creation, at 0 until something
/// happens, so `rate()` and `increase()` see the first event instead of a series appearing
/// with its first value already counted. Every family has HELP and TYPE, even when empty.
pub fn render_scopes(out: &mut String, scopes: &[Arc<ScopeStats>]) {
    let totals: Vec<_> = scopes
        .iter()
        .map(|s| (labels(s), kind(s), s.totals()))
        .collect();

    // Protection events: one counter family each, on the scopes that can have them.
    for (name, help, c, on) in [
        (
            "retries_total",
            "Tries after the first, by route.",
            Ctr::Retries,
            Kind::Route,
        ),
        (
            "retry_budget_exhausted_total",
            "Retries refused because the route's retry budget was spent.",
            Ctr::RetryBudgetExhausted,
            Kind::Route,
        ),
        (
            "upstream_ejections_total",
            "Outlier ejections of an endpoint.",
            Ctr::Ejections,
            Kind::Endpoint,
        ),
        (
            "upstream_breaker_trips_total",
            "Circuit breaker trips of an endpoint.",
            Ctr::BreakerTrips,
            Kind::Endpoint,
        ),
    ] {
        let _ = writeln!(out, "# HELP vivremotion_proxy_{name} {help}");
        let _ = writeln!(out, "# TYPE vivremotion_proxy_{name} counter");
        for (l, k, t) in &totals {
            let v = t.get(c);
            if *k == on || v > 0 {
                let _ = writeln!(out, "vivremotion_proxy_{name}{{{l}}} {v}");
            }
        }
    }

    let _ = writeln!(out, "# HELP vivremotion_proxy_retry_reasons_total Retries by the failure of the try before them: connect, reset, timeout, or a status the route retries.");
    let _ = writeln!(out, "# TYPE vivremotion_proxy_retry_reasons_total counter");
    for (l, k, t) in &totals {
        if *k != Kind::Route {
            continue;
        }
        for (reason, c) in [
            ("connect", Ctr::RetryConnect),
            ("reset", Ctr::RetryReset),
            ("timeout", Ctr::RetryTimeout),
            ("status", Ctr::RetryStatus),
        ] {
            let _ = writeln!(
                out,
                "vivremotion_proxy_retry_reasons_total{{{l},reason=\"{reason}\"}} {}",
                t.get(c)
            );
        }
    }

    let _ = writeln!(out, "# HELP vivremotion_proxy_admission_total Admission decisions by route, priority and outcome (admitted; limited: 429 by a rate limit; shed: 503 by the concurrency limit).");
    let _ = writeln!(out, "# TYPE vivremotion_proxy_admission_total counter");
    for (l, k, t) in &totals {
        for p in Priority::ALL {
            for (outcome, c) in [
                ("admitted", Ctr::admitted(p)),
                ("limited", Ctr::limited(p)),
                ("shed", Ctr::shed(p)),
            ] {
                let v = t.get(c);
                if *k == Kind::Route || v > 0 {
                    let _ = writeln!(
                        out,
                        "vivremotion_proxy_admission_total{{{l},priority=\"{}\",outcome=\"{outcome}\"}} {v}",
                        p.as_str()
                    );
                }
            }
        }
    }

    // Client requests (route and unmatched scopes) and upstream tries (endpoint scopes) are
    // separate families, so that summing either counts each thing once.
    let requests: Vec<_> = totals.iter().filter(|t| t.1 != Kind::Endpoint).collect();
    let tries: Vec<_> = totals.iter().filter(|t| t.1 == Kind::Endpoint).collect();
    for (name, help, set) in [
        (
            "requests_total",
            "Client requests answered, by route and the status class the client got (route=\"(unmatched)\": no route took them).",
            &requests,
        ),
        (
            "upstream_tries_total",
            "Tries sent to an upstream endpoint, by the status class of each try's own outcome (a retried 503 counts here, not in requests_total).",
            &tries,
        ),
    ] {
        let _ = writeln!(out, "# HELP vivremotion_proxy_{name} {help}");
        let _ = writeln!(out, "# TYPE vivremotion_proxy_{name} counter");
        for (l, _, t) in set.iter() {
            for (class, c) in CODE_CLASSES {
                let _ = writeln!(
                    out,
                    "vivremotion_proxy_{name}{{{l},code_class=\"{class}\"}} {}",
                    t.get(c)
                );
            }
        }
    }

    let _ = writeln!(
        out,
        "# HELP vivremotion_proxy_upstream_errors_total Failed tries to an upstream endpoint, by kind."
    );
    let _ = writeln!(
        out,
        "# TYPE vivremotion_proxy_upstream_errors_total counter"
    );
    for (l, k, t) in &totals {
        for (kind, c) in ERROR_KINDS {
            let v = t.get(c);
            if *k == Kind::Endpoint {
                let _ = writeln!(
                    out,
                    "vivremotion_proxy_upstream_errors_total{{{l},kind=\"{kind}\"}} {v}"
                );
            }
        }
    }

    histogram(
        out,
        "request_duration_seconds",
        "Time from a client request's arrival to its response headers (queueing, tries and backoffs included).",
        &requests,
    );
    histogram(
        out,
        "upstream_try_duration_seconds",
        "Time from a try's start to the upstream's response headers (or its failure).",
        &tries,
    );

    let _ = writeln!(
        out,
        "# HELP vivremotion_proxy_requests_in_flight Client requests being processed, by route."
    );
    let _ = writeln!(out, "# TYPE vivremotion_proxy_requests_in_flight gauge");
    for (l, _, t) in &requests {
        let _ = writeln!(
            out,
            "vivremotion_proxy_requests_in_flight{{{l}}} {}",
            t.in_flight.max(0)
        );
    }

    for (name, help, c) in [
        (
            "vivremotion_proxy_request_body_bytes_total",
            "Request body bytes received from clients.",
            Ctr::BytesIn,
        ),
        (
            "vivremotion_proxy_response_body_bytes_total",
            "Response body bytes sent to clients.",
            Ctr::BytesOut,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (l, _, t) in &requests {
            let _ = writeln!(out, "{name}{{{l}}} {}", t.get(c));
        }
    }
}

type Rendered = (String, Kind, super::recorder::Totals);

fn histogram(out: &mut String, name: &str, help: &str, set: &[&Rendered]) {
    let _ = writeln!(out, "# HELP vivremotion_proxy_{name} {help}");
    let _ = writeln!(out, "# TYPE vivremotion_proxy_{name} histogram");
    for (l, _, t) in set.iter() {
        let mut cum = 0u64;
        let mut bi = 0usize;
        for &le in LATENCY_BUCKETS_S {
            let le_us = le * 1e6;
            // Sketch buckets are 2 % wide; a bucket counts toward `le` if it ends at or below it.
            while bi < t.hist.len() && bucket_upper_bound(bi) <= le_us {
                cum += t.hist[bi];
                bi += 1;
            }
            let _ = writeln!(
                out,
                "vivremotion_proxy_{name}_bucket{{{l},le=\"{le}\"}} {cum}"
            );
        }
        let count: u64 = t.hist.iter().sum();
        let _ = writeln!(
            out,
            "vivremotion_proxy_{name}_bucket{{{l},le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "vivremotion_proxy_{name}_sum{{{l}}} {}",
            t.get(Ctr::LatencySumUs) as f64 / 1e6
        );
        let _ = writeln!(out, "vivremotion_proxy_{name}_count{{{l}}} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::recorder::Outcome;
    use vivremotion_protocol::telemetry::Scope;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let s = Arc::new(ScopeStats::new(
            Scope {
                route: "a\"b".into(),
                cluster: Some("c".into()),
                upstream: Some("h:1".into()),
            },
            1,
        ));
        for us in [300.0, 3_000.0, 3_000_000.0] {
            s.finish(
                0,
                &Outcome {
                    status: 200,
                    upstream_status: Some(200),
                    failure: None,
                    latency_us: us,
                    bytes_in: 1,
                    bytes_out: 2,
                    queue_wait_us: None,
                },
                false,
            );
        }
        let mut out = String::new();
        render_scopes(&mut out, &[s]);
        let l = "route=\"a\\\"b\",cluster=\"c\",upstream=\"h:1\"";
        assert!(
            out.contains(&format!(
                "vivremotion_proxy_upstream_tries_total{{{l},code_class=\"2xx\"}} 3"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "vivremotion_proxy_upstream_try_duration_seconds_bucket{{{l},le=\"0.0005\"}} 1"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "vivremotion_proxy_upstream_try_duration_seconds_bucket{{{l},le=\"0.005\"}} 2"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "vivremotion_proxy_upstream_try_duration_seconds_bucket{{{l},le=\"2.5\"}} 2"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "vivremotion_proxy_upstream_try_duration_seconds_bucket{{{l},le=\"5\"}} 3"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "vivremotion_proxy_upstream_try_duration_seconds_count{{{l}}} 3"
            )),
            "{out}"
        );
        // Bytes are the client's: counted on the route, not on the endpoint's tries.
        assert!(
            !out.contains(&format!(
                "vivremotion_proxy_response_body_bytes_total{{{l}}}"
            )),
            "{out}"
        );
    }
}
