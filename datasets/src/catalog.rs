//! The named datasets: where each lives under the dataset root and how it loads.

use crate::error::{DatasetError, Result};
use crate::gen::ClientSet;
use crate::series::Series;
use crate::sources;
use crate::trace::Trace;
use std::path::{Path, PathBuf};

/// What a dataset loads as.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Trace(Trace),
    /// One or more series (NAB: 51, each with its label windows).
    Series(Vec<Series>),
    /// Per-client rates that generate a trace a span at a time (ServeGen).
    Clients(ClientSet),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Trace,
    Series,
}

/// One named dataset.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub name: &'static str,
    pub kind: Kind,
    /// Paths under the root, the first the main one.
    pub files: &'static [&'static str],
    pub about: &'static str,
}

/// The start of NASA's per-second file: 1995-07-01 00:00:01 -04:00.
const NASA_START_MS: i64 = 804_571_201_000;

macro_rules! entry {
    ($name:literal, $kind:ident, [$($f:literal),+], $about:literal) => {
        Entry { name: $name, kind: Kind::$kind, files: &[$($f),+], about: $about }
    };
}

pub const ENTRIES: &[Entry] = &[
    entry!("azure-llm-2023-conv", Trace, ["azure_llm_2023/AzureLLMInferenceTrace_conv.csv"],
        "Azure LLM conversation service, 1 h of requests with input/output tokens"),
    entry!("mooncake-conversation", Trace, ["mooncake_fast25/conversation_trace_first30min.jsonl"],
        "Kimi (Mooncake FAST'25) conversation requests, first 30 min, with prefix-cache blocks"),
    entry!("mooncake-synthetic", Trace, ["mooncake_fast25/synthetic_trace.jsonl"],
        "Mooncake synthetic trace (Poisson arrivals), with prefix-cache blocks"),
    entry!("nasa-http-1995", Series, ["nasa_http_1995/nasa_jul95_requests_per_second.txt.gz"],
        "NASA KSC web server, requests per second, July 1995"),
    entry!("nasa-http-1995-minute", Series, ["nasa_http_1995/nasa_jul95_requests_per_minute.csv"],
        "NASA KSC web server, requests per minute, July 1995"),
    entry!("twitter-2021", Series, ["twitter_stream_2021/tweets_per_second_days00-14.txt.gz"],
        "Twitter public stream, records per second, 15 days (start time unknown)"),
    entry!("servegen-m-large", Series, ["servegen_bailian/m-large_total_rate_10min_days00-09.csv"],
        "Bailian m-large: total requests/s per 10 min, days 0-9"),
    entry!("servegen-m-mid", Series, ["servegen_bailian/m-mid_total_rate_10min_days00-09.csv"],
        "Bailian m-mid: total requests/s per 10 min, days 0-9"),
    entry!("servegen-m-small", Series, ["servegen_bailian/m-small_total_rate_10min_days00-09.csv"],
        "Bailian m-small: total requests/s per 10 min, days 0-9"),
    entry!("servegen-deepseek-r1", Series, ["servegen_bailian/deepseek-r1_total_rate_10min_day00.csv"],
        "Bailian deepseek-r1: total requests/s per 10 min, 1 day"),
    entry!("servegen-mm-image", Series, ["servegen_bailian/mm-image_total_rate_10min_day00.csv"],
        "Bailian mm-image: total requests/s per 10 min, 1 day"),
    entry!("servegen-m-large-clients", Trace, ["servegen_bailian/m-large_per_client_10min_days00-09.csv.gz"],
        "Bailian m-large arrivals generated per client from rates and inter-arrival fits (seeded)"),
    entry!("servegen-m-mid-clients", Trace, ["servegen_bailian/m-mid_per_client_10min_days00-09.csv.gz"],
        "Bailian m-mid arrivals generated per client (seeded)"),
    entry!("servegen-m-small-clients", Trace, ["servegen_bailian/m-small_per_client_10min_days00-09.csv.gz"],
        "Bailian m-small arrivals generated per client (seeded)"),
    entry!("servegen-deepseek-r1-clients", Trace, ["servegen_bailian/deepseek-r1_per_client_10min_day00.csv.gz"],
        "Bailian deepseek-r1 arrivals generated per client (seeded)"),
    entry!("servegen-mm-image-clients", Trace, ["servegen_bailian/mm-image_per_client_10min_day00.csv.gz"],
        "Bailian mm-image arrivals generated per client (seeded)"),
    entry!("alibaba-gentd26-requests", Trace, ["alibaba_gentd26/lora_request_trace_2024-11-15_to_11-30.csv"],
        "Alibaba image generation: requests with status and service time, 16 days"),
    entry!("alibaba-gentd26-monitoring", Series, [
        "alibaba_gentd26/qps.csv", "alibaba_gentd26/queue_rt_raw_anon.csv",
        "alibaba_gentd26/queue_size_raw_anon.csv", "alibaba_gentd26/pipeline_inference_data_anon.csv",
        "alibaba_gentd26/model_predict_data_anon.csv"],
        "Alibaba image generation monitoring per minute: QPS, queue time, queue size, latencies"),
    entry!("nab", Series, ["nab/labels/combined_windows.json", "nab/data"],
        "Numenta Anomaly Benchmark (development folders): 51 labelled series; nab/<folder>/<file>.csv names one"),
    entry!("wikipedia-peyton-manning", Series, ["wikipedia_pageviews_daily/example_wp_log_peyton_manning.csv"],
        "Wikipedia daily views (ln) of \"Peyton Manning\", 2007-2016"),
    entry!("wikipedia-r", Series, ["wikipedia_pageviews_daily/example_wp_log_R.csv"],
        "Wikipedia daily views (ln) of \"R (programming language)\", 2008-2015"),
];

