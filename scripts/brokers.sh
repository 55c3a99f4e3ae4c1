#!/usr/bin/env bash
# Installs (once, cached) and starts the brokers the tests and benchmarks use, on 127.0.0.1:
#   RabbitMQ (Debian's rabbitmq-server) on 5672, tansu 0.6.0 (Kafka protocol) on 9092,
#   Redis (Debian's redis-server, for the shared retry ledger) on 6379.
# Usage: scripts/brokers.sh start|stop|status|restart-kafka.  Idempotent: a running broker is left alone.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
shopt -s inherit_errexit # a failing step inside $(...) (e.g. the tansu build) stops the script

CACHE="${C360_CACHE:-$HOME/.cache/c360-bridge}"
TANSU_VERSION=0.6.0
KAFKA_PORT="${C360_KAFKA_PORT:-9092}"
REDIS_PORT="${C360_REDIS_PORT:-6379}"
STATE="${C360_STATE:-/tmp/c360-bridge-brokers}"
CATALOG_CLASSES="assetitem_created assetitem_split assetitem_updated purchaseorder_created purchaseorder_updated reportjob_updated shipment_created shipment_updated task_completed task_created task_updated"

log() { printf '[brokers] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds
  for _ in $(seq 1 $(( $2 * 10 ))); do port_open "$1" && return 0; sleep 0.1; done
  return 1
}

tansu_bin() {
  if [ -x "$CACHE/bin/tansu" ]; then echo "$CACHE/bin/tansu"; return; fi
  if command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then command -v tansu; return; fi
  log "building tansu $TANSU_VERSION from crates.io into $CACHE (about 12 minutes on 2 cores, once)"
  cargo install --locked --quiet tansu --version "$TANSU_VERSION" --features dynostore,libsql --root "$CACHE" >&2
  echo "$CACHE/bin/tansu"
}

# `await_startup` fails at once while a node that was just launched has not registered with
# epmd yet ("node 'rabbit' not running at all"), so ask again until it answers or time runs out.
await_rabbitmq() { # seconds
  local deadline=$(( SECONDS + $1 ))
  while (( SECONDS < deadline )); do
    rabbitmqctl -q await_startup --timeout 30 >/dev/null 2>&1 && return 0
    sleep 1
  done
  rabbitmqctl -q await_startup --timeout 5 >&2 # one last try, whose diagnostics reach the log
}

start_rabbitmq() {
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing rabbitmq-server (Debian)"
    apt_install rabbitmq-server
  fi
  if ! port_open 5672; then
    log "starting RabbitMQ"
    rabbitmq-server -detached >&2 2>&1 || true
  fi
  await_rabbitmq 120 || { log "RabbitMQ did not start; see /var/log/rabbitmq/"; exit 1; }
  wait_port 5672 60 || { log "RabbitMQ did not open 5672"; exit 1; }
  log "RabbitMQ ready on 127.0.0.1:5672"
}

# Debian's redis-server (redis-cli comes with it); no persistence: the ledger is an optimisation.
# Expired and evicted ledger sets are freed in the background (README: Running several replicas).
start_redis() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    log "installing redis-server (Debian)"
    apt_install redis-server
  fi
  mkdir -p "$STATE"
  if ! port_open "$REDIS_PORT"; then
    log "starting Redis on 127.0.0.1:$REDIS_PORT"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --save '' --appendonly no \
      --lazyfree-lazy-expire yes --lazyfree-lazy-eviction yes --dir "$STATE" --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log" >&2
  fi
  for _ in $(seq 1 100); do
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && { log "Redis ready on 127.0.0.1:$REDIS_PORT"; return 0; }
    sleep 0.1
  done
  log "Redis did not answer on $REDIS_PORT; see $STATE/redis.log"; exit 1
}

start_tansu() {
  local bin; bin=$(tansu_bin)
  mkdir -p "$STATE"
  ln -sf "$bin" "$STATE/tansu"
  if ! port_open "$KAFKA_PORT"; then
    log "starting tansu on 127.0.0.1:$KAFKA_PORT (memory storage)"
    nohup "$bin" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine memory://tansu/ >"$STATE/tansu.log" 2>&1 &
    echo $! >"$STATE/tansu.pid"
  fi
  wait_port "$KAFKA_PORT" 60 || { log "tansu did not open $KAFKA_PORT; see $STATE/tansu.log"; exit 1; }
  local out
  for class in $CATALOG_CLASSES; do
    out=$("$bin" topic create "catalog360.$class" --broker "tcp://127.0.0.1:$KAFKA_PORT" --partitions 3 2>&1) ||
      grep -q "already exists" <<<"$out" || { log "creating catalog360.$class failed: $out"; exit 1; }
  done
  # The dead-letter topic of config/default.toml's commented [dead_letter] and of bench.sh.
  out=$("$bin" topic create "catalog360.dead-letter" --broker "tcp://127.0.0.1:$KAFKA_PORT" --partitions 1 2>&1) ||
    grep -q "already exists" <<<"$out" || { log "creating catalog360.dead-letter failed: $out"; exit 1; }
  log "tansu ready on 127.0.0.1:$KAFKA_PORT (catalog360.* topics created)"
}

stop_tansu() {
  [ -f "$STATE/tansu.pid" ] && kill "$(cat "$STATE/tansu.pid")" 2>/dev/null || true
  for _ in $(seq 1 50); do port_open "$KAFKA_PORT" || return 0; sleep 0.1; done
  log "tansu still listens on $KAFKA_PORT (not started by this script? pid file: $STATE/tansu.pid)"
  exit 1
}

case "${1:-start}" in
  start) start_rabbitmq; start_redis; start_tansu; printf 'C360_TANSU_BIN=%q\n' "$STATE/tansu" ;;
  # An empty tansu (memory storage keeps everything it was sent; benchmarks want a fresh one).
  restart-kafka) stop_tansu; start_tansu ;;
  stop)
    [ -f "$STATE/tansu.pid" ] && kill "$(cat "$STATE/tansu.pid")" 2>/dev/null || true
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    rabbitmqctl -q stop >/dev/null 2>&1 || true ;;
  status) port_open 5672 && echo "rabbitmq up" || echo "rabbitmq down"
          port_open "$KAFKA_PORT" && echo "tansu up" || echo "tansu down"
          port_open "$REDIS_PORT" && echo "redis up" || echo "redis down" ;;
  *) echo "usage: $0 start|stop|status|restart-kafka" >&2; exit 2 ;;
esac
