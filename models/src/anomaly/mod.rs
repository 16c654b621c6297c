//! Streaming anomaly detectors. Every point is scored from the past only (as NAB requires and
//! as the brain sees it live), the score lies in [0, 1], and each score comes with a
//! [`Reason`] that a person can read. State is allocated at construction; `update` does not
//! allocate, so one detector per scope can run every tick.
//!
//! The detectors share one calibration: a raw surprise becomes a tail probability `p` (how
//! often a point this surprising occurs by chance), and the score is `1 - p^(1/10)`, so 0.9
//! means "one in 10¹⁰" whatever the series. A threshold chosen once therefore means the same
//! on a request rate, a latency and an error ratio.

pub mod changepoint;
pub mod peer;
pub mod residual;

pub use changepoint::{Changepoint, CusumParams};
pub use peer::{PeerOutliers, PeerScore};
pub use residual::{Residual, ResidualParams};

use std::fmt;

/// One scored point.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Signal {
    /// In [0, 1]; higher is more anomalous.
    pub score: f64,
    /// `-ln p`, the surprise the score was made from (0 when nothing is known).
    pub surprise: f64,
    pub reason: Reason,
}

impl Signal {
    /// A point that tells nothing.
    pub fn quiet(reason: Reason) -> Signal {
        Signal {
            score: 0.0,
            surprise: 0.0,
            reason,
        }
    }

    /// A point with tail probability `exp(ln_tail)`.
    pub fn of_ln_tail(ln_tail: f64, reason: Reason) -> Signal {
        Signal {
            score: score_of_ln_tail(ln_tail),
            surprise: (-ln_tail).max(0.0),
            reason,
        }
    }
}

/// Why a point scored what it did, with the numbers behind it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Still learning what normal looks like.
    Warmup { seen: usize, needed: usize },
    /// The series has not moved at all yet, so there is no scale to measure a move against.
    Flat { value: f64 },
    /// The point was missing or not a number; it is not scored and does not teach.
    Missing,
    /// The point against its one-step forecast, in robust standard deviations of the recent
    /// forecast errors; `recent_z` is the mean over the last few points, the part that is
    /// scored (one wild point in a noisy series is not an anomaly, several are).
    Residual {
        value: f64,
        forecast: f64,
        scale: f64,
        z: f64,
        recent_z: f64,
        tail: f64,
    },
    /// The level moved: the mean of the points since `since` back is `after` where it had
    /// been `before`, `sigmas` robust standard deviations away; `cusum` is the accumulated
    /// evidence (the alarm level is `limit`).
    Shift {
        before: f64,
        after: f64,
        sigmas: f64,
        since: usize,
        cusum: f64,
        limit: f64,
    },
    /// One endpoint against its peers at the same time: `value` where the peers' median is
    /// `median`, `z` robust deviations away (MAD), among `peers` endpoints.
    Peer {
        value: f64,
        median: f64,
        z: f64,
        peers: usize,
    },
    /// Peers are too few, or agree too exactly, for a deviation to mean anything.
    NoPeers { peers: usize },
    /// An alarm was raised within the last `age` points; a lower score is held back so one
    /// incident raises one alarm.
    Held { age: usize, peak: f64 },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::Warmup { seen, needed } => {
                write!(f, "learning: {seen} of {needed} points seen")
            }
            Reason::Missing => write!(f, "missing point, not scored"),
            Reason::Flat { value } => write!(
                f,
                "flat at {} so far: no spread yet to measure a move against",
                num(value)
            ),
            Reason::Shift { before, since: 0, .. } => {
                write!(f, "level steady near {}", num(before))
            }
            Reason::Residual {
                value,
                forecast,
                scale,
                z,
                recent_z,
                tail,
            } => write!(
                f,
                "{} against a forecast of {}: an error of {z:+.1} σ (σ = {}), {recent_z:.1} σ over the recent points; chance {}",
                num(value),
                num(forecast),
                num(scale),
                chance(tail)
            ),
            Reason::Shift {
                before,
                after,
                sigmas,
                since,
                cusum,
                limit,
            } => write!(
                f,
                "level moved from {} to {} ({sigmas:+.1} σ) over the last {since} points (evidence {cusum:.1} of {limit:.1})",
                num(before),
                num(after)
            ),
            Reason::Peer {
                value,
                median,
                z,
                peers,
            } => write!(
                f,
                "{} where the median of {peers} peers is {} ({z:+.1} robust σ)",
                num(value),
                num(median)
            ),
            Reason::NoPeers { peers } => {
                write!(f, "{peers} peers: too few or too alike to compare")
            }
            Reason::Held { age, peak } => {
                write!(f, "alarm {age} points ago (score {peak:.2}); held so one incident raises one alarm")
            }
        }
    }
}

fn num(x: f64) -> String {
    let a = x.abs();
    if a != 0.0 && !(0.01..1e6).contains(&a) {
        format!("{x:.3e}")
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.3}")
    }
}

