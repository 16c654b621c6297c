//! One loader per source format in `../shared/datasets` (each folder's README describes it).

use crate::error::{DatasetError, Result};
use crate::gen::{ClientSet, ClientWindow, Iat};
use crate::read::{self, checked, col, optional, Ty};
use crate::series::{Measure, Series};
use crate::trace::{Arrival, Status, Trace};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use std::collections::BTreeMap;
use std::path::Path;

fn naive_ms(s: &str, fmt: &str) -> std::result::Result<i64, String> {
    naive_us(s, fmt).map(|us| us.div_euclid(1000))
}

fn naive_us(s: &str, fmt: &str) -> std::result::Result<i64, String> {
    NaiveDateTime::parse_from_str(s.trim(), fmt)
        .map(|t| t.and_utc().timestamp_micros())
        .map_err(|e| format!("{s:?} is not a timestamp of the form {fmt} ({e})"))
}

const SECONDS: &str = "%Y-%m-%d %H:%M:%S";
const FRACTION: &str = "%Y-%m-%d %H:%M:%S%.f";

fn check_seconds(s: &str) -> std::result::Result<(), String> {
    naive_ms(s, SECONDS).map(drop)
}

fn check_fraction(s: &str) -> std::result::Result<(), String> {
    naive_ms(s, FRACTION).map(drop)
}

fn check_rfc3339(s: &str) -> std::result::Result<(), String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(drop)
        .map_err(|e| format!("{s:?} is not an RFC 3339 timestamp ({e})"))
}

fn check_date(s: &str) -> std::result::Result<(), String> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map(drop)
        .map_err(|e| format!("{s:?} is not a date YYYY-MM-DD ({e})"))
}

fn to_u32(v: Option<f64>) -> Option<u32> {
    v.filter(|x| x.is_finite() && *x >= 0.0)
        .map(|x| x.round() as u32)
}

/// Azure LLM inference trace: `TIMESTAMP,ContextTokens,GeneratedTokens`.
pub fn azure_llm(path: &Path) -> Result<Trace> {
    let t = read::table(
        path,
        true,
        &[
            checked("TIMESTAMP", check_fraction),
            col("ContextTokens", Ty::Int),
            col("GeneratedTokens", Ty::Int),
        ],
    )?;
    let ts = t.convert("TIMESTAMP", |s| naive_us(s, FRACTION))?;
    let tin = t.ints("ContextTokens")?;
    let tout = t.ints("GeneratedTokens")?;
    let t0 = ts.iter().copied().min().unwrap_or(0);
    let arrivals = ts
        .iter()
        .zip(tin.iter().zip(&tout))
        .map(|(t, (i, o))| Arrival {
            t_us: t - t0,
            tokens_in: i.and_then(|v| u32::try_from(v).ok()),
            tokens_out: o.and_then(|v| u32::try_from(v).ok()),
            ..Arrival::default()
        })
        .collect();
    Ok(Trace::new(stem(path), Some(t0.div_euclid(1000)), arrivals))
}

#[derive(serde::Deserialize)]
struct MooncakeRow {
    timestamp: i64,
    input_length: u32,
    output_length: u32,
    #[serde(default)]
    hash_ids: Vec<u64>,
}

/// Mooncake JSON lines: `timestamp` (ms since the start), lengths, prefix block hashes.
pub fn mooncake(path: &Path) -> Result<Trace> {
    let arrivals = read::json_lines(path, |r: MooncakeRow| {
        if r.timestamp < 0 {
            return Err(format!("timestamp {} is negative", r.timestamp));
        }
        Ok(Arrival {
            t_us: r.timestamp * 1000,
            tokens_in: Some(r.input_length),
            tokens_out: Some(r.output_length),
            prefix_hash: prefix_key(&r.hash_ids),
            ..Arrival::default()
        })
    })?;
    Ok(Trace::new(stem(path), None, arrivals))
}

/// Blocks of the prompt prefix that identify it: 4 × 512 tokens. Every Mooncake request
/// shares block 0 (a common system prompt), so the first block alone tells nothing apart;
/// four blocks give 4 046 distinct prefixes in the conversation trace.
pub const PREFIX_BLOCKS: usize = 4;

