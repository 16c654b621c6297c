//! `vivremotion datasets ...` (list, describe and export the public traces) and
//! `vivremotion eval ...` (the models judged on them) and `vivremotion sim ...` (the
//! simulator).

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use vivremotion_datasets::{catalog, describe, export, Data, ENTRIES};

pub fn list(root: Option<&Path>) -> Result<()> {
    let root = catalog::root(root);
    println!(
        "dataset root: {}",
        std::fs::canonicalize(&root)
            .unwrap_or_else(|_| root.clone())
            .display()
    );
    for e in ENTRIES {
        let present = e.files.iter().all(|f| root.join(f).exists());
        let size: u64 = e.files.iter().map(|f| catalog::size(&root.join(f))).sum();
        println!(
            "{:<30} {:<6} {:>9} {}{}",
            e.name,
            match e.kind {
                catalog::Kind::Trace => "trace",
                catalog::Kind::Series => "series",
            },
            format!("{:.0} KiB", size as f64 / 1024.0),
            e.about,
            if present { "" } else { "  [missing]" }
        );
    }
    Ok(())
}

pub fn describe(root: Option<&Path>, name: &str) -> Result<()> {
    let root = catalog::root(root);
    let entry = catalog::entry(name)?;
    let data = catalog::load(&root, name)?;
    print!("{}", describe::describe(&entry, &root, &data));
    Ok(())
}

pub fn export(
    root: Option<&Path>,
    name: &str,
    format: export::Format,
    resample: Option<std::time::Duration>,
    out: Option<PathBuf>,
    seed: u64,
) -> Result<()> {
    let root = catalog::root(root);
    let data = catalog::load(&root, name)?;
    let step = resample.map(|d| ms(d, "--resample")).transpose()?;
    let mut df = export::frame(&data, step, seed)?;
    let ext = match format {
        export::Format::Csv => "csv",
        export::Format::Parquet => "parquet",
    };
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{}.{ext}", name.replace('/', "_"))));
    export::write(&mut df, &out, format)?;
    let what = match (&data, step) {
        (Data::Trace(_) | Data::Clients(_), None) => "arrivals",
        (Data::Trace(_) | Data::Clients(_), Some(_)) => "buckets of arrival counts",
        (Data::Series(_), _) => "points",
    };
    println!("wrote {} {what} to {}", df.height(), out.display());
    Ok(())
}

fn ms(d: std::time::Duration, what: &str) -> Result<i64> {
    let v = i64::try_from(d.as_millis()).with_context(|| format!("{what} is too long"))?;
    anyhow::ensure!(v > 0, "{what} must be at least 1ms");
    Ok(v)
}

pub fn eval_forecast(
    dataset: String,
    resample: Option<std::time::Duration>,
    horizons: Vec<std::time::Duration>,
    out: PathBuf,
    mstl: bool,
    root: Option<PathBuf>,
) -> Result<()> {
    use vivremotion_simulations::eval::forecast;
    let args = forecast::Args {
        dataset,
        root: catalog::root(root.as_deref()),
        resample_ms: resample.map(|d| ms(d, "--resample")).transpose()?,
        horizons_ms: horizons
            .into_iter()
            .map(|d| ms(d, "a horizon"))
            .collect::<Result<_>>()?,
        out,
        season_ms: 86_400_000,
        every_ms: 3_600_000,
        mstl,
    };
    let r = forecast::run(&args)?;
    println!("{}: chose {}", r.dataset, r.chosen.label());
    for h in &r.horizons {
        println!(
            "  {:>8}  MASE {:.3} (seasonal naive {:.3})  sMAPE {:.2} %  80 % covers {:.1} %  95 % covers {:.1} %",
            describe::duration(h.horizon_ms),
            h.mase,
            h.mase_naive,
            h.smape,
            100.0 * h.coverage80,
            100.0 * h.coverage95
        );
    }
    println!("report: {}", args.out.join("report.md").display());
    Ok(())
}

pub fn eval_anomaly(
    nab: Option<PathBuf>,
    detector: String,
    out: PathBuf,
    plots: bool,
) -> Result<()> {
    use vivremotion_simulations::eval::anomaly;
    let args = anomaly::Args {
        nab: nab.unwrap_or_else(|| catalog::root(None).join("nab")),
        detector,
        out,
        plots,
    };
    let r = anomaly::run(&args)?;
    println!("{}: {} series, {} points", r.detector, r.series, r.points);
    for p in &r.profiles {
        println!(
            "  {:<20} NAB score {:6.2}  (threshold {:.4}, {} of {} windows hit, {} false alarms)",
            p.profile.name,
            p.normalised,
            p.best.threshold,
            p.best.windows_hit,
            p.windows,
            p.best.fp
        );
    }
    println!("report: {}", args.out.join("report.md").display());
    Ok(())
}

pub fn sim_list() -> Result<()> {
    use vivremotion_simulations::sim::scenario;
    let shipped = scenario::shipped();
    anyhow::ensure!(
        !shipped.is_empty(),
        "no scenarios in {}",
        scenario::shipped_dir().display()
    );
    for (name, path) in shipped {
        match scenario::load_file(&path) {
            Ok(s) => println!("{name:<24} {}", s.file.purpose),
            Err(e) => println!("{name:<24} [invalid: {e}]"),
        }
    }
    Ok(())
}

pub fn sim_run(
    scenario: &str,
    policies: &str,
    seeds: &str,
    out: &Path,
    root: Option<PathBuf>,
    plots: bool,
) -> Result<()> {
    use vivremotion_simulations::sim;
    let s = sim::scenario::load(scenario)?;
    let policies = sim::parse_policies(policies)?;
    let seeds = sim::parse_seeds(seeds)?;
    let datasets = catalog::root(root.as_deref());
    // Wall time of the whole command, printed for the person running it.
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    let r = sim::run_all(&sim::RunAll {
        scenario: &s,
        policies: &policies,
        seeds: &seeds,
        datasets: &datasets,
        out,
        plots,
        progress: true,
    })?;
    println!(
        "{}: {} policies x {} seeds in {:.1} s",
        r.scenario,
        r.policies.len(),
        r.seeds.len(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "  {:<14} {:>10} {:>10} {:>10} {:>9} {:>11}",
        "policy", "p50 ms", "p99 ms", "p99.9 ms", "errors", "goodput/s"
    );
    for p in &r.summary {
        println!(
            "  {:<14} {:>10.2} {:>10.2} {:>10.2} {:>8.2}% {:>11.1}",
            p.policy,
            p.p50_ms.median,
            p.p99_ms.median,
            p.p999_ms.median,
            100.0 * p.error_rate.median,
            p.goodput_rps.median
        );
    }
    println!("report: {}", out.join("report.md").display());
    Ok(())
}
