//! The detectors on real labelled series from ../shared/datasets/nab: the incidents NAB's
//! labellers marked score above everything else in the scored part of the file.

use std::path::Path;
use vivremotion_datasets::catalog;
use vivremotion_models::anomaly;

fn nab(key: &str) -> vivremotion_datasets::Series {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/nab");
    let mut s = catalog::load_nab_dir(&dir, Some(key)).unwrap_or_else(|e| panic!("{e}"));
    s.remove(0)
}

/// Highest score inside each label window, and outside all of them, after NAB's probation.
fn peaks(name: &str, s: &vivremotion_datasets::Series) -> (Vec<f64>, f64, Vec<String>) {
    let mut d = anomaly::by_name(name).unwrap_or_else(|| panic!("{name}"));
    let start = vivremotion_simulations::eval::nab::probation(s.values.len());
    let mut inside = vec![0.0f64; s.windows.len()];
    let mut outside = 0.0f64;
    let mut why = vec![String::new(); s.windows.len()];
    for (i, (&t, &x)) in s.ts_ms.iter().zip(&s.values).enumerate() {
        let sig = d.update(x);
        assert!((0.0..=1.0).contains(&sig.score), "{sig:?}");
        if i < start {
            continue;
        }
        match s.windows.iter().position(|w| w.0 <= t && t <= w.1) {
            Some(w) if sig.score > inside[w] => {
                inside[w] = sig.score;
                why[w] = sig.reason.to_string();
            }
            Some(_) => {}
            None => outside = outside.max(sig.score),
        }
    }
    (inside, outside, why)
}

/// Files where every labelled incident outscores every unlabelled point, as they did when
/// the defaults were chosen (docs/benchmarks.md); a change that loses one of them fails here.
#[test]
fn labelled_incidents_outscore_everything_else() {
    for key in [
        "realAWSCloudwatch/ec2_cpu_utilization_ac20cd.csv",
        "realAWSCloudwatch/rds_cpu_utilization_e47b3b.csv",
        "realTraffic/occupancy_t4013.csv",
    ] {
        let s = nab(key);
        let (inside, outside, why) = peaks("combined", &s);
        assert!(!inside.is_empty());
        for (w, (p, r)) in inside.iter().zip(&why).enumerate() {
            assert!(
                *p > outside,
                "{key} window {w}: {p} vs outside {outside} ({r})"
            );
            assert!(!r.is_empty());
        }
    }
}

#[test]
fn a_cpu_incident_is_found_by_each_detector_with_its_reason() {
    let s = nab("realAWSCloudwatch/ec2_cpu_utilization_ac20cd.csv");
    for (name, words) in [
        ("combined", ""),
        ("residual", "against a forecast of"),
        ("changepoint", "level moved from"),
    ] {
        let (inside, outside, why) = peaks(name, &s);
        assert!(
            inside[0] > outside,
            "{name}: {inside:?} vs {outside} {why:?}"
        );
        assert!(why[0].contains(words), "{name}: {why:?}");
    }
}
