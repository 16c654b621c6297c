//! Scenario files: which trace, which proxies with which config, which backends, which faults.
//!
//! A scenario is TOML. The proxies' config is the live proxy's own config format (a file next
//! to the scenario, or inline under `[proxy_config]`), validated by the same code; the
//! backends it names by address are simulated. Unknown fields and bad values are refused with
//! the field path.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vivremotion_decide::config::Config;
use vivremotion_protocol::telemetry::Priority;

/// Why a scenario could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {path}: {message}")]
    Field {
        file: String,
        path: String,
        message: String,
    },
    #[error("{file}: {message}")]
    ProxyConfig { file: String, message: String },
    #[error("{file}: trace: {source}")]
    Trace {
        file: String,
        #[source]
        source: vivremotion_datasets::DatasetError,
    },
    #[error("unknown scenario {name:?}; `vivremotion sim list` shows the shipped ones")]
    Unknown { name: String },
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| D::Error::custom(format!("{s:?}: {e}")))
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// The scenario file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// One line: what this scenario judges.
    pub purpose: String,
    pub trace: TraceSpec,
    /// Simulated time; default: the whole slice.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub duration: Option<Duration>,
    /// Requests that arrive before this are simulated but left out of the totals (a load
    /// generator's ramp-up, as the live tests leave it out).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub warmup: Option<Duration>,
    /// Share of requests per priority class (default: all `default`).
    #[serde(default)]
    pub mix: Vec<ClassShare>,
    #[serde(default)]
    pub proxies: ProxiesSpec,
    /// The proxies' config inline, in the proxy's own format (instead of `proxies.config`).
    #[serde(default)]
    pub proxy_config: Option<toml::Table>,
    pub backends: Vec<BackendSpec>,
    #[serde(default)]
    pub bus: BusSpec,
    #[serde(default)]
    pub events: Vec<EventSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSpec {
    /// A name from `vivremotion datasets list` (per-second counts, request traces, ServeGen
    /// clients), or `poisson` (a Poisson stream at `rate`) or `paced` (evenly spaced at `rate`,
    /// as a load generator sends).
    pub dataset: String,
    /// `FROM..TO`, offsets from the trace's start (`13h..13h10m`); default: all of it.
    #[serde(default)]
    pub slice: Option<String>,
    /// Arrivals ×k (thinning below 1, copies with jitter above).
    #[serde(default = "one")]
    pub rate_scale: f64,
    /// Time ×k (2: the slice plays at half speed).
    #[serde(default = "one")]
    pub time_scale: f64,
    /// Requests per second, for `dataset = "poisson"`.
    #[serde(default)]
    pub rate: Option<f64>,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassShare {
    pub priority: Priority,
    pub share: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxiesSpec {
    /// Proxy instances sharing the backends; arrivals are spread over them evenly.
    #[serde(default = "one_usize")]
    pub count: usize,
    /// The proxy config file, relative to the scenario file.
    #[serde(default)]
    pub config: Option<String>,
    /// The route requests go to (default: the config's first).
    #[serde(default)]
    pub route: Option<String>,
}

impl Default for ProxiesSpec {
    fn default() -> ProxiesSpec {
        ProxiesSpec {
            count: 1,
            config: None,
            route: None,
        }
    }
}

fn one_usize() -> usize {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// The endpoint address the proxy config names.
    pub address: String,
    /// Requests served at once.
    pub concurrency: u32,
    /// Requests waiting beyond that; more are answered 503 at once.
    #[serde(default = "default_queue")]
    pub queue: u32,
    pub service: ServiceSpec,
}

fn default_queue() -> u32 {
    1000
}

/// Service time of one request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Lognormal with this median...
    #[serde(deserialize_with = "de_duration")]
    pub median: Duration,
    /// ... and this shape (σ of the log; 0: constant).
    #[serde(default)]
    pub sigma: f64,
    /// Use the trace's own service times where it has them (scaled by median / their median).
    #[serde(default)]
    pub from_trace: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSpec {
    /// Policy publication → proxies applying it.
    #[serde(default = "default_bus_delay", deserialize_with = "de_duration")]
    pub delay: Duration,
}

impl Default for BusSpec {
    fn default() -> BusSpec {
        BusSpec {
            delay: default_bus_delay(),
        }
    }
}

fn default_bus_delay() -> Duration {
    Duration::from_millis(50)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The backend refuses connections; in-flight requests are reset.
    Crash,
    /// Service times ×factor.
    Slowdown,
    /// A share of requests answered with `status` at once.
    ErrorBurst,
    /// Concurrency ×factor (below 1).
    Brownout,
    /// `extra` added to a share of requests' service times.
    LatencySpike,
    /// Service times grow linearly to ×factor over the event.
    LatencyRamp,
    /// Arrivals ×factor, reached over `ramp`.
    Surge,
    /// The bus between proxies and the controller is cut.
    Partition,
}

/// One timed fault, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    #[serde(deserialize_with = "de_duration")]
    pub at: Duration,
    pub kind: EventKind,
    /// How long it lasts (default: to the end).
    #[serde(default, rename = "for", deserialize_with = "de_opt_duration")]
    pub lasts: Option<Duration>,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub share: Option<f64>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub extra: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub ramp: Option<Duration>,
}

/// A fault, checked.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Fault {
    pub kind: FaultKind,
    pub from: Duration,
    pub until: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FaultKind {
    Crash {
        backend: usize,
    },
    Slowdown {
        backend: usize,
        factor: f64,
    },
    ErrorBurst {
        backend: usize,
        status: u16,
        share: f64,
    },
    Brownout {
        backend: usize,
        factor: f64,
    },
    LatencySpike {
        backend: usize,
        extra: Duration,
        share: f64,
    },
    LatencyRamp {
        backend: usize,
        factor: f64,
    },
    Surge {
        factor: f64,
        ramp: Duration,
    },
    Partition,
}

impl FaultKind {
    pub fn backend(&self) -> Option<usize> {
        match *self {
            FaultKind::Crash { backend }
            | FaultKind::Slowdown { backend, .. }
            | FaultKind::ErrorBurst { backend, .. }
            | FaultKind::Brownout { backend, .. }
            | FaultKind::LatencySpike { backend, .. }
            | FaultKind::LatencyRamp { backend, .. } => Some(backend),
            FaultKind::Surge { .. } | FaultKind::Partition => None,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            FaultKind::Crash { .. } => "crash",
            FaultKind::Slowdown { .. } => "slowdown",
            FaultKind::ErrorBurst { .. } => "error burst",
            FaultKind::Brownout { .. } => "brownout",
            FaultKind::LatencySpike { .. } => "latency spike",
            FaultKind::LatencyRamp { .. } => "latency ramp",
            FaultKind::Surge { .. } => "surge",
            FaultKind::Partition => "bus partition",
        }
    }
}

/// The multiplier of a change that grows linearly from ×1 at `from` to ×`factor` after
/// `len` (all in nanoseconds; `len` 0: at once), and stays there.
pub fn ramp(factor: f64, from: u64, len: u64, now: u64) -> f64 {
    let done = if len == 0 {
        1.0
    } else {
        (now.saturating_sub(from) as f64 / len as f64).min(1.0)
    };
    1.0 + (factor - 1.0) * done
}

/// A scenario ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub file: ScenarioFile,
    /// The proxies' config text (validated into `config`).
    pub config: Arc<Config>,
    pub route: String,
    pub faults: Vec<Fault>,
}

