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

/// Upstream failure kinds, as counted in telemetry windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    Timeout,
    Reset,
}

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
    #[error("proxy is shutting down")]
    ShuttingDown,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoEndpoint { .. }
            | ProxyError::CircuitOpen { .. }
            | ProxyError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
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
            ProxyError::NoEndpoint { .. } => "no_endpoint",
            ProxyError::CircuitOpen { .. } => "circuit_open",
            ProxyError::UpstreamConnect { .. } => "upstream_connect_error",
            ProxyError::UpstreamReset { .. } => "upstream_reset",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::ShuttingDown => "shutting_down",
        }
    }

    pub fn side(&self) -> Side {
        match self {
            ProxyError::NoRoute { .. }
            | ProxyError::HeadersTooLarge { .. }
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::BadRequest(_) => Side::Client,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::UpstreamTimeout { .. } => Side::Upstream,
            ProxyError::NoEndpoint { .. }
            | ProxyError::CircuitOpen { .. }
            | ProxyError::ShuttingDown => Side::Proxy,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
