//! Header handling on the forward path: hop-by-hop removal (RFC 9110 §7.6.1), forwarding
//! headers, request ids and W3C trace context.

use crate::config::HeaderOps;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// A request's priority class; believed only from `proxy.trusted_priority_from`.
pub static X_PRIORITY: HeaderName = HeaderName::from_static("x-priority");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Whether the request asks for a protocol upgrade to relay (WebSocket and friends).
///
/// `Upgrade: h2c` (RFC 7540 §3.2) is not relayed: the upgrade is to HTTP/2 with *this* hop,
/// and an upstream that accepted it would speak HTTP/2 to a client that is talking to the
/// proxy. Like any server that declines it, the proxy ignores the offer (the fields are
/// hop-by-hop and removed) and answers in HTTP/1.1; clients that want HTTP/2 in cleartext get
/// it with prior knowledge, which the listener speaks.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    let offers_other_than_h2c = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|p| !p.is_empty() && !p.eq_ignore_ascii_case("h2c"));
    offers_other_than_h2c && connection_has_token(headers, "upgrade")
}

fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Take `h2c` out of the protocols `Upgrade` offers (it is for this hop only); the others
/// stay, in order.
fn drop_h2c_offer(headers: &mut HeaderMap) {
    let offers: Vec<String> = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    if !offers.iter().any(|p| p.eq_ignore_ascii_case("h2c")) {
        return;
    }
    let kept: Vec<&str> = offers
        .iter()
        .map(String::as_str)
        .filter(|p| !p.eq_ignore_ascii_case("h2c"))
        .collect();
    headers.remove(header::UPGRADE);
    if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
        headers.insert(header::UPGRADE, v);
    }
}

/// Remove hop-by-hop headers. With `keep_upgrade`, `Connection: upgrade` and `Upgrade` stay
/// so the upgrade can be relayed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named in Connection are hop-by-hop too.
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for n in named {
            headers.remove(n);
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::TRAILER);
    headers.remove(header::PROXY_AUTHENTICATE);
    headers.remove(header::PROXY_AUTHORIZATION);
    // TE: only "trailers" may cross (gRPC needs it); anything else is hop-by-hop.
    if let Some(te) = headers.get(header::TE) {
        let trailers = te
            .to_str()
            .map(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false);
        headers.remove(header::TE);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    // Only meaningful with `Upgrade: h2c`, which is never relayed.
    headers.remove(&HTTP2_SETTINGS);
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        drop_h2c_offer(headers);
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Append the client to `X-Forwarded-For` and `Forwarded`, and set `X-Forwarded-Proto`.
pub fn add_forwarding(headers: &mut HeaderMap, client: IpAddr, tls: bool, host: &str) {
    let proto = if tls { "https" } else { "http" };
    let ip = client.to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    let mut value = Vec::with_capacity(64);
    if let Some(prev) = headers.get(&FORWARDED).and_then(|v| v.to_str().ok()) {
        if !prev.trim().is_empty() {
            value.extend_from_slice(prev.as_bytes());
            value.extend_from_slice(b", ");
        }
    }
    write_forwarded_element(&mut value, client, tls, host);
    if let Ok(v) = HeaderValue::from_bytes(&value) {
        headers.insert(&FORWARDED, v);
    }
}

/// This hop's RFC 7239 `Forwarded` element: IPv6 addresses quoted and bracketed, the host
/// (as the client sent it) quoted, and left out if it cannot be.
pub fn write_forwarded_element(out: &mut Vec<u8>, client: IpAddr, tls: bool, host: &str) {
    write_forwarded_for(out, client, tls);
    write_forwarded_host(out, host);
}

/// The `for` and `proto` parameters of this hop's `Forwarded` element.
pub fn write_forwarded_for(out: &mut Vec<u8>, client: IpAddr, tls: bool) {
    use std::io::Write as _;
    let proto = if tls { "https" } else { "http" };
    let _ = match client {
        IpAddr::V4(_) => write!(out, "for={client};proto={proto}"),
        IpAddr::V6(_) => write!(out, "for=\"[{client}]\";proto={proto}"),
    };
}

/// The `host` parameter of this hop's `Forwarded` element, when the host can be quoted.
pub fn write_forwarded_host(out: &mut Vec<u8>, host: &str) {
    use std::io::Write as _;
    if !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        let _ = write!(out, ";host=\"{host}\"");
    }
}

/// Apply a route's header operations: remove, then set, then add.
pub fn apply_ops(headers: &mut HeaderMap, ops: &HeaderOps) {
    for n in &ops.remove {
        headers.remove(n);
    }
    for (n, v) in &ops.set {
        headers.insert(n, v.clone());
    }
    for (n, v) in &ops.add {
        headers.append(n, v.clone());
    }
}

