#!/usr/bin/env bash
# Prints the path of a `promtool` (Prometheus 2.42, Debian's `prometheus` package), fetching it
# once into $C360_CACHE/bin. Only the binary is taken out of the .deb (`apt-get download` +
# `dpkg-deb -x`): installing the package would start a Prometheus daemon. promtool needs only libc.
# Used by scripts/test.sh (C360_PROMTOOL) for tests/it/monitoring.rs.
# Usage: scripts/promtool.sh            (prints e.g. /root/.cache/c360-bridge/bin/promtool)
set -euo pipefail
CACHE="${C360_CACHE:-$HOME/.cache/c360-bridge}"
BIN="$CACHE/bin/promtool"
log() { printf '[promtool] %s\n' "$*" >&2; }

if [ ! -x "$BIN" ] || ! "$BIN" --version >/dev/null 2>&1; then
  log "fetching promtool from Debian's prometheus package into $CACHE/bin"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # apt-get download needs the package lists; a fresh machine has none until an update.
  (cd "$work" && { apt-get download -qq prometheus >/dev/null 2>&1 \
    || { apt-get update -qq >&2 && apt-get download -qq prometheus >&2; }; })
  deb=$(find "$work" -maxdepth 1 -name 'prometheus_*.deb' | head -n 1)
  [ -n "$deb" ] || { log "apt-get download prometheus fetched nothing"; exit 1; }
  dpkg-deb -x "$deb" "$work/root"
  mkdir -p "$CACHE/bin"
  install -m 0755 "$work/root/usr/bin/promtool" "$BIN.tmp"
  mv "$BIN.tmp" "$BIN"
fi
"$BIN" --version >/dev/null
echo "$BIN"
