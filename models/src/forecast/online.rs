//! Forecasters cheap enough to update every tick for every scope: O(1) work per point, no
//! allocation after construction.

/// A forecaster that learns one point at a time.
pub trait Online {
    /// Learns the next point. Non-finite points are skipped (a missing window).
    fn update(&mut self, y: f64);
    /// The point forecast `h >= 1` steps after the last point learned.
    fn predict(&self, h: usize) -> f64;
    /// Points learned so far.
    fn seen(&self) -> usize;
}

/// The baseline: the value one season ago (`y[t + h - season]`, the last full season
/// repeated). Before a season has been seen, the last value.
#[derive(Clone, Debug)]
pub struct SeasonalNaive {
    season: usize,
    ring: Vec<f64>,
    n: usize,
}

impl SeasonalNaive {
    pub fn new(season: usize) -> SeasonalNaive {
        let season = season.max(1);
        SeasonalNaive {
            season,
            ring: vec![0.0; season],
            n: 0,
        }
    }
}

impl Online for SeasonalNaive {
    fn update(&mut self, y: f64) {
        let y = if y.is_finite() {
            y
        } else if self.n > 0 {
            self.ring[(self.n - 1) % self.season]
        } else {
            0.0
        };
        self.ring[self.n % self.season] = y;
        self.n += 1;
    }

    fn predict(&self, h: usize) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        if self.n < self.season {
            return self.ring[(self.n - 1) % self.season];
        }
        // Target index n - 1 + h; one (or more) seasons back lands inside the last season.
        let back = (h.max(1) - 1) % self.season;
        self.ring[(self.n - self.season + back) % self.season]
    }

    fn seen(&self) -> usize {
        self.n
    }
}

/// Smoothing parameters of [`HoltWinters`].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HwParams {
    /// Level.
    pub alpha: f64,
    /// Trend (0: no trend).
    pub beta: f64,
    /// Season.
    pub gamma: f64,
    /// Trend damping per step.
    pub phi: f64,
    /// Seasonal smoothing across neighbouring slots (0: each slot learns alone). Count series
    /// at a fine step have one noisy observation per slot per season; spreading each update
    /// over a few neighbours, with weights falling off linearly, learns the shape faster.
    pub spread: usize,
    /// Errors beyond `robust` running scales are clipped before they update anything (0: off),
    /// so an outage or a burst does not drag the level away and leave it wrong afterwards
    /// (robust Holt-Winters, after Gelper, Fried & Croux 2010).
    #[serde(default)]
    pub robust: f64,
    /// A second, shorter season in points (0: none), e.g. the hour inside the day.
    #[serde(default)]
    pub season2: usize,
    /// Smoothing of the second season.
    #[serde(default)]
    pub gamma2: f64,
}

impl Default for HwParams {
    fn default() -> HwParams {
        HwParams {
            alpha: 0.2,
            beta: 0.0,
            gamma: 0.1,
            phi: 0.98,
            spread: 0,
            robust: 0.0,
            season2: 0,
            gamma2: 0.0,
        }
    }
}

/// Additive Holt-Winters with a damped trend, updated in place: level, trend and one
/// seasonal slot per point. The first season initialises the level and the seasonal shape.
#[derive(Clone, Debug)]
pub struct HoltWinters {
    p: HwParams,
    season: usize,
    level: f64,
    trend: f64,
    seasonal: Vec<f64>,
    second: Vec<f64>,
    /// Running scale of one-step errors (variance), for the robust clip.
    scale2: f64,
    /// Consecutive points skipped as a gap (robust mode).
    gap_run: usize,
    /// Points of the first season, until it is complete.
    n: usize,
    warm_sum: f64,
    last: f64,
    /// Seasonal update weights for slot offsets -spread..=spread.
    kernel: Vec<f64>,
}

impl HoltWinters {
    pub fn new(season: usize, p: HwParams) -> HoltWinters {
        let season = season.max(1);
        let spread = p.spread.min(season / 2);
        // Weight 1 at the slot itself, falling linearly to 1 / (spread + 1) at the edges.
        let kernel = (0..=2 * spread)
            .map(|i| 1.0 - (i as f64 - spread as f64).abs() / (spread + 1) as f64)
            .collect();
        HoltWinters {
            p,
            season,
            level: 0.0,
            trend: 0.0,
            seasonal: vec![0.0; season],
            second: vec![0.0; p.season2],
            scale2: 0.0,
            gap_run: 0,
            n: 0,
            warm_sum: 0.0,
            last: 0.0,
            kernel,
        }
    }