fn chance(p: f64) -> String {
    if p <= 0.0 {
        "below 1 in 10¹⁰".to_string()
    } else if p >= 0.01 {
        format!("{:.0} %", 100.0 * p)
    } else {
        format!("1 in {}", num(1.0 / p))
    }
}

/// Decades of improbability per unit of `-ln(1 - score)`: a score of 0.9 is a chance of one
/// in 10¹⁰, 0.99 one in 10²⁰; scores stay distinct far into the tail, so the most surprising
/// points of different series can still be ranked against each other.
const DECADES: f64 = 10.0;

/// The common calibration: the natural log of a tail probability → score in [0, 1].
pub fn score_of_ln_tail(ln_p: f64) -> f64 {
    if ln_p.is_nan() {
        return 0.0;
    }
    (1.0 - (ln_p.min(0.0) / DECADES).exp()).clamp(0.0, 1.0)
}

/// [`score_of_ln_tail`] of a probability.
pub fn score_of_tail(p: f64) -> f64 {
    if !p.is_finite() {
        return 0.0;
    }
    score_of_ln_tail(p.clamp(0.0, 1.0).ln())
}

/// The tail probability a score stands for (the inverse of [`score_of_tail`]).
pub fn tail_of_score(score: f64) -> f64 {
    (1.0 - score.clamp(0.0, 1.0)).powf(DECADES)
}

/// P(Z > z) for a standard normal.
pub fn normal_tail(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

/// ln P(Z > z), exact where `erfc` is representable and by Mills' ratio beyond.
pub fn ln_normal_tail(z: f64) -> f64 {
    if z < 30.0 {
        normal_tail(z).ln()
    } else {
        -0.5 * z * z - z.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln() + (1.0 - 1.0 / (z * z)).ln()
    }
}

/// A fixed-capacity ring of the last `cap` values with their running sum and sum of squares,
/// recomputed exactly every `cap` pushes so rounding cannot drift.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    buf: Vec<f64>,
    next: usize,
    len: usize,
    sum: f64,
    sum2: f64,
    pushes: usize,
}

impl Window {
    pub(crate) fn new(cap: usize) -> Window {
        Window {
            buf: vec![0.0; cap.max(1)],
            next: 0,
            len: 0,
            sum: 0.0,
            sum2: 0.0,
            pushes: 0,
        }
    }

    pub(crate) fn push(&mut self, x: f64) {
        let cap = self.buf.len();
        if self.len == cap {
            let old = self.buf[self.next];
            self.sum -= old;
            self.sum2 -= old * old;
        } else {
            self.len += 1;
        }
        self.buf[self.next] = x;
        self.next = (self.next + 1) % cap;
        self.sum += x;
        self.sum2 += x * x;
        self.pushes += 1;
        if self.pushes % cap == 0 {
            let live = &self.buf[..self.len];
            self.sum = live.iter().sum();
            self.sum2 = live.iter().map(|v| v * v).sum();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn mean(&self) -> f64 {
        if self.len == 0 {
            0.0
        } else {
            self.sum / self.len as f64
        }
    }

    pub(crate) fn std(&self) -> f64 {
        if self.len < 2 {
            return 0.0;
        }
        let n = self.len as f64;
        let m = self.sum / n;
        ((self.sum2 / n - m * m).max(0.0) * n / (n - 1.0)).sqrt()
    }
}

/// One alarm per incident: after a score, lower scores for the next `hold` points are held
/// back (reported as zero), and only a higher one gets through. NAB, like an on-call person,
/// counts the first alarm of an incident and charges for every alarm outside it.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    hold: usize,
    /// Scores below `floor` never start a hold (noise must not mute a real alarm).
    floor: f64,
    peak: f64,
    age: usize,
}

impl Debounce {
    pub fn new(hold: usize, floor: f64) -> Debounce {
        Debounce {
            hold,
            floor,
            peak: 0.0,
            age: usize::MAX,
        }
    }

