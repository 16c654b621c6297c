//! Admission control end to end: rate limits (local, and global through a real
//! `redis-server` shared by two proxy processes), priority shedding under overload.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use std::time::{Duration, Instant};

/// Sum of the samples of a metric family whose labels contain every `want` pair.
async fn metric(client: &HttpClient, proxy: &Proxy, name: &str, want: &[&str]) -> f64 {
    let text = get(client, &proxy.admin_url("/metrics")).await.unwrap();
    sum_samples(&String::from_utf8_lossy(&text.body), name, want)
}

fn with_key(url: &str, key: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(url)
        .header("x-api-key", key)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_rate_limit_answers_429_with_ratelimit_fields() {
    // Its proxy's start-up would share the cores with the overload test's latency figures.
    let _serial = serial().await;
    let b = backend("b", 0.0).await;
    let cfg = round_robin_config(&[b])
        + r#"rate_limits = [{ name = "per-key", key = ["header:x-api-key"], rate = 2.0, burst = 3 }]
"#;
    let proxy = Proxy::start(&cfg);
    for (client, path) in [(http1_client(), "fast path"), (h2c_client(), "hyper path")] {
        let key = format!("key-{path}");
        let mut statuses = Vec::new();
        let mut refused = None;
        for _ in 0..8 {
            let r = send(&client, with_key(&proxy.url("/x"), &key))
                .await
                .unwrap();
            statuses.push(r.status);
            if r.status == 429 {
                refused = Some(r);
            }
        }
        assert_eq!(statuses[..3], [200, 200, 200], "{path}: {statuses:?}");
        assert!(
            statuses[3..].iter().all(|&s| s == 429),
            "{path}: {statuses:?}"
        );
        let r = refused.unwrap();
        assert_eq!(r.json()["error"]["type"], "rate_limited", "{path}");
        let h = |n: &str| r.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(h("retry-after").as_deref(), Some("1"), "{path}");
        assert_eq!(
            h("ratelimit-policy").as_deref(),
            Some("\"per-key\";q=2;w=1"),
            "{path}"
        );
        let state = h("ratelimit").unwrap();
        assert!(state.starts_with("\"per-key\";r=0;t="), "{path}: {state}");
        assert!(h("x-request-id").is_some());
        // Another key has its own bucket.
        let other = send(&client, with_key(&proxy.url("/x"), &format!("{key}-2")))
            .await
            .unwrap();
        assert_eq!(other.status, 200, "{path}");
    }
    // Refusals keep a keep-alive connection usable: a HEAD gets no body, a request body is
    // read and dropped. One pooled connection carries all of these in turn.
    let client = http1_client();
    for i in 0..5 {
        let method = if i % 2 == 0 { "HEAD" } else { "POST" };
        let req = http::Request::builder()
            .method(method)
            .uri(proxy.url("/x"))
            .header("x-api-key", "conn")
            .body(Full::new(Bytes::from_static(b"a small body")))
            .unwrap();
        let r = send(&client, req).await.unwrap();
        assert_eq!(r.status, if i < 3 { 200 } else { 429 }, "{method} #{i}");
        if method == "HEAD" {
            assert!(r.body.is_empty());
        }
    }
    let r = send(&client, with_key(&proxy.url("/x"), "conn-2"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    let admin = http1_client();
    let limited = metric(
        &admin,
        &proxy,
        "vivremotion_proxy_admission_total",
        &["outcome=\"limited\"", "priority=\"default\""],
    )
    .await;
    assert_eq!(limited, 12.0);

    // The brain can change the limit by name; a policy naming a limit the route does not
    // have is refused whole, with the field path.
    let policy = |version: u64, limit: &str| {
        format!(
            r#"{{"schema_version":1,"version":{version},"issued_at_ms":0,"issuer":"test",
            "routes":{{"all":{{"rate_limits":{{"{limit}":{{"requests_per_second":1000.0,"burst":100}}}}}}}}}}"#
        )
    };
    let bad = post_json(
        &admin,
        &proxy.admin_url("/api/v1/policy"),
        &policy(1, "nope"),
        "PUT",
    )
    .await;
    assert_eq!(bad.status, 422, "{}", String::from_utf8_lossy(&bad.body));
    assert!(String::from_utf8_lossy(&bad.body).contains("routes.all.rate_limits.nope"));
    let good = post_json(
        &admin,
        &proxy.admin_url("/api/v1/policy"),
        &policy(2, "per-key"),
        "PUT",
    )
    .await;
    assert_eq!(good.status, 200, "{}", String::from_utf8_lossy(&good.body));
    let r = send(&client, with_key(&proxy.url("/x"), "conn"))
        .await
        .unwrap();
    assert_eq!(
        r.status,
        200,
        "the policy's higher limit applies: {:?} {}",
        r.headers,
        String::from_utf8_lossy(&r.body)
    );
    let limits = get(&admin, &proxy.admin_url("/api/v1/limits"))
        .await
        .unwrap()
        .json();
    let rl = &limits["routes"][0]["rate_limits"][0];
    assert_eq!(rl["name"], "per-key");
    assert_eq!(rl["rate"], 1000.0);
    assert_eq!(rl["from_policy"], true);
    assert_eq!(rl["ratelimit_policy"], "\"per-key\";q=1000;w=1");
    assert_eq!(rl["keys"], 6);
}

fn global_config(backend: &str, redis: &str) -> String {
    simple_config(
        backend,
        "round_robin",
        "",
        &format!(
            r#"
[global_limits]
redis_url = "{redis}"
"#
        ),
    ) + r#"rate_limits = [{ name = "shared", rate = 1000.0, burst = 50, global = true, local_share = 0.3 }]
"#
}

/// Two proxies, one global limit of 1000/s on one key, each offered 1500/s:
/// - with Redis up they admit 1000/s together (±5 % over 10 s);
/// - Redis killed: both keep serving at their local share (0.3 × 1000/s each), no panics, and
///   `rate_limit_store_up` says so;
/// - Redis back: within 2 s both lease again and the shared limit holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_is_shared_through_redis_and_survives_its_outage() {
    let _serial = serial().await;
    let mut redis = RedisServer::start();
    let b = backend("b", 0.0).await;
    let cfg = global_config(&endpoints_toml(&[b], None), &redis.url());
    let proxies = [Proxy::start(&cfg), Proxy::start(&cfg)];
    let admin = http1_client();

    // Watch both proxies' store gauge every 50 ms, with timestamps.
    let t0 = Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, admin) = (stop.clone(), admin.clone());
        let urls: Vec<_> = proxies.iter().map(|p| p.admin_url("/metrics")).collect();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut up = Vec::new();
                for u in &urls {
                    let text = get(&admin, u).await.map(|r| r.body).unwrap_or_default();
                    let text = String::from_utf8_lossy(&text).into_owned();
                    up.push(text.lines().any(|l| {
                        l.starts_with("vivremotion_proxy_rate_limit_store_up{") && l.ends_with(" 1")
                    }));
                }
                seen.push((t0.elapsed(), up));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    };

    const RATE: f64 = 1500.0;
    let total = Duration::from_secs(18);
    let kill_at = Duration::from_secs(10);
    let restart_at = Duration::from_secs(14);
    let mut restarted_at = None;
    let (a, b) = {
        let load_a = paced(http1_client(), proxies[0].url("/x"), RATE, total, |_| {});
        let redis = &mut redis;
        let restarted = &mut restarted_at;
        let load_b = paced(
            http1_client(),
            proxies[1].url("/x"),
            RATE,
            total,
            move |t| {
                if t >= kill_at && t < restart_at {
                    redis.kill();
                }
                if t >= restart_at && restarted.is_none() {
                    redis.restart();
                    *restarted = Some(t0.elapsed());
                }
            },
        );
        tokio::join!(load_a, load_b)
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.await.unwrap();
    let restarted_at = restarted_at.expect("redis restarted");

    let all: Vec<&Shot> = a.iter().chain(b.iter()).collect();
    let errors: Vec<_> = all
        .iter()
        .filter(|s| s.status != 200 && s.status != 429)
        .take(5)
        .collect();
    assert!(errors.is_empty(), "only 200 and 429 expected: {errors:?}");
    let admitted = |from: f64, to: f64| {
        all.iter()
            .filter(|s| s.status == 200 && (from..to).contains(&s.at.as_secs_f64()))
            .count() as f64
    };
    let offered = all.iter().filter(|s| s.at < kill_at).count();
    let shared = admitted(0.0, 10.0);
    println!("redis up, 0-10 s: offered {offered}, admitted {shared} (limit 10000)");
    assert!(offered > 25_000, "load generator too slow: {offered}");
    assert!(
        (shared - 10_000.0).abs() <= 500.0,
        "admitted {shared}, want 10000 ± 5 %"
    );

    let down = admitted(11.0, 14.0) / 3.0;
    println!("redis down, 11-14 s: {down:.0}/s admitted (local share 2 × 300/s)");
    assert!(
        (450.0..=750.0).contains(&down),
        "fallback share: {down:.0}/s, want ~600/s"
    );
    // Both noticed the outage.
    assert!(
        seen.iter()
            .any(|(t, up)| *t > kill_at + Duration::from_secs(1)
                && *t < restart_at
                && up.iter().all(|u| !u)),
        "store_up never went to 0 on both: {seen:?}"
    );
    // And the recovery, within 2 s of the restart.
    let back = seen
        .iter()
        .find(|(t, up)| *t > restarted_at && up.iter().all(|u| *u))
        .map(|(t, _)| *t - restarted_at);
    println!("redis restarted at {restarted_at:?}; both proxies leasing again after {back:?}");
    assert!(
        back.is_some_and(|d| d <= Duration::from_secs(2)),
        "recovery took {back:?}"
    );
    let after = admitted(restart_at.as_secs_f64() + 2.0, 18.0) / 2.0;
    println!("redis back, 16-18 s: {after:.0}/s admitted");
    assert!(
        (900.0..=1100.0).contains(&after),
        "after recovery: {after:.0}/s, want ~1000/s"
    );
    for p in &proxies {
        let errors = metric(
            &admin,
            p,
            "vivremotion_proxy_rate_limit_store_errors_total",
            &[],
        )
        .await;
        assert!(errors > 0.0, "store errors are counted");
        assert!(!p.log().contains("panicked"), "{}", p.log());
    }
}

