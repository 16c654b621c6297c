//! Decisions are reproducible from a seed: the same seed and inputs give the same decisions in
//! two separate processes, another seed gives others, and the proxy says its seed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use common::*;
use std::process::Command;

fn trace(seed: u64) -> Vec<u8> {
    let out = Command::new(BIN)
        .args(["trace", "--seed", &seed.to_string(), "--requests", "2000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn the_same_seed_gives_the_same_decisions_in_two_processes() {
    let (a, b, c) = (trace(42), trace(42), trace(43));
    let text = String::from_utf8_lossy(&a);
    // The scenario exercises every kind of decision.
    for what in [
        "-> Forward",
        "Backoff",
        "retry ->",
        "Queue",
        "dequeued -> Forward",
        "Refuse",
    ] {
        assert!(text.contains(what), "trace has no {what:?}:\n{text}");
    }
    assert!(
        text.lines().count() > 2000,
        "{} lines",
        text.lines().count()
    );
    assert_eq!(a, b, "seed 42 gave two different traces");
    assert_ne!(a, c, "seeds 42 and 43 gave the same trace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ready_line_says_the_seed() {
    // simple_config sets `proxy.seed = 7`.
    let proxy = Proxy::start(&round_robin_config(&[backend("good", 0.0).await]));
    assert_eq!(
        proxy.ready_line.split_whitespace().last(),
        Some("seed=7"),
        "{}",
        proxy.ready_line
    );
}
