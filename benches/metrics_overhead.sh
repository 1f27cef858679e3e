#!/usr/bin/env bash
# The cost of serving metrics: the word-count example with --metrics-addr and a scraper
# reading /metrics every second, against the same job without --metrics-addr, side by
# side in one run: 2 worker threads, exactly-once, 1 s checkpoints, over 2 000 000
# lines of 8 words (4 files), runs interleaved. Prints each run's wall time, the
# medians, their ratio and the median of the ratios of each interleaved pair. (Sources and sinks count their records per batch either
# way: the counters are part of every run.)
#
# `benches/metrics_overhead.sh callgrind [LINES]` counts instructions instead, which the
# shared machine's noise does not move: the same job over LINES lines (default 200 000)
# under valgrind's callgrind, once without --metrics-addr and once with it (no scraper:
# under callgrind a run lasts a minute, and a scrape a second would count ~50 times its
# share), and prints both totals and their ratio.
#
#   cargo build --release --bins --examples
#   benches/metrics_overhead.sh [RUNS]
#   benches/metrics_overhead.sh callgrind [LINES]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; jobs -p | xargs -r kill 2>/dev/null || true' EXIT
mkdir -p "$WORK/input"
LINES=2000000
[ "${1:-}" = callgrind ] && LINES=${2:-200000}
for f in 0 1 2 3; do
  awk -v seed="$f" -v n="$((LINES / 4))" 'BEGIN { srand(seed); for (i = 0; i < n; i++) { line = ""; for (j = 0; j < 8; j++) line = line " w" int(rand() * rand() * 100000); print line } }' >"$WORK/input/part-$f.txt"
done
if [ "${1:-}" = callgrind ]; then
  count() { # count on|off -> instructions, all threads
    rm -rf "$WORK/output" "$WORK/chk"
    local extra=()
    [ "$1" = on ] && extra=(--metrics-addr 127.0.0.1:0)
    valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$1" \
      target/release/examples/wordcount --input "$WORK/input" --output "$WORK/output" \
      --checkpoint-dir "$WORK/chk" --checkpoint-interval-ms 1000 --workers 2 "${extra[@]}" \
      2>"$WORK/$1.log" >/dev/null || { echo "the $1 run failed:" >&2; tail -20 "$WORK/$1.log" >&2; exit 1; }
    [ "$(cat "$WORK"/output/*.jsonl | wc -l)" -gt 0 ] || { echo "the $1 run committed nothing" >&2; exit 1; }
    awk '/^(summary|totals):/ { n = $2 } END { print n }' "$WORK/cg.$1"
  }
  off=$(count off) || exit 1
  on=$(count on) || exit 1
  echo "instructions over $LINES lines: metrics off $off, on $on, on/off $(echo "scale=4; $on / $off" | bc)"
  exit 0
fi
RUNS=${1:-5}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
run() { # run on|off -> seconds
  rm -rf "$WORK/output" "$WORK/chk"
  local extra=() scraper=""
  if [ "$1" = on ]; then
    extra=(--metrics-addr "127.0.0.1:$PORT")
    (while true; do curl -s "http://127.0.0.1:$PORT/metrics" >/dev/null || true; sleep 1; done) &
    scraper=$!
  fi
  local start end
  start=$(date +%s.%N)
  target/release/examples/wordcount --input "$WORK/input" --output "$WORK/output" \
    --checkpoint-dir "$WORK/chk" --checkpoint-interval-ms 1000 --workers 2 "${extra[@]}" \
    2>"$WORK/$1.log" >/dev/null || { echo "the $1 run failed:" >&2; tail -20 "$WORK/$1.log" >&2; exit 1; }
  end=$(date +%s.%N)
  [ -n "$scraper" ] && kill "$scraper" 2>/dev/null
  [ "$(cat "$WORK"/output/*.jsonl | wc -l)" -gt 0 ] || { echo "the $1 run committed nothing" >&2; exit 1; }
  echo "$end - $start" | bc
}
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
declare -a ON OFF RATIO
for r in $(seq 1 "$RUNS"); do
  off=$(run off) || exit 1
  on=$(run on) || exit 1
  ratio=$(echo "scale=3; $on / $off" | bc)
  echo "run $r: metrics off ${off}s, on ${on}s, on/off $ratio"
  OFF+=("$off")
  ON+=("$on")
  RATIO+=("$ratio")
done
m_off=$(median "${OFF[@]}")
m_on=$(median "${ON[@]}")
echo "median: off ${m_off}s, on ${m_on}s, ratio of the medians $(echo "scale=3; $m_on / $m_off" | bc), median of the run pairs' ratios $(median "${RATIO[@]}")"
