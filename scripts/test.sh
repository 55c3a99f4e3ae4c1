#!/usr/bin/env bash
# The whole test suite: starts RabbitMQ and tansu (installing them once), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/brokers.sh start)"
export C360_TANSU_BIN
cargo test --workspace --locked "$@"
