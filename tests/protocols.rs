//! Streaming, HTTP/1.1 and HTTP/2 both ways, TLS with ALPN on both sides, upgrades.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_chunks_arrive_before_the_upstream_finishes() {
    let _s = serial().await;
    let b = backend("sse", 0.0).await;
    let proxy = Proxy::start(&round_robin_config(&[b]));
    let client = http1_client();
    let start = Instant::now();
    let req = http::Request::get(proxy.url("/sse?n=4&interval_ms=400"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(d) = frame.data_ref() {
            arrivals.push(start.elapsed());
            text.push_str(&String::from_utf8_lossy(d));
        }
    }
    assert_eq!(text.matches("data: ").count(), 4, "{text}");
    let total = start.elapsed();
    assert!(
        total >= Duration::from_millis(1150),
        "upstream takes 1.2 s, got {total:?}"
    );
    assert!(
        arrivals[0] < Duration::from_millis(400),
        "first chunk at {:?}: buffered?",
        arrivals[0]
    );
    assert!(arrivals.len() >= 4, "chunks were merged: {arrivals:?}");
    assert!(
        arrivals[1] >= Duration::from_millis(350),
        "second chunk too early: {arrivals:?}"
    );
}

async fn upstream_version(client: &HttpClient, url: &str) -> (String, http::Version) {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let version = resp.version();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    (v["version"].as_str().unwrap().to_string(), version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_on_both_sides() {
    let b = backend("v", 0.0).await;
    let eps = endpoints_toml(&[b], None);
    for (upstream_proto, want) in [("http1", "HTTP/1.1"), ("http2", "HTTP/2.0")] {
        let proxy = Proxy::start(&simple_config(
            &eps,
            "round_robin",
            &format!("protocol = \"{upstream_proto}\""),
            "",
        ));
        let (seen, v) = upstream_version(&http1_client(), &proxy.url("/v")).await;
        assert_eq!(
            (seen.as_str(), v),
            (want, http::Version::HTTP_11),
            "client h1, upstream {upstream_proto}"
        );
        let (seen, v) = upstream_version(&h2c_client(), &proxy.url("/v")).await;
        assert_eq!(
            (seen.as_str(), v),
            (want, http::Version::HTTP_2),
            "client h2c, upstream {upstream_proto}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_request_bodies_and_host_are_forwarded() {
    let b = backend("h2", 0.0).await;
    let proxy = Proxy::start(&round_robin_config(&[b]));
    let client = h2c_client();
    let rep = post_json(&client, &proxy.url("/upload"), &"x".repeat(100_000), "POST").await;
    assert_eq!(rep.status, 200);
    let v = rep.json();
    assert_eq!(v["body_bytes"], 100_000);
    assert_eq!(
        v["headers"]["host"],
        proxy.addr.to_string(),
        "HTTP/2 authority becomes Host for an HTTP/1 upstream"
    );
}

fn write_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let c = dir.join("cert.pem");
    let k = dir.join("key.pem");
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    (c, k)
}

fn tls_client_config(ca: &std::path::Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// client --TLS(h2 or http/1.1)--> edge proxy --TLS(ALPN)--> inner proxy --h1--> backend
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_alpn_on_the_listener_and_to_upstreams() {
    let b = backend("tls", 0.0).await;
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(certs.path());
    let inner = Proxy::start(&format!(
        r#"
[proxy]
workers = 1
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "tls"
listen = "127.0.0.1:0"
tls = {{ cert_file = "{}", key_file = "{}" }}
[clusters.backend]
endpoints = ["{}"]
[[routes]]
name = "all"
cluster = "backend"
"#,
        cert.display(),
        key.display(),
        b.addr()
    ));
    // The edge reaches the inner proxy by name so the certificate (for "localhost") verifies.
    let edge = Proxy::start(&simple_config(
        &format!("[\"localhost:{}\"]", inner.addr.port()),
        "round_robin",
        &format!(
            "protocol = \"auto\"\ntls = {{ ca_file = \"{}\" }}",
            cert.display()
        ),
        "",
    ));
    let (seen, _) = upstream_version(&http1_client(), &edge.url("/through-tls")).await;
    assert_eq!(
        seen, "HTTP/1.1",
        "inner proxy talks HTTP/1.1 to the backend"
    );

    // Directly to the TLS listener, once per ALPN protocol.
    for (alpn, want) in [(&b"h2"[..], "h2"), (&b"http/1.1"[..], "http/1.1")] {
        let connector = tokio_rustls::TlsConnector::from(tls_client_config(&cert, &[alpn]));
        let tcp = tokio::net::TcpStream::connect(inner.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(want.as_bytes()));
        let io = hyper_util::rt::TokioIo::new(tls);
        let req = http::Request::get("/direct")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let status = if want == "h2" {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut req = req;
            *req.uri_mut() = format!("https://localhost:{}/direct", inner.addr.port())
                .parse()
                .unwrap();
            send.send_request(req).await.unwrap().status()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap().status()
        };
        assert_eq!(status, 200, "ALPN {want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_relayed_both_ways() {
    let b = backend("ws", 0.0).await;
    let proxy = Proxy::start(&round_robin_config(&[b]));
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed during upgrade");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in [&b"hello through the tunnel"[..], b"and back again"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let b = backend("pool", 0.0).await;
    let proxy = Proxy::start(&round_robin_config(std::slice::from_ref(&b)));
    let client = http1_client();
    for i in 0..50 {
        let path = if i % 5 == 0 {
            "/sse?n=2&interval_ms=1"
        } else {
            "/pooled"
        };
        assert_eq!(get(&client, &proxy.url(path)).await.unwrap().status, 200);
    }
    // One pool per worker (2 here): sequential requests need at most one connection each.
    assert!(
        b.connections() <= 2,
        "50 sequential requests opened {} upstream connections",
        b.connections()
    );
    assert_eq!(b.served(), 50);
}

/// A listener restricted to one HTTP version refuses the other: an `http2` listener never
/// answers HTTP/1 (h2spec 3.5/2: an invalid preface ends the connection), an `http1` listener
/// never starts HTTP/2 on a prior-knowledge preface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_protocol_is_enforced() {
    let b = backend("proto", 0.0).await;
    let proxy = Proxy::start(&format!(
        r#"
[proxy]
workers = 1
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "h2"
listen = "127.0.0.1:0"
protocol = "http2"
[[listeners]]
name = "h1"
listen = "127.0.0.1:0"
protocol = "http1"
[clusters.backend]
endpoints = ["{}"]
[[routes]]
name = "all"
cluster = "backend"
"#,
        b.addr()
    ));
    let (h2, h1) = (proxy.listeners[0].1, proxy.listeners[1].1);
    let url = |a: std::net::SocketAddr| format!("http://{a}/v");

    // Each listener serves its own version.
    let (_, v) = upstream_version(&h2c_client(), &url(h2)).await;
    assert_eq!(v, http::Version::HTTP_2);
    let (_, v) = upstream_version(&http1_client(), &url(h1)).await;
    assert_eq!(v, http::Version::HTTP_11);

    // Read whatever the proxy sends until it closes.
    async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "connection left open after {bytes:?}");
        got
    }
    let got = exchange(h2, b"GET /v HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        !got.starts_with(b"HTTP/1"),
        "http2 listener answered HTTP/1: {:?}",
        String::from_utf8_lossy(&got)
    );
    let got = exchange(h2, b"INVALID CONNECTION PREFACE\r\n\r\n").await;
    assert!(!got.starts_with(b"HTTP/1"));
    let got = exchange(h1, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await;
    assert!(got.is_empty(), "http1 listener spoke HTTP/2: {got:?}");
}

/// `curl --http2 http://...` offers `Upgrade: h2c`. The upgrade is to HTTP/2 with this hop,
/// so it must never reach the upstream (which would switch protocols under the proxy): the
/// offer is dropped and the request answered in HTTP/1.1, as RFC 9113 lets a server do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_offer_is_answered_in_http1_not_relayed() {
    let b = backend("h2c", 0.0).await;
    let proxy = Proxy::start(&round_robin_config(&[b]));
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /h2c HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/7.88.1\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("the proxy closes after Connection: close")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    // Chunked or not, the demo upstream's JSON object is the body's only content.
    let body = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let echoed: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let headers = echoed["headers"].as_object().unwrap();
    for h in ["upgrade", "http2-settings", "connection"] {
        assert!(
            !headers.contains_key(h),
            "{h} reached the upstream: {echoed}"
        );
    }
    assert_eq!(echoed["version"], "HTTP/1.1");
}

/// Offered together with another protocol, `h2c` is taken out and the other one relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_is_taken_out_of_a_mixed_upgrade_offer() {
    let b = backend("mixed", 0.0).await;
    let proxy = Proxy::start(&round_robin_config(&[b]));
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c, echo\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "connection closed during upgrade");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // The demo upstream echoes the Upgrade value it received.
    let upgrade = head
        .lines()
        .find_map(|l| l.strip_prefix("upgrade: "))
        .unwrap_or_default();
    assert_eq!(upgrade.trim(), "echo", "{head}");
}

/// HTTP/2 streams the client cancels while the upstream is still working are the client's
/// doing: counted as 499 (4xx), never as 5xx, and nothing is held against the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_http2_streams_are_not_5xx() {
    let slow = backend("slow", 400.0).await;
    let proxy = Proxy::start(&round_robin_config(&[slow]));
    let client = h2c_client();
    // One whole request first, so the connection is up before the cancelled ones (a slow
    // handshake must not make a request that never arrived look cancelled).
    assert_eq!(get(&client, &proxy.url("/warm")).await.unwrap().status, 200);
    for _ in 0..10 {
        let r =
            tokio::time::timeout(Duration::from_millis(150), get(&client, &proxy.url("/c"))).await;
        assert!(
            r.is_err(),
            "the request should still be running when cancelled"
        );
    }
    let counted = eventually(Duration::from_secs(10), || async {
        let m = proxy.metrics().await;
        sum_samples(
            &m,
            "vivremotion_proxy_requests_total",
            &["code_class=\"4xx\""],
        ) >= 10.0
    })
    .await;
    let m = proxy.metrics().await;
    assert!(counted, "cancelled streams not counted as 4xx:\n{m}");
    assert_nothing_against_upstreams(&m);
    let up = get(&http1_client(), &proxy.admin_url("/api/v1/upstreams"))
        .await
        .unwrap()
        .json();
    assert_eq!(up["endpoints"][0]["consecutive_failures"], 0, "{up}");
}
