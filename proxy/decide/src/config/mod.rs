//! Configuration in two phases: TOML → [`raw::RawConfig`] (shape only, unknown fields rejected)
//! → [`validate`] → [`Config`], which cannot hold an invalid value. Every error names the field
//! path (`routes[2].cluster`, `clusters.api.connect_timeout`) and the reason, and validation
//! reports all the errors it finds, not just the first.

pub mod admission;
pub mod guard;
pub mod raw;
mod source;

pub use raw::{BalancerKind, ListenerProtocol, UpstreamProtocol};

use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;
use raw::*;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default proxy listener of `vivremotion up` and of configs without `[[listeners]]`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Stdout,
    Stderr,
    File(PathBuf),
}

/// `[access_log]`: the proxy's optional JSON access log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessLogConfig {
    pub target: Target,
    /// Lines that may wait for the writer; more are dropped and counted.
    pub buffer: usize,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field path (`routes[2].cluster`); empty for the whole file (a syntax error).
    pub path: String,
    pub reason: String,
    /// 1-based line the field (or the table that misses it) is written on, when known.
    pub line: Option<u32>,
    /// 1-based column, for syntax errors.
    pub column: Option<u32>,
}

impl fmt::Display for FieldError {
    /// `path: reason`, without the location (see [`FieldError::located`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl FieldError {
    /// `line 12: path: reason` (`line 12, column 5: ...` for syntax errors).
    pub fn located(&self) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("line {l}, column {c}: {self}"),
            (Some(l), None) => format!("line {l}: {self}"),
            _ => self.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(FieldError::located).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<FieldError>),
}

impl ConfigError {
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ConfigError::Invalid(v) => v,
            ConfigError::Read { .. } => &[],
        }
    }
}

/// Validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub proxy: ProxySettings,
    pub admin: AdminSettings,
    pub telemetry: TelemetrySettings,
    pub listeners: Vec<ListenerConfig>,
    pub clusters: BTreeMap<String, ClusterConfig>,
    pub routes: Vec<RouteConfig>,
    pub global_limits: admission::GlobalLimitsConfig,
    /// `None`: no access log (the default).
    pub access_log: Option<AccessLogConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxySettings {
    /// Worker threads, each with its own event loop and listener socket.
    pub workers: usize,
    pub instance_id: String,
    /// Seed of the balancers' RNG; `None` means a random seed per start.
    pub seed: Option<u64>,
    #[serde(serialize_with = "ser_duration")]
    pub drain_timeout: Duration,
    pub max_header_bytes: usize,
    #[serde(serialize_with = "ser_duration")]
    pub header_read_timeout: Duration,
    /// Clients whose `x-priority` header is believed.
    #[serde(serialize_with = "ser_display_list")]
    pub trusted_priority_from: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminSettings {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetrySettings {
    #[serde(serialize_with = "ser_duration")]
    pub tick: Duration,
    pub keep_windows: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub tls: Option<ServerTls>,
    pub protocol: ListenerProtocol,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterConfig {
    pub name: String,
    pub endpoints: Vec<EndpointConfig>,
    pub balancer: BalancerKind,
    pub hash_on: Option<HashOn>,
    pub transport: TransportConfig,
    #[serde(serialize_with = "ser_duration")]
    pub ewma_decay: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub ewma_default_rtt: Duration,
    pub health_check: Option<guard::HealthCheckConfig>,
    pub outlier: crate::guard::outlier::OutlierConfig,
    /// `None`: the breaker is disabled.
    pub breaker: Option<crate::guard::breaker::BreakerConfig>,
}

/// What decides how a cluster's connections are made; clusters whose transport is unchanged
/// across a reload keep their connection pools.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransportConfig {
    pub protocol: UpstreamProtocol,
    pub tls: Option<ClientTls>,
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_endpoint: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientTls {
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointConfig {
    /// `host:port` as written; the endpoint's identity in policies and telemetry.
    pub address: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    ClientIp,
    Header(#[serde(serialize_with = "ser_header_name")] HeaderName),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteConfig {
    pub name: String,
    pub cluster: String,
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    pub rewrite: RewriteConfig,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// Total time to response headers, all tries included.
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    pub max_body_bytes: u64,
    pub retry: guard::RetryConfig,
    /// Class of this route's requests (trusted clients may override it with `x-priority`).
    pub priority: vivremotion_protocol::telemetry::Priority,
    pub rate_limits: Vec<admission::RateLimitConfig>,
    pub concurrency: Option<admission::ConcurrencyConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MatchConfig {
    /// Lower-cased host without port, or `*.suffix`.
    pub host: Option<String>,
    pub path: Option<PathMatch>,
    pub methods: Option<Vec<String>>,
    #[serde(serialize_with = "ser_header_pairs")]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser_header_names")]
    pub headers_present: Vec<HeaderName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// Segment-aware prefix: `/api` matches `/api`, `/api/x`, `/api?q`, not `/apiary`.
    /// A prefix ending in `/` is a plain prefix.
    Prefix(String),
    Exact(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RewriteConfig {
    /// Replaces the matched `path_prefix`.
    pub path_prefix: Option<String>,
    #[serde(serialize_with = "ser_opt_header_value")]
    pub host: Option<HeaderValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HeaderOps {
    #[serde(serialize_with = "ser_header_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser_header_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser_header_names")]
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Header names whose values are credentials: shown as `<redacted>` by the admin API.
const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
];

fn is_sensitive(name: &HeaderName) -> bool {
    SENSITIVE_HEADERS.contains(&name.as_str())
}

pub(crate) use crate::ser::ser_duration;

fn ser_display_list<S: serde::Serializer, T: fmt::Display>(
    v: &[T],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| x.to_string()))
}

pub(crate) fn ser_header_name<S: serde::Serializer>(
    n: &HeaderName,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

fn ser_header_names<S: serde::Serializer>(v: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|n| n.as_str()))
}

fn ser_header_pairs<S: serde::Serializer>(
    v: &[(HeaderName, HeaderValue)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(v.iter().map(|(n, val)| {
        let shown = if is_sensitive(n) {
            "<redacted>"
        } else {
            val.to_str().unwrap_or("<binary>")
        };
        (n.as_str(), shown)
    }))
}

fn ser_opt_header_value<S: serde::Serializer>(
    v: &Option<HeaderValue>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(v.to_str().unwrap_or("<binary>")),
        None => s.serialize_none(),
    }
}

impl Config {
    /// Read and validate a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parse and validate TOML text. Every problem is reported, each with its field path
    /// and, where the file shows it, its line.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let doc = source::Doc::parse(text).map_err(|e| ConfigError::Invalid(vec![e]))?;
        let (raw, mut errors) = doc.raw_config();
        match raw.map(validate) {
            Some(Ok(config)) if errors.is_empty() => return Ok(config),
            Some(Err(ConfigError::Invalid(more))) => {
                errors.extend(more.into_iter().map(|e| doc.locate(e)));
            }
            _ => {}
        }
        // In file order; errors without a line (whole-file checks) last.
        errors.sort_by_key(|e| e.line.unwrap_or(u32::MAX));
        Err(ConfigError::Invalid(errors))
    }

    /// What is valid but probably not meant: said at start, on reload and by `check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.routes.is_empty() {
            w.push("no [[routes]]: every request will be answered 404 no_route".to_string());
        }
        for name in self.clusters.keys() {
            if !self.routes.iter().any(|r| &r.cluster == name) {
                w.push(format!(
                    "clusters.{name}: no route sends traffic to this cluster"
                ));
            }
        }
        w
    }

    /// The config as JSON with credentials redacted, for the admin API.
    pub fn redacted_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Collects errors with their paths while validation walks the raw config.
#[derive(Default)]
pub(crate) struct Errors(Vec<FieldError>);

impl Errors {
    pub(super) fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            reason: reason.into(),
            line: None,
            column: None,
        });
    }

    pub(super) fn duration(
        &mut self,
        path: &str,
        v: &Option<String>,
        default: Duration,
    ) -> Duration {
        // Longer than this is a typo or a unit slip, and arithmetic on instants must not
        // overflow.
        const MAX: Duration = Duration::from_secs(24 * 3600);
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s.trim()) {
                Ok(d) if d > MAX => {
                    self.push(path, format!("{s:?} is longer than the limit of 1 day"));
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    self.push(
                        path,
                        format!("bad duration {s:?} ({e}); write e.g. \"250ms\", \"5s\", \"1m\""),
                    );
                    default
                }
            },
        }
    }

    pub(super) fn range_u32(
        &mut self,
        path: &str,
        v: Option<u32>,
        default: u32,
        lo: u32,
        hi: u32,
    ) -> u32 {
        match v {
            None => default,
            Some(n) if (lo..=hi).contains(&n) => n,
            Some(n) => {
                self.push(path, format!("{n} is outside {lo}..={hi}"));
                default
            }
        }
    }

    pub(super) fn range_f64(
        &mut self,
        path: &str,
        v: Option<f64>,
        default: f64,
        lo: f64,
        hi: f64,
    ) -> f64 {
        match v {
            None => default,
            Some(x) if x.is_finite() && (lo..=hi).contains(&x) => x,
            Some(x) => {
                self.push(path, format!("{x} is outside {lo}..={hi}"));
                default
            }
        }
    }

    fn socket_addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        match s.trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(
                    path,
                    format!(
                        "bad listen address {s:?}: expected IP:PORT such as \"127.0.0.1:8080\""
                    ),
                );
                None
            }
        }
    }

    pub(super) fn header_name(&mut self, path: &str, s: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(s.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                self.push(path, format!("{s:?} is not a valid HTTP header name"));
                None
            }
        }
    }

    fn header_value(&mut self, path: &str, s: &str) -> Option<HeaderValue> {
        match HeaderValue::from_str(s) {
            Ok(v) => Some(v),
            Err(_) => {
                self.push(path, "not a valid HTTP header value (control characters?)");
                None
            }
        }
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "proxy".into()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

/// Check a raw config and build the typed one, or return every problem found.
pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut errs = Errors::default();

    let workers = match raw.proxy.workers {
        None | Some(0) => default_workers(),
        Some(n) if n > 1024 => {
            errs.push(
                "proxy.workers",
                format!("{n} workers is more than the limit of 1024"),
            );
            1
        }
        Some(n) => n,
    };
    let max_header_bytes = raw.proxy.max_header_bytes.unwrap_or(32 * 1024);
    if !(1024..=1024 * 1024).contains(&max_header_bytes) {
        errs.push(
            "proxy.max_header_bytes",
            format!("{max_header_bytes} is outside 1024..=1048576"),
        );
    }
    let instance_id = raw
        .proxy
        .instance_id
        .clone()
        .unwrap_or_else(default_instance_id);
    if instance_id.trim().is_empty() {
        errs.push("proxy.instance_id", "must not be empty");
    }
    let proxy = ProxySettings {
        workers,
        instance_id,
        seed: raw.proxy.seed,
        drain_timeout: errs.duration(
            "proxy.drain_timeout",
            &raw.proxy.drain_timeout,
            Duration::from_secs(30),
        ),
        max_header_bytes,
        header_read_timeout: errs.duration(
            "proxy.header_read_timeout",
            &raw.proxy.header_read_timeout,
            Duration::from_secs(30),
        ),
        trusted_priority_from: admission::trusted(
            "proxy.trusted_priority_from",
            &raw.proxy.trusted_priority_from,
            &mut errs,
        ),
    };
    if proxy.header_read_timeout.is_zero() {
        errs.push("proxy.header_read_timeout", "must be greater than zero");
    }

    let admin = AdminSettings {
        listen: errs
            .socket_addr(
                "admin.listen",
                raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
            )
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9901))),
    };

    let tick = errs.duration(
        "telemetry.tick",
        &raw.telemetry.tick,
        Duration::from_secs(1),
    );
    if tick < Duration::from_millis(10) {
        errs.push("telemetry.tick", "must be at least 10ms");
    }
    let keep_windows = raw.telemetry.keep_windows.unwrap_or(600);
    if keep_windows == 0 {
        errs.push("telemetry.keep_windows", "must be at least 1");
    }
    let telemetry = TelemetrySettings { tick, keep_windows };

    let listeners = validate_listeners(&raw.listeners, &admin, &mut errs);
    let clusters = validate_clusters(&raw.clusters, &mut errs);
    let routes = validate_routes(&raw.routes, &clusters, &mut errs);
    let global_limits = admission::global_limits(&raw.global_limits, &mut errs);
    let access_log = access_log(&raw.access_log, &mut errs);

    if errs.0.is_empty() {
        Ok(Config {
            proxy,
            admin,
            telemetry,
            listeners,
            clusters,
            routes,
            global_limits,
            access_log,
        })
    } else {
        Err(ConfigError::Invalid(errs.0))
    }
}

