//! `vivremotion eval forecast`: a rolling-origin backtest on one series. The forecaster is
//! chosen per series on the first half of the origins and judged on the second half, against
//! the seasonal naive baseline (one-day season) on the same origins.

use super::{progress, write, EvalError};
use crate::plot;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use vivremotion_datasets::{catalog, describe::duration, Series};
use vivremotion_models::forecast::backtest::{self, HorizonRun, Spec, Trial};
use vivremotion_models::forecast::{seasons, Setup};

pub struct Args {
    /// A dataset name or a file of the user's.
    pub dataset: String,
    pub root: PathBuf,
    pub resample_ms: Option<i64>,
    pub horizons_ms: Vec<i64>,
    pub out: PathBuf,
    /// The baseline's season (one day).
    pub season_ms: i64,
    /// Time between origins (one hour).
    pub every_ms: i64,
    /// Include MSTL + ETS among the candidates (it refits at every origin).
    pub mstl: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct HorizonRow {
    pub horizon_ms: i64,
    pub steps: usize,
    pub origins: usize,
    pub mase: f64,
    pub mase_naive: f64,
    pub smape: f64,
    pub smape_naive: f64,
    pub coverage80: f64,
    pub coverage95: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub dataset: String,
    pub points: usize,
    pub step_ms: i64,
    pub season_points: usize,
    pub detected_seasons: Vec<(usize, f64)>,
    pub selection_origins: (usize, usize),
    pub evaluation_origins: (usize, usize),
    pub chosen: Spec,
    pub trials: Vec<Trial>,
    pub horizons: Vec<HorizonRow>,
}

fn invalid(m: String) -> EvalError {
    EvalError::Invalid(m)
}

/// Loads the series the way `eval forecast` reads it: one series, resampled when asked.
pub fn load(args: &Args) -> Result<Series, EvalError> {
    let mut all = catalog::load_series(&args.root, &args.dataset)?;
    if all.len() != 1 {
        return Err(invalid(format!(
            "{} holds {} series; name one (for NAB: nab/<folder>/<file>.csv)",
            args.dataset,
            all.len()
        )));
    }
    let s = all.remove(0);
    Ok(match args.resample_ms {
        Some(step) => s.resample_as_measured(step)?,
        None => s,
    })
}

pub fn run(args: &Args) -> Result<Report, EvalError> {
    let s = load(args)?;
    let step = s
        .step_ms()
        .ok_or_else(|| invalid(format!("{} has fewer than two points", args.dataset)))?;
    let points = |ms: i64, what: &str| -> Result<usize, EvalError> {
        if ms < step || ms % step != 0 {
            return Err(invalid(format!(
                "{what} {} is not a whole number of the series' {} steps",
                duration(ms),
                duration(step)
            )));
        }
        Ok((ms / step) as usize)
    };
    let season = points(args.season_ms, "season")?;
    let horizons: Vec<usize> = args
        .horizons_ms
        .iter()
        .map(|h| points(*h, "horizon"))
        .collect::<Result<_, _>>()?;
    let every = (args.every_ms / step).max(1) as usize;
    let y = &s.values;
    let n = y.len();
    // Two seasons to warm up, the selection up to half the series, the evaluation after it.
    let sel_from = 2 * season;
    let split = (n / 2).max(sel_from + season);
    if split + horizons.iter().max().copied().unwrap_or(1) >= n {
        return Err(invalid(format!(
            "{} has {n} points of {}: too short for a warm-up of two seasons, a selection and an evaluation",
            args.dataset,
            duration(step)
        )));
    }
    let setup = Setup {
        season,
        horizons: horizons.clone(),
        every,
        interval_window: 24 * 14,
    };
    let found = seasons::detect(&y[..split], 4.min(season), 2 * season, 0.2);
    let mstl_periods: Vec<usize> = if args.mstl {
        found
            .iter()
            .map(|s| s.period)
            .filter(|p| *p * 3 <= split)
            .take(2)
            .collect()
    } else {
        Vec::new()
    };
    // Shorter cycles inside the day (Twitter's bursts each half hour) as a second season.
    // The hour is always tried: traffic keeps the clock (cron jobs, bots posting on the hour)
    // and a cycle that short is learned 24 times a day as a second season, once as part of
    // the first.
    let mut seconds: Vec<usize> = found
        .iter()
        .map(|s| s.period)
        .filter(|p| *p >= 4 && *p * 4 <= season)
        .take(2)
        .collect();
    let hour = (3_600_000 / step) as usize;
    for p in [hour, hour / 2] {
        if 3_600_000 % step == 0 && p >= 4 && p * 4 <= season && !seconds.contains(&p) {
            seconds.push(p);
        }
    }
    let cands = backtest::candidates(
        &seconds,
        &mstl_periods,
        (4 * season).min(sel_from.max(season)),
    );
    let pb = progress(cands.len() as u64 + 2, "selecting forecaster");
    let mut trials = Vec::new();
    for c in &cands {
        trials.extend(backtest::select(
            y,
            std::slice::from_ref(c),
            &setup,
            sel_from,
            split,
        ));
        pb.inc(1);
    }
    trials.sort_by(|a, b| a.mean_mase.total_cmp(&b.mean_mase));
    let chosen = trials
        .first()
        .map(|t| t.spec.clone())
        .ok_or_else(|| invalid("no forecaster could be fitted".to_string()))?;
    pb.set_message("evaluating");
    let runs = backtest::run(y, &chosen, &setup, split, n)?;
    pb.inc(1);
    let base = backtest::run(y, &Spec::SeasonalNaive, &setup, split, n)?;
    pb.inc(1);
    pb.finish_and_clear();
    let train = &y[..split];
    let sc = backtest::score(&runs, train, season);
    let sb = backtest::score(&base, train, season);
    let rows = sc
        .iter()
        .zip(&sb)
        .zip(&args.horizons_ms)
        .map(|((m, b), ms)| HorizonRow {
            horizon_ms: *ms,
            steps: m.h,
            origins: m.n,
            mase: m.mase,
            mase_naive: b.mase,
            smape: m.smape,
            smape_naive: b.smape,
            coverage80: m.coverage80,
            coverage95: m.coverage95,
        })
        .collect();
    // Keep the report readable: the best few, the baseline and MSTL.
    let mut shown: Vec<Trial> = trials.iter().take(5).cloned().collect();
    for t in &trials {
        if matches!(t.spec, Spec::SeasonalNaive | Spec::Mstl { .. })
            && !shown.iter().any(|s| s.spec == t.spec)
        {
            shown.push(t.clone());
        }
    }
    let report = Report {
        dataset: args.dataset.clone(),
        points: n,
        step_ms: step,
        season_points: season,
        detected_seasons: found.iter().map(|s| (s.period, s.acf)).collect(),
        selection_origins: (sel_from, split),
        evaluation_origins: (split, n),
        chosen,
        trials: shown,
        horizons: rows,
    };
    write_outputs(args, &s, &report, &runs)?;
    Ok(report)
}

fn write_outputs(
    args: &Args,
    s: &Series,
    r: &Report,
    runs: &[HorizonRun],
) -> Result<(), EvalError> {
    std::fs::create_dir_all(&args.out).map_err(|source| EvalError::Io {
        path: args.out.clone(),
        source,
    })?;
    let json = serde_json::to_string_pretty(r).map_err(|e| invalid(e.to_string()))?;
    write(&args.out.join("results.json"), &json)?;
    let mut plots = Vec::new();
    for run in runs {
        let file = format!(
            "forecast_{}.svg",
            duration(run.h as i64 * r.step_ms).replace(' ', "")
        );
        plot_run(&args.out.join(&file), s, r, run)?;
        plots.push(file);
    }
    write(&args.out.join("report.md"), &markdown(r, &plots))?;
    Ok(())
}

/// The last three seasons of the evaluation: the actual series, and the forecasts made at
/// each origin for this horizon with their 80 % band.
fn plot_run(path: &Path, s: &Series, r: &Report, run: &HorizonRun) -> Result<(), EvalError> {
    let Some(&last) = run.target.last() else {
        return Ok(());
    };
    let start = (last + 1).saturating_sub(3 * r.season_points);
    let hours = |i: usize| (s.ts_ms[i] - s.ts_ms[0]) as f64 / 3_600_000.0;
    let xs: Vec<f64> = (start..=last).map(hours).collect();
    let actual: Vec<f64> = s.values[start..=last].to_vec();
    let first = run.target.partition_point(|t| *t < start);
    let idx = first..run.target.len();
    let fx: Vec<f64> = idx.clone().map(|i| hours(run.target[i])).collect();
    let point: Vec<f64> = idx.clone().map(|i| run.point[i]).collect();
    let lo: Vec<f64> = idx.clone().map(|i| run.lo80[i]).collect();
    let hi: Vec<f64> = idx.map(|i| run.hi80[i]).collect();
    let title = format!(
        "{}: forecasts {} ahead by {}",
        r.dataset,
        duration(run.h as i64 * r.step_ms),
        r.chosen.label()
    );
    plot::forecast(path, &title, (&xs, &actual), (&fx, &point, &lo, &hi)).map_err(|message| {
        EvalError::Plot {
            path: path.to_path_buf(),
            message,
        }
    })
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

pub fn markdown(r: &Report, plots: &[String]) -> String {
    let mut o = String::new();
    let step = duration(r.step_ms);
    let _ = writeln!(o, "# Forecast evaluation: {}\n", r.dataset);
    let _ = writeln!(
        o,
        "{} points of {step}; baseline season {} points (one day). Origins every hour: the \
         forecaster is chosen on origins {}..{} and judged on origins {}..{} (points it never \
         saw during the choice).\n",
        r.points,
        r.season_points,
        r.selection_origins.0,
        r.selection_origins.1,
        r.evaluation_origins.0,
        r.evaluation_origins.1
    );
    let seasons: Vec<String> = r
        .detected_seasons
        .iter()
        .map(|(p, a)| {
            format!(
                "{p} points ({}, autocorrelation {a:.2})",
                duration(*p as i64 * r.step_ms)
            )
        })
        .collect();
    let _ = writeln!(
        o,
        "Seasons found in the selection half: {}.\n",
        if seasons.is_empty() {
            "none".to_string()
        } else {
            seasons.join(", ")
        }
    );
    let _ = writeln!(o, "Chosen: **{}**.\n", r.chosen.label());
    let _ = writeln!(
        o,
        "| horizon | origins | MASE | MASE seasonal naive | sMAPE % | sMAPE naive % | 80 % coverage | 95 % coverage |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
    for h in &r.horizons {
        let _ = writeln!(
            o,
            "| {} ({} steps) | {} | {:.3} | {:.3} | {:.2} | {:.2} | {:.1} % | {:.1} % |",
            duration(h.horizon_ms),
            h.steps,
            h.origins,
            h.mase,
            h.mase_naive,
            h.smape,
            h.smape_naive,
            100.0 * h.coverage80,
            100.0 * h.coverage95
        );
    }
    let _ = writeln!(o, "\nAgainst the targets:\n");
    for h in &r.horizons {
        let _ = writeln!(
            o,
            "- {}: MASE below 1 {} ({:.3}); beats seasonal naive {} ({:.3} vs {:.3}); 80 % interval covers 75-85 % {} ({:.1} %)",
            duration(h.horizon_ms),
            verdict(h.mase < 1.0),
            h.mase,
            verdict(h.mase < h.mase_naive),
            h.mase,
            h.mase_naive,
            verdict((0.75..=0.85).contains(&h.coverage80)),
            100.0 * h.coverage80
        );
    }
    let _ = writeln!(
        o,
        "\nCandidates on the selection origins (mean MASE over the horizons), best first:\n"
    );
    for t in &r.trials {
        let _ = writeln!(o, "- {:.3}: {}", t.mean_mase, t.spec.label());
    }
    let _ = writeln!(o);
    for p in plots {
        let _ = writeln!(o, "![{p}]({p})\n");
    }
    let _ = writeln!(
        o,
        "MASE: mean absolute error over the mean absolute error of the one-day seasonal naive \
         forecast on the selection half (Hyndman & Koehler 2006). Intervals: quantiles of the \
         same model's recent errors at the same horizon."
    );
    o
}
