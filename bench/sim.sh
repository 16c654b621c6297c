#!/usr/bin/env bash
# Simulator speed (issue 14), on one core:
#  1. engine throughput: criterion bench `simulations/benches/engine.rs` (P2C peak-EWMA,
#     retries, a concurrency limit; 10 s of a 50 000/s Poisson stream per iteration, arrivals
#     prepared outside the timing), pinned with taskset;
#  2. a whole day of NASA July (13 July, per-second counts ×20 expanded to ~2.7 M arrivals),
#     wall time of `vivremotion sim run nasa-day` for one policy, loading and charts included.
# Usage: bench/sim.sh [CORE]   (default core 0). Results go into docs/benchmarks.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
core=${1:-0}
cargo build --release --quiet
cargo bench -p vivremotion-simulations --bench engine --no-run --quiet
echo "== engine throughput (criterion, core $core)"
taskset -c "$core" cargo bench -p vivremotion-simulations --bench engine 2>&1 | grep -E "time:|thrpt:"
echo "== NASA day, one policy (core $core)"
out=$(mktemp -d)
start=$(date +%s.%N)
taskset -c "$core" ./target/release/vivremotion sim run nasa-day --policies p2c-ewma --seeds 1 --out "$out" >/dev/null
end=$(date +%s.%N)
python3 -c "import json,sys; r=json.load(open('$out/results.json')); n=r['runs']['p2c-ewma'][0]['requests']; print(f'{n} requests, wall {float(sys.argv[2])-float(sys.argv[1]):.2f} s')" "$start" "$end"
rm -rf "$out"
