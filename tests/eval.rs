//! `vivremotion eval forecast` and `eval anomaly` on real data: the reports, the JSON and the
//! plots are written, the forecaster beats the seasonal naive baseline, the detector beats
//! NAB's windowedGaussian in NAB's own result layout, and bad arguments get clear errors.

mod common;

use common::{cmd, fails, ok};
use std::path::PathBuf;

#[test]
fn eval_forecast_writes_a_report_and_beats_seasonal_naive_on_servegen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stdout = ok(cmd()
        .args([
            "eval",
            "forecast",
            "--dataset",
            "servegen-m-large",
            "--horizons",
            "10m,20m,60m",
            "--no-mstl",
            "--out",
        ])
        .arg(dir.path()));
    assert!(stdout.contains("chose Holt-Winters"), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("results.json")).expect("results.json"),
    )
    .expect("valid JSON");
    let rows = json["horizons"].as_array().expect("horizons");
    assert_eq!(rows.len(), 3);
    for r in rows {
        let (m, n) = (
            r["mase"].as_f64().expect("mase"),
            r["mase_naive"].as_f64().expect("naive"),
        );
        assert!(m < n, "{r}");
        assert!(m < 1.0, "{r}");
        let c = r["coverage80"].as_f64().expect("coverage");
        assert!((0.6..=0.95).contains(&c), "{r}");
        assert!(r["origins"].as_u64().expect("origins") > 100, "{r}");
    }
    let report = std::fs::read_to_string(dir.path().join("report.md")).expect("report.md");
    assert!(report.contains("| 10 min (1 steps) |"), "{report}");
    for plot in [
        "forecast_10min.svg",
        "forecast_20min.svg",
        "forecast_1h.svg",
    ] {
        let svg = std::fs::read_to_string(dir.path().join(plot)).expect(plot);
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{plot}"
        );
        assert!(report.contains(plot));
    }
}

#[test]
fn a_horizon_shorter_than_the_step_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = fails(
        cmd()
            .args([
                "eval",
                "forecast",
                "--dataset",
                "servegen-m-small",
                "--horizons",
                "5m",
                "--out",
            ])
            .arg(dir.path()),
    );
    assert!(
        err.contains("horizon 5 min is not a whole number of the series' 10 min steps"),
        "{err}"
    );
}

/// NAB's own scorer (../shared/tools/nab-score) gave 50.68 / 32.13 / 59.03 on these files
/// (docs/benchmarks.md); windowedGaussian, NAB's baseline, 45.38 / 28.15 / 53.96.
#[test]
fn eval_anomaly_writes_nab_layout_and_beats_windowed_gaussian() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stdout = ok(cmd()
        .args(["eval", "anomaly", "--detector", "combined", "--out"])
        .arg(dir.path()));
    assert!(stdout.contains("51 series"), "{stdout}");
    // NAB's layout, row for row with the data file.
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/nab/data");
    let mut files = 0;
    for cat in std::fs::read_dir(&data).expect("nab data") {
        let cat = cat.expect("entry").path();
        for f in std::fs::read_dir(&cat).expect("category") {
            let f = f.expect("entry").path();
            let name = f.file_name().and_then(|n| n.to_str()).expect("name");
            let cat_name = cat.file_name().and_then(|n| n.to_str()).expect("cat");
            let res = dir
                .path()
                .join("combined")
                .join(cat_name)
                .join(format!("combined_{name}"));
            let text = std::fs::read_to_string(&res).unwrap_or_else(|e| panic!("{res:?}: {e}"));
            let src = std::fs::read_to_string(&f).expect("data file");
            assert_eq!(text.lines().count(), src.lines().count(), "{res:?}");
            let mut lines = text.lines();
            assert_eq!(lines.next(), Some("timestamp,value,anomaly_score,label"));
            for (l, s) in lines.zip(src.lines().skip(1)) {
                let cols: Vec<&str> = l.split(',').collect();
                assert_eq!(cols.len(), 4, "{l}");
                assert!(s.starts_with(cols[0]), "{l} vs {s}");
                let score: f64 = cols[2].parse().expect("score");
                assert!((0.0..=1.0).contains(&score), "{l}");
                assert!(cols[3] == "0" || cols[3] == "1", "{l}");
            }
            files += 1;
        }
    }
    assert_eq!(files, 51);
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("results.json")).expect("results.json"),
    )
    .expect("valid JSON");
    let profiles = json["profiles"].as_array().expect("profiles");
    let score = |name: &str| {
        profiles
            .iter()
            .find(|p| p["profile"]["name"] == name)
            .and_then(|p| p["normalised"].as_f64())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert!(score("standard") > 45.38, "{}", score("standard"));
    assert!(score("reward_low_FP_rate") > 28.15);
    assert!(score("reward_low_FN_rate") > 53.96);
    assert_eq!(
        std::fs::read_dir(dir.path().join("plots"))
            .expect("plots")
            .count(),
        51
    );
    let report = std::fs::read_to_string(dir.path().join("report.md")).expect("report.md");
    assert!(report.contains("| standard | **"), "{report}");
    assert!(report.contains("against a forecast of") || report.contains("level moved"));
}

#[test]
fn eval_anomaly_names_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = fails(
        cmd()
            .args([
                "eval",
                "anomaly",
                "--detector",
                "nope",
                "--no-plots",
                "--out",
            ])
            .arg(dir.path()),
    );
    assert!(
        err.contains("unknown detector \"nope\"") && err.contains("combined"),
        "{err}"
    );
    let err = fails(
        cmd()
            .args(["eval", "anomaly", "--nab"])
            .arg(dir.path())
            .arg("--out")
            .arg(dir.path().join("o")),
    );
    assert!(err.contains("combined_windows.json"), "{err}");
}
