//! Raw configuration, exactly as written in TOML. Only shape is checked here (unknown fields,
//! types, enum values); meaning is checked by [`super::validate`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub clusters: BTreeMap<String, RawCluster>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub global_limits: super::admission::RawGlobalLimits,
    pub access_log: Option<RawAccessLog>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// A file (appended to), "stdout" or "stderr".
    pub path: String,
    /// Lines that may wait for the writer before new ones are dropped.
    pub buffer: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub workers: Option<usize>,
    pub instance_id: Option<String>,
    pub seed: Option<u64>,
    pub drain_timeout: Option<String>,
    pub max_header_bytes: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub trusted_priority_from: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub tick: Option<String>,
    pub keep_windows: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Option<String>,
    pub listen: String,
    pub tls: Option<RawServerTls>,
    #[serde(default)]
    pub protocol: ListenerProtocol,
}

/// HTTP versions a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2: by ALPN with TLS, by the connection preface in cleartext (h2c).
    #[default]
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    pub cert_file: String,
    pub key_file: String,
}

pub use crate::balance::BalancerKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (with TLS: ALPN http/1.1).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (cleartext h2c, or h2 over TLS).
    Http2,
    /// TLS clusters only: whatever ALPN negotiates, h2 preferred.
    Auto,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    pub balancer: BalancerKind,
    /// `client_ip` or `header:NAME`; required by `consistent_hash`.
    pub hash_on: Option<String>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    pub tls: Option<RawClientTls>,
    pub connect_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_endpoint: Option<usize>,
    pub ewma_decay: Option<String>,
    pub ewma_default_rtt: Option<String>,
    pub health_check: Option<super::guard::RawHealthCheck>,
    #[serde(default)]
    pub outlier: super::guard::RawOutlier,
    #[serde(default)]
    pub breaker: super::guard::RawBreaker,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "an endpoint: \"host:port\" or { address = \"host:port\", weight = N }"
)]
pub enum RawEndpoint {
    Address(String),
    Detailed(RawEndpointDetailed),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpointDetailed {
    pub address: String,
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientTls {
    /// PEM file of CA certificates to trust instead of the system roots.
    pub ca_file: Option<String>,
    /// Name to verify the upstream certificate against (default: the endpoint host).
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub cluster: String,
    #[serde(default, rename = "match")]
    pub matcher: RawMatch,
    pub rewrite: Option<RawRewrite>,
    #[serde(default)]
    pub request_headers: RawHeaderOps,
    #[serde(default)]
    pub response_headers: RawHeaderOps,
    pub timeout: Option<String>,
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub retry: super::guard::RawRetry,
    pub priority: Option<String>,
    #[serde(default)]
    pub rate_limits: Vec<super::admission::RawRateLimit>,
    pub concurrency: Option<super::admission::RawConcurrency>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub path_exact: Option<String>,
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub headers_present: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    pub path_prefix: Option<String>,
    pub host: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOps {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}
