#!/usr/bin/env bash
# Quick start: brings up RabbitMQ and Redis where they are not answering, builds Cuttle, starts
# an agent, runs a sample script through it, and stops the agent again.
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/local/services.sh
check_toolchain
ensure_services

say "building (release)"
cargo build --locked --release --bins --quiet

agent_id="${CUTTLE_QUICKSTART_AGENT:-quickstart-$(hostname -s)}"
log="$(mktemp -t cuttle-agent.XXXXXX.log)"
say "starting agent $agent_id (log: $log)"
./target/release/worker-agent run --agent-id "$agent_id" >"$log" 2>&1 &
agent_pid=$!
trap 'kill -TERM $agent_pid 2>/dev/null; wait $agent_pid 2>/dev/null || true' EXIT

for _ in $(seq 100); do grep -q "consuming commands" "$log" && break; sleep 0.1; done
grep -q "consuming commands" "$log" || { say "the agent did not start; its log:"; cat "$log" >&2; exit 1; }

say "what the agent supports:"
./target/release/dispatcher capabilities "$agent_id"
say "running deploy/local/hello.sh on $agent_id:"
status=0
./target/release/dispatcher submit --target "$agent_id" --script deploy/local/hello.sh || status=$?
say "the script exited with $status (the sample exits 0)"
say "try it yourself: ./target/release/worker-agent run --agent-id web-01, then"
say "  ./target/release/dispatcher submit --target web-01 -- 'echo hi; exit 3'"
exit "$status"
