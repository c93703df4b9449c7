#!/usr/bin/env bash
# Cuttle against Celery in one run on this machine, on a private RabbitMQ node and a private
# Redis (never the shared ones on 5672/6379): `dispatcher bench` against one agent
# (--max-scripts 16), and the same scripts (`sh -c 'echo hello'`) as Celery 5 tasks
# (bench/peers/celery: 4 prefork processes, acks_late, Redis result backend, each submitted and
# then waited for with result.get()). ROUNDS rounds, each running COUNT1 scripts one at a time
# and COUNT16 sixteen at a time on both; which system goes first alternates from round to round.
#
#   sudo ./bench/compare-celery.sh                 # ROUNDS=3 COUNT1=200 COUNT16=2000
#   ROUNDS=1 COUNT1=20 COUNT16=200 ./bench/compare-celery.sh   # a quick try of the tooling
#
# Prints every run as one JSON line (stderr), then per concurrency a Markdown table (stdout) of
# Cuttle, Celery and Cuttle/Celery (medians of the rounds): p50, p90, p99, throughput, CPU per
# script by process and Redis commands per script. Writes into OUT (target/compare-celery):
# runs.jsonl, latencies.jsonl (each run's latencies: `dispatcher bench --json` gives every
# script's as `latencies_ms`), tables.md and latency.svg (a histogram of both with their p50 and
# p99, drawn by `cargo run -p tests --example latency_histogram`).
#
# CPU per script, from /proc/PID/stat before and after each run (utime + stime; cutime + cstime
# for children a process has reaped): Cuttle's agent itself, its script shells (the agent's
# reaped children); Celery's worker (its parent and prefork processes, and any prefork process
# that ended), the script shells (the prefork processes' reaped children); RabbitMQ (beam.smp)
# and Redis for both; the dispatcher's whole process (`time`, connecting included), the Celery
# client's timed part (it reports its own CPU time, leaving out Python's start). Redis commands
# per script from INFO commandstats before and after (the benchmark's own INFO left out);
# commands Redis ran inside Lua scripts (counted in commandstats too) are told apart only with
# REDIS_MONITOR=1, which counts them with MONITOR during the runs and so costs Redis CPU of its
# own (the Redis CPU figures then include it).
#
# One agent and one Celery worker serve every round: both are long-running services, so the
# runs measure them warm, and their start (Celery's takes seconds) stays out of every figure.
#
# Environment: ROUNDS (3), COUNT1 (200), COUNT16 (2000), OUT, REDIS_MONITOR (0), AGENT_WAIT and
# WORKER_WAIT (120: seconds the agent and the worker may take to start). Builds Cuttle in release
# mode (cargo build --release --bins) and the histogram example, each waiting for any other build
# on this machine (flock /tmp/cuttle-cargo.lock); makes the Celery venv with
# bench/peers/celery/setup.sh (from PyPI). Needs cargo, python3 (3.10 or newer), flock,
# rabbitmq-server, redis-server and redis-cli; run as root (the RabbitMQ node drops to the
# rabbitmq user). Everything it starts is stopped when it ends, fails or is interrupted; when it
# fails, the logs stay in /tmp/cuttle-celery-logs.* and the reason is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
source deploy/local/bench-lib.sh
rounds=${ROUNDS:-3}
count1=${COUNT1:-200}
count16=${COUNT16:-2000}
out=${OUT:-$root/target/compare-celery}
redis_monitor=${REDIS_MONITOR:-0}
agent_wait=${AGENT_WAIT:-120}
worker_wait=${WORKER_WAIT:-120}
target_dir=${CARGO_TARGET_DIR:-$root/target}
peer=$root/bench/peers/celery
report=$root/bench/compare_report.py

work=$(mktemp -d /tmp/cuttle-celery.XXXXXX)
chmod 755 "$work"
logs=$(mktemp -d /tmp/cuttle-celery-logs.XXXXXX)
agent_pid=
worker_pid=
monitor_pid=
bench_pid=

