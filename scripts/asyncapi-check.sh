#!/usr/bin/env bash
# Parses `c360-bridge asyncapi` for every config/*.toml, in YAML and in JSON, with the reference
# AsyncAPI parser (npm @asyncapi/parser, installed by scripts/consumer-tools.sh) and fails on any
# diagnostic of severity error. Prints each parser verdict.
# Usage: scripts/asyncapi-check.sh [CONFIG...]     (default: config/*.toml)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
tools_env=$(scripts/consumer-tools.sh)
eval "$tools_env"
cargo build -q --locked --bin c360-bridge
OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
# C360_BRIDGE_* variables of the caller would override the files: document the files alone.
mapfile -t strip < <(compgen -e | grep '^C360_BRIDGE_' | sed 's/^/-u/' || true)
docs=()
files=("$@"); [ ${#files[@]} -gt 0 ] || files=(config/*.toml)
for file in "${files[@]}"; do
  vars=()
  while read -r var; do
    vars+=("$var=x")
  done < <(sed -n 's/^[[:space:]]*keys_env[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$file")
  name=$(basename "$file" .toml)
  for format in yaml json; do
    env "${strip[@]}" "${vars[@]}" target/debug/c360-bridge asyncapi --config "$file" --format "$format" \
      >"$OUT/$name.$format"
    docs+=("$OUT/$name.$format")
  done
done
NODE_PATH="$C360_ASYNCAPI_NODE_MODULES" node tests/asyncapi/validate.js "${docs[@]}" | sed "s|$OUT/||"