/// Scenarios shipped in `simulations/scenarios/`.
pub fn shipped_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// The shipped scenarios: (name, file), sorted by name.
pub fn shipped() -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(shipped_dir())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .filter_map(|p| Some((p.file_stem()?.to_str()?.to_string(), p.clone())))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A scenario by file path, or by the name of a shipped one.
pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
    let p = Path::new(name_or_path);
    if p.extension().is_some_and(|x| x == "toml") || p.is_file() {
        return load_file(p);
    }
    match shipped().into_iter().find(|(n, _)| n == name_or_path) {
        Some((_, path)) => load_file(&path),
        None => Err(ScenarioError::Unknown {
            name: name_or_path.to_string(),
        }),
    }
}

pub fn load_file(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("scenario")
        .to_string();
    parse(&name, &path.display().to_string(), &text, path.parent())
}

/// Parses and checks a scenario. `dir` resolves `proxies.config`.
pub fn parse(
    name: &str,
    file: &str,
    text: &str,
    dir: Option<&Path>,
) -> Result<Scenario, ScenarioError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ScenarioError::Syntax {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
    let f: ScenarioFile =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            ScenarioError::Field {
                file: file.to_string(),
                path: e.path().to_string(),
                // The toml value deserializer appends "in `table`"; the path says where.
                message: first_line(&e.inner().to_string()),
            }
        })?;
    let field = |path: &str, message: String| ScenarioError::Field {
        file: file.to_string(),
        path: path.to_string(),
        message,
    };
    let config_text = match (&f.proxy_config, &f.proxies.config) {
        (Some(t), None) => toml::to_string(t).map_err(|e| field("proxy_config", e.to_string()))?,
        (None, Some(c)) => {
            let p = dir.unwrap_or(Path::new(".")).join(c);
            std::fs::read_to_string(&p).map_err(|source| ScenarioError::Read { path: p, source })?
        }
        (Some(_), Some(_)) => {
            return Err(field(
                "proxies.config",
                "give the proxy config inline ([proxy_config]) or as a file, not both".into(),
            ))
        }
        (None, None) => {
            return Err(field(
                "proxy_config",
                "missing: the proxies need a config ([proxy_config] or proxies.config)".into(),
            ))
        }
    };
    let config = Config::parse(&config_text).map_err(|e| ScenarioError::ProxyConfig {
        file: file.to_string(),
        message: match (&f.proxy_config, e.field_errors()) {
            // Inline: the config's lines are not the scenario's, so name the field in full.
            (Some(_), errs) if !errs.is_empty() => errs
                .iter()
                .map(|x| format!("proxy_config.{}: {}", x.path, x.reason))
                .collect::<Vec<_>>()
                .join("; "),
            _ => format!(
                "{}: {e}",
                f.proxies.config.as_deref().unwrap_or("proxy_config")
            ),
        },
    })?;
    let route = match &f.proxies.route {
        Some(r) if config.routes.iter().any(|x| &x.name == r) => r.clone(),
        Some(r) => {
            return Err(field(
                "proxies.route",
                format!("{r:?} is not a route of the proxy config"),
            ))
        }
        None => match config.routes.first() {
            Some(r) => r.name.clone(),
            None => {
                return Err(field(
                    "proxy_config.routes",
                    "the config has no route".into(),
                ))
            }
        },
    };
    check(&f, &config, &field)?;
    let faults = faults(&f, &field)?;
    Ok(Scenario {
        name: name.to_string(),
        file: f,
        config: Arc::new(config),
        route,
        faults,
    })
}

