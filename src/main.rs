//! The `vivremotion` binary: parses the command line, builds the app, waits for shutdown.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use vivremotion_proxy::config::{Config, ConfigError};
use vivremotion_proxy::demo::{DemoSettings, DemoUpstream, DemoUpstreams};
use vivremotion_proxy::{App, AppOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "vivremotion",
    version,
    about = "Adaptive, ML-driven traffic orchestrator"
)]
struct Cli {
    /// Format of the process log on stderr (level with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines (coloured only on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// The config file, as `--config FILE` or just `FILE`: the same for every subcommand.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct ConfigFile {
    /// The TOML config file (every field is documented in examples/vivremotion.toml).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The same, without --config.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
}

impl ConfigFile {
    fn path(self) -> PathBuf {
        self.config.or(self.file).unwrap_or_default()
    }
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process on embedded defaults: proxy, admin API, three demo upstreams.
    Up {
        /// Proxy listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin API listener.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Worker threads (0 = one per core).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Write an access log (one JSON line per request) to FILE, `stdout` or `stderr`.
        #[arg(long, value_name = "FILE")]
        access_log: Option<String>,
    },
    /// Run the data-plane proxy from a config file (reloaded on SIGHUP and on change).
    Proxy {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Validate a config file: exit 0 if valid, else print each error with its line and
    /// field path and exit 1.
    CheckConfig {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Print every decision of a fixed scenario (three endpoints, retries, a queue) run through
    /// the decision core on virtual time: the same seed prints the same bytes, anywhere.
    Trace {
        /// Seed of the decisions and of the scenario's traffic.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Requests in the scenario.
        #[arg(long, default_value_t = 1000)]
        requests: usize,
    },
    /// The public traces (../shared/datasets): list them, describe one, export one.
    Datasets {
        /// Dataset root (default: $VIVREMOTION_DATASETS, else ../shared/datasets).
        #[arg(long, global = true, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Seed of generated arrivals (ServeGen clients, exported).
        #[arg(long, global = true, default_value_t = 1)]
        seed: u64,
        #[command(subcommand)]
        command: DatasetsCommand,
    },
    /// Replay traces through the proxy's decision core on virtual time, with faults, and
    /// compare policies.
    Sim {
        #[command(subcommand)]
        command: SimCommand,
    },
    /// Judge the models on real data (reports, JSON and SVG plots in --out).
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
    /// Run one standalone demo upstream: it answers every request with what it received.
    DemoUpstream {
        /// Address to listen on (port 0: any free port, printed on start).
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        /// Name reported in its answers (`upstream`).
        #[arg(long, default_value = "demo")]
        name: String,
        /// Time to answer, in milliseconds.
        #[arg(long, default_value_t = 5.0)]
        latency_ms: f64,
        /// Random extra time, uniform in 0..jitter, in milliseconds.
        #[arg(long, default_value_t = 0.0)]
        jitter_ms: f64,
        /// Share of requests answered 503.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Requests served at once (0: no limit); the rest wait in line.
        #[arg(long, default_value_t = 0)]
        max_concurrent: u32,
    },
}

#[derive(Subcommand)]
enum DatasetsCommand {
    /// Every dataset with its kind, size and what it is.
    List,
    /// Files, span, counts and basic statistics of one dataset.
    Describe { name: String },
    /// Write a dataset as a table (a trace: one row per arrival; series: long format).
    Export {
        name: String,
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
        /// Resample to this step (e.g. 1m, 10s): series by their measure (sum of counts, mean
        /// of levels), a trace into arrival counts per step.
        #[arg(long, value_parser = humantime::parse_duration)]
        resample: Option<std::time::Duration>,
        /// Output file (default NAME.csv or NAME.parquet in the working directory).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Rolling-origin backtest, one origin per hour: MASE and sMAPE per horizon against the
    /// one-day seasonal naive forecast, and the coverage of the 80 % and 95 % intervals.
    Forecast {
        /// A name from `datasets list`, or a CSV of timestamp,value, or a per-second count file.
        #[arg(long)]
        dataset: String,
        /// Resample first (e.g. 1m): counts are summed, levels averaged.
        #[arg(long, value_parser = humantime::parse_duration)]
        resample: Option<std::time::Duration>,
        /// Horizons, comma-separated.
        #[arg(long, value_delimiter = ',', value_parser = humantime::parse_duration, default_value = "5m,15m,60m")]
        horizons: Vec<std::time::Duration>,
        /// Output folder for report.md, results.json and the plots.
        #[arg(long)]
        out: PathBuf,
        /// Leave MSTL + ETS out of the candidates (it refits at every origin: the slow one).
        #[arg(long)]
        no_mstl: bool,
        /// Dataset root (default: $VIVREMOTION_DATASETS, else ../shared/datasets).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
    },
    /// Runs a streaming detector over every series of a NAB-layout folder, writes NAB's result
    /// layout and scores it with a built-in copy of NAB's scorer (standard, low-FP and low-FN
    /// profiles, normalised against NAB's null detector).
    Anomaly {
        /// A folder with data/<category>/*.csv and labels/combined_windows.json
        /// (default: the dataset root's nab/).
        #[arg(long, value_name = "DIR")]
        nab: Option<PathBuf>,
        /// combined, residual or changepoint.
        #[arg(long, default_value = "combined")]
        detector: String,
        /// Output folder: <detector>/<category>/<detector>_<file>.csv, report.md,
        /// results.json and plots/.
        #[arg(long)]
        out: PathBuf,
        /// Skip the chart per series.
        #[arg(long)]
        no_plots: bool,
    },
}

#[derive(Subcommand)]
enum SimCommand {
    /// The shipped scenarios, each with what it judges.
    List,
    /// Run every policy on every seed (identical arrivals and faults per seed) and write
    /// report.md, results.json and SVG plots to --out.
    Run {
        /// A shipped scenario's name (`sim list`) or a scenario file.
        scenario: String,
        /// Comma-separated: rr, least-request, p2c-ewma, static, oracle.
        #[arg(long, default_value = "rr,least-request,p2c-ewma,static,oracle")]
        policies: String,
        /// One seed (7), a list (1,3,9) or a range (1..5).
        #[arg(long, default_value = "1")]
        seeds: String,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Dataset root (default: $VIVREMOTION_DATASETS, else ../shared/datasets).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Skip the charts.
        #[arg(long)]
        no_plots: bool,
    },
    /// Drive a running proxy open-loop at a trace's arrival times (each request sent when it
    /// is due, its latency measured from then) and print the table `sim run` prints.
    Replay {
        /// A name from `datasets list`.
        #[arg(long)]
        trace: String,
        /// FROM..TO, offsets from the trace's start (e.g. 13h..13h5m).
        #[arg(long)]
        slice: Option<String>,
        /// Arrivals ×k.
        #[arg(long, default_value_t = 1.0)]
        rate_scale: f64,
        /// Where to send: a URL on the proxy's listener.
        #[arg(long)]
        target: String,
        /// Play the trace this many times faster.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Seed of the arrivals generated from counts.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Give up on a request after this long.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        timeout: std::time::Duration,
        /// Write results.json here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Dataset root (default: $VIVREMOTION_DATASETS, else ../shared/datasets).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    Csv,
    Parquet,
}

#[cfg(feature = "sim")]
mod datasets_cli;
#[cfg(feature = "sim")]
mod replay;

#[cfg(feature = "sim")]
fn run_datasets(root: Option<PathBuf>, seed: u64, command: DatasetsCommand) -> Result<()> {
    use vivremotion_datasets::export::Format;
    let root = root.as_deref();
    match command {
        DatasetsCommand::List => datasets_cli::list(root),
        DatasetsCommand::Describe { name } => datasets_cli::describe(root, &name),
        DatasetsCommand::Export {
            name,
            format,
            resample,
            out,
        } => {
            let format = match format {
                ExportFormat::Csv => Format::Csv,
                ExportFormat::Parquet => Format::Parquet,
            };
            datasets_cli::export(root, &name, format, resample, out, seed)
        }
    }
}

#[cfg(feature = "sim")]
fn run_eval(command: EvalCommand) -> Result<()> {
    match command {
        EvalCommand::Forecast {
            dataset,
            resample,
            horizons,
            out,
            no_mstl,
            root,
        } => datasets_cli::eval_forecast(dataset, resample, horizons, out, !no_mstl, root),
        EvalCommand::Anomaly {
            nab,
            detector,
            out,
            no_plots,
        } => datasets_cli::eval_anomaly(nab, detector, out, !no_plots),
    }
}

#[cfg(feature = "sim")]
fn run_sim(command: SimCommand) -> Result<()> {
    match command {
        SimCommand::List => datasets_cli::sim_list(),
        SimCommand::Run {
            scenario,
            policies,
            seeds,
            out,
            root,
            no_plots,
        } => datasets_cli::sim_run(&scenario, &policies, &seeds, &out, root, !no_plots),
        SimCommand::Replay {
            trace,
            slice,
            rate_scale,
            target,
            speed,
            seed,
            timeout,
            out,
            root,
        } => replay::command(replay::Command {
            trace,
            slice,
            rate_scale,
            target,
            speed,
            seed,
            timeout,
            out,
            root,
        }),
    }
}

#[cfg(not(feature = "sim"))]
fn run_sim(_: SimCommand) -> Result<()> {
    anyhow::bail!("this binary was built without the simulator (cargo feature `sim`); rebuild with default features")
}

#[cfg(not(feature = "sim"))]
fn run_eval(_: EvalCommand) -> Result<()> {
    anyhow::bail!("this binary was built without the evaluations (cargo feature `sim`); rebuild with default features")
}

#[cfg(not(feature = "sim"))]
fn run_datasets(_: Option<PathBuf>, _: u64, _: DatasetsCommand) -> Result<()> {
    anyhow::bail!("this binary was built without the datasets (cargo feature `sim`); rebuild with default features")
}

fn init_logs(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour codes only where a person reads them: not in files, pipes or journald.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The simulator runs the decision core, whose logs (ejections, breakers) carry wall-clock
    // times that mean nothing there: its report's decision timeline has them on virtual time.
    let default_filter = match cli.command {
        Command::Sim { .. } => "info,vivremotion_decide=off",
        _ => "info",
    };
    init_logs(cli.log_format, default_filter);
    let result = match cli.command {
        Command::CheckConfig { config } => return check_config(&config.path()),
        Command::Proxy { config } => run_proxy(config.path()),
        Command::Trace { seed, requests } => run_trace(seed, requests),
        Command::Datasets {
            root,
            seed,
            command,
        } => run_datasets(root, seed, command),
        Command::Eval { command } => run_eval(command),
        Command::Sim { command } => run_sim(command),
        Command::Up {
            listen,
            admin,
            workers,
            access_log,
        } => run_up(listen, admin, workers, access_log),
        Command::DemoUpstream {
            listen,
            name,
            latency_ms,
            jitter_ms,
            error_rate,
            max_concurrent,
        } => run_demo_upstream(
            listen,
            name,
            DemoSettings {
                latency_ms,
                jitter_ms,
                error_rate,
                down: false,
                max_concurrent,
            },
        ),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "error: {}",
                vivremotion_proxy::error::error_chain(e.as_ref())
            );
            std::process::ExitCode::FAILURE
        }
    }
}

/// `FILE: invalid` and every error of the file on its own indented line.
fn invalid(file: &std::path::Path, e: &ConfigError) -> String {
    let mut s = format!("{}: invalid", file.display());
    for line in e.to_string().lines() {
        s.push_str("\n  ");
        s.push_str(line);
    }
    s
}

fn check_config(file: &std::path::Path) -> std::process::ExitCode {
    match Config::load(file) {
        Ok(c) => {
            println!(
                "{}: ok ({} listeners, {} clusters, {} routes)",
                file.display(),
                c.listeners.len(),
                c.clusters.len(),
                c.routes.len()
            );
            for w in c.warnings() {
                eprintln!("  warning: {w}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}", invalid(file, &e));
            std::process::ExitCode::FAILURE
        }
    }
}

fn control_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("vm-control")
        .build()
        .context("cannot start the control runtime")
}

/// Resolves at the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term_recv = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term_recv => {}
    }
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("second interrupt: exiting without waiting for in-flight requests");
            std::process::exit(130);
        }
    });
}

