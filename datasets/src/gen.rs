//! Arrivals generated from aggregate sources, seeded: per-second counts (NASA, Twitter) and
//! ServeGen's per-client 10-minute rates with fitted inter-arrival distributions.

use crate::error::{DatasetError, Result};
use crate::series::Series;
use crate::trace::{Arrival, Trace};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp1, Gamma, Weibull};

/// One arrival per counted request, placed within its bucket as a Poisson process would
/// (given the count, arrival times are independent and uniform over the bucket).
/// Counts are rounded; negative or non-finite counts are refused.
pub fn arrivals_from_counts(series: &Series, seed: u64) -> Result<Trace> {
    let step_us = series.step_ms().unwrap_or(1000) * 1000;
    let mut rng = SmallRng::seed_from_u64(seed);
    let t0 = series.ts_ms.first().copied().unwrap_or(0);
    let mut arrivals = Vec::with_capacity(series.values.iter().sum::<f64>().max(0.0) as usize);
    let mut within = Vec::new();
    for (i, (t, v)) in series.ts_ms.iter().zip(&series.values).enumerate() {
        if !(v.is_finite() && *v >= 0.0) {
            return Err(DatasetError::Invalid(format!(
                "{}: point {i} has count {v}; counts must be non-negative",
                series.name
            )));
        }
        let n = v.round() as usize;
        within.clear();
        within.extend((0..n).map(|_| rng.random_range(0..step_us)));
        within.sort_unstable();
        let base = (t - t0) * 1000;
        arrivals.extend(within.iter().map(|o| Arrival {
            t_us: base + o,
            ..Arrival::default()
        }));
    }
    let start = series.absolute.then_some(t0);
    Ok(Trace::new(series.name.clone(), start, arrivals))
}

/// Inter-arrival distribution of one ServeGen client window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Iat {
    Gamma {
        shape: f64,
        scale: f64,
    },
    Weibull {
        shape: f64,
        scale: f64,
    },
    /// No fit recorded: a Poisson process.
    Exponential,
}

/// One row of a ServeGen per-client file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClientWindow {
    pub window_start_s: i64,
    pub client: u32,
    pub rate_rps: f64,
    pub iat: Iat,
}

/// ServeGen windows are 10 minutes.
pub const SERVEGEN_WINDOW_S: i64 = 600;

/// ServeGen's per-client windows. Expanded whole, the language models are 10^8 to 10^9
/// arrivals, so arrivals are generated for a span at a time; each (window, client) draws from
/// its own seed, so a span expands to exactly the arrivals the whole expansion has there.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientSet {
    pub name: String,
    /// Sorted by window start, then client.
    pub windows: Vec<ClientWindow>,
}

impl ClientSet {
    pub fn new(name: impl Into<String>, mut windows: Vec<ClientWindow>) -> ClientSet {
        windows.sort_by_key(|w| (w.window_start_s, w.client));
        ClientSet {
            name: name.into(),
            windows,
        }
    }

    /// Expected number of arrivals (sum of rate × window).
    pub fn expected_total(&self) -> f64 {
        self.windows
            .iter()
            .map(|w| w.rate_rps * SERVEGEN_WINDOW_S as f64)
            .sum()
    }

    /// First window start and last window end, in seconds.
    pub fn span_s(&self) -> Option<(i64, i64)> {
        let a = self.windows.first()?.window_start_s;
        let b = self.windows.last()?.window_start_s + SERVEGEN_WINDOW_S;
        Some((a, b))
    }

    pub fn clients(&self) -> usize {
        let mut c: Vec<u32> = self.windows.iter().map(|w| w.client).collect();
        c.sort_unstable();
        c.dedup();
        c.len()
    }

    /// Expected requests per second of each window (all clients summed): the total-rate
    /// series this set was aggregated from.
    pub fn rate_series(&self) -> Series {
        let mut by: std::collections::BTreeMap<i64, f64> = std::collections::BTreeMap::new();
        for w in &self.windows {
            *by.entry(w.window_start_s).or_default() += w.rate_rps;
        }
        let (ts, vs): (Vec<i64>, Vec<f64>) = by.into_iter().map(|(t, r)| (t * 1000, r)).unzip();
        let mut s = Series::from_sorted(self.name.clone(), ts, vs);
        s.absolute = false;
        s
    }

