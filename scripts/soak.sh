#!/usr/bin/env bash
# Soak test of a cluster without a supervisor: three "hosts" (network namespaces on a
# bridge), each running the word count under a restart loop with Kubernetes' OnFailure
# semantics, and a killer that SIGKILLs a random process each time the cluster has
# resumed committing output. Runs job after job until KILLS kills have landed, checks
# every job's committed output against an oracle computed from its input, and prints
# the figures: kills, restarts, lost and duplicated records, and the time from a kill to
# the first output committed by the next generation (median and p99).
#
#   scripts/soak.sh [KILLS] [PEER_TIMEOUT_MS] [kill|stop]   (root: it creates namespaces)
#
# With `stop`, each fault is a SIGSTOP instead of a SIGKILL: the process is resumed
# (SIGCONT) after twice the peer timeout, by when the others have noticed it.
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-300}
TIMEOUT_MS=${2:-2000}
MODE=${3:-kill}
BIN=target/release/examples/wordcount
[ -x "$BIN" ] || cargo build --release --example wordcount
BIN=$(realpath "$BIN")
WORK=$(mktemp -d /tmp/weir-soak-XXXXXX)
TAG=$(printf '%x' $(( $$ % 65536 )))
BR="wsb$TAG"
cleanup() {
  for h in 0 1 2; do
    ip netns pids "ws${TAG}h$h" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "ws${TAG}h$h" 2>/dev/null || true
    ip link del "ws${TAG}o$h" 2>/dev/null || true
  done
  ip link del "$BR" 2>/dev/null || true
  jobs -p | xargs -r kill 2>/dev/null || true
}
trap cleanup EXIT
ip link add "$BR" type bridge && ip link set "$BR" up
PEERS=""
for h in 0 1 2; do
  ns="ws${TAG}h$h"
  ip netns add "$ns"
  ip link add "ws${TAG}o$h" type veth peer name "ws${TAG}i$h"
  ip link set "ws${TAG}i$h" netns "$ns"
  ip link set "ws${TAG}o$h" master "$BR" up
  ip -n "$ns" addr add "10.201.0.$((h + 1))/24" dev "ws${TAG}i$h"
  ip -n "$ns" link set "ws${TAG}i$h" up
  ip -n "$ns" link set lo up
  PEERS="$PEERS${PEERS:+,}10.201.0.$((h + 1)):7400"
done

# Input: 4 files of 60 000 lines; each job reads it at 20 000 lines/s per worker.
mkdir -p "$WORK/in"
python3 - "$WORK/in" <<'EOF'
import random, sys
random.seed(7)
words = ["w%d" % i for i in range(5000)]
for f in range(4):
    with open(f"{sys.argv[1]}/part-{f}.txt", "w") as out:
        for _ in range(60000):
            out.write(" ".join(random.choice(words) for _ in range(6)) + "\n")
EOF

host_loop() { # job-dir host
  local dir=$1 h=$2 run=0
  while true; do
    start=$(date +%s.%N)
    RUST_LOG=weir_runtime::cluster=info ip netns exec "ws${TAG}h$h" "$BIN" --input "$WORK/in" --output "$dir/out" \
      --checkpoint-dir "$dir/chk" --restore latest --workers 2 --rate-limit 20000 \
      --checkpoint-interval-ms 200 --peers "$PEERS" --process-index "$h" \
      --peer-timeout-ms "$TIMEOUT_MS" >"$dir/host$h-run$run.log" 2>&1 && rc=0 || rc=$?
    echo "$rc $start $(date +%s.%N) $dir/host$h-run$run.log" >>"$dir/host$h.exits"
    run=$((run + 1))
    [ "$rc" -eq 0 ] && break
  done
}

newest_generation() { # job-dir: the largest generation of a committed output file
  ls "$1/out" 2>/dev/null | sed -n 's/.*-g\([0-9]*\)-w.*/\1/p' | sort -n | tail -1
}