fn ready_line(app: &App) -> String {
    let listeners: Vec<String> = app
        .listener_addrs()
        .iter()
        .map(|(n, a)| format!("{n}@{a}"))
        .collect();
    format!(
        "ready listeners={} admin={} seed={}",
        listeners.join(","),
        app.admin_addr(),
        app.seed()
    )
}

fn run_trace(seed: u64, requests: usize) -> Result<()> {
    use std::io::Write;
    let mut text = String::new();
    vivremotion_proxy::trace::run(seed, requests, &mut text).context("formatting the trace")?;
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing the trace")?;
    Ok(())
}

fn run_proxy(path: PathBuf) -> Result<()> {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e @ ConfigError::Read { .. }) => return Err(e.into()),
        Err(e) => anyhow::bail!("{}", invalid(&path, &e)),
    };
    for w in config.warnings() {
        tracing::warn!("{}: {w}", path.display());
    }
    let rt = control_runtime()?;
    let mut opts = AppOptions::new(config);
    opts.config_path = Some(path);
    let app = App::build(opts)?;
    println!("{}", ready_line(&app));
    tracing::info!("{}", ready_line(&app));
    rt.block_on(app.run(shutdown_signal()))?;
    Ok(())
}

fn up_config(
    listen: SocketAddr,
    admin: SocketAddr,
    workers: usize,
    access_log: Option<&str>,
    demo: &DemoUpstreams,
) -> Result<Config> {
    let endpoints: Vec<String> = demo
        .all()
        .iter()
        .map(|u| format!("\"{}\"", u.addr()))
        .collect();
    let text = format!(
        r#"
[proxy]
workers = {workers}
instance_id = "up"

[admin]
listen = "{admin}"

[[listeners]]
name = "main"
listen = "{listen}"

[clusters.demo]
endpoints = [{endpoints}]
balancer = "p2c_peak_ewma"

# A demo upstream set "down" leaves rotation within about two seconds.
[clusters.demo.health_check]
path = "/healthz"
interval = "1s"
timeout = "500ms"
jitter = "100ms"
healthy_threshold = 1
unhealthy_threshold = 2

[[routes]]
name = "demo"
cluster = "demo"
timeout = "10s"
{access_log}
"#,
        endpoints = endpoints.join(", "),
        access_log = access_log
            .map(|p| format!("\n[access_log]\npath = {}\n", toml::Value::from(p)))
            .unwrap_or_default(),
    );
    Ok(Config::parse(&text)?)
}

