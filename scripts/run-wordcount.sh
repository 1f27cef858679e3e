#!/usr/bin/env bash
# Runs the word-count job on the embedded defaults: generated text in ./demo/input,
# checkpoints in ./demo/checkpoints, committed output in ./demo/output, as a cluster of
# 2 processes x 2 workers under `weir launch`. It builds only what it runs: the default
# features, which compile no client library of an external system.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin weir --example wordcount
mkdir -p demo/input
if [ -z "$(ls -A demo/input)" ]; then
  for f in 0 1 2 3; do
    awk -v seed="$f" 'BEGIN { srand(seed); for (i = 0; i < 200000; i++) { line = ""; for (j = 0; j < 8; j++) line = line " w" int(rand() * rand() * 1000); print line } }' > "demo/input/part-$f.txt"
  done
fi
rm -rf demo/output demo/checkpoints
target/release/weir launch --processes 2 --workers 2 -- target/release/examples/wordcount \
  --input demo/input --output demo/output --checkpoint-dir demo/checkpoints --checkpoint-interval-ms 200
echo "committed output: $(cat demo/output/*.jsonl | wc -l) lines in demo/output/*.jsonl"
target/release/weir checkpoints list --checkpoint-dir demo/checkpoints --job wordcount
