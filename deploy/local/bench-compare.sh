#!/usr/bin/env bash
# Compares `dispatcher bench` of two versions of Cuttle in the same run on this machine: the
# working tree ("new") against OLD_REF ("old", default main before signed commands), each agent
# and dispatcher pair in turn on a private RabbitMQ node and a private Redis of its own (never the
# shared ones on 5672/6379), ROUNDS rounds alternating old and new, at concurrency 1 and 16.
# Prints every run and, per setting, the median p50 and throughput of each version and their
# ratio new/old.
#
#   ./deploy/local/bench-compare.sh [OLD_REF]
#
# Environment: ROUNDS (3), COUNT1 (300 scripts at concurrency 1), COUNT16 (2000 at concurrency 16).
# Builds both versions in release mode into this tree's target dir (the dependencies they share
# are compiled once); needs git, cargo, rabbitmq-server, redis-server and python3. Run as root
# (the RabbitMQ node drops to the rabbitmq user).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
old_ref=${1:-62e40d2}
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
  rm -rf "$work"
}
trap cleanup EXIT

say "building old ($old_ref) and new (working tree), release"
git -C "$root" worktree add --detach "$work/old-tree" "$old_ref" >/dev/null 2>&1
mkdir -p "$work/old" "$work/new"
cargo build --release --bins --quiet --manifest-path "$work/old-tree/Cargo.toml" --target-dir "$root/target"
cp target/release/worker-agent target/release/dispatcher "$work/old/"
cargo build --release --bins --quiet
cp target/release/worker-agent target/release/dispatcher "$work/new/"

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

# Keys for the new version (the old one ignores them): the agent trusts the dispatcher, the
# dispatcher pins the agent.
"$work/new/dispatcher" keygen --out "$work/dispatcher.key" >"$work/trusted_keys"
agent_public=$("$work/new/worker-agent" keygen --out "$work/agent.key")
export CUTTLE_DISPATCHER_KEY=$work/dispatcher.key CUTTLE_KNOWN_AGENTS=$work/known_agents

results="$work/results"
: >"$results"
run() { # version, concurrency, count
  local version=$1 agent_id="bench-$1-$RANDOM" log="$work/agent-$1.log" extra=()
  if [ "$version" = new ]; then
    extra=(--key "$work/agent.key" --trusted-keys "$work/trusted_keys")
    echo "$agent_id $agent_public" >>"$work/known_agents"
  fi
  "$work/$version/worker-agent" run --agent-id "$agent_id" --work-dir "$work/agent-$agent_id" "${extra[@]}" >"$log" 2>&1 &
  agent_pid=$!
  for _ in $(seq 200); do grep -q "consuming commands" "$log" && break; sleep 0.1; done
  local report
  report=$("$work/$version/dispatcher" bench --target "$agent_id" --count "$3" --concurrency "$2" --json)
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
print("| concurrency | version | p50 ms (median of runs) | throughput /s (median) | errors |")
print("|---|---|---|---|---|")
for concurrency in sorted({c for c, _ in runs}):
    median = {}
    for version in ("old", "new"):
        reports = runs[(concurrency, version)]
        p50 = statistics.median(r["p50_ms"] for r in reports)
        rate = statistics.median(r["throughput_per_s"] for r in reports)
        median[version] = (p50, rate)
        print(f"| {concurrency} | {version} | {p50:.2f} | {rate:.1f} | {sum(r['errors'] for r in reports)} |")
    (old_p50, old_rate), (new_p50, new_rate) = median["old"], median["new"]
    print(f"| {concurrency} | new/old | {new_p50 / old_p50:.3f} | {new_rate / old_rate:.3f} | |")
EOF
