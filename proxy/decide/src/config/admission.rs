//! Config of admission control (`crate::limits`): per route `priority`, `rate_limits` and
//! `concurrency`; the proxy's `trusted_priority_from`; the `[global_limits]` store.

use super::{ser_duration, Errors};
use crate::guard::gradient::GradientConfig;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use vivremotion_protocol::telemetry::Priority;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub name: Option<String>,
    pub key: Option<Vec<String>>,
    pub rate: f64,
    pub burst: Option<u32>,
    pub global: Option<bool>,
    pub on_store_down: Option<String>,
    pub local_share: Option<f64>,
}

/// `limit = 100` or `limit = "adaptive"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawLimit {
    Fixed(u32),
    Named(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShedAt {
    pub critical: Option<f64>,
    pub default: Option<f64>,
    pub sheddable: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConcurrency {
    pub limit: RawLimit,
    pub initial_limit: Option<u32>,
    pub min_limit: Option<u32>,
    pub max_limit: Option<u32>,
    pub tolerance: Option<f64>,
    pub window: Option<String>,
    pub probe_interval: Option<String>,
    pub queue: Option<u32>,
    pub max_wait: Option<String>,
    #[serde(default)]
    pub shed_at: RawShedAt,
    pub retry_after: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlobalLimits {
    pub redis_url: Option<String>,
    pub lease_interval: Option<String>,
    pub timeout: Option<String>,
}

pub use crate::limits::lease::OnStoreDown;
pub use crate::limits::KeyPart;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateLimitConfig {
    pub name: String,
    pub key: Vec<KeyPart>,
    /// Requests per second.
    pub rate: f64,
    /// Requests allowed at once (the bucket's size).
    pub burst: u32,
    pub global: bool,
    pub on_store_down: OnStoreDown,
    pub local_share: f64,
}

/// The route's concurrency limit: fixed, or adaptive (gradient).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitMode {
    Fixed(u32),
    Adaptive,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConcurrencyConfig {
    pub limit: LimitMode,
    /// Adaptive limit settings (also used for `initial_limit` etc. in fixed mode: unused).
    #[serde(skip)]
    pub gradient: GradientConfig,
    /// Requests that may wait for a free slot (critical and default only).
    pub queue: u32,
    #[serde(serialize_with = "ser_duration")]
    pub max_wait: Duration,
    /// Utilisation of the limit (0..=1) at which each class stops being admitted:
    /// `[critical, default, sheddable]`.
    pub shed_at: [f64; 3],
    #[serde(serialize_with = "ser_duration")]
    pub retry_after: Duration,
}

impl ConcurrencyConfig {
    /// A fixed limit with every other setting at its default.
    pub fn fixed(limit: u32) -> ConcurrencyConfig {
        let mut errs = Errors::default();
        let raw = Some(RawConcurrency {
            limit: RawLimit::Fixed(limit.max(1)),
            initial_limit: None,
            min_limit: None,
            max_limit: None,
            tolerance: None,
            window: None,
            probe_interval: None,
            queue: None,
            max_wait: None,
            shed_at: RawShedAt::default(),
            retry_after: None,
        });
        let mut c = concurrency("", &raw, &mut errs).unwrap_or_else(|| unreachable!());
        c.limit = LimitMode::Fixed(limit.max(1));
        c
    }

    pub fn shed_at(&self, p: Priority) -> f64 {
        self.shed_at[p as usize]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GlobalLimitsConfig {
    /// `None`: global limits share an in-process store (one instance only).
    pub redis_url: Option<String>,
    #[serde(serialize_with = "ser_duration")]
    pub lease_interval: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
}

impl Default for GlobalLimitsConfig {
    fn default() -> Self {
        GlobalLimitsConfig {
            redis_url: None,
            lease_interval: Duration::from_millis(10),
            timeout: Duration::from_millis(250),
        }
    }
}

pub(super) fn priority(path: &str, v: &Option<String>, errs: &mut Errors) -> Priority {
    match v.as_deref().map(str::trim) {
        None => Priority::Default,
        Some(s) => match parse_priority(s.as_bytes()) {
            Some(p) => p,
            None => {
                errs.push(
                    path,
                    format!("unknown priority {s:?}; one of critical, default, sheddable"),
                );
                Priority::Default
            }
        },
    }
}

/// A priority class by name (as in `x-priority`), ASCII case-insensitive.
pub fn parse_priority(v: &[u8]) -> Option<Priority> {
    let v = v.trim_ascii();
    Priority::ALL
        .into_iter()
        .find(|p| v.eq_ignore_ascii_case(p.as_str().as_bytes()))
}

pub(super) fn trusted(path: &str, v: &Option<Vec<String>>, errs: &mut Errors) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, s) in v.iter().flatten().enumerate() {
        let s = s.trim();
        // A bare address means just that host.
        let parsed = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => out.push(n),
            Err(_) => errs.push(
                format!("{path}[{i}]"),
                format!("{s:?} is not an IP network such as \"10.0.0.0/8\" or an address"),
            ),
        }
    }
    out
}

pub(super) fn global_limits(g: &RawGlobalLimits, errs: &mut Errors) -> GlobalLimitsConfig {
    let d = GlobalLimitsConfig::default();
    if let Some(u) = &g.redis_url {
        if !(u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("unix://")) {
            errs.push(
                "global_limits.redis_url",
                format!("{u:?} is not a Redis URL such as \"redis://127.0.0.1:6379/0\""),
            );
        }
    }
    let lease_interval = errs.duration(
        "global_limits.lease_interval",
        &g.lease_interval,
        d.lease_interval,
    );
    if !(Duration::from_millis(1)..=Duration::from_secs(1)).contains(&lease_interval) {
        errs.push("global_limits.lease_interval", "must be within 1ms..=1s");
    }
    let timeout = errs.duration("global_limits.timeout", &g.timeout, d.timeout);
    if timeout.is_zero() {
        errs.push("global_limits.timeout", "must be greater than zero");
    }
    GlobalLimitsConfig {
        redis_url: g.redis_url.clone(),
        lease_interval,
        timeout,
    }
}

pub(super) fn rate_limits(
    base: &str,
    raw: &[RawRateLimit],
    errs: &mut Errors,
) -> Vec<RateLimitConfig> {
    let mut out: Vec<RateLimitConfig> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let base = format!("{base}.rate_limits[{i}]");
        let p = |f: &str| format!("{base}.{f}");
        let name = r.name.clone().unwrap_or_else(|| format!("limit{i}"));
        // The name goes into a quoted structured-field string in RateLimit headers.
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            errs.push(
                p("name"),
                format!("{name:?}: use letters, digits and - _ . : only"),
            );
        }
        if out.iter().any(|o| o.name == name) {
            errs.push(p("name"), format!("duplicate rate limit name {name:?}"));
        }
        let mut key = Vec::new();
        let parts = r.key.clone().unwrap_or_else(|| vec!["route".into()]);
        if parts.is_empty() {
            errs.push(p("key"), "must name at least one part");
        }
        for (j, k) in parts.iter().enumerate() {
            let k = k.trim();
            let part = match k {
                "client_ip" => Some(KeyPart::ClientIp),
                "route" => Some(KeyPart::Route),
                _ => match k.strip_prefix("header:") {
                    Some(h) => errs
                        .header_name(&format!("{base}.key[{j}]"), h.trim())
                        .map(|n| KeyPart::Header(n.as_str().into())),
                    None => {
                        errs.push(
                            format!("{base}.key[{j}]"),
                            format!("unknown key part {k:?}; one of client_ip, route, header:NAME"),
                        );
                        None
                    }
                },
            };
            key.extend(part);
        }
        if !(r.rate.is_finite() && (1e-6..=1e9).contains(&r.rate)) {
            errs.push(p("rate"), format!("{} is outside 0.000001..=1e9", r.rate));
        }
        let global = r.global.unwrap_or(false);
        let on_store_down = match r.on_store_down.as_deref().map(str::trim) {
            None | Some("local_share") => OnStoreDown::LocalShare,
            Some("open") => OnStoreDown::Open,
            Some("closed") => OnStoreDown::Closed,
            Some(o) => {
                errs.push(
                    p("on_store_down"),
                    format!("unknown mode {o:?}; one of local_share, open, closed"),
                );
                OnStoreDown::LocalShare
            }
        };
        if !global && (r.on_store_down.is_some() || r.local_share.is_some()) {
            errs.push(
                p("global"),
                "on_store_down and local_share only apply to global limits (global = true)",
            );
        }
        out.push(RateLimitConfig {
            name,
            key,
            rate: r.rate,
            // Default burst: a tenth of a second's worth, at least one request.
            burst: r
                .burst
                .unwrap_or_else(|| (r.rate / 10.0).ceil().clamp(1.0, 1e6) as u32),
            global,
            on_store_down,
            local_share: errs.range_f64(&p("local_share"), r.local_share, 0.5, 0.0, 1.0),
        });
    }
    out
}

