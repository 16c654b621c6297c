//! Rolling-origin backtests and the per-series choice of forecaster.
//!
//! An origin is a point in time: the model knows the points before it and forecasts each
//! horizon after it. Online models learn every point as it passes; MSTL refits on a trailing
//! window at each origin. Intervals are conformal for every model: quantiles of the errors
//! the same model made at the same horizon on targets already seen, so a model is never
//! credited with an interval it could not have known.

use super::mstl;
use super::online::{Calibrated, HoltWinters, HwParams, Online, SeasonalNaive};
use crate::metrics;

/// A forecaster, as the backtest and the brain name it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum Spec {
    SeasonalNaive,
    HoltWinters(HwParams),
    /// MSTL + AutoETS refitted at each origin on the last `window` points.
    Mstl {
        periods: Vec<usize>,
        window: usize,
    },
}

impl Spec {
    pub fn label(&self) -> String {
        match self {
            Spec::SeasonalNaive => "seasonal naive".into(),
            Spec::HoltWinters(p) => {
                let mut s = format!(
                    "Holt-Winters (alpha {}, gamma {}, phi {}, spread {}",
                    p.alpha, p.gamma, p.phi, p.spread
                );
                if p.beta > 0.0 {
                    s.push_str(&format!(", beta {}", p.beta));
                }
                if p.robust > 0.0 {
                    s.push_str(&format!(", robust clip {} scales", p.robust));
                }
                if p.season2 > 0 {
                    s.push_str(&format!(
                        ", second season {} (gamma {})",
                        p.season2, p.gamma2
                    ));
                }
                s.push(')');
                s
            }
            Spec::Mstl { periods, window } => {
                format!("MSTL {periods:?} + AutoETS (window {window})")
            }
        }
    }
}

/// What to forecast and how often.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The season of the baseline and of Holt-Winters, in points (one day).
    pub season: usize,
    /// Horizons in points.
    pub horizons: Vec<usize>,
    /// Points between origins (one hour).
    pub every: usize,
    /// Recent errors per horizon the intervals are drawn from.
    pub interval_window: usize,
}

/// Forecasts of one horizon over all origins.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct HorizonRun {
    pub h: usize,
    /// Index of each forecast's target in the series.
    pub target: Vec<usize>,
    pub actual: Vec<f64>,
    pub point: Vec<f64>,
    pub lo80: Vec<f64>,
    pub hi80: Vec<f64>,
    pub lo95: Vec<f64>,
    pub hi95: Vec<f64>,
}

/// Scores of one horizon.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Score {
    pub h: usize,
    pub n: usize,
    pub mase: f64,
    pub smape: f64,
    pub coverage80: f64,
    pub coverage95: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("series of {len} points is too short: origins from {from} need a season of {season} before them")]
    TooShort {
        len: usize,
        from: usize,
        season: usize,
    },
    #[error(transparent)]
    Mstl(#[from] mstl::MstlError),
}

/// Origins `from, from + every, ...` below `to` (and below the end of the series).
pub fn origins(from: usize, to: usize, every: usize) -> impl Iterator<Item = usize> {
    (from..to).step_by(every.max(1))
}

/// Runs `spec` over `y` with origins in `from..to`.
pub fn run(
    y: &[f64],
    spec: &Spec,
    setup: &Setup,
    from: usize,
    to: usize,
) -> Result<Vec<HorizonRun>, BacktestError> {
    if from < setup.season || from >= y.len() {
        return Err(BacktestError::TooShort {
            len: y.len(),
            from,
            season: setup.season,
        });
    }
    let to = to.min(y.len());
    match spec {
        Spec::SeasonalNaive => Ok(run_online(
            y,
            SeasonalNaive::new(setup.season),
            setup,
            from,
            to,
        )),
        Spec::HoltWinters(p) => Ok(run_online(
            y,
            HoltWinters::new(setup.season, *p),
            setup,
            from,
            to,
        )),
        Spec::Mstl { periods, window } => run_mstl(y, periods, *window, setup, from, to),
    }
}

