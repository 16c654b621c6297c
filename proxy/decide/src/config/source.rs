//! From TOML text to a [`RawConfig`], with every error located in the file.
//!
//! Two things a person fixing a config file needs that plain `toml` + serde do not give:
//! all the problems at once (serde stops at the first unknown field, hiding the file's other
//! mistakes), and where each one is (line, and column for syntax errors). So the document is
//! parsed once into a spanned tree; an unknown field is recorded with its line, removed from
//! the tree, and deserialization goes on, so the fields after it and the validation of the
//! whole file are still checked. Validation errors carry field paths; [`Doc::locate`] maps a
//! path back to the line it was written on.

use super::raw::RawConfig;
use super::FieldError;
use toml::de::{DeArray, DeTable, DeValue};
use toml::Spanned;

/// More errors than this and the file is probably not a vivremotion config at all.
const MAX_ERRORS: usize = 32;

/// A parsed TOML document and the text it came from.
pub(super) struct Doc<'a> {
    text: &'a str,
    root: Spanned<DeTable<'a>>,
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

impl<'a> Doc<'a> {
    /// Parse the text; a syntax error names its line and column.
    pub(super) fn parse(text: &'a str) -> Result<Doc<'a>, FieldError> {
        match DeTable::parse(text) {
            Ok(root) => Ok(Doc { text, root }),
            Err(e) => {
                let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
                Err(FieldError {
                    path: String::new(),
                    reason: format!("TOML syntax: {}", e.message().trim()),
                    line: (line > 0).then_some(line),
                    column: (column > 0).then_some(column),
                })
            }
        }
    }

    /// Deserialize the raw config. An unknown field is reported and skipped. A value of the
    /// wrong shape is reported and its top-level section skipped, so the other sections are
    /// still checked; then no config is returned (validating one with a section missing
    /// would report guesses).
    pub(super) fn raw_config(&self) -> (Option<RawConfig>, Vec<FieldError>) {
        let mut root = self.root.clone();
        let mut errors = Vec::new();
        let mut broken = false;
        loop {
            let de = toml::Deserializer::from(root.clone());
            let err = match serde_path_to_error::deserialize::<_, RawConfig>(de) {
                Ok(raw) => return ((!broken).then_some(raw), errors),
                Err(err) => err,
            };
            // A step serde could not name makes the path unusable for stepping over the
            // field (it might name another field of the same name): report, then stop.
            let segs: Vec<Seg> = err
                .path()
                .iter()
                .map(|s| match s {
                    serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                    serde_path_to_error::Segment::Enum { variant } => {
                        Some(Seg::Key(variant.clone()))
                    }
                    serde_path_to_error::Segment::Unknown => None,
                })
                .collect::<Option<Vec<_>>>()
                .unwrap_or_default();
            let path = err.path().to_string();
            let inner = err.into_inner();
            let line = inner
                .span()
                .map(|s| line_col(self.text, s.start).0)
                .or_else(|| self.line_of(&segs));
            let message = inner.message().trim();
            let unknown = message.starts_with("unknown field");
            errors.push(FieldError {
                path: if path == "." { String::new() } else { path },
                reason: message.to_string(),
                line,
                column: None,
            });
            if errors.len() >= MAX_ERRORS {
                return (None, errors);
            }
            // An unknown field is simply dropped. After a value of the wrong shape the rest of
            // its section would be guesswork (removing the value makes it a missing field), so
            // the whole top-level section is dropped and the other sections are still checked.
            let step_over = if unknown {
                segs
            } else {
                segs.into_iter().take(1).collect()
            };
            broken |= !unknown;
            if !remove(&mut root, &step_over) {
                return (None, errors);
            }
        }
    }

    /// The same error, with the line its field path points at (or the nearest enclosing
    /// table that exists, for a field that is missing).
    pub(super) fn locate(&self, mut e: FieldError) -> FieldError {
        if e.line.is_none() {
            e.line = self.line_of(&parse_path(&e.path));
        }
        e
    }

    fn line_of(&self, segs: &[Seg]) -> Option<u32> {
        let mut best = None;
        let mut cur = Node::Table(self.root.get_ref());
        for seg in segs {
            let found = match (seg, cur) {
                (Seg::Key(k), Node::Table(t)) => t
                    .get_key_value(k.as_str())
                    .map(|(k, v)| (k.span().start, v)),
                (Seg::Index(n), Node::Array(a)) => a.get(*n).map(|v| (v.span().start, v)),
                _ => None,
            };
            let Some((start, v)) = found else { break };
            best = Some(start);
            cur = match v.get_ref() {
                DeValue::Table(t) => Node::Table(t),
                DeValue::Array(a) => Node::Array(a),
                _ => Node::Leaf,
            };
        }
        best.map(|offset| line_col(self.text, offset).0)
    }
}

#[derive(Clone, Copy)]
enum Node<'d, 'a> {
    Table(&'d DeTable<'a>),
    Array(&'d DeArray<'a>),
    Leaf,
}

/// Remove the field at `segs` from the tree. Returns false if there is nothing there (the
/// error cannot be stepped over).
fn remove(root: &mut Spanned<DeTable<'_>>, segs: &[Seg]) -> bool {
    let Some((Seg::Key(last), parents)) = segs.split_last() else {
        return false;
    };
    let mut table: &mut DeTable<'_> = root.get_mut();
    let mut i = 0;
    while i < parents.len() {
        let Seg::Key(k) = &parents[i] else {
            return false;
        };
        let Some(v) = table.get_mut(k.as_str()) else {
            return false;
        };
        let mut v: &mut DeValue<'_> = v.get_mut();
        // Indices after a key step into arrays (of tables).
        while let Some(Seg::Index(n)) = parents.get(i + 1) {
            let DeValue::Array(a) = v else {
                return false;
            };
            let Some(e) = a.get_mut(*n) else {
                return false;
            };
            v = e.get_mut();
            i += 1;
        }
        let DeValue::Table(t) = v else {
            return false;
        };
        table = t;
        i += 1;
    }
    table.remove(last.as_str()).is_some()
}

/// `routes[0].rate_limits[1].rate` → [routes, 0, rate_limits, 1, rate].
fn parse_path(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key.to_string()));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(end) = inner.find(']') else { break };
            match inner[..end].parse() {
                Ok(n) => out.push(Seg::Index(n)),
                Err(_) => return out,
            }
            rest = &inner[end + 1..];
        }
    }
    out
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line as u32, col as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_into_keys_and_indices() {
        assert_eq!(
            parse_path("routes[0].rate_limits[12].rate"),
            vec![
                Seg::Key("routes".into()),
                Seg::Index(0),
                Seg::Key("rate_limits".into()),
                Seg::Index(12),
                Seg::Key("rate".into()),
            ]
        );
        assert_eq!(parse_path(""), vec![]);
    }

    #[test]
    fn lines_and_columns_count_from_one() {
        let t = "a = 1\nbb = 2\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        assert_eq!(line_col(t, 9), (2, 4));
        assert_eq!(line_col(t, 999), (3, 1));
    }
}
