//! Reading files: bytes (gzip undone), CSV tables through polars, and exact error positions.
//!
//! polars parses the tables: fast, typed, multi-threaded. Its errors do not say where in the
//! file the problem is, so when polars refuses a file, or a value in it does not convert
//! (a missing field, a bad timestamp), the file is read once more with the `csv` crate, which
//! knows each record's line, to name the line and column.

use crate::error::{DatasetError, Result};
use polars::prelude::*;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The whole file, decompressed when its name ends in `.gz`. A compressed stream that ends
/// early (a truncated download) is reported at the line and column it reached.
pub fn bytes(path: &Path) -> Result<Vec<u8>> {
    let io = |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if path.extension().is_none_or(|e| e != "gz") {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len() * 4);
    let mut dec = flate2::read::MultiGzDecoder::new(&raw[..]);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match dec.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) => {
                let (line, column) = position_at_end(&out);
                return Err(DatasetError::Line {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message: format!("compressed data is cut or corrupt ({e})"),
                });
            }
        }
    }
}

/// The 1-based line and column just past the end of `data`.
fn position_at_end(data: &[u8]) -> (u64, u64) {
    let line = data.iter().filter(|b| **b == b'\n').count() as u64 + 1;
    let col = data.iter().rev().take_while(|b| **b != b'\n').count() as u64 + 1;
    (line, col)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Int,
    Float,
    Str,
}

/// Validates one field's text; the message says what is wrong with it.
pub type Check = fn(&str) -> std::result::Result<(), String>;

/// One expected column. `check` validates a field's text (a timestamp format, say) during
/// the diagnostic pass, so a value the converter refuses is located exactly.
#[derive(Clone, Copy)]
pub struct Col {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
    pub check: Option<Check>,
}

pub const fn col(name: &'static str, ty: Ty) -> Col {
    Col {
        name,
        ty,
        required: true,
        check: None,
    }
}

pub const fn optional(name: &'static str, ty: Ty) -> Col {
    Col {
        name,
        ty,
        required: false,
        check: None,
    }
}

pub const fn checked(
    name: &'static str,
    check: fn(&str) -> std::result::Result<(), String>,
) -> Col {
    Col {
        name,
        ty: Ty::Str,
        required: true,
        check: Some(check),
    }
}

/// A table read from one file, with typed access to its columns.
pub struct Table {
    pub path: PathBuf,
    bytes: Vec<u8>,
    header: bool,
    cols: Vec<Col>,
    df: DataFrame,
}

/// Reads a CSV file whose columns are `cols` (by header name when `header`, else by
/// position). Extra columns in the file are ignored; a missing one is an error on line 1.
pub fn table(path: &Path, header: bool, cols: &[Col]) -> Result<Table> {
    let bytes = bytes(path)?;
    table_from(path, bytes, header, cols)
}

pub fn table_from(path: &Path, bytes: Vec<u8>, header: bool, cols: &[Col]) -> Result<Table> {
    let file_cols: Vec<String> = if header {
        let first = bytes.split(|b| *b == b'\n').next().unwrap_or(&[]);
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(first);
        match r.records().next() {
            Some(Ok(rec)) => rec.iter().map(|s| s.trim().to_string()).collect(),
            _ => Vec::new(),
        }
    } else {
        cols.iter().map(|c| c.name.to_string()).collect()
    };
    for c in cols {
        if !file_cols.iter().any(|f| f == c.name) {
            return Err(DatasetError::Line {
                path: path.to_path_buf(),
                line: 1,
                column: 1,
                message: if file_cols.is_empty() {
                    "empty file (no header line)".to_string()
                } else {
                    format!(
                        "no column {:?} in the header (found {})",
                        c.name,
                        file_cols.join(",")
                    )
                },
            });
        }
    }
    // Every column of the file is named in the schema (unused ones as strings), so polars
    // checks the field count of every line.
    let schema = Schema::from_iter(file_cols.iter().map(|f| {
        let ty = cols.iter().find(|c| c.name == f).map_or(Ty::Str, |c| c.ty);
        Field::new(
            f.as_str().into(),
            match ty {
                Ty::Int => DataType::Int64,
                Ty::Float => DataType::Float64,
                Ty::Str => DataType::String,
            },
        )
    }));
    let read = CsvReadOptions::default()
        .with_has_header(header)
        .with_schema(Some(Arc::new(schema)))
        .with_parse_options(CsvParseOptions::default().with_truncate_ragged_lines(false))
        .into_reader_with_file_handle(std::io::Cursor::new(&bytes[..]))
        .finish();
    let (df, refused) = match read {
        Ok(df) => (df, None),
        Err(e) => (DataFrame::empty(), Some(e)),
    };
    let t = Table {
        path: path.to_path_buf(),
        bytes,
        header,
        cols: cols.to_vec(),
        df,
    };
    if let Some(e) = refused {
        return Err(t.locate(&format!("polars: {e}")));
    }
    for c in cols.iter().filter(|c| c.required) {
        let nulls = t.df.column(c.name).map(|s| s.null_count()).unwrap_or(0);
        if nulls > 0 {
            return Err(t.locate(&format!("{nulls} missing values in column {}", c.name)));
        }
    }
    Ok(t)
}