fn run_online<F: Online>(
    y: &[f64],
    model: F,
    setup: &Setup,
    from: usize,
    to: usize,
) -> Vec<HorizonRun> {
    let mut c = Calibrated::new(model, &setup.horizons, setup.interval_window);
    let mut runs = empty_runs(setup);
    let mut next = from;
    for (t, v) in y.iter().enumerate().take(to) {
        c.update(*v);
        let known = t + 1;
        if known < next {
            continue;
        }
        next += setup.every.max(1);
        for (i, r) in runs.iter_mut().enumerate() {
            let target = known - 1 + r.h;
            if target >= y.len() {
                continue;
            }
            let (f, i80) = c.interval(i, 0.8);
            let (_, i95) = c.interval(i, 0.95);
            let (lo80, hi80) = i80.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
            let (lo95, hi95) = i95.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
            r.target.push(target);
            r.actual.push(y[target]);
            r.point.push(f);
            r.lo80.push(lo80);
            r.hi80.push(hi80);
            r.lo95.push(lo95);
            r.hi95.push(hi95);
        }
    }
    runs
}

fn run_mstl(
    y: &[f64],
    periods: &[usize],
    window: usize,
    setup: &Setup,
    from: usize,
    to: usize,
) -> Result<Vec<HorizonRun>, BacktestError> {
    let max_h = setup.horizons.iter().copied().max().unwrap_or(1);
    let mut runs = empty_runs(setup);
    let clean: Vec<f64> = fill_gaps(y);
    for origin in origins(from, to, setup.every) {
        let start = origin.saturating_sub(window);
        let f = mstl::forecast(&clean[start..origin], periods, max_h)?;
        for r in &mut runs {
            let target = origin - 1 + r.h;
            if target >= y.len() {
                continue;
            }
            r.target.push(target);
            r.actual.push(y[target]);
            r.point.push(f[r.h - 1]);
        }
    }
    for r in &mut runs {
        conformal(r, setup.interval_window);
    }
    Ok(runs)
}

fn empty_runs(setup: &Setup) -> Vec<HorizonRun> {
    setup
        .horizons
        .iter()
        .map(|h| HorizonRun {
            h: *h,
            ..HorizonRun::default()
        })
        .collect()
}

/// Intervals from the errors of earlier origins whose targets were already known.
fn conformal(r: &mut HorizonRun, window: usize) {
    let n = r.point.len();
    let mut scratch = Vec::new();
    for k in 0..n {
        // The origin of forecast k is target - h + 1; errors of targets before it are known.
        let origin = r.target[k] + 1 - r.h;
        let known = r.target[..k].partition_point(|t| *t < origin);
        let lo = known.saturating_sub(window);
        scratch.clear();
        scratch.extend(
            (lo..known)
                .map(|j| r.actual[j] - r.point[j])
                .filter(|e| e.is_finite()),
        );
        let f = r.point[k];
        if scratch.len() < 10 {
            r.lo80.push(f64::NEG_INFINITY);
            r.hi80.push(f64::INFINITY);
            r.lo95.push(f64::NEG_INFINITY);
            r.hi95.push(f64::INFINITY);
            continue;
        }
        scratch.sort_unstable_by(f64::total_cmp);
        let q = |p: f64| metrics::quantile_sorted(&scratch, p);
        r.lo80.push(f + q(0.1));
        r.hi80.push(f + q(0.9));
        r.lo95.push(f + q(0.025));
        r.hi95.push(f + q(0.975));
    }
}

/// Non-finite points replaced by the last finite one (MSTL needs a complete series).
fn fill_gaps(y: &[f64]) -> Vec<f64> {
    let mut last = y.iter().copied().find(|v| v.is_finite()).unwrap_or(0.0);
    y.iter()
        .map(|v| {
            if v.is_finite() {
                last = *v;
            }
            last
        })
        .collect()
}

/// Scores of each horizon; MASE is scaled by the seasonal naive MAE of `train`.
pub fn score(runs: &[HorizonRun], train: &[f64], season: usize) -> Vec<Score> {
    let scale = metrics::seasonal_naive_scale(train, season).unwrap_or(f64::NAN);
    runs.iter()
        .map(|r| Score {
            h: r.h,
            n: r.point.len(),
            mase: metrics::mase(&r.actual, &r.point, scale),
            smape: metrics::smape(&r.actual, &r.point),
            coverage80: metrics::coverage(&r.actual, &r.lo80, &r.hi80),
            coverage95: metrics::coverage(&r.actual, &r.lo95, &r.hi95),
        })
        .collect()
}

