//! Which header fields cross the fast path, and writing them: hop-by-hop rules (RFC 9110
//! §7.6.1), the fields the proxy writes itself, route header operations.

use crate::h1::RawHead;

/// Hop-by-hop fields (RFC 9110 §7.6.1) that never cross the proxy in either direction.
pub(super) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

pub(super) fn listed(list: &[&str], name: &[u8]) -> bool {
    list.iter()
        .any(|s| s.len() == name.len() && s.as_bytes().eq_ignore_ascii_case(name))
}

/// Fields never copied from the client to the upstream: hop-by-hop, and the ones the proxy
/// writes itself (framing included).
pub(super) fn skip_request_field(name: &str) -> bool {
    const OURS: [&str; 6] = [
        "content-length",
        "x-request-id",
        "traceparent",
        "x-forwarded-for",
        "x-forwarded-proto",
        "forwarded",
    ];
    listed(&HOP_BY_HOP, name.as_bytes()) || listed(&OURS, name.as_bytes())
}

/// Fields never copied from the upstream's response to the client.
pub(super) fn skip_response_field(name: &[u8]) -> bool {
    listed(&HOP_BY_HOP, name) || listed(&["x-request-id", "content-length"], name)
}

pub(super) fn in_ops(name: &[u8], ops: &crate::config::HeaderOps) -> bool {
    ops.remove
        .iter()
        .chain(ops.set.iter().map(|(n, _)| n))
        .any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name))
}

pub(super) fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub(super) fn put_ops(out: &mut Vec<u8>, ops: &crate::config::HeaderOps) {
    for (n, v) in ops.set.iter().chain(ops.add.iter()) {
        put_field(out, n.as_str().as_bytes(), v.as_bytes());
    }
}

/// Fields the upstream's `Connection` names: hop-by-hop too.
pub(super) fn connection_named(raw: &RawHead) -> Vec<&[u8]> {
    let mut v = Vec::new();
    for c in raw.values("connection") {
        for t in c.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            if !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
            {
                v.push(t);
            }
        }
    }
    v
}