# Stops process $1 with SIGTERM (and its children too with "tree" as $2), then SIGKILL (with its
# children) if it is still there after 15 s.
stop() {
  local pid=$1 children deadline=$((SECONDS + 15))
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  children=$(pgrep -P "$pid" || true)
  # shellcheck disable=SC2086 # one PID a word
  [ "${2:-}" = tree ] && [ -n "$children" ] && { kill -TERM $children 2>/dev/null || true; }
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    say "process $pid did not stop within 15 s of SIGTERM: killing it"
    # shellcheck disable=SC2086 # one PID a word
    kill -KILL "$pid" $children 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop "$bench_pid" tree
  stop "$monitor_pid"
  stop "$worker_pid"
  stop "$agent_pid"
  private_services_stop
  rm -rf "$work"
  if [ "$status" -eq 0 ]; then rm -rf "$logs"; else say "failed; the logs are in $logs"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

failed() { # what failed, then the logs to show the end of
  say "$1"
  shift
  local log
  for log in "$@"; do
    [ -s "$log" ] || continue
    say "last lines of $log:"
    tail -n 30 "$log" >&2
  done
  exit 1
}

say "building Cuttle (release), the round trip and the histogram examples, each after any other build on this machine"
locked_cargo build --release --bins --quiet --manifest-path "$root/Cargo.toml"
locked_cargo build --release --quiet -p tests --example round_trip --manifest-path "$root/Cargo.toml"
locked_cargo build --quiet -p tests --example latency_histogram --manifest-path "$root/Cargo.toml"
mkdir -p "$work/bin"
# Copies, so that a build started during the run cannot change what is measured.
cp "$target_dir/release/worker-agent" "$target_dir/release/dispatcher" "$target_dir/release/examples/round_trip" \
  "$target_dir/debug/examples/latency_histogram" "$work/bin/"
"$peer/setup.sh"

private_services_start "$work"
rabbit_pid=$(private_rabbit_pid) || failed "cannot find the private RabbitMQ node's beam.smp process"
redis_pid=$(private_redis_pid)

agent_id="bench-cuttle-$$"
make_keys "$work" "$work/bin"
pin_agent "$work" "$agent_id"
say "starting agent $agent_id (--max-scripts 16)"
"$work/bin/worker-agent" run --agent-id "$agent_id" --work-dir "$work/agent" --max-scripts 16 "${agent_keys[@]}" \
  >"$logs/agent.log" 2>&1 &
agent_pid=$!
await_agent "$agent_id" "$agent_pid" "$logs/agent.log" "$agent_wait" || failed "the agent did not start" "$logs/agent.log"

export CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:$private_rabbit_port//"
export CELERY_RESULT_BACKEND="redis://127.0.0.1:$private_redis_port/1"
export CELERY_READY_FILE=$work/celery.ready
say "starting a Celery worker (4 prefork processes)"
"$peer/worker.sh" --hostname "cuttle-peer-$$@%h" >"$logs/celery-worker.log" 2>&1 &
worker_pid=$!
deadline=$((SECONDS + worker_wait))
until [ -s "$CELERY_READY_FILE" ]; do
  kill -0 "$worker_pid" 2>/dev/null || failed "the Celery worker exited before it was ready" "$logs/celery-worker.log"
  [ "$SECONDS" -lt "$deadline" ] || failed "the Celery worker not ready after ${worker_wait}s" "$logs/celery-worker.log"
  sleep 0.2
done

# CPU clock ticks so far of "executor shells rabbitmq redis" for system $1 (see the top).
snapshot() {
  local own reaped executor shells child
  if [ "$1" = cuttle ]; then
    read -r executor shells < <(cpu_ticks "$agent_pid") || failed "the agent has exited" "$logs/agent.log"
  else
    # The parent's reaped children are prefork processes that ended: worker time.
    read -r own reaped < <(cpu_ticks "$worker_pid") || failed "the Celery worker has exited" "$logs/celery-worker.log"
    executor=$((own + reaped)) shells=0
    for child in $(pgrep -P "$worker_pid"); do
      read -r own reaped < <(cpu_ticks "$child" 2>/dev/null) || continue # ended since pgrep
      executor=$((executor + own)) shells=$((shells + reaped))
    done
  fi
  read -r own reaped < <(cpu_ticks "$rabbit_pid")
  local rabbitmq=$((own + reaped))
  read -r own reaped < <(cpu_ticks "$redis_pid")
  echo "$executor $shells $rabbitmq $((own + reaped))"
}

# With REDIS_MONITOR=1: MONITOR into a file from before a run until after it.
monitor_start() {
  redis-cli -p "$private_redis_port" monitor >"$work/monitor" 2>&1 &
  monitor_pid=$!
  local deadline=$((SECONDS + 10))
  until grep -qs '^OK' "$work/monitor"; do
    [ "$SECONDS" -lt "$deadline" ] || failed "MONITOR on the private Redis did not start" "$work/monitor"
    sleep 0.05
  done
}
# Sets lua to the commands Redis ran inside Lua scripts since monitor_start (MONITOR shows them
# as "[DB lua]"), once MONITOR has passed an end mark.
monitor_stop() {
  local mark=cuttle-bench-end-$RANDOM deadline=$((SECONDS + 30))
  redis-cli -p "$private_redis_port" echo "$mark" >/dev/null
  until grep -qs "\"$mark\"" "$work/monitor"; do
    [ "$SECONDS" -lt "$deadline" ] || failed "MONITOR on the private Redis fell behind by over 30 s"
    sleep 0.05
  done
  stop "$monitor_pid"
  monitor_pid=
  lua=$(grep -Ec '^[0-9.]+ \[[0-9]+ lua\] ' "$work/monitor" || true)
}

# Runs one benchmark in the background, so that a signal stops it (through cleanup) at once.
bench_in_background() { # what failed if it fails, the logs to show then, --, the command
  local what=$1 shown=()
  shift
  while [ "$1" != -- ]; do shown+=("$1"); shift; done
  shift
  "$@" &
  bench_pid=$!
  wait "$bench_pid" || failed "$what" "${shown[@]}"
  bench_pid=
}
dispatcher_bench() { # count, concurrency, log: the report on stdout, `time`'s on $work/time
  local TIMEFORMAT='%3U %3S'
  { time "$work/bin/dispatcher" "${dispatcher_keys[@]}" bench --target "$agent_id" --count "$1" \
    --concurrency "$2" --json 2>"$3"; } 2>"$work/time"
}
celery_client() { # count, concurrency, log
  cd "$peer" && exec .venv/bin/python client.py --count "$1" --concurrency "$2" 2>"$3"
}

run() { # round, system, concurrency, count
  local name="$2-c$3-r$1" before after lua=- client_cpu=-
  redis-cli -p "$private_redis_port" info commandstats >"$work/stats-before"
  if [ "$redis_monitor" = 1 ]; then monitor_start; fi
  before=$(snapshot "$2")
  if [ "$2" = cuttle ]; then
    bench_in_background "dispatcher bench ($name) failed" "$logs/agent.log" "$logs/$name.log" -- \
      dispatcher_bench "$4" "$3" "$logs/$name.log" >"$work/report"
    client_cpu=$(awk '{ print $1 + $2 }' "$work/time")
  else
    # The client reports its own CPU time (cpu_s), which compare_report.py takes when given "-".
    bench_in_background "the Celery client ($name) failed" "$logs/celery-worker.log" "$logs/$name.log" -- \
      celery_client "$4" "$3" "$logs/$name.log" >"$work/report"
  fi
  after=$(snapshot "$2")
  redis-cli -p "$private_redis_port" info commandstats >"$work/stats-after"
  if [ "$redis_monitor" = 1 ]; then monitor_stop; fi
  local load
  read -r load _ </proc/loadavg
  python3 "$report" record "$1" "$2" "$4" "$before" "$after" "$work/stats-before" "$work/stats-after" "$lua" \
    "$client_cpu" "$load" "$out/runs.jsonl" "$out/latencies.jsonl" <"$work/report" >&2
}

mkdir -p "$out"
rm -f "$out/runs.jsonl" "$out/latencies.jsonl" "$out/tables.md" "$out/latency.svg"
for round in $(seq "$rounds"); do
  order=(cuttle celery)
  [ $((round % 2)) -eq 0 ] && order=(celery cuttle)
  say "round $round of $rounds: ${order[*]}"
  for system in "${order[@]}"; do
    run "$round" "$system" 1 "$count1"
    run "$round" "$system" 16 "$count16"
  done
done

{
  echo "Cuttle $(git -C "$root" describe --always --dirty 2>/dev/null || echo '(no git)') with one agent" \
    "(--max-scripts 16); Celery $("$peer/.venv/bin/celery" --version | cut -d' ' -f1) with 4 prefork processes;" \
    "RabbitMQ $(rabbitmqctl -n "$private_node" -q version 2>/dev/null || echo '?'), Redis $(redis-server --version |
      sed -n 's/.* v=\([^ ]*\).*/\1/p'); $(nproc) cores. \`ROUNDS=$rounds COUNT1=$count1 COUNT16=$count16 bench/compare-celery.sh\`"
  python3 "$report" tables "$out/runs.jsonl"
  # The floor under a script's latency one at a time: a request and its answer through a quorum
  # queue of this node, as a start and its status travel (tests/examples/round_trip.rs).
  floor=$("$work/bin/round_trip" 500) || failed "the round trip through the broker failed" /dev/null
  echo
  echo "A request and its answer through a quorum queue of this node, one at a time, nothing else:" \
    "$(python3 -c 'import json, sys; r = json.loads(sys.argv[1]); print("p50 %.2f ms, p90 %.2f ms (%d round trips)" % (r["p50_ms"], r["p90_ms"], r["count"]))' "$floor")"
} | tee "$out/tables.md"
"$work/bin/latency_histogram" "$out/latencies.jsonl" "$out/latency.svg"
say "wrote $out/runs.jsonl, latencies.jsonl, tables.md and latency.svg"