kills=0
job=0
: >"$WORK/resume.txt"
while [ "$kills" -lt "$KILLS" ]; do
  dir="$WORK/job$job"
  mkdir -p "$dir/out"
  for h in 0 1 2; do host_loop "$dir" "$h" & done
  loops=$(jobs -p)
  done_hosts() { cat "$dir"/host*.exits 2>/dev/null | grep -c '^0 ' || true; }
  while [ "$kills" -lt "$KILLS" ] && [ "$(done_hosts)" -lt 3 ]; do
    # Wait for output of a generation newer than the last one killed.
    gen=${last_gen:--1}
    while :; do
      g=$(newest_generation "$dir")
      [ -n "$g" ] && [ "$g" -gt "$gen" ] && break
      [ "$(done_hosts)" -eq 3 ] && break 2
      sleep 0.02
    done
    if [ -n "${killed_at:-}" ]; then
      echo "$killed_at $(date +%s.%N)" >>"$WORK/resume.txt"
      unset killed_at
    fi
    victim=$((RANDOM % 3))
    pid=$(ip netns pids "ws${TAG}h$victim" | head -1)
    if [ -z "$pid" ]; then
      # Between two runs of that host: try again shortly.
      sleep 0.02
      continue
    fi
    last_gen=$(newest_generation "$dir")
    killed_at=$(date +%s.%N)
    if [ "$MODE" = stop ]; then
      kill -STOP "$pid" 2>/dev/null && kills=$((kills + 1)) || true
      # The fault's duration: twice the peer timeout.
      (sleep "$(echo "2 * $TIMEOUT_MS / 1000" | bc -l)"; kill -CONT "$pid" 2>/dev/null || true) &
    else
      kill -9 "$pid" 2>/dev/null && kills=$((kills + 1)) || true
    fi
  done
  unset killed_at last_gen
  # The job runs to its end; then its output is checked.
  for p in $loops; do wait "$p" || true; done
  job=$((job + 1))
done

python3 - "$WORK" "$KILLS" "$MODE" <<'EOF'
import collections, datetime, glob, json, re, statistics, sys
work, kills, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
oracle = collections.Counter()
for f in glob.glob(f"{work}/in/*"):
    for line in open(f):
        oracle.update(line.split())
lost = duplicated = restarts = jobs = 0
runs = []  # (start, end, rc, formed) of every process run
for job in sorted(glob.glob(f"{work}/job*")):
    exits = []
    for f in glob.glob(f"{job}/host*.exits"):
        for line in open(f):
            rc, start, end, log = line.split()
            formed = None
            for l in open(log, errors="replace"):
                if "the cluster is formed" in l:
                    stamp = re.sub(r"\x1b\[[0-9;]*m", "", l).split()[0].rstrip("Z")
                    formed = datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.timezone.utc).timestamp()
                    break
            runs.append((float(start), float(end), int(rc), formed))
            exits.append(int(rc))
    restarts += sum(1 for e in exits if e != 0)
    if sum(1 for e in exits if e == 0) < 3:
        continue  # the last job, cut short when the kills were done
    jobs += 1
    updates = collections.defaultdict(dict)
    for f in glob.glob(f"{job}/out/*.jsonl"):
        for line in open(f):
            r = json.loads(line)
            if r["epoch"] in updates[r["word"]]:
                duplicated += 1
            updates[r["word"]][r["epoch"]] = r["count"]
    for word, n in oracle.items():
        final = updates[word][max(updates[word])] if updates[word] else 0
        lost += max(0, n - final)
        duplicated += max(0, final - n)
total, detect, rendezvous, restore = [], [], [], []
for line in open(f"{work}/resume.txt"):
    killed, resumed = map(float, line.split())
    total.append(resumed - killed)
    # Detection: the first peer to exit noticed the fault (a killed process itself ends
    # at once, a stopped one only after it is resumed).
    ends = sorted(e for s, e, rc, f in runs if s < killed <= e and rc != 0)
    first = 1 if mode == "kill" else 0
    started = [f for s, e, rc, f in runs if s > killed and f is not None and f < resumed]
    if len(ends) > first and started:
        detected, formed = ends[first], max(started)
        detect.append(detected - killed)
        rendezvous.append(formed - detected)
        restore.append(resumed - formed)
def fig(xs):
    if not xs:
        return "n/a"
    xs = sorted(xs)
    return f"median {statistics.median(xs):.2f} s, p99 {xs[min(len(xs) - 1, int(0.99 * len(xs)))]:.2f} s"
print(f"{'kills' if mode == 'kill' else 'stops'} {kills}, restarts {restarts}, jobs checked {jobs}")
print(f"lost records {lost}, duplicated records {duplicated}")
print(f"kill to output of the next generation: {fig(total)} ({len(total)} samples)")
print(f"  detection (kill to the first peer's exit): {fig(detect)}")
print(f"  rendezvous (that exit to the cluster formed again): {fig(rendezvous)}")
print(f"  restore and first commit (formed to new output): {fig(restore)} ({len(restore)} samples split)")
sys.exit(0 if lost == 0 and duplicated == 0 and jobs > 0 else 1)
EOF
