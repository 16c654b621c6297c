//! The simulator: real traces replayed through the proxy's decision core on virtual time,
//! with injected faults, under several policies on identical arrivals.
//!
//! - [`scenario`]: scenario files (trace, proxies and their config, backends, faults).
//! - [`engine`]: the discrete-event engine of one run (one policy, one seed).
//! - [`backend`]: the simulated upstreams (the world outside the proxy).
//! - [`controller`]: the `Controller` interface (telemetry in, policies out) with the static
//!   controller and the oracle; the brain plugs in there.
//! - [`report`]: per-policy tables over seeds, `results.json`, `report.md` and the plots.
//!
//! Nothing here balances, limits, retries, breaks circuits or keeps an EWMA: those are the
//! decision core's (`vivremotion-decide`), driven exactly as the live proxy drives them.

pub mod backend;
pub mod controller;
pub mod engine;
pub mod report;
pub mod scenario;

use engine::{Arrival, Balancing, Engine, Prepared, RunResult};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use scenario::{FaultKind, Scenario};
use std::path::Path;
use std::time::Duration;
use vivremotion_datasets::{catalog, gen, Data, Trace};
use vivremotion_decide::balance::BalancerKind;
use vivremotion_protocol::telemetry::Priority;

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Scenario(#[from] scenario::ScenarioError),
    #[error("trace {name:?}: {source}")]
    Trace {
        name: String,
        #[source]
        source: vivremotion_datasets::DatasetError,
    },
    #[error("trace {name:?}: {message}")]
    TraceShape { name: String, message: String },
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error("unknown policy {0:?}; known: rr, least-request, p2c-ewma, static, oracle (brain arrives with issue 15)")]
    UnknownPolicy(String),
    #[error("--seeds {0:?}: {1}")]
    Seeds(String, String),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The policies `sim run` knows, in report order.
pub const POLICIES: &[&str] = &["rr", "least-request", "p2c-ewma", "static", "oracle"];

/// Parses `--policies`.
pub fn parse_policies(s: &str) -> Result<Vec<String>, SimError> {
    let mut out = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !POLICIES.contains(&p) {
            return Err(SimError::UnknownPolicy(p.to_string()));
        }
        if !out.iter().any(|x| x == p) {
            out.push(p.to_string());
        }
    }
    if out.is_empty() {
        return Err(SimError::UnknownPolicy(s.to_string()));
    }
    Ok(out)
}

/// Parses `--seeds`: one seed (`7`), a list (`1,3,9`) or an inclusive range (`1..5`).
pub fn parse_seeds(s: &str) -> Result<Vec<u64>, SimError> {
    let bad = |m: &str| SimError::Seeds(s.to_string(), m.to_string());
    let num = |x: &str| {
        x.trim()
            .parse::<u64>()
            .map_err(|_| bad("seeds are whole numbers"))
    };
    let seeds: Vec<u64> = if let Some((a, b)) = s.split_once("..") {
        let (a, b) = (num(a)?, num(b.trim_start_matches('='))?);
        if b < a {
            return Err(bad("the range ends before it starts"));
        }
        if b - a >= 1000 {
            return Err(bad("at most 1000 seeds"));
        }
        (a..=b).collect()
    } else {
        s.split(',').map(num).collect::<Result<_, _>>()?
    };
    if seeds.is_empty() {
        return Err(bad("no seed"));
    }
    Ok(seeds)
}

fn balancing(policy: &str) -> Balancing {
    match policy {
        "rr" => Balancing::All(BalancerKind::RoundRobin),
        "least-request" => Balancing::All(BalancerKind::LeastRequest),
        "p2c-ewma" => Balancing::All(BalancerKind::P2cPeakEwma),
        _ => Balancing::Config,
    }
}

fn controller<'a>(s: &'a Scenario, policy: &str) -> Box<dyn controller::Controller + 'a> {
    if policy != "oracle" {
        return Box::new(controller::Static);
    }
    let endpoints = s
        .config
        .routes
        .iter()
        .find(|r| r.name == s.route)
        .and_then(|r| s.config.clusters.get(&r.cluster))
        .map(|c| {
            c.endpoints
                .iter()
                .filter_map(|e| {
                    let b = s
                        .file
                        .backends
                        .iter()
                        .position(|b| b.address == e.address)?;
                    Some((e.address.clone(), e.weight, b))
                })
                .collect()
        })
        .unwrap_or_default();
    Box::new(controller::Oracle::new(
        &s.route,
        endpoints,
        s.faults.clone(),
    ))
}

/// Default Unix time of a run whose trace has no absolute start: 2026-01-01T00:00:00Z.
const DEFAULT_START_MS: u64 = 1_767_225_600_000;

/// What arrivals are made of: the trace and its slice, the run's length, the priority mix
/// and the faults (surges change the arrivals).
pub struct TraceInput<'a> {
    pub spec: &'a scenario::TraceSpec,
    pub duration: Option<Duration>,
    pub mix: &'a [scenario::ClassShare],
    pub faults: &'a [scenario::Fault],
    /// The telemetry tick: the run starts on a multiple of it.
    pub tick_ms: u64,
}

