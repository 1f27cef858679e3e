#!/usr/bin/env bash
# Runs weir's whole test suite on a fresh machine: installs and starts the servers the
# tests need (scripts/services.sh), checks that the default build compiles no heavy
# connector dependency, builds the binaries the end-to-end tests drive with every
# connector feature, then runs unit, end-to-end and documentation tests, fuzzes the
# decoders of stored objects briefly (scripts/fuzz.sh), and validates the Kubernetes
# manifests in deploy/ against the Kubernetes schemas. The dashboard test saves a
# screenshot of the page to target/dashboard.png.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
scripts/services.sh up
eval "$(scripts/services.sh env)"
# The dashboard test drives a real headless browser: Debian's chromium and its
# WebDriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null
fi
# The default build must stay light: no client library of an external system.
heavy=$(cargo tree --locked -p weir -e normal --prefix none | grep -E '^(rdkafka-sys|aws-lc-sys|aws-lc-rs|reqwest|parquet|tokio-postgres|async-nats|redis) ' || true)
if [ -n "$heavy" ]; then
  echo "the default build of weir compiles heavy connector dependencies:" >&2
  echo "$heavy" >&2
  exit 1
fi
# The deployment manifests must be valid Kubernetes objects (no unknown fields).
validator="${HOME}/.cache/weir/kubernetes-validate"
if [ ! -x "$validator/bin/kubernetes-validate" ]; then
  python3 -m venv "$validator"
  "$validator/bin/pip" install --quiet kubernetes-validate==1.37.0
fi
"$validator/bin/kubernetes-validate" --strict --quiet deploy/kubernetes/*.yaml
# The tests use every connector.
cargo build --release --all-features --bins --examples
cargo nextest run --release --workspace --all-features --no-fail-fast
cargo test --release --workspace --all-features --doc
# Every decoder of what weir reads back from storage, fuzzed for a few seconds per target
# (checkpoint/fuzz; longer runs by hand: checkpoint/fuzz/README.md). A crash fails.
scripts/fuzz.sh "${WEIR_FUZZ_SECONDS:-10}"
