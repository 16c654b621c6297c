use std::path::PathBuf;

/// Why a dataset could not be loaded. Every variant names the file; parse errors also name
/// the 1-based line and the column (number and header name), so a person can open the file
/// at the right place.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not found (dataset root {}; set --root or VIVREMOTION_DATASETS)", path.display(), root.display())]
    Missing { path: PathBuf, root: PathBuf },
    #[error("{}:{line}: column {column} ({name}): {message}", path.display())]
    Parse {
        path: PathBuf,
        line: u64,
        column: usize,
        name: String,
        message: String,
    },
    /// A whole-line problem (wrong number of fields, bad JSON, a truncated compressed stream).
    #[error("{}:{line}:{column}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("unknown dataset {name:?}; `vivremotion datasets list` shows the names")]
    Unknown { name: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{}: writing: {message}", path.display())]
    Write { path: PathBuf, message: String },
}

pub type Result<T, E = DatasetError> = std::result::Result<T, E>;
