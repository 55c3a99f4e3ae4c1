#!/usr/bin/env bash
# The whole test suite: starts RabbitMQ and tansu (installing them once), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# A separate assignment, so that `set -e` stops here when a broker cannot start.
brokers_env=$(scripts/brokers.sh start)
eval "$brokers_env"
export C360_TANSU_BIN
cargo test --workspace --locked "$@"