    /// Generated arrivals per bucket of `step_ms` (zeros included), window by window so the
    /// whole trace is never in memory.
    pub fn counts(&self, step_ms: i64, seed: u64) -> Result<Series> {
        if step_ms <= 0 {
            return Err(DatasetError::Invalid(format!(
                "count step must be positive, got {step_ms} ms"
            )));
        }
        let Some((a, b)) = self.span_s() else {
            return Ok(Series::regular(self.name.clone(), 0, step_ms, Vec::new()));
        };
        let start = (a * 1000).div_euclid(step_ms) * step_ms;
        let n = ((b * 1000 - start + step_ms - 1) / step_ms) as usize;
        let mut v = vec![0.0; n];
        let mut from = a;
        while from < b {
            let t = self.expand(from, from + SERVEGEN_WINDOW_S, seed)?;
            for x in &t.arrivals {
                let ms = from * 1000 + x.t_us.div_euclid(1000);
                let k = ((ms - start) / step_ms) as usize;
                if let Some(c) = v.get_mut(k) {
                    *c += 1.0;
                }
            }
            from += SERVEGEN_WINDOW_S;
        }
        let mut s = Series::regular(self.name.clone(), start, step_ms, v);
        s.absolute = false;
        s.measure = crate::series::Measure::Count;
        Ok(s)
    }

    /// Every window's arrivals, with times from 0 = the series' zero (window 0's start).
    pub fn expand_all(&self, seed: u64) -> Result<Trace> {
        match self.span_s() {
            Some((_, end)) => self.expand(0, end, seed),
            None => Ok(Trace::new(self.name.clone(), None, Vec::new())),
        }
    }

