//! What a set of runs says: per policy, the median and worst over seeds of each number;
//! `results.json`, `report.md` and the plots. Time series come from the telemetry batches
//! the simulated proxies produced (what the brain would have seen).

use super::engine::{Decision, RunResult};
use super::scenario::Scenario;
use super::SimError;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use vivremotion_protocol::telemetry::Priority;
use vivremotion_protocol::telemetry::TelemetryBatch;
use vivremotion_protocol::LatencySketch;

/// The numbers of one run that the report compares.
#[derive(Debug, Clone, Serialize)]
pub struct RunNumbers {
    pub seed: u64,
    pub requests: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Upstream errors and no-endpoint answers over all requests.
    pub error_rate: f64,
    /// Successful requests per simulated second.
    pub goodput_rps: f64,
    pub shed: BTreeMap<Priority, u64>,
    pub limited: BTreeMap<Priority, u64>,
    pub ok: BTreeMap<Priority, u64>,
    pub class_p99_ms: BTreeMap<Priority, f64>,
    pub retries: u64,
    pub retry_budget_exhausted: u64,
    pub cost_usd: f64,
}

fn ms(s: &LatencySketch, q: f64) -> f64 {
    s.quantile(q).map_or(0.0, |us| us / 1000.0)
}

pub fn numbers(r: &RunResult) -> RunNumbers {
    let t = &r.totals;
    let per = |f: &dyn Fn(&super::engine::ClassTotals) -> u64| {
        r.classes
            .iter()
            .map(|c| (c.priority, f(c)))
            .collect::<BTreeMap<_, _>>()
    };
    RunNumbers {
        seed: r.seed,
        requests: t.requests,
        p50_ms: ms(&t.latency, 0.5),
        p99_ms: ms(&t.latency, 0.99),
        p999_ms: ms(&t.latency, 0.999),
        error_rate: if t.requests == 0 {
            0.0
        } else {
            t.errors as f64 / t.requests as f64
        },
        goodput_rps: if t.span_s > 0.0 {
            t.ok as f64 / t.span_s
        } else {
            0.0
        },
        shed: per(&|c| c.shed),
        limited: per(&|c| c.limited),
        ok: per(&|c| c.ok),
        class_p99_ms: r
            .classes
            .iter()
            .map(|c| (c.priority, ms(&c.latency, 0.99)))
            .collect(),
        retries: t.retries,
        retry_budget_exhausted: t.retry_budget_exhausted,
        cost_usd: 0.0,
    }
}

/// One telemetry tick, summed over instances.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub t_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub shed: u64,
    pub limited: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Tries per endpoint address.
    pub tries: BTreeMap<String, u64>,
    /// Weight in force per endpoint (first instance).
    pub weights: BTreeMap<String, u32>,
    /// Concurrency limit in force (summed over instances), if the route has one.
    pub limit: Option<u32>,
}

/// The route's time series from the batches of one run.
pub fn series(batches: &[TelemetryBatch], route: &str, start_ms: u64) -> Vec<Point> {
    let mut by: BTreeMap<u64, (Point, LatencySketch, bool)> = BTreeMap::new();
    for b in batches {
        let e = by.entry(b.window_start_ms).or_insert_with(|| {
            (
                Point {
                    t_s: (b.window_start_ms + b.window_ms).saturating_sub(start_ms) as f64 / 1000.0,
                    requests: 0,
                    ok: 0,
                    errors: 0,
                    shed: 0,
                    limited: 0,
                    p50_ms: 0.0,
                    p99_ms: 0.0,
                    tries: BTreeMap::new(),
                    weights: BTreeMap::new(),
                    limit: None,
                },
                LatencySketch::new(),
                true,
            )
        });
        let first = e.2;
        e.2 = false;
        for w in &b.windows {
            if w.scope.route != route {
                continue;
            }
            match &w.scope.upstream {
                None => {
                    e.0.requests += w.requests;
                    e.0.ok += w.status.success + w.status.redirect;
                    e.0.errors += w.status.server_error;
                    let a = &w.admission;
                    e.0.shed += a.shed.critical + a.shed.default + a.shed.sheddable;
                    e.0.limited += a.limited.critical + a.limited.default + a.limited.sheddable;
                    e.1.merge(&w.latency);
                    if let Some(l) = w.in_force.concurrency_limit {
                        e.0.limit = Some(e.0.limit.unwrap_or(0) + l);
                    }
                }
                Some(up) => {
                    *e.0.tries.entry(up.clone()).or_default() += w.requests;
                    if first {
                        if let Some(wt) = w.in_force.weight {
                            e.0.weights.insert(up.clone(), wt);
                        }
                    }
                }
            }
        }
    }
    by.into_values()
        .map(|(mut p, s, _)| {
            p.p50_ms = ms(&s, 0.5);
            p.p99_ms = ms(&s, 0.99);
            p
        })
        .collect()
}

