//! NAB's scoring, reimplemented from numenta/NAB (`nab/sweeper.py`, `optimizer.py`,
//! `runner.py` at ea702d7) so a detector can be judged in a second without Python. The rules,
//! kept exactly because the score is only comparable if they are:
//!
//! - the first 15 % of each file (at most 750 points) is probation and not scored;
//! - a detection inside a label window earns `tp · S(pos)` for the window's earliest
//!   detection only, where `S` is NAB's scaled sigmoid of the position in the window (1 at the
//!   left edge, 0 at the right), and a window without one costs `fn`;
//! - a detection outside windows costs `fp · S(distance past the previous window)`, or the
//!   full `fp` before any window;
//! - the threshold is the one (over all distinct scores, corpus-wide) that maximises the total,
//!   ties going to the higher threshold; the score is normalised as
//!   `100 · (raw − null) / (perfect − null)`, with NAB's null detector (a constant 0.5) run
//!   through the same optimisation and `perfect` = windows × `tp`.

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Profile {
    pub name: &'static str,
    pub tp: f64,
    pub fp: f64,
    #[serde(rename = "fn")]
    pub fn_: f64,
}

/// NAB's `config/profiles.json`.
pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        tp: 1.0,
        fp: 0.11,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FP_rate",
        tp: 1.0,
        fp: 0.22,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FN_rate",
        tp: 1.0,
        fp: 0.11,
        fn_: 2.0,
    },
];

/// One file's timestamps, scores and label windows (inclusive, same time base).
pub struct File<'a> {
    pub ts: &'a [i64],
    pub scores: &'a [f64],
    pub windows: &'a [(i64, i64)],
}

fn scaled_sigmoid(pos: f64) -> f64 {
    if pos > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * pos).exp()) - 1.0
    }
}

/// A scorable point: its score, its weighted value if detected, and its window (corpus-wide
/// index) when it lies in one.
#[derive(Clone, Copy, Debug)]
struct Point {
    score: f64,
    sweep: f64,
    window: Option<usize>,
}

/// Points at the start of an `n`-point file that NAB leaves unscored: min(⌊0.15 n⌋, 750).
pub fn probation(n: usize) -> usize {
    ((0.15 * n as f64).floor() as usize).min(750)
}

/// `Sweeper.calcSweepScore` for one file; windows are numbered from `first_window`.
fn sweep(f: &File<'_>, p: &Profile, first_window: usize, out: &mut Vec<Point>) {
    let max_tp = scaled_sigmoid(-1.0);
    let index_of = |t: i64| f.ts.iter().position(|&x| x == t);
    let prob = probation(f.ts.len());
    let mut next = 0usize;
    // (window number, right index, width) of the window we are in.
    let mut cur: Option<(usize, usize, f64)> = None;
    let mut prev: Option<(usize, f64)> = None;
    for (i, (&t, &score)) in f.ts.iter().zip(f.scores).enumerate() {
        if cur.is_none() && next < f.windows.len() && t == f.windows[next].0 {
            let (a, b) = f.windows[next];
            if let (Some(l), Some(r)) = (index_of(a), index_of(b)) {
                cur = Some((first_window + next, r, (r as f64 - l as f64) + 1.0));
            }
            next += 1;
        }
        let (sweep, window) = match cur {
            Some((w, right, width)) => {
                let pos = -((right as f64) - i as f64 + 1.0) / width;
                (scaled_sigmoid(pos) * p.tp / max_tp, Some(w))
            }
            None => {
                let s = match prev {
                    None => -1.0,
                    Some((right, width)) => {
                        scaled_sigmoid((right as f64 - i as f64).abs() / (width - 1.0))
                    }
                };
                (s * p.fp, None)
            }
        };
        if i >= prob {
            out.push(Point {
                score,
                sweep,
                window,
            });
        }
        if let Some((w, _, width)) = cur {
            if t == f.windows[w - first_window].1 {
                prev = Some((i, width));
                cur = None;
            }
        }
    }
}

/// The total at one threshold, with the counts behind it.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct AtThreshold {
    pub threshold: f64,
    pub score: f64,
    pub tp: usize,
    pub fp: usize,
    /// Windows with at least one detection.
    pub windows_hit: usize,
}

/// Running totals of the sweep at the current threshold.
#[derive(Default)]
struct Tally {
    fp_sum: f64,
    window_sum: f64,
    tp: usize,
    fp: usize,
    hit: usize,
}

impl Tally {
    fn at(&self, threshold: f64) -> AtThreshold {
        AtThreshold {
            threshold,
            score: self.fp_sum + self.window_sum,
            tp: self.tp,
            fp: self.fp,
            windows_hit: self.hit,
        }
    }
}

