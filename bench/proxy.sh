#!/usr/bin/env bash
# Proxy overhead, side by side: nginx, HAProxy and vivremotion in front of the same backend,
# each on the same pinned core with one worker, through ../shared/bench/proxybench.sh.
# Prints the harness's TSV rows on stdout and writes them to docs/benchmarks.md.
#
# Usage: bench/proxy.sh [-d SECONDS] [-r RATE] [-b BODY_BYTES]
# Needs: nginx, haproxy, wrk (apt-get install -y nginx haproxy wrk), oha (../shared/tools/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
HARNESS=${PROXYBENCH:-../shared/bench/proxybench.sh}
for t in nginx haproxy wrk taskset python3; do
  command -v "$t" >/dev/null || { echo "missing $t: apt-get install -y nginx haproxy wrk" >&2; exit 1; }
done
[ -x "$HARNESS" ] || { echo "missing $HARNESS" >&2; exit 1; }
cargo build --release --quiet
BIN=$PWD/target/release/vivremotion
CONF=$PWD/bench/proxybench.toml
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
bash "$HARNESS" "$@" nginx haproxy "vivremotion=$BIN proxy --config $CONF" | tee "$OUT"

DOC=docs/benchmarks.md
mkdir -p docs
[ -f "$DOC" ] || printf '# Benchmarks\n\n<!-- proxybench:start -->\n<!-- proxybench:end -->\n' > "$DOC"
python3 - "$DOC" "$OUT" "$*" <<'PY'
import datetime, platform, subprocess, sys
doc, out, args = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [l.rstrip("\n").split("\t") for l in open(out) if l.strip()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
ncpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
head = ["proxy", "saturation rps (wrk, 64 conns)", "p50 ms", "p99 ms", "p99.9 ms", "fixed-rate rps (oha)", "CPU µs / request", "statuses"]
lines = [
    "<!-- proxybench:start -->",
    "## Proxy overhead: nginx vs HAProxy vs vivremotion",
    "",
    f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {cpu}, {ncpu} cores, Linux {platform.release()}.",
    f"Command: `bench/proxy.sh {args}`".rstrip() + " (harness `../shared/bench/proxybench.sh`: backend nginx on CPU 1, "
    "proxy under test on CPU 0 with one worker, wrk and oha on CPU 1; latency from oha at a fixed rate, "
    "corrected for coordinated omission).",
    "",
    "| " + " | ".join(head) + " |",
    "|" + "---|" * len(head),
]
for r in rows[1:]:
    r = (r + [""] * len(head))[: len(head)]
    lines.append("| " + " | ".join(c.replace("|", "/") for c in r) + " |")
lines.append("<!-- proxybench:end -->")
text = open(doc).read()
start, end = text.find("<!-- proxybench:start -->"), text.find("<!-- proxybench:end -->")
if start < 0 or end < 0:
    text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
else:
    text = text[:start] + "\n".join(lines) + text[end + len("<!-- proxybench:end -->"):]
open(doc, "w").write(text)
PY
echo "wrote $DOC" >&2
