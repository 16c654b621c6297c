//! Route matching and path rewriting: pure functions over request parts.

use crate::config::{MatchConfig, PathMatch};
use http::header::HeaderName;
use http::{HeaderMap, Method, Uri};

/// The host a request is for: `Host` header (HTTP/1) or the URI authority (HTTP/2), without
/// the port.
pub fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> &'a str {
    let raw = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("");
    strip_port(raw)
}

pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Segment-aware prefix match (see [`PathMatch::Prefix`]).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

/// Whether a request satisfies every condition of a route.
/// What route matching needs from a request, whether it is parsed into `http` types (the
/// hyper path) or still raw bytes (the HTTP/1.1 fast path).
pub trait RequestView {
    fn method(&self) -> &str;
    fn path(&self) -> &str;
    /// The host without port.
    fn host(&self) -> &str;
    /// Every value of the header `name`.
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a;
}

/// A request in `http` types.
pub struct HttpRequest<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
}

impl RequestView for HttpRequest<'_> {
    fn method(&self) -> &str {
        self.method.as_str()
    }
    fn path(&self) -> &str {
        self.uri.path()
    }
    fn host(&self) -> &str {
        request_host(self.uri, self.headers)
    }
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.get_all(name).into_iter().map(|v| v.as_bytes())
    }
}

pub fn matches(m: &MatchConfig, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
    matches_view(
        m,
        &HttpRequest {
            method,
            uri,
            headers,
        },
    )
}

pub fn matches_view(m: &MatchConfig, r: &impl RequestView) -> bool {
    if let Some(p) = &m.host {
        if !host_matches(p, r.host()) {
            return false;
        }
    }
    match &m.path {
        Some(PathMatch::Prefix(p)) if !prefix_matches(p, r.path()) => return false,
        Some(PathMatch::Exact(p)) if r.path() != p => return false,
        _ => {}
    }
    if let Some(ms) = &m.methods {
        if !ms.iter().any(|x| x == r.method()) {
            return false;
        }
    }
    m.headers
        .iter()
        .all(|(n, v)| r.values(n).any(|x| x == v.as_bytes()))
        && m.headers_present
            .iter()
            .all(|n| r.values(n).next().is_some())
}

pub fn rewrite_prefix(path_and_query: &str, prefix: &str, replacement: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let mut out = String::with_capacity(path_and_query.len() + replacement.len());
    out.push_str(replacement);
    // Join without doubling or dropping the slash: /api + /users, /v2/ + users.
    match (replacement.ends_with('/'), rest.starts_with('/')) {
        (true, true) => out.push_str(&rest[1..]),
        (false, false) if !rest.is_empty() => {
            out.push('/');
            out.push_str(rest);
        }
        _ => out.push_str(rest),
    }
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};
    use proptest::prelude::*;

    fn req(uri: &str, host: Option<&str>) -> (Uri, HeaderMap) {
        let mut h = HeaderMap::new();
        if let Some(host) = host {
            h.insert(http::header::HOST, HeaderValue::from_str(host).unwrap());
        }
        (uri.parse().unwrap(), h)
    }

    #[test]
    fn prefixes_respect_segments() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/users"));
        assert!(!prefix_matches("/api", "/apiary"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(prefix_matches("/", "/anything"));
        assert!(!prefix_matches("/api", "/"));
    }

    #[test]
    fn hosts_match_exactly_or_by_wildcard_without_port() {
        let m = MatchConfig {
            host: Some("*.example.com".into()),
            ..Default::default()
        };
        let (u, h) = req("/", Some("API.Example.com:8443"));
        assert!(matches(&m, &Method::GET, &u, &h));
        let (u, h) = req("/", Some("example.com"));
        assert!(!matches(&m, &Method::GET, &u, &h));
        let (u, h) = req("/", Some("evilexample.com"));
        assert!(!matches(&m, &Method::GET, &u, &h));
        // HTTP/2: the authority is in the URI
        let (u, h) = req("https://a.example.com/x", None);
        assert!(matches(&m, &Method::GET, &u, &h));
        assert_eq!(
            request_host(&"http://[::1]:80/".parse().unwrap(), &HeaderMap::new()),
            "::1"
        );
    }

    #[test]
    fn methods_and_headers() {
        let m = MatchConfig {
            methods: Some(vec!["POST".into()]),
            headers: vec![(
                HeaderName::from_static("x-env"),
                HeaderValue::from_static("canary"),
            )],
            headers_present: vec![HeaderName::from_static("x-user")],
            ..Default::default()
        };
        let (u, mut h) = req("/", None);
        assert!(!matches(&m, &Method::POST, &u, &h));
        h.insert("x-env", HeaderValue::from_static("canary"));
        h.insert("x-user", HeaderValue::from_static(""));
        assert!(matches(&m, &Method::POST, &u, &h));
        assert!(!matches(&m, &Method::GET, &u, &h));
    }

    #[test]
    fn rewrites_keep_the_query_and_one_slash() {
        assert_eq!(
            rewrite_prefix("/api/users?x=1", "/api", "/v2"),
            "/v2/users?x=1"
        );
        assert_eq!(rewrite_prefix("/api", "/api", "/v2"), "/v2");
        assert_eq!(rewrite_prefix("/api/users", "/api", "/"), "/users");
        assert_eq!(rewrite_prefix("/api/", "/api/", "/v2/"), "/v2/");
        assert_eq!(rewrite_prefix("/api/x", "/api/", "/v2"), "/v2/x");
        assert_eq!(rewrite_prefix("/api?q", "/api", "/"), "/?q");
    }

    proptest! {
        #[test]
        fn rewritten_paths_stay_absolute(rest in "[a-z/]{0,12}", q in prop::option::of("[a-z=&]{0,8}"), repl in "/[a-z/]{0,6}") {
            let path = format!("/api{}{}", if rest.is_empty() || rest.starts_with('/') { "" } else { "/" }, rest);
            let pq = match &q { Some(q) => format!("{path}?{q}"), None => path.clone() };
            let out = rewrite_prefix(&pq, "/api", &repl);
            prop_assert!(out.starts_with('/'));
            prop_assert!(out.parse::<http::uri::PathAndQuery>().is_ok());
            if let Some(q) = q { let want = format!("?{}", q); prop_assert!(out.ends_with(&want)); }
        }
    }
}
