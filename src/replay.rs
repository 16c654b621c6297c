//! `vivremotion sim replay`: drives a running proxy open-loop at a trace's arrival times.
//!
//! Each request is sent at its scheduled time whatever happened to the ones before (no
//! coordinated omission: a slow answer never delays the next send), and its latency is
//! measured from the time it was scheduled, not from when it went out. The arrivals are the
//! simulator's own (`sim::prepare_from`), so a replay and a simulation of the same slice and
//! seed send the same requests.

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;
use vivremotion_protocol::telemetry::Priority;
use vivremotion_simulations::sim::engine::Arrival;

/// `sim replay` as given on the command line.
pub struct Command {
    pub trace: String,
    pub slice: Option<String>,
    pub rate_scale: f64,
    pub target: String,
    pub speed: f64,
    pub seed: u64,
    pub timeout: Duration,
    pub out: Option<std::path::PathBuf>,
    pub root: Option<std::path::PathBuf>,
}

/// Checks the target, prepares the slice's arrivals as the simulator does, replays them,
/// prints the table and writes `results.json` if asked.
pub fn command(c: Command) -> Result<()> {
    let target: http::Uri = c
        .target
        .parse()
        .with_context(|| format!("--target {:?} is not a URL", c.target))?;
    anyhow::ensure!(
        target.scheme_str() == Some("http") && target.authority().is_some(),
        "--target {target}: give an http:// URL with a host and port"
    );
    let spec = vivremotion_simulations::sim::scenario::TraceSpec {
        dataset: c.trace.clone(),
        slice: c.slice,
        rate_scale: c.rate_scale,
        time_scale: 1.0,
        rate: None,
    };
    let root = vivremotion_datasets::catalog::root(c.root.as_deref());
    let prep = vivremotion_simulations::sim::prepare_from(
        &vivremotion_simulations::sim::TraceInput {
            spec: &spec,
            duration: None,
            mix: &[],
            faults: &[],
            tick_ms: 1000,
        },
        &root,
        c.seed,
    )?;
    let summary = crate::control_runtime()?.block_on(run(&Args {
        arrivals: &prep.arrivals,
        target,
        speed: c.speed,
        timeout: c.timeout,
        trace: &c.trace,
    }))?;
    print(&summary);
    if let Some(out) = c.out {
        write(&out, &summary)?;
    }
    Ok(())
}

struct Args<'a> {
    pub arrivals: &'a [Arrival],
    pub target: http::Uri,
    pub speed: f64,
    pub timeout: Duration,
    pub trace: &'a str,
}

/// One request's fate.
#[derive(Clone, Copy)]
struct Rec {
    priority: Priority,
    /// Scheduled send time, from the start.
    scheduled: Duration,
    /// How late the send actually was.
    lag: Duration,
    /// Scheduled send → response headers (or the failure).
    latency: Duration,
    /// 0: no answer (connection failure or timeout).
    status: u16,
}

#[derive(serde::Serialize)]
pub struct Summary {
    pub trace: String,
    pub target: String,
    pub speed: f64,
    pub requests: usize,
    /// Arrivals per second the trace asks for at this speed (first to last arrival).
    pub trace_rate: f64,
    /// Sends per second achieved (first to last actual send).
    pub sent_rate: f64,
    pub rate_error_percent: f64,
    pub send_lag_p99_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub ok: usize,
    pub error_rate: f64,
    pub goodput_rps: f64,
    /// Per class: requests, 2xx/3xx, 503 (shed), 429 (limited), p99 ms of the successful.
    pub classes: Vec<ClassSummary>,
    pub statuses: std::collections::BTreeMap<u16, usize>,
}

#[derive(serde::Serialize)]
pub struct ClassSummary {
    pub priority: Priority,
    pub requests: usize,
    pub ok: usize,
    pub shed: usize,
    pub limited: usize,
    pub p99_ms: f64,
}

fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

// Replay measures real time: it is the binary's edge, not decision code.
#[allow(clippy::disallowed_methods)]
async fn run(a: &Args<'_>) -> Result<Summary> {
    anyhow::ensure!(!a.arrivals.is_empty(), "the trace slice has no arrivals");
    anyhow::ensure!(
        a.speed.is_finite() && a.speed > 0.0,
        "--speed must be above 0"
    );
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Rec>();
    let start = Instant::now() + Duration::from_millis(50);
    let mut first_sent = None;
    let mut last_sent = start;
    for arr in a.arrivals {
        let scheduled = Duration::from_nanos((arr.t_ns as f64 / a.speed) as u64);
        let at = start + scheduled;
        tokio::time::sleep_until(at).await;
        let sent = Instant::now();
        first_sent.get_or_insert(sent);
        last_sent = sent;
        let req = http::Request::get(a.target.clone())
            .header("x-priority", arr.priority.as_str())
            .header(http::header::USER_AGENT, "vivremotion-replay")
            .body(Empty::<Bytes>::new())
            .context("building the request")?;
        let (client, tx, timeout, priority) = (client.clone(), tx.clone(), a.timeout, arr.priority);
        tokio::spawn(async move {
            let status = match tokio::time::timeout(timeout, client.request(req)).await {
                Ok(Ok(resp)) => {
                    let s = resp.status().as_u16();
                    // Read the body so the connection goes back to the pool.
                    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                    s
                }
                _ => 0,
            };
            let _ = tx.send(Rec {
                priority,
                scheduled,
                lag: sent.saturating_duration_since(at),
                latency: Instant::now().saturating_duration_since(at),
                status,
            });
        });
    }
    drop(tx);
    let mut recs = Vec::with_capacity(a.arrivals.len());
    while let Some(r) = rx.recv().await {
        recs.push(r);
    }
    Ok(summarize(
        a,
        &recs,
        first_sent.map_or(Duration::ZERO, |f| last_sent - f),
    ))
}

