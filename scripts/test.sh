#!/usr/bin/env bash
# The whole test suite: starts RabbitMQ and tansu (installing them once) and installs nftables
# for the partition tests, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# The partition tests cut a broker's port with nftables (loopback rules in a table of their own).
if ! command -v nft >/dev/null; then
  echo "[test] installing nftables (Debian)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >&2 ||
    { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >&2; }
fi
# The hostile-input tests hold 3,000 idle connections (6,000 descriptors in one process).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# A separate assignment, so that `set -e` stops here when a broker cannot start.
brokers_env=$(scripts/brokers.sh start)
eval "$brokers_env"
export C360_TANSU_BIN
cargo test --workspace --locked "$@"