/// The arrivals of `seed` for a scenario.
pub fn prepare(s: &Scenario, root: &Path, seed: u64) -> Result<Prepared, SimError> {
    prepare_from(
        &TraceInput {
            spec: &s.file.trace,
            duration: s.file.duration,
            mix: &s.file.mix,
            faults: &s.faults,
            tick_ms: s.config.telemetry.tick.as_millis() as u64,
        },
        root,
        seed,
    )
}

/// The arrivals of `seed`: the trace's slice, scaled, surged and given priorities.
pub fn prepare_from(input: &TraceInput<'_>, root: &Path, seed: u64) -> Result<Prepared, SimError> {
    let t = input.spec;
    let name = t.dataset.clone();
    let terr = |source| SimError::Trace {
        name: name.clone(),
        source,
    };
    let (from, to) = match &t.slice {
        Some(sl) => scenario::parse_slice(sl).map_err(|message| SimError::TraceShape {
            name: name.clone(),
            message,
        })?,
        None => (None, None),
    };
    let from_ms = from.map_or(0, |d| d.as_millis() as i64);
    let to_ms = to.map(|d| d.as_millis() as i64);
    let synthetic_span = input.duration.unwrap_or(Duration::from_secs(60));
    let mut trace = if t.dataset == "poisson" {
        poisson(t.rate.unwrap_or(1.0), synthetic_span, seed)
    } else if t.dataset == "paced" {
        paced(t.rate.unwrap_or(1.0), synthetic_span)
    } else {
        match catalog::load(root, &t.dataset).map_err(terr)? {
            Data::Series(v) => {
                let Some(series) = v.into_iter().next() else {
                    return Err(SimError::TraceShape {
                        name,
                        message: "no series".into(),
                    });
                };
                let t0 = series.ts_ms.first().copied().unwrap_or(0);
                let cut = series.slice(t0 + from_ms, to_ms.map_or(i64::MAX, |x| t0 + x));
                gen::arrivals_from_counts(&cut, seed).map_err(terr)?
            }
            Data::Trace(tr) => tr.slice(from_ms * 1000, to_ms.map_or(i64::MAX, |x| x * 1000)),
            Data::Clients(c) => {
                let (a, b) = c.span_s().unwrap_or((0, 0));
                let lo = a + from_ms / 1000;
                let hi = to_ms.map_or(b, |x| a + x / 1000);
                c.expand(lo, hi, seed).map_err(terr)?
            }
        }
    };
    if t.time_scale != 1.0 {
        trace = trace.scale_time(t.time_scale).map_err(terr)?;
    }
    if t.rate_scale != 1.0 {
        trace = trace.scale_rate(t.rate_scale, seed).map_err(terr)?;
    }
    let limit_ns = input.duration.map(|d| d.as_nanos() as u64);
    let first = trace.arrivals.first().map_or(0, |a| a.t_us.max(0));
    let mut arrivals: Vec<Arrival> = trace
        .arrivals
        .iter()
        .map(|a| Arrival {
            t_ns: ((a.t_us - first).max(0) as u64) * 1000,
            priority: Priority::Default,
            service_ns: a.service_us.map(|x| x * 1000),
        })
        .filter(|a| limit_ns.is_none_or(|l| a.t_ns < l))
        .collect();
    surge(&mut arrivals, input.faults, seed);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5052_494f);
    let total: f64 = input.mix.iter().map(|c| c.share).sum();
    for a in &mut arrivals {
        if total > 0.0 {
            let mut u = rng.random::<f64>() * total;
            for c in input.mix {
                if u < c.share {
                    a.priority = c.priority;
                    break;
                }
                u -= c.share;
            }
        }
    }
    let span = match (limit_ns, arrivals.last()) {
        (Some(l), _) => Duration::from_nanos(l),
        (None, Some(a)) => Duration::from_nanos(a.t_ns),
        (None, None) => Duration::ZERO,
    };
    let mut services: Vec<u64> = arrivals.iter().filter_map(|a| a.service_ns).collect();
    services.sort_unstable();
    let trace_median_ns = services.get(services.len() / 2).map(|x| *x as f64);
    let tick_ms = input.tick_ms.max(1);
    let start = trace
        .start_unix_ms
        .and_then(|x| u64::try_from(x).ok())
        .unwrap_or(DEFAULT_START_MS);
    Ok(Prepared {
        seed,
        arrivals,
        span,
        start_unix_ms: start - start % tick_ms,
        trace_median_ns,
    })
}

fn poisson(rate: f64, duration: Duration, seed: u64) -> Trace {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x504f_4953);
    let mut t = 0.0;
    let end = duration.as_secs_f64();
    let mut arrivals = Vec::with_capacity((rate * end * 1.01) as usize + 16);
    loop {
        let u: f64 = rng.random();
        t += -(1.0 - u).ln() / rate;
        if t >= end {
            break;
        }
        arrivals.push(vivremotion_datasets::Arrival {
            t_us: (t * 1e6) as i64,
            ..Default::default()
        });
    }
    Trace::new("poisson", None, arrivals)
}

