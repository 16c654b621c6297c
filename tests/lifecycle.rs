//! Config reload and policy swaps under load, the admin API, `up`, draining, `check-config`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
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
    tokio::time::sleep(Duration::from_millis(300)).await;

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
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
    // An invalid file is rejected and the last good config keeps serving.
    std::fs::write(&proxy.config_path, "[clusters.backend]\nendpoints = []\n").unwrap();
    proxy.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
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
    for _ in 0..20 {
        assert_eq!(get(&c, &proxy.url("/t")).await.unwrap().status, 200);
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_exits_zero() {
    let b = backend("slow", 700.0).await;
    let mut proxy = Proxy::start(&round_robin_config(&[b]));
    let c = http1_client();
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move { get(&c, &url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.signal("TERM");
    let rep = in_flight.await.unwrap().unwrap();
    assert_eq!(rep.status, 200, "in-flight request was cut off");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn check_config_names_field_paths_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[clusters.api]\nendpoints = [\"127.0.0.1:1\"]\nconnect_timeout = \"forever\"\n[[routes]]\ncluster = \"apii\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("clusters.api.connect_timeout: bad duration \"forever\""),
        "{err}"
    );
    assert!(
        err.contains("routes[0].cluster: unknown cluster \"apii\""),
        "{err}"
    );

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/vivremotion.toml");
    let out = Command::new(BIN)
        .args(["check-config", example])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(BIN)
        .args(["check-config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent.toml"));
}

/// `vivremotion up` as a new user runs it: answer from a demo upstream, counters move,
/// three upstreams listed, demo controls work, Ctrl-C exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_everything_on_embedded_defaults() {
    let mut child = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut banner = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            banner.push_str(&line);
            banner.push('\n');
            if line.starts_with("ready ") {
                let _ = tx.send((line, banner.clone()));
            }
        }
    });
    let (line, banner) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("up did not start");
    assert!(
        banner.contains("curl"),
        "banner should show a curl to try:\n{banner}"
    );
    let (listeners, admin) = parse_ready(&line);
    let proxy = format!("http://{}", listeners[0].1);
    let admin = format!("http://{admin}");
    let c = http1_client();

    let rep = get(&c, &format!("{proxy}/")).await.unwrap();
    assert_eq!(rep.status, 200);
    let name = rep.json()["upstream"].as_str().unwrap().to_string();
    assert!(
        ["alpha", "beta", "gamma"].contains(&name.as_str()),
        "{name}"
    );
    let m = String::from_utf8_lossy(&get(&c, &format!("{admin}/metrics")).await.unwrap().body)
        .into_owned();
    assert!(
        m.lines()
            .any(|l| l.starts_with("vivremotion_proxy_requests_total{") && !l.ends_with(" 0")),
        "{m}"
    );
    let up = get(&c, &format!("{admin}/api/v1/upstreams"))
        .await
        .unwrap()
        .json();
    assert_eq!(up["endpoints"].as_array().unwrap().len(), 3);

    // Take one demo upstream down: after its first failures, P2C routes around it.
    let rep = post_json(
        &c,
        &format!("{admin}/api/v1/demo/upstreams/alpha"),
        "{\"down\": true}",
        "POST",
    )
    .await;
    assert_eq!(rep.status, 200, "{}", String::from_utf8_lossy(&rep.body));
    assert_eq!(rep.json()["settings"]["down"], true);
    let bad = post_json(
        &c,
        &format!("{admin}/api/v1/demo/upstreams/gamma"),
        "{\"error_rate\": 2}",
        "POST",
    )
    .await;
    assert_eq!(bad.status, 422);
    let unknown_field = post_json(
        &c,
        &format!("{admin}/api/v1/demo/upstreams/gamma"),
        "{\"latency\": 2}",
        "POST",
    )
    .await;
    assert_eq!(unknown_field.status, 400);
    let mut ok = 0;
    for _ in 0..40 {
        let rep = get(&c, &format!("{proxy}/")).await.unwrap();
        if rep.status == 200 {
            assert_ne!(rep.json()["upstream"], "alpha");
            ok += 1;
        }
    }
    assert!(ok >= 36, "with alpha down, only {ok}/40 succeeded");
    let rep = post_json(
        &c,
        &format!("{admin}/api/v1/demo/upstreams/alpha"),
        "{\"down\": false}",
        "POST",
    )
    .await;
    assert_eq!(rep.status, 200);

    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "up did not exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
}