impl Table {
    pub fn rows(&self) -> usize {
        self.df.height()
    }

    fn column(&self, name: &str) -> Result<&polars::prelude::Column> {
        self.df.column(name).map_err(|e| self.format(name, e))
    }

    pub fn ints(&self, name: &str) -> Result<Vec<Option<i64>>> {
        let c = self.column(name)?;
        let ca = c.i64().map_err(|e| self.format(name, e))?;
        Ok(ca.iter().collect())
    }

    pub fn floats(&self, name: &str) -> Result<Vec<Option<f64>>> {
        let c = self.column(name)?;
        let ca = c.f64().map_err(|e| self.format(name, e))?;
        Ok(ca.iter().collect())
    }

    pub fn strs(&self, name: &str) -> Result<Vec<Option<String>>> {
        let c = self.column(name)?;
        let ca = c.str().map_err(|e| self.format(name, e))?;
        Ok(ca.iter().map(|s| s.map(str::to_string)).collect())
    }

    fn format(&self, name: &str, e: impl std::fmt::Display) -> DatasetError {
        DatasetError::Format {
            path: self.path.clone(),
            message: format!("column {name}: {e}"),
        }
    }

    /// Converts the values of a column, reporting the first that does not convert at its
    /// line and column.
    pub fn convert<T>(
        &self,
        name: &str,
        f: impl Fn(&str) -> std::result::Result<T, String>,
    ) -> Result<Vec<T>> {
        let c = self.column(name)?;
        let ca = c.str().map_err(|e| self.format(name, e))?;
        let mut out = Vec::with_capacity(self.rows());
        for s in ca.iter() {
            match s.map(&f) {
                Some(Ok(v)) => out.push(v),
                Some(Err(m)) => return Err(self.locate(&m)),
                None => return Err(self.locate(&format!("missing value in column {name}"))),
            }
        }
        Ok(out)
    }

    /// Finds the first line and column that breaks the schema. `fallback` is the message
    /// when the second reading finds nothing wrong (polars and `csv` disagreeing).
    pub fn locate(&self, fallback: &str) -> DatasetError {
        diagnose(&self.path, &self.bytes, self.header, &self.cols).unwrap_or_else(|| {
            DatasetError::Format {
                path: self.path.clone(),
                message: fallback.to_string(),
            }
        })
    }
}

/// The second, slower reading that names the line and column of the first bad field.
pub fn diagnose(path: &Path, bytes: &[u8], header: bool, cols: &[Col]) -> Option<DatasetError> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut names: Vec<String> = cols.iter().map(|c| c.name.to_string()).collect();
    let mut first = true;
    // Lines counted from byte offsets: the csv crate's own line count lags by one after a
    // CRLF line end (it places the next record at the LF).
    let mut lines = LineCounter::default();
    for rec in r.records() {
        let rec = match rec {
            Ok(rec) => rec,
            Err(e) => {
                let line = e
                    .position()
                    .map_or(0, |p| lines.line_of(bytes, p.byte() as usize));
                return Some(DatasetError::Line {
                    path: path.to_path_buf(),
                    line,
                    column: 1,
                    message: e.to_string(),
                });
            }
        };
        let line = rec
            .position()
            .map_or(0, |p| lines.line_of(bytes, p.byte() as usize));
        if first && header {
            first = false;
            names = rec.iter().map(|s| s.trim().to_string()).collect();
            continue;
        }
        first = false;
        if rec.len() == 1 && rec.get(0) == Some("") {
            continue; // a blank line, which polars skips too
        }
        if rec.len() != names.len() {
            return Some(DatasetError::Line {
                path: path.to_path_buf(),
                line,
                column: 1,
                message: format!(
                    "expected {} fields ({}), found {}",
                    names.len(),
                    names.join(","),
                    rec.len()
                ),
            });
        }
        for c in cols {
            let Some(i) = names.iter().position(|n| n == c.name) else {
                continue;
            };
            let v = rec.get(i).unwrap_or("");
            let bad = |message: String| DatasetError::Parse {
                path: path.to_path_buf(),
                line,
                column: i + 1,
                name: c.name.to_string(),
                message,
            };
            if v.is_empty() {
                if c.required {
                    return Some(bad("missing value".to_string()));
                }
                continue;
            }
            match c.ty {
                Ty::Int if v.trim().parse::<i64>().is_err() => {
                    return Some(bad(format!("{v:?} is not an integer")))
                }
                Ty::Float if v.trim().parse::<f64>().is_err() => {
                    return Some(bad(format!("{v:?} is not a number")))
                }
                _ => {}
            }
            if let Some(Err(m)) = c.check.map(|f| f(v)) {
                return Some(bad(m));
            }
        }
    }
    None
}