fn access_log(raw: &Option<RawAccessLog>, errs: &mut Errors) -> Option<AccessLogConfig> {
    let raw = raw.as_ref()?;
    let target = match raw.path.trim() {
        "" => {
            errs.push(
                "access_log.path",
                "must not be empty: a file, \"stdout\" or \"stderr\"",
            );
            return None;
        }
        "stdout" | "-" => Target::Stdout,
        "stderr" => Target::Stderr,
        p => Target::File(PathBuf::from(p)),
    };
    let buffer = match raw.buffer {
        None => 8192,
        Some(n) if (1..=100_000).contains(&n) => n,
        Some(n) => {
            errs.push("access_log.buffer", format!("{n} is outside 1..=100000"));
            8192
        }
    };
    Some(AccessLogConfig { target, buffer })
}

fn validate_listeners(
    raw: &[RawListener],
    admin: &AdminSettings,
    errs: &mut Errors,
) -> Vec<ListenerConfig> {
    let mut out = Vec::new();
    if raw.is_empty() {
        if let Ok(listen) = DEFAULT_LISTEN.parse() {
            out.push(ListenerConfig {
                name: "main".into(),
                listen,
                tls: None,
                protocol: ListenerProtocol::Auto,
            });
        }
        return out;
    }
    let mut names = BTreeSet::new();
    let mut addrs = BTreeSet::new();
    for (i, l) in raw.iter().enumerate() {
        let base = format!("listeners[{i}]");
        let name = l.name.clone().unwrap_or_else(|| format!("listener{i}"));
        if !names.insert(name.clone()) {
            errs.push(
                format!("{base}.name"),
                format!("duplicate listener name {name:?}"),
            );
        }
        let Some(listen) = errs.socket_addr(&format!("{base}.listen"), &l.listen) else {
            continue;
        };
        if listen.port() != 0 && !addrs.insert(listen) {
            errs.push(
                format!("{base}.listen"),
                format!("{listen} is used by another listener"),
            );
        }
        if listen.port() != 0 && listen == admin.listen {
            errs.push(
                format!("{base}.listen"),
                format!("{listen} is the admin address"),
            );
        }
        let tls = l.tls.as_ref().map(|t| {
            for (field, file) in [("cert_file", &t.cert_file), ("key_file", &t.key_file)] {
                if !Path::new(file).is_file() {
                    errs.push(
                        format!("{base}.tls.{field}"),
                        format!("no such file {file:?}"),
                    );
                }
            }
            ServerTls {
                cert_file: PathBuf::from(&t.cert_file),
                key_file: PathBuf::from(&t.key_file),
            }
        });
        out.push(ListenerConfig {
            name,
            listen,
            tls,
            protocol: l.protocol,
        });
    }
    out
}

