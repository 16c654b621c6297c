//! Each balancer's traffic distribution, through the real proxy binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use common::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn shares(backends: &[Arc<vivremotion_proxy::demo::DemoUpstream>], before: &[u64]) -> Vec<f64> {
    let counts: Vec<u64> = backends
        .iter()
        .zip(before)
        .map(|(b, s)| b.served() - s)
        .collect();
    let total: u64 = counts.iter().sum();
    counts.iter().map(|&c| c as f64 / total as f64).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_weights_within_two_percent() {
    let _s = serial().await;
    let bs = vec![
        backend("a", 0.0).await,
        backend("b", 0.0).await,
        backend("c", 0.0).await,
    ];
    let weights = [5u32, 3, 2];
    let proxy = Proxy::start(&simple_config(
        &endpoints_toml(&bs, Some(&weights)),
        "round_robin",
        "",
        "",
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let r = load(http1_client(), proxy.url("/wrr"), 32, 10_000, stop).await;
    assert_eq!(r.failed(), 0, "{:?}", &r.errors.first());
    assert_eq!(r.ok, 10_000);
    let got = shares(&bs, &[0, 0, 0]);
    for (i, w) in weights.iter().enumerate() {
        let want = f64::from(*w) / 10.0;
        assert!(
            (got[i] - want).abs() <= 0.02 * want,
            "endpoint {i}: share {:.4}, want {want} ± 2 %",
            got[i]
        );
    }
    println!("wrr shares {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_peak_ewma_starves_an_endpoint_ten_times_slower() {
    let _s = serial().await;
    let bs = vec![
        backend("fast1", 3.0).await,
        backend("fast2", 3.0).await,
        backend("slow", 30.0).await,
    ];
    let proxy = Proxy::start(&simple_config(
        &endpoints_toml(&bs, None),
        "p2c_peak_ewma",
        "",
        "",
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let r = load(http1_client(), proxy.url("/p2c"), 12, 3_000, stop).await;
    assert_eq!(r.failed(), 0);
    let got = shares(&bs, &[0, 0, 0]);
    println!("p2c shares {got:?}");
    assert!(got[2] < 0.10, "slow endpoint got {:.3} of traffic", got[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_less_to_the_endpoint_that_holds_requests_longer() {
    let _s = serial().await;
    let bs = vec![backend("fast", 2.0).await, backend("slow", 20.0).await];
    let proxy = Proxy::start(&simple_config(
        &endpoints_toml(&bs, None),
        "least_request",
        "",
        "",
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let r = load(http1_client(), proxy.url("/lr"), 8, 2_000, stop).await;
    assert_eq!(r.failed(), 0);
    let got = shares(&bs, &[0, 0]);
    println!("least-request shares {got:?}");
    // Equal in-flight counts mean throughput proportional to speed: about 1/11 for the slow one.
    assert!(got[1] < 0.25, "slow endpoint got {:.3}", got[1]);
    assert!(
        got[1] > 0.0,
        "slow endpoint got nothing: least-request should still use it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_each_key_on_one_endpoint() {
    let bs = vec![
        backend("a", 0.0).await,
        backend("b", 0.0).await,
        backend("c", 0.0).await,
    ];
    let proxy = Proxy::start(&simple_config(
        &endpoints_toml(&bs, None),
        "consistent_hash",
        "hash_on = \"header:x-user\"",
        "",
    ));
    let client = http1_client();
    let mut seen = std::collections::HashMap::new();
    for user in 0..150 {
        for _ in 0..3 {
            let req = http::Request::get(proxy.url("/affinity"))
                .header("x-user", format!("user-{user}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let rep = send(&client, req).await.unwrap();
            assert_eq!(rep.status, 200);
            let upstream = rep.json()["upstream"].as_str().unwrap().to_string();
            let first = seen.entry(user).or_insert_with(|| upstream.clone());
            assert_eq!(*first, upstream, "user-{user} moved between endpoints");
        }
    }
    let distinct: std::collections::HashSet<_> = seen.values().collect();
    assert_eq!(distinct.len(), 3, "keys should spread over all endpoints");
}
