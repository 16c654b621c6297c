//! Serde helpers shared by the decision types and the proxy's config.

use std::time::Duration;

/// A duration as people write them in the config: `"250ms"`, `"1m 30s"`.
pub fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}
