//! Config reload and policy swaps under load, the admin API, `up`, draining, `check-config`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use common::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn reload_config(eps: &str, weights_note: &str, extra_route: &str) -> String {
    format!(
        r#"
# {weights_note}
[proxy]
workers = 2
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
[clusters.backend]
endpoints = {eps}
balancer = "round_robin"
{extra_route}
[[routes]]
name = "all"
cluster = "backend"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_under_load_drops_nothing() {
    let _s = serial().await;
    let bs = vec![
        backend("a", 1.0).await,
        backend("b", 1.0).await,
        backend("c", 1.0).await,
    ];
    let proxy = Proxy::start(&reload_config(
        &endpoints_toml(&bs, Some(&[1, 1, 1])),
        "v0",
        "",
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(
        http1_client(),
        proxy.url("/load"),
        16,
        u64::MAX,
        stop.clone(),
    ));
    let admin = http1_client();
    let upstreams_url = proxy.admin_url("/api/v1/upstreams");
    let weights = || {
        let (admin, url) = (admin.clone(), upstreams_url.clone());
        async move {
            let up = get(&admin, &url).await.unwrap().json();
            up["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["weight"].as_u64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert!(
        eventually(Duration::from_secs(10), || {
            let p = &proxy;
            async move {
                p.metrics().await.lines().any(|l| {
                    l.starts_with("vivremotion_proxy_requests_total{") && !l.ends_with(" 0")
                })
            }
        })
        .await,
        "the load never got through"
    );

    let weight_sets: [[u32; 3]; 4] = [[5, 1, 0], [0, 1, 5], [1, 0, 1], [3, 3, 3]];
    for (i, w) in weight_sets.iter().enumerate() {
        let extra = if i % 2 == 0 {
            "[[routes]]\nname = \"extra\"\ncluster = \"backend\"\nmatch = { path_prefix = \"/extra\" }\n".to_string()
        } else {
            String::new()
        };
        std::fs::write(
            &proxy.config_path,
            reload_config(
                &endpoints_toml(&bs, Some(w)),
                &format!("v{}", i + 1),
                &extra,
            ),
        )
        .unwrap();
        if i % 2 == 1 {
            proxy.signal("HUP");
        }
        // Reloaded (by the file watcher or SIGHUP) once the new weights are in force.
        let want: Vec<u64> = w.iter().map(|&x| u64::from(x)).collect();
        assert!(
            eventually(Duration::from_secs(10), || {
                let (weights, want) = (weights(), want.clone());
                async move { weights.await == want }
            })
            .await,
            "config {} was not applied; log:\n{}",
            i + 1,
            proxy.log()
        );
    }
    // An invalid file is rejected and the last good config keeps serving.
    std::fs::write(&proxy.config_path, "[clusters.backend]\nendpoints = []\n").unwrap();
    proxy.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || {
            let p = &proxy;
            async move { p.log().contains("config rejected") }
        })
        .await,
        "the invalid config was not rejected; log:\n{}",
        proxy.log()
    );
    stop.store(true, Ordering::Relaxed);
    let r = loader.await.unwrap();
    assert!(r.ok > 1000, "too little load to mean anything: {}", r.ok);
    assert_eq!(
        r.failed(),
        0,
        "failed during reloads: {:?} {:?}",
        r.non_2xx.first(),
        r.errors.first()
    );

    let log = proxy.log();
    assert!(log.matches("config reloaded").count() >= 4, "{log}");
    assert!(log.contains("config rejected"), "{log}");
    assert!(
        log.contains("clusters.backend.endpoints: a cluster needs at least one endpoint"),
        "{log}"
    );
    let metrics = get(&http1_client(), &proxy.admin_url("/metrics"))
        .await
        .unwrap();
    let m = String::from_utf8_lossy(&metrics.body);
    assert!(
        m.contains("vivremotion_proxy_config_reloads_total{result=\"rejected\"} 1"),
        "{m}"
    );
    // Last good config had equal weights and the /extra route removed.
    let up = get(&http1_client(), &proxy.admin_url("/api/v1/upstreams"))
        .await
        .unwrap()
        .json();
    for e in up["endpoints"].as_array().unwrap() {
        assert_eq!(e["weight"], 3);
    }
}

/// The one endpoint address in `/metrics` text.
fn proxy_backend_addr(metrics: &str) -> String {
    let l = metrics
        .lines()
        .find(|l| l.starts_with("vivremotion_proxy_upstream_weight{"))
        .unwrap_or_else(|| panic!("no upstream_weight in:\n{metrics}"));
    l.split("upstream=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

fn policy_json(version: u64, weights: &[(String, u32)]) -> String {
    let w: Vec<String> = weights
        .iter()
        .map(|(a, w)| format!("\"{a}\": {w}"))
        .collect();
    format!(
        r#"{{"schema_version":1,"version":{version},"issued_at_ms":0,"issuer":"test","routes":{{"all":{{"upstream_weights":{{{}}}}}}}}}"#,
        w.join(",")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_swaps_under_load_drop_nothing_and_take_effect() {
    let _s = serial().await;
    let bs = vec![backend("a", 1.0).await, backend("b", 1.0).await];
    let proxy = Proxy::start(&round_robin_config(&bs));
    let admin = http1_client();
    let policy_url = proxy.admin_url("/api/v1/policy");
    let (a, b) = (bs[0].addr().to_string(), bs[1].addr().to_string());

    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(
        http1_client(),
        proxy.url("/load"),
        16,
        u64::MAX,
        stop.clone(),
    ));
    for v in 1..=40u64 {
        let (wa, wb) = if v % 2 == 0 { (9, 1) } else { (1, 9) };
        let rep = post_json(
            &admin,
            &policy_url,
            &policy_json(v, &[(a.clone(), wa), (b.clone(), wb)]),
            "PUT",
        )
        .await;
        assert_eq!(rep.status, 200, "{}", String::from_utf8_lossy(&rep.body));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let r = loader.await.unwrap();
    assert!(r.ok > 500, "{}", r.ok);
    assert_eq!(
        r.failed(),
        0,
        "{:?} {:?}",
        r.non_2xx.first(),
        r.errors.first()
    );

    // Drain b through policy: all traffic goes to a.
    let rep = post_json(
        &admin,
        &policy_url,
        &policy_json(41, &[(b.clone(), 0)]), // partial map: a keeps its configured weight
        "PUT",
    )
    .await;
    assert_eq!(rep.status, 200);
    let before = (bs[0].served(), bs[1].served());
    let r = load(
        http1_client(),
        proxy.url("/after"),
        4,
        400,
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    assert_eq!(r.failed(), 0);
    assert_eq!(
        bs[1].served(),
        before.1,
        "weight-0 endpoint still got traffic"
    );
    assert_eq!(bs[0].served() - before.0, 400);

    let up = get(&admin, &proxy.admin_url("/api/v1/upstreams"))
        .await
        .unwrap()
        .json();
    assert_eq!(up["policy_version"], 41);
    let eb = up["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == b.as_str())
        .unwrap();
    assert_eq!(eb["route_weights"]["all"]["weight"], 0);
    assert_eq!(eb["route_weights"]["all"]["source"], "policy");

    // Stale, malformed and ill-fitting policies are rejected, counted, and change nothing.
    let stale = post_json(
        &admin,
        &policy_url,
        &policy_json(41, &[(a.clone(), 1)]),
        "PUT",
    )
    .await;
    assert_eq!(stale.status, 409);
    assert_eq!(stale.json()["error"]["type"], "policy_stale");
    let unknown = post_json(
        &admin,
        &policy_url,
        &policy_json(42, &[("10.9.9.9:1".into(), 1)]),
        "PUT",
    )
    .await;
    assert_eq!(unknown.status, 422);
    assert!(unknown.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("routes.all.upstream_weights.10.9.9.9:1"));
    let zero = post_json(
        &admin,
        &policy_url,
        &policy_json(42, &[(a.clone(), 0), (b.clone(), 0)]),
        "PUT",
    )
    .await;
    assert_eq!(zero.status, 422);
    let garbage = post_json(&admin, &policy_url, "{\"version\": \"two\"}", "PUT").await;
    assert_eq!(garbage.status, 400);
    assert!(
        garbage.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("version"),
        "{}",
        garbage.json()
    );
    let current = get(&admin, &policy_url).await.unwrap().json();
    assert_eq!(current["version"], 41);
    let metrics = String::from_utf8_lossy(
        &get(&admin, &proxy.admin_url("/metrics"))
            .await
            .unwrap()
            .body,
    )
    .into_owned();
    assert!(
        metrics.contains("vivremotion_proxy_policy_rejected_total{reason=\"stale\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("vivremotion_proxy_policy_rejected_total{reason=\"does_not_fit_config\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_reports_config_upstreams_telemetry_and_metrics() {
    let b = backend("a", 0.0).await;
    let proxy = Proxy::start(&simple_config(
        &endpoints_toml(&[b], None),
        "p2c_peak_ewma",
        "",
        "",
    ));
    let c = http1_client();
    // Before any traffic: every family has HELP and TYPE, and the series of known routes
    // and outcomes exist at 0.
    let fresh = proxy.metrics().await;
    promtool_check(&fresh);
    let b_addr = proxy_backend_addr(&fresh);
    for series in [
        format!("vivremotion_proxy_upstream_tries_total{{route=\"all\",cluster=\"backend\",upstream=\"{b_addr}\",code_class=\"2xx\"}}"),
        "vivremotion_proxy_requests_total{route=\"all\",cluster=\"backend\",upstream=\"\",code_class=\"2xx\"}".to_string(),
        format!("vivremotion_proxy_upstream_errors_total{{route=\"all\",cluster=\"backend\",upstream=\"{b_addr}\",kind=\"connect\"}}"),
        "vivremotion_proxy_admission_total{route=\"all\",cluster=\"backend\",upstream=\"\",priority=\"default\",outcome=\"admitted\"}".to_string(),
        "vivremotion_proxy_retries_total{route=\"all\",cluster=\"backend\",upstream=\"\"}".to_string(),
        "vivremotion_proxy_config_reloads_total{result=\"applied\"}".to_string(),
        "vivremotion_proxy_policy_rejected_total{reason=\"stale\"}".to_string(),
        "vivremotion_proxy_policy_version".to_string(),
    ] {
        assert_eq!(sample(&fresh, &format!("{series} ")), Some(0.0), "{series} missing:\n{fresh}");
    }
    for _ in 0..20 {
        assert_eq!(get(&c, &proxy.url("/t")).await.unwrap().status, 200);
    }
    promtool_check(&proxy.metrics().await);
    let head = send(
        &c,
        http::Request::head(proxy.admin_url("/metrics"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(
        get(&c, &proxy.admin_url("/healthz")).await.unwrap().status,
        200
    );
    assert_eq!(
        get(&c, &proxy.admin_url("/readyz")).await.unwrap().json()["status"],
        "ready"
    );
    let cfg = get(&c, &proxy.admin_url("/api/v1/config"))
        .await
        .unwrap()
        .json();
    assert_eq!(
        cfg["config"]["clusters"]["backend"]["balancer"],
        "p2c_peak_ewma"
    );

    // Telemetry windows appear once a tick (200 ms here) has passed.
    let telemetry_url = proxy.admin_url("/api/v1/telemetry?since=0");
    let found = eventually(Duration::from_secs(3), || {
        let (c, url) = (c.clone(), telemetry_url.clone());
        async move {
            let t = get(&c, &url).await.unwrap().json();
            let total: u64 = t["windows"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["scope"]["upstream"].is_string())
                .map(|w| w["requests"].as_u64().unwrap())
                .sum();
            total == 20
        }
    })
    .await;
    assert!(
        found,
        "the 20 requests never showed up in telemetry windows"
    );
    let t = get(&c, &telemetry_url).await.unwrap().json();
    let w = t["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["requests"].as_u64() > Some(0))
        .unwrap();
    assert_eq!(w["schema_version"], 1);
    assert!(w["latency"]["count"].as_u64().unwrap() > 0);
    assert!(w["status"]["success"].as_u64().unwrap() > 0);

    // `limit` alone gives the newest windows; `next_since` pages on from them.
    let page = get(&c, &proxy.admin_url("/api/v1/telemetry?limit=2"))
        .await
        .unwrap()
        .json();
    let windows = page["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 2, "{page}");
    let last_seq = windows[1]["seq"].as_u64().unwrap();
    assert!(windows[0]["seq"].as_u64().unwrap() < last_seq);
    assert_eq!(page["next_since"], last_seq);
    let first = get(&c, &proxy.admin_url("/api/v1/telemetry?since=0&limit=1"))
        .await
        .unwrap()
        .json();
    assert_eq!(first["windows"].as_array().unwrap().len(), 1);
    assert_eq!(first["more"], true);
    let next = first["next_since"].as_u64().unwrap();
    let second = get(
        &c,
        &proxy.admin_url(&format!("/api/v1/telemetry?since={next}&limit=1")),
    )
    .await
    .unwrap()
    .json();
    assert!(
        second["windows"][0]["seq"].as_u64().unwrap() > next,
        "{second}"
    );
    assert_eq!(
        get(&c, &proxy.admin_url("/api/v1/telemetry?limit=0"))
            .await
            .unwrap()
            .status,
        400
    );

    // A reload and a policy swap keep the exposition valid.
    let reload = post_json(&c, &proxy.admin_url("/api/v1/config/reload"), "", "POST").await;
    assert_eq!(
        reload.status,
        200,
        "{}",
        String::from_utf8_lossy(&reload.body)
    );
    let policy = post_json(
        &c,
        &proxy.admin_url("/api/v1/policy"),
        &policy_json(1, &[(b_addr.clone(), 2)]),
        "PUT",
    )
    .await;
    assert_eq!(
        policy.status,
        200,
        "{}",
        String::from_utf8_lossy(&policy.body)
    );
    let stale = post_json(
        &c,
        &proxy.admin_url("/api/v1/policy"),
        &policy_json(1, &[(b_addr.clone(), 2)]),
        "PUT",
    )
    .await;
    assert_eq!(stale.status, 409);
    let after = proxy.metrics().await;
    promtool_check(&after);
    assert_eq!(
        sample(
            &after,
            "vivremotion_proxy_config_reloads_total{result=\"applied\"} "
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, "vivremotion_proxy_policy_version "),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "vivremotion_proxy_policy_rejected_total{reason=\"stale\"} "
        ),
        Some(1.0),
        "{after}"
    );

    let m = String::from_utf8_lossy(&get(&c, &proxy.admin_url("/metrics")).await.unwrap().body)
        .into_owned();
    assert!(
        m.contains("vivremotion_proxy_requests_total{route=\"all\""),
        "{m}"
    );
    assert!(
        m.contains("vivremotion_proxy_request_duration_seconds_bucket"),
        "{m}"
    );
    assert!(m.contains("vivremotion_proxy_upstream_healthy"), "{m}");

    let missing = get(&c, &proxy.admin_url("/api/v1/nope")).await.unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["type"], "not_found");
    let wrong = post_json(&c, &proxy.admin_url("/api/v1/upstreams"), "{}", "POST").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(
        get(&c, &proxy.admin_url("/api/v1/telemetry?since=x"))
            .await
            .unwrap()
            .status,
        400
    );
}

/// Wait until the proxy has `n` requests in flight to its `all` route's endpoints.
async fn wait_in_flight(proxy: &Proxy, n: i64) {
    let seen = eventually(Duration::from_secs(10), || async move {
        let m = proxy.metrics().await;
        let total = sum_samples(
            &m,
            "vivremotion_proxy_requests_in_flight",
            &["route=\"all\""],
        );
        total as i64 == n
    })
    .await;
    assert!(seen, "never saw {n} request(s) in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_exits_zero() {
    let b = backend("slow", 700.0).await;
    let mut proxy = Proxy::start(&round_robin_config(&[b]));
    let c = http1_client();
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move { get(&c, &url).await });
    wait_in_flight(&proxy, 1).await;
    proxy.signal("TERM");
    let rep = in_flight.await.unwrap().unwrap();
    assert_eq!(rep.status, 200, "in-flight request was cut off");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
}

/// A load balancer polling `/readyz` during a drain must see 503, not a refused connection,
/// for as long as requests are still being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_while_draining() {
    let b = backend("slow", 1500.0).await;
    let mut proxy = Proxy::start(&round_robin_config(&[b]));
    let c = http1_client();
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { get(&c, &url).await }
    });
    wait_in_flight(&proxy, 1).await;
    let ready = get(&c, &proxy.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status, 200);
    proxy.signal("TERM");

    let readyz = proxy.admin_url("/readyz");
    let mut answers = Vec::new();
    while !in_flight.is_finished() {
        // A fresh connection each time, as a load balancer's probe makes.
        match get(&http1_client(), &readyz).await {
            Ok(r) => {
                if answers.is_empty() && r.status == 200 {
                    // The signal may not have been handled yet.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                answers.push((r.status, r.json()));
            }
            Err(e) => {
                // Refused is only right once the drain is over: the request must finish at
                // (about) the same moment.
                let finished_soon = tokio::time::timeout(Duration::from_millis(300), async {
                    while !in_flight.is_finished() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await
                .is_ok();
                assert!(
                    finished_soon,
                    "/readyz refused ({e}) while a request was still in flight"
                );
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        answers.len() >= 5,
        "too few probes during the drain: {answers:?}"
    );
    for (status, body) in &answers {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(body["status"], "draining");
    }
    assert_eq!(answers[0].1["upstream_in_flight"], 1);
    let rep = in_flight.await.unwrap().unwrap();
    assert_eq!(rep.status, 200, "in-flight request was cut off");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
}

fn check_config(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("check-config")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_lines_and_field_paths_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[clusters.api]\nendpoints = [\"127.0.0.1:1\"]\nconnect_timeout = \"forever\"\n[[routes]]\ncluster = \"apii\"\n",
    )
    .unwrap();
    let (code, _, err) = check_config(&[bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("line 3: clusters.api.connect_timeout: bad duration \"forever\""),
        "{err}"
    );
    assert!(
        err.contains("line 5: routes[0].cluster: unknown cluster \"apii\""),
        "{err}"
    );

    // A syntax error names its line and column.
    let syntax = dir.path().join("syntax.toml");
    let mut text = String::from("# comment\n[proxy]\n");
    for i in 3..12 {
        text.push_str(&format!("# line {i}\n"));
    }
    text.push_str("workers = = 2\n");
    std::fs::write(&syntax, &text).unwrap();
    let (code, _, err) = check_config(&["--config", syntax.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("line 12, column 11: TOML syntax"), "{err}");

    // An unknown field does not hide the other errors.
    let both = dir.path().join("both.toml");
    std::fs::write(
        &both,
        "[proxy]\nworkrs = 2\n[clusters.api]\nendpoints = [\"127.0.0.1:1\"]\nconnect_timeout = \"soon\"\n[[routes]]\ncluster = \"api\"\n",
    )
    .unwrap();
    let (code, _, err) = check_config(&["-c", both.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("line 2: proxy.workrs: unknown field `workrs`, expected one of `workers`"),
        "{err}"
    );
    assert!(
        err.contains("line 5: clusters.api.connect_timeout: bad duration \"soon\""),
        "{err}"
    );

    // Valid, but without routes: a warning, exit 0.
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "[proxy]\nworkers = 1\n").unwrap();
    let (code, out, err) = check_config(&[empty.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(": ok (1 listeners, 0 clusters, 0 routes)"),
        "{out}"
    );
    assert!(err.contains("warning: no [[routes]]"), "{err}");

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/vivremotion.toml");
    let (code, _, err) = check_config(&[example]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = check_config(&["--config", example]);
    assert_eq!(code, 0, "{err}");

    let (code, _, err) = check_config(&["/nonexistent.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read /nonexistent.toml"), "{err}");
}

/// A port that is taken is reported once, in one line, and the process exits 1.
#[test]
fn a_bind_failure_is_reported_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!("[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nname = \"main\"\nlisten = \"{addr}\"\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["proxy", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert_eq!(
        line.matches("cannot listen").count(),
        1,
        "reported more than once: {line}"
    );
    assert_eq!(line.matches("Address already in use").count(), 1, "{line}");
    assert!(line.contains(&addr.to_string()), "{line}");
}

/// `vivremotion up` as a new user runs it: answer from a demo upstream, counters move,
/// three upstreams listed, demo controls work, a downed upstream shows unhealthy, Ctrl-C
/// exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_everything_on_embedded_defaults() {
    let mut up = Up::start(&[]);
    assert!(
        up.banner.contains("curl"),
        "banner should show a curl to try:\n{}",
        up.banner
    );
    let c = http1_client();

    let rep = get(&c, &up.url("/")).await.unwrap();
    assert_eq!(rep.status, 200);
    let name = rep.json()["upstream"].as_str().unwrap().to_string();
    assert!(
        ["alpha", "beta", "gamma"].contains(&name.as_str()),
        "{name}"
    );
    // Counted before the client had the response's last byte: no waiting needed.
    let m = up.metrics().await;
    let counted = sum_samples(
        &m,
        "vivremotion_proxy_requests_total",
        &["code_class=\"2xx\""],
    );
    assert_eq!(counted, 1.0, "{m}");
    let upstreams = get(&c, &up.admin_url("/api/v1/upstreams"))
        .await
        .unwrap()
        .json();
    assert_eq!(upstreams["endpoints"].as_array().unwrap().len(), 3);
    let demo = get(&c, &up.admin_url("/api/v1/demo/upstreams"))
        .await
        .unwrap()
        .json();
    let alpha = demo["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "alpha")
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();

    // Take one demo upstream down: P2C routes around it, and the health checks `up` runs
    // mark it unhealthy.
    let rep = post_json(
        &c,
        &up.admin_url("/api/v1/demo/upstreams/alpha"),
        "{\"down\": true}",
        "POST",
    )
    .await;
    assert_eq!(rep.status, 200, "{}", String::from_utf8_lossy(&rep.body));
    assert_eq!(rep.json()["settings"]["down"], true);
    let bad = post_json(
        &c,
        &up.admin_url("/api/v1/demo/upstreams/gamma"),
        "{\"error_rate\": 2}",
        "POST",
    )
    .await;
    assert_eq!(bad.status, 422);
    let unknown_field = post_json(
        &c,
        &up.admin_url("/api/v1/demo/upstreams/gamma"),
        "{\"latency\": 2}",
        "POST",
    )
    .await;
    assert_eq!(unknown_field.status, 400);
    let mut ok = 0;
    for _ in 0..40 {
        let rep = get(&c, &up.url("/")).await.unwrap();
        if rep.status == 200 {
            assert_ne!(rep.json()["upstream"], "alpha");
            ok += 1;
        }
    }
    assert!(ok >= 36, "with alpha down, only {ok}/40 succeeded");
    let unhealthy = eventually(Duration::from_secs(10), || {
        let (c, url, alpha) = (c.clone(), up.admin_url("/api/v1/upstreams"), alpha.clone());
        async move {
            let u = get(&c, &url).await.unwrap().json();
            u["endpoints"].as_array().unwrap().iter().any(|e| {
                e["address"] == alpha.as_str()
                    && e["active_health"] == "unhealthy"
                    && e["health"] == "unhealthy"
            })
        }
    })
    .await;
    assert!(
        unhealthy,
        "alpha never showed unhealthy in /api/v1/upstreams"
    );
    let m = up.metrics().await;
    assert_eq!(
        sample(
            &m,
            &format!("vivremotion_proxy_upstream_healthy{{cluster=\"demo\",upstream=\"{alpha}\"}}")
        ),
        Some(0.0),
        "{m}"
    );
    let rep = post_json(
        &c,
        &up.admin_url("/api/v1/demo/upstreams/alpha"),
        "{\"down\": false}",
        "POST",
    )
    .await;
    assert_eq!(rep.status, 200);

    assert_eq!(up.stop_with("INT", Duration::from_secs(10)), Some(0));
}

/// The access log: one JSON line per client request, on both request paths, with what an
/// operator greps for, also for refusals, retries and clients that leave; written off the
/// request path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request() {
    let b = backend("a", 0.0).await;
    let slow = backend("slow", 2000.0).await;
    // Bound, then closed: connections to it are refused.
    let refused_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let proxy = Proxy::start(&format!(
        r#"{base}
[access_log]
path = "{log}"
[clusters.backend]
endpoints = ["{b}"]
[clusters.retry]
endpoints = ["{refused_addr}", "{b}"]
balancer = "round_robin"
[clusters.slow]
endpoints = ["{slow}"]
[[routes]]
name = "limited"
cluster = "backend"
match = {{ path_prefix = "/limited" }}
rate_limits = [{{ name = "one", rate = 0.001, burst = 1 }}]
[[routes]]
name = "all"
cluster = "backend"
match = {{ path_prefix = "/all" }}
[[routes]]
name = "retry"
cluster = "retry"
match = {{ path_prefix = "/retry" }}
retry = {{ retries = 1, on = ["connect"], backoff_base = "1ms" }}
[[routes]]
name = "slow"
cluster = "slow"
match = {{ path_prefix = "/slow" }}
"#,
        base = base_config(1),
        log = log_path.display(),
        b = b.addr(),
        slow = slow.addr()
    ));
    let c = http1_client();
    // 0: fast path; 1: hyper path (h2c); 2, 3: a rate limit admits, then refuses; 4: no
    // route; 5: a HEAD the limit refuses; 6, 7: retried past a refusing endpoint; 8: an
    // HTTP/2 client gives up (resets its stream) while the upstream works.
    assert_eq!(
        get(&c, &proxy.url("/all/one?x=1")).await.unwrap().status,
        200
    );
    assert_eq!(
        get(&h2c_client(), &proxy.url("/all/two"))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(get(&c, &proxy.url("/limited")).await.unwrap().status, 200);
    let limited = get(&c, &proxy.url("/limited")).await.unwrap();
    assert_eq!(limited.status, 429);
    assert_eq!(get(&c, &proxy.url("/nowhere")).await.unwrap().status, 404);
    let head = send(
        &c,
        http::Request::head(proxy.url("/limited"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(head.status, 429);
    // Two requests: at least one meets the refusing endpoint first (round robin).
    assert_eq!(get(&c, &proxy.url("/retry/x")).await.unwrap().status, 200);
    assert_eq!(get(&c, &proxy.url("/retry/y")).await.unwrap().status, 200);
    let gone = tokio::time::timeout(
        Duration::from_millis(300),
        get(&h2c_client(), &proxy.url("/slow/x")),
    )
    .await;
    assert!(gone.is_err(), "the slow upstream answered too early");

    let read = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
            })
            .collect::<Vec<_>>()
    };
    // Every line written and flushed, and no line twice.
    let complete = eventually(Duration::from_secs(10), || async {
        sample(
            &proxy.metrics().await,
            "vivremotion_proxy_access_log_lines_total ",
        ) == Some(9.0)
    })
    .await;
    let lines = read();
    assert!(complete, "{lines:#?}");
    assert_eq!(lines.len(), 9, "{lines:#?}");
    let one = &lines[0];
    assert_eq!(one["method"], "GET");
    assert_eq!(one["path"], "/all/one?x=1");
    assert_eq!(one["route"], "all");
    assert_eq!(one["upstream"], b.addr().to_string());
    assert_eq!(one["status"], 200);
    assert_eq!(one["admission"], "admitted");
    assert_eq!(one["priority"], "default");
    assert_eq!(one["retries"], 0);
    assert!(one["bytes_out"].as_u64().unwrap() > 0);
    assert!(one["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(one["request_id"].as_str().unwrap().len(), 32);
    assert!(one["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        (lines[1]["path"].as_str(), lines[1]["status"].as_u64()),
        (Some("/all/two"), Some(200))
    );
    let refused = &lines[3];
    assert_eq!(
        (refused["status"].as_u64(), refused["admission"].as_str()),
        (Some(429), Some("limited"))
    );
    assert_eq!(refused["route"], "limited");
    assert!(refused["upstream"].is_null());
    assert_eq!(
        refused["request_id"].as_str(),
        limited.headers["x-request-id"].to_str().ok()
    );
    assert_eq!(
        (lines[4]["status"].as_u64(), lines[4]["admission"].as_str()),
        (Some(404), Some("none"))
    );
    assert_eq!(
        (lines[5]["method"].as_str(), lines[5]["status"].as_u64()),
        (Some("HEAD"), Some(429))
    );
    assert_eq!(lines[5]["bytes_out"], 0);
    let retries: Vec<u64> = lines[6..8]
        .iter()
        .map(|l| l["retries"].as_u64().unwrap())
        .collect();
    assert!(
        retries.contains(&1) && retries.iter().all(|&r| r <= 1),
        "{:#?}",
        &lines[6..8]
    );
    for l in &lines[6..8] {
        assert_eq!(
            (l["route"].as_str(), l["status"].as_u64()),
            (Some("retry"), Some(200))
        );
        assert_eq!(l["upstream"], b.addr().to_string());
    }
    let left = &lines[8];
    assert_eq!(
        (left["route"].as_str(), left["status"].as_u64()),
        (Some("slow"), Some(499)),
        "{left}"
    );
    let m = proxy.metrics().await;
    assert_eq!(
        sample(&m, "vivremotion_proxy_access_log_lines_dropped_total "),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "vivremotion_proxy_access_log_write_errors_total "),
        Some(0.0),
        "{m}"
    );
    // The client that left counts as a 4xx of the slow endpoint, not as a 5xx.
    let slow_5xx = sum_samples(
        &m,
        "vivremotion_proxy_requests_total",
        &["route=\"slow\"", "code_class=\"5xx\""],
    );
    assert_eq!(slow_5xx, 0.0, "{m}");
}

/// A control loop that panics is restarted and counted, and `/readyz` says not ready while it
/// is down; the data plane keeps serving throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_control_loop_is_restarted_and_counted() {
    let good = backend("good", 0.0).await;
    let proxy = Proxy::start_with_env(
        &round_robin_config(&[good]),
        &[("VIVREMOTION_TEST_FAULTS", "1")],
    );
    let client = http1_client();
    let readyz = |client: HttpClient, url: String| async move {
        let r = get(&client, &url).await.unwrap();
        (r.status, r.json())
    };
    let (st, v) = readyz(client.clone(), proxy.admin_url("/readyz")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["control_loops"]["control"]["restarts"], 0, "{v}");

    let arm = |on: bool| {
        let (client, url) = (client.clone(), proxy.admin_url("/api/v1/debug/faults"));
        async move {
            let body = format!("{{\"loop\":\"control\",\"panic\":{on}}}");
            post_json(&client, &url, &body, "POST").await.status
        }
    };
    assert_eq!(arm(true).await, 200);
    // Armed, the loop panics on every restart: down until disarmed.
    let down = eventually(Duration::from_secs(10), || async {
        let (st, v) = readyz(client.clone(), proxy.admin_url("/readyz")).await;
        st == 503 && v["down"] == serde_json::json!(["control"])
    })
    .await;
    assert!(down, "/readyz never said the control loop was down");
    assert_eq!(
        get(&client, &proxy.url("/still")).await.unwrap().status,
        200
    );
    assert_eq!(arm(false).await, 200);
    let up = eventually(Duration::from_secs(15), || async {
        readyz(client.clone(), proxy.admin_url("/readyz")).await.0 == 200
    })
    .await;
    assert!(up, "the control loop never came back");
    let (_, v) = readyz(client.clone(), proxy.admin_url("/readyz")).await;
    assert!(
        v["control_loops"]["control"]["restarts"].as_u64() >= Some(1),
        "{v}"
    );
    let m = proxy.metrics().await;
    assert!(
        sample(
            &m,
            "vivremotion_proxy_control_loop_restarts_total{loop=\"control\"}"
        ) >= Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "vivremotion_proxy_control_loop_up{loop=\"control\"}"),
        Some(1.0)
    );
    assert!(
        proxy.log().contains("control loop panicked"),
        "{}",
        proxy.log()
    );
    promtool_check(&m);
}

/// One keep-alive exchange on a raw connection: send a GET, read the whole response (its
/// `Content-Length` body included). Returns the status line.
async fn keep_alive_get(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /ka HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return head.lines().next().unwrap_or("").to_string();
            }
        }
        assert!(std::time::Instant::now() < deadline, "no whole response");
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("response timed out")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Time until the proxy closes an idle connection (EOF), up to `within`.
async fn until_closed(s: &mut tokio::net::TcpStream, within: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let t0 = std::time::Instant::now();
    let mut b = [0u8; 64];
    match tokio::time::timeout(within, s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Some(t0.elapsed()),
        Ok(Ok(n)) => panic!("unexpected bytes on an idle connection: {:?}", &b[..n]),
        Err(_) => None,
    }
}

/// The idle deadline of a keep-alive connection runs from its last response: requests 0.7 s
/// apart keep it open past one `header_read_timeout` (2 s) in total, and after the last one it
/// closes no sooner than 2 s. On SIGTERM an idle connection closes at once, long before its
/// 60 s deadline, and the proxy exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_closes_at_its_deadline_and_at_once_on_shutdown() {
    let good = backend("good", 0.0).await;
    let config = |timeout: &str| {
        base_config(1).replace(
            "workers = 1\n",
            &format!("workers = 1\nheader_read_timeout = \"{timeout}\"\n"),
        ) + &format!(
            "[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n",
            good.addr()
        )
    };
    let proxy = Proxy::start(&config("2s"));
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..4 {
        assert!(keep_alive_get(&mut s).await.contains(" 200 "));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(keep_alive_get(&mut s).await.contains(" 200 "));
    let idle = until_closed(&mut s, Duration::from_secs(30)).await;
    let idle = idle.expect("idle keep-alive connection never closed");
    assert!(idle >= Duration::from_millis(1900), "closed after {idle:?}");
    drop(proxy);

    let mut proxy = Proxy::start(&config("60s"));
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    assert!(keep_alive_get(&mut s).await.contains(" 200 "));
    proxy.signal("TERM");
    let closed = until_closed(&mut s, Duration::from_secs(30)).await;
    assert!(
        closed.is_some(),
        "idle connection kept open through shutdown"
    );
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
}
