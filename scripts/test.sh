#!/usr/bin/env bash
# Runs weir's whole test suite on a fresh machine: installs and starts the servers the
# tests need (scripts/services.sh), builds the binaries the end-to-end tests drive, then
# runs unit, end-to-end and documentation tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
scripts/services.sh up
eval "$(scripts/services.sh env)"
cargo build --release --bins --examples
cargo nextest run --release --workspace --no-fail-fast
cargo test --release --workspace --doc