    pub fn apply(&mut self, s: Signal) -> Signal {
        self.age = self.age.saturating_add(1);
        if self.age > self.hold {
            self.peak = 0.0;
        }
        if s.score > self.peak {
            if s.score >= self.floor {
                self.peak = s.score;
                self.age = 0;
            }
            return s;
        }
        Signal::quiet(Reason::Held {
            age: self.age,
            peak: self.peak,
        })
    }
}

/// A detector that scores one series a point at a time.
pub trait Streaming {
    fn update(&mut self, x: f64) -> Signal;
}

/// The detector `eval anomaly` and the brain run on one series: the residual and the
/// level-shift evidence joined by Fisher's method (`-2 Σ ln p` is χ² with 4 degrees of freedom
/// when both are quiet), then debounced. A point that is a little surprising to both scores
/// higher than one that is as surprising to one alone; the reason is the stronger one's.
#[derive(Clone, Debug)]
pub struct Combined {
    pub residual: Residual,
    pub shift: Changepoint,
    debounce: Debounce,
}

impl Combined {
    pub fn new(residual: Residual, shift: Changepoint, debounce: Debounce) -> Combined {
        Combined {
            residual,
            shift,
            debounce,
        }
    }
}

/// ln P(χ²₄ > -2 (ln p₁ + ln p₂)), from the two surprises.
fn fisher2(s1: f64, s2: f64) -> f64 {
    let s = s1 + s2;
    -s + (1.0 + s).ln()
}

impl Streaming for Combined {
    fn update(&mut self, x: f64) -> Signal {
        let a = self.residual.update(x);
        let b = self.shift.update(x);
        let reason = if b.surprise > a.surprise {
            b.reason
        } else {
            a.reason
        };
        let joined = match (a.reason, b.reason) {
            (Reason::Missing, _) | (Reason::Warmup { .. }, _) => a,
            (_, Reason::Warmup { .. }) => Signal { reason, ..a },
            _ => Signal::of_ln_tail(fisher2(a.surprise, b.surprise), reason),
        };
        self.debounce.apply(joined)
    }
}

/// The single-series detectors by name, with what each looks for.
pub const DETECTORS: [(&str, &str); 3] = [
    (
        "combined",
        "residual and level-shift evidence joined (Fisher's method), one alarm per incident",
    ),
    (
        "residual",
        "robust z of one-step forecast errors, judged against their own history",
    ),
    ("changepoint", "two-sided CUSUM for sustained level shifts"),
];

/// A detector with one alarm per incident.
#[derive(Clone, Debug)]
pub struct Debounced<D> {
    pub inner: D,
    debounce: Debounce,
}

impl<D: Streaming> Streaming for Debounced<D> {
    fn update(&mut self, x: f64) -> Signal {
        let s = self.inner.update(x);
        self.debounce.apply(s)
    }
}

/// About 33 hours at NAB's 5-minute step, roughly the width of one of its label windows;
/// tuned on NAB's development folders only (docs/benchmarks.md).
const HOLD: usize = 400;
const HOLD_FLOOR: f64 = 0.5;

/// A fresh detector of the named kind with its default settings.
pub fn by_name(name: &str) -> Option<Box<dyn Streaming + Send>> {
    fn debounced<D>(inner: D) -> Debounced<D> {
        Debounced {
            inner,
            debounce: Debounce::new(HOLD, HOLD_FLOOR),
        }
    }
    Some(match name {
        "combined" => Box::new(Combined::default()),
        "residual" => Box::new(debounced(Residual::default())),
        "changepoint" => Box::new(debounced(Changepoint::new(CusumParams::default()))),
        _ => return None,
    })
}

impl Default for Combined {
    fn default() -> Combined {
        Combined::new(
            Residual::default(),
            Changepoint::new(CusumParams::default()),
            Debounce::new(HOLD, HOLD_FLOOR),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_is_monotone_and_bounded() {
        assert_eq!(score_of_tail(1.0), 0.0);
        assert_eq!(score_of_tail(0.0), 1.0);
        assert!((score_of_tail(1e-10) - 0.9).abs() < 1e-12);
        assert!((tail_of_score(score_of_tail(1e-7)) / 1e-7 - 1.0).abs() < 1e-6);
        assert_eq!(score_of_tail(f64::NAN), 0.0);
        let mut last = 0.0;
        for k in 0..300 {
            let s = score_of_ln_tail(-(k as f64));
            assert!(s > last || k == 0, "{k}");
            last = s;
        }
        assert!(last < 1.0);
        assert!((normal_tail(0.0) - 0.5).abs() < 1e-12);
        assert!((normal_tail(1.959964) - 0.025).abs() < 1e-6);
        let (exact, mills) = (normal_tail(30.0).ln(), ln_normal_tail(30.0));
        assert!((exact - mills).abs() < 1e-4, "{exact} {mills}");
        assert!(ln_normal_tail(29.9) > mills && ln_normal_tail(1e3).is_finite());
    }

    #[test]
    fn window_sums_match_a_recount() {
        let mut w = Window::new(7);
        let xs: Vec<f64> = (0..100)
            .map(|i| ((i * 37) % 11) as f64 * 1e6 + 0.1)
            .collect();
        for (i, &x) in xs.iter().enumerate() {
            w.push(x);
            let live = &xs[(i + 1).saturating_sub(7)..=i];
            let m = live.iter().sum::<f64>() / live.len() as f64;
            assert!((w.mean() - m).abs() < 1e-6 * m.abs().max(1.0));
        }
    }

    #[test]
    fn debounce_passes_the_first_alarm_and_holds_the_echoes() {
        let mut d = Debounce::new(3, 0.3);
        let sig = |score| Signal {
            score,
            surprise: 0.0,
            reason: Reason::Missing,
        };
        let out: Vec<f64> = [0.1, 0.8, 0.7, 0.9, 0.5, 0.5, 0.5, 0.5, 0.6]
            .iter()
            .map(|&s| d.apply(sig(s)).score)
            .collect();
        assert_eq!(out, vec![0.1, 0.8, 0.0, 0.9, 0.0, 0.0, 0.0, 0.5, 0.6]);
    }
}
