//! `vivremotion eval anomaly`: a streaming detector over every series of a NAB-layout folder,
//! written in NAB's result layout (so NAB's own scorer can read it), scored by the built-in
//! copy of NAB's rules, with a chart per series.

use super::nab::{self, File, Scored, PROFILES};
use super::{progress, write, EvalError};
use crate::plot;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use vivremotion_datasets::{catalog, Series};
use vivremotion_models::anomaly::{self, Reason};

pub struct Args {
    /// A folder with `data/<category>/*.csv` and `labels/combined_windows.json`.
    pub nab: PathBuf,
    pub detector: String,
    pub out: PathBuf,
    /// Write a chart per series.
    pub plots: bool,
}

/// What one series came to under the standard profile's threshold.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileRow {
    pub file: String,
    pub points: usize,
    pub windows: usize,
    pub windows_hit: usize,
    /// Detections outside every window, after probation.
    pub false_alarms: usize,
    /// The highest-scoring point after probation, and why it scored.
    pub top: Option<Alarm>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Alarm {
    pub timestamp: String,
    pub score: f64,
    pub reason: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub detector: String,
    pub series: usize,
    pub points: usize,
    pub profiles: Vec<Scored>,
    pub files: Vec<FileRow>,
}

struct Run {
    series: Series,
    scores: Vec<f64>,
    reasons: Vec<Reason>,
}

fn invalid(m: String) -> EvalError {
    EvalError::Invalid(m)
}

fn stamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.naive_utc().format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn detector(name: &str) -> Result<Box<dyn anomaly::Streaming + Send>, EvalError> {
    anomaly::by_name(name).ok_or_else(|| {
        let known: Vec<&str> = anomaly::DETECTORS.iter().map(|d| d.0).collect();
        invalid(format!(
            "unknown detector {name:?}; known: {}",
            known.join(", ")
        ))
    })
}

fn detect(name: &str, s: Series) -> Result<Run, EvalError> {
    let mut d = detector(name)?;
    let mut scores = Vec::with_capacity(s.values.len());
    let mut reasons = Vec::with_capacity(s.values.len());
    for &x in &s.values {
        let sig = d.update(x);
        scores.push(sig.score);
        reasons.push(sig.reason);
    }
    Ok(Run {
        series: s,
        scores,
        reasons,
    })
}

/// NAB's result file: `<detector>/<category>/<detector>_<file>.csv`.
fn result_path(out: &Path, detector: &str, key: &str) -> Result<PathBuf, EvalError> {
    let (category, file) = key
        .rsplit_once('/')
        .ok_or_else(|| invalid(format!("label key {key:?} is not <category>/<file>.csv")))?;
    Ok(out
        .join(detector)
        .join(category)
        .join(format!("{detector}_{file}")))
}

