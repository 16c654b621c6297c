//! Per-endpoint latency against load: how slow an endpoint gets as it is pushed, and the load
//! at which it would saturate.
//!
//! Two least-squares fits (linfa): latency on offered load and requests in flight, for
//! "what latency will this load bring"; and the reciprocal of latency on load, because a
//! queueing server's mean latency is `s / (1 - load / capacity)` (M/M/1), so `1 / latency`
//! falls linearly with load and reaches zero at the capacity. The saturation estimate is only
//! given when latency measurably rises with load in the data; an endpoint that was never
//! pushed is reported as such rather than extrapolated.

use linfa::prelude::*;
use linfa::Dataset;
use linfa_linear::LinearRegression;
use ndarray::{Array1, Array2};

/// One observation window of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Offered load (requests per second).
    pub load: f64,
    /// Mean requests in flight.
    pub inflight: f64,
    /// Mean latency (any unit; predictions come back in it).
    pub latency: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum LatencyError {
    #[error(
        "a latency model needs at least {need} windows with finite, positive values, got {got}"
    )]
    TooFew { need: usize, got: usize },
    #[error("least squares failed: {0}")]
    Fit(String),
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LatencyModel {
    pub windows: usize,
    /// latency ≈ intercept + per_load · load + per_inflight · inflight
    pub intercept: f64,
    pub per_load: f64,
    pub per_inflight: f64,
    /// Share of latency variance the linear fit explains.
    pub r2: f64,
    /// Highest load seen.
    pub max_load: f64,
    /// Load at which latency would grow without bound (M/M/1 fit), when latency rises with
    /// load in the data.
    pub saturation: Option<f64>,
}

/// Fewest windows a fit is attempted on.
pub const MIN_WINDOWS: usize = 10;

fn ols(x: Array2<f64>, y: Array1<f64>) -> Result<(f64, Array1<f64>), LatencyError> {
    let fit = LinearRegression::new()
        .fit(&Dataset::new(x, y))
        .map_err(|e| LatencyError::Fit(e.to_string()))?;
    Ok((fit.intercept(), fit.params().clone()))
}

fn column(ok: &[Sample], f: fn(&Sample) -> f64) -> Array2<f64> {
    Array2::from_shape_fn((ok.len(), 1), |(i, _)| f(&ok[i]))
}