/// Median and worst (the higher for costs, the lower for goodput) over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub median: f64,
    pub worst: f64,
}

fn spread(mut v: Vec<f64>, higher_is_worse: bool) -> Spread {
    v.sort_by(f64::total_cmp);
    let median = if v.is_empty() {
        0.0
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    let worst = if higher_is_worse {
        v.last().copied().unwrap_or(0.0)
    } else {
        v.first().copied().unwrap_or(0.0)
    };
    Spread { median, worst }
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    pub policy: String,
    pub p50_ms: Spread,
    pub p99_ms: Spread,
    pub p999_ms: Spread,
    pub error_rate: Spread,
    pub goodput_rps: Spread,
    pub retries: Spread,
    pub shed: BTreeMap<Priority, Spread>,
    pub limited: BTreeMap<Priority, Spread>,
    pub class_p99_ms: BTreeMap<Priority, Spread>,
    pub cost_usd: Spread,
}

pub fn summarize(policy: &str, runs: &[RunNumbers]) -> PolicySummary {
    let col = |f: &dyn Fn(&RunNumbers) -> f64, worse_high: bool| {
        spread(runs.iter().map(f).collect(), worse_high)
    };
    let classes: Vec<Priority> = Priority::ALL
        .iter()
        .copied()
        .filter(|p| {
            runs.iter()
                .any(|r| r.ok.contains_key(p) || r.shed.contains_key(p))
        })
        .collect();
    let per = |m: &dyn Fn(&RunNumbers) -> &BTreeMap<Priority, u64>| {
        classes
            .iter()
            .map(|p| (*p, col(&|r| m(r).get(p).copied().unwrap_or(0) as f64, true)))
            .collect()
    };
    PolicySummary {
        policy: policy.to_string(),
        p50_ms: col(&|r| r.p50_ms, true),
        p99_ms: col(&|r| r.p99_ms, true),
        p999_ms: col(&|r| r.p999_ms, true),
        error_rate: col(&|r| r.error_rate, true),
        goodput_rps: col(&|r| r.goodput_rps, false),
        retries: col(&|r| r.retries as f64, true),
        shed: per(&|r| &r.shed),
        limited: per(&|r| &r.limited),
        class_p99_ms: classes
            .iter()
            .map(|p| {
                (
                    *p,
                    col(&|r| r.class_p99_ms.get(p).copied().unwrap_or(0.0), true),
                )
            })
            .collect(),
        cost_usd: col(&|r| r.cost_usd, true),
    }
}

/// Everything written to `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub scenario: String,
    pub purpose: String,
    pub route: String,
    pub policies: Vec<String>,
    pub seeds: Vec<u64>,
    pub faults: Vec<super::scenario::Fault>,
    /// Requests arriving before this were left out of the numbers.
    pub warmup_s: Option<f64>,
    pub summary: Vec<PolicySummary>,
    pub runs: BTreeMap<String, Vec<RunNumbers>>,
    /// First seed's time series per policy.
    pub series: BTreeMap<String, Vec<Point>>,
    /// First seed's decisions per policy.
    pub decisions: BTreeMap<String, Vec<Decision>>,
}