fn validate_clusters(
    raw: &BTreeMap<String, RawCluster>,
    errs: &mut Errors,
) -> BTreeMap<String, ClusterConfig> {
    let mut out = BTreeMap::new();
    for (name, c) in raw {
        let base = format!("clusters.{name}");
        if c.endpoints.is_empty() {
            errs.push(
                format!("{base}.endpoints"),
                "a cluster needs at least one endpoint",
            );
        }
        let mut endpoints = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, e) in c.endpoints.iter().enumerate() {
            let path = format!("{base}.endpoints[{i}]");
            let (address, weight) = match e {
                RawEndpoint::Address(a) => (a.trim().to_string(), 1),
                RawEndpoint::Detailed(d) => (d.address.trim().to_string(), d.weight.unwrap_or(1)),
            };
            match address.parse::<Authority>() {
                Ok(a) if a.port_u16().is_some() && !a.as_str().contains('@') => {}
                _ => errs.push(
                    path.clone(),
                    format!("bad endpoint address {address:?}: expected host:port"),
                ),
            }
            if weight > 1_000_000 {
                errs.push(
                    format!("{path}.weight"),
                    format!("{weight} is above the maximum 1000000"),
                );
            }
            if !seen.insert(address.clone()) {
                errs.push(path, format!("duplicate endpoint {address:?}"));
            }
            endpoints.push(EndpointConfig { address, weight });
        }
        if !endpoints.is_empty() && endpoints.iter().all(|e| e.weight == 0) {
            errs.push(format!("{base}.endpoints"), "every endpoint has weight 0");
        }
        let hash_on = match c.hash_on.as_deref().map(str::trim) {
            None => None,
            Some("client_ip") => Some(HashOn::ClientIp),
            Some(s) if s.starts_with("header:") => errs
                .header_name(&format!("{base}.hash_on"), s["header:".len()..].trim())
                .map(HashOn::Header),
            Some(s) => {
                errs.push(
                    format!("{base}.hash_on"),
                    format!("{s:?} is neither \"client_ip\" nor \"header:NAME\""),
                );
                None
            }
        };
        if c.balancer == BalancerKind::ConsistentHash && c.hash_on.is_none() {
            errs.push(
                format!("{base}.hash_on"),
                "consistent_hash needs hash_on = \"client_ip\" or \"header:NAME\"",
            );
        }
        if c.protocol == UpstreamProtocol::Auto && c.tls.is_none() {
            errs.push(
                format!("{base}.protocol"),
                "\"auto\" negotiates with TLS ALPN: add a [tls] table or pick http1 / http2",
            );
        }
        let tls = c.tls.as_ref().map(|t| {
            if let Some(ca) = &t.ca_file {
                if !Path::new(ca).is_file() {
                    errs.push(
                        format!("{base}.tls.ca_file"),
                        format!("no such file {ca:?}"),
                    );
                }
            }
            if let Some(name) = &t.server_name {
                if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                    errs.push(
                        format!("{base}.tls.server_name"),
                        format!("{name:?} is not a DNS name or IP address"),
                    );
                }
            }
            ClientTls {
                ca_file: t.ca_file.as_ref().map(PathBuf::from),
                server_name: t.server_name.clone(),
            }
        });
        let transport = TransportConfig {
            protocol: c.protocol,
            tls,
            connect_timeout: errs.duration(
                &format!("{base}.connect_timeout"),
                &c.connect_timeout,
                Duration::from_secs(2),
            ),
            pool_idle_timeout: errs.duration(
                &format!("{base}.pool_idle_timeout"),
                &c.pool_idle_timeout,
                Duration::from_secs(60),
            ),
            pool_max_idle_per_endpoint: c.pool_max_idle_per_endpoint.unwrap_or(1024),
        };
        let ewma_decay = errs.duration(
            &format!("{base}.ewma_decay"),
            &c.ewma_decay,
            Duration::from_secs(10),
        );
        if ewma_decay.is_zero() {
            errs.push(format!("{base}.ewma_decay"), "must be greater than zero");
        }
        out.insert(
            name.clone(),
            ClusterConfig {
                name: name.clone(),
                endpoints,
                balancer: c.balancer,
                hash_on,
                transport,
                ewma_decay,
                ewma_default_rtt: errs.duration(
                    &format!("{base}.ewma_default_rtt"),
                    &c.ewma_default_rtt,
                    Duration::from_millis(30),
                ),
                health_check: c
                    .health_check
                    .as_ref()
                    .map(|h| guard::health_check(&base, h, errs)),
                outlier: guard::outlier(&base, &c.outlier, errs),
                breaker: guard::breaker(&base, &c.breaker, errs),
            },
        );
    }
    out
}