    pub fn params(&self) -> HwParams {
        self.p
    }

    fn slot(&self, t: usize) -> usize {
        t % self.season
    }
}

impl Online for HoltWinters {
    fn update(&mut self, y: f64) {
        let t = self.n;
        self.n += 1;
        if t < self.season {
            let y = if y.is_finite() { y } else { self.last };
            self.last = y;
            // First season: remember the raw values; the shape is set when it completes.
            self.seasonal[t] = y;
            self.warm_sum += y;
            if t + 1 == self.season {
                self.level = self.warm_sum / self.season as f64;
                for s in &mut self.seasonal {
                    *s -= self.level;
                }
                // The clip's first scale: the mean step between neighbouring points.
                let steps = self
                    .seasonal
                    .windows(2)
                    .map(|w| (w[1] - w[0]).abs())
                    .sum::<f64>();
                let m = steps / (self.season.max(2) - 1) as f64;
                self.scale2 = (1.25 * m).powi(2);
            }
            return;
        }
        let k = self.slot(t);
        let s = self.seasonal[k];
        let k2 = if self.second.is_empty() {
            0
        } else {
            t % self.second.len()
        };
        let s2 = self.second.get(k2).copied().unwrap_or(0.0);
        let p = self.p;
        let prev = self.level;
        // The one-step forecast of this point: what stands in for a missing point, what a gap
        // is measured against, and the centre of the robust clip.
        let f = prev + p.phi * self.trend + s + s2;
        let mut y = if y.is_finite() { y } else { f };
        if p.robust > 0.0 {
            // A point below a tenth of the forecast is a gap in the data or an outage, not a
            // change in demand; it is learned as missing, for up to a quarter season in a row
            // (after that the drop is real and the model follows it).
            if f > 0.0 && y < 0.1 * f && self.gap_run < self.season / 4 {
                self.gap_run += 1;
                y = f;
            } else {
                self.gap_run = 0;
            }
        }
        self.last = y;
        if p.robust > 0.0 && self.scale2 > 0.0 {
            let lim = p.robust * self.scale2.sqrt();
            let e = y - f;
            // The scale learns from errors capped at two scales: a long run of huge errors
            // (an outage) widens the clip by at most 6 % a point, a lasting shift still gets
            // through in time.
            self.scale2 = 0.98 * self.scale2 + 0.02 * e.powi(2).min(4.0 * self.scale2);
            y = f + e.clamp(-lim, lim);
        }
        self.level = p.alpha * (y - s - s2) + (1.0 - p.alpha) * (prev + p.phi * self.trend);
        self.trend = p.beta * (self.level - prev) + (1.0 - p.beta) * p.phi * self.trend;
        let err = y - self.level - s - s2;
        if let Some(w) = self.second.get_mut(k2) {
            *w += p.gamma2 * err;
        }
        if self.kernel.len() == 1 {
            self.seasonal[k] = s + p.gamma * err;
        } else {
            let spread = self.kernel.len() / 2;
            for (i, w) in self.kernel.iter().enumerate() {
                let j = (k + self.season + i - spread) % self.season;
                self.seasonal[j] += p.gamma * w * err;
            }
        }
    }

    fn predict(&self, h: usize) -> f64 {
        let h = h.max(1);
        if self.n < self.season {
            return if self.n == 0 { 0.0 } else { self.last };
        }
        // Sum of phi^1..phi^h.
        let damp = if (self.p.phi - 1.0).abs() < 1e-12 {
            h as f64
        } else {
            self.p.phi * (1.0 - self.p.phi.powi(h as i32)) / (1.0 - self.p.phi)
        };
        let t = self.n - 1 + h;
        let s2 = if self.second.is_empty() {
            0.0
        } else {
            self.second[t % self.second.len()]
        };
        self.level + damp * self.trend + self.seasonal[self.slot(t)] + s2
    }

    fn seen(&self) -> usize {
        self.n
    }
}

/// Prediction intervals for any online forecaster from its own recent errors at each horizon
/// (split-conformal on a sliding window): the interval is the forecast plus the empirical
/// quantiles of the last `window` signed errors made at that horizon. No distributional
/// assumption, and the coverage tracks the series as it changes.
#[derive(Clone, Debug)]
pub struct Calibrated<F> {
    pub model: F,
    horizons: Vec<usize>,
    /// Per horizon: forecasts waiting for their target (ring of length h).
    pending: Vec<Vec<f64>>,
    /// Per horizon: the last `window` errors (ring).
    errors: Vec<Vec<f64>>,
    /// The same errors kept sorted, so an interval is two lookups instead of a sort: one
    /// update moves at most `window` floats, a query reads two.
    sorted: Vec<Vec<f64>>,
    err_n: Vec<usize>,
    window: usize,
}

