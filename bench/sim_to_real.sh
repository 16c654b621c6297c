#!/usr/bin/env bash
# Sim-to-real (issue 14): the simulator's prediction against the live proxy on the same set-up.
#  1. Slowdown: tests/resilience.rs `a_tenfold_slowdown_moves_traffic_away_within_five_seconds`
#     (three 5 ms upstreams, 2 000 requests/s paced, one slowed 10x at 2 s) prints the slowed
#     upstream's share from 6 s to 8 s; the scenario `sim-to-real-slowdown` mirrors it.
#  2. Overload: tests/admission.rs `under_overload_critical_keeps_its_goodput` (one upstream
#     serving 10 at once, 20 ms each, offered 1 500/s as 20/60/20, concurrency limit 10) prints
#     each class's success; the scenario `sim-to-real-overload` mirrors it.
# Both live tests run in release; the simulations over seeds 1..5 (median).
# Usage: bench/sim_to_real.sh [RUNS]   (live repetitions, default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build --release --quiet
cargo test --release --quiet --test resilience --test admission --no-run 2>/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in $(seq 1 "$runs"); do
  cargo test --release --quiet --test resilience a_tenfold_slowdown -- --nocapture 2>&1 \
    | grep -o 'slow share [0-9.]*' | awk '{print $3}' >> "$tmp/live_share"
  cargo test --release --quiet --test admission under_overload -- --nocapture 2>&1 \
    | grep '^with shedding' >> "$tmp/live_overload"
done
./target/release/vivremotion sim run sim-to-real-slowdown --policies static --seeds 1..5 --out "$tmp/slow" --no-plots >/dev/null
./target/release/vivremotion sim run sim-to-real-overload --policies static --seeds 1..5 --out "$tmp/over" --no-plots >/dev/null
python3 - "$tmp" <<'PY'
import json, re, statistics, sys
tmp = sys.argv[1]
live = [float(x) for x in open(f"{tmp}/live_share").read().split()]
r = json.load(open(f"{tmp}/slow/results.json"))
# results.json keeps the first seed's series: the share over the windows ending in (6 s, 8 s].
slow, total = 0, 0
for p in r["series"]["static"]:
    if 6.0 < p["t_s"] <= 8.0 + 1e-9:
        for a, n in p["tries"].items():
            total += n
            if a == "127.0.0.1:9003":
                slow += n
sim_share = 100.0 * slow / max(total, 1)
lm = statistics.median(live)
print(f"slowdown: slowed upstream's share from 6 s to 8 s")
print(f"  live proxy  {', '.join(f'{x:.1f}' for x in live)} % (median {lm:.1f} %)")
print(f"  simulator   {sim_share:.1f} % (seed 1)")
print(f"  gap         {sim_share - lm:+.1f} points (target: within 3)")

def parse(line):
    out = {}
    for c, ok, p99, unit in re.findall(r"(critical|default|sheddable) ([0-9.]+) %(?: ok)? p99 ([0-9.]+)(ns|µs|ms|s)", line):
        scale = {"ns": 1e-6, "µs": 0.001, "ms": 1.0, "s": 1000.0}[unit]
        out[c] = (float(ok), float(p99) * scale)
    return out
lives = [parse(l) for l in open(f"{tmp}/live_overload") if l.strip()]
o = json.load(open(f"{tmp}/over/results.json"))
runs = o["runs"]["static"]
def sim(c):
    oks = [100.0 * r["ok"].get(c, 0) / max(1, r["ok"].get(c, 0) + r["shed"].get(c, 0) + r["limited"].get(c, 0)) for r in runs]
    p99 = [r["class_p99_ms"].get(c, 0.0) for r in runs]
    return statistics.median(oks), statistics.median(p99)
print("overload: success (100 - shed share) and p99 by class")
for c in ["critical", "default", "sheddable"]:
    lv = [l[c] for l in lives if c in l]
    lok = statistics.median([x[0] for x in lv]) if lv else float("nan")
    lp = statistics.median([x[1] for x in lv]) if lv else float("nan")
    sok, sp = sim(c)
    gap_p99 = f"{100 * (sp - lp) / lp:+.0f} %" if lp > 0 else "n/a"
    print(f"  {c:<9} live {lok:6.2f} % ok, p99 {lp:6.1f} ms | sim {sok:6.2f} % ok, p99 {sp:6.1f} ms | gap {sok - lok:+.2f} points, p99 {gap_p99}")
PY
