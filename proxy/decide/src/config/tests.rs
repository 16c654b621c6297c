use super::*;

const MINIMAL: &str = r#"
[clusters.backend]
endpoints = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]

[[routes]]
name = "all"
cluster = "backend"
"#;

fn errors_of(text: &str) -> Vec<String> {
    match Config::parse(text) {
        Ok(_) => panic!("config unexpectedly valid:\n{text}"),
        Err(e) => e.field_errors().iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn minimal_config_gets_sane_defaults() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.listeners[0].listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
    assert_eq!(c.telemetry.tick, Duration::from_secs(1));
    let b = &c.clusters["backend"];
    assert_eq!(b.balancer, BalancerKind::P2cPeakEwma);
    assert_eq!(b.endpoints[1].weight, 3);
    assert_eq!(c.routes[0].timeout, Duration::from_secs(30));
    assert!(c.routes[0].matcher.path.is_none());
}

#[test]
fn example_file_is_valid() {
    let text = include_str!("../../../../examples/vivremotion.toml");
    let c = Config::parse(text).unwrap_or_else(|e| panic!("examples/vivremotion.toml: {e}"));
    assert!(!c.routes.is_empty());
}

#[test]
fn unknown_field_names_its_path() {
    let errs = errors_of(
        r#"
[clusters.backend]
endpoints = ["127.0.0.1:1"]
balancr = "round_robin"
"#,
    );
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("clusters.backend.balancr"), "{errs:?}");
    assert!(errs[0].contains("unknown field"), "{errs:?}");
}

#[test]
fn bad_enum_value_lists_choices() {
    let errs = errors_of(
        r#"
[clusters.backend]
endpoints = ["127.0.0.1:1"]
balancer = "random"
"#,
    );
    assert!(errs[0].starts_with("clusters.backend.balancer"), "{errs:?}");
    assert!(errs[0].contains("round_robin"), "{errs:?}");
}

#[test]
fn every_semantic_error_is_reported_with_its_path() {
    let errs = errors_of(
        r#"
[proxy]
drain_timeout = "soon"

[clusters.backend]
endpoints = ["no-port", "127.0.0.1:2", "127.0.0.1:2"]
connect_timeout = "5 parsecs"

[[routes]]
name = "a"
cluster = "missing"
match = { path_prefix = "api" }

[[routes]]
name = "a"
cluster = "backend"
request_headers = { set = { "bad header" = "x", "connection" = "close" } }
rewrite = { path_prefix = "/v2" }
"#,
    );
    let joined = errs.join("\n");
    for expected in [
        "proxy.drain_timeout: bad duration \"soon\"",
        "clusters.backend.endpoints[0]: bad endpoint address \"no-port\"",
        "clusters.backend.endpoints[2]: duplicate endpoint",
        "clusters.backend.connect_timeout: bad duration",
        "routes[0].cluster: unknown cluster \"missing\" (defined: backend)",
        "routes[0].match.path_prefix: \"api\" must start with '/'",
        "routes[1].name: duplicate route name \"a\"",
        "routes[1].request_headers.set.bad header: \"bad header\" is not a valid HTTP header name",
        "routes[1].request_headers.set.connection: connection is managed by the proxy",
        "routes[1].rewrite.path_prefix: needs match.path_prefix",
    ] {
        assert!(
            joined.contains(expected),
            "missing {expected:?} in:\n{joined}"
        );
    }
}

#[test]
fn consistent_hash_needs_a_key() {
    let errs = errors_of(
        r#"
[clusters.backend]
endpoints = ["127.0.0.1:1"]
balancer = "consistent_hash"
"#,
    );
    assert!(errs[0].starts_with("clusters.backend.hash_on"), "{errs:?}");
    let ok = Config::parse(
        r#"
[clusters.backend]
endpoints = ["127.0.0.1:1"]
balancer = "consistent_hash"
hash_on = "header:X-User"
"#,
    )
    .unwrap();
    assert_eq!(
        ok.clusters["backend"].hash_on,
        Some(HashOn::Header(HeaderName::from_static("x-user")))
    );
}

#[test]
fn toml_syntax_errors_are_reported() {
    let errs = errors_of("[clusters.backend\nendpoints = 1");
    assert!(errs[0].starts_with("TOML syntax"), "{errs:?}");
}

#[test]
fn bad_endpoint_shape_explains_both_forms() {
    let errs = errors_of(
        r#"
[clusters.backend]
endpoints = [42]
"#,
    );
    assert!(
        errs[0].starts_with("clusters.backend.endpoints[0]"),
        "{errs:?}"
    );
    assert!(errs[0].contains("\"host:port\" or { address"), "{errs:?}");
}

#[test]
fn credentials_are_redacted_in_json() {
    let c = Config::parse(
        r#"
[clusters.backend]
endpoints = ["127.0.0.1:1"]

[[routes]]
cluster = "backend"
request_headers = { set = { authorization = "Bearer sk-secret", x-team = "blue" } }
"#,
    )
    .unwrap();
    let json = c.redacted_json().to_string();
    assert!(!json.contains("sk-secret"), "{json}");
    assert!(json.contains("<redacted>"), "{json}");
    assert!(json.contains("blue"), "{json}");
    assert!(json.contains("\"timeout\":\"30s\""), "{json}");
}

