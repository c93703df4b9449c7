# shellcheck shell=bash
# Sourced (never run) by the benchmarks that measure Cuttle against something else in one run:
# deploy/local/bench-compare.sh (two versions of Cuttle) and bench/compare-celery.sh (Celery).
# Gives them a private RabbitMQ node and a private Redis (never the shared ones on 5672/6379),
# release builds that wait their turn for the machine, keys for an agent and its dispatcher, and
# each process's CPU time from /proc. Needs rabbitmq-server, rabbitmqctl, redis-server, redis-cli,
# python3 and flock; run as root (the RabbitMQ node drops to the rabbitmq user).

say() { printf 'bench: %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# cargo, one build at a time on this machine: every build and check here takes this lock.
locked_cargo() { flock /tmp/cuttle-cargo.lock cargo "$@"; }

# CPU clock ticks a live process has used: "OWN REAPED", its own (utime + stime) and that of the
# children it has waited for (cutime + cstime, e.g. an agent's script shells). Read after the
# last ')' of /proc/PID/stat, since a process name may hold spaces and parentheses.
cpu_ticks() {
  local stat
  stat=$(<"/proc/$1/stat")
  awk '{ print $12 + $13, $14 + $15 }' <<<"${stat##*) }"
}

private_node=
private_rabbit_port=
private_redis_port=
private_dir=
# Starts a RabbitMQ node and a Redis of this run's own under directory $1, on free ports of
# 127.0.0.1, and waits until both answer; sets private_node, private_rabbit_port and
# private_redis_port, and exports CUTTLE_AMQP_URL and CUTTLE_REDIS_URL for them. Call
# private_services_stop from the caller's EXIT trap: it stops whatever this started.
private_services_start() {
  private_dir=$1
  private_node="cuttle_bench_$$@localhost"
  private_rabbit_port=$(free_port)
  private_redis_port=$(free_port)
  say "private RabbitMQ on 127.0.0.1:$private_rabbit_port, Redis on 127.0.0.1:$private_redis_port"
  mkdir -p "$private_dir/rabbit/mnesia" "$private_dir/rabbit/log" "$private_dir/redis"
  echo "listeners.tcp.local = 127.0.0.1:$private_rabbit_port" >"$private_dir/rabbit/rabbitmq.conf"
  # Cuttle's message limit, as every broker it ships or starts has it.
  grep '^max_message_size' "$(dirname "${BASH_SOURCE[0]}")/../rabbitmq/rabbitmq.conf" >>"$private_dir/rabbit/rabbitmq.conf"
  echo "[]." >"$private_dir/rabbit/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$private_dir/rabbit" 2>/dev/null || true
  RABBITMQ_NODENAME=$private_node RABBITMQ_NODE_PORT=$private_rabbit_port RABBITMQ_DIST_PORT=$(free_port) \
    RABBITMQ_MNESIA_BASE=$private_dir/rabbit/mnesia RABBITMQ_LOG_BASE=$private_dir/rabbit/log \
    RABBITMQ_ENABLED_PLUGINS_FILE=$private_dir/rabbit/enabled_plugins \
    RABBITMQ_CONFIG_FILE=$private_dir/rabbit/rabbitmq.conf \
    rabbitmq-server -detached >/dev/null 2>&1
  redis-server --port "$private_redis_port" --bind 127.0.0.1 --daemonize yes --save "" --appendonly no \
    --dir "$private_dir/redis" --pidfile "$private_dir/redis/redis.pid" >/dev/null
  local _
  for _ in $(seq 900); do port_open "$private_rabbit_port" && port_open "$private_redis_port" && break; sleep 0.1; done
  port_open "$private_rabbit_port" || { say "the private RabbitMQ did not start (its log: $private_dir/rabbit/log)"; return 1; }
  port_open "$private_redis_port" || { say "the private Redis did not start"; return 1; }
  export CUTTLE_AMQP_URL="amqp://guest:guest@127.0.0.1:$private_rabbit_port/%2f"
  export CUTTLE_REDIS_URL="redis://127.0.0.1:$private_redis_port"
}

# The private node's Erlang VM (beam.smp), whose CPU time is RabbitMQ's: the one started with
# this node's name in its environment (found even while the node is still booting).
private_rabbit_pid() {
  local pid
  for pid in $(pgrep -x beam.smp); do
    grep -qsz "^RABBITMQ_NODENAME=$private_node\$" "/proc/$pid/environ" && echo "$pid" && return 0
  done
  return 1
}
private_redis_pid() { cat "$private_dir/redis/redis.pid"; }

private_services_stop() {
  [ -n "$private_node" ] || return 0
  local beam
  beam=$(private_rabbit_pid || true)
  if ! rabbitmqctl -n "$private_node" -q stop >/dev/null 2>&1 && [ -n "$beam" ]; then
    kill -TERM "$beam" 2>/dev/null || true # its control channel failed: stop it as a process
  fi
  redis-cli -p "$private_redis_port" shutdown nosave >/dev/null 2>&1 || true
  private_node=
}

# Keys for one agent and its dispatcher in directory $1 (binaries in $2): the agent trusts the
# dispatcher's key (trusted_keys), the dispatcher pins the agent's (known_agents, once
# pin_agent names an agent).
make_keys() {
  "$2/dispatcher" keygen --out "$1/dispatcher.key" >"$1/trusted_keys"
  "$2/worker-agent" keygen --out "$1/agent.key" >"$1/agent.pub"
  : >"$1/known_agents"
}
# Pins agent $2 (which runs with the agent key in $1) for the dispatcher, and sets the flags
# that use these keys: agent_keys for `worker-agent run`, dispatcher_keys for `dispatcher`.
pin_agent() {
  echo "$2 $(cat "$1/agent.pub")" >>"$1/known_agents"
  # shellcheck disable=SC2034 # for the caller
  agent_keys=(--key "$1/agent.key" --trusted-keys "$1/trusted_keys")
  # shellcheck disable=SC2034 # for the caller
  dispatcher_keys=(--key "$1/dispatcher.key" --known-agents "$1/known_agents")
}

# Waits, polling, until agent $1 (process $2) logs in $3 that it consumes its queue; fails at
# once if the process exits, else after $4 seconds.
await_agent() {
  local deadline=$((SECONDS + $4))
  until grep -qs "consuming commands" "$3"; do
    kill -0 "$2" 2>/dev/null || { say "agent $1 exited before consuming commands"; return 1; }
    [ "$SECONDS" -lt "$deadline" ] || { say "agent $1 not consuming commands after ${4}s"; return 1; }
    sleep 0.2
  done
}