impl<F: Online> Calibrated<F> {
    pub fn new(model: F, horizons: &[usize], window: usize) -> Calibrated<F> {
        let horizons: Vec<usize> = horizons.iter().map(|h| (*h).max(1)).collect();
        Calibrated {
            model,
            pending: horizons.iter().map(|h| vec![f64::NAN; *h]).collect(),
            errors: horizons
                .iter()
                .map(|_| Vec::with_capacity(window))
                .collect(),
            sorted: horizons
                .iter()
                .map(|_| Vec::with_capacity(window))
                .collect(),
            err_n: vec![0; horizons.len()],
            horizons,
            window: window.max(1),
        }
    }

    pub fn horizons(&self) -> &[usize] {
        &self.horizons
    }

    /// Learns `y`: first scores the forecasts that targeted it, then updates the model and
    /// issues the next forecasts.
    pub fn update(&mut self, y: f64) {
        let t = self.model.seen();
        for (i, h) in self.horizons.iter().enumerate() {
            let slot = t % h;
            let f = self.pending[i][slot];
            if f.is_finite() && y.is_finite() {
                let e = y - f;
                let ring = &mut self.errors[i];
                let sorted = &mut self.sorted[i];
                if ring.len() < self.window {
                    ring.push(e);
                } else {
                    let slot = self.err_n[i] % self.window;
                    let old = ring[slot];
                    ring[slot] = e;
                    let at = sorted.partition_point(|v| v.total_cmp(&old).is_lt());
                    if at < sorted.len() {
                        sorted.remove(at);
                    }
                }
                let at = sorted.partition_point(|v| v.total_cmp(&e).is_lt());
                sorted.insert(at, e);
                self.err_n[i] += 1;
            }
        }
        self.model.update(y);
        let t = self.model.seen();
        for (i, h) in self.horizons.iter().enumerate() {
            // Targets index t - 1 + h, which is learned when seen() == t - 1 + h.
            self.pending[i][(t - 1 + h) % h] = self.model.predict(*h);
        }
    }