pub fn results(s: &Scenario, runs: &[RunResult], start_ms: &BTreeMap<u64, u64>) -> Results {
    let mut policies: Vec<String> = Vec::new();
    let mut seeds: Vec<u64> = Vec::new();
    for r in runs {
        if !policies.contains(&r.policy) {
            policies.push(r.policy.clone());
        }
        if !seeds.contains(&r.seed) {
            seeds.push(r.seed);
        }
    }
    let mut by: BTreeMap<String, Vec<RunNumbers>> = BTreeMap::new();
    for r in runs {
        by.entry(r.policy.clone()).or_default().push(numbers(r));
    }
    let first = seeds.first().copied();
    let mut series_map = BTreeMap::new();
    let mut decisions = BTreeMap::new();
    for r in runs.iter().filter(|r| Some(r.seed) == first) {
        let start = start_ms.get(&r.seed).copied().unwrap_or(0);
        series_map.insert(r.policy.clone(), series(&r.batches, &s.route, start));
        decisions.insert(r.policy.clone(), r.decisions.clone());
    }
    Results {
        scenario: s.name.clone(),
        purpose: s.file.purpose.clone(),
        route: s.route.clone(),
        summary: policies
            .iter()
            .map(|p| summarize(p, by.get(p).map_or(&[][..], |v| v.as_slice())))
            .collect(),
        policies,
        seeds,
        faults: s.faults.clone(),
        warmup_s: s.file.warmup.map(|d| d.as_secs_f64()),
        runs: by,
        series: series_map,
        decisions,
    }
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `report.md`.
pub fn markdown(r: &Results, plots: &[(&str, &str)]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Simulation: {}\n\n{}\n", r.scenario, r.purpose);
    let seeds: Vec<String> = r.seeds.iter().map(u64::to_string).collect();
    let _ = writeln!(
        o,
        "Route `{}`, seeds {} (median over seeds, worst in brackets). Latency is of the \
         successful requests, from their scheduled arrival; error rate counts upstream errors \
         and requests left without an endpoint; goodput is successful requests per simulated \
         second.\n",
        r.route,
        seeds.join(", ")
    );
    if let Some(w) = r.warmup_s {
        let _ = writeln!(
            o,
            "Requests arriving in the first {w} s (warm-up) are simulated but not counted.\n"
        );
    }
    if !r.faults.is_empty() {
        let _ = writeln!(o, "Faults:");
        for f in &r.faults {
            let until = if f.until == std::time::Duration::MAX {
                "the end".to_string()
            } else {
                format!("{:.0} s", f.until.as_secs_f64())
            };
            let _ = writeln!(
                o,
                "- {:.0} s to {until}: {}",
                f.from.as_secs_f64(),
                serde_json::to_string(&f.kind).unwrap_or_default()
            );
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(
        o,
        "| policy | p50 ms | p99 ms | p99.9 ms | error rate | goodput /s | retries |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
    for s in &r.summary {
        let _ = writeln!(
            o,
            "| {} | {} [{}] | {} [{}] | {} [{}] | {:.2} % [{:.2} %] | {:.1} [{:.1}] | {:.0} [{:.0}] |",
            s.policy,
            fmt_ms(s.p50_ms.median),
            fmt_ms(s.p50_ms.worst),
            fmt_ms(s.p99_ms.median),
            fmt_ms(s.p99_ms.worst),
            fmt_ms(s.p999_ms.median),
            fmt_ms(s.p999_ms.worst),
            s.error_rate.median * 100.0,
            s.error_rate.worst * 100.0,
            s.goodput_rps.median,
            s.goodput_rps.worst,
            s.retries.median,
            s.retries.worst,
        );
    }
    let classes: Vec<Priority> = r
        .summary
        .first()
        .map(|s| s.shed.keys().copied().collect())
        .unwrap_or_default();
    if classes.len() > 1
        || r.summary
            .iter()
            .any(|s| s.shed.values().any(|v| v.worst > 0.0))
    {
        let _ = writeln!(
            o,
            "\nBy priority class (median over seeds): shed, limited, p99 ms.\n"
        );
        let mut head = "| policy |".to_string();
        let mut rule = "|---|".to_string();
        for c in &classes {
            let _ = write!(
                head,
                " {} shed | {} limited | {} p99 |",
                c.as_str(),
                c.as_str(),
                c.as_str()
            );
            rule.push_str("---:|---:|---:|");
        }
        let _ = writeln!(o, "{head}\n{rule}");
        for s in &r.summary {
            let mut line = format!("| {} |", s.policy);
            for c in &classes {
                let g = |m: &BTreeMap<Priority, Spread>| m.get(c).map_or(0.0, |x| x.median);
                let _ = write!(
                    line,
                    " {:.0} | {:.0} | {} |",
                    g(&s.shed),
                    g(&s.limited),
                    fmt_ms(g(&s.class_p99_ms))
                );
            }
            let _ = writeln!(o, "{line}");
        }
    }
    if !plots.is_empty() {
        let _ = writeln!(o, "\n## Plots\n");
        for (title, file) in plots {
            let _ = writeln!(o, "### {title}\n\n![{title}]({file})\n");
        }
    }
    let _ = writeln!(o, "## Decision timeline (first seed)\n");
    for (policy, ds) in &r.decisions {
        let _ = writeln!(o, "**{policy}**: {} entries", ds.len());
        for d in ds.iter().take(40) {
            let _ = writeln!(o, "- {:.2} s, {}: {}", d.at_s, d.instance, d.what);
        }
        if ds.len() > 40 {
            let _ = writeln!(o, "- ... {} more in results.json", ds.len() - 40);
        }
        let _ = writeln!(o);
    }
    o
}

pub fn write(dir: &Path, name: &str, body: &str) -> Result<(), SimError> {
    let p = dir.join(name);
    std::fs::write(&p, body).map_err(|source| SimError::Write {
        path: p.display().to_string(),
        source,
    })
}
