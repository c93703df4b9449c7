#!/usr/bin/env bash
# Compares `dispatcher bench` of two versions of Cuttle in the same run on this machine: NEW_REF
# ("new", default the working tree) against OLD_REF ("old", default 95e2822, main before signed
# commands), each agent and dispatcher pair in turn on a private RabbitMQ node and a private Redis
# of its own (never the shared ones on 5672/6379), ROUNDS rounds alternating old and new, at
# concurrency 1 and 16. Prints every run and, per setting, the median p50 and throughput of each
# version, their ratio new/old, and the spread (lowest and highest) of the runs; also the CPU
# time per script of every process (the agent, its script shells, RabbitMQ, Redis, the
# dispatcher) and of all together (steadier than the others on a machine
# shared with other work), and the load average the runs saw.
#
#   ./deploy/local/bench-compare.sh [OLD_REF [NEW_REF]]
#   ./deploy/local/bench-compare.sh 95e2822          # signed commands: before trust vs the working tree
#   ./deploy/local/bench-compare.sh c314515 69c66e7  # metrics: the commit before vs the one adding them
#
# A version whose agent takes --trusted-keys gets keys of its own (the agent trusts the
# dispatcher's, the dispatcher pins the agent's); an older one runs without.
#
# Environment: ROUNDS (3), COUNT1 (300 scripts at concurrency 1), COUNT16 (2000 at concurrency 16),
# AGENT_WAIT (120: seconds an agent may take to start consuming, polled, before the run fails).
# Every agent's and dispatcher's log is kept until the end; when a run fails, the tail of its
# agent's log and the dispatcher's errors are printed and the logs stay in /tmp/cuttle-bench-logs.*.
# Builds both versions in release mode into this tree's target dir (the dependencies they share
# are compiled once), one build at a time on the machine (flock /tmp/cuttle-cargo.lock); needs
# git, cargo, flock, rabbitmq-server, redis-server and python3. Run as root (the RabbitMQ node
# drops to the rabbitmq user).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
source deploy/local/bench-lib.sh
old_ref=${1:-95e2822}
new_ref=${2:-}
rounds=${ROUNDS:-3}
count1=${COUNT1:-300}
count16=${COUNT16:-2000}
agent_wait=${AGENT_WAIT:-120}
work=$(mktemp -d /tmp/cuttle-bench.XXXXXX)
chmod 755 "$work"
logs=$(mktemp -d /tmp/cuttle-bench-logs.XXXXXX)
agent_pid=
cleanup() {
  local status=$?
  [ -n "$agent_pid" ] && kill -TERM "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  if [ "$status" -eq 0 ]; then rm -rf "$logs"; else say "failed; the agents' and dispatchers' logs are in $logs"; fi
  private_services_stop
  git -C "$root" worktree remove --force "$work/old-tree" >/dev/null 2>&1 || true
  git -C "$root" worktree remove --force "$work/new-tree" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

build() { # version, ref (empty: the working tree)
  local manifest=$root/Cargo.toml commit cache
  mkdir -p "$work/$1"
  if [ -n "$2" ]; then
    # A commit's binaries are built once and kept under target/bench-bins/<commit>.
    commit=$(git -C "$root" rev-parse --verify "$2^{commit}")
    cache=$root/target/bench-bins/$commit
    if [ -x "$cache/worker-agent" ] && [ -x "$cache/dispatcher" ]; then
      cp "$cache/worker-agent" "$cache/dispatcher" "$work/$1/"
      return
    fi
    git -C "$root" worktree add --detach "$work/$1-tree" "$commit" >/dev/null 2>&1
    manifest=$work/$1-tree/Cargo.toml
  fi
  locked_cargo build --release --bins --quiet --manifest-path "$manifest" --target-dir "$root/target"
  cp "$root/target/release/worker-agent" "$root/target/release/dispatcher" "$work/$1/"
  if [ -n "$2" ]; then
    mkdir -p "$cache"
    cp "$work/$1/worker-agent" "$work/$1/dispatcher" "$cache/"
  fi
}
say "building old ($old_ref) and new (${new_ref:-working tree}), release"
build old "$old_ref"
build new "$new_ref"

private_services_start "$work"
rabbit_pid=$(private_rabbit_pid) || { say "cannot find the private RabbitMQ node's beam.smp process"; exit 1; }
redis_pid=$(private_redis_pid)

# Keys for each version that signs: its agent trusts its dispatcher, its dispatcher pins its agent.
signs() { "$work/$1/worker-agent" run --help | grep -q -- --trusted-keys; }
for version in old new; do
  if signs "$version"; then
    make_keys "$work/$version" "$work/$version"
    say "$version signs commands and answers"
  fi
done

results="$work/results"
: >"$results"
failed() { # what failed, agent log, dispatcher log
  say "$1"
  say "last lines of the agent's log ($2):"
  tail -n 30 "$2" >&2 || true
  if [ -s "$3" ]; then
    say "the dispatcher's errors ($3):"
    tail -n 30 "$3" >&2
  fi
  exit 1
}
run() { # version, concurrency, count
  local version=$1 agent_id="bench-$1-$RANDOM" agent_keys=() dispatcher_keys=()
  local log="$logs/agent-$agent_id.log" dispatcher_log="$logs/dispatcher-$agent_id.log"
  if signs "$version"; then
    pin_agent "$work/$version" "$agent_id"
  fi
  "$work/$version/worker-agent" run --agent-id "$agent_id" --work-dir "$work/agent-$agent_id" "${agent_keys[@]}" \
    >"$log" 2>&1 &
  agent_pid=$!
  await_agent "$agent_id" "$agent_pid" "$log" "$agent_wait" || failed "agent $agent_id did not start" "$log" /dev/null
  # CPU time (user and system) each process spent on the run: from /proc (clock ticks, before
  # and after) the agent's own, its script shells' (the children it reaped), RabbitMQ's and
  # Redis's; the dispatcher's from the shell's `time`.
  local agent_ticks shell_ticks rabbit_ticks redis_ticks report dispatcher_cpu TIMEFORMAT='%3U %3S'
  read -r agent_ticks shell_ticks < <(cpu_ticks "$agent_pid")
  read -r rabbit_ticks _ < <(cpu_ticks "$rabbit_pid")
  read -r redis_ticks _ < <(cpu_ticks "$redis_pid")
  report=$( { time "$work/$version/dispatcher" "${dispatcher_keys[@]}" bench --target "$agent_id" --count "$3" \
    --concurrency "$2" --json 2>"$dispatcher_log"; } 2>"$logs/cpu-$agent_id") ||
    failed "dispatcher bench against agent $agent_id ($version) failed" "$log" "$dispatcher_log"
  local after reaped
  read -r after reaped < <(cpu_ticks "$agent_pid")
  agent_ticks=$((after - agent_ticks)) shell_ticks=$((reaped - shell_ticks))
  read -r after _ < <(cpu_ticks "$rabbit_pid")
  rabbit_ticks=$((after - rabbit_ticks))
  read -r after _ < <(cpu_ticks "$redis_pid")
  redis_ticks=$((after - redis_ticks))
  dispatcher_cpu=$(awk '{ print $1 + $2 }' "$logs/cpu-$agent_id")
  kill -TERM "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=
  local load
  read -r load _ </proc/loadavg
  local seconds
  seconds=$(awk -v a="$agent_ticks" -v s="$shell_ticks" -v r="$rabbit_ticks" -v d="$redis_ticks" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { print a / hz, s / hz, r / hz, d / hz }')
  echo "$version $2 $seconds $dispatcher_cpu $load $report" |
    tee -a "$results" >&2
}

for round in $(seq "$rounds"); do
  say "round $round of $rounds"
  for version in old new; do
    run "$version" 1 "$count1"
    run "$version" 16 "$count16"
  done
done

python3 - "$results" "$count1" "$count16" <<'EOF'
import json, statistics, sys
counts = {1: int(sys.argv[2]), 16: int(sys.argv[3])}
runs, loads = {}, []
for line in open(sys.argv[1]):
    version, concurrency, agent_cpu, shells_cpu, rabbit_cpu, redis_cpu, dispatcher_cpu, load, report = line.split(" ", 8)
    report = json.loads(report)
    per_script = 1000 / counts[int(concurrency)]
    for key, seconds in (("agent_cpu", agent_cpu), ("shells_cpu", shells_cpu), ("rabbit_cpu", rabbit_cpu),
                         ("redis_cpu", redis_cpu), ("dispatcher_cpu", dispatcher_cpu)):
        report[key] = float(seconds) * per_script
    report["all_cpu"] = sum(report[k] for k in ("agent_cpu", "shells_cpu", "rabbit_cpu", "redis_cpu", "dispatcher_cpu"))
    runs.setdefault((int(concurrency), version), []).append(report)
    loads.append(float(load))
columns = [("p50_ms", "p50 ms", 2), ("throughput_per_s", "throughput /s", 1),
           ("agent_cpu", "agent CPU ms/script", 3), ("shells_cpu", "script shells CPU ms/script", 3),
           ("rabbit_cpu", "RabbitMQ CPU ms/script", 3), ("redis_cpu", "Redis CPU ms/script", 3),
           ("dispatcher_cpu", "dispatcher CPU ms/script", 3), ("all_cpu", "all CPU ms/script", 3)]
print("| concurrency | version | runs | " + " | ".join(f"{name} (median) | spread" for _, name, _ in columns) + " | errors |")
print("|---|---|---|" + "---|---|" * len(columns) + "---|")
for concurrency in sorted({c for c, _ in runs}):
    median = {}
    for version in ("old", "new"):
        reports = runs[(concurrency, version)]
        cells = []
        for key, _, digits in columns:
            values = [r[key] for r in reports]
            median[(version, key)] = statistics.median(values)
            cells.append(f"{median[(version, key)]:.{digits}f} | {min(values):.{digits}f}–{max(values):.{digits}f}")
        print(f"| {concurrency} | {version} | {len(reports)} | " + " | ".join(cells)
              + f" | {sum(r['errors'] for r in reports)} |")
    ratios = [f"{median[('new', key)] / median[('old', key)]:.3f} | " if median[("old", key)] else "– | "
              for key, _, _ in columns]
    print(f"| {concurrency} | new/old | | " + " | ".join(ratios) + "|")
print(f"\nload average (1 min) at the end of each run: {min(loads):.2f}–{max(loads):.2f}, median {statistics.median(loads):.2f}")
EOF
