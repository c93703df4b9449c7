#!/usr/bin/env bash
# Compares `dispatcher bench` of two versions of Cuttle in the same run on this machine: NEW_REF
# ("new", default the working tree) against OLD_REF ("old", default 95e2822, main before signed
# commands), each agent and dispatcher pair in turn on a private RabbitMQ node and a private Redis
# of its own (never the shared ones on 5672/6379), ROUNDS rounds alternating old and new, at
# concurrency 1 and 16. Prints every run and, per setting, the median p50 and throughput of each
# version, their ratio new/old, and the spread (lowest and highest) of the runs.
#
#   ./deploy/local/bench-compare.sh [OLD_REF [NEW_REF]]
#   ./deploy/local/bench-compare.sh 95e2822          # signed commands: before trust vs the working tree
#   ./deploy/local/bench-compare.sh c314515 69c66e7  # metrics: the commit before vs the one adding them
#
# A version whose agent takes --trusted-keys gets keys of its own (the agent trusts the
# dispatcher's, the dispatcher pins the agent's); an older one runs without.
#
# Environment: ROUNDS (3), COUNT1 (300 scripts at concurrency 1), COUNT16 (2000 at concurrency 16).
# Builds both versions in release mode into this tree's target dir (the dependencies they share
# are compiled once); needs git, cargo, rabbitmq-server, redis-server and python3. Run as root
# (the RabbitMQ node drops to the rabbitmq user).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
old_ref=${1:-95e2822}
new_ref=${2:-}
rounds=${ROUNDS:-3}
count1=${COUNT1:-300}
count16=${COUNT16:-2000}
work=$(mktemp -d /tmp/cuttle-bench.XXXXXX)
chmod 755 "$work"
say() { printf 'bench: %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

node="cuttle_bench_$$@localhost"
rabbit_port=$(free_port)
redis_port=$(free_port)
agent_pid=
cleanup() {
  [ -n "$agent_pid" ] && kill -TERM "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  rabbitmqctl -n "$node" -q stop >/dev/null 2>&1 || true
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  git -C "$root" worktree remove --force "$work/old-tree" >/dev/null 2>&1 || true
  git -C "$root" worktree remove --force "$work/new-tree" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

build() { # version, ref (empty: the working tree)
  local manifest=$root/Cargo.toml
  if [ -n "$2" ]; then
    git -C "$root" worktree add --detach "$work/$1-tree" "$2" >/dev/null 2>&1
    manifest=$work/$1-tree/Cargo.toml
  fi
  mkdir -p "$work/$1"
  cargo build --release --bins --quiet --manifest-path "$manifest" --target-dir "$root/target"
  cp "$root/target/release/worker-agent" "$root/target/release/dispatcher" "$work/$1/"
}
say "building old ($old_ref) and new (${new_ref:-working tree}), release"
build old "$old_ref"
build new "$new_ref"

say "private RabbitMQ on 127.0.0.1:$rabbit_port, Redis on 127.0.0.1:$redis_port"
mkdir -p "$work/rabbit/mnesia" "$work/rabbit/log"
echo "listeners.tcp.local = 127.0.0.1:$rabbit_port" >"$work/rabbit/rabbitmq.conf"
echo "[]." >"$work/rabbit/enabled_plugins"
chown -R rabbitmq:rabbitmq "$work/rabbit" 2>/dev/null || true
RABBITMQ_NODENAME=$node RABBITMQ_NODE_PORT=$rabbit_port RABBITMQ_DIST_PORT=$(free_port) \
  RABBITMQ_MNESIA_BASE=$work/rabbit/mnesia RABBITMQ_LOG_BASE=$work/rabbit/log \
  RABBITMQ_ENABLED_PLUGINS_FILE=$work/rabbit/enabled_plugins RABBITMQ_CONFIG_FILE=$work/rabbit/rabbitmq.conf \
  rabbitmq-server -detached >/dev/null 2>&1
redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize yes --save "" --appendonly no >/dev/null
for _ in $(seq 900); do port_open "$rabbit_port" && break; sleep 0.1; done
port_open "$rabbit_port" || { say "the private RabbitMQ did not start"; exit 1; }
export CUTTLE_AMQP_URL="amqp://guest:guest@127.0.0.1:$rabbit_port/%2f" CUTTLE_REDIS_URL="redis://127.0.0.1:$redis_port"

# Keys for each version that signs: its agent trusts its dispatcher, its dispatcher pins its agent.
signs() { "$work/$1/worker-agent" run --help | grep -q -- --trusted-keys; }
for version in old new; do
  if signs "$version"; then
    "$work/$version/dispatcher" keygen --out "$work/$version/dispatcher.key" >"$work/$version/trusted_keys"
    "$work/$version/worker-agent" keygen --out "$work/$version/agent.key" >"$work/$version/agent.pub"
    : >"$work/$version/known_agents"
    say "$version signs commands and answers"
  fi
done

results="$work/results"
: >"$results"
run() { # version, concurrency, count
  local version=$1 agent_id="bench-$1-$RANDOM" log="$work/agent-$1.log" agent_keys=() dispatcher_keys=()
  if signs "$version"; then
    agent_keys=(--key "$work/$version/agent.key" --trusted-keys "$work/$version/trusted_keys")
    dispatcher_keys=(--key "$work/$version/dispatcher.key" --known-agents "$work/$version/known_agents")
    echo "$agent_id $(cat "$work/$version/agent.pub")" >>"$work/$version/known_agents"
  fi
  "$work/$version/worker-agent" run --agent-id "$agent_id" --work-dir "$work/agent-$agent_id" "${agent_keys[@]}" \
    >"$log" 2>&1 &
  agent_pid=$!
  for _ in $(seq 200); do grep -q "consuming commands" "$log" && break; sleep 0.1; done
  local report
  report=$("$work/$version/dispatcher" "${dispatcher_keys[@]}" bench --target "$agent_id" --count "$3" \
    --concurrency "$2" --json)
  kill -TERM "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=
  echo "$version $2 $report" | tee -a "$results" >&2
}

for round in $(seq "$rounds"); do
  say "round $round of $rounds"
  for version in old new; do
    run "$version" 1 "$count1"
    run "$version" 16 "$count16"
  done
done

python3 - "$results" <<'EOF'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    version, concurrency, report = line.split(" ", 2)
    runs.setdefault((int(concurrency), version), []).append(json.loads(report))
print("| concurrency | version | runs | p50 ms (median of runs) | p50 spread | throughput /s (median) | throughput spread | errors |")
print("|---|---|---|---|---|---|---|---|")
for concurrency in sorted({c for c, _ in runs}):
    median = {}
    for version in ("old", "new"):
        reports = runs[(concurrency, version)]
        p50s = [r["p50_ms"] for r in reports]
        rates = [r["throughput_per_s"] for r in reports]
        p50, rate = statistics.median(p50s), statistics.median(rates)
        median[version] = (p50, rate)
        print(f"| {concurrency} | {version} | {len(reports)} | {p50:.2f} | {min(p50s):.2f}–{max(p50s):.2f} "
              f"| {rate:.1f} | {min(rates):.1f}–{max(rates):.1f} | {sum(r['errors'] for r in reports)} |")
    (old_p50, old_rate), (new_p50, new_rate) = median["old"], median["new"]
    print(f"| {concurrency} | new/old | | {new_p50 / old_p50:.3f} | | {new_rate / old_rate:.3f} | | |")
EOF
