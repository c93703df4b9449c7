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

# Keys (docs/security.md, "Trust"): the dispatcher signs commands with its key (the default
# <config>/cuttle/dispatcher.key), the agent runs only what a key in its trusted-keys file signed;
# the agent signs its answers, which the dispatcher believes only under the key pinned for it in
# <config>/cuttle/known_agents. Existing keys are kept; nothing is ever overwritten.
config_dir="${XDG_CONFIG_HOME:-$HOME/.config}/cuttle"
quickstart_dir="$config_dir/quickstart"
mkdir -p "$quickstart_dir"
dispatcher_key="${CUTTLE_DISPATCHER_KEY:-$config_dir/dispatcher.key}"
[ -e "$dispatcher_key" ] || ./target/release/dispatcher keygen --out "$dispatcher_key" >/dev/null
agent_key="$quickstart_dir/$agent_id.key"
[ -e "$agent_key" ] || ./target/release/worker-agent keygen --out "$agent_key" >/dev/null
trusted_keys="$quickstart_dir/trusted_keys"
./target/release/dispatcher --key "$dispatcher_key" public-key >"$trusted_keys"
known_agents="${CUTTLE_KNOWN_AGENTS:-$config_dir/known_agents}"
pin="$agent_id $(./target/release/worker-agent public-key --key "$agent_key")"
grep -qxF "$pin" "$known_agents" 2>/dev/null || { echo "$pin" >>"$known_agents"; say "pinned $agent_id in $known_agents"; }
export CUTTLE_DISPATCHER_KEY="$dispatcher_key" CUTTLE_KNOWN_AGENTS="$known_agents"

log="$(mktemp -t cuttle-agent.XXXXXX.log)"
say "starting agent $agent_id (log: $log)"
./target/release/worker-agent run --agent-id "$agent_id" --key "$agent_key" --trusted-keys "$trusted_keys" >"$log" 2>&1 &
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
say "try it yourself: ./target/release/worker-agent run --agent-id web-01 --trusted-keys $trusted_keys"
say "  (it logs its known-agents line 'web-01 ed25519:...': append it to $known_agents), then"
say "  ./target/release/dispatcher submit --target web-01 -- 'echo hi; exit 3'"
exit "$status"
