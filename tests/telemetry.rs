//! Telemetry says what happened: client requests in route windows, tries in endpoint windows
//! (each with its own outcome and latency), aligned intervals and the policy in force.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use common::*;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use vivremotion_proxy::demo::{DemoSettings, DemoUpstream};

async fn upstream(name: &str, latency_ms: f64, error_rate: f64) -> Arc<DemoUpstream> {
    let settings = DemoSettings {
        error_rate,
        ..DemoSettings::with_latency(latency_ms, 0.0)
    };
    let u = DemoUpstream::new(name, "127.0.0.1:0".parse().unwrap(), settings, 1);
    u.start().await.unwrap();
    u
}

/// `a` (weight 2: every worker's first pick) always answers 503; `b` answers in 20 ms. The
/// route retries 503 once, after 5..10 ms.
fn config(a: &DemoUpstream, b: &DemoUpstream) -> String {
    simple_config(
        &format!(
            "[{{ address = \"{}\", weight = 2 }}, {{ address = \"{}\", weight = 1 }}]",
            a.addr(),
            b.addr()
        ),
        "round_robin",
        "",
        "",
    )
    .replace("tick = \"200ms\"", "tick = \"500ms\"")
    .replace(
        "cluster = \"backend\"\n",
        "cluster = \"backend\"\nretry = { retries = 1, on = [\"503\"], backoff_base = \"10ms\", backoff_max = \"10ms\" }\n",
    )
}

async fn batches(proxy: &Proxy) -> Vec<Value> {
    let r = get(
        &http1_client(),
        &proxy.admin_url("/api/v1/telemetry/batches"),
    )
    .await
    .unwrap();
    r.json()["batches"].as_array().cloned().unwrap_or_default()
}

fn windows(batches: &[Value]) -> Vec<Value> {
    batches
        .iter()
        .flat_map(|b| b["windows"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The windows of `upstream` ("" for the route's own).
fn of<'a>(ws: &'a [Value], upstream: &str) -> Vec<&'a Value> {
    ws.iter()
        .filter(|w| w["scope"]["upstream"].as_str().unwrap_or("") == upstream)
        .collect()
}

fn sum(ws: &[&Value], f: impl Fn(&Value) -> u64) -> u64 {
    ws.iter().map(|w| f(w)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_one_request_and_two_tries() {
    let (a, b) = (
        upstream("a", 0.0, 1.0).await,
        upstream("b", 20.0, 0.0).await,
    );
    let cfg = config(&a, &b);
    let p1 = Proxy::start(&cfg);
    let p2 = Proxy::start(&cfg);
    let policy = r#"{"schema_version":1,"version":5,"issued_at_ms":0,"issuer":"test","routes":{}}"#;
    let put = post_json(
        &http1_client(),
        &p1.admin_url("/api/v1/policy"),
        policy,
        "PUT",
    )
    .await;
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));

    let r = get(&http1_client(), &p1.url("/once")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["upstream"], "b", "the retry went to b");

    let seen = eventually(Duration::from_secs(10), || async {
        let ws = windows(&batches(&p1).await);
        sum(&of(&ws, ""), |w| w["requests"].as_u64().unwrap()) == 1
            && sum(&of(&ws, &b.addr().to_string()), |w| {
                w["requests"].as_u64().unwrap()
            }) == 1
    })
    .await;
    let all = batches(&p1).await;
    let ws = windows(&all);
    assert!(seen, "the request never showed up: {ws:#?}");

    // The route: one client request, answered 2xx, retried once, under policy 5.
    let route = of(&ws, "");
    assert_eq!(sum(&route, |w| w["status"]["success"].as_u64().unwrap()), 1);
    assert_eq!(
        sum(&route, |w| w["status"]["server_error"].as_u64().unwrap()),
        0
    );
    assert_eq!(
        sum(&route, |w| w["resilience"]["retries"].as_u64().unwrap()),
        1
    );
    let rw = route.iter().find(|w| w["requests"] == 1).unwrap();
    assert_eq!(rw["in_force"]["policy_version"], 5, "{rw}");
    assert_eq!(
        rw["in_force"]["config_fingerprint"].as_str().map(str::len),
        Some(16)
    );
    let route_ms = rw["latency"]["sum_us"].as_f64().unwrap() / 1e3;

    // a: one try, 5xx; b: one try, 2xx, its own 20 ms (not a's time, the backoff and b's).
    let aw = of(&ws, &a.addr().to_string());
    assert_eq!(sum(&aw, |w| w["requests"].as_u64().unwrap()), 1, "{aw:#?}");
    assert_eq!(
        sum(&aw, |w| w["status"]["server_error"].as_u64().unwrap()),
        1
    );
    assert_eq!(
        sum(&aw, |w| w["errors"]["upstream_5xx"].as_u64().unwrap()),
        1
    );
    let bw = of(&ws, &b.addr().to_string());
    assert_eq!(
        sum(&bw, |w| w["status"]["success"].as_u64().unwrap()),
        1,
        "{bw:#?}"
    );
    let b_try = bw.iter().find(|w| w["requests"] == 1).unwrap();
    let b_ms = b_try["latency"]["sum_us"].as_f64().unwrap() / 1e3;
    assert!((19.0..45.0).contains(&b_ms), "b's try took {b_ms} ms");
    assert!(
        route_ms >= b_ms + 5.0,
        "the request ({route_ms} ms) includes a's try and the backoff on top of b's {b_ms} ms"
    );
    assert_eq!(b_try["in_force"]["weight"], 1, "{b_try}");

    // Every batch covers an aligned tick: windows of two instances describe the same
    // intervals.
    let starts = |bs: &[Value]| -> Vec<u64> {
        bs.iter()
            .map(|b| {
                let (start, len) = (
                    b["window_start_ms"].as_u64().unwrap(),
                    b["window_ms"].as_u64().unwrap(),
                );
                assert_eq!(start % 500, 0, "{b}");
                assert_eq!(len, 500, "{b}");
                start
            })
            .collect()
    };
    // Both instances tick on the same boundaries: once each has closed a window since both
    // were up, they share an interval.
    let common = eventually(Duration::from_secs(10), || async {
        let (s1, s2) = (starts(&batches(&p1).await), starts(&batches(&p2).await));
        s1.iter().any(|s| s2.contains(s))
    })
    .await;
    let (s1, s2) = (starts(&batches(&p1).await), starts(&batches(&p2).await));
    assert!(common, "no common interval: {s1:?} vs {s2:?}");
    // Sequence numbers count batches; idle scopes send no windows.
    assert!(all
        .windows(2)
        .all(|w| w[1]["seq"].as_u64() == w[0]["seq"].as_u64().map(|s| s + 1)));
    for w in &ws {
        let admitted = &w["admission"]["admitted"];
        let busy = w["requests"].as_u64() > Some(0)
            || w["in_force"]["in_flight_max"].as_u64() > Some(0)
            || w["in_flight"].as_u64() > Some(0)
            || ["critical", "default", "sheddable"]
                .iter()
                .any(|p| admitted[p].as_u64() > Some(0))
            || w["resilience"]["retries"].as_u64() > Some(0);
        assert!(busy, "an idle window was sent: {w}");
    }
}
