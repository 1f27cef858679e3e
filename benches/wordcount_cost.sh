#!/usr/bin/env bash
# Word count on file input at the COST of a hand-written single-threaded program: the
# wordcount example (weir's file source, flat_reduce_by_key, weir's transactional file sink)
# against `examples/wordcount_cost.rs count` (read lines, split on whitespace,
# HashMap<String, u64>, write the counts), on the same files, variants interleaved run by
# run:
#
#   baseline        the hand-written word count, one thread
#   baseline-jemalloc  the same, started with Debian's jemalloc preloaded
#                   (LD_PRELOAD=libjemalloc.so.2, package libjemalloc2): weir's binaries
#                   allocate with jemalloc, so this is the baseline on the same allocator
#   off-1w off-2w   weir, checkpointing off, 1 and 2 worker threads
#   eo-1w  eo-2w    weir exactly-once, 1 s checkpoints in a local directory
#   alo-1w alo-2w   weir at-least-once, 1 s checkpoints
#   off-2p eo-2p    weir, 2 processes x 1 worker over loopback TCP (--peers)
#
# Input: 2M lines, 7M words, 100k distinct words with Zipf-like frequencies (exponent 1),
# in 4 files, generated once (deterministically) into a temporary directory. Every run
# of every variant is checked: the newest count of every word in weir's committed output
# must equal the baseline's count, or the script fails. Prints per variant the medians
# of wall time, CPU time (user + sys, summed over the processes) and peak RSS (for
# 2 processes, the sum of both peaks), and the ratios the targets are stated in.
#
#   cargo build --release --bin weir --example wordcount --example wordcount_cost
#   benches/wordcount_cost.sh [RUNS] [VARIANT...]     (RUNS defaults to 3)
#
# WORDCOUNT_LINES changes the 2M lines, WORDCOUNT_DISTINCT the 100k distinct words (how
# large the state grows); WORDCOUNT_KEEP=1 keeps the temporary directory.
# The wordcount example reads batches of lines (`files::line_batches`) and counts with
# `flat_reduce_by_key`; VARIANT:perword runs the same binary with `--record-per-word`
# (a `String` per line, `flat_map` into a `(String, 1)` record per word, `reduce_by_key`).
# To compare builds in one run, name variants VARIANT:TAG and set WORDCOUNT_TAG to that
# build's wordcount binary (for example `WORDCOUNT_BEFORE=/tmp/wordcount ... eo-2w:before
# eo-2w`).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
shift || true
VARIANTS=("$@")
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=(baseline off-1w off-2w eo-1w eo-2w alo-1w alo-2w off-2p eo-2p)
LINES=${WORDCOUNT_LINES:-2000000}
DISTINCT=${WORDCOUNT_DISTINCT:-100000}
BIN=target/release/examples
for b in "$BIN/wordcount" "$BIN/wordcount_cost"; do
  [ -x "$b" ] || { echo "build first: cargo build --release --example wordcount --example wordcount_cost" >&2; exit 1; }
