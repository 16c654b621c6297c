// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Every dataset in ../shared/datasets loads with the counts its README gives, and damaged
//! copies of real files are refused with the file, line and column.

use std::io::Write;
use std::path::{Path, PathBuf};
use vivremotion_datasets::{catalog, Data, DatasetError, ENTRIES};

fn root() -> PathBuf {
    catalog::root(None)
}

fn points(d: &Data) -> usize {
    match d {
        Data::Trace(t) => t.len(),
        Data::Series(s) => s.iter().map(|s| s.len()).sum(),
        Data::Clients(c) => c.windows.len(),
    }
}

#[test]
fn every_dataset_loads_with_the_counts_of_its_readme() {
    let want: &[(&str, usize)] = &[
        ("azure-llm-2023-conv", 19_366),
        ("mooncake-conversation", 5_719),
        ("mooncake-synthetic", 3_993),
        ("nasa-http-1995", 2_381_544),
        ("nasa-http-1995-minute", 39_693),
        ("twitter-2021", 1_296_000),
        ("servegen-m-large", 1_440),
        ("servegen-m-mid", 1_440),
        ("servegen-m-small", 1_440),
        ("servegen-deepseek-r1", 144),
        ("servegen-mm-image", 144),
        ("servegen-m-large-clients", 72_327),
        ("servegen-m-mid-clients", 74_833),
        ("servegen-m-small-clients", 28_923),
        ("servegen-deepseek-r1-clients", 3_111),
        ("servegen-mm-image-clients", 2_094),
        ("alibaba-gentd26-requests", 14_279),
        ("nab", 295_997),
        ("wikipedia-peyton-manning", 2_905),
        ("wikipedia-r", 2_863),
    ];
    let root = root();
    for e in ENTRIES {
        let d = catalog::load(&root, e.name).unwrap_or_else(|err| panic!("{}: {err}", e.name));
        if let Some((_, n)) = want.iter().find(|(k, _)| *k == e.name) {
            assert_eq!(points(&d), *n, "{}", e.name);
        } else {
            assert!(points(&d) > 0, "{} is empty", e.name);
        }
    }
}

#[test]
fn the_per_second_and_per_minute_nasa_files_agree() {
    let root = root();
    let (Ok(Data::Series(sec)), Ok(Data::Series(min))) = (
        catalog::load(&root, "nasa-http-1995"),
        catalog::load(&root, "nasa-http-1995-minute"),
    ) else {
        panic!("NASA did not load")
    };
    let per_min = sec[0].resample_as_measured(60_000).unwrap();
    // Same Unix minutes and the same totals: the start time of the per-second file is right.
    assert_eq!(per_min.ts_ms[0], min[0].ts_ms[0]);
    assert_eq!(per_min.values.iter().sum::<f64>(), 1_891_713.0);
    assert_eq!(&per_min.values[..1000], &min[0].values[..1000]);
}

#[test]
fn nab_series_carry_their_label_windows() {
    let Ok(Data::Series(s)) = catalog::load(&root(), "nab/realTweets/Twitter_volume_GOOG.csv")
    else {
        panic!("no NAB series")
    };
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].windows.len(), 3);
    let labelled = s[0]
        .labels
        .as_ref()
        .map_or(0, |l| l.iter().filter(|x| **x).count());
    assert!(labelled > 100, "{labelled}");
}

#[test]
fn servegen_clients_expand_to_their_rates_and_a_span_matches_the_whole() {
    let Ok(Data::Clients(c)) = catalog::load(&root(), "servegen-mm-image-clients") else {
        panic!("no clients")
    };
    let whole = c.expand(0, 86_400, 5).unwrap();
    // The whole expansion (what export writes) is on the series' own time axis.
    assert_eq!(c.expand_all(5).unwrap(), whole);
    let expected = c.expected_total();
    assert!((whole.len() as f64 - expected).abs() < 0.01 * expected);
    let part = c.expand(3_600, 7_200, 5).unwrap();
    let from_whole: Vec<i64> = whole
        .arrivals
        .iter()
        .filter(|a| (3_600_000_000..7_200_000_000).contains(&a.t_us))
        .map(|a| a.t_us - 3_600_000_000)
        .collect();
    let mut p: Vec<i64> = part.arrivals.iter().map(|a| a.t_us).collect();
    let mut w = from_whole;
    p.sort_unstable();
    w.sort_unstable();
    assert_eq!(p, w);
}

/// A private dataset root holding one damaged file at its real path.
fn damaged(rel: &str, damage: impl FnOnce(Vec<u8>) -> Vec<u8>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join(rel);
    let dst = dir.path().join(rel);
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::fs::write(&dst, damage(std::fs::read(&src).unwrap())).unwrap();
    (dir, dst)
}

