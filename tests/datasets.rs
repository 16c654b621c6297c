//! `vivremotion datasets`: every dataset describes with its span and counts; export writes
//! real tables; a damaged file fails the command with the file, line and column.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_vivremotion");

fn shared_datasets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets")
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("VIVREMOTION_DATASETS", shared_datasets())
        .output()
        .unwrap_or_else(|e| panic!("run vivremotion: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_listed_dataset_describes_with_its_span_and_counts() {
    let (ok, list, err) = run(&["datasets", "list"]);
    assert!(ok, "{err}");
    let names: Vec<String> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(names.len(), 21, "{list}");
    assert!(!list.contains("[missing]"), "{list}");
    for n in &names {
        let (ok, out, err) = run(&["datasets", "describe", n]);
        assert!(ok, "{n}: {err}");
        assert!(out.contains("span"), "{n}: {out}");
        assert!(
            out.contains("points") || out.contains("arrivals"),
            "{n} prints no counts: {out}"
        );
    }
    let (_, nasa, _) = run(&["datasets", "describe", "nasa-http-1995"]);
    assert!(
        nasa.contains("1995-07-01 04:00:01 UTC .. 1995-07-28 17:32:24 UTC"),
        "{nasa}"
    );
    assert!(nasa.contains("points  2381544"), "{nasa}");
}

#[test]
fn export_writes_csv_and_parquet_and_resamples() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("nasa.csv");
    let (ok, out, err) = run(&[
        "datasets",
        "export",
        "nasa-http-1995",
        "--resample",
        "1h",
        "--out",
        csv.to_str().expect("utf-8 path"),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("wrote 662 points"), "{out}");
    let text = std::fs::read_to_string(&csv).expect("csv written");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("series,timestamp_ms,value"));
    let total: f64 = lines
        .map(|l| {
            l.rsplit(',')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .expect("a value")
        })
        .sum();
    assert_eq!(total, 1_891_713.0, "hourly sums keep every request");

    let pq = dir.path().join("azure.parquet");
    let (ok, out, err) = run(&[
        "datasets",
        "export",
        "azure-llm-2023-conv",
        "--format",
        "parquet",
        "-o",
        pq.to_str().expect("utf-8 path"),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("wrote 19366 arrivals"), "{out}");
    let bytes = std::fs::read(&pq).expect("parquet written");
    assert_eq!(&bytes[..4], b"PAR1");
    assert_eq!(&bytes[bytes.len() - 4..], b"PAR1");
}

#[test]
fn a_damaged_file_fails_the_command_naming_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rel = "servegen_bailian/m-small_total_rate_10min_days00-09.csv";
    let text = std::fs::read_to_string(shared_datasets().join(rel)).expect("source file");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[41] = lines[41].replacen(',', ",x", 2).replacen(",x", ",", 1); // field 3 gets an x
    let path = dir.path().join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, lines.join("\n")).expect("write");
    let out = Command::new(BIN)
        .args(["datasets", "describe", "servegen-m-small", "--root"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}:42: column 3 (total_rate_rps):", path.display());
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("is not a number"), "{err}");

    let (ok, _, err) = run(&["datasets", "describe", "no-such-set"]);
    assert!(!ok);
    assert!(err.contains("unknown dataset \"no-such-set\""), "{err}");
}
