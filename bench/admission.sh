#!/usr/bin/env bash
# Admission control, measured with release binaries and oha (fixed rate, latency corrected
# for coordinated omission):
#
#  A. Cost of rate limiting: p50/p99 of a route with a local and a global (Redis) rate limit
#     vs the same route without limits, both at 5000 requests/s, alternating runs. The limits
#     are set far above the load so every request is admitted and only the check is measured.
#  B. Overload: one upstream that serves 10 requests at once, 20 ms each (capacity 500/s),
#     offered 3x its capacity as 20 % critical / 60 % default / 20 % sheddable (three oha
#     processes at once, x-priority from a trusted client), with a fixed concurrency limit, with
#     the adaptive limit, and with no limit at all.
#
# Writes the tables into docs/benchmarks.md between <!-- admission:start/end --> and prints them.
# Usage: bench/admission.sh [-d SECONDS]
# Needs: redis-server, python3, oha (../shared/tools/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=10
while getopts "d:" o; do case $o in d) DUR=$OPTARG ;; *) exit 2 ;; esac; done
OHA=${OHA:-../shared/tools/bin/oha}
for t in redis-server python3 "$OHA"; do
  command -v "$t" >/dev/null || [ -x "$t" ] || { echo "missing $t" >&2; exit 1; }
done
cargo build --release --quiet
BIN=$PWD/target/release/vivremotion
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

start_proxy() { # config file [cpu list] -> sets PROXY_PID, PORT
  local cfg=$1 cpus=${2:-0-$(( $(nproc) - 1 ))}
  taskset -c "$cpus" "$BIN" proxy --config "$cfg" >"$WORK/ready" 2>"$WORK/proxy.log" &
  PROXY_PID=$!; PIDS+=("$PROXY_PID")
  for _ in $(seq 200); do grep -q '^ready' "$WORK/ready" 2>/dev/null && break; sleep 0.05; done
  PORT=$(sed -n 's/.*listeners=[^@]*@127.0.0.1:\([0-9]*\).*/\1/p' "$WORK/ready")
  [ -n "$PORT" ] || { cat "$WORK/proxy.log" >&2; exit 1; }
}
stop_proxy() { kill "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true; }

oha_json() { # out url rate conns [header]
  local out=$1 url=$2 rate=$3 conns=$4; shift 4
  taskset -c "${OHA_CPUS:-0-$LAST}" "$OHA" -z "${DUR}s" -q "$rate" -c "$conns" --latency-correction --no-tui --output-format json "$@" "$url" >"$out"
}

REDIS_PORT=$(free_port)
# Part A pins the proxy (one worker) to CPU 0 and everything else to the last CPU, as
# ../shared/bench/proxybench.sh does, so the comparison is not drowned in scheduling noise.
LAST=$(( $(nproc) - 1 ))
taskset -c "$LAST" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
PIDS+=($!); wait_port "$REDIS_PORT"

# ---- A: cost of rate limiting ----------------------------------------------------------
# Backend: nginx `return 200` where installed (cheap, so the load generator's core is not the
# bottleneck), else a demo upstream.
UP_PORT=$(free_port)
if command -v nginx >/dev/null; then
  cat >"$WORK/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $WORK/nginx.pid; error_log $WORK/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok"; } } }
NGINX
  taskset -c "$LAST" nginx -c "$WORK/nginx.conf" -p "$WORK" &
  BACKEND="nginx"
else
  taskset -c "$LAST" "$BIN" demo-upstream --listen "127.0.0.1:$UP_PORT" --latency-ms 0 >/dev/null &
  BACKEND="demo-upstream"