    /// Point forecast and the central interval at `level` (e.g. 0.8) for horizon index `i`.
    /// The interval is `None` until some errors at that horizon have been seen.
    pub fn interval(&self, i: usize, level: f64) -> (f64, Option<(f64, f64)>) {
        let h = self.horizons[i];
        let f = self.model.predict(h);
        let sorted = &self.sorted[i];
        if sorted.len() < 10 {
            return (f, None);
        }
        let q = |p: f64| crate::metrics::quantile_sorted(sorted, p);
        let lo = (1.0 - level) / 2.0;
        (f, Some((f + q(lo), f + q(1.0 - lo))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seasonal_naive_repeats_the_last_season() {
        let mut m = SeasonalNaive::new(3);
        for y in [1.0, 2.0, 3.0, 4.0, 5.0] {
            m.update(y);
        }
        // Last season is [3, 4, 5]: t+1 -> 3 (index 2 = 5 - 3), t+2 -> 4 ... wraps.
        assert_eq!(m.predict(1), 3.0);
        assert_eq!(m.predict(2), 4.0);
        assert_eq!(m.predict(3), 5.0);
        assert_eq!(m.predict(4), 3.0);
    }

    #[test]
    fn holt_winters_learns_a_clean_season_exactly_and_follows_a_level_shift() {
        let shape = [0.0, 10.0, 20.0, 10.0];
        let mut m = HoltWinters::new(
            4,
            HwParams {
                alpha: 0.5,
                beta: 0.0,
                gamma: 0.1,
                phi: 1.0,
                ..HwParams::default()
            },
        );
        for i in 0..40 {
            m.update(100.0 + shape[i % 4]);
        }
        for h in 1..=4 {
            assert!((m.predict(h) - (100.0 + shape[(40 + h - 1) % 4])).abs() < 1e-9);
        }
        for i in 40..80 {
            m.update(150.0 + shape[i % 4]);
        }
        assert!(
            (m.predict(1) - (150.0 + shape[0])).abs() < 2.0,
            "{}",
            m.predict(1)
        );
    }

    #[test]
    fn a_robust_level_rides_out_an_outage() {
        let shape = [0.0, 10.0, 20.0, 10.0];
        let y = |i: usize| 100.0 + shape[i % 4];
        let p = HwParams {
            alpha: 0.5,
            beta: 0.0,
            gamma: 0.1,
            phi: 1.0,
            ..HwParams::default()
        };
        let mut plain = HoltWinters::new(4, p);
        let mut robust = HoltWinters::new(4, HwParams { robust: 3.0, ..p });
        let mut noise = 0.0f64;
        let mut feed =
            |from: usize, to: usize, plain: &mut HoltWinters, robust: &mut HoltWinters| {
                for i in from..to {
                    noise = (noise * 7.3 + 1.1) % 2.0;
                    let v = if (150..160).contains(&i) {
                        0.0
                    } else {
                        y(i) + noise - 1.0
                    };
                    plain.update(v);
                    robust.update(v);
                }
            };
        feed(0, 160, &mut plain, &mut robust);
        // Just after ten points of zeros the plain level has collapsed, the robust one has not.
        let (ep, er) = (
            (plain.predict(1) - y(160)).abs(),
            (robust.predict(1) - y(160)).abs(),
        );
        assert!(er < ep / 2.0, "robust {er} plain {ep}");
        feed(160, 200, &mut plain, &mut robust);
        assert!(
            (robust.predict(1) - y(200)).abs() < 3.0,
            "{}",
            robust.predict(1)
        );
    }

    #[test]
    fn a_second_season_learns_an_hourly_spike_inside_the_day() {
        // Season 24 with a spike every 6 points: the second season (6) learns it four times
        // a day instead of once.
        let y = |i: usize| 50.0 + if i % 6 == 1 { 40.0 } else { 0.0 } + (i % 24) as f64;
        let p = HwParams {
            alpha: 0.2,
            beta: 0.0,
            gamma: 0.05,
            phi: 1.0,
            ..HwParams::default()
        };
        let mut one = HoltWinters::new(24, HwParams { ..p });
        let mut two = HoltWinters::new(
            24,
            HwParams {
                season2: 6,
                gamma2: 0.3,
                ..p
            },
        );
        // The spike starts after the warm-up day.
        for i in 0..24 * 3 {
            let v = if i < 24 { 50.0 + (i % 24) as f64 } else { y(i) };
            one.update(v);
            two.update(v);
        }
        let t = 24 * 3;
        let target = (1..=6).find(|h| (t - 1 + h) % 6 == 1).unwrap_or(1);
        let want = y(t - 1 + target);
        assert!((two.predict(target) - want).abs() < (one.predict(target) - want).abs());
    }

    #[test]
    fn the_sorted_errors_match_a_sort_of_the_ring() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(9);
        let mut c = Calibrated::new(SeasonalNaive::new(3), &[1, 4], 50);
        for t in 0..2000 {
            // Repeated values and jumps both occur, so ties are exercised.
            let y = if t % 7 == 0 {
                5.0
            } else {
                rng.random_range(0.0f64..100.0).round()
            };
            c.update(y);
            for i in 0..2 {
                let mut want = c.errors[i].clone();
                want.sort_by(f64::total_cmp);
                assert_eq!(c.sorted[i], want, "t {t} horizon {i}");
            }
        }
    }

    #[test]
    fn conformal_intervals_cover_about_their_level_on_noise() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(3);
        let mut c = Calibrated::new(SeasonalNaive::new(1), &[1, 5], 400);
        let mut hits = [0usize; 2];
        let mut n = 0;
        let mut pending: Vec<(usize, f64, f64, f64)> = Vec::new();
        for t in 0..20_000 {
            let y: f64 = 50.0 + rng.random_range(-10.0..10.0);
            for p in pending.iter().filter(|p| p.0 == t) {
                if p.1 <= y && y <= p.2 {
                    hits[p.3 as usize] += 1;
                }
            }
            pending.retain(|p| p.0 > t);
            c.update(y);
            if t > 1000 {
                for i in 0..2 {
                    if let (_, Some((lo, hi))) = c.interval(i, 0.8) {
                        pending.push((t + c.horizons()[i], lo, hi, i as f64));
                        if i == 0 {
                            n += 1;
                        }
                    }
                }
            }
        }
        for h in hits {
            let cov = h as f64 / n as f64;
            assert!((0.77..0.83).contains(&cov), "coverage {cov}");
        }
    }
}
