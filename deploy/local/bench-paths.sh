#!/usr/bin/env bash
# What reaching the broker through an HTTP proxy or a WebSocket relay costs an agent: `dispatcher
# bench` against one agent connected directly, one through squid and one through tinyproxy
# (--proxy), and one through websockify (a wss:// URL, TLS with a CA of this run's own), ROUNDS
# rounds alternating the four,
# at concurrency 1 and 16, all in one run on a private RabbitMQ node and a private Redis (never the
# shared ones on 5672/6379). The dispatcher connects directly every time: the figures are the
# agent's path alone. With OLD_REF set (a commit), that version's agent and dispatcher also run
# directly each round ("old direct"), for a version before this one in the same run.
#
#   ./deploy/local/bench-paths.sh
#   OLD_REF=8b9e02d ./deploy/local/bench-paths.sh
#
# Prints every run and, per concurrency and path, the median p50 and throughput, the spread of
# the runs and the ratio to the direct path.
#
# Environment: ROUNDS (3), COUNT1 (300 scripts at concurrency 1), COUNT16 (2000 at concurrency 16),
# OLD_REF (none). Builds the working tree (and OLD_REF) in release mode, one build at a time on
# the machine; needs squid, tinyproxy, websockify, openssl, rabbitmq-server, redis-server, python3
# and flock. Run as root (the RabbitMQ node and squid drop to users of their own).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
source deploy/local/bench-lib.sh
rounds=${ROUNDS:-3}
count1=${COUNT1:-300}
count16=${COUNT16:-2000}
old_ref=${OLD_REF:-}
for program in squid tinyproxy websockify openssl; do
  command -v "$program" >/dev/null || { say "$program is not installed (apt-get install -y $program)"; exit 1; }