fi
PIDS+=($!); wait_port "$UP_PORT"
echo "$BACKEND" >"$WORK/backend"
cat >"$WORK/a.toml" <<EOF
[proxy]
workers = 1
[admin]
listen = "127.0.0.1:0"
[[listeners]]
listen = "127.0.0.1:0"
[global_limits]
redis_url = "redis://127.0.0.1:$REDIS_PORT/0"
[clusters.b]
endpoints = ["127.0.0.1:$UP_PORT"]
[[routes]]
name = "limited"
cluster = "b"
match = { path_prefix = "/limited" }
rate_limits = [
  { name = "per-ip", key = ["client_ip"], rate = 1000000.0, burst = 100000 },
  { name = "shared", key = ["route"], rate = 1000000.0, burst = 100000, global = true },
]
[[routes]]
name = "plain"
cluster = "b"
EOF
start_proxy "$WORK/a.toml" 0
taskset -c "$LAST" "$OHA" -z 2s -q 5000 -c 32 --no-tui --output-format quiet "http://127.0.0.1:$PORT/plain" || true
PAIRS=6
for i in $(seq $PAIRS); do
  for r in plain limited; do
    OHA_CPUS=$LAST oha_json "$WORK/a-$r-$i.json" "http://127.0.0.1:$PORT/$r" 5000 32
  done
done
stop_proxy

# ---- B: overload ------------------------------------------------------------------------
CAP_PORT=$(free_port)
"$BIN" demo-upstream --listen "127.0.0.1:$CAP_PORT" --latency-ms 20 --max-concurrent 10 >/dev/null &
PIDS+=($!); wait_port "$CAP_PORT"
overload_cfg() { # concurrency line
  cat <<EOF
[proxy]
workers = 2
trusted_priority_from = ["127.0.0.1"]
[admin]
listen = "127.0.0.1:0"
[[listeners]]
listen = "127.0.0.1:0"
[clusters.b]
endpoints = ["127.0.0.1:$CAP_PORT"]
[[routes]]
name = "capped"
cluster = "b"
timeout = "2s"
retry = { retries = 0 }
$1
EOF
}
overload_cfg 'concurrency = { limit = 10, queue = 32, max_wait = "20ms" }' >"$WORK/b-fixed.toml"
overload_cfg 'concurrency = { limit = "adaptive", initial_limit = 10, min_limit = 2, max_limit = 200, queue = 32, max_wait = "20ms" }' >"$WORK/b-adaptive.toml"
overload_cfg '' >"$WORK/b-none.toml"
for mode in fixed adaptive none; do
  start_proxy "$WORK/b-$mode.toml"
  url="http://127.0.0.1:$PORT/x"
  oha_json "$WORK/b-$mode-unloaded.json" "$url" 150 16 -H "x-priority: critical"
  # Connection counts sized for the loaded latencies; beyond them oha's latency correction
  # accounts for the requests it could not send on time.
  oha_json "$WORK/b-$mode-critical.json" "$url" 300 64 -H "x-priority: critical" &
  c=$!
  oha_json "$WORK/b-$mode-default.json" "$url" 900 128 -H "x-priority: default" &
  d=$!
  oha_json "$WORK/b-$mode-sheddable.json" "$url" 300 64 -H "x-priority: sheddable" &
  s=$!
  wait $c $d $s
  curl -s "http://$(sed -n 's/.*admin=\([0-9.:]*\).*/\1/p' "$WORK/ready")/api/v1/limits" >"$WORK/b-$mode-limits.json" || true
  stop_proxy
done

python3 - "$WORK" "$DUR" <<'PY' | tee "$WORK/section.md"
import json, sys, os, datetime, platform, subprocess
work, dur = sys.argv[1], sys.argv[2]
def load(name):
    with open(os.path.join(work, name)) as f:
        return json.load(f)
def ms(j, p):
    v = (j.get("latencyPercentiles") or {}).get(p)
    return float("nan") if v is None else v * 1000
def ok_share(j):
    # Requests still in flight when oha's run ends are "aborted due to deadline": neither
    # answered nor refused, so they are left out.
    codes = j.get("statusCodeDistribution") or {}
    errs = {k: v for k, v in (j.get("errorDistribution") or {}).items() if "deadline" not in k}
    total = sum(codes.values()) + sum(errs.values())
    return (codes.get("200", 0) / total * 100) if total else float("nan"), total
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
ncpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
print("<!-- admission:start -->")
print("## Admission control")
print()
print(f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {cpu}, {ncpu} cores, Linux {platform.release()}. "
      f"Command: `bench/admission.sh -d {dur}` (release build, oha at a fixed rate with latency correction, "
      "everything on the same 2 cores, a private redis-server).")
