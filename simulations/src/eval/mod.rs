//! Model evaluations on real data, written as reports a person reads.

pub mod anomaly;
pub mod forecast;
pub mod nab;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Data(#[from] vivremotion_datasets::DatasetError),
    #[error(transparent)]
    Backtest(#[from] vivremotion_models::forecast::backtest::BacktestError),
    #[error("{0}")]
    Invalid(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("plot {}: {message}", path.display())]
    Plot {
        path: std::path::PathBuf,
        message: String,
    },
}

pub(crate) fn write(path: &std::path::Path, text: &str) -> Result<(), EvalError> {
    std::fs::write(path, text).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>24} [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}