    /// Arrivals of the windows that start in `from_s..to_s`, with times from 0 = `from_s`.
    pub fn expand(&self, from_s: i64, to_s: i64, seed: u64) -> Result<Trace> {
        let mut arrivals = Vec::new();
        let mut gaps = Vec::new();
        let a = self.windows.partition_point(|w| w.window_start_s < from_s);
        let b = self.windows.partition_point(|w| w.window_start_s < to_s);
        for w in &self.windows[a..b.max(a)] {
            let mut rng = SmallRng::seed_from_u64(
                seed ^ (w.window_start_s as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ u64::from(w.client).wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
            );
            window_arrivals(
                &self.name,
                w,
                &mut rng,
                &mut gaps,
                (w.window_start_s - from_s) * 1_000_000,
                &mut arrivals,
            )?;
        }
        Ok(Trace::new(self.name.clone(), None, arrivals))
    }
}

/// Expands per-client windows (starting at 0 s) into arrivals the way ServeGen's generator does: the window gets
/// `rate × 600` requests (stochastically rounded), their gaps drawn from the window's fitted
/// distribution and rescaled so they span the window.
pub fn expand_servegen(name: &str, windows: &[ClientWindow], seed: u64) -> Result<Trace> {
    ClientSet::new(name, windows.to_vec()).expand_all(seed)
}

fn window_arrivals(
    name: &str,
    w: &ClientWindow,
    rng: &mut SmallRng,
    gaps: &mut Vec<f64>,
    base_us: i64,
    out: &mut Vec<Arrival>,
) -> Result<()> {
    if !(w.rate_rps.is_finite() && w.rate_rps >= 0.0) {
        return Err(DatasetError::Invalid(format!(
            "{name}: client {} window {}: rate {} is not a non-negative number",
            w.client, w.window_start_s, w.rate_rps
        )));
    }
    let expect = w.rate_rps * SERVEGEN_WINDOW_S as f64;
    let n = expect.floor() as usize + usize::from(rng.random_bool(expect.fract()));
    if n == 0 {
        return Ok(());
    }
    gaps.clear();
    // n + 1 gaps: the window's start to the first arrival, ..., the last to the window's end.
    for _ in 0..=n {
        let g: f64 = match w.iat {
            Iat::Gamma { shape, scale } => Gamma::new(shape, scale)
                .map_err(|e| bad_fit(name, w, e))?
                .sample(rng),
            Iat::Weibull { shape, scale } => Weibull::new(scale, shape)
                .map_err(|e| bad_fit(name, w, e))?
                .sample(rng),
            Iat::Exponential => Exp1.sample(rng),
        };
        gaps.push(if g.is_finite() { g.max(0.0) } else { 0.0 });
    }
    let total: f64 = gaps.iter().sum();
    let unit = if total > 0.0 {
        SERVEGEN_WINDOW_S as f64 * 1e6 / total
    } else {
        0.0
    };
    let mut at = 0.0;
    // The last gap can round to nothing; an arrival stays inside its own window.
    let last = SERVEGEN_WINDOW_S as f64 * 1e6 - 1.0;
    for g in &gaps[..n] {
        at += g * unit;
        out.push(Arrival {
            t_us: base_us + at.min(last) as i64,
            client: Some(w.client),
            ..Arrival::default()
        });
    }
    Ok(())
}

fn bad_fit(name: &str, w: &ClientWindow, e: impl std::fmt::Display) -> DatasetError {
    DatasetError::Invalid(format!(
        "{name}: client {} window {}: inter-arrival fit {:?} is not a distribution: {e}",
        w.client, w.window_start_s, w.iat
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_become_that_many_arrivals_inside_their_second() {
        let s = Series::regular("c", 0, 1000, vec![3.0, 0.0, 2.0]);
        let t = arrivals_from_counts(&s, 7).unwrap();
        let secs: Vec<i64> = t.arrivals.iter().map(|a| a.t_us / 1_000_000).collect();
        assert_eq!(secs, vec![0, 0, 0, 2, 2]);
        assert_eq!(t, arrivals_from_counts(&s, 7).unwrap());
        assert_ne!(t, arrivals_from_counts(&s, 8).unwrap());
    }

    #[test]
    fn servegen_windows_get_their_rate_and_stay_inside_the_window() {
        let w = [
            ClientWindow {
                window_start_s: 0,
                client: 1,
                rate_rps: 2.0,
                iat: Iat::Gamma {
                    shape: 0.5,
                    scale: 1.0,
                },
            },
            ClientWindow {
                window_start_s: 600,
                client: 2,
                rate_rps: 0.5,
                iat: Iat::Weibull {
                    shape: 0.4,
                    scale: 0.4,
                },
            },
        ];
        let t = expand_servegen("s", &w, 1).unwrap();
        let first = t.arrivals.iter().filter(|a| a.client == Some(1)).count();
        let second: Vec<_> = t.arrivals.iter().filter(|a| a.client == Some(2)).collect();
        assert_eq!(first, 1200);
        assert_eq!(second.len(), 300);
        assert!(second
            .iter()
            .all(|a| (600_000_000..1_200_000_000).contains(&a.t_us)));
        // Gamma with shape 0.5 is burstier than Poisson: gaps' CV above 1.
        let g: Vec<f64> = t
            .arrivals
            .iter()
            .filter(|a| a.client == Some(1))
            .collect::<Vec<_>>()
            .windows(2)
            .map(|p| (p[1].t_us - p[0].t_us) as f64)
            .collect();
        let m = g.iter().sum::<f64>() / g.len() as f64;
        let sd = (g.iter().map(|x| (x - m).powi(2)).sum::<f64>() / g.len() as f64).sqrt();
        assert!(sd / m > 1.2, "cv {}", sd / m);
    }

    #[test]
    fn a_broken_fit_names_the_client_and_window() {
        let w = [ClientWindow {
            window_start_s: 1200,
            client: 9,
            rate_rps: 1.0,
            iat: Iat::Gamma {
                shape: -1.0,
                scale: 1.0,
            },
        }];
        let e = expand_servegen("m", &w, 0).unwrap_err().to_string();
        assert!(e.contains("client 9 window 1200"), "{e}");
    }
}
