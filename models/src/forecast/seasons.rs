//! Seasonal periods found in the data: augurs' periodogram proposes, the autocorrelation
//! decides. The periodogram's DFT bins are powers of two, so on per-minute data a daily cycle
//! shows as a peak near 1365 or 2048, never at 1440; the exact lag is the autocorrelation
//! maximum between the peak's neighbouring bins.

use augurs::seasons::PeriodogramDetector;

/// A period and how strongly the series repeats at it (autocorrelation at that lag).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Season {
    pub period: usize,
    pub acf: f64,
}

/// Autocorrelation of `y` at `lag` (non-finite points skipped).
pub fn acf(y: &[f64], lag: usize) -> f64 {
    Centred::new(y).acf(lag)
}

/// A series less its mean, with its sum of squares: computed once, then asked for many lags.
struct Centred {
    c: Vec<f64>,
    ss: f64,
}

impl Centred {
    fn new(y: &[f64]) -> Centred {
        let (sum, n) = y
            .iter()
            .filter(|v| v.is_finite())
            .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
        let mean = sum / n.max(1) as f64;
        let c: Vec<f64> = y.iter().map(|v| v - mean).collect();
        let ss = c.iter().filter(|v| v.is_finite()).map(|v| v * v).sum();
        Centred { c, ss }
    }

    fn acf(&self, lag: usize) -> f64 {
        if lag == 0 || lag >= self.c.len() || self.ss == 0.0 {
            return 0.0;
        }
        let s: f64 = self.c[lag..]
            .iter()
            .zip(&self.c)
            .filter(|(a, b)| a.is_finite() && b.is_finite())
            .map(|(a, b)| a * b)
            .sum();
        s / self.ss
    }
}

/// The series less its centred moving average over `w` points: slow changes of level
/// (a busy week, a growing service) would otherwise make every short lag look seasonal.
fn detrend(y: &[f64], w: usize) -> Vec<f64> {
    let n = y.len();
    let half = (w / 2).max(1);
    let mut prefix = vec![0.0; n + 1];
    for (i, v) in y.iter().enumerate() {
        prefix[i + 1] = prefix[i] + v;
    }
    (0..n)
        .map(|i| {
            let (a, b) = (i.saturating_sub(half), (i + half + 1).min(n));
            y[i] - (prefix[b] - prefix[a]) / (b - a) as f64
        })
        .collect()
}

/// Seasonal periods between `min_period` and `max_period` points, strongest first. A
/// candidate counts when the detrended series' autocorrelation at it is at least `min_acf`
/// and a peak: above the autocorrelation at half the period by 0.1 (a smooth series is
/// correlated at every short lag; a cycle is correlated at its period, not at half of it).
pub fn detect(y: &[f64], min_period: usize, max_period: usize, min_acf: f64) -> Vec<Season> {
    let max_period = max_period.min(y.len() / 3);
    if max_period <= min_period || y.len() < 8 {
        return Vec::new();
    }
    let mean = {
        let f: Vec<f64> = y.iter().copied().filter(|v| v.is_finite()).collect();
        f.iter().sum::<f64>() / f.len().max(1) as f64
    };
    let clean: Vec<f64> = y
        .iter()
        .map(|v| if v.is_finite() { *v } else { mean })
        .collect();
    let flat = detrend(&clean, 2 * max_period);
    let det = PeriodogramDetector::builder()
        .min_period(min_period as u32)
        .max_period(max_period as u32 + 1)
        .threshold(0.3)
        .build();
    let pg = det.periodogram(&flat);
    let flat_acf = Centred::new(&flat);
    let mut out: Vec<Season> = Vec::new();
    for p in pg.peaks(0.3) {
        let lo = (p.next_period.min(p.prev_period) as usize).max(min_period);
        let hi = (p.next_period.max(p.prev_period) as usize).min(max_period);
        let (mut best, mut best_acf) = (p.period as usize, f64::NEG_INFINITY);
        for lag in lo..=hi.max(lo) {
            let a = flat_acf.acf(lag);
            if a > best_acf {
                best = lag;
                best_acf = a;
            }
        }
        let peak = best_acf - flat_acf.acf(best / 2) >= 0.1;
        if peak && best_acf >= min_acf && !out.iter().any(|s| s.period.abs_diff(best) * 20 <= best)
        {
            out.push(Season {
                period: best,
                acf: best_acf,
            });
        }
    }
    out.sort_by(|a, b| b.acf.total_cmp(&a.acf));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daily_cycle_at_minute_resolution_is_found_at_its_exact_lag() {
        // Three weeks of a 1440-point cycle with noise: the periodogram alone cannot say 1440.
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(9);
        let y: Vec<f64> = (0..1440 * 21)
            .map(|t| {
                let ph = t as f64 / 1440.0 * std::f64::consts::TAU;
                50.0 + 30.0 * ph.sin() + rng.random_range(-10.0..10.0)
            })
            .collect();
        let s = detect(&y, 60, 2 * 1440, 0.3);
        assert!(!s.is_empty());
        assert!(s[0].period.abs_diff(1440) <= 2, "{s:?}");
    }
}
