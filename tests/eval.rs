//! `vivremotion eval forecast` on a real series: the report, the JSON and the plots are
//! written, the chosen forecaster beats the seasonal naive baseline, and bad arguments get
//! clear errors.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_vivremotion");

fn cmd() -> Command {
    let mut c = Command::new(BIN);
    c.env(
        "VIVREMOTION_DATASETS",
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets"),
    );
    c
}

#[test]
fn eval_forecast_writes_a_report_and_beats_seasonal_naive_on_servegen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = cmd()
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
        .arg(dir.path())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let out = cmd()
        .args([
            "eval",
            "forecast",
            "--dataset",
            "servegen-m-small",
            "--horizons",
            "5m",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("horizon 5 min is not a whole number of the series' 10 min steps"),
        "{err}"
    );
}