fn run_up(
    listen: SocketAddr,
    admin: SocketAddr,
    workers: usize,
    access_log: Option<String>,
) -> Result<()> {
    let rt = control_runtime()?;
    rt.block_on(async {
        let demo = DemoUpstreams::start_default(7).await.context("cannot start demo upstreams")?;
        let config = up_config(listen, admin, workers, access_log.as_deref(), &demo)?;
        let mut opts = AppOptions::new(config);
        opts.demo = Some(demo.clone());
        let app = App::build(opts)?;
        let proxy = app.listener_addrs().first().map(|(_, a)| *a).unwrap_or(listen);
        let admin = app.admin_addr();
        let names: Vec<String> = demo
            .all()
            .iter()
            .map(|u| {
                let s = u.settings();
                format!("{} ({}, ~{} ms)", u.name, u.addr(), s.latency_ms + s.jitter_ms / 2.0)
            })
            .collect();
        println!(
            "vivremotion is up\n\
             \x20 proxy      http://{proxy}/        (HTTP/1.1 and h2c)\n\
             \x20 admin      http://{admin}/metrics  /api/v1/upstreams  /api/v1/telemetry\n\
             \x20 upstreams  {}\n\
             \n\
             Try:\n\
             \x20 curl -s http://{proxy}/hello\n\
             \x20 curl -s http://{admin}/api/v1/upstreams\n\
             \x20 curl -s -X POST http://{admin}/api/v1/demo/upstreams/alpha -d '{{\"latency_ms\": 200}}'\n\
             \n\
             {}\n\
             Ctrl-C drains in-flight requests and exits.",
            names.join(", "),
            ready_line(&app)
        );
        app.run(shutdown_signal()).await?;
        for u in demo.all() {
            u.stop();
        }
        Ok(())
    })
}

fn run_demo_upstream(listen: SocketAddr, name: String, settings: DemoSettings) -> Result<()> {
    let rt = control_runtime()?;
    rt.block_on(async {
        let u: Arc<DemoUpstream> = DemoUpstream::new(&name, listen, settings, 1);
        let addr = u
            .start()
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        println!("ready demo-upstream {name}@{addr}");
        shutdown_signal().await;
        u.stop();
        Ok(())
    })
}
