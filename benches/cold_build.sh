#!/usr/bin/env bash
# Cold release builds of the README's main-job command, before and after the light
# default build: each in a fresh worktree with an empty target directory, one after the
# other, with the crates already downloaded (cargo fetch), so that only compilation is
# measured.
#
#   benches/cold_build.sh BEFORE_REV [AFTER_REV]
#
# BEFORE_REV builds the main-job command of its day (`cargo build --release --bins
# --examples`, every connector); AFTER_REV (default HEAD) builds what
# scripts/run-wordcount.sh builds now (`cargo build --release --bin weir --example
# wordcount`, default features). Prints wall and CPU seconds and the number of crates
# compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
before=${1:?usage: benches/cold_build.sh BEFORE_REV [AFTER_REV]}
after=${2:-HEAD}
work=$(mktemp -d)
trap 'git worktree remove --force "$work/before" 2>/dev/null || true; git worktree remove --force "$work/after" 2>/dev/null || true; rm -rf "$work"' EXIT
git worktree add -q "$work/before" "$before"
git worktree add -q "$work/after" "$after"
(cd "$work/before" && cargo fetch --locked -q)
(cd "$work/after" && cargo fetch --locked -q)
measure() { # NAME DIR COMMAND...
  local name=$1 dir=$2
  shift 2
  (cd "$dir" && CARGO_TARGET_DIR="$work/target-$name" /usr/bin/time -f "%e %U %S" -o "$work/$name.time" "$@" >"$work/$name.log" 2>&1)
  read -r wall user sys <"$work/$name.time"
  local crates
  crates=$(grep -c '^ *Compiling ' "$work/$name.log" || true)
  printf '| %s | `%s` | %.0f s | %.0f s | %s |\n' "$name" "$*" "$wall" "$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')" "$crates"
}
echo "| build | command | wall | CPU (user + sys) | crates compiled |"
echo "| --- | --- | --- | --- | --- |"
measure before "$work/before" cargo build --release --bins --examples
measure after "$work/after" cargo build --release --bin weir --example wordcount
