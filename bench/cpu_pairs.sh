#!/usr/bin/env bash
# CPU per request, nginx against vivremotion, measured with perf stat's task-clock (ns
# resolution) instead of /proc ticks: the same fixed-rate load (oha, CPU 1) through each
# proxy (CPU 0, one worker) in alternating order, PAIRS times. The proxies, backend and
# load are those of ../shared/bench/proxybench.sh (1024-byte body, 32 connections).
#
# Usage: bench/cpu_pairs.sh [PAIRS] [RATE] [SECONDS]   (needs nginx, perf, python3)
# BIN=path/to/vivremotion overrides target/release/vivremotion.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-6} RATE=${2:-5000} DUR=${3:-5}
BIN=${BIN:-$PWD/target/release/vivremotion}
OHA=${OHA:-$(command -v oha || echo ../shared/tools/bin/oha)}
W=$(mktemp -d)
trap 'for p in $(cat $W/pids 2>/dev/null); do kill $p 2>/dev/null || true; done; rm -rf $W' EXIT
chmod 755 "$W"
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
cat > $W/backend.conf <<C
worker_processes 1; daemon off; pid $W/backend.pid; error_log $W/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18080 reuseport; location / { default_type text/plain; return 200 '$BODY'; } } }
C
cat > $W/nginx.conf <<C
worker_processes 1; daemon off; pid $W/nginx.pid; error_log $W/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream be { server 127.0.0.1:18080; keepalive 128; }
  server { listen 127.0.0.1:18081; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
taskset -c 1 nginx -c $W/backend.conf -p $W & echo $! >> $W/pids
wait_port 18080
one() { # name cmd...
  local name=$1; shift
  taskset -c 0 "$@" > $W/$name.log 2>&1 & local pid=$!
  wait_port 18081
  taskset -c 1 "$OHA" -z 2s -c 32 -q "$RATE" --no-tui --output-format json http://127.0.0.1:18081/ > /dev/null # warm-up
  # every thread of every process of the proxy (nginx: master and worker)
  local pids; pids=$(pgrep -d, -P "$pid" || true); pids=${pids:+$pids,}$pid
  perf stat -x, -e task-clock -p "$pids" -o $W/$name.perf -- \
    taskset -c 1 "$OHA" -z "${DUR}s" -c 32 -q "$RATE" --no-tui --output-format json http://127.0.0.1:18081/ > $W/$name.json
  kill "$pid"; wait "$pid" 2>/dev/null || true
  while (exec 3<>/dev/tcp/127.0.0.1/18081) 2>/dev/null; do sleep 0.1; done
  python3 - "$name" $W/$name.perf $W/$name.json <<'PY'
import json, sys
name, perf, oha = sys.argv[1:4]
ms = next(float(l.split(",")[0]) for l in open(perf) if "task-clock" in l)
n = sum(json.load(open(oha)).get("statusCodeDistribution", {}).values())
print(f"{name}\t{n}\t{ms:.1f}\t{ms * 1e3 / max(n, 1):.2f}")
PY
}
printf "name\trequests\ttask_clock_ms\tcpu_us_per_req\n"
ROWS=$W/rows
for i in $(seq 1 "$PAIRS"); do
  if (( i % 2 )); then
    one nginx nginx -c $W/nginx.conf -p $W | tee -a $ROWS
    one vivremotion "$BIN" proxy --config bench/proxybench.toml | tee -a $ROWS
  else
    one vivremotion "$BIN" proxy --config bench/proxybench.toml | tee -a $ROWS
    one nginx nginx -c $W/nginx.conf -p $W | tee -a $ROWS
  fi
done
python3 - $ROWS <<'PY'
import statistics, sys
by = {}
for l in open(sys.argv[1]):
    f = l.split("\t"); by.setdefault(f[0], []).append(float(f[3]))
for k, v in sorted(by.items()):
    print(f"median CPU µs/request {k}: {statistics.median(v):.2f} over {len(v)} runs: {v}")
if len(by) == 2:
    pairs = list(zip(by["nginx"], by["vivremotion"]))
    below = sum(1 for a, b in pairs if b <= a)
    print(f"vivremotion vs nginx: {100 * (statistics.median(by['vivremotion']) / statistics.median(by['nginx']) - 1):+.1f} %; at or below nginx in {below} of {len(pairs)} pairs")
PY