/// A client-supplied request id is kept if it is short and printable; otherwise replaced.
pub fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// A 32-hex-digit request id from 128 random bits.
pub fn new_request_id(random: u128) -> HeaderValue {
    let mut buf = [0u8; 32];
    hex_into(&mut buf, &random.to_be_bytes());
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// W3C trace context: the proxy is a span of the incoming trace (or starts one). Returns the
/// new `traceparent` (same trace id and flags, our span as parent) and the trace id.
pub fn next_traceparent(
    incoming: Option<&HeaderValue>,
    random: u128,
    span: u64,
) -> (HeaderValue, [u8; 32]) {
    let (out, trace_id) = next_traceparent_bytes(incoming.map(HeaderValue::as_bytes), random, span);
    let v = HeaderValue::from_bytes(&out).unwrap_or_else(|_| {
        HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01")
    });
    (v, trace_id)
}

/// [`next_traceparent`] on bytes, without allocating: the fast path writes the result
/// straight into the upstream head.
pub fn next_traceparent_bytes(
    incoming: Option<&[u8]>,
    random: u128,
    span: u64,
) -> ([u8; 55], [u8; 32]) {
    let mut trace_id = [0u8; 32];
    let mut flags = *b"01";
    match incoming.and_then(parse_traceparent) {
        Some((tid, fl)) => {
            trace_id = tid;
            flags = fl;
        }
        None => {
            // All-zero trace ids are invalid; force a bit.
            hex_into(&mut trace_id, &(random | 1).to_be_bytes());
        }
    }
    let span = if span == 0 { 1 } else { span };
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    out[3..35].copy_from_slice(&trace_id);
    out[35] = b'-';
    hex_into(&mut out[36..52], &span.to_be_bytes());
    out[52] = b'-';
    out[53..55].copy_from_slice(&flags);
    (out, trace_id)
}

/// Parse `version-traceid-parentid-flags`; returns trace id and flags if valid.
fn parse_traceparent(v: &[u8]) -> Option<([u8; 32], [u8; 2])> {
    // Future versions may append fields; version 00 is exactly 55 bytes.
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let lower_hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let (ver, tid, pid, fl) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    if !lower_hex(ver) || ver == b"ff" || !lower_hex(tid) || !lower_hex(pid) || !lower_hex(fl) {
        return None;
    }
    if (ver == b"00" && v.len() != 55)
        || tid.iter().all(|&c| c == b'0')
        || pid.iter().all(|&c| c == b'0')
    {
        return None;
    }
    let mut t = [0u8; 32];
    t.copy_from_slice(tid);
    Some((t, [fl[0], fl[1]]))
}

/// Size of the request head as received: request line plus header lines.
pub fn head_size(method: &http::Method, uri: &http::Uri, headers: &HeaderMap) -> usize {
    let line = method.as_str().len() + uri.path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    headers
        .iter()
        .fold(line, |acc, (n, v)| acc + n.as_str().len() + v.len() + 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::UPGRADE).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-keep").unwrap(), "1");
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn an_h2c_upgrade_offer_is_dropped_not_relayed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(
            &HTTP2_SETTINGS,
            HeaderValue::from_static("AAMAAABkAAQAAP__"),
        );
        assert!(!is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        // Offered along with another protocol, only the other one is relayed.
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c, websocket"));
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
    }

    #[test]
    fn forwarding_headers_append() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        add_forwarding(&mut h, "::1".parse().unwrap(), true, "api.example.com");
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "203.0.113.7, ::1");
        assert_eq!(h.get(&X_FORWARDED_PROTO).unwrap(), "https");
        assert_eq!(
            h.get(&FORWARDED).unwrap(),
            "for=\"[::1]\";proto=https;host=\"api.example.com\""
        );
    }

    #[test]
    fn traceparent_is_continued_or_started() {
        let incoming =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let (v, tid) = next_traceparent(Some(&incoming), 7, 0xabc);
        assert_eq!(v, "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01");
        assert_eq!(&tid, b"4bf92f3577b34da6a3ce929d0e0e4736");
        let bad =
            HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01");
        let (v, _) = next_traceparent(Some(&bad), 0x10, 1);
        assert_eq!(v, "00-00000000000000000000000000000011-0000000000000001-01");
        assert_eq!(
            new_request_id(u128::MAX),
            "ffffffffffffffffffffffffffffffff"
        );
    }

    proptest! {
        #[test]
        fn traceparent_parser_never_panics(s in "\\PC{0,80}") {
            let _ = parse_traceparent(s.as_bytes());
        }

        #[test]
        fn generated_traceparents_parse(random in any::<u128>(), span in any::<u64>()) {
            let (v, _) = next_traceparent(None, random, span);
            prop_assert!(parse_traceparent(v.as_bytes()).is_some());
        }
    }
}