/// Evenly spaced arrivals, as a paced load generator sends them.
fn paced(rate: f64, duration: Duration) -> Trace {
    let n = (rate * duration.as_secs_f64()) as usize;
    let arrivals = (0..n)
        .map(|i| vivremotion_datasets::Arrival {
            t_us: (i as f64 * 1e6 / rate) as i64,
            ..Default::default()
        })
        .collect();
    Trace::new("paced", None, arrivals)
}

/// Load surges: within each surge the arrival rate is ×factor (reached linearly over the
/// ramp): arrivals are thinned below 1 and copied (with up to 100 ms of jitter) above.
fn surge(arrivals: &mut Vec<Arrival>, faults: &[scenario::Fault], seed: u64) {
    let surges: Vec<(u64, u64, f64, u64)> = faults
        .iter()
        .filter_map(|f| match f.kind {
            FaultKind::Surge { factor, ramp } => Some((
                f.from.as_nanos() as u64,
                f.until.as_nanos().min(u128::from(u64::MAX)) as u64,
                factor,
                ramp.as_nanos() as u64,
            )),
            _ => None,
        })
        .collect();
    if surges.is_empty() {
        return;
    }
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5355_5247);
    let mut out = Vec::with_capacity(arrivals.len());
    for a in arrivals.iter() {
        let mut k = 1.0;
        for &(from, until, factor, ramp) in &surges {
            if a.t_ns >= from && a.t_ns < until {
                k *= scenario::ramp(factor, from, ramp, a.t_ns);
            }
        }
        let whole = k.floor();
        let n = whole as u64 + u64::from(rng.random::<f64>() < k - whole);
        for c in 0..n {
            let jitter = if c == 0 {
                0
            } else {
                rng.random_range(0..100_000_000)
            };
            out.push(Arrival {
                t_ns: a.t_ns + jitter,
                ..*a
            });
        }
    }
    out.sort_by_key(|a| a.t_ns);
    *arrivals = out;
}

/// One run of `policy` on prepared arrivals.
pub fn run_one(
    s: &Scenario,
    prep: &Prepared,
    policy: &str,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<RunResult, SimError> {
    if !POLICIES.contains(&policy) {
        return Err(SimError::UnknownPolicy(policy.to_string()));
    }
    let engine = Engine::new(s, prep, balancing(policy), controller(s, policy))?;
    let mut r = engine.run(progress);
    r.policy = policy.to_string();
    Ok(r)
}

/// What `sim run` does: every policy on every seed (identical arrivals and faults per seed),
/// then `results.json`, `report.md` and the plots in `out`.
pub struct RunAll<'a> {
    pub scenario: &'a Scenario,
    pub policies: &'a [String],
    pub seeds: &'a [u64],
    pub datasets: &'a Path,
    pub out: &'a Path,
    pub plots: bool,
    pub progress: bool,
}

pub fn run_all(a: &RunAll<'_>) -> Result<report::Results, SimError> {
    std::fs::create_dir_all(a.out).map_err(|source| SimError::Write {
        path: a.out.display().to_string(),
        source,
    })?;
    let mut preps = Vec::new();
    for &seed in a.seeds {
        preps.push(prepare(a.scenario, a.datasets, seed)?);
    }
    let total: u64 =
        preps.iter().map(|p| p.arrivals.len() as u64).sum::<u64>() * a.policies.len() as u64;
    let pb = if a.progress {
        crate::eval::progress(total, &a.scenario.name)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut runs = Vec::new();
    let mut starts = std::collections::BTreeMap::new();
    for prep in &preps {
        starts.insert(prep.seed, prep.start_unix_ms);
        for policy in a.policies {
            pb.set_message(format!("{policy} seed {}", prep.seed));
            let base = pb.position();
            let r = run_one(a.scenario, prep, policy, &mut |done, _| {
                pb.set_position(base + done as u64)
            })?;
            runs.push(r);
        }
    }
    pb.finish_and_clear();
    let results = report::results(a.scenario, &runs, &starts);
    let plots = if a.plots {
        crate::plot::sim::all(&results, a.out).map_err(|message| SimError::Write {
            path: a.out.display().to_string(),
            source: std::io::Error::other(message),
        })?
    } else {
        Vec::new()
    };
    let json = serde_json::to_string_pretty(&results).map_err(|e| SimError::Write {
        path: "results.json".into(),
        source: std::io::Error::other(e),
    })?;
    report::write(a.out, "results.json", &json)?;
    let refs: Vec<(&str, &str)> = plots
        .iter()
        .map(|(t, f)| (t.as_str(), f.as_str()))
        .collect();
    report::write(a.out, "report.md", &report::markdown(&results, &refs))?;
    Ok(results)
}
