//! What the brain pays per tick: the online forecast update and anomaly scoring for 1,000
//! scopes, and one MSTL + ETS refit on a day of per-minute data. Real data (NASA July 1995
//! requests per minute) where ../shared/datasets is beside the repository.
//!
//! `cargo bench -p vivremotion-models --bench tick`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use std::hint::black_box;
use vivremotion_models::anomaly::{Combined, Streaming};
use vivremotion_models::forecast::online::{Calibrated, HoltWinters, HwParams};

const SCOPES: usize = 1000;
const DAY: usize = 1440;
/// Errors an interval is drawn from: the window `eval forecast` calibrates with.
const INTERVAL_WINDOW: usize = 24 * 14;

/// NASA's per-minute request counts, or (without the datasets) a daily wave with noise of
/// the same size.
fn minutes() -> Vec<f64> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/datasets/nasa_http_1995/nasa_jul95_requests_per_minute.csv"
    );
    let real: Vec<f64> = std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| l.split(',').nth(1)?.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if real.len() >= 7 * DAY {
        return real;
    }
    eprintln!("{path} not found: using a synthetic daily wave");
    (0..14 * DAY)
        .map(|i| {
            let d = (i % DAY) as f64 / DAY as f64;
            let jitter = ((i * 7919) % 97) as f64 - 48.0;
            120.0 + 80.0 * (std::f64::consts::TAU * d).sin() + jitter * 0.4
        })
        .collect()
}

/// One scope as the brain keeps it: a calibrated Holt-Winters at 5, 15 and 60 steps and the
/// combined detector.
struct Scope {
    forecast: Calibrated<HoltWinters>,
    detector: Combined,
}

fn scopes(data: &[f64], warm: usize) -> Vec<Scope> {
    let p = HwParams {
        alpha: 0.3,
        beta: 0.0,
        gamma: 0.1,
        spread: 3,
        robust: 4.0,
        ..HwParams::default()
    };
    (0..SCOPES)
        .map(|k| {
            let mut s = Scope {
                forecast: Calibrated::new(HoltWinters::new(DAY, p), &[5, 15, 60], INTERVAL_WINDOW),
                detector: Combined::default(),
            };
            // Each scope starts at its own offset so the scopes are not in lockstep.
            for i in 0..warm {
                let y = data[(i + 37 * k) % data.len()];
                s.forecast.update(y);
                s.detector.update(y);
            }
            s
        })
        .collect()
}

fn tick(c: &mut Criterion) {
    let data = minutes();
    let mut all = scopes(&data, 2 * DAY);
    let mut t = 2 * DAY;
    c.bench_function("tick: forecast update + anomaly score, 1000 scopes", |b| {
        b.iter(|| {
            let mut alarms = 0.0;
            for (k, s) in all.iter_mut().enumerate() {
                let y = data[(t + 37 * k) % data.len()];
                s.forecast.update(y);
                alarms += s.detector.update(y).score;
            }
            t += 1;
            black_box(alarms)
        })
    });
    c.bench_function("tick: plus 80 % interval at 3 horizons, 1000 scopes", |b| {
        b.iter(|| {
            let mut width = 0.0;
            for (k, s) in all.iter_mut().enumerate() {
                let y = data[(t + 37 * k) % data.len()];
                s.forecast.update(y);
                black_box(s.detector.update(y));
                for h in 0..3 {
                    if let (_, Some((lo, hi))) = s.forecast.interval(h, 0.8) {
                        width += hi - lo;
                    }
                }
            }
            t += 1;
            black_box(width)
        })
    });
}

fn mstl(c: &mut Criterion) {
    let data = minutes();
    let mut day = 0;
    c.bench_function(
        "MSTL + AutoETS refit, one day per minute (period 60, 60 ahead)",
        |b| {
            b.iter_batched(
                || {
                    day = (day + 1) % (data.len() / DAY);
                    data[day * DAY..(day + 1) * DAY].to_vec()
                },
                |y| black_box(vivremotion_models::forecast::mstl::forecast(&y, &[60], 60)),
                BatchSize::SmallInput,
            )
        },
    );
}

criterion_group!(benches, tick, mstl);
criterion_main!(benches);