#[test]
fn protection_settings_have_defaults_and_checked_paths() {
    let c = Config::parse(MINIMAL).unwrap();
    let b = &c.clusters["backend"];
    assert!(b.health_check.is_none(), "active checks are opt-in");
    assert_eq!(b.outlier.consecutive_gateway_errors, 5);
    assert!((b.outlier.max_ejection_share - 0.5).abs() < 1e-9);
    assert!(b.breaker.is_some(), "breakers are on by default");
    let r = &c.routes[0].retry;
    assert_eq!(r.retries, 2);
    assert!(r.on.connect && r.on.reset && !r.on.status_503 && !r.on.timeout);
    assert!((r.budget().ratio - 0.2).abs() < 1e-9);

    let errs = errors_of(
        r#"
[clusters.backend]
endpoints = ["127.0.0.1:9001"]
health_check = { path = "healthz", interval = "1ms", unhealthy_threshold = 0 }
outlier = { max_ejection_percent = 150, interval = "soon" }
breaker = { failure_ratio = 0.0, probes = 0 }

[[routes]]
cluster = "backend"
retry = { retries = 11, on = ["connect", "teapot"], per_try_timeout = "0s", budget_percent = -1 }
"#,
    );
    for want in [
        "clusters.backend.health_check.path",
        "clusters.backend.health_check.interval",
        "clusters.backend.health_check.unhealthy_threshold",
        "clusters.backend.outlier.max_ejection_percent",
        "clusters.backend.outlier.interval",
        "clusters.backend.breaker.failure_ratio",
        "clusters.backend.breaker.probes",
        "routes[0].retry.retries",
        "routes[0].retry.on[1]",
        "routes[0].retry.per_try_timeout",
        "routes[0].retry.budget_percent",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "no error for {want}: {errs:#?}"
        );
    }
}

#[test]
fn admission_settings_have_defaults_and_checked_paths() {
    use crate::config::admission::{KeyPart, LimitMode, OnStoreDown};
    use vivremotion_protocol::telemetry::Priority;
    let c = Config::parse(MINIMAL).unwrap();
    let r = &c.routes[0];
    assert_eq!(r.priority, Priority::Default);
    assert!(r.rate_limits.is_empty() && r.concurrency.is_none());
    assert!(c.proxy.trusted_priority_from.is_empty());
    assert!(c.global_limits.redis_url.is_none());

    let c = Config::parse(
        r#"
[proxy]
trusted_priority_from = ["10.0.0.0/8", "127.0.0.1"]

[clusters.backend]
endpoints = ["127.0.0.1:9001"]

[[routes]]
cluster = "backend"
priority = "critical"
rate_limits = [
  { name = "k", key = ["client_ip", "header:x-api-key"], rate = 50.0 },
  { name = "g", rate = 1000.0, burst = 10, global = true, on_store_down = "closed" },
]
concurrency = { limit = 40, shed_at = { sheddable = 0.5 } }
"#,
    )
    .unwrap();
    let r = &c.routes[0];
    assert_eq!(r.priority, Priority::Critical);
    assert_eq!(c.proxy.trusted_priority_from.len(), 2);
    let k = &r.rate_limits[0];
    assert_eq!(k.burst, 5, "default burst: a tenth of a second");
    assert_eq!(k.key[0], KeyPart::ClientIp);
    assert!(!k.global);
    let g = &r.rate_limits[1];
    assert!(g.global && g.on_store_down == OnStoreDown::Closed);
    assert_eq!(g.key, [KeyPart::Route]);
    let cc = r.concurrency.as_ref().unwrap();
    assert_eq!(cc.limit, LimitMode::Fixed(40));
    assert_eq!(cc.shed_at, [1.0, 0.9, 0.5]);

    let errs = errors_of(
        r#"
[proxy]
trusted_priority_from = ["10.0.0.0/33"]

[global_limits]
redis_url = "http://localhost"
lease_interval = "5s"

[clusters.backend]
endpoints = ["127.0.0.1:9001"]

[[routes]]
cluster = "backend"
priority = "urgent"
rate_limits = [
  { name = "a b", rate = 0.0, key = ["cookie"] },
  { name = "x", rate = 1.0, local_share = 0.3 },
  { name = "x", rate = 1.0, key = ["header:bad header"], global = true, on_store_down = "maybe" },
]
concurrency = { limit = "lots", shed_at = { critical = 0.5, default = 0.9 }, max_wait = "2m" }
"#,
    );
    for want in [
        "proxy.trusted_priority_from[0]",
        "global_limits.redis_url",
        "global_limits.lease_interval",
        "routes[0].priority",
        "routes[0].rate_limits[0].name",
        "routes[0].rate_limits[0].rate",
        "routes[0].rate_limits[0].key[0]",
        "routes[0].rate_limits[1].global",
        "routes[0].rate_limits[2].name",
        "routes[0].rate_limits[2].key[0]",
        "routes[0].rate_limits[2].on_store_down",
        "routes[0].concurrency.limit",
        "routes[0].concurrency.shed_at",
        "routes[0].concurrency.max_wait",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "no error for {want}: {errs:#?}"
        );
    }
}

#[test]
fn durations_have_an_upper_bound() {
    let text =
        format!("{MINIMAL}\n[clusters.backend.health_check]\ninterval = \"1000000000years\"\n");
    let errs = errors_of(&text);
    assert!(
        errs.iter()
            .any(|e| e.contains("clusters.backend.health_check.interval") && e.contains("1 day")),
        "{errs:?}"
    );
    let text = format!("{MINIMAL}\n[clusters.backend.health_check]\ninterval = \"24h\"\n");
    assert!(Config::parse(&text).is_ok());
}
