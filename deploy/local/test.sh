#!/usr/bin/env bash
# Runs every test: unit tests, and end-to-end tests against the real RabbitMQ and Redis
# (started, or installed, first if they are not answering).
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/local/services.sh
check_toolchain
ensure_services
ensure_test_packages

# The end-to-end tests run the real binaries.
cargo build --locked --bins

# Queues of earlier test runs that were killed before they could clean up (no consumer left):
# a few hundred of them exhaust the broker's file handles, and it then stops accepting connections.
if leftovers="$(as_root rabbitmqctl list_queues -q --no-table-headers name consumers 2>/dev/null)"; then
  leftovers="$(awk '$1 ~ /^cuttle\.(agent|pool)\.t-/ && $2 == 0 { print $1 }' <<<"$leftovers")"
  if [ -n "$leftovers" ]; then
    say "deleting $(wc -l <<<"$leftovers") queues left by earlier test runs"
    while read -r queue; do as_root rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true; done <<<"$leftovers"
  fi
fi
# Every queue, Redis key prefix and agent id of this run starts with t-<run>- (tests::unique), so
# what the run left behind can be told from what colleagues' runs on the same broker hold now.
export CUTTLE_TEST_RUN="r$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
# nextest runs the tests: it ends a hung test (.config/nextest.toml) and takes filter expressions
# (`-E 'test(cancel)'`, CONTRIBUTING.md), which `cargo test` would not.
if ! cargo nextest --version >/dev/null 2>&1; then
  say "cargo-nextest not found; installing it (cargo install --locked cargo-nextest)"
  cargo install --locked cargo-nextest || { say "could not install cargo-nextest: install it by hand with the command above"; exit 1; }
fi
# Tests that need what this machine lacks (root, RabbitMQ or Redis servers of their own, a
# browser) skip and write why here (tests::needs): listed after the run, not lost in captured output.
# Under CI=true a skipped test fails the run: a test that skips in CI tests nothing.
export CUTTLE_SKIPPED_LOG="$(mktemp)"
junit="${CARGO_TARGET_DIR:-target}/nextest/default/junit.xml"
rm -f "$junit"
status=0
cargo nextest run --locked --workspace --no-fail-fast "$@" || status=$?
skipped=0
if [ -s "$CUTTLE_SKIPPED_LOG" ]; then
  skipped="$(sort -u "$CUTTLE_SKIPPED_LOG" | wc -l)"
  say "skipped $skipped tests that cannot run here:"
  sort -u "$CUTTLE_SKIPPED_LOG" | sed 's/^/  skipped: /' >&2
  if [ "${CI:-}" = "true" ]; then
    say "CI=true: a skipped test fails the run; give this machine what the tests above lack"
    status=1
  fi
fi
rm -f "$CUTTLE_SKIPPED_LOG"
# Counts from nextest's JUnit report (.config/nextest.toml): a skipped test returned early, so
# nextest counts it as passed.
run=0 failed=0
if [ -f "$junit" ]; then
  run="$(sed -n 's/^<testsuites [^>]*tests="\([0-9]*\)".*/\1/p' "$junit" | head -n 1)"
  failed="$(sed -n 's/^<testsuites [^>]*failures="\([0-9]*\)".*/\1/p' "$junit" | head -n 1)"
  errors="$(sed -n 's/^<testsuites [^>]*errors="\([0-9]*\)".*/\1/p' "$junit" | head -n 1)"
  failed=$(( ${failed:-0} + ${errors:-0} ))
fi

# Tests delete the queues and keys they create: a leftover quorum queue holds broker file handles
# forever, and a few hundred of them stop the broker accepting connections.
if ! all_queues="$(as_root rabbitmqctl list_queues -q --no-table-headers name 2>/dev/null)"; then
  say "cannot run rabbitmqctl: not checking for queues left behind"
else
  queues="$(grep -E "^cuttle\.(agent|pool)\.t-$CUTTLE_TEST_RUN-" <<<"$all_queues" || true)"
  if [ -n "$queues" ]; then
    say "tests left these queues on the broker (delete them, and fix the test that made them):"
    printf '%s\n' "$queues" >&2
    status=1
  fi
fi
keys="$(redis-cli --scan --pattern "t-$CUTTLE_TEST_RUN-*" 2>/dev/null | head -20 || true)"
if [ -n "$keys" ]; then
  say "warning: tests left these Redis keys (first 20 shown):"
  printf '%s\n' "$keys" >&2
fi
echo "$(( ${run:-0} - failed - skipped )) passed, $failed failed, $skipped skipped"
exit "$status"