/// FNV-1a over the first [`PREFIX_BLOCKS`] block ids.
fn prefix_key(ids: &[u64]) -> Option<u64> {
    if ids.is_empty() {
        return None;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for id in ids.iter().take(PREFIX_BLOCKS) {
        for b in id.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Some(h)
}

/// One integer per line, the count of second *k* from `start_ms` (NASA, Twitter).
pub fn per_second_counts(path: &Path, name: &str, start_ms: Option<i64>) -> Result<Series> {
    let t = read::table(path, false, &[col("count", Ty::Int)])?;
    let v = t.ints("count")?;
    if let Some(i) = v.iter().position(|x| x.is_some_and(|x| x < 0)) {
        return Err(DatasetError::Parse {
            path: path.to_path_buf(),
            line: i as u64 + 1,
            column: 1,
            name: "count".into(),
            message: "negative count".into(),
        });
    }
    let values = v.into_iter().map(|x| x.unwrap_or(0) as f64).collect();
    let mut s = Series::regular(name, start_ms.unwrap_or(0), 1000, values);
    s.absolute = start_ms.is_some();
    s.measure = Measure::Count;
    Ok(s)
}

/// NASA per-minute file: `minute_start,requests` with an RFC 3339 offset.
pub fn nasa_minutes(path: &Path) -> Result<Series> {
    let t = read::table(
        path,
        true,
        &[
            checked("minute_start", check_rfc3339),
            col("requests", Ty::Int),
        ],
    )?;
    let ts = t.convert("minute_start", |s| {
        DateTime::parse_from_rfc3339(s.trim())
            .map(|d| d.timestamp_millis())
            .map_err(|e| e.to_string())
    })?;
    let v = t
        .ints("requests")?
        .into_iter()
        .map(|x| x.unwrap_or(0) as f64)
        .collect();
    let mut s = Series::new(stem(path), ts, v).map_err(|e| at_file(path, e))?;
    s.measure = Measure::Count;
    Ok(s)
}

/// ServeGen totals: `window_start_s,day,total_rate_rps,active_clients`; the series is the
/// rate in requests per second of each 10-minute window.
pub fn servegen_total(path: &Path, name: &str) -> Result<Series> {
    let t = read::table(
        path,
        true,
        &[
            col("window_start_s", Ty::Int),
            col("total_rate_rps", Ty::Float),
            col("active_clients", Ty::Int),
        ],
    )?;
    let ts = t
        .ints("window_start_s")?
        .into_iter()
        .map(|x| x.unwrap_or(0) * 1000)
        .collect();
    let v = t
        .floats("total_rate_rps")?
        .into_iter()
        .map(|x| x.unwrap_or(0.0))
        .collect();
    let mut s = Series::new(name, ts, v).map_err(|e| at_file(path, e))?;
    s.absolute = false;
    s.measure = Measure::Gauge;
    Ok(s)
}

/// ServeGen per-client windows (expanded into arrivals a span at a time, seeded).
pub fn servegen_clients(path: &Path, name: &str) -> Result<ClientSet> {
    let t = read::table(
        path,
        true,
        &[
            col("window_start_s", Ty::Int),
            col("client_chunk", Ty::Int),
            col("rate_rps", Ty::Float),
            optional("iat_dist", Ty::Str),
            optional("dist_param1", Ty::Float),
            optional("dist_param2", Ty::Float),
        ],
    )?;
    let start = t.ints("window_start_s")?;
    let client = t.ints("client_chunk")?;
    let rate = t.floats("rate_rps")?;
    let dist = t.strs("iat_dist")?;
    let p1 = t.floats("dist_param1")?;
    let p2 = t.floats("dist_param2")?;
    let mut windows = Vec::with_capacity(t.rows());
    for i in 0..t.rows() {
        let iat = match (dist[i].as_deref(), p1[i], p2[i]) {
            (Some("Gamma"), Some(shape), Some(scale)) => Iat::Gamma { shape, scale },
            (Some("Weibull"), Some(shape), Some(scale)) => Iat::Weibull { shape, scale },
            (None | Some(""), _, _) => Iat::Exponential,
            (Some(d), _, _) => {
                return Err(DatasetError::Format {
                    path: path.to_path_buf(),
                    message: format!(
                        "data row {}: inter-arrival distribution {d:?} (known: Gamma, Weibull) or its parameters missing",
                        i + 1
                    ),
                })
            }
        };
        windows.push(ClientWindow {
            window_start_s: start[i].unwrap_or(0),
            client: client[i].and_then(|c| u32::try_from(c).ok()).unwrap_or(0),
            rate_rps: rate[i].unwrap_or(0.0),
            iat,
        });
    }
    Ok(ClientSet::new(name, windows))
}

/// Alibaba GenTD26 per-request trace (image generation): arrival, status, service time.
pub fn alibaba_requests(path: &Path) -> Result<Trace> {
    let t = read::table(
        path,
        true,
        &[
            checked("gmt_create", check_seconds),
            col("predict_status", Ty::Str),
            optional("exec_time_seconds", Ty::Float),
            optional("groupId", Ty::Str),
            optional("prompt_length", Ty::Float),
        ],
    )?;
    let ts = t.convert("gmt_create", |s| naive_ms(s, SECONDS))?;
    let status = t.convert("predict_status", |s| match s.trim() {
        "SUCCEED" => Ok(Status::Ok),
        "FAILED" => Ok(Status::Failed),
        "PENDING" | "PROCESSING" => Ok(Status::Unfinished),
        other => Err(format!(
            "status {other:?} is not one of SUCCEED, FAILED, PENDING, PROCESSING"
        )),
    })?;
    let exec = t.floats("exec_time_seconds")?;
    let group = t.strs("groupId")?;
    let prompt = t.floats("prompt_length")?;
    let t0 = ts.iter().copied().min().unwrap_or(0);
    // Group ids ("G0001") numbered in order of first appearance.
    let mut ids: BTreeMap<String, u32> = BTreeMap::new();
    let mut arrivals = Vec::with_capacity(t.rows());
    for i in 0..t.rows() {
        let client = group[i].as_ref().map(|g| {
            let n = ids.len() as u32;
            *ids.entry(g.clone()).or_insert(n)
        });
        arrivals.push(Arrival {
            t_us: (ts[i] - t0) * 1000,
            tokens_in: to_u32(prompt[i]),
            client,
            service_us: exec[i]
                .filter(|x| x.is_finite() && *x >= 0.0)
                .map(|x| (x * 1e6) as u64),
            status: Some(status[i]),
            ..Arrival::default()
        });
    }
    Ok(Trace::new(stem(path), Some(t0), arrivals))
}

/// Alibaba GenTD26 monitoring file: samples `timestamp_anon,value,container_ip`, combined
/// into one series per minute. Each container's samples in a minute are averaged first; then
/// QPS sums over containers (the system's rate) and the other measures average over them.
pub fn alibaba_monitor(path: &Path, name: &str, sum_containers: bool) -> Result<Series> {
    let t = read::table(
        path,
        true,
        &[
            col("timestamp_anon", Ty::Float),
            col("value", Ty::Float),
            optional("container_ip", Ty::Str),
        ],
    )?;
    let ts = t.floats("timestamp_anon")?;
    let vs = t.floats("value")?;
    let cs = t.strs("container_ip")?;
    let mut cell: BTreeMap<(i64, &str), (f64, usize)> = BTreeMap::new();
    for ((t, v), c) in ts.iter().zip(&vs).zip(&cs) {
        let (Some(t), Some(v)) = (t, v) else { continue };
        let m = ((t * 1000.0) as i64).div_euclid(60_000) * 60_000;
        let e = cell.entry((m, c.as_deref().unwrap_or(""))).or_default();
        e.0 += v;
        e.1 += 1;
    }
    let mut by_minute: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
    for ((m, _), (sum, n)) in cell {
        let e = by_minute.entry(m).or_default();
        e.0 += sum / n as f64;
        e.1 += 1;
    }
    let (ts, vs): (Vec<i64>, Vec<f64>) = by_minute
        .into_iter()
        .map(|(m, (sum, n))| (m, if sum_containers { sum } else { sum / n as f64 }))
        .unzip();
    let mut s = Series::new(name, ts, vs).map_err(|e| at_file(path, e))?;
    s.measure = Measure::Gauge;
    Ok(s)
}

/// A NAB series (`timestamp,value`) with its label windows from `combined_windows.json`.
pub fn nab_series(path: &Path, key: &str, windows: &[(i64, i64)]) -> Result<Series> {
    let t = read::table(
        path,
        true,
        &[checked("timestamp", check_seconds), col("value", Ty::Float)],
    )?;
    let ts = t.convert("timestamp", |s| naive_ms(s, SECONDS))?;
    let vs = t
        .floats("value")?
        .into_iter()
        .map(|x| x.unwrap_or(f64::NAN))
        .collect();
    let mut s = Series::new(key, ts, vs).map_err(|e| at_file(path, e))?;
    s.windows = windows.to_vec();
    s.label_from_windows();
    s.measure = Measure::Gauge;
    Ok(s)
}

/// NAB's `labels/combined_windows.json`: file key → windows in Unix milliseconds.
pub fn nab_windows(path: &Path) -> Result<BTreeMap<String, Vec<(i64, i64)>>> {
    let bytes = read::bytes(path)?;
    let raw: BTreeMap<String, Vec<(String, String)>> =
        serde_json::from_slice(&bytes).map_err(|e| DatasetError::Line {
            path: path.to_path_buf(),
            line: e.line() as u64,
            column: e.column() as u64,
            message: e.to_string(),
        })?;
    let mut out = BTreeMap::new();
    for (k, ws) in raw {
        let mut v = Vec::with_capacity(ws.len());
        for (a, b) in ws {
            let p = |s: &str| {
                naive_ms(s, FRACTION).map_err(|m| DatasetError::Format {
                    path: path.to_path_buf(),
                    message: format!("window of {k}: {m}"),
                })
            };
            v.push((p(&a)?, p(&b)?));
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// Prophet's Wikipedia examples: `"ds","y"` with y = ln(daily views); some rows are out of
/// order, so points are sorted by date.
pub fn wikipedia(path: &Path, name: &str) -> Result<Series> {
    let t = read::table(
        path,
        true,
        &[checked("ds", check_date), col("y", Ty::Float)],
    )?;
    let ds = t.convert("ds", |s| {
        NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
            .map_err(|e| e.to_string())
            .and_then(|d| {
                d.and_hms_opt(0, 0, 0)
                    .map(|t| t.and_utc().timestamp_millis())
                    .ok_or_else(|| "bad date".to_string())
            })
    })?;
    let y = t.floats("y")?;
    let mut pts: Vec<(i64, f64)> = ds
        .into_iter()
        .zip(y.into_iter().map(|v| v.unwrap_or(f64::NAN)))
        .collect();
    pts.sort_by_key(|p| p.0);
    pts.dedup_by_key(|p| p.0);
    let (ts, vs) = pts.into_iter().unzip();
    let mut s = Series::new(name, ts, vs).map_err(|e| at_file(path, e))?;
    s.measure = Measure::Gauge;
    Ok(s)
}

/// A user's series file: `timestamp,value` CSV (timestamps as Unix seconds, RFC 3339, or
/// `YYYY-MM-DD HH:MM:SS`), or one count per line (a per-second file like NASA's).
pub fn user_series(path: &Path) -> Result<Series> {
    let bytes = read::bytes(path)?;
    let first = bytes.split(|b| *b == b'\n').next().unwrap_or(&[]);
    if !first.contains(&b',') {
        let t = read::table_from(path, bytes, false, &[col("count", Ty::Int)])?;
        let v = t
            .ints("count")?
            .into_iter()
            .map(|x| x.unwrap_or(0) as f64)
            .collect();
        let mut s = Series::regular(stem(path), 0, 1000, v);
        s.absolute = false;
        s.measure = Measure::Count;
        return Ok(s);
    }
    let t = read::table_from(
        path,
        bytes,
        true,
        &[
            checked("timestamp", check_any_time),
            col("value", Ty::Float),
        ],
    )?;
    let ts = t.convert("timestamp", any_time_ms)?;
    let vs = t
        .floats("value")?
        .into_iter()
        .map(|x| x.unwrap_or(f64::NAN))
        .collect();
    let mut s = Series::new(stem(path), ts, vs).map_err(|e| at_file(path, e))?;
    s.measure = Measure::Gauge;
    Ok(s)
}

fn any_time_ms(s: &str) -> std::result::Result<i64, String> {
    let s = s.trim();
    if let Ok(x) = s.parse::<f64>() {
        return Ok((x * 1000.0).round() as i64);
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Ok(d.timestamp_millis());
    }
    naive_ms(s, FRACTION)
        .or_else(|_| naive_ms(s, SECONDS))
        .map_err(|_| {
            format!("{s:?} is not a timestamp (Unix seconds, RFC 3339 or YYYY-MM-DD HH:MM:SS)")
        })
}

fn check_any_time(s: &str) -> std::result::Result<(), String> {
    any_time_ms(s).map(drop)
}

fn stem(path: &Path) -> String {
    path.file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
}

fn at_file(path: &Path, e: DatasetError) -> DatasetError {
    DatasetError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
