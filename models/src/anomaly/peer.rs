//! Outliers among peer endpoints: at each time, which endpoint of a route behaves unlike the
//! others. augurs' MAD detector measures each series' recent points against the double median
//! absolute deviation of all of them (Rosenmai's double MAD, which tolerates a skewed spread),
//! so one slow endpoint among ten stands out even while the whole route is slowing down, when
//! each endpoint's own history would call every one of them anomalous.

use super::{ln_normal_tail, Reason, Signal};
use augurs::outlier::{MADDetector, OutlierDetector};

/// A peer's score at the latest time.
pub type PeerScore = Signal;

#[derive(Clone, Debug)]
pub struct PeerOutliers {
    /// Trailing points of each series that are averaged into its score.
    recent: usize,
    /// Fewest peers a comparison needs.
    min_peers: usize,
}

impl Default for PeerOutliers {
    fn default() -> PeerOutliers {
        PeerOutliers {
            recent: 3,
            min_peers: 3,
        }
    }
}

impl PeerOutliers {
    pub fn new(recent: usize, min_peers: usize) -> PeerOutliers {
        PeerOutliers {
            recent: recent.max(1),
            min_peers: min_peers.max(3),
        }
    }

    /// Scores each peer's latest points against all peers' recent windows. `windows[i]` are
    /// peer i's last points, oldest first, all of the same length.
    pub fn score(&self, windows: &[&[f64]]) -> Vec<PeerScore> {
        let none = |peers| vec![Signal::quiet(Reason::NoPeers { peers }); windows.len()];
        let n = windows.len();
        let len = windows.first().map_or(0, |w| w.len());
        if n < self.min_peers || len == 0 || windows.iter().any(|w| w.len() != len) {
            return none(n);
        }
        // Threshold only affects augurs' own flags; the scores are what is used.
        let det = MADDetector::with_threshold(3.0);
        let Ok(pre) = det.preprocess(windows) else {
            return none(n);
        };
        let Ok(out) = det.detect(&pre) else {
            return none(n);
        };
        let from = len.saturating_sub(self.recent);
        let mut last: Vec<f64> = windows.iter().filter_map(|w| w.last().copied()).collect();
        last.sort_by(f64::total_cmp);
        let median = last.get(last.len() / 2).copied().unwrap_or(f64::NAN);
        windows
            .iter()
            .zip(&out.series_results)
            .map(|(w, r)| {
                let tail_z: Vec<f64> = r.scores[from..]
                    .iter()
                    .copied()
                    .filter(|z| z.is_finite())
                    .collect();
                if tail_z.is_empty() {
                    return Signal::quiet(Reason::NoPeers { peers: n });
                }
                let z = tail_z.iter().sum::<f64>() / tail_z.len() as f64;
                let value = w.last().copied().unwrap_or(f64::NAN);
                let signed = if value < median { -z } else { z };
                // Averaging `m` points narrows the null spread by √m.
                let ln_tail =
                    std::f64::consts::LN_2 + ln_normal_tail(z * (tail_z.len() as f64).sqrt());
                Signal::of_ln_tail(
                    ln_tail.min(0.0),
                    Reason::Peer {
                        value,
                        median,
                        z: signed,
                        peers: n,
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slow_endpoint_stands_out_even_when_all_slow_down() {
        let base = |k: f64| -> Vec<f64> {
            (0..20)
                .map(|i| k * (20.0 + i as f64 + (i % 3) as f64))
                .collect()
        };
        let mut ws: Vec<Vec<f64>> = (0..8).map(|j| base(1.0 + 0.03 * j as f64)).collect();
        for v in ws[5].iter_mut().skip(15) {
            *v *= 4.0;
        }
        let refs: Vec<&[f64]> = ws.iter().map(|w| w.as_slice()).collect();
        let s = PeerOutliers::default().score(&refs);
        let best = (0..8)
            .max_by(|&a, &b| s[a].score.total_cmp(&s[b].score))
            .unwrap_or(0);
        assert_eq!(best, 5, "{s:?}");
        assert!(s[5].score > 0.5);
        assert!(s[5].reason.to_string().contains("median of 8 peers"));
    }

    #[test]
    fn too_few_or_identical_peers_do_not_score() {
        let a = [1.0, 2.0];
        assert!(PeerOutliers::default()
            .score(&[&a, &a])
            .iter()
            .all(|s| s.score == 0.0 && matches!(s.reason, Reason::NoPeers { .. })));
        let b = [3.0; 5];
        assert!(PeerOutliers::default()
            .score(&[&b, &b, &b, &b])
            .iter()
            .all(|s| s.score == 0.0));
        let c = [1.0, 2.0, 3.0];
        assert_eq!(PeerOutliers::default().score(&[&c, &c[..2], &c]).len(), 3);
    }
}
