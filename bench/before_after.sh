#!/usr/bin/env bash
# Before/after proxy overhead: the release binary of BASE (a git revision) against HEAD's
# (committed, so edits in progress cannot leak into the measurement), with nginx in the same
# runs, through ../shared/bench/proxybench.sh; PAIRS runs with the order of the two
# alternating. Prints every row and the medians of CPU µs/request.
#
# Usage: bench/before_after.sh BASE [PAIRS] [proxybench options, e.g. -d 5]
# Needs what bench/proxy.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: bench/before_after.sh BASE [PAIRS] [-d SECONDS]}
PAIRS=${2:-5}
shift $(( $# >= 2 ? 2 : 1 ))
HARNESS=${PROXYBENCH:-../shared/bench/proxybench.sh}
WT=$(mktemp -d)
WT2=$(mktemp -d)
trap 'for w in "$WT" "$WT2"; do git worktree remove --force "$w" >/dev/null 2>&1 || true; rm -rf "$w"; done' EXIT
git worktree add --detach "$WT" "$BASE" >/dev/null
git worktree add --detach "$WT2" HEAD >/dev/null
TARGETS=${TMPDIR:-/tmp}
# REUSE=1: measure the binaries the last run built (no rebuild).
if [ "${REUSE:-0}" != 1 ]; then
  (cd "$WT" && CARGO_TARGET_DIR="$TARGETS/vm-before-target" cargo build --release --quiet)
  (cd "$WT2" && CARGO_TARGET_DIR="$TARGETS/vm-after-target" cargo build --release --quiet)
fi
BEFORE=$TARGETS/vm-before-target/release/vivremotion
AFTER=$TARGETS/vm-after-target/release/vivremotion
CONF=$PWD/bench/proxybench.toml
ROWS=$(mktemp)
for i in $(seq 1 "$PAIRS"); do
  if (( i % 2 )); then order=("before=$BEFORE proxy --config $CONF" "after=$AFTER proxy --config $CONF")
  else order=("after=$AFTER proxy --config $CONF" "before=$BEFORE proxy --config $CONF"); fi
  bash "$HARNESS" "$@" nginx "${order[@]}" | tee -a "$ROWS"
done
python3 - "$ROWS" "$BASE" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip() and not l.startswith("name")]
by = {}
for r in rows:
    try:
        by.setdefault(r[0], []).append(float(r[6]))
    except (IndexError, ValueError):
        pass
med = {k: statistics.median(v) for k, v in by.items()}
for k in sorted(med):
    print(f"median CPU µs/request {k}: {med[k]:.2f} over {len(by[k])} runs: {by[k]}")
if "before" in med and "after" in med:
    print(f"after vs before ({sys.argv[2]}): {100 * (med['after'] / med['before'] - 1):+.1f} %")
if "nginx" in med and "after" in med:
    print(f"after vs nginx: {100 * (med['after'] / med['nginx'] - 1):+.1f} %")
PY
