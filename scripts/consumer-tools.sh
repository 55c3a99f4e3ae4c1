#!/usr/bin/env bash
# Installs the consumers' tools the tests use, once, under $C360_CACHE (idempotent and quiet):
#   * a Python venv with the CloudEvents SDK, confluent-kafka and pika
#     (tests/consumers/requirements.txt), used by tests/it/consumers.rs;
#   * npm @asyncapi/parser (tests/asyncapi/package.json), used by scripts/asyncapi-check.sh;
#   * npm @grafana/schema and typescript (tests/grafana/package.json) and promtool
#     (scripts/promtool.sh), used by tests/it/monitoring.rs.
# Prints the variables the tests read, as `export NAME=VALUE` lines for eval.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${C360_CACHE:-$HOME/.cache/c360-bridge}"
VENV="$CACHE/consumers-venv"
NODE_DIR="$CACHE/asyncapi-parser"
GRAFANA_DIR="$CACHE/grafana-schema"
REQ="$ROOT/tests/consumers/requirements.txt"
log() { printf '[consumer-tools] %s\n' "$*" >&2; }

# The venv is rebuilt when the requirements change (their copy is kept inside it).
if ! cmp -s "$REQ" "$VENV/requirements.txt" 2>/dev/null; then
  log "installing $(grep -v '^#' "$REQ" | xargs) into $VENV"
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" >&2
  cp "$REQ" "$VENV/requirements.txt"
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  log "installing Debian's nodejs and npm"
  apt_install nodejs npm
fi
if ! cmp -s "$ROOT/tests/asyncapi/package.json" "$NODE_DIR/package.json" 2>/dev/null; then
  log "installing @asyncapi/parser into $NODE_DIR"
  mkdir -p "$NODE_DIR"
  cp "$ROOT/tests/asyncapi/package.json" "$NODE_DIR/package.json"
  (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund >&2) \
    || { rm -f "$NODE_DIR/package.json"; exit 1; }
fi

if ! cmp -s "$ROOT/tests/grafana/package.json" "$GRAFANA_DIR/package.json" 2>/dev/null; then
  log "installing @grafana/schema and typescript into $GRAFANA_DIR"
  mkdir -p "$GRAFANA_DIR"
  cp "$ROOT/tests/grafana/package.json" "$GRAFANA_DIR/package.json"
  (cd "$GRAFANA_DIR" && npm install --silent --no-audit --no-fund >&2) \
    || { rm -f "$GRAFANA_DIR/package.json"; exit 1; }
fi
# A separate assignment, so that `set -e` stops here when promtool cannot be fetched.
promtool=$("$ROOT/scripts/promtool.sh")

echo "export C360_CONSUMER_PYTHON=$VENV/bin/python"
echo "export C360_ASYNCAPI_NODE_MODULES=$NODE_DIR/node_modules"
echo "export C360_GRAFANA_NODE_MODULES=$GRAFANA_DIR/node_modules"
echo "export C360_PROMTOOL=$promtool"