done
work=$(mktemp -d /tmp/cuttle-bench-paths.XXXXXX)
chmod 755 "$work"
agent_pid= proxy_pid= squid_pid= relay_pid=
cleanup() {
  local status=$?
  for pid in "$agent_pid" "$proxy_pid" "$squid_pid" "$relay_pid"; do
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  [ "$status" -eq 0 ] || say "failed; logs in $work/logs"
  private_services_stop
  git -C "$root" worktree remove --force "$work/old-tree" >/dev/null 2>&1 || true
  [ "$status" -eq 0 ] && rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/logs" "$work/new"

say "building the working tree, release"
locked_cargo build --release --bins --quiet
cp target/release/worker-agent target/release/dispatcher "$work/new/"
versions=(new)
if [ -n "$old_ref" ]; then
  say "building $old_ref, release"
  mkdir -p "$work/old"
  git worktree add --detach "$work/old-tree" "$old_ref" >/dev/null 2>&1
  locked_cargo build --release --bins --quiet --manifest-path "$work/old-tree/Cargo.toml" --target-dir "$root/target"
  cp target/release/worker-agent target/release/dispatcher "$work/old/"
  versions+=(old)
fi

private_services_start "$work"
for version in "${versions[@]}"; do make_keys "$work/$version" "$work/$version"; done

# The proxy and the relay, beside the broker.
proxy_port=$(free_port)
cat >"$work/tinyproxy.conf" <<EOF
Port $proxy_port
Listen 127.0.0.1
Timeout 600
MaxClients 200
LogLevel Warning
EOF
tinyproxy -d -c "$work/tinyproxy.conf" >"$work/logs/tinyproxy.log" 2>&1 &
proxy_pid=$!
squid_port=$(free_port)
mkdir -p "$work/squid"
cat >"$work/squid/squid.conf" <<EOF
http_port 127.0.0.1:$squid_port
http_access allow localhost
http_access deny all
cache deny all
pid_filename $work/squid/squid.pid
access_log none
cache_log $work/squid/cache.log
coredump_dir $work/squid
EOF
chown -R proxy "$work/squid" 2>/dev/null || chmod 777 "$work/squid"
squid -N -f "$work/squid/squid.conf" >"$work/logs/squid.log" 2>&1 &
squid_pid=$!
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout "$work/relay.key" -out "$work/relay.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' >"$work/relay.ext"
openssl x509 -req -in "$work/relay.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
  -extfile "$work/relay.ext" -out "$work/relay.pem" 2>/dev/null
relay_port=$(free_port)
websockify --cert="$work/relay.pem" --key="$work/relay.key" --ssl-only "127.0.0.1:$relay_port" \
  "127.0.0.1:$private_rabbit_port" >"$work/logs/websockify.log" 2>&1 &
relay_pid=$!
for _ in $(seq 300); do port_open "$proxy_port" && port_open "$squid_port" && port_open "$relay_port" && break; sleep 0.1; done
port_open "$proxy_port" || { say "tinyproxy did not start: $(tail -5 "$work/logs/tinyproxy.log")"; exit 1; }
port_open "$squid_port" || { say "squid did not start: $(tail -5 "$work/squid/cache.log")"; exit 1; }
port_open "$relay_port" || { say "websockify did not start: $(tail -5 "$work/logs/websockify.log")"; exit 1; }
say "squid on 127.0.0.1:$squid_port, tinyproxy on 127.0.0.1:$proxy_port, websockify on 127.0.0.1:$relay_port"

results="$work/results"
: >"$results"
run() { # version, path, concurrency, count
  local version=$1 path=$2 agent_id="bench-$2-$RANDOM" agent_keys=() dispatcher_keys=() flags=() env=()
  pin_agent "$work/$version" "$agent_id"
  case $path in
    direct) ;;
    squid) flags=(--proxy "http://127.0.0.1:$squid_port") ;;
    tinyproxy) flags=(--proxy "http://127.0.0.1:$proxy_port") ;;
    relay)
      flags=(--amqp-ca-file "$work/ca.pem")
      env=(CUTTLE_AMQP_URL="wss://guest:guest@localhost:$relay_port/")
      ;;
  esac
  local log="$work/logs/agent-$agent_id.log"
  env "${env[@]}" "$work/$version/worker-agent" run --agent-id "$agent_id" --work-dir "$work/agent-$agent_id" \
    "${agent_keys[@]}" "${flags[@]}" >"$log" 2>&1 &
  agent_pid=$!
  await_agent "$agent_id" "$agent_pid" "$log" 120 || { tail -20 "$log" >&2; exit 1; }
  local report
  report=$("$work/$version/dispatcher" "${dispatcher_keys[@]}" bench --target "$agent_id" --count "$4" \
    --concurrency "$3" --json 2>"$work/logs/dispatcher-$agent_id.log") ||
    { say "bench against $agent_id failed"; tail -20 "$log" "$work/logs/dispatcher-$agent_id.log" >&2; exit 1; }
  kill -TERM "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=
  local name=$path
  [ "$version" = old ] && name="old-$path"
  echo "$name $3 $report" | tee -a "$results" >&2
}

for round in $(seq "$rounds"); do
  say "round $round of $rounds"
  for path in direct squid tinyproxy relay; do
    run new "$path" 1 "$count1"
    run new "$path" 16 "$count16"
  done
  if [ -n "$old_ref" ]; then
    run old direct 1 "$count1"
    run old direct 16 "$count16"
  fi
done

python3 - "$results" <<'EOF'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    path, concurrency, report = line.split(" ", 2)
    runs.setdefault((int(concurrency), path), []).append(json.loads(report))
print("| concurrency | agent's path | runs | p50 ms (median) | spread | p50 / direct | throughput /s (median) | spread | throughput / direct | errors |")
print("|---|---|---|---|---|---|---|---|---|---|")
for concurrency in sorted({c for c, _ in runs}):
    base = {key: statistics.median(r[key] for r in runs[(concurrency, "direct")]) for key in ("p50_ms", "throughput_per_s")}
    for path in ("direct", "squid", "tinyproxy", "relay", "old-direct"):
        reports = runs.get((concurrency, path))
        if not reports:
            continue
        cells = []
        for key in ("p50_ms", "throughput_per_s"):
            values = [r[key] for r in reports]
            median = statistics.median(values)
            cells.append(f"{median:.2f} | {min(values):.2f}–{max(values):.2f} | {median / base[key]:.3f}")
        print(f"| {concurrency} | {path} | {len(reports)} | " + " | ".join(cells) + f" | {sum(r['errors'] for r in reports)} |")
EOF