fn check(
    f: &ScenarioFile,
    config: &Config,
    field: &impl Fn(&str, String) -> ScenarioError,
) -> Result<(), ScenarioError> {
    if f.proxies.count == 0 || f.proxies.count > 64 {
        return Err(field(
            "proxies.count",
            format!("{} is outside 1..=64", f.proxies.count),
        ));
    }
    let t = &f.trace;
    for (path, v) in [
        ("trace.rate_scale", t.rate_scale),
        ("trace.time_scale", t.time_scale),
    ] {
        if !(v.is_finite() && v > 0.0 && v <= 1000.0) {
            return Err(field(path, format!("{v} is outside (0, 1000]")));
        }
    }
    if t.dataset == "poisson" || t.dataset == "paced" {
        match t.rate {
            Some(r) if r.is_finite() && r > 0.0 && r <= 1e7 => {}
            Some(r) => return Err(field("trace.rate", format!("{r} is outside (0, 1e7]"))),
            None => {
                return Err(field(
                    "trace.rate",
                    "missing: a synthetic trace needs a rate (requests per second)".into(),
                ))
            }
        }
        if f.duration.is_none() {
            return Err(field(
                "duration",
                "missing: a synthetic trace needs a duration".into(),
            ));
        }
    } else if t.rate.is_some() {
        return Err(field(
            "trace.rate",
            "only for dataset = \"poisson\" or \"paced\"; scale a real trace with rate_scale"
                .into(),
        ));
    }
    if let Some(s) = &t.slice {
        parse_slice(s).map_err(|m| field("trace.slice", m))?;
    }
    let mut total = 0.0;
    for (i, c) in f.mix.iter().enumerate() {
        if !(c.share.is_finite() && c.share >= 0.0) {
            return Err(field(
                &format!("mix[{i}].share"),
                format!("{} is not a non-negative share", c.share),
            ));
        }
        total += c.share;
    }
    if !f.mix.is_empty() && total <= 0.0 {
        return Err(field("mix", "the shares add up to 0".into()));
    }
    if f.backends.is_empty() {
        return Err(field("backends", "no backend".into()));
    }
    for (i, b) in f.backends.iter().enumerate() {
        let at = |k: &str| format!("backends[{i}].{k}");
        if b.concurrency == 0 {
            return Err(field(&at("concurrency"), "must be at least 1".into()));
        }
        if !(b.service.sigma.is_finite() && (0.0..=5.0).contains(&b.service.sigma)) {
            return Err(field(
                &at("service.sigma"),
                format!("{} is outside 0..=5", b.service.sigma),
            ));
        }
        if b.service.median.is_zero() {
            return Err(field(&at("service.median"), "must be above 0".into()));
        }
        if f.backends[..i].iter().any(|x| x.address == b.address) {
            return Err(field(
                &at("address"),
                format!("{:?} is given twice", b.address),
            ));
        }
    }
    for (cname, c) in &config.clusters {
        for e in &c.endpoints {
            if !f.backends.iter().any(|b| b.address == e.address) {
                return Err(field(
                    "backends",
                    format!(
                        "no backend has address {:?}, an endpoint of cluster {cname:?}",
                        e.address
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `FROM..TO` offsets (humantime each side; either may be empty).
pub fn parse_slice(s: &str) -> Result<(Option<Duration>, Option<Duration>), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?} is not FROM..TO (for example \"13h..13h10m\")"))?;
    let one = |x: &str| -> Result<Option<Duration>, String> {
        let x = x.trim();
        if x.is_empty() || x == "0" {
            return Ok(None);
        }
        humantime::parse_duration(x)
            .map(Some)
            .map_err(|e| format!("{x:?}: {e}"))
    };
    let (from, to) = (one(a)?, one(b)?);
    if let (Some(f), Some(t)) = (from, to) {
        if t <= f {
            return Err(format!("{s:?}: the end is not after the start"));
        }
    }
    Ok((from, to))
}

fn faults(
    f: &ScenarioFile,
    field: &impl Fn(&str, String) -> ScenarioError,
) -> Result<Vec<Fault>, ScenarioError> {
    let mut out = Vec::new();
    for (i, e) in f.events.iter().enumerate() {
        let at = |k: &str| format!("events[{i}].{k}");
        let backend = || -> Result<usize, ScenarioError> {
            let Some(b) = &e.backend else {
                return Err(field(&at("backend"), "missing: which backend".into()));
            };
            f.backends
                .iter()
                .position(|x| &x.address == b)
                .ok_or_else(|| field(&at("backend"), format!("{b:?} is not a backend")))
        };
        let factor = |lo: f64, hi: f64| -> Result<f64, ScenarioError> {
            match e.factor {
                Some(v) if v.is_finite() && v >= lo && v <= hi => Ok(v),
                Some(v) => Err(field(&at("factor"), format!("{v} is outside {lo}..={hi}"))),
                None => Err(field(&at("factor"), "missing".into())),
            }
        };
        let share = || -> Result<f64, ScenarioError> {
            match e.share {
                None => Ok(1.0),
                Some(v) if (0.0..=1.0).contains(&v) => Ok(v),
                Some(v) => Err(field(&at("share"), format!("{v} is outside 0..=1"))),
            }
        };
        let kind = match e.kind {
            EventKind::Crash => FaultKind::Crash {
                backend: backend()?,
            },
            EventKind::Slowdown => FaultKind::Slowdown {
                backend: backend()?,
                factor: factor(1.0, 1000.0)?,
            },
            EventKind::ErrorBurst => FaultKind::ErrorBurst {
                backend: backend()?,
                status: match e.status {
                    Some(s) if (400..=599).contains(&s) => s,
                    Some(s) => return Err(field(&at("status"), format!("{s} is not 400..=599"))),
                    None => 503,
                },
                share: share()?,
            },
            EventKind::Brownout => FaultKind::Brownout {
                backend: backend()?,
                factor: factor(0.0, 1.0)?,
            },
            EventKind::LatencySpike => FaultKind::LatencySpike {
                backend: backend()?,
                extra: e
                    .extra
                    .ok_or_else(|| field(&at("extra"), "missing: the added latency".into()))?,
                share: share()?,
            },
            EventKind::LatencyRamp => FaultKind::LatencyRamp {
                backend: backend()?,
                factor: factor(1.0, 1000.0)?,
            },
            EventKind::Surge => FaultKind::Surge {
                factor: factor(0.0, 100.0)?,
                ramp: e.ramp.unwrap_or_default(),
            },
            EventKind::Partition => FaultKind::Partition,
        };
        if e.kind == EventKind::LatencyRamp && e.lasts.is_none() {
            return Err(field(&at("for"), "missing: a ramp needs its length".into()));
        }
        out.push(Fault {
            kind,
            from: e.at,
            until: e.lasts.map_or(Duration::MAX, |d| e.at.saturating_add(d)),
        });
    }
    Ok(out)
}
