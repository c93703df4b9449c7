#!/usr/bin/env bash
# Makes sure RabbitMQ and Redis answer on 127.0.0.1 (5672, 6379): starts them if they are
# installed but down, installs them from the distribution's packages if they are missing.
# Sourced by quickstart.sh and test.sh; safe to run on its own.
#
# CUTTLE_RABBITMQ_PORT and CUTTLE_REDIS_PORT check and start them on other ports (point
# CUTTLE_AMQP_URL and CUTTLE_REDIS_URL there too); CUTTLE_RABBITMQ_WAIT is how long RabbitMQ may
# take to come up (90 s); RabbitMQ's log directory is its own RABBITMQ_LOG_BASE. A RabbitMQ it
# starts refuses messages over Cuttle's limit, as deploy/rabbitmq/rabbitmq.conf says.
set -euo pipefail

rabbitmq_port="${CUTTLE_RABBITMQ_PORT:-5672}"
redis_port="${CUTTLE_REDIS_PORT:-6379}"

say() { printf 'cuttle: %s\n' "$*" >&2; }

# The services this run started, with how to stop each (said once they are up).
started=()

# Rust of the workspace's rust-version (Cargo.toml) and a C compiler (some dependencies build C
# code): checked first, each with the command that fixes it.
check_toolchain() {
  local want have
  want="$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml | head -n 1)"
  if ! command -v cargo >/dev/null || ! command -v rustc >/dev/null; then
    say "Rust is missing (this workspace needs $want or newer): install it with"
    say "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y && . \"\$HOME/.cargo/env\""
    return 1
  fi
  have="$(rustc --version | sed -n 's/^rustc \([0-9][0-9.]*\).*/\1/p')"
  if [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n 1)" != "$want" ]; then
    say "rustc $have is older than this workspace's rust-version $want: update it with"
    say "  rustup update stable    (or install $want or newer from https://rustup.rs)"
    return 1
  fi
  if ! command -v cc >/dev/null && ! command -v gcc >/dev/null && ! command -v clang >/dev/null; then
    say "no C compiler found (cc, gcc or clang), which building the dependencies needs: install one with"
    say "  sudo apt-get install -y build-essential    (Debian, Ubuntu; or your distribution's gcc)"
    return 1
  fi
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    say "need root to run: $*"; return 1; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port, what, seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do port_open "$1" && return 0; sleep 0.1; done
  say "$2 did not come up on 127.0.0.1:$1 within $3s"; return 1
}

apt_install() {
  command -v apt-get >/dev/null || { say "cannot install $*: no apt-get here; install it by hand"; return 1; }
  say "installing $* from the distribution's packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

ensure_redis() {
  if port_open "$redis_port"; then return 0; fi
  command -v redis-server >/dev/null || apt_install redis-server
  say "starting Redis on 127.0.0.1:$redis_port"
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no >/dev/null
  wait_port "$redis_port" Redis 20
  started+=("Redis (stop it: redis-cli -p $redis_port shutdown nosave)")
}

ensure_rabbitmq() {
  if port_open "$rabbitmq_port"; then return 0; fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  say "starting RabbitMQ on 127.0.0.1:$rabbitmq_port (this takes a few seconds)"
  local out
  out="$(mktemp -t cuttle-rabbitmq.XXXXXX)"
  # The machine's own rabbitmq.conf stays as it is: the limit goes in as the rabbit
  # application's setting, after whatever extra arguments the caller gives it.
  local limit erl_args
  limit="$(sed -n 's/^max_message_size *= *\([0-9]*\).*/\1/p' "$(dirname "${BASH_SOURCE[0]}")/../rabbitmq/rabbitmq.conf")"
  erl_args="${RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS:-} -rabbit max_message_size $limit"
  as_root env RABBITMQ_NODE_PORT="$rabbitmq_port" RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$erl_args" \
    rabbitmq-server -detached >"$out" 2>&1 || true
  if ! wait_port "$rabbitmq_port" RabbitMQ "${CUTTLE_RABBITMQ_WAIT:-90}"; then
    say "RabbitMQ's own words:"
    cat "$out" >&2
    local log
    for log in "${RABBITMQ_LOG_BASE:-/var/log/rabbitmq}"/*.log; do
      [ -r "$log" ] || continue
      say "the end of $log:"
      tail -n 20 "$log" >&2
    done
    rm -f "$out"
    return 1
  fi
  rm -f "$out"
  as_root rabbitmqctl -q await_startup >/dev/null 2>&1 || true
  started+=("RabbitMQ (stop it: rabbitmqctl stop)")
}

# Packages tests need beyond RabbitMQ and Redis, installed when missing so that no test skips for
# want of them: a browser and its driver for the web view (tests/tests/browser.rs).
ensure_test_packages() {
  local missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  # The proxy, the WebSocket relay and the TLS router of the "behind a proxy or port 443" tests.
  command -v tinyproxy >/dev/null || missing+=(tinyproxy)
  command -v websockify >/dev/null || missing+=(websockify)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v ip >/dev/null || missing+=(iproute2)
  [ "${#missing[@]}" -eq 0 ] && return 0
  apt_install "${missing[@]}" || say "could not install ${missing[*]}: the tests that need them skip (and fail the run under CI=true)"
}

ensure_services() {
  ensure_redis
  ensure_rabbitmq
  if [ "${#started[@]}" -eq 0 ]; then
    say "RabbitMQ and Redis were already answering; nothing started"
  else
    say "started for this run, still running afterwards:"
    local service
    for service in "${started[@]}"; do say "  $service"; done
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  ensure_services
  say "RabbitMQ and Redis are answering"
fi
