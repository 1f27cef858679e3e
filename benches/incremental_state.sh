#!/usr/bin/env bash
# What a checkpoint costs when little of a large keyed state changes: the state_churn
# example loads KEYS keys of 240-byte values (4M keys: about 1 GiB of encoded state) at
# 2 worker threads, then rewrites 1% of the keys per second for SECONDS seconds, with 1 s
# exactly-once checkpoints in a local directory. The figures of the run come from the
# final metrics the job writes when it ends (--metrics-file):
#
# - bytes of parts uploaded per completed checkpoint, against the state's size;
# - the barrier's synchronous copy and encoding (weir_checkpoint_sync_seconds), and the
#   barrier to the last part and the last part to the manifest (their histograms: mean,
#   and the p99 as the upper bound of its bucket);
# - the restore of the last checkpoint: a second run that restores it and reads nothing
#   more, from its "restoring" log line to "the run ended", against `cat` of the same
#   part files into /dev/null (warm page cache).
#
#   cargo build --release --bin weir --example state_churn
#   benches/incremental_state.sh [KEYS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${1:-4000000}
SECS=${2:-60}
BIN=target/release/examples/state_churn
[ -x "$BIN" ] || { echo "build first: cargo build --release --bin weir --example state_churn" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; jobs -p | xargs -r kill 2>/dev/null || true' EXIT
job=(--keys "$KEYS" --seconds "$SECS" --output "$WORK/out" --checkpoint-dir "$WORK/chk"
  --checkpoint-interval-ms 1000 --workers 2 --log-format json)

start=$(date +%s.%N)
RUST_LOG=info "$BIN" "${job[@]}" --metrics-file "$WORK/metrics.txt" 2>"$WORK/run.log" >/dev/null ||
  { echo "the run failed:" >&2; tail -20 "$WORK/run.log" >&2; exit 1; }
end=$(date +%s.%N)
echo "run: $KEYS keys, $SECS s of 1% rewrites per second, $(echo "$end - $start" | bc) s wall"

# The restore of the newest checkpoint, and a bare read of its part files.
latest=$(target/release/weir checkpoints list --checkpoint-dir "$WORK/chk" --job state_churn --json |
  python3 -c 'import json,sys; print(max(c["epoch"] for c in json.load(sys.stdin) if c["status"] == "complete"))')
RUST_LOG=info "$BIN" --keys "$KEYS" --seconds 0 --output "$WORK/out" --checkpoint-dir "$WORK/chk" \
  --checkpoint-interval-ms 1000 --workers 2 --log-format json --restore "$latest" \
  2>"$WORK/restore.log" >/dev/null || { echo "the restore failed:" >&2; tail -20 "$WORK/restore.log" >&2; exit 1; }
parts=$(find "$WORK/chk/state_churn" -path "*chk-*$latest/*" -type f)
bare_start=$(date +%s.%N)
# shellcheck disable=SC2086
cat $parts >/dev/null
bare=$(echo "$(date +%s.%N) - $bare_start" | bc)
# shellcheck disable=SC2086
part_bytes=$(cat $parts | wc -c)

python3 - "$WORK/metrics.txt" "$WORK/restore.log" "$bare" "$part_bytes" <<'EOF'
import json, re, sys
from datetime import datetime

samples = {}
buckets = {}
for line in open(sys.argv[1]):
    if line.startswith("#") or not line.strip():
        continue
    series, value = line.rsplit(" ", 1)
    name = series.split("{", 1)[0]
    value = float(value)
    m = re.search(r'le="([^"]+)"', series)
    if name.endswith("_bucket") and m:
        buckets.setdefault(name[: -len("_bucket")], []).append((float(m.group(1)), value))
    else:
        samples[name] = samples.get(name, 0.0) + value

def p99(hist):
    pts = sorted(buckets.get(hist, []))
    total = samples.get(hist + "_count", 0)
    for le, n in pts:
        if n >= 0.99 * total:
            return le
    return float("nan")

def mean(hist):
    n = samples.get(hist + "_count", 0)
    return samples.get(hist + "_sum", 0) / n if n else float("nan")

done = samples.get("weir_checkpoints_completed_total", 0)
uploaded = samples.get("weir_checkpoint_uploaded_bytes_total", 0)
state = samples.get("weir_checkpoint_size_bytes", 0)
print(f"checkpoints completed: {done:.0f}; state (last checkpoint's parts): {state / 2**20:.0f} MiB")
if done:
    print(f"uploaded per checkpoint: {uploaded / done / 2**20:.0f} MiB = {100 * uploaded / done / state:.0f}% of the state")
for hist, what in [
    ("weir_checkpoint_sync_seconds", "barrier's copy and encoding, per snapshot"),
    ("weir_checkpoint_snapshot_seconds", "barrier to last part reported"),
    ("weir_checkpoint_duration_seconds", "last part reported to manifest"),
]:
    print(f"{what}: mean {mean(hist):.3f} s, p99 <= {p99(hist)} s ({samples.get(hist + '_count', 0):.0f} observed)")

def at(line):
    return datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z", "+00:00")).timestamp()
restoring = ended = None
for line in open(sys.argv[2]):
    if '"restoring"' in line and restoring is None:
        restoring = at(line)
    if "the run ended" in line:
        ended = at(line)
bare, part_bytes = float(sys.argv[3]), int(sys.argv[4])
if restoring and ended:
    took = ended - restoring
    print(f"restore of {part_bytes / 2**20:.0f} MiB of parts: {took:.2f} s ({part_bytes / took / 1e9:.2f} GB/s); "
          f"cat of the same files: {bare:.2f} s ({part_bytes / bare / 1e9:.2f} GB/s)")
else:
    print("restore: no 'restoring' or 'the run ended' line in its log")
EOF