fn validate_routes(
    raw: &[RawRoute],
    clusters: &BTreeMap<String, ClusterConfig>,
    errs: &mut Errors,
) -> Vec<RouteConfig> {
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for (i, r) in raw.iter().enumerate() {
        let base = format!("routes[{i}]");
        let name = r.name.clone().unwrap_or_else(|| format!("route{i}"));
        if name.trim().is_empty() {
            errs.push(format!("{base}.name"), "must not be empty");
        }
        if !names.insert(name.clone()) {
            errs.push(
                format!("{base}.name"),
                format!("duplicate route name {name:?}"),
            );
        }
        if !clusters.contains_key(&r.cluster) {
            let known: Vec<_> = clusters.keys().map(String::as_str).collect();
            errs.push(
                format!("{base}.cluster"),
                format!(
                    "unknown cluster {:?} (defined: {})",
                    r.cluster,
                    known.join(", ")
                ),
            );
        }
        let matcher = validate_match(&base, &r.matcher, errs);
        let rewrite = match &r.rewrite {
            None => RewriteConfig::default(),
            Some(rw) => {
                if let Some(p) = &rw.path_prefix {
                    if !p.starts_with('/') {
                        errs.push(format!("{base}.rewrite.path_prefix"), "must start with '/'");
                    }
                    if !matches!(matcher.path, Some(PathMatch::Prefix(_))) {
                        errs.push(
                            format!("{base}.rewrite.path_prefix"),
                            "needs match.path_prefix: it replaces the matched prefix",
                        );
                    }
                }
                RewriteConfig {
                    path_prefix: rw.path_prefix.clone(),
                    host: rw
                        .host
                        .as_ref()
                        .and_then(|h| errs.header_value(&format!("{base}.rewrite.host"), h)),
                }
            }
        };
        let request_headers =
            validate_header_ops(&format!("{base}.request_headers"), &r.request_headers, errs);
        let response_headers = validate_header_ops(
            &format!("{base}.response_headers"),
            &r.response_headers,
            errs,
        );
        let timeout = errs.duration(
            &format!("{base}.timeout"),
            &r.timeout,
            Duration::from_secs(30),
        );
        if timeout.is_zero() {
            errs.push(format!("{base}.timeout"), "must be greater than zero");
        }
        out.push(RouteConfig {
            name,
            cluster: r.cluster.clone(),
            matcher,
            rewrite,
            request_headers,
            response_headers,
            timeout,
            max_body_bytes: r.max_body_bytes.unwrap_or(10 * 1024 * 1024),
            retry: guard::retry(&base, &r.retry, errs),
            priority: admission::priority(&format!("{base}.priority"), &r.priority, errs),
            rate_limits: admission::rate_limits(&base, &r.rate_limits, errs),
            concurrency: admission::concurrency(&base, &r.concurrency, errs),
        });
    }
    out
}

