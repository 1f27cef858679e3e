#!/usr/bin/env bash
# What a checkpoint costs when little of a large keyed state changes: the state_churn
# example loads KEYS keys of 240-byte values (4M keys: about 1 GiB of encoded state) at
# 2 worker threads, then rewrites 1% of the keys per second for SECONDS seconds, with 1 s
# exactly-once checkpoints. MODE is `incremental` (the default: deltas and staggered new
# bases) or `whole` (--incremental-checkpoints false: every changed worker's whole state
# per checkpoint); STORE is `dir` (a local directory) or `s3` (the test S3 server of
# scripts/services.sh; run `eval "$(scripts/services.sh env)"` first). The figures come
# from the final metrics the job writes when it ends (--metrics-file):
#
# - bytes of parts uploaded per completed checkpoint, new bases included, against the
#   state's size (the sum of the workers' newest bases, weir_state_bytes);
# - the barrier's synchronous copy and encoding (weir_checkpoint_sync_seconds), and the
#   barrier to the last part and the last part to the manifest (their histograms: mean,
#   and the p99 as the upper bound of its bucket);
# - the restore of the last checkpoint: a second run that restores it and reads nothing
#   more, from the process's start to its "the run ended" log line (and the part of it
#   after its "restoring" line, once every part is read and checked), and the time its
#   "state restored" line reports (after `sync`, from a warm page cache); on a
#   directory, against a bare read of the same part files into fresh memory (each file
#   into a buffer of its own, all kept), and the read amplification:
#   the bytes the restore read (its "state restored" line's parts_bytes: of a packed
#   part, the header, the index and the sections no newer base replaces), over the
#   state's size, beside the bytes of the parts the manifest lists.
#
#   cargo build --release --bin weir --example state_churn
#   benches/incremental_state.sh [KEYS] [SECONDS] [MODE] [STORE]
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${1:-4000000}
SECS=${2:-60}
MODE=${3:-incremental}
STORE=${4:-dir}
# STATE_CHURN_BIN runs another build of the example (a before-and-after comparison).
BIN=${STATE_CHURN_BIN:-target/release/examples/state_churn}
[ -x "$BIN" ] || { echo "build first: cargo build --release --bin weir --example state_churn" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; jobs -p | xargs -r kill 2>/dev/null || true' EXIT
case "$MODE" in
  incremental) incremental=true ;;
  whole) incremental=false ;;
  *) echo "MODE is incremental or whole, not $MODE" >&2; exit 2 ;;
esac
case "$STORE" in
  dir) CHK="$WORK/chk" ;;
  s3)
    : "${WEIR_TEST_S3_ENDPOINT:?run eval \"\$(scripts/services.sh env)\" first}"
    export AWS_ENDPOINT=$WEIR_TEST_S3_ENDPOINT AWS_ACCESS_KEY_ID=$WEIR_TEST_S3_ACCESS_KEY_ID \
      AWS_SECRET_ACCESS_KEY=$WEIR_TEST_S3_SECRET_ACCESS_KEY AWS_REGION=us-east-1
    CHK="s3://$WEIR_TEST_S3_BUCKET/bench/state-$$-$(date +%s)" ;;
  *) echo "STORE is dir or s3, not $STORE" >&2; exit 2 ;;
esac
# STATE_CHURN_ARGS adds options of the example (e.g. --bytes-values).
job=(--keys "$KEYS" --output "$WORK/out" --checkpoint-dir "$CHK" --checkpoint-interval-ms 1000
  --workers 2 --log-format json --incremental-checkpoints "$incremental" ${STATE_CHURN_ARGS:-})

start=$(date +%s.%N)
# Debug lines of the snapshots: each one's synchronous time, and what its barrier did.
RUST_LOG=info,weir_runtime::snapshot=debug,weir_runtime::state=debug "$BIN" "${job[@]}" --seconds "$SECS" --metrics-file "$WORK/metrics.txt" 2>"$WORK/run.log" >/dev/null ||
  { echo "the run failed:" >&2; tail -20 "$WORK/run.log" >&2; exit 1; }
