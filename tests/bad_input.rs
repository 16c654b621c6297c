//! Bad input gets a clear answer and the proxy keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Send raw bytes, return the status code and the whole reply.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn error_type(reply: &str) -> String {
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("error body not JSON ({e}): {reply}"));
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{reply}"
    );
    v["error"]["type"].as_str().unwrap().to_string()
}

async fn assert_still_serving(proxy: &Proxy) {
    let rep = get(&http1_client(), &proxy.url("/ok")).await.unwrap();
    assert_eq!(rep.status, 200, "proxy stopped serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_status_and_the_proxy_keeps_serving() {
    let good = backend("good", 0.0).await;
    let slow = backend("slow", 2_000.0).await;
    // A port nobody listens on: bound (so no other test's listener can take it) but never
    // listening, so connecting is refused.
    let closed_socket = tokio::net::TcpSocket::new_v4().unwrap();
    closed_socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = closed_socket.local_addr().unwrap();
    // An upstream that reads the request and hangs up without answering.
    let rude = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rude_addr = rude.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            if let Ok((mut s, _)) = rude.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s.set_zero_linger();
                    drop(s);
                });
            }
        }
    });
    let config = format!(
        r#"
[proxy]
workers = 2
max_header_bytes = 8192
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
[clusters.good]
endpoints = ["{}"]
[clusters.slow]
endpoints = ["{}"]
[clusters.closed]
endpoints = ["{closed}"]
[clusters.rude]
endpoints = ["{rude_addr}"]
[[routes]]
name = "small"
cluster = "good"
match = {{ path_prefix = "/small" }}
max_body_bytes = 1000
[[routes]]
name = "slow"
cluster = "slow"
match = {{ path_prefix = "/slow" }}
timeout = "300ms"
[[routes]]
name = "closed"
cluster = "closed"
match = {{ path_prefix = "/closed" }}
[[routes]]
name = "rude"
cluster = "rude"
match = {{ path_prefix = "/rude" }}
[[routes]]
name = "ok"
cluster = "good"
match = {{ path_prefix = "/ok" }}
"#,
        good.addr(),
        slow.addr()
    );
    let proxy = Proxy::start(&config);
    let a = proxy.addr;

    // malformed request line: hyper's parser answers 400 (with an empty body)
    let (st, reply) = raw(a, b"GARBAGE\r\n\r\n").await;
    assert_eq!(st, 400, "{reply}");
    let (st, _) = raw(a, b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n").await;
    assert_eq!(st, 400);
    assert_still_serving(&proxy).await;

    // header section above max_header_bytes: 431 with a JSON body
    let big = format!(
        "GET /ok HTTP/1.1\r\nHost: x\r\nx-big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(10_000)
    );
    let (st, reply) = raw(a, big.as_bytes()).await;
    assert_eq!(st, 431, "{reply}");
    assert_eq!(error_type(&reply), "headers_too_large");
    // far above hyper's own buffer: still 431
    let huge = format!(
        "GET /ok HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let (st, _) = raw(a, huge.as_bytes()).await;
    assert_eq!(st, 431);
    assert_still_serving(&proxy).await;

    // body over the route's limit, declared and chunked
    let (st, reply) = raw(
        a,
        b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(st, 413, "{reply}");
    assert_eq!(error_type(&reply), "body_too_large");
    let chunk = format!("{:x}\r\n{}\r\n", 3000, "b".repeat(3000));
    let chunked = format!("POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}0\r\n\r\n");
    let (st, reply) = raw(a, chunked.as_bytes()).await;
    assert_eq!(st, 413, "{reply}");
    assert_eq!(error_type(&reply), "body_too_large");
    // under the limit passes
    let rep = post_json(
        &http1_client(),
        &proxy.url("/small"),
        "{\"fits\":true}",
        "POST",
    )
    .await;
    assert_eq!(rep.status, 200);

    // no route
    let (st, reply) = raw(
        a,
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(st, 404, "{reply}");
    assert_eq!(error_type(&reply), "no_route");

    // upstream refused, reset, timed out
    let (st, reply) = raw(
        a,
        b"GET /closed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(st, 502, "{reply}");
    assert_eq!(error_type(&reply), "upstream_connect_error");
    let (st, reply) = raw(
        a,
        b"GET /rude HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(st, 502, "{reply}");
    assert_eq!(error_type(&reply), "upstream_reset");
    let (st, reply) = raw(
        a,
        b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(st, 504, "{reply}");
    assert_eq!(error_type(&reply), "upstream_timeout");
    assert!(
        reply.to_lowercase().contains("x-request-id:"),
        "errors carry the request id: {reply}"
    );

    // CONNECT is refused clearly
    let (st, reply) = raw(
        a,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(st, 400, "{reply}");

    assert_still_serving(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_never_take_the_proxy_down() {
    let good = backend("good", 0.0).await;
    let proxy = Proxy::start(&round_robin_config(&[good]));
    // Deterministic junk: a small xorshift, mixed with fragments of real requests.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let fragments: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\n",
        b"Host: a\r\n",
        b"\r\n",
        b"Content-Length: 99999999999999999999\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ];
    for i in 0..200 {
        let mut bytes = Vec::new();
        for _ in 0..(i % 7 + 1) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 3 == 0 {
                bytes.extend_from_slice(fragments[(x % 6) as usize]);
            } else {
                bytes.extend((0..(x % 64)).map(|k| (x >> (k % 56)) as u8));
            }
        }
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(200), s.read_to_end(&mut sink)).await;
    }
    assert_still_serving(&proxy).await;
    let metrics = get(&http1_client(), &proxy.admin_url("/healthz"))
        .await
        .unwrap();
    assert_eq!(metrics.status, 200);
}

fn upstream_state(v: &serde_json::Value) -> serde_json::Value {
    v["endpoints"]
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_default()
}

/// A client that breaks its own requests (an invalid chunk size, twenty times) gets 400 each
/// time, and none of it is counted against the healthy upstream: its breaker stays closed and
/// untripped, it is never ejected, its latency estimate does not jump, no upstream error is
/// counted, and other clients are served as before. HTTP/1.1 framing errors of RFC 9112 get
/// 400 too: differing Content-Length values, and a Host field missing or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_broken_requests_are_its_own_fault() {
    let good = backend("good", 0.0).await;
    let config = simple_config(
        &endpoints_toml(&[good], None),
        "round_robin",
        "[clusters.backend.breaker]\nconsecutive_failures = 3\n\
         [clusters.backend.outlier]\nconsecutive_gateway_errors = 3",
        "",
    );
    let proxy = Proxy::start(&config);
    let client = http1_client();
    assert_eq!(get(&client, &proxy.url("/warm")).await.unwrap().status, 200);
    let before = upstream_state(
        &get(&client, &proxy.admin_url("/api/v1/upstreams"))
            .await
            .unwrap()
            .json(),
    );
    let ewma_before = before["ewma_ms"].as_f64().unwrap();

    for i in 0..20 {
        let (st, reply) = raw(
            proxy.addr,
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(st, 400, "broken POST {i}: {reply}");
        assert_eq!(error_type(&reply), "bad_request");
    }
    let after = upstream_state(
        &get(&client, &proxy.admin_url("/api/v1/upstreams"))
            .await
            .unwrap()
            .json(),
    );
    assert_eq!(after["available"], true, "{after}");
    assert_eq!(after["consecutive_failures"], 0, "{after}");
    assert_eq!(after["breaker"]["state"], "closed", "{after}");
    assert_eq!(after["breaker"]["trips"], 0, "{after}");
    assert_eq!(after["ejection"]["times_ejected"], 0, "{after}");
    // A failure recorded against it would have raised the estimate to the route's timeout;
    // without samples it only decays.
    let ewma_after = after["ewma_ms"].as_f64().unwrap();
    assert!(
        ewma_after <= ewma_before,
        "EWMA rose from {ewma_before} to {ewma_after} ms"
    );
    let m = proxy.metrics().await;
    assert_nothing_against_upstreams(&m);
    // Another client is served.
    assert_eq!(
        get(&http1_client(), &proxy.url("/other"))
            .await
            .unwrap()
            .status,
        200
    );

    // RFC 9112 framing: every one of these is refused with 400.
    let cases: [&[u8]; 5] = [
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!",
        b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\nConnection: close\r\n\r\n",
    ];
    for case in cases {
        let (st, reply) = raw(proxy.addr, case).await;
        assert_eq!(st, 400, "{}\n→ {reply}", String::from_utf8_lossy(case));
    }
    // HTTP/1.0 may leave Host out.
    let (st, reply) = raw(proxy.addr, b"GET /a HTTP/1.0\r\n\r\n").await;
    assert_eq!(st, 200, "{reply}");
    assert_still_serving(&proxy).await;
}

/// A client that starts a head and stalls gets 408 when `header_read_timeout` runs out, and
/// then the connection closes; an idle keep-alive connection is simply closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_head_gets_408() {
    let good = backend("good", 0.0).await;
    let config = base_config(1).replace(
        "workers = 1\n",
        "workers = 1\nheader_read_timeout = \"300ms\"\n",
    ) + &format!(
        "[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n",
        good.addr()
    );
    let proxy = Proxy::start(&config);
    let started = std::time::Instant::now();
    let (st, reply) = raw(proxy.addr, b"GET /slowloris HTTP/1.1\r\nHost: x\r\nX-Half").await;
    assert_eq!(st, 408, "{reply}");
    assert_eq!(error_type(&reply), "request_timeout");
    assert!(
        reply.to_lowercase().contains("connection: close"),
        "{reply}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Nothing sent at all: closed without an answer.
    let (st, reply) = raw(proxy.addr, b"").await;
    assert_eq!((st, reply.as_str()), (0, ""));
    assert_still_serving(&proxy).await;
}
