//! `datasets export`: a dataset as a CSV or Parquet table, through polars.

use crate::catalog::Data;
use crate::error::{DatasetError, Result};
use polars::prelude::*;
use std::path::Path;

/// Generated arrivals exported one row each, at most (a row is about 60 bytes).
const MAX_GENERATED: f64 = 20e6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
}

/// The table a dataset exports as. A trace is one row per arrival (unknown fields empty); with
/// `resample_ms` it becomes its arrival counts per bucket. Series are long format
/// (`series,timestamp_ms,value[,label]`), resampled by their measure when asked.
pub fn frame(data: &Data, resample_ms: Option<i64>, seed: u64) -> Result<DataFrame> {
    let series = match (data, resample_ms) {
        (Data::Clients(c), Some(step)) => vec![c.counts(step, seed)?],
        (Data::Clients(c), None) => {
            let n = c.expected_total();
            if n > MAX_GENERATED {
                return Err(DatasetError::Invalid(format!(
                    "{} would generate about {n:.0} arrivals (more than {MAX_GENERATED:.0}); export counts with --resample instead",
                    c.name
                )));
            }
            return trace_frame(&c.expand_all(seed)?);
        }
        (Data::Trace(t), None) => return trace_frame(t),
        (Data::Trace(t), Some(step)) => vec![t.counts(step)?],
        (Data::Series(s), None) => s.clone(),
        (Data::Series(s), Some(step)) => s
            .iter()
            .map(|x| x.resample_as_measured(step))
            .collect::<Result<Vec<_>>>()?,
    };
    let mut name = Vec::new();
    let mut ts = Vec::new();
    let mut vs = Vec::new();
    let mut ls: Vec<bool> = Vec::new();
    let labelled = series.iter().any(|s| s.labels.is_some());
    for s in &series {
        name.extend(std::iter::repeat_n(s.name.as_str(), s.len()));
        ts.extend_from_slice(&s.ts_ms);
        vs.extend_from_slice(&s.values);
        if labelled {
            match &s.labels {
                Some(l) => ls.extend_from_slice(l),
                None => ls.extend(std::iter::repeat_n(false, s.len())),
            }
        }
    }
    let mut cols = vec![
        Column::new("series".into(), name),
        Column::new("timestamp_ms".into(), ts),
        Column::new("value".into(), vs),
    ];
    if labelled {
        cols.push(Column::new("label".into(), ls));
    }
    DataFrame::new_infer_height(cols)
        .map_err(|e| DatasetError::Invalid(format!("building the table: {e}")))
}

fn trace_frame(t: &crate::trace::Trace) -> Result<DataFrame> {
    let a = &t.arrivals;
    let base = t.start_unix_ms;
    let cols = vec![
        Column::new(
            "t_us".into(),
            a.iter().map(|x| x.t_us).collect::<Vec<i64>>(),
        ),
        Column::new(
            "unix_ms".into(),
            a.iter()
                .map(|x| base.map(|b| b + x.t_us / 1000))
                .collect::<Vec<Option<i64>>>(),
        ),
        Column::new(
            "tokens_in".into(),
            a.iter().map(|x| x.tokens_in).collect::<Vec<_>>(),
        ),
        Column::new(
            "tokens_out".into(),
            a.iter().map(|x| x.tokens_out).collect::<Vec<_>>(),
        ),
        Column::new(
            "client".into(),
            a.iter().map(|x| x.client).collect::<Vec<_>>(),
        ),
        Column::new(
            "priority".into(),
            a.iter()
                .map(|x| x.priority.map(u32::from))
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "prefix_hash".into(),
            a.iter().map(|x| x.prefix_hash).collect::<Vec<_>>(),
        ),
        Column::new(
            "service_us".into(),
            a.iter().map(|x| x.service_us).collect::<Vec<_>>(),
        ),
        Column::new(
            "status".into(),
            a.iter()
                .map(|x| x.status.map(|s| s.as_str()))
                .collect::<Vec<_>>(),
        ),
    ];
    DataFrame::new_infer_height(cols)
        .map_err(|e| DatasetError::Invalid(format!("building the table: {e}")))
}

/// Writes `df` to `path` (a temporary file renamed into place, so a failed export leaves no
/// half-written file under the final name).
pub fn write(df: &mut DataFrame, path: &Path, format: Format) -> Result<()> {
    let err = |message: String| DatasetError::Write {
        path: path.to_path_buf(),
        message,
    };
    let tmp = path.with_extension("partial");
    let file = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
    let res = match format {
        Format::Csv => CsvWriter::new(file).finish(df).map(drop),
        Format::Parquet => ParquetWriter::new(file).finish(df).map(drop),
    };
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e.to_string()));
    }
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}