fn line_start(bytes: &[u8], line: usize) -> usize {
    let mut at = 0;
    for _ in 1..line {
        at += bytes[at..].iter().position(|b| *b == b'\n').unwrap() + 1;
    }
    at
}

fn err(root: &Path, name: &str) -> String {
    match catalog::load(root, name) {
        Ok(_) => panic!("{name} loaded from a damaged copy"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_truncated_csv_names_the_cut_line() {
    let (dir, path) = damaged("azure_llm_2023/AzureLLMInferenceTrace_conv.csv", |b| {
        // Cut in the middle of line 501: its timestamp is there, the token counts are not.
        let at = line_start(&b, 501) + 20;
        b[..at].to_vec()
    });
    let e = err(dir.path(), "azure-llm-2023-conv");
    assert_eq!(
        e,
        format!(
            "{}:501:1: expected 3 fields (TIMESTAMP,ContextTokens,GeneratedTokens), found 1",
            path.display()
        )
    );
}

#[test]
fn a_corrupted_value_names_its_line_and_column() {
    let (dir, path) = damaged("nab/data/realTweets/Twitter_volume_GOOG.csv", |b| {
        let at = line_start(&b, 1234);
        let mut out = b[..at].to_vec();
        out.extend_from_slice(b"2015-03-01 00:00:00,4x2\n");
        let next = line_start(&b, 1235);
        out.extend_from_slice(&b[next..]);
        out
    });
    std::fs::create_dir_all(dir.path().join("nab/labels")).unwrap();
    std::fs::copy(
        root().join("nab/labels/combined_windows.json"),
        dir.path().join("nab/labels/combined_windows.json"),
    )
    .unwrap();
    let e = err(dir.path(), "nab/realTweets/Twitter_volume_GOOG.csv");
    assert_eq!(
        e,
        format!(
            "{}:1234: column 2 (value): \"4x2\" is not a number",
            path.display()
        )
    );
}

#[test]
fn a_corrupted_timestamp_names_its_line_and_column() {
    let (dir, path) = damaged(
        "alibaba_gentd26/lora_request_trace_2024-11-15_to_11-30.csv",
        |b| {
            let at = line_start(&b, 77);
            let mut out = b[..at].to_vec();
            out.extend_from_slice(b"2024-11-3X 10:00:00");
            out.extend_from_slice(&b[at + 19..]);
            out
        },
    );
    let e = err(dir.path(), "alibaba-gentd26-requests");
    assert!(
        e.starts_with(&format!(
            "{}:77: column 1 (gmt_create): \"2024-11-3X 10:00:00\" is not a timestamp",
            path.display()
        )),
        "{e}"
    );
}

#[test]
fn a_truncated_gzip_names_where_the_data_stops() {
    let (dir, path) = damaged(
        "nasa_http_1995/nasa_jul95_requests_per_second.txt.gz",
        |b| b[..b.len() / 3].to_vec(),
    );
    match catalog::load(dir.path(), "nasa-http-1995") {
        Err(DatasetError::Line {
            path: p,
            line,
            column,
            message,
        }) => {
            assert_eq!(p, path);
            assert!(line > 100_000 && line < 2_381_544, "line {line}");
            assert!(column >= 1);
            assert!(message.contains("cut or corrupt"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_corrupted_json_line_names_line_and_column() {
    let (dir, path) = damaged("mooncake_fast25/synthetic_trace.jsonl", |b| {
        let at = line_start(&b, 10);
        let mut out = b[..at].to_vec();
        out.extend_from_slice(
            b"{\"timestamp\": 5, \"input_length\": \"many\", \"output_length\": 3}\n",
        );
        out.extend_from_slice(&b[line_start(&b, 11)..]);
        out
    });
    let e = err(dir.path(), "mooncake-synthetic");
    assert!(
        e.starts_with(&format!("{}:10:39: invalid type", path.display())),
        "{e}"
    );
}

#[test]
fn a_missing_file_names_the_path_and_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let e = err(dir.path(), "wikipedia-r");
    assert!(
        e.contains("wikipedia_pageviews_daily/example_wp_log_R.csv: not found"),
        "{e}"
    );
}

#[test]
fn an_extra_field_on_a_line_is_refused() {
    let (dir, path) = damaged("wikipedia_pageviews_daily/example_wp_log_R.csv", |b| {
        let at = line_start(&b, 3) - 1;
        let mut out = b[..at].to_vec();
        out.extend_from_slice(b",7");
        out.extend_from_slice(&b[at..]);
        out
    });
    let _ = std::io::stdout().flush();
    let e = err(dir.path(), "wikipedia-r");
    assert_eq!(
        e,
        format!("{}:2:1: expected 2 fields (ds,y), found 3", path.display())
    );
}