impl LatencyModel {
    pub fn fit(samples: &[Sample]) -> Result<LatencyModel, LatencyError> {
        let ok: Vec<Sample> = samples
            .iter()
            .copied()
            .filter(|s| {
                s.load.is_finite()
                    && s.inflight.is_finite()
                    && s.latency.is_finite()
                    && s.load >= 0.0
                    && s.latency > 0.0
            })
            .collect();
        if ok.len() < MIN_WINDOWS {
            return Err(LatencyError::TooFew {
                need: MIN_WINDOWS,
                got: ok.len(),
            });
        }
        let n = ok.len();
        let y = Array1::from_iter(ok.iter().map(|s| s.latency));
        let x = Array2::from_shape_fn(
            (n, 2),
            |(i, j)| {
                if j == 0 {
                    ok[i].load
                } else {
                    ok[i].inflight
                }
            },
        );
        // In-flight that never varies (or load that never does) leaves the two-column system
        // singular; fall back to the columns that do vary.
        let spread = |f: fn(&Sample) -> f64| {
            let (lo, hi) = ok
                .iter()
                .map(f)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                    (a.min(v), b.max(v))
                });
            hi > lo
        };
        let (vary_load, vary_inflight) = (spread(|s| s.load), spread(|s| s.inflight));
        let (intercept, per_load, per_inflight) = match (vary_load, vary_inflight) {
            (true, true) => {
                let (a, p) = ols(x, y.clone())?;
                (a, p[0], p[1])
            }
            (true, false) => {
                let (a, p) = ols(column(&ok, |s| s.load), y.clone())?;
                (a, p[0], 0.0)
            }
            (false, true) => {
                let (a, p) = ols(column(&ok, |s| s.inflight), y.clone())?;
                (a, 0.0, p[0])
            }
            (false, false) => (y.mean().unwrap_or(0.0), 0.0, 0.0),
        };
        let mean = y.mean().unwrap_or(0.0);
        let (mut ss_res, mut ss_tot) = (0.0, 0.0);
        for s in &ok {
            let e = s.latency - (intercept + per_load * s.load + per_inflight * s.inflight);
            ss_res += e * e;
            ss_tot += (s.latency - mean).powi(2);
        }
        let r2 = if ss_tot > 0.0 {
            1.0 - ss_res / ss_tot
        } else {
            0.0
        };
        let max_load = ok.iter().map(|s| s.load).fold(0.0, f64::max);
        let saturation = if vary_load {
            let inv = Array1::from_iter(ok.iter().map(|s| 1.0 / s.latency));
            let (a, p) = ols(column(&ok, |s| s.load), inv)?;
            let b = p[0];
            // The slope must be clearly negative: at least two standard errors.
            let mx = ok.iter().map(|s| s.load).sum::<f64>() / n as f64;
            let sxx: f64 = ok.iter().map(|s| (s.load - mx).powi(2)).sum();
            let resid: f64 = ok
                .iter()
                .map(|s| (1.0 / s.latency - a - b * s.load).powi(2))
                .sum();
            let se = (resid / (n as f64 - 2.0).max(1.0) / sxx).sqrt();
            (b < 0.0 && a > 0.0 && -b > 2.0 * se).then(|| -a / b)
        } else {
            None
        };
        Ok(LatencyModel {
            windows: n,
            intercept,
            per_load,
            per_inflight,
            r2,
            max_load,
            saturation,
        })
    }

    pub fn predict(&self, load: f64, inflight: f64) -> f64 {
        self.intercept + self.per_load * load + self.per_inflight * inflight
    }

    /// How much more load the endpoint takes before it saturates, as a share of the highest
    /// load seen (`None` when no saturation is in sight).
    pub fn headroom(&self) -> Option<f64> {
        let s = self.saturation?;
        (self.max_load > 0.0).then(|| s / self.max_load - 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn an_mm1_endpoint_saturates_where_its_capacity_is() {
        // Service 20 ms, capacity 50 rps, observed up to 40 rps with 5 % noise.
        let mut r = rand::rngs::SmallRng::seed_from_u64(5);
        let samples: Vec<Sample> = (0..200)
            .map(|i| {
                let load = 5.0 + 35.0 * (i as f64 / 199.0);
                let lat = 20.0 / (1.0 - load / 50.0) * (1.0 + r.random_range(-0.05..0.05));
                Sample {
                    load,
                    inflight: load * lat / 1000.0,
                    latency: lat,
                }
            })
            .collect();
        let m = LatencyModel::fit(&samples).unwrap_or_else(|e| panic!("{e}"));
        let sat = m.saturation.unwrap_or_else(|| panic!("{m:?}"));
        assert!((sat - 50.0).abs() < 2.5, "{m:?}");
        assert!(
            m.headroom().is_some_and(|h| (0.1..0.4).contains(&h)),
            "{m:?}"
        );
        assert!(m.r2 > 0.8, "{m:?}");
        let p = m.predict(30.0, 30.0 * 50.0 / 1000.0);
        assert!((p - 50.0).abs() < 10.0, "{p}");
    }

    #[test]
    fn flat_or_scarce_data_gives_no_saturation_and_clear_errors() {
        let flat: Vec<Sample> = (0..50)
            .map(|i| Sample {
                load: i as f64,
                inflight: 1.0,
                latency: 100.0 + (i % 3) as f64,
            })
            .collect();
        let m = LatencyModel::fit(&flat).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.saturation, None, "{m:?}");
        assert_eq!(m.per_inflight, 0.0);
        let few = &flat[..5];
        let e = LatencyModel::fit(few).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("a latency model needs at least 10 windows with finite, positive values, got 5")
        );
        let bad = vec![
            Sample {
                load: f64::NAN,
                inflight: 0.0,
                latency: 1.0,
            };
            20
        ];
        assert!(LatencyModel::fit(&bad).is_err());
    }
}
