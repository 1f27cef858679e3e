#!/usr/bin/env bash
# What the first checkpoints after a restore at another parallelism cost: the
# state_churn example (keyed state, 240-byte values, 1% of the keys rewritten per second
# after the load) runs at BEFORE workers for SECS seconds, then restores its latest
# checkpoint at AFTER workers and runs for 12 more seconds. Prints, for the first four
# checkpoints of the restored run, the bytes uploaded, the bytes the manifest lists, and
# barrier to manifest; and the restored run's time at barriers
# (weir_checkpoint_sync_seconds).
#
#   cargo build --release --all-features --example state_churn
#   benches/rescale_state.sh [KEYS] [SECS] [BEFORE] [AFTER]   (2000000 25 2 3)
#
# STATE_CHURN_BIN picks the binary, to compare builds.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${1:-2000000}
SECS=${2:-25}
BEFORE=${3:-2}
AFTER=${4:-3}
BIN=${STATE_CHURN_BIN:-target/release/examples/state_churn}
[ -x "$BIN" ] || { echo "build first: cargo build --release --all-features --example state_churn" >&2; exit 1; }
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
common=(--keys "$KEYS" --output "$W/out" --checkpoint-dir "$W/chk" --checkpoint-interval-ms 1000 --log-format json)
RUST_LOG=info "$BIN" "${common[@]}" --workers "$BEFORE" --seconds "$SECS" --metrics-file "$W/m1.txt" 2>"$W/run1.log" >/dev/null ||
  { echo "the first run failed:" >&2; tail -20 "$W/run1.log" >&2; exit 1; }
# --seconds counts from the job's first epoch, so the restored run gets 12 more.
RUST_LOG=info "$BIN" "${common[@]}" --workers "$AFTER" --seconds "$((SECS + 12))" --restore latest \
  --metrics-file "$W/m2.txt" 2>"$W/run2.log" >/dev/null ||
  { echo "the restored run failed:" >&2; tail -20 "$W/run2.log" >&2; exit 1; }
echo "$KEYS keys, $BEFORE workers for $SECS s, restored at $AFTER workers ($BIN)"
echo "first checkpoints after the restore: epoch, uploaded MiB, listed MiB, barrier to manifest ms"
grep '"checkpoint complete"' "$W/run2.log" | head -4 | python3 -c '
import json, sys
for line in sys.stdin:
    f = json.loads(line)
    print(f["epoch"], round(f["uploaded"] / 2**20, 1), round(f["bytes"] / 2**20, 1), f.get("barrier_to_manifest_ms"))'
grep -E '^weir_checkpoint_sync_seconds_(sum|count)' "$W/m2.txt"