/// 1-based line numbers of increasing byte offsets, counted incrementally.
#[derive(Default)]
struct LineCounter {
    at: usize,
    newlines: u64,
}

impl LineCounter {
    fn line_of(&mut self, bytes: &[u8], mut offset: usize) -> u64 {
        // A record that "starts" on the LF of a CRLF starts on the next line.
        if bytes.get(offset) == Some(&b'\n') {
            offset += 1;
        }
        let offset = offset.min(bytes.len());
        if offset >= self.at {
            self.newlines += bytes[self.at..offset]
                .iter()
                .filter(|b| **b == b'\n')
                .count() as u64;
            self.at = offset;
        }
        self.newlines + 1
    }
}

/// Reads a JSON-lines file: `f` turns one line's object into a value. A bad line is reported
/// with its line and the column serde_json stopped at.
pub fn json_lines<T, R>(
    path: &Path,
    mut f: impl FnMut(R) -> std::result::Result<T, String>,
) -> Result<Vec<T>>
where
    R: serde::de::DeserializeOwned,
{
    let bytes = bytes(path)?;
    let mut out = Vec::new();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let line_no = i as u64 + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let row: R = serde_json::from_slice(line).map_err(|e| DatasetError::Line {
            path: path.to_path_buf(),
            line: line_no,
            column: e.column() as u64,
            message: e.to_string(),
        })?;
        out.push(f(row).map_err(|message| DatasetError::Line {
            path: path.to_path_buf(),
            line: line_no,
            column: 1,
            message,
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLS: [Col; 2] = [col("a", Ty::Int), col("b", Ty::Float)];

    #[test]
    fn lines_are_right_after_crlf_line_ends() {
        let e = read("a,b\r\n1,2.5\r\n3,x\r\n").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("x.csv:3: column 2 (b): \"x\" is not a number")
        );
    }

    fn read(text: &str) -> Result<Table> {
        table_from(Path::new("x.csv"), text.as_bytes().to_vec(), true, &COLS)
    }

    #[test]
    fn a_good_table_reads_typed() {
        let t = read("a,b\n1,2.5\n3,4\n").unwrap();
        assert_eq!(t.ints("a").unwrap(), vec![Some(1), Some(3)]);
        assert_eq!(t.floats("b").unwrap(), vec![Some(2.5), Some(4.0)]);
    }

    #[test]
    fn a_bad_number_is_named_by_line_and_column() {
        let e = read("a,b\n1,2.5\n3,x4\n").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("x.csv:3: column 2 (b): \"x4\" is not a number")
        );
    }

    #[test]
    fn a_cut_line_is_named() {
        let e = read("a,b\n1,2.5\n3").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("x.csv:3:1: expected 2 fields (a,b), found 1")
        );
    }

    #[test]
    fn a_missing_column_is_named_on_line_one() {
        let e = read("a,c\n1,2\n").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("x.csv:1:1: no column \"b\" in the header (found a,c)")
        );
    }

    #[test]
    fn a_cut_gzip_stream_names_where_it_stopped() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.txt.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        for i in 0..100_000 {
            writeln!(enc, "{}", i % 97).unwrap();
        }
        let gz = enc.finish().unwrap();
        std::fs::write(&p, &gz[..gz.len() / 2]).unwrap();
        let e = bytes(&p).unwrap_err();
        let DatasetError::Line { line, .. } = e else {
            panic!("{e}")
        };
        assert!(line > 1000 && line < 100_000, "{line}");
    }
}