print()
print("### Cost of a rate limit at 5000 requests/s")
print()
backend = open(os.path.join(work, "backend")).read().strip()
print(f"One proxy worker pinned to CPU 0; backend ({backend}), redis-server and oha on the other CPU. `limited` checks a local per-client-IP GCRA and a global limit leased from Redis "
      "(limits far above the load, so every request is admitted); `plain` has no limits. Alternating runs.")
print()
print("| run | route | p50 ms | p99 ms | added p99 ms |")
print("|---|---|---|---|---|")
import statistics
d50, d99 = [], []
i = 1
while os.path.exists(os.path.join(work, f"a-plain-{i}.json")):
    p, l = load(f"a-plain-{i}.json"), load(f"a-limited-{i}.json")
    d50.append(ms(l,'p50') - ms(p,'p50'))
    d99.append(ms(l,'p99') - ms(p,'p99'))
    print(f"| {i} | plain | {ms(p,'p50'):.3f} | {ms(p,'p99'):.3f} | |")
    print(f"| {i} | limited | {ms(l,'p50'):.3f} | {ms(l,'p99'):.3f} | {d99[-1]:+.3f} |")
    i += 1
print()
print(f"Median over {len(d99)} pairs: added p50 {statistics.median(d50):+.3f} ms, added p99 {statistics.median(d99):+.3f} ms "
      f"(single pairs move by ±{max(abs(x) for x in d99):.1f} ms: this VM's tail noise, in both directions).")
print()
print("### Overload: 3x capacity, 20 % critical / 60 % default / 20 % sheddable")
print()
print("Upstream: 10 requests at once, 20 ms each (500 requests/s). Offered 300 + 900 + 300 requests/s "
      "for the run's duration. Unloaded: critical alone at 150/s. Success: share of requests answered 200 "
      "(the rest: 503 shed, or 504 after the route's 2 s timeout without limits; requests still in flight when "
      "a run ends are left out).")
print()
def fails(j):
    codes = {k: v for k, v in (j.get("statusCodeDistribution") or {}).items() if k != "200"}
    errs = {k: v for k, v in (j.get("errorDistribution") or {}).items() if "deadline" not in k}
    parts = [f"{v}× {k}" for k, v in sorted(codes.items())] + [f"{v}× {k[:40]}" for k, v in errs.items()]
    return ", ".join(parts) or "none"
print("| concurrency limit | unloaded critical p99 ms | critical ok % | critical p99 ms | critical failures | default ok % | default p99 ms | sheddable ok % | limit at the end |")
print("|---|---|---|---|---|---|---|---|---|")
for mode in ("fixed", "adaptive", "none"):
    u = load(f"b-{mode}-unloaded.json")
    c, d, s = (load(f"b-{mode}-{k}.json") for k in ("critical", "default", "sheddable"))
    try:
        lim = load(f"b-{mode}-limits.json")["routes"][0]["concurrency"]
        lim = "—" if lim is None else f"{lim['limit']} ({lim['mode']})"
    except Exception:
        lim = "?"
    label = {"fixed": "fixed 10", "adaptive": "adaptive", "none": "none (no shedding)"}[mode]
    print(f"| {label} | {ms(u,'p99'):.1f} | {ok_share(c)[0]:.2f} | {ms(c,'p99'):.1f} | {fails(c)} | {ok_share(d)[0]:.2f} | {ms(d,'p99'):.1f} | {ok_share(s)[0]:.2f} | {lim} |")
print("<!-- admission:end -->")
PY

DOC=docs/benchmarks.md
python3 - "$DOC" "$WORK/section.md" <<'PY'
import re, sys
doc, sec = sys.argv[1], open(sys.argv[2]).read().strip()
text = open(doc).read() if __import__("os").path.exists(doc) else "# Benchmarks\n"
if "<!-- admission:start -->" in text:
    text = re.sub(r"<!-- admission:start -->.*?<!-- admission:end -->", lambda m: sec, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + sec + "\n"
open(doc, "w").write(text)
PY