fn write_result(path: &Path, r: &Run) -> Result<(), EvalError> {
    let mut text = String::with_capacity(r.scores.len() * 48);
    text.push_str("timestamp,value,anomaly_score,label\n");
    let labels = r.series.labels.as_deref();
    for (i, ((&t, &v), &s)) in r
        .series
        .ts_ms
        .iter()
        .zip(&r.series.values)
        .zip(&r.scores)
        .enumerate()
    {
        let label = labels.and_then(|l| l.get(i)).copied().unwrap_or(false);
        let _ = writeln!(text, "{},{v},{s},{}", stamp(t), u8::from(label));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| EvalError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    write(path, &text)
}

pub fn run(args: &Args) -> Result<Report, EvalError> {
    if !args.detector.chars().all(|c| c.is_ascii_alphanumeric()) || args.detector.is_empty() {
        return Err(invalid(format!(
            "detector name {:?}: NAB takes letters and digits only",
            args.detector
        )));
    }
    detector(&args.detector)?;
    let all = catalog::load_nab_dir(&args.nab, None)?;
    if all.is_empty() {
        return Err(invalid(format!(
            "{}: the label file names no series",
            args.nab.display()
        )));
    }
    let pb = progress(all.len() as u64, "detecting");
    let mut runs = Vec::with_capacity(all.len());
    for s in all {
        let path = result_path(&args.out, &args.detector, &s.name)?;
        let r = detect(&args.detector, s)?;
        write_result(&path, &r)?;
        runs.push(r);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let files: Vec<File<'_>> = runs
        .iter()
        .map(|r| File {
            ts: &r.series.ts_ms,
            scores: &r.scores,
            windows: &r.series.windows,
        })
        .collect();
    let profiles: Vec<Scored> = PROFILES.iter().map(|p| nab::score(&files, p)).collect();
    let threshold = profiles.first().map_or(1.1, |p| p.best.threshold);
    let rows: Vec<FileRow> = runs.iter().map(|r| file_row(r, threshold)).collect();
    if args.plots {
        let dir = args.out.join("plots");
        std::fs::create_dir_all(&dir).map_err(|source| EvalError::Io {
            path: dir.clone(),
            source,
        })?;
        let pb = progress(runs.len() as u64, "plotting");
        for r in &runs {
            let name = r.series.name.replace(['/', '.'], "_");
            let path = dir.join(format!("{name}.svg"));
            plot::anomaly(
                &path,
                &format!("{} — {}", args.detector, r.series.name),
                &r.series.ts_ms,
                &r.series.values,
                &r.scores,
                &r.series.windows,
                probation_end(&r.series.ts_ms),
                threshold,
            )
            .map_err(|message| EvalError::Plot {
                path: path.clone(),
                message,
            })?;
            pb.inc(1);
        }
        pb.finish_and_clear();
    }
    let report = Report {
        detector: args.detector.clone(),
        series: runs.len(),
        points: runs.iter().map(|r| r.scores.len()).sum(),
        profiles,
        files: rows,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| invalid(e.to_string()))?;
    write(&args.out.join("results.json"), &json)?;
    write(&args.out.join("report.md"), &markdown(&report, args))?;
    Ok(report)
}

fn probation_end(ts: &[i64]) -> Option<i64> {
    ts.get(nab::probation(ts.len())).copied()
}

fn file_row(r: &Run, threshold: f64) -> FileRow {
    let ts = &r.series.ts_ms;
    let start = nab::probation(ts.len());
    let inside = |t: i64| r.series.windows.iter().position(|w| w.0 <= t && t <= w.1);
    let mut hit = vec![false; r.series.windows.len()];
    let mut false_alarms = 0;
    let mut top: Option<usize> = None;
    for (i, (&t, &s)) in ts.iter().zip(&r.scores).enumerate().skip(start) {
        if top.is_none_or(|j| s > r.scores[j]) {
            top = Some(i);
        }
        if s >= threshold {
            match inside(t) {
                Some(w) => hit[w] = true,
                None => false_alarms += 1,
            }
        }
    }
    FileRow {
        file: r.series.name.clone(),
        points: ts.len(),
        windows: r.series.windows.len(),
        windows_hit: hit.iter().filter(|&&h| h).count(),
        false_alarms,
        top: top.map(|i| Alarm {
            timestamp: stamp(ts[i]),
            score: r.scores[i],
            reason: r.reasons[i].to_string(),
        }),
    }
}

fn markdown(r: &Report, args: &Args) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Anomaly detection: `{}` on {}\n",
        r.detector,
        args.nab.display()
    );
    let _ = writeln!(
        md,
        "{} series, {} points, scored point by point from the past only. Results in NAB's layout under `{}/`; \
         NAB's own scorer reads them with `nab-score {} {}`.\n",
        r.series,
        r.points,
        r.detector,
        args.out.display(),
        r.detector
    );
    let _ = writeln!(md, "## NAB score (built-in scorer)\n");
    let _ = writeln!(
        md,
        "| profile | score | raw | null | threshold | windows hit | detections in windows | false alarms |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for p in &r.profiles {
        let _ = writeln!(
            md,
            "| {} | **{:.2}** | {:.2} | {:.2} | {:.4} | {} of {} | {} | {} |",
            p.profile.name,
            p.normalised,
            p.best.score,
            p.null.score,
            p.best.threshold,
            p.best.windows_hit,
            p.windows,
            p.best.tp,
            p.best.fp
        );
    }
    let _ = writeln!(
        md,
        "\n## Per series (standard profile's threshold)\n\n| series | points | windows hit | false alarms | highest score | why |\n|---|---:|---:|---:|---|---|"
    );
    for f in &r.files {
        let (when, why) = match &f.top {
            Some(a) => (
                format!("{:.3} at {}", a.score, a.timestamp),
                a.reason.clone(),
            ),
            None => ("—".to_string(), String::new()),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} of {} | {} | {} | {} |",
            f.file, f.points, f.windows_hit, f.windows, f.false_alarms, when, why
        );
    }
    if args.plots {
        let _ = writeln!(
            md,
            "\nCharts: `plots/<category>_<file>.svg` (value above, score below; label windows shaded red, probation grey, the threshold dashed)."
        );
    }
    md
}