/// Where the datasets are: `explicit`, else `VIVREMOTION_DATASETS`, else `../shared/datasets`
/// from the working directory, else the same path next to this source tree.
pub fn root(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("VIVREMOTION_DATASETS") {
        return PathBuf::from(p);
    }
    let cwd = PathBuf::from("../shared/datasets");
    if cwd.is_dir() {
        return cwd;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets")
}

pub fn entry(name: &str) -> Result<Entry> {
    let base = if name.starts_with("nab/") {
        "nab"
    } else {
        name
    };
    ENTRIES
        .iter()
        .find(|e| e.name == base)
        .copied()
        .ok_or_else(|| DatasetError::Unknown {
            name: name.to_string(),
        })
}

/// Bytes of a file, or of every file under a folder.
pub fn size(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

fn file(root: &Path, rel: &str) -> Result<PathBuf> {
    let p = root.join(rel);
    if p.exists() {
        Ok(p)
    } else {
        Err(DatasetError::Missing {
            path: p,
            root: root.to_path_buf(),
        })
    }
}

/// Loads a dataset by name (`nab/<folder>/<file>.csv` loads one NAB series).
pub fn load(root: &Path, name: &str) -> Result<Data> {
    let e = entry(name)?;
    let f = |i: usize| file(root, e.files[i]);
    let servegen = |suffix: &str| {
        name.trim_start_matches("servegen-")
            .trim_end_matches(suffix)
            .to_string()
    };
    Ok(match e.name {
        "azure-llm-2023-conv" => Data::Trace(sources::azure_llm(&f(0)?)?),
        "mooncake-conversation" | "mooncake-synthetic" => Data::Trace(sources::mooncake(&f(0)?)?),
        "nasa-http-1995" => Data::Series(vec![sources::per_second_counts(
            &f(0)?,
            e.name,
            Some(NASA_START_MS),
        )?]),
        "nasa-http-1995-minute" => Data::Series(vec![sources::nasa_minutes(&f(0)?)?]),
        "twitter-2021" => Data::Series(vec![sources::per_second_counts(&f(0)?, e.name, None)?]),
        n if n.starts_with("servegen-") && n.ends_with("-clients") => {
            Data::Clients(sources::servegen_clients(&f(0)?, &servegen("-clients"))?)
        }
        n if n.starts_with("servegen-") => {
            Data::Series(vec![sources::servegen_total(&f(0)?, &servegen(""))?])
        }
        "alibaba-gentd26-requests" => Data::Trace(sources::alibaba_requests(&f(0)?)?),
        "alibaba-gentd26-monitoring" => {
            let parts = [
                ("qps", true),
                ("queue_time_ms", false),
                ("queue_size", false),
                ("pipeline_latency_ms", false),
                ("model_latency_ms", false),
            ];
            let mut out = Vec::new();
            for (i, (n, m)) in parts.iter().enumerate() {
                out.push(sources::alibaba_monitor(&f(i)?, n, *m)?);
            }
            Data::Series(out)
        }
        "nab" => Data::Series(load_nab(root, name.strip_prefix("nab/"))?),
        "wikipedia-peyton-manning" | "wikipedia-r" => {
            Data::Series(vec![sources::wikipedia(&f(0)?, e.name)?])
        }
        other => {
            return Err(DatasetError::Unknown {
                name: other.to_string(),
            })
        }
    })
}

/// NAB's series, all or one (`folder/file.csv`), keyed as NAB keys them.
pub fn load_nab(root: &Path, only: Option<&str>) -> Result<Vec<Series>> {
    load_nab_dir(&root.join("nab"), only)
}

/// A NAB-layout folder: `data/<category>/*.csv` and `labels/combined_windows.json`.
pub fn load_nab_dir(dir: &Path, only: Option<&str>) -> Result<Vec<Series>> {
    let labels = dir.join("labels/combined_windows.json");
    if !labels.exists() {
        return Err(DatasetError::Missing {
            path: labels,
            root: dir.to_path_buf(),
        });
    }
    let windows = sources::nab_windows(&labels)?;
    if let Some(k) = only {
        if !windows.contains_key(k) {
            return Err(DatasetError::Unknown {
                name: format!("nab/{k}"),
            });
        }
    }
    let mut out = Vec::new();
    for (key, ws) in &windows {
        if only.is_some_and(|k| k != key) {
            continue;
        }
        let p = file(&dir.join("data"), key)?;
        out.push(sources::nab_series(&p, key, ws)?);
    }
    Ok(out)
}

/// A name from the catalog, or a path to a series file of the user's.
pub fn load_series(root: &Path, name_or_file: &str) -> Result<Vec<Series>> {
    let p = Path::new(name_or_file);
    if entry(name_or_file).is_err() && p.is_file() {
        return Ok(vec![sources::user_series(p)?]);
    }
    match load(root, name_or_file)? {
        Data::Series(s) => Ok(s),
        Data::Trace(t) => Ok(vec![t.counts(1000)?]),
        Data::Clients(c) => Ok(vec![c.rate_series()]),
    }
}
