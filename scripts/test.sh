#!/usr/bin/env bash
# The whole test suite: starts RabbitMQ, Redis and tansu (installing them once), installs nftables
# (the partition tests) and stunnel4 (the TLS tests), then runs every test.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
cd "$(dirname "$0")/.."
# The partition tests cut a broker's port with nftables (loopback rules in a table of their own).
if ! command -v nft >/dev/null; then
  echo "[test] installing nftables (Debian)" >&2
  apt_install nftables
fi
# The TLS tests put Debian's stunnel4 before a tansu of their own, as a managed broker's TLS port.
if ! command -v stunnel4 >/dev/null; then
  echo "[test] installing stunnel4 (Debian)" >&2
  apt_install stunnel4
fi
# The consumers' tools: the CloudEvents SDK venv (tests/it/consumers.rs), @asyncapi/parser, and
# for tests/it/monitoring.rs promtool (scripts/promtool.sh) and @grafana/schema with typescript.
tools_env=$(scripts/consumer-tools.sh)
eval "$tools_env"
# The hostile-input tests hold 3,000 idle connections (6,000 descriptors in one process).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# A separate assignment, so that `set -e` stops here when a broker cannot start.
brokers_env=$(scripts/brokers.sh start)
eval "$brokers_env"
export C360_TANSU_BIN C360_RABBITMQ_TLS C360_CONSUMER_PYTHON C360_ASYNCAPI_NODE_MODULES C360_GRAFANA_NODE_MODULES C360_PROMTOOL
cargo test --workspace --locked "$@"