done
WORK=$(mktemp -d)
cleanup() {
  jobs -p | xargs -r kill 2>/dev/null || true
  [ "${WORDCOUNT_KEEP:-0}" = 1 ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
"$BIN/wordcount_cost" generate "$WORK/input" --lines "$LINES" --distinct "$DISTINCT"
echo "input: $(cat "$WORK"/input/* | wc -l) lines, $(cat "$WORK"/input/* | wc -w) words, $(du -sh "$WORK/input" | cut -f1) in $WORK/input" >&2
# The reference counts, written once.
"$BIN/wordcount_cost" count "$WORK/input" "$WORK/expected.jsonl"
echo "distinct words: $(wc -l <"$WORK/expected.jsonl")" >&2

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# One timed process: appends "wall user sys maxrss_kb" to $WORK/t.
timed() { /usr/bin/time -f '%e %U %S %M' -a -o "$WORK/t" "$@"; }

run() { # run VARIANT[:TAG] -> prints "wall cpu rss_mb"
  local v=${1%%:*} out="$WORK/out" chk="$WORK/chk" wordcount="$BIN/wordcount"
  local job=(--input "$WORK/input" --output "$out" --checkpoint-dir "$chk")
  if [ "${1#*:}" = perword ]; then
    job+=(--record-per-word)
  elif [ "$1" != "$v" ]; then
    local var="WORDCOUNT_$(echo "${1#*:}" | tr '[:lower:]-' '[:upper:]_')"
    wordcount=${!var:?set $var to the wordcount binary that $1 runs}
  fi
  rm -rf "$out" "$chk" "$WORK/t"
  case $v in
    *-1w | *-2p) job+=(--workers 1) ;;
    *-2w) job+=(--workers 2) ;;
  esac
  case $v in
    off-*) job+=(--checkpoint-interval-ms 0) ;;
    eo-*) job+=(--checkpoint-interval-ms 1000 --delivery exactly-once) ;;
    alo-*) job+=(--checkpoint-interval-ms 1000 --delivery at-least-once) ;;
  esac
  local start end
  start=$(date +%s.%N)
  case $v in
    baseline) timed "$BIN/wordcount_cost" count "$WORK/input" "$WORK/base.jsonl" 2>"$WORK/log" ;;
    baseline-jemalloc)
      local je=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
      [ -e "$je" ] || { echo "baseline-jemalloc needs $je: apt-get install libjemalloc2" >&2; exit 1; }
      timed env LD_PRELOAD="$je" "$BIN/wordcount_cost" count "$WORK/input" "$WORK/base.jsonl" 2>"$WORK/log" ;;
    *-2p)
      local peers p0 p1
      p0=$(free_port)
      p1=$(free_port)
      peers="127.0.0.1:$p0,127.0.0.1:$p1"
      timed "$wordcount" "${job[@]}" --peers "$peers" --process-index 0 2>"$WORK/log" &
      local a=$!
      timed "$wordcount" "${job[@]}" --peers "$peers" --process-index 1 2>"$WORK/log1" &
      local b=$!
      wait "$a" && wait "$b" || { cat "$WORK/log1" >>"$WORK/log"; false; }
      ;;
    *) timed "$wordcount" "${job[@]}" 2>"$WORK/log" ;;
  esac || { echo "variant $v failed:" >&2; tail -20 "$WORK/log" >&2; exit 1; }
  end=$(date +%s.%N)
  if [ "${v%-jemalloc}" = baseline ]; then
    cmp -s <(sort "$WORK/base.jsonl") <(sort "$WORK/expected.jsonl") || { echo "the baseline's counts changed between runs" >&2; exit 1; }
  else
    "$BIN/wordcount_cost" check "$WORK/expected.jsonl" "$out" >/dev/null || { echo "variant $v: output differs from the baseline's counts" >&2; exit 1; }
  fi
  awk -v wall="$(echo "$end - $start" | bc)" '{ cpu += $2 + $3; rss += $4 } END { printf "%.3f %.3f %.1f\n", wall, cpu, rss / 1024 }' "$WORK/t"
}

RESULTS="$WORK/results"
: >"$RESULTS"
for r in $(seq 1 "$RUNS"); do
  for v in "${VARIANTS[@]}"; do
    m=$(run "$v") || exit 1
    echo "$v $m" >>"$RESULTS"
    echo "run $r $v: wall/cpu/rss_mb $m" >&2
  done
done

python3 - "$RESULTS" "$LINES" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    v, wall, cpu, rss = line.split()
    rows.setdefault(v, []).append((float(wall), float(cpu), float(rss)))
lines = int(sys.argv[2])
med = {v: tuple(statistics.median(x[i] for x in r) for i in range(3)) for v, r in rows.items()}
runs = min(len(r) for r in rows.values())
print(f"word count on files, {lines} lines, median of {runs} interleaved runs")
print(f"| variant | wall s | CPU s | peak RSS MB | lines/s | throughput vs baseline |")
print(f"| --- | --- | --- | --- | --- | --- |")
base = med.get("baseline")
for v, (w, c, m) in med.items():
    rel = f"{base[0] / w:.2f}x" if base else "-"
    print(f"| {v} | {w:.2f} | {c:.2f} | {m:.0f} | {lines / w / 1e6:.2f} M | {rel} |")
def ratio(name, a, b):
    if a in med and b in med:
        print(f"{name}: {med[b][0] / med[a][0]:.3f}")
print()
ratio("EO 2 workers / baseline (throughput)", "eo-2w", "baseline")
ratio("EO 2 workers / baseline on jemalloc (throughput)", "eo-2w", "baseline-jemalloc")
ratio("EO / off, 2 workers", "eo-2w", "off-2w")
ratio("EO / off, 1 worker", "eo-1w", "off-1w")
ratio("ALO / off, 2 workers", "alo-2w", "off-2w")
ratio("EO 2 workers / 1 worker", "eo-2w", "eo-1w")
ratio("off 2 workers / 1 worker", "off-2w", "off-1w")
ratio("EO 2 processes / 2 workers", "eo-2p", "eo-2w")
EOF
