#!/usr/bin/env bash
# Makes sure RabbitMQ and Redis answer on 127.0.0.1 (5672, 6379): starts them if they are
# installed but down, installs them from the distribution's packages if they are missing.
# Sourced by quickstart.sh and test.sh; safe to run on its own.
set -euo pipefail

say() { printf 'cuttle: %s\n' "$*" >&2; }

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
  if port_open 6379; then return 0; fi
  command -v redis-server >/dev/null || apt_install redis-server
  say "starting Redis on 127.0.0.1:6379"
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  wait_port 6379 Redis 20
}

ensure_rabbitmq() {
  if port_open 5672; then return 0; fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  say "starting RabbitMQ on 127.0.0.1:5672 (this takes a few seconds)"
  as_root rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port 5672 RabbitMQ 90
  as_root rabbitmqctl -q await_startup >/dev/null 2>&1 || true
}

ensure_services() {
  ensure_redis
  ensure_rabbitmq
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  ensure_services
  say "RabbitMQ and Redis are answering"
fi