/// The candidates tried per series: the baseline; a grid of Holt-Winters, plain and robust,
/// with a second season for each of `seconds` (shorter cycles found in the data); and, when
/// `mstl_periods` is not empty, MSTL + ETS.
pub fn candidates(seconds: &[usize], mstl_periods: &[usize], mstl_window: usize) -> Vec<Spec> {
    let mut c = vec![Spec::SeasonalNaive];
    let mut second: Vec<(usize, f64)> = vec![(0, 0.0)];
    for p in seconds {
        second.extend([(*p, 0.05), (*p, 0.2), (*p, 0.5)]);
    }
    for alpha in [0.05, 0.1, 0.2, 0.35, 0.5, 0.7] {
        for gamma in [0.02, 0.05, 0.1, 0.2, 0.35] {
            for spread in [0, 2, 6] {
                for robust in [0.0, 3.0] {
                    for (season2, gamma2) in &second {
                        c.push(Spec::HoltWinters(HwParams {
                            alpha,
                            beta: 0.0,
                            gamma,
                            phi: 0.98,
                            spread,
                            robust,
                            season2: *season2,
                            gamma2: *gamma2,
                        }));
                    }
                }
            }
        }
    }
    if !mstl_periods.is_empty() {
        c.push(Spec::Mstl {
            periods: mstl_periods.to_vec(),
            window: mstl_window,
        });
    }
    c
}

/// One candidate's result in the selection.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Trial {
    pub spec: Spec,
    /// Mean MASE over the horizons on the selection origins.
    pub mean_mase: f64,
}

/// Picks the candidate with the lowest mean MASE over the horizons, on origins in
/// `from..to` only (the evaluation span after `to` is never looked at). Candidates that
/// fail (MSTL on too little data) are left out. Returns every trial, best first.
pub fn select(y: &[f64], cands: &[Spec], setup: &Setup, from: usize, to: usize) -> Vec<Trial> {
    let train = &y[..from];
    let mut trials: Vec<Trial> = cands
        .iter()
        .filter_map(|spec| {
            let runs = run(y, spec, setup, from, to).ok()?;
            let s = score(&runs, train, setup.season);
            let m: Vec<f64> = s.iter().map(|x| x.mase).filter(|x| x.is_finite()).collect();
            (!m.is_empty()).then(|| Trial {
                spec: spec.clone(),
                mean_mase: m.iter().sum::<f64>() / m.len() as f64,
            })
        })
        .collect();
    trials.sort_by(|a, b| a.mean_mase.total_cmp(&b.mean_mase));
    trials
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Setup {
        Setup {
            season: 24,
            horizons: vec![1, 3, 12],
            every: 6,
            interval_window: 200,
        }
    }

    fn series(n: usize) -> Vec<f64> {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(11);
        let mut level = 100.0;
        (0..n)
            .map(|t| {
                level += rng.random_range(-2.0..2.0);
                level
                    + 20.0 * (t as f64 / 24.0 * std::f64::consts::TAU).sin()
                    + rng.random_range(-3.0..3.0)
            })
            .collect()
    }

    #[test]
    fn origins_see_only_the_past_and_targets_are_the_right_points() {
        let y = series(24 * 20);
        let runs = run(&y, &Spec::SeasonalNaive, &setup(), 24 * 10, y.len()).unwrap();
        for r in &runs {
            for (k, t) in r.target.iter().enumerate() {
                assert_eq!(r.actual[k], y[*t]);
                // Seasonal naive at horizon h from origin o = t - h + 1 is y[t - 24].
                assert_eq!(r.point[k], y[t - 24], "h {} target {t}", r.h);
            }
        }
    }

    #[test]
    fn on_a_wandering_level_holt_winters_beats_the_seasonal_baseline() {
        let y = series(24 * 40);
        let s = setup();
        let trials = select(&y, &candidates(&[], &[], 0), &s, 24 * 10, 24 * 25);
        assert!(
            matches!(trials[0].spec, Spec::HoltWinters(_)),
            "{:?}",
            trials[0]
        );
        let best = run(&y, &trials[0].spec, &s, 24 * 25, y.len()).unwrap();
        let base = run(&y, &Spec::SeasonalNaive, &s, 24 * 25, y.len()).unwrap();
        let train = &y[..24 * 25];
        for (b, n) in score(&best, train, 24).iter().zip(score(&base, train, 24)) {
            assert!(b.mase < n.mase, "h {}: {} vs {}", b.h, b.mase, n.mase);
        }
    }

    #[test]
    fn mstl_forecasts_a_seasonal_series_and_gets_calibrated_intervals() {
        let y = series(24 * 30);
        let s = setup();
        let spec = Spec::Mstl {
            periods: vec![24],
            window: 24 * 7,
        };
        let runs = run(&y, &spec, &s, 24 * 8, y.len()).unwrap();
        let sc = score(&runs, &y[..24 * 8], 24);
        assert!(sc[0].mase < 1.0, "{sc:?}");
        assert!((0.6..=0.95).contains(&sc[0].coverage80), "{sc:?}");
    }
}
