//! Errors of the data plane. Each knows which side caused it, its HTTP status, its stable
//! `type` string for the JSON body, and the telemetry error kind it counts as.

use http::StatusCode;
use std::time::Duration;

/// Who is at fault, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Proxy,
}

pub use vivremotion_decide::telemetry::recorder::UpstreamFailure;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches {method} {path} (host {host:?})")]
    NoRoute {
        method: String,
        host: String,
        path: String,
    },
    #[error("request header section is {size} bytes, above the limit of {limit} bytes")]
    HeadersTooLarge { size: usize, limit: usize },
    #[error("request body is larger than this route's limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("the request head did not arrive within {}", humantime::format_duration(*.timeout))]
    RequestTimeout { timeout: Duration },
    #[error("no endpoint of cluster {cluster:?} can take traffic")]
    NoEndpoint { cluster: String },
    #[error("every endpoint of cluster {cluster:?} has its circuit breaker open")]
    CircuitOpen { cluster: String },
    #[error("cannot connect to upstream {endpoint}: {detail}")]
    UpstreamConnect { endpoint: String, detail: String },
    #[error("upstream {endpoint} closed or reset the connection before answering: {detail}")]
    UpstreamReset { endpoint: String, detail: String },
    #[error("upstream {endpoint} did not send response headers within {}", humantime::format_duration(*.timeout))]
    UpstreamTimeout { endpoint: String, timeout: Duration },
    #[error("rate limit {limit:?} of route {route:?} exceeded; retry in {}s", retry_after_secs(*.retry_after))]
    RateLimited {
        route: String,
        limit: String,
        retry_after: Duration,
        /// `RateLimit-Policy` and `RateLimit` field values.
        policy: String,
        state: String,
    },
    #[error("route {route:?} is overloaded; {priority} requests are shed; retry in {}s", retry_after_secs(*.retry_after))]
    Overloaded {
        route: String,
        priority: &'static str,
        retry_after: Duration,
    },
}

/// `Retry-After` in whole seconds, rounded up, at least 1 (0 would invite a tight loop).
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoEndpoint { .. }
            | ProxyError::CircuitOpen { .. }
            | ProxyError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamReset { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Stable machine-readable type, the `error.type` of the JSON body.
    pub fn type_str(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::HeadersTooLarge { .. } => "headers_too_large",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::RequestTimeout { .. } => "request_timeout",
            ProxyError::NoEndpoint { .. } => "no_endpoint",
            ProxyError::CircuitOpen { .. } => "circuit_open",
            ProxyError::UpstreamConnect { .. } => "upstream_connect_error",
            ProxyError::UpstreamReset { .. } => "upstream_reset",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::Overloaded { .. } => "overloaded",
        }
    }

    pub fn side(&self) -> Side {
        match self {
            ProxyError::NoRoute { .. }
            | ProxyError::HeadersTooLarge { .. }
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::BadRequest(_)
            | ProxyError::RequestTimeout { .. }
            | ProxyError::RateLimited { .. } => Side::Client,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::UpstreamTimeout { .. } => Side::Upstream,
            ProxyError::NoEndpoint { .. }
            | ProxyError::CircuitOpen { .. }
            | ProxyError::Overloaded { .. } => Side::Proxy,
        }
    }

    pub fn upstream_failure(&self) -> Option<UpstreamFailure> {
        match self {
            ProxyError::UpstreamConnect { .. } => Some(UpstreamFailure::Connect),
            ProxyError::UpstreamReset { .. } => Some(UpstreamFailure::Reset),
            ProxyError::UpstreamTimeout { .. } => Some(UpstreamFailure::Timeout),
            _ => None,
        }
    }

    /// Response fields beyond the JSON body: `Retry-After`, and the IETF httpapi
    /// `RateLimit-Policy` / `RateLimit` fields on 429.
    pub fn extra_headers(&self) -> impl Iterator<Item = (&'static str, std::borrow::Cow<'_, str>)> {
        let (retry, policy, state) = match self {
            ProxyError::RateLimited {
                retry_after,
                policy,
                state,
                ..
            } => (
                Some(*retry_after),
                Some(policy.as_str()),
                Some(state.as_str()),
            ),
            ProxyError::Overloaded { retry_after, .. } => (Some(*retry_after), None, None),
            _ => (None, None, None),
        };
        let retry = retry.map(|d| ("retry-after", retry_after_secs(d).to_string().into()));
        let policy = policy.map(|p| ("ratelimit-policy", p.into()));
        let state = state.map(|s| ("ratelimit", s.into()));
        retry.into_iter().chain(policy).chain(state)
    }

    /// The JSON error body: `{"error":{"type":..,"message":..,"request_id":..}}`.
    pub fn json_body(&self, request_id: Option<&str>) -> bytes::Bytes {
        json_error_body(self.type_str(), &self.to_string(), request_id)
    }
}

/// A JSON error body in the shape every vivremotion API uses.
pub fn json_error_body(kind: &str, message: &str, request_id: Option<&str>) -> bytes::Bytes {
    let mut err = serde_json::json!({ "type": kind, "message": message });
    if let Some(id) = request_id {
        err["request_id"] = serde_json::Value::String(id.to_string());
    }
    bytes::Bytes::from(serde_json::json!({ "error": err }).to_string())
}