fn validate_match(base: &str, m: &RawMatch, errs: &mut Errors) -> MatchConfig {
    let base = format!("{base}.match");
    let host = m.host.as_ref().map(|h| {
        let h = h.trim().to_ascii_lowercase();
        let bare = h.strip_prefix("*.").unwrap_or(&h);
        if bare.is_empty() || bare.contains(['/', ' ', '*', ':']) {
            errs.push(
                format!("{base}.host"),
                format!("{h:?} is not a host name (or \"*.suffix\"); leave out the port"),
            );
        }
        h
    });
    let path = match (&m.path_prefix, &m.path_exact) {
        (Some(_), Some(_)) => {
            errs.push(
                format!("{base}.path_exact"),
                "set path_prefix or path_exact, not both",
            );
            None
        }
        (Some(p), None) | (None, Some(p)) if !p.starts_with('/') => {
            let field = if m.path_prefix.is_some() {
                "path_prefix"
            } else {
                "path_exact"
            };
            errs.push(
                format!("{base}.{field}"),
                format!("{p:?} must start with '/'"),
            );
            None
        }
        (Some(p), None) => Some(PathMatch::Prefix(p.clone())),
        (None, Some(p)) => Some(PathMatch::Exact(p.clone())),
        (None, None) => None,
    };
    let methods = m.methods.as_ref().map(|ms| {
        ms.iter()
            .enumerate()
            .map(|(i, s)| {
                let up = s.trim().to_ascii_uppercase();
                if http::Method::from_bytes(up.as_bytes()).is_err() || up.is_empty() {
                    errs.push(
                        format!("{base}.methods[{i}]"),
                        format!("{s:?} is not an HTTP method"),
                    );
                }
                up
            })
            .collect()
    });
    let headers = m
        .headers
        .iter()
        .filter_map(|(k, v)| {
            let p = format!("{base}.headers.{k}");
            Some((errs.header_name(&p, k)?, errs.header_value(&p, v)?))
        })
        .collect();
    let headers_present = m
        .headers_present
        .iter()
        .enumerate()
        .filter_map(|(i, k)| errs.header_name(&format!("{base}.headers_present[{i}]"), k))
        .collect();
    MatchConfig {
        host,
        path,
        methods,
        headers,
        headers_present,
    }
}

/// Headers a route may not set or remove: they are managed by the proxy itself.
const MANAGED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

fn validate_header_ops(base: &str, ops: &RawHeaderOps, errs: &mut Errors) -> HeaderOps {
    let mut pairs =
        |field: &str, map: &BTreeMap<String, String>| -> Vec<(HeaderName, HeaderValue)> {
            map.iter()
                .filter_map(|(k, v)| {
                    let p = format!("{base}.{field}.{k}");
                    let n = errs.header_name(&p, k)?;
                    if MANAGED_HEADERS.contains(&n.as_str()) {
                        errs.push(
                            p.clone(),
                            format!("{n} is managed by the proxy and cannot be set"),
                        );
                    }
                    Some((n, errs.header_value(&p, v)?))
                })
                .collect()
        };
    let set = pairs("set", &ops.set);
    let add = pairs("add", &ops.add);
    let remove = ops
        .remove
        .iter()
        .enumerate()
        .filter_map(|(i, k)| errs.header_name(&format!("{base}.remove[{i}]"), k))
        .collect();
    HeaderOps { set, add, remove }
}

#[cfg(test)]
mod tests;