/// A route whose upstream can serve 10 requests at once (20 ms each: 500/s) is offered three
/// times that, 20 % critical, 60 % default, 20 % sheddable. With the concurrency limit and
/// shedding, critical keeps ≥ 99 % success with p99 under twice the unloaded p99, and
/// sheddable goes first. Without them (for comparison), everyone waits in the upstream's line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overload_critical_keeps_its_goodput() {
    let _serial = serial().await;
    let up = UpstreamProcess::start_with("capped", 20.0, &["--max-concurrent", "10"]);
    let endpoints = format!("[\"{}\"]", up.addr);
    let shedding = r#"concurrency = { limit = 10, queue = 32, max_wait = "50ms" }
"#;
    let base = |extra: &str| {
        simple_config(&endpoints, "round_robin", "", "").replace(
            "[proxy]\n",
            "[proxy]\ntrusted_priority_from = [\"127.0.0.1\"]\n",
        ) + "timeout = \"2s\"\nretry = { retries = 0 }\n"
            + extra
    };
    let class = |n: u64| match n % 10 {
        0 | 5 => "critical",
        1 | 3 | 4 | 6 | 7 | 9 => "default",
        _ => "sheddable",
    };
    let run = |proxy: &Proxy, rate: f64, secs: u64, only: Option<&'static str>| {
        let url = proxy.url("/x");
        paced_with(
            http1_client(),
            rate,
            Duration::from_secs(secs),
            move |n| {
                http::Request::get(&url)
                    .header("x-priority", only.unwrap_or(class(n)))
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            },
            |_| {},
        )
    };
    let summary = |shots: &[Shot], c: &str| {
        let mine: Vec<&Shot> = shots
            .iter()
            .filter(|s| class(s.n) == c && s.at >= Duration::from_secs(1))
            .collect();
        let ok: Vec<Duration> = mine
            .iter()
            .filter(|s| s.status == 200)
            .map(|s| s.latency)
            .collect();
        let success = ok.len() as f64 / mine.len().max(1) as f64;
        (success, quantile(ok, 0.99), mine.len())
    };

    let proxy = Proxy::start(&base(shedding));
    let unloaded = run(&proxy, 150.0, 3, Some("critical")).await;
    let lat: Vec<Duration> = unloaded
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.latency)
        .collect();
    assert_eq!(lat.len(), unloaded.len(), "unloaded run had failures");
    let unloaded_p99 = quantile(lat, 0.99);

    let loaded = run(&proxy, 1500.0, 6, None).await;
    let (c_ok, c_p99, c_n) = summary(&loaded, "critical");
    let (d_ok, d_p99, _) = summary(&loaded, "default");
    let (s_ok, s_p99, _) = summary(&loaded, "sheddable");
    println!("unloaded critical p99 {unloaded_p99:?}");
    println!(
        "with shedding: critical {:.2} % ok p99 {c_p99:?} (n={c_n}); default {:.2} % p99 {d_p99:?}; sheddable {:.2} % p99 {s_p99:?}",
        c_ok * 100.0,
        d_ok * 100.0,
        s_ok * 100.0
    );
    let admin = http1_client();
    let shed_s = metric(
        &admin,
        &proxy,
        "vivremotion_proxy_admission_total",
        &["outcome=\"shed\"", "priority=\"sheddable\""],
    )
    .await;
    let shed_c = metric(
        &admin,
        &proxy,
        "vivremotion_proxy_admission_total",
        &["outcome=\"shed\"", "priority=\"critical\""],
    )
    .await;
    drop(proxy);

    let proxy = Proxy::start(&base(""));
    let unshed = run(&proxy, 1500.0, 6, None).await;
    let (uc_ok, uc_p99, _) = summary(&unshed, "critical");
    let (us_ok, _, _) = summary(&unshed, "sheddable");
    println!(
        "without shedding: critical {:.2} % ok p99 {uc_p99:?}; sheddable {:.2} % ok",
        uc_ok * 100.0,
        us_ok * 100.0
    );

    assert!(c_ok >= 0.99, "critical success {c_ok}");
    assert!(
        c_p99 < unloaded_p99 * 2,
        "critical p99 {c_p99:?} vs unloaded {unloaded_p99:?}"
    );
    assert!(
        s_ok < d_ok && d_ok < c_ok,
        "shed order: {s_ok} {d_ok} {c_ok}"
    );
    assert!(
        shed_s > shed_c * 10.0,
        "sheddable shed {shed_s}, critical {shed_c}"
    );
    assert!(
        uc_p99 > c_p99 * 2 || uc_ok < 0.9,
        "without shedding critical should suffer: {uc_ok} {uc_p99:?}"
    );
}