pub(super) fn concurrency(
    base: &str,
    raw: &Option<RawConcurrency>,
    errs: &mut Errors,
) -> Option<ConcurrencyConfig> {
    let c = raw.as_ref()?;
    let base = format!("{base}.concurrency");
    let p = |f: &str| format!("{base}.{f}");
    let limit = match &c.limit {
        RawLimit::Fixed(0) => {
            errs.push(
                p("limit"),
                "must be at least 1 (leave concurrency out for no limit)",
            );
            LimitMode::Fixed(1)
        }
        RawLimit::Fixed(n) => LimitMode::Fixed(*n),
        RawLimit::Named(s) if s.trim() == "adaptive" => LimitMode::Adaptive,
        RawLimit::Named(s) => {
            errs.push(
                p("limit"),
                format!("{s:?}: write a number of requests or \"adaptive\""),
            );
            LimitMode::Adaptive
        }
    };
    let d = GradientConfig::default();
    let min_limit = errs.range_u32(&p("min_limit"), c.min_limit, d.min_limit, 1, 1_000_000);
    let max_limit = errs.range_u32(&p("max_limit"), c.max_limit, d.max_limit, 1, 1_000_000);
    if max_limit < min_limit {
        errs.push(
            p("max_limit"),
            format!("{max_limit} is below min_limit {min_limit}"),
        );
    }
    let gradient = GradientConfig {
        initial_limit: errs.range_u32(
            &p("initial_limit"),
            c.initial_limit,
            d.initial_limit,
            1,
            1_000_000,
        ),
        min_limit,
        max_limit,
        tolerance: errs.range_f64(&p("tolerance"), c.tolerance, d.tolerance, 1.0, 10.0),
        window: errs.duration(&p("window"), &c.window, d.window),
        probe_interval: errs.duration(&p("probe_interval"), &c.probe_interval, d.probe_interval),
        ..d
    };
    if gradient.window < Duration::from_millis(10) {
        errs.push(p("window"), "must be at least 10ms");
    }
    let shed = |f: &str, v: Option<f64>, d: f64, errs: &mut Errors| {
        errs.range_f64(&format!("{base}.shed_at.{f}"), v, d, 0.0, 1.0)
    };
    let shed_at = [
        shed("critical", c.shed_at.critical, 1.0, errs),
        shed("default", c.shed_at.default, 0.9, errs),
        shed("sheddable", c.shed_at.sheddable, 0.75, errs),
    ];
    if !(shed_at[0] >= shed_at[1] && shed_at[1] >= shed_at[2]) {
        errs.push(
            p("shed_at"),
            "thresholds must not rise as priority falls (critical ≥ default ≥ sheddable)",
        );
    }
    let max_wait = errs.duration(&p("max_wait"), &c.max_wait, Duration::from_millis(50));
    if max_wait > Duration::from_secs(60) {
        errs.push(p("max_wait"), "must be at most 60s");
    }
    Some(ConcurrencyConfig {
        limit,
        gradient,
        queue: errs.range_u32(&p("queue"), c.queue, 64, 0, 100_000),
        max_wait,
        shed_at,
        retry_after: errs.duration(&p("retry_after"), &c.retry_after, Duration::from_secs(1)),
    })
}
