//! Serde helpers shared by the decision types and the proxy's config.

use std::time::Duration;

/// A duration as people write them in the config: `"250ms"`, `"1m 30s"`.
pub fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// [`ser_duration`] for an optional duration (`None` serializes as none).
pub fn ser_opt_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}