fn summarize(a: &Args<'_>, recs: &[Rec], sent_span: Duration) -> Summary {
    let n = recs.len();
    let trace_span = Duration::from_nanos(
        ((a.arrivals.last().map_or(0, |x| x.t_ns) - a.arrivals.first().map_or(0, |x| x.t_ns))
            as f64
            / a.speed) as u64,
    );
    let rate = |span: Duration| {
        if span.is_zero() {
            0.0
        } else {
            (n.saturating_sub(1)) as f64 / span.as_secs_f64()
        }
    };
    let (trace_rate, sent_rate) = (rate(trace_span), rate(sent_span));
    let ok_lat = |f: &dyn Fn(&Rec) -> bool| {
        let mut v: Vec<Duration> = recs
            .iter()
            .filter(|r| (200..400).contains(&r.status) && f(r))
            .map(|r| r.latency)
            .collect();
        v.sort_unstable();
        v
    };
    let all = ok_lat(&|_| true);
    let mut lags: Vec<Duration> = recs.iter().map(|r| r.lag).collect();
    lags.sort_unstable();
    let mut statuses = std::collections::BTreeMap::new();
    for r in recs {
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    let errors = recs
        .iter()
        .filter(|r| r.status == 0 || (r.status >= 500 && r.status != 503))
        .count();
    let span_s = recs
        .iter()
        .map(|r| r.scheduled)
        .max()
        .unwrap_or_default()
        .as_secs_f64();
    let classes = Priority::ALL
        .iter()
        .filter_map(|p| {
            let of: Vec<&Rec> = recs.iter().filter(|r| r.priority == *p).collect();
            if of.is_empty() {
                return None;
            }
            let lat = ok_lat(&|r| r.priority == *p);
            Some(ClassSummary {
                priority: *p,
                requests: of.len(),
                ok: lat.len(),
                shed: of.iter().filter(|r| r.status == 503).count(),
                limited: of.iter().filter(|r| r.status == 429).count(),
                p99_ms: quantile_ms(&lat, 0.99),
            })
        })
        .collect();
    Summary {
        trace: a.trace.to_string(),
        target: a.target.to_string(),
        speed: a.speed,
        requests: n,
        trace_rate,
        sent_rate,
        rate_error_percent: if trace_rate > 0.0 {
            100.0 * (sent_rate - trace_rate) / trace_rate
        } else {
            0.0
        },
        send_lag_p99_ms: quantile_ms(&lags, 0.99),
        p50_ms: quantile_ms(&all, 0.5),
        p99_ms: quantile_ms(&all, 0.99),
        p999_ms: quantile_ms(&all, 0.999),
        ok: all.len(),
        error_rate: if n == 0 {
            0.0
        } else {
            errors as f64 / n as f64
        },
        goodput_rps: if span_s > 0.0 {
            all.len() as f64 / span_s
        } else {
            0.0
        },
        classes,
        statuses,
    }
}

/// The table `sim run` prints, for one live run.
fn print(s: &Summary) {
    println!(
        "replayed {} requests of {} against {} at speed {}: trace rate {:.2}/s, sent {:.2}/s ({:+.2} %), send lag p99 {:.2} ms",
        s.requests, s.trace, s.target, s.speed, s.trace_rate, s.sent_rate, s.rate_error_percent, s.send_lag_p99_ms
    );
    println!(
        "  {:<14} {:>10} {:>10} {:>10} {:>9} {:>11}",
        "live proxy", "p50 ms", "p99 ms", "p99.9 ms", "errors", "goodput/s"
    );
    println!(
        "  {:<14} {:>10.2} {:>10.2} {:>10.2} {:>8.2}% {:>11.1}",
        "",
        s.p50_ms,
        s.p99_ms,
        s.p999_ms,
        100.0 * s.error_rate,
        s.goodput_rps
    );
    for c in &s.classes {
        println!(
            "  {:<14} {} requests, {} ok, {} shed, {} limited, p99 {:.2} ms",
            c.priority.as_str(),
            c.requests,
            c.ok,
            c.shed,
            c.limited,
            c.p99_ms
        );
    }
    let st: Vec<String> = s
        .statuses
        .iter()
        .map(|(k, v)| {
            if *k == 0 {
                format!("no answer: {v}")
            } else {
                format!("{k}: {v}")
            }
        })
        .collect();
    println!("  statuses: {}", st.join(", "));
}

fn write(out: &Path, s: &Summary) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(s)?;
    std::fs::write(out.join("results.json"), json)
        .with_context(|| format!("writing {}", out.join("results.json").display()))?;
    Ok(())
}
