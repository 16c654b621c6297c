//! The HTTP/1.1 fast path and the hyper pipeline must be indistinguishable to upstreams and
//! clients: same forwarded fields, same hop-by-hop removal, same rewrites, same framing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use common::*;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// A raw upstream: records each request head and answers `reply` (one per connection read).
async fn recording_upstream(reply: &'static [u8]) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    let n = match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&tmp[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            break;
                        }
                        let body =
                            String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                        buf.drain(..end + 4 + len);
                        tx.send(format!("{head}\r\n\r\n{body}")).unwrap();
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Fields of a head, names lowercased, sorted; the traceparent's span id (random per hop)
/// masked.
fn normalized(head: &str) -> (String, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap().to_string();
    let mut fields: Vec<(String, String)> = lines
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            let n = n.trim().to_ascii_lowercase();
            let mut v = v.trim().to_string();
            if n == "traceparent" {
                v.replace_range(36..52, "<span>");
            }
            (n, v)
        })
        .collect();
    fields.sort();
    (first, fields)
}

async fn exchange(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_and_hyper_path_forward_identically() {
    let _s = serial().await;
    let (up, mut seen) = recording_upstream(
        b"HTTP/1.1 201 Created\r\nConnection: keep-alive, x-hop\r\nKeep-Alive: timeout=5\r\nX-Hop: secret\r\nX-Up: 1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Request-Id: forged\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let proxy = Proxy::start(&format!(
        r#"
[proxy]
workers = 1
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
[clusters.c]
endpoints = ["{up}"]
[[routes]]
name = "api"
cluster = "c"
match = {{ path_prefix = "/api" }}
rewrite = {{ path_prefix = "/v2", host = "internal.example" }}
request_headers = {{ set = {{ "x-env" = "prod" }}, add = {{ "x-added" = "1" }}, remove = ["x-secret"] }}
response_headers = {{ set = {{ "x-served-by" = "vivremotion" }}, remove = ["x-up"] }}
"#
    ));
    let common = "Host: shop.example:8080\r\nX-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\nX-Request-Id: req-123\r\nTraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nX-Secret: s\r\nX-Env: dev\r\nAccept: */*\r\nAccept: text/plain\r\nProxy-Authorization: basic x\r\nKeep-Alive: timeout=9\r\nContent-Length: 5\r\n";
    // Fast path: only tokens that name no field in Connection.
    let fast = format!(
        "POST /api/items?x=1 HTTP/1.1\r\n{common}Connection: keep-alive, close\r\n\r\nabcde"
    );
    // The same request, plus a field named by Connection: the fast path hands it to hyper,
    // which must strip that field and produce the same upstream request otherwise.
    let slow = format!("POST /api/items?x=1 HTTP/1.1\r\n{common}Connection: keep-alive, x-drop, close\r\nX-Drop: 1\r\n\r\nabcde");

    let fast_reply = exchange(proxy.addr, fast.as_bytes()).await;
    let fast_seen = seen.recv().await.unwrap();
    let slow_reply = exchange(proxy.addr, slow.as_bytes()).await;
    let slow_seen = seen.recv().await.unwrap();

    let (fl, ff) = normalized(&fast_seen);
    let (sl, sf) = normalized(&slow_seen);
    assert_eq!(fl, "POST /v2/items?x=1 HTTP/1.1");
    assert_eq!(fl, sl);
    assert_eq!(ff, sf, "\nfast: {fast_seen}\nslow: {slow_seen}");
    assert!(fast_seen.ends_with("abcde"), "{fast_seen}");
    assert!(slow_seen.ends_with("abcde"), "{slow_seen}");
    let get = |f: &[(String, String)], n: &str| -> Vec<String> {
        f.iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(get(&ff, "host"), ["internal.example"]);
    assert_eq!(get(&ff, "x-forwarded-for"), ["10.0.0.1, 127.0.0.1"]);
    assert_eq!(get(&ff, "x-forwarded-proto"), ["http"]);
    assert_eq!(
        get(&ff, "forwarded"),
        ["for=10.0.0.1, for=127.0.0.1;proto=http;host=\"shop.example:8080\""]
    );
    assert_eq!(get(&ff, "x-request-id"), ["req-123"]);
    assert_eq!(
        get(&ff, "traceparent"),
        ["00-0af7651916cd43dd8448eb211c80319c-<span>-01"]
    );
    assert_eq!(get(&ff, "x-env"), ["prod"]);
    assert_eq!(get(&ff, "x-added"), ["1"]);
    assert_eq!(get(&ff, "accept"), ["*/*", "text/plain"]);
    for gone in [
        "x-secret",
        "proxy-authorization",
        "keep-alive",
        "connection",
        "x-drop",
    ] {
        assert!(
            get(&ff, gone).is_empty(),
            "{gone} was forwarded: {fast_seen}"
        );
    }

    // Responses: same status, same fields (hop-by-hop gone, rewrites applied), same body.
    let (frl, frf) = normalized(&fast_reply);
    let (srl, srf) = normalized(&slow_reply);
    assert_eq!(frl, "HTTP/1.1 201 Created");
    assert_eq!(frl, srl);
    let drop_date = |f: Vec<(String, String)>| -> Vec<(String, String)> {
        f.into_iter().filter(|(k, _)| k != "date").collect()
    };
    assert_eq!(
        drop_date(frf.clone()),
        drop_date(srf),
        "\nfast: {fast_reply}\nslow: {slow_reply}"
    );
    assert_eq!(get(&frf, "x-request-id"), ["req-123"]);
    assert_eq!(get(&frf, "x-served-by"), ["vivremotion"]);
    assert_eq!(get(&frf, "set-cookie"), ["a=1", "b=2"]);
    for gone in ["x-hop", "keep-alive", "x-up"] {
        assert!(
            get(&frf, gone).is_empty(),
            "{gone} reached the client: {fast_reply}"
        );
    }
    assert!(
        fast_reply.ends_with("5\r\nhello\r\n0\r\n\r\n"),
        "{fast_reply}"
    );
    assert!(
        slow_reply.ends_with("5\r\nhello\r\n0\r\n\r\n"),
        "{slow_reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pipelining_and_large_bodies_on_the_fast_path() {
    let _s = serial().await;
    let b = backend("echo", 0.0).await;
    let proxy = Proxy::start(&round_robin_config(&[b]));
    // Three pipelined requests on one connection, the middle one with a 1 MiB body that
    // arrives in pieces; the last asks to close.
    let big = vec![b'z'; 1 << 20];
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut out = Vec::new();
    out.extend_from_slice(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    out.extend_from_slice(
        format!(
            "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    );
    s.write_all(&out).await.unwrap();
    for piece in big.chunks(100_000) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    s.write_all(b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_end(&mut reply),
    )
    .await
    .expect("the proxy closes after Connection: close")
    .unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
    assert!(text.contains("connection: close"), "{text}");
    // The demo upstream reports the body size it received.
    assert!(
        text.contains(&format!("\"body_bytes\":{}", big.len())),
        "{text}"
    );
}

/// The same requests (retried after a 503, and queued for the route's one concurrency slot)
/// through the fast path and through the hyper path: the same statuses, and the same counts
/// in /metrics and telemetry, because both paths drive the same `RequestFlow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_decide_and_count_alike() {
    let failing = {
        let s = vivremotion_proxy::demo::DemoSettings {
            error_rate: 1.0,
            ..vivremotion_proxy::demo::DemoSettings::with_latency(0.0, 0.0)
        };
        let u =
            vivremotion_proxy::demo::DemoUpstream::new("a", "127.0.0.1:0".parse().unwrap(), s, 1);
        u.start().await.unwrap();
        u
    };
    let good = backend("b", 30.0).await;
    let config = simple_config(
        &endpoints_toml(&[failing, good], None),
        "round_robin",
        "",
        "",
    )
    .replace("workers = 2", "workers = 1")
    .replace(
        "cluster = \"backend\"\n",
        "cluster = \"backend\"\nretry = { retries = 1, on = [\"503\"], backoff_base = \"5ms\", backoff_max = \"5ms\" }\n\
         concurrency = { limit = 1, queue = 16, max_wait = \"10s\" }\n",
    );
    let fast = Proxy::start(&config);
    let hyper = Proxy::start(&config);
    // A field named by Connection sends a request to the hyper path.
    let plain = b"GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".as_slice();
    let forced = b"GET /d HTTP/1.1\r\nHost: x\r\nConnection: close, x-force\r\nX-Force: 1\r\n\r\n"
        .as_slice();
    let mut statuses = Vec::new();
    for (proxy, req) in [(&fast, plain), (&hyper, forced)] {
        let addr = proxy.addr;
        let tasks: Vec<_> = (0..8)
            .map(|_| tokio::spawn(async move { exchange(addr, req).await }))
            .collect();
        let mut got = Vec::new();
        for t in tasks {
            let reply = t.await.unwrap();
            got.push(reply.split_whitespace().nth(1).unwrap_or("").to_string());
        }
        got.sort();
        statuses.push(got);
    }
    assert_eq!(statuses[0], statuses[1]);
    assert!(statuses[0].iter().all(|s| s == "200"), "{statuses:?}");

    let families = [
        "vivremotion_proxy_requests_total",
        "vivremotion_proxy_upstream_tries_total",
        "vivremotion_proxy_retries_total",
        "vivremotion_proxy_admission_total",
        "vivremotion_proxy_upstream_errors_total",
    ];
    let counts = |m: &str| -> Vec<String> {
        let mut v: Vec<String> = m
            .lines()
            .filter(|l| families.iter().any(|f| l.starts_with(&format!("{f}{{"))))
            // Endpoint addresses are the same in both; nothing else differs.
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    let (mf, mh) = (fast.metrics().await, hyper.metrics().await);
    assert_eq!(counts(&mf), counts(&mh));
    assert!(
        sample(&mf, "vivremotion_proxy_retries_total{route=\"all\"") >= Some(1.0),
        "{mf}"
    );

    // Telemetry windows: the same totals per scope, and queueing seen on both.
    let totals = |p: &Proxy| {
        let p = p.admin_url("/api/v1/telemetry/batches");
        async move {
            let v = get(&http1_client(), &p).await.unwrap().json();
            let mut by: std::collections::BTreeMap<String, (u64, u64, u64)> = Default::default();
            for b in v["batches"].as_array().unwrap() {
                for w in b["windows"].as_array().unwrap() {
                    let k = w["scope"]["upstream"].as_str().unwrap_or("").to_string();
                    let e = by.entry(k).or_default();
                    e.0 += w["requests"].as_u64().unwrap();
                    e.1 += w["status"]["success"].as_u64().unwrap();
                    e.2 += w["queue_wait"]["count"].as_u64().unwrap();
                }
            }
            by
        }
    };
    let done = eventually(std::time::Duration::from_secs(10), || async {
        let (f, h) = (totals(&fast).await, totals(&hyper).await);
        f.get("").map(|t| t.0) == Some(8) && h.get("").map(|t| t.0) == Some(8)
    })
    .await;
    let (tf, th) = (totals(&fast).await, totals(&hyper).await);
    assert!(done, "telemetry never showed all 8 requests: {tf:?} {th:?}");
    assert_eq!(
        tf.iter()
            .map(|(k, t)| (k.clone(), t.0, t.1))
            .collect::<Vec<_>>(),
        th.iter()
            .map(|(k, t)| (k.clone(), t.0, t.1))
            .collect::<Vec<_>>()
    );
    assert!(
        tf[""].2 >= 1 && th[""].2 >= 1,
        "no request waited: {tf:?} {th:?}"
    );
}