/// `Sweeper.calcScoreByThreshold` + `optimizer.optimizeThreshold`: the best threshold.
fn optimise(points: &mut [Point], n_windows: usize, p: &Profile) -> AtThreshold {
    // Descending and stable, as Python's sorted(reverse=True).
    points.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut best_in: Vec<Option<f64>> = vec![None; n_windows];
    let mut scorable = vec![false; n_windows];
    for w in points.iter().filter_map(|q| q.window) {
        scorable[w] = true;
    }
    let mut n = Tally {
        window_sum: scorable.iter().filter(|&&s| s).count() as f64 * -p.fn_,
        ..Tally::default()
    };
    let mut cur = 1.1;
    let mut best = n.at(cur);
    for q in points.iter() {
        if q.score != cur {
            let at = n.at(cur);
            if at.score > best.score {
                best = at;
            }
            cur = q.score;
        }
        match q.window {
            None => {
                n.fp += 1;
                n.fp_sum += q.sweep;
            }
            Some(w) => {
                n.tp += 1;
                let old = best_in[w].unwrap_or(-p.fn_);
                if best_in[w].is_none() {
                    n.hit += 1;
                }
                let new = old.max(q.sweep);
                best_in[w] = Some(new);
                n.window_sum += new - old;
            }
        }
    }
    let at = n.at(cur);
    if at.score > best.score {
        best = at;
    }
    best
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Scored {
    pub profile: Profile,
    pub best: AtThreshold,
    pub null: AtThreshold,
    pub windows: usize,
    /// NAB's final score.
    pub normalised: f64,
}

fn raw(files: &[File<'_>], p: &Profile, constant: Option<f64>) -> (AtThreshold, usize) {
    let mut points = Vec::new();
    let mut first = 0;
    for f in files {
        match constant {
            Some(c) => {
                let same = vec![c; f.ts.len()];
                let g = File {
                    ts: f.ts,
                    scores: &same,
                    windows: f.windows,
                };
                sweep(&g, p, first, &mut points);
            }
            None => sweep(f, p, first, &mut points),
        }
        first += f.windows.len();
    }
    (optimise(&mut points, first, p), first)
}

/// Scores a corpus under one profile, normalised against the null detector.
pub fn score(files: &[File<'_>], p: &Profile) -> Scored {
    let (best, windows) = raw(files, p, None);
    let (null, _) = raw(files, p, Some(0.5));
    let perfect = windows as f64 * p.tp;
    let normalised = if perfect > null.score {
        100.0 * (best.score - null.score) / (perfect - null.score)
    } else {
        0.0
    };
    Scored {
        profile: *p,
        best,
        null,
        windows,
        normalised,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: usize) -> (Vec<i64>, Vec<(i64, i64)>) {
        ((0..n as i64).collect(), vec![(500, 599)])
    }

    #[test]
    fn a_perfect_early_detection_scores_a_hundred_and_nothing_scores_zero() {
        let (ts, w) = file(1000);
        let mut s = vec![0.0; 1000];
        s[500] = 1.0;
        let f = [File {
            ts: &ts,
            scores: &s,
            windows: &w,
        }];
        let r = score(&f, &PROFILES[0]);
        assert!((r.normalised - 100.0).abs() < 1e-9, "{r:?}");
        assert_eq!(r.best.threshold, 1.0);
        let z = vec![0.0; 1000];
        let f = [File {
            ts: &ts,
            scores: &z,
            windows: &w,
        }];
        let r = score(&f, &PROFILES[0]);
        assert!(r.normalised.abs() < 1e-9, "{r:?}");
        assert_eq!(r.null.score, -1.0);
    }

    #[test]
    fn late_detections_and_false_positives_cost_what_nab_says() {
        let (ts, w) = file(1000);
        let mut s = vec![0.0; 1000];
        // Halfway into the window: S(-0.5) / S(-1).
        s[550] = 1.0;
        s[300] = 1.0; // before any window: −fp
        let f = [File {
            ts: &ts,
            scores: &s,
            windows: &w,
        }];
        let r = score(&f, &PROFILES[0]);
        let pos = -(599.0 - 550.0 + 1.0) / 100.0;
        let want = scaled_sigmoid(pos) / scaled_sigmoid(-1.0) - 0.11;
        assert!(
            (r.best.score - want).abs() < 1e-12,
            "{} vs {want}",
            r.best.score
        );
        assert_eq!((r.best.tp, r.best.fp, r.best.windows_hit), (1, 1, 1));
        // Probation: a detection in the first 15 % is not counted.
        let mut s = vec![0.0; 1000];
        s[100] = 1.0;
        let f = [File {
            ts: &ts,
            scores: &s,
            windows: &w,
        }];
        assert_eq!(score(&f, &PROFILES[0]).best.fp, 0);
    }
}
