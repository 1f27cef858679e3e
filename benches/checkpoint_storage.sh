#!/usr/bin/env bash
# Checkpoints on S3 (SeaweedFS on 127.0.0.1) against checkpoints in a local directory,
# side by side in one run: the word-count example, 2 worker threads, exactly-once,
# checkpoints every 200 ms, over 800 000 lines of 8 words (4 files), runs interleaved.
# Prints each run's wall time, checkpoint count, the medians and their ratio.
#
#   scripts/services.sh up && eval "$(scripts/services.sh env)"
#   cargo build --release --features full --bins --examples
#   benches/checkpoint_storage.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
: "${WEIR_TEST_S3_ENDPOINT:?start the servers: scripts/services.sh up && eval \"\$(scripts/services.sh env)\"}"
export AWS_ENDPOINT=$WEIR_TEST_S3_ENDPOINT AWS_ACCESS_KEY_ID=$WEIR_TEST_S3_ACCESS_KEY_ID \
  AWS_SECRET_ACCESS_KEY=$WEIR_TEST_S3_SECRET_ACCESS_KEY AWS_REGION=us-east-1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/input"
for f in 0 1 2 3; do
  awk -v seed="$f" 'BEGIN { srand(seed); for (i = 0; i < 200000; i++) { line = ""; for (j = 0; j < 8; j++) line = line " w" int(rand() * rand() * 100000); print line } }' >"$WORK/input/part-$f.txt"
done
run() { # run KIND URL -> seconds
  rm -rf "$WORK/output"
  local start end
  start=$(date +%s.%N)
  target/release/examples/wordcount --input "$WORK/input" --output "$WORK/output" \
    --checkpoint-dir "$2" --checkpoint-interval-ms 200 --workers 2 --job "bench-$1-$RANDOM" \
    2>"$WORK/$1.log" >/dev/null || { echo "the $1 run failed:" >&2; tail -20 "$WORK/$1.log" >&2; exit 1; }
  [ "$(cat "$WORK"/output/*.jsonl | wc -l)" -gt 0 ] || { echo "the $1 run committed nothing" >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}
declare -a LOCAL S3
for r in $(seq 1 "$RUNS"); do
  l=$(run local "$WORK/checkpoints-$r") || exit 1
  s=$(run s3 "s3://$WEIR_TEST_S3_BUCKET/bench/checkpoint-storage-$$-$r") || exit 1
  echo "run $r: local ${l}s, s3 ${s}s"
  LOCAL+=("$l")
  S3+=("$s")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ml=$(median "${LOCAL[@]}")
ms=$(median "${S3[@]}")
echo "median: local ${ml}s, s3 ${ms}s, s3/local time $(echo "scale=2; $ms / $ml" | bc)"
