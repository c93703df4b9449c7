#!/usr/bin/env bash
# Runs every test: unit tests, and end-to-end tests against the real RabbitMQ and Redis
# (started, or installed, first if they are not answering).
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/local/services.sh
ensure_services

command -v cargo >/dev/null || { say "cargo is missing: install Rust (https://rustup.rs) first"; exit 1; }
# The end-to-end tests run the real binaries.
cargo build --locked --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --no-fail-fast "$@"
else
  say "cargo-nextest not found; using cargo test"
  cargo test --locked --workspace --no-fail-fast "$@"
fi
