//! Helpers for end-to-end tests: the real `vivremotion` binary, real sockets, real clients.
// Tests measure real elapsed time, so they may read the wall clock.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods
)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vivremotion_proxy::demo::{DemoSettings, DemoUpstream};

/// Tests that measure timing or distributions take this lock so they do not share the two
/// cores with another load test.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub const BIN: &str = env!("CARGO_BIN_EXE_vivremotion");

/// The binary as a command, with the development datasets as its dataset root.
pub fn cmd() -> Command {
    let mut c = Command::new(BIN);
    c.env(
        "VIVREMOTION_DATASETS",
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets"),
    );
    c
}

/// Runs to success and returns stdout.
pub fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("run: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs to failure and returns stderr.
pub fn fails(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("run: {e}"));
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A running `vivremotion proxy`, killed on drop.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// The `ready ...` line it printed.
    pub ready_line: String,
}

impl Proxy {
    /// Start the proxy with `config` (TOML). Listeners and admin should use port 0.
    pub fn start(config: &str) -> Proxy {
        Proxy::start_with_env(config, &[])
    }

    /// [`Proxy::start`] with extra environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("vivremotion.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["proxy", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stderr(log);
        let log_path = dir.path().join("proxy.log");
        let (child, line, _) = start_until_ready(cmd, || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            format!("proxy did not become ready; log:\n{log}")
        });
        let (listeners, admin) = parse_ready(&line);
        Proxy {
            child,
            addr: listeners[0].1,
            listeners,
            admin,
            dir,
            config_path,
            ready_line: line,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        signal(&self.child, sig);
    }

    /// Wait for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        wait_exit(&mut self.child, within)
    }

    /// The text of the proxy's `/metrics`.
    pub async fn metrics(&self) -> String {
        fetch_metrics(&self.admin_url("/metrics")).await
    }
}

