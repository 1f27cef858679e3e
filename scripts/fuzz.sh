#!/usr/bin/env bash
# Builds weir's fuzz targets (checkpoint/fuzz: everything weir decodes from storage) and
# runs each for SECONDS (default 15), one after the other, under AddressSanitizer with
# libFuzzer's memory limits: a panic, a hang or an allocation larger than 256 MiB
# (`-malloc_limit_mb`) fails the script. Installs the nightly toolchain and cargo-fuzz
# the first time.
#
#   scripts/fuzz.sh [SECONDS]     WEIR_FUZZ_TARGETS="part manifest" scripts/fuzz.sh 60
#
# Each target starts from its committed seeds (checkpoint/fuzz/seeds/<target>) and from
# what earlier runs on this machine found (checkpoint/fuzz/target/corpus/<target>, not
# committed). A crashing input is saved in checkpoint/fuzz/artifacts/<target>/ and the
# script prints how to replay it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-15}"
fuzz_dir=checkpoint/fuzz
cargo_fuzz_version=0.13.2

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $cargo_fuzz_version" ]; then
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi

targets="${WEIR_FUZZ_TARGETS:-$(cargo +nightly fuzz list --fuzz-dir "$fuzz_dir")}"
# Builds every target once (release with debug assertions and overflow checks, ASan).
cargo +nightly fuzz build --fuzz-dir "$fuzz_dir"

# A payload whose length prefix claims a huge sequence makes serde preallocate up to
# 1 MiB before the decode fails (its cautious size hint); ASan's quarantine would hand
# out fresh pages for each of those and cut the executions per second by four. The
# decoders are safe Rust: redzones and the malloc limit stay, use-after-free detection
# of reused memory goes.
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=0}"

failed=()
for target in $targets; do
  corpus="$fuzz_dir/target/corpus/$target"
  mkdir -p "$corpus"
  echo "fuzz: $target for ${seconds}s"
  log="$fuzz_dir/target/fuzz-$target.log"
  if cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "$target" "$corpus" "$fuzz_dir/seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=512 -malloc_limit_mb=256 -timeout=10 \
    -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^(stat::number_of_executed_units|stat::new_units_added)' "$log" | sed "s/^/fuzz: $target /" || true
  else
    failed+=("$target")
    tail -n 60 "$log" >&2
    echo "fuzz: $target failed (full log: $log); replay with" >&2
    echo "  cargo +nightly fuzz run --fuzz-dir $fuzz_dir $target $fuzz_dir/artifacts/$target/<crash-file>" >&2
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: ${failed[*]} found a crash" >&2
  exit 1
fi