/// An error and its causes on one line, each said once: many errors already include their
/// source's text, and printing the chain again would repeat it.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Log a request's error answer at the level an operator expects (upstream and overload
/// failures warn, client mistakes are info), at most once a second per error type: a flood of
/// the same failure gives one line a second that says how many it stands for. `now_s`: the
/// process clock in whole seconds.
pub fn log_answer(err: &ProxyError, request_id: &str, now_s: u64) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    // Per error type: the second of the last line, and the answers since it.
    static LAST: [AtomicU64; 12] = [const { AtomicU64::new(u64::MAX) }; 12];
    static SINCE: [AtomicU64; 12] = [const { AtomicU64::new(0) }; 12];
    let i = match err {
        ProxyError::NoRoute { .. } => 0,
        ProxyError::HeadersTooLarge { .. } => 1,
        ProxyError::BodyTooLarge { .. } => 2,
        ProxyError::BadRequest(_) => 3,
        ProxyError::RequestTimeout { .. } => 4,
        ProxyError::NoEndpoint { .. } => 5,
        ProxyError::CircuitOpen { .. } => 6,
        ProxyError::UpstreamConnect { .. } => 7,
        ProxyError::UpstreamReset { .. } => 8,
        ProxyError::UpstreamTimeout { .. } => 9,
        ProxyError::RateLimited { .. } => 10,
        ProxyError::Overloaded { .. } => 11,
    };
    SINCE[i].fetch_add(1, Relaxed);
    let last = LAST[i].load(Relaxed);
    if last == now_s
        || LAST[i]
            .compare_exchange(last, now_s, Relaxed, Relaxed)
            .is_err()
    {
        return;
    }
    let n = SINCE[i].swap(0, Relaxed).max(1);
    let status = err.status().as_u16();
    let kind = err.type_str();
    match err.side() {
        Side::Client => {
            tracing::info!(status, kind, count = n, request_id, error = %err, "request refused")
        }
        Side::Upstream | Side::Proxy => {
            tracing::warn!(status, kind, count = n, request_id, error = %err, "request failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simulator answers and counts failures with the decision core's statuses and kinds;
    /// the proxy's errors must agree.
    #[test]
    fn statuses_agree_with_the_decision_core() {
        use vivremotion_decide::flow::{NoEndpoint, Refused, TryFailure};
        use vivremotion_decide::limits::Refusal;
        let ep = || "10.0.0.1:80".to_string();
        let d = Duration::from_secs(1);
        let failures = [
            (
                ProxyError::UpstreamConnect {
                    endpoint: ep(),
                    detail: String::new(),
                },
                TryFailure::Connect,
            ),
            (
                ProxyError::UpstreamReset {
                    endpoint: ep(),
                    detail: String::new(),
                },
                TryFailure::Reset,
            ),
            (
                ProxyError::UpstreamTimeout {
                    endpoint: ep(),
                    timeout: d,
                },
                TryFailure::Timeout,
            ),
        ];
        for (e, f) in failures {
            assert_eq!(e.status().as_u16(), f.status(), "{e}");
            assert_eq!(e.upstream_failure(), f.upstream_failure(), "{e}");
        }
        let refusals = [
            (
                ProxyError::NoEndpoint { cluster: ep() },
                Refused::NoEndpoint(NoEndpoint::None),
            ),
            (
                ProxyError::CircuitOpen { cluster: ep() },
                Refused::NoEndpoint(NoEndpoint::CircuitOpen),
            ),
            (
                ProxyError::Overloaded {
                    route: "r".into(),
                    priority: "default",
                    retry_after: d,
                },
                Refused::Admission(Refusal::Overloaded {
                    priority: vivremotion_protocol::telemetry::Priority::Default,
                }),
            ),
            (
                ProxyError::RateLimited {
                    route: "r".into(),
                    limit: "l".into(),
                    retry_after: d,
                    policy: String::new(),
                    state: String::new(),
                },
                Refused::Admission(Refusal::RateLimited {
                    limit: 0,
                    retry_after: d,
                    remaining: 0,
                    reset: d,
                }),
            ),
        ];
        for (e, r) in refusals {
            assert_eq!(e.status().as_u16(), r.status(), "{e}");
        }
    }

    #[test]
    fn errors_classify_themselves() {
        let e = ProxyError::UpstreamTimeout {
            endpoint: "10.0.0.1:80".into(),
            timeout: Duration::from_millis(1500),
        };
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.side(), Side::Upstream);
        assert_eq!(e.upstream_failure(), Some(UpstreamFailure::Timeout));
        let body: serde_json::Value = serde_json::from_slice(&e.json_body(Some("abc"))).unwrap();
        assert_eq!(body["error"]["type"], "upstream_timeout");
        assert_eq!(body["error"]["request_id"], "abc");
        assert_eq!(
            body["error"]["message"],
            "upstream 10.0.0.1:80 did not send response headers within 1s 500ms"
        );
    }

    #[test]
    fn limits_answer_with_their_headers() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        let e = ProxyError::RateLimited {
            route: "api".into(),
            limit: "per-key".into(),
            retry_after: Duration::from_millis(300),
            policy: "\"per-key\";q=100;w=1".into(),
            state: "\"per-key\";r=0;t=1".into(),
        };
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        let h: Vec<_> = e
            .extra_headers()
            .map(|(n, v)| (n, v.into_owned()))
            .collect();
        assert_eq!(
            h,
            [
                ("retry-after", "1".to_string()),
                ("ratelimit-policy", "\"per-key\";q=100;w=1".to_string()),
                ("ratelimit", "\"per-key\";r=0;t=1".to_string()),
            ]
        );
        let e = ProxyError::Overloaded {
            route: "api".into(),
            priority: "sheddable",
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.extra_headers().count(), 1);
    }
}
