//! How forecasts are judged: MASE against seasonal naive, sMAPE, interval coverage.

/// Mean absolute error of the seasonal naive forecast in `train` (`y[t] - y[t - season]`):
/// the scale of MASE (Hyndman & Koehler 2006). `None` when `train` is shorter than a season
/// plus one point, or constant (no scale).
pub fn seasonal_naive_scale(train: &[f64], season: usize) -> Option<f64> {
    let season = season.max(1);
    if train.len() <= season {
        return None;
    }
    let mut sum = 0.0;
    let mut n = 0usize;
    for t in season..train.len() {
        let d = train[t] - train[t - season];
        if d.is_finite() {
            sum += d.abs();
            n += 1;
        }
    }
    let s = sum / n.max(1) as f64;
    (n > 0 && s > 0.0).then_some(s)
}

/// Mean absolute error over pairs where both are finite.
pub fn mae(actual: &[f64], forecast: &[f64]) -> f64 {
    let (s, n) = actual
        .iter()
        .zip(forecast)
        .filter(|(a, f)| a.is_finite() && f.is_finite())
        .fold((0.0, 0usize), |(s, n), (a, f)| (s + (a - f).abs(), n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

/// MASE: forecast MAE over the in-sample seasonal naive MAE `scale`.
pub fn mase(actual: &[f64], forecast: &[f64], scale: f64) -> f64 {
    mae(actual, forecast) / scale
}

/// Symmetric MAPE in percent, 0..200; pairs where both are 0 count as exact.
pub fn smape(actual: &[f64], forecast: &[f64]) -> f64 {
    let (s, n) = actual
        .iter()
        .zip(forecast)
        .filter(|(a, f)| a.is_finite() && f.is_finite())
        .fold((0.0, 0usize), |(s, n), (a, f)| {
            let d = a.abs() + f.abs();
            (
                s + if d == 0.0 {
                    0.0
                } else {
                    2.0 * (a - f).abs() / d
                },
                n + 1,
            )
        });
    if n == 0 {
        f64::NAN
    } else {
        100.0 * s / n as f64
    }
}

/// Share of `actual` inside `[lower, upper]`.
pub fn coverage(actual: &[f64], lower: &[f64], upper: &[f64]) -> f64 {
    let n = actual.len().min(lower.len()).min(upper.len());
    if n == 0 {
        return f64::NAN;
    }
    let inside = (0..n)
        .filter(|&i| lower[i] <= actual[i] && actual[i] <= upper[i])
        .count();
    inside as f64 / n as f64
}

/// The `p` quantile of sorted values, interpolated between neighbours; NaN when empty.
pub fn quantile_sorted(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let x = p.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (a, b) = (x.floor() as usize, x.ceil() as usize);
    sorted[a] + (sorted[b] - sorted[a]) * (x - a as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seasonal_naive_has_mase_one_on_a_repeating_series_with_noise_scaled_alike() {
        let y: Vec<f64> = (0..100)
            .map(|i| (i % 4) as f64 + if i % 2 == 0 { 1.0 } else { 0.0 })
            .collect();
        assert_eq!(
            seasonal_naive_scale(&y, 4),
            None,
            "a perfectly periodic series has no scale"
        );
        let z: Vec<f64> = (0..8).map(|i| i as f64).collect();
        assert_eq!(seasonal_naive_scale(&z, 2), Some(2.0));
        assert_eq!(mase(&[1.0, 2.0], &[2.0, 4.0], 1.5), 1.0);
    }

    #[test]
    fn smape_and_coverage() {
        assert_eq!(smape(&[0.0, 100.0], &[0.0, 100.0]), 0.0);
        assert!((smape(&[100.0], &[50.0]) - 66.666).abs() < 0.01);
        assert_eq!(coverage(&[1.0, 5.0, 3.0, 9.0], &[0.0; 4], &[4.0; 4]), 0.5);
    }
}