end=$(date +%s.%N)
echo "run ($MODE, $STORE): $KEYS keys, $SECS s of 1% rewrites per second, $(echo "$end - $start" | bc) s wall"

# The restore of the newest checkpoint, and a bare read of its part files.
latest=$(target/release/weir checkpoints list --checkpoint-dir "$CHK" --job state_churn --json |
  python3 -c 'import json,sys; print(max(c["epoch"] for c in json.load(sys.stdin) if c["status"] == "complete"))')
# The run's parts are written back to disk first, so that the restore reads a warm page
# cache without competing with that writeback.
sync
restore_start=$(date +%s.%N)
RUST_LOG=info "$BIN" "${job[@]}" --seconds 0 --restore "$latest" \
  2>"$WORK/restore.log" >/dev/null || { echo "the restore failed:" >&2; tail -20 "$WORK/restore.log" >&2; exit 1; }
bare=nan
part_bytes=0
if [ "$STORE" = dir ]; then
  manifest=$(printf '%s/state_churn/chk-%020d/_MANIFEST' "$CHK" "$latest")
  # The manifest is a 20-byte header and JSON: the parts it lists, wherever they are.
  mapfile -t parts < <(python3 -c 'import json,sys
m = json.loads(open(sys.argv[1], "rb").read()[20:])
for p in m["parts"]:
    print(sys.argv[2] + "/" + p["path"])' "$manifest" "$CHK")
  # A bare read into fresh memory: every file read whole into a buffer of its own, all
  # kept until the end (a buffer freed and reused would not be fresh memory).
  read -r bare part_bytes < <(python3 -c 'import sys, time
keep, t = [], time.monotonic()
for p in sys.argv[1:]:
    with open(p, "rb") as f:
        keep.append(f.read())
print(time.monotonic() - t, sum(map(len, keep)))' "${parts[@]}")
fi

python3 - "$WORK/metrics.txt" "$WORK/restore.log" "$bare" "$part_bytes" "$WORK/run.log" "$restore_start" <<'EOF'
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
state = samples.get("weir_state_bytes", 0)
print(f"checkpoints completed: {done:.0f}; state (the workers' newest bases): {state / 2**20:.0f} MiB")
if done:
    print(f"uploaded per checkpoint: {uploaded / done / 2**20:.0f} MiB = {100 * uploaded / done / state:.0f}% of the state")
for hist, what in [
    ("weir_checkpoint_sync_seconds", "barrier's copy and encoding, per snapshot"),
    ("weir_checkpoint_snapshot_seconds", "barrier to last part reported"),
    ("weir_checkpoint_duration_seconds", "last part reported to manifest"),
]:
    print(f"{what}: mean {mean(hist):.3f} s, p99 <= {p99(hist)} s ({samples.get(hist + '_count', 0):.0f} observed)")

# Per checkpoint, from the run's "checkpoint complete" lines: bytes uploaded (its own
# directory's objects) and barrier to manifest.
ups, b2m = [], []
for line in open(sys.argv[5]):
    if "checkpoint complete" not in line:
        continue
    rec = json.loads(line)
    f = rec.get("fields", rec)
    ups.append(int(f.get("uploaded", 0)))
    if f.get("barrier_to_manifest_ms") is not None:
        b2m.append(int(f["barrier_to_manifest_ms"]))

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

if ups and state:
    later = ups[1:]
    print(f"uploaded per checkpoint after the first (whose part holds the whole load): median {pct(later, 0.5) / 2**20:.1f} MiB "
          f"= {100 * pct(later, 0.5) / state:.2f}%, mean {sum(later) / max(1, len(later)) / 2**20:.1f} MiB "
          f"= {100 * sum(later) / max(1, len(later)) / state:.2f}%, max {max(later, default=0) / 2**20:.1f} MiB of the state")
if b2m:
    print(f"barrier to manifest: median {pct(b2m, 0.5)} ms, p99 {pct(b2m, 0.99)} ms, max {max(b2m)} ms ({len(b2m)} checkpoints)")
# The second half of the run's checkpoints, well after the load: the steady state.
half = len(ups) // 2
if half and state:
    tail_ups, tail_b2m = ups[half:], b2m[half:]
    print(f"second half ({len(tail_ups)} checkpoints): uploaded mean {100 * sum(tail_ups) / len(tail_ups) / state:.2f}%, "
          f"max {100 * max(tail_ups) / state:.2f}% of the state; barrier to manifest median {pct(tail_b2m, 0.5)} ms, "
          f"p99 {pct(tail_b2m, 0.99)} ms, max {max(tail_b2m, default=0)} ms")

# The slowest barriers, from the debug lines: each snapshot's synchronous time, and
# what its barrier did (the "sealed" line a worker logs just before it).
syncs, seals = [], {}
for line in open(sys.argv[5]):
    if "snapshot's synchronous part" in line or "sealed a snapshot" in line:
        rec = json.loads(line)
        f = rec.get("fields", rec)
        worker = (rec.get("threadId") or rec.get("threadName") or "?")
        if "sealed a snapshot" in line:
            seals[worker] = {k: v for k, v in f.items() if k not in ("message", "state")}
        else:
            syncs.append((float(f["seconds"]), int(f["epoch"]), f.get("operator"), seals.pop(worker, None)))
if syncs:
    # Exact figures per operator (the histogram above mixes in the sources' tiny
    # snapshots and rounds up to its buckets).
    for op in sorted({o for _, _, o, _ in syncs}, key=str):
        xs = [s for s, _, o, _ in syncs if o == op]
        print(f"barrier's synchronous part of {op}: {len(xs)} snapshots, median {1000 * pct(xs, 0.5):.1f} ms, "
              f"p99 {1000 * pct(xs, 0.99):.1f} ms, max {1000 * max(xs):.1f} ms")
    syncs.sort(reverse=True)
    print(f"slowest barriers of {len(syncs)}:")
    for seconds, epoch, op, seal in syncs[:4]:
        print(f"  {1000 * seconds:.1f} ms: {op}, epoch {epoch}; {seal or 'no seal (a whole part)'}")

def at(line):
    return datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z", "+00:00")).timestamp()
restoring = ended = restored = read_bytes = None
for line in open(sys.argv[2]):
    if '"restoring"' in line and restoring is None:
        restoring = at(line)
    if '"state restored' in line:
        rec = json.loads(line)
        restored = rec.get("fields", rec)["seconds"]
        read_bytes = rec.get("fields", rec).get("parts_bytes")
    if "the run ended" in line:
        ended = at(line)
bare, part_bytes = float(sys.argv[3]), int(sys.argv[4])
if restoring and ended:
    took = ended - float(sys.argv[6])
    print(f"restore of {state / 2**20:.0f} MiB of state: {took:.2f} s ({state / took / 1e9:.2f} GB/s of state), "
          f"process start to the run's end; of which {ended - restoring:.2f} s after the parts were read and checked")
    if restored:
        print(f"  state restored {restored:.2f} s after the run started ({state / restored / 1e9:.2f} GB/s of state)")
    if read_bytes is not None:
        print(f"  bytes read by the restore: {read_bytes / 2**20:.0f} MiB, read amplification {read_bytes / state:.2f}")
    if part_bytes:
        print(f"  parts listed: {part_bytes / 2**20:.0f} MiB ({part_bytes / state:.2f} of the state); "
              f"a bare read of the same files into fresh memory: {bare:.2f} s ({part_bytes / bare / 1e9:.2f} GB/s), "
              f"{state / bare / 1e9:.2f} GB/s of state")
else:
    print("restore: no 'restoring' or 'the run ended' line in its log")
EOF
