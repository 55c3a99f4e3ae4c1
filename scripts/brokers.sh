#!/usr/bin/env bash
# Installs (once, cached) and starts the brokers the tests and benchmarks use, on 127.0.0.1:
#   RabbitMQ (Debian's rabbitmq-server) on 5672 and, over TLS, on 5671 (a CA, server and client
#   certificate made here with openssl, in $STATE/rabbitmq-tls; EXTERNAL login for the client
#   certificate's user c360-bridge), tansu 0.6.0 (Kafka protocol) on 9092,
#   Redis (Debian's redis-server, for the shared retry ledger) on 6379,
#   NATS (Debian's nats-server, JetStream on, its store in $STATE/nats) on 4222.
# Usage: scripts/brokers.sh start|stop|status|restart-kafka.  Idempotent: a running broker is left alone.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
shopt -s inherit_errexit # a failing step inside $(...) (e.g. the tansu build) stops the script

CACHE="${C360_CACHE:-$HOME/.cache/c360-bridge}"
TANSU_VERSION=0.6.0
KAFKA_PORT="${C360_KAFKA_PORT:-9092}"
REDIS_PORT="${C360_REDIS_PORT:-6379}"
NATS_PORT="${C360_NATS_PORT:-4222}"
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

RABBIT_TLS="$STATE/rabbitmq-tls"

# A CA, a server certificate for localhost/127.0.0.1 and a client certificate whose common name
# is the RabbitMQ user c360-bridge, once. Readable by the rabbitmq user (test material only).
make_rabbitmq_pki() {
  [ -s "$RABBIT_TLS/client.ext" ] && return 0
  command -v openssl >/dev/null || apt_install openssl
  mkdir -p "$RABBIT_TLS"
  local d="$RABBIT_TLS"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=c360-bridge test CA" \
    -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 3650 \
    -extfile "$d/server.ext" -out "$d/server.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=c360-bridge" -keyout "$d/client.key" -out "$d/client.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$d/client.ext" # X.509 v3, as rustls requires
  openssl x509 -req -in "$d/client.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 3650 \
    -extfile "$d/client.ext" -out "$d/client.pem" 2>/dev/null
  chmod 755 "$d"; chmod 644 "$d"/*
}

# The node's configuration: the plain listener, a TLS listener that asks for (but does not require)
# a client certificate, and EXTERNAL beside PLAIN (the user is the certificate's common name).
write_rabbitmq_conf() {
  cat >"$RABBIT_TLS/rabbitmq.conf" <<CONF
listeners.tcp.default = 5672
listeners.ssl.default = 5671
ssl_options.cacertfile = $RABBIT_TLS/ca.pem
ssl_options.certfile = $RABBIT_TLS/server.pem
ssl_options.keyfile = $RABBIT_TLS/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = common_name
CONF
  chmod 644 "$RABBIT_TLS/rabbitmq.conf"
}

start_rabbitmq() {
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing rabbitmq-server (Debian)"
    apt_install rabbitmq-server
  fi
  local new_pki=no
  [ -s "$RABBIT_TLS/client.ext" ] || new_pki=yes
  make_rabbitmq_pki
  write_rabbitmq_conf
  if port_open 5672 && { ! port_open 5671 || [ "$new_pki" = yes ]; }; then
    log "RabbitMQ runs without this TLS listener: restarting it with $RABBIT_TLS/rabbitmq.conf"
    rabbitmqctl -q stop >/dev/null 2>&1 || true
    for _ in $(seq 1 100); do port_open 5672 || break; sleep 0.2; done
  fi
  if ! port_open 5672; then
    log "starting RabbitMQ"
    rabbitmq-plugins -q enable --offline rabbitmq_auth_mechanism_ssl >/dev/null
    RABBITMQ_CONFIG_FILE="$RABBIT_TLS/rabbitmq.conf" rabbitmq-server -detached >&2 2>&1 || true
  fi
  await_rabbitmq 120 || { log "RabbitMQ did not start; see /var/log/rabbitmq/"; exit 1; }
  wait_port 5672 60 || { log "RabbitMQ did not open 5672"; exit 1; }
  wait_port 5671 30 || { log "RabbitMQ did not open its TLS port 5671; see /var/log/rabbitmq/"; exit 1; }
  # The client certificate's user, for EXTERNAL login (its password is never used).
  if ! rabbitmqctl -q list_users 2>/dev/null | grep -q '^c360-bridge\b'; then
    rabbitmqctl -q add_user c360-bridge "$(openssl rand -hex 16)" >/dev/null
    rabbitmqctl -q set_permissions -p / c360-bridge '.*' '.*' '.*' >/dev/null
  fi
  log "RabbitMQ ready on 127.0.0.1:5672 and, over TLS, 5671 (CA and client certificate in $RABBIT_TLS)"
}

# Debian's redis-server (redis-cli comes with it); no persistence: the ledger is an optimisation.
# Expired and evicted ledger sets are freed in the background (docs/deployment.md: Redis settings).
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

# Debian's nats-server with JetStream; ready once its monitoring endpoint says so (/healthz
# answers ok only when JetStream is up too).
start_nats() {
  if ! command -v nats-server >/dev/null; then
    log "installing nats-server (Debian)"
    apt_install nats-server
  fi
  mkdir -p "$STATE/nats"
  local monitor=$(( NATS_PORT + 4000 ))
  if ! port_open "$NATS_PORT"; then
    log "starting nats-server on 127.0.0.1:$NATS_PORT (JetStream in $STATE/nats)"
    nohup nats-server -a 127.0.0.1 -p "$NATS_PORT" -m "$monitor" -js -sd "$STATE/nats" \
      >"$STATE/nats.log" 2>&1 &
    echo $! >"$STATE/nats.pid"
  fi
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$monitor" && printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3 && grep -q '"ok"' <&3) 2>/dev/null; then
      log "nats-server ready on 127.0.0.1:$NATS_PORT (JetStream)"
      return 0
    fi
    sleep 0.1
  done
  log "nats-server did not become healthy on $NATS_PORT; see $STATE/nats.log"; exit 1
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
  start) start_rabbitmq; start_redis; start_tansu; start_nats
         printf 'C360_TANSU_BIN=%q\nC360_RABBITMQ_TLS=%q\n' "$STATE/tansu" "$RABBIT_TLS" ;;
  # An empty tansu (memory storage keeps everything it was sent; benchmarks want a fresh one).
  restart-kafka) stop_tansu; start_tansu ;;
  stop)
    [ -f "$STATE/tansu.pid" ] && kill "$(cat "$STATE/tansu.pid")" 2>/dev/null || true
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    [ -f "$STATE/nats.pid" ] && kill "$(cat "$STATE/nats.pid")" 2>/dev/null || true
    rabbitmqctl -q stop >/dev/null 2>&1 || true ;;
  status) port_open 5672 && echo "rabbitmq up" || echo "rabbitmq down"
          port_open "$KAFKA_PORT" && echo "tansu up" || echo "tansu down"
          port_open "$REDIS_PORT" && echo "redis up" || echo "redis down"
          port_open "$NATS_PORT" && echo "nats up" || echo "nats down" ;;
  *) echo "usage: $0 start|stop|status|restart-kafka" >&2; exit 2 ;;
esac