/// The sum of the samples of family `name` in `/metrics` text whose labels contain every
/// `want` pair (e.g. `outcome="shed"`).
pub fn sum_samples(metrics: &str, name: &str, want: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| want.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `/metrics` text shows no client request answered 5xx, no 5xx try and no failed try.
pub fn assert_nothing_against_upstreams(m: &str) {
    for (family, want) in [
        (
            "vivremotion_proxy_requests_total",
            &["code_class=\"5xx\""][..],
        ),
        (
            "vivremotion_proxy_upstream_tries_total",
            &["code_class=\"5xx\""][..],
        ),
        ("vivremotion_proxy_upstream_errors_total", &[][..]),
    ] {
        assert_eq!(sum_samples(m, family, want), 0.0, "{family} {want:?}:\n{m}");
    }
}

/// The text of the `/metrics` page at `url`.
pub async fn fetch_metrics(url: &str) -> String {
    let r = get(&http1_client(), url).await.unwrap();
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The value of the first sample of `/metrics` text whose line starts with `series` (a name
/// with its opening labels, e.g. `vivremotion_proxy_requests_in_flight{route="all"`).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Run `promtool check metrics` on `/metrics` text; panics with promtool's complaints.
pub fn promtool_check(metrics: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (apt-get install prometheus; .ci/run does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `vivremotion up` (proxy, admin API and three demo upstreams in one process),
/// killed on drop, so a failing test never leaves it running.
pub struct Up {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// Everything `up` printed up to its ready line.
    pub banner: String,
}

impl Up {
    pub fn start(extra: &[&str]) -> Up {
        let mut cmd = Command::new(BIN);
        cmd.args(["up", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(extra)
            .stderr(Stdio::null());
        let (child, line, banner) = start_until_ready(cmd, || {
            "`vivremotion up` did not print its ready line".to_string()
        });
        let (listeners, admin) = parse_ready(&line);
        Up {
            child,
            proxy: listeners[0].1,
            admin,
            banner,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The text of its `/metrics`.
    pub async fn metrics(&self) -> String {
        fetch_metrics(&self.admin_url("/metrics")).await
    }

    /// Send `sig` (e.g. "INT") and wait for the exit code.
    pub fn stop_with(&mut self, sig: &str, within: Duration) -> Option<i32> {
        signal(&self.child, sig);
        wait_exit(&mut self.child, within)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawn `cmd` and wait (up to 20 s) for its `ready ...` line on stdout. Returns the child,
/// the ready line and everything printed up to it; if it never gets ready, the child is
/// stopped and the test fails with `why()`.
fn start_until_ready(mut cmd: Command, why: impl Fn() -> String) -> (Child, String, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
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
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok((line, banner)) => (child, line, banner),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{}", why());
        }
    }
}

/// The start of a config: `workers` workers, admin and one `main` listener on free ports.
pub fn base_config(workers: usize) -> String {
    format!(
        "[proxy]\nworkers = {workers}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\n"
    )
}

/// Send a signal by name to a child process.
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

/// Poll a child until it exits; its exit code, or `None` if it is still running.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Parse `ready listeners=main@127.0.0.1:1234,tls@... admin=127.0.0.1:5678`.
pub fn parse_ready(line: &str) -> (Vec<(String, SocketAddr)>, SocketAddr) {
    let mut listeners = Vec::new();
    let mut admin = None;
    for part in line.split_whitespace() {
        if let Some(l) = part.strip_prefix("listeners=") {
            for item in l.split(',') {
                let (name, addr) = item.split_once('@').unwrap();
                listeners.push((name.to_string(), addr.parse().unwrap()));
            }
        } else if let Some(a) = part.strip_prefix("admin=") {
            admin = Some(a.parse().unwrap());
        }
    }
    (listeners, admin.expect("admin address in ready line"))
}

/// A demo upstream in this process on a free port.
pub async fn backend(name: &str, latency_ms: f64) -> Arc<DemoUpstream> {
    let u = DemoUpstream::new(
        name,
        "127.0.0.1:0".parse().unwrap(),
        DemoSettings::with_latency(latency_ms, 0.0),
        1,
    );
    u.start().await.unwrap();
    u
}

pub fn endpoints_toml(backends: &[Arc<DemoUpstream>], weights: Option<&[u32]>) -> String {
    let items: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| match weights {
            Some(w) => format!("{{ address = \"{}\", weight = {} }}", b.addr(), w[i]),
            None => format!("\"{}\"", b.addr()),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// Config with one cluster `backend` and one catch-all route `all`.
pub fn simple_config(endpoints: &str, balancer: &str, extra_cluster: &str, extra: &str) -> String {
    format!(
        r#"
[proxy]
workers = 2
seed = 7

[admin]
listen = "127.0.0.1:0"

[telemetry]
tick = "200ms"

[[listeners]]
name = "main"
listen = "127.0.0.1:0"

[clusters.backend]
endpoints = {endpoints}
balancer = "{balancer}"
{extra_cluster}

{extra}

[[routes]]
name = "all"
cluster = "backend"
"#
    )
}

/// [`simple_config`] with `backends` (weight 1) balanced round robin, nothing else.
pub fn round_robin_config(backends: &[Arc<DemoUpstream>]) -> String {
    simple_config(&endpoints_toml(backends, None), "round_robin", "", "")
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(HttpConnector::new())
}

pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

pub async fn send(client: &HttpClient, req: http::Request<Full<Bytes>>) -> Result<Reply, String> {
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

pub async fn get(client: &HttpClient, url: &str) -> Result<Reply, String> {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(client, req).await
}

pub async fn post_json(client: &HttpClient, url: &str, body: &str, method: &str) -> Reply {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send(client, req).await.unwrap()
}

/// Load result: statuses seen and failures (transport errors).
#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    pub ok: u64,
    pub non_2xx: Vec<(u16, String)>,
    pub errors: Vec<String>,
}

impl LoadResult {
    pub fn failed(&self) -> u64 {
        (self.non_2xx.len() + self.errors.len()) as u64
    }
}

/// Send GETs to `url` from `concurrency` tasks until `stop` is set or `max` requests are sent.
pub async fn load(
    client: HttpClient,
    url: String,
    concurrency: usize,
    max: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> LoadResult {
    use std::sync::atomic::{AtomicU64, Ordering};
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, sent, stop) = (client.clone(), url.clone(), sent.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = LoadResult::default();
            while !stop.load(Ordering::Relaxed) && sent.fetch_add(1, Ordering::Relaxed) < max {
                match get(&client, &url).await {
                    Ok(rep) if (200..300).contains(&rep.status) => r.ok += 1,
                    Ok(rep) => r
                        .non_2xx
                        .push((rep.status, String::from_utf8_lossy(&rep.body).into_owned())),
                    Err(e) => r.errors.push(e),
                }
            }
            r
        }));
    }
    let mut total = LoadResult::default();
    for t in tasks {
        let r = t.await.unwrap();
        total.ok += r.ok;
        total.non_2xx.extend(r.non_2xx);
        total.errors.extend(r.errors);
    }
    total
}

/// Poll `f` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// What one paced request saw: when it was sent (since the start), its index, its status
/// (0: a transport error) and how long the answer took.
#[derive(Debug, Clone)]
pub struct Shot {
    pub at: Duration,
    pub n: u64,
    pub status: u16,
    pub latency: Duration,
    pub detail: String,
}

/// Open-loop load: GET `url` at `rate` requests/s for `duration`, each request on its own task
/// (a slow answer does not slow the sender down). `during(elapsed)` runs on the sender's task
/// every 10 ms, for fault injection at chosen times.
pub async fn paced<F: FnMut(Duration)>(
    client: HttpClient,
    url: String,
    rate: f64,
    duration: Duration,
    during: F,
) -> Vec<Shot> {
    let make = move |_| {
        http::Request::get(&url)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    paced_with(client, rate, duration, make, during).await
}

/// [`paced`] with request number `n` built by `make(n)`.
pub async fn paced_with<M, F>(
    client: HttpClient,
    rate: f64,
    duration: Duration,
    make: M,
    mut during: F,
) -> Vec<Shot>
where
    M: Fn(u64) -> http::Request<Full<Bytes>>,
    F: FnMut(Duration),
{
    let shots = Arc::new(std::sync::Mutex::new(Vec::new()));
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut next = start;
    let mut last_hook = start;
    let mut tasks = Vec::new();
    let mut n = 0u64;
    while next < start + duration {
        let now = Instant::now();
        if now < next {
            tokio::time::sleep_until(next.into()).await;
        }
        if last_hook.elapsed() >= Duration::from_millis(10) {
            during(start.elapsed());
            last_hook = Instant::now();
        }
        let (client, shots) = (client.clone(), shots.clone());
        let at = next - start;
        let req = make(n);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let r = send(&client, req).await;
            let latency = sent.elapsed();
            let shot = match r {
                Ok(r) => Shot {
                    at,
                    n,
                    status: r.status,
                    latency,
                    detail: if r.status == 200 {
                        String::new()
                    } else {
                        String::from_utf8_lossy(&r.body).chars().take(300).collect()
                    },
                },
                Err(e) => Shot {
                    at,
                    n,
                    status: 0,
                    latency,
                    detail: e,
                },
            };
            shots.lock().unwrap().push(shot);
        }));
        next += period;
        n += 1;
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut v = std::mem::take(&mut *shots.lock().unwrap());
    v.sort_by_key(|s| s.at);
    v
}

/// The `q` quantile (0..=1) of some latencies.
pub fn quantile(mut v: Vec<Duration>, q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// A private `redis-server` on a free port (never the shared 6379), killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = RedisServer { child: None, port };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Start (again) on the same port, and wait until it accepts connections.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `vivremotion demo-upstream` in its own process, killed on drop.
pub struct UpstreamProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl UpstreamProcess {
    pub fn start(name: &str, latency_ms: f64) -> UpstreamProcess {
        Self::start_with(name, latency_ms, &[])
    }

    /// With more `demo-upstream` arguments, e.g. `["--max-concurrent", "10"]`.
    pub fn start_with(name: &str, latency_ms: f64, args: &[&str]) -> UpstreamProcess {
        let mut child = Command::new(BIN)
            .args(["demo-upstream", "--listen", "127.0.0.1:0", "--name", name])
            .args(["--latency-ms", &latency_ms.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        // "ready demo-upstream NAME@ADDR"
        let addr = line
            .trim()
            .rsplit('@')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("demo-upstream did not start: {line:?}"));
        UpstreamProcess { child, addr }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for UpstreamProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
