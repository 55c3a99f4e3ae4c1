#!/usr/bin/env bash
# Benchmarks the bridge against the direct-producer ceiling on the same broker:
# Kafka (tansu), Kafka (librdkafka mock cluster, via `c360-bridge dev`) and RabbitMQ.
# For each: ROUNDS alternating runs of the bridge and of the direct producer at full load (the
# table shows the median run of each), then the bridge at half of its median rate (p99 there),
# and the peak RSS of the bridge; then 1-event batches on tansu (requests/s).
# Knobs: DURATION (10s), ROUNDS (3), CONCURRENCY (8), BATCH (100), EVENT_SIZE (1024),
# WORKERS (1: the async runtime threads of the bridge and, to compare like with like, of the
# direct producer; 0 = one per core). The HTTP load generator keeps one thread per core.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10s}"; ROUNDS="${ROUNDS:-3}"; WORKERS="${WORKERS:-1}"
CONCURRENCY="${CONCURRENCY:-8}"; BATCH="${BATCH:-100}"; EVENT_SIZE="${EVENT_SIZE:-1024}"
OUT="${BENCH_OUT:-target/bench}"; mkdir -p "$OUT"
# The tansu port (scripts/brokers.sh starts and restarts tansu there; 9092 by default).
KAFKA_PORT="${C360_KAFKA_PORT:-9092}"
# A separate assignment, so that `set -e` stops here when a broker cannot start.
brokers_env=$(scripts/brokers.sh start)
eval "$brokers_env"
cargo build --release --locked --bins >&2
BIN=target/release/c360-bridge; LG=target/release/c360-loadgen; DIRECT="$LG --worker-threads $WORKERS"
KEY=bench-key; PORT=18181
PID=""; trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null || true' EXIT # no bridge outlives a failure
# Results of earlier invocations (other ROUNDS, older binaries) must not enter this table.
rm -f "$OUT"/*.json "$OUT"/*-rss

load() { echo --concurrency "$CONCURRENCY" --batch-size "${1:-$BATCH}" --event-size "$EVENT_SIZE" --duration "$DURATION"; }
wait_ready() { for _ in $(seq 1 200); do curl -fs "http://$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "bridge not ready" >&2; return 1; }
peak_rss_mib() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
get() { python3 -c "import json; d=json.load(open('$1')); print($2)"; }
# median NAME MODE: copies the run of median events/s among NAME-MODE-<round>.json to NAME-MODE.json.
median() {
  python3 - "$OUT" "$1-$2" <<'PY'
import glob, json, shutil, sys
out, stem = sys.argv[1], sys.argv[2]
runs = sorted(glob.glob(f"{out}/{stem}-[0-9]*.json"), key=lambda p: json.load(open(p))["events_per_s"])
shutil.copy(runs[len(runs) // 2], f"{out}/{stem}.json")
PY
}
half_rate() { get "$OUT/$1-http.json" "d['batches_per_s']/2"; }

# serve NAME SINK_TOML [SERVER_TOML]: writes a config (SERVER_TOML: more [server] keys and
# tables) and starts the bridge; sets $PID. Readiness is polled on $READY_AT (default: $PORT).
serve() {
  cat >"$OUT/$1.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
worker_threads = $WORKERS
${3:-}
[log]
level = "warn"
[[webhooks]]
name = "bench"
path = "/hook"
keys = ["$KEY"]
$2
[[routes]]
match = "*"
sinks = ["s"]
TOML
  $BIN serve --config "$OUT/$1.toml" 2>"$OUT/$1.log" & PID=$!
  wait_ready "127.0.0.1:${READY_AT:-$PORT}"
}
# stop NAME: records the bridge's peak RSS (the highest over a scenario's runs) and stops it.
stop() {
  local rss prev=0; rss=$(peak_rss_mib "$PID")
  [ -f "$OUT/$1-rss" ] && prev=$(cat "$OUT/$1-rss")
  awk -v a="$rss" -v b="$prev" 'BEGIN { print (a > b) ? a : b }' >"$OUT/$1-rss"
  kill -TERM "$PID"; wait "$PID"
}
hook() { echo --url "http://127.0.0.1:$PORT/hook" --key "$KEY"; }

TANSU_SINK="[sinks.s]
type = \"kafka\"
bootstrap_servers = \"127.0.0.1:$KAFKA_PORT\"
[sinks.s.librdkafka]
\"compression.type\" = \"none\""

# Kafka on tansu: every run gets an empty tansu (its memory storage keeps all it was sent, and
# slows down as it grows) and, for the bridge, a fresh bridge process.
fresh_tansu() { scripts/brokers.sh restart-kafka; }
rm -f "$OUT"/*-rss
for r in $(seq 1 "$ROUNDS"); do
  fresh_tansu; serve kafka-tansu "$TANSU_SINK"
  $LG http $(hook) $(load) >"$OUT/kafka-tansu-http-$r.json"
  stop kafka-tansu
  fresh_tansu; $DIRECT direct-kafka --bootstrap "127.0.0.1:$KAFKA_PORT" --prefix catalog360 $(load) >"$OUT/kafka-tansu-direct-$r.json"
done
median kafka-tansu http; median kafka-tansu direct
fresh_tansu; serve kafka-tansu "$TANSU_SINK"
$LG http $(hook) $(load) --rate "$(half_rate kafka-tansu)" >"$OUT/kafka-tansu-half.json"
stop kafka-tansu
fresh_tansu; serve one-event "$TANSU_SINK"
$LG http $(hook) $(load 1) >"$OUT/one-event-http.json"
stop one-event
fresh_tansu; $DIRECT direct-kafka --bootstrap "127.0.0.1:$KAFKA_PORT" --prefix catalog360 $(load 1) >"$OUT/one-event-direct.json"
fresh_tansu

# HTTPS vs HTTP on tansu, alternating in the same rounds: the same bridge, once with
# [server.tls] (a P-256 certificate from a CA of the run, verified by the load generator) and
# once without. Kept-alive connections, so the handshake is paid once per sender.
TLS_DIR="$OUT/tls"; mkdir -p "$TLS_DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/leaf.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$TLS_DIR/ext"
openssl x509 -req -in "$TLS_DIR/leaf.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" -CAcreateserial \
  -days 2 -extfile "$TLS_DIR/ext" -out "$TLS_DIR/cert.pem" 2>/dev/null
TLS_SERVER="admin_listen = \"127.0.0.1:18183\"
[server.tls]
cert_file = \"$TLS_DIR/cert.pem\"
key_file = \"$TLS_DIR/key.pem\""
for r in $(seq 1 "$ROUNDS"); do
  fresh_tansu; serve tls-plain "$TANSU_SINK"
  $LG http $(hook) $(load) >"$OUT/tls-plain-http-$r.json"
  stop tls-plain
  fresh_tansu; READY_AT=18183 serve tls-https "$TANSU_SINK" "$TLS_SERVER"
  $LG http --url "https://127.0.0.1:$PORT/hook" --key "$KEY" --ca-file "$TLS_DIR/ca.pem" $(load) >"$OUT/tls-https-http-$r.json"
  stop tls-https
done
median tls-plain http; median tls-https http
fresh_tansu

# RabbitMQ (a bounded queue bound with # makes the messages routable; emptied before each run,
# because how full it is changes how fast RabbitMQ takes more).
purge() { rabbitmqctl -q purge_queue c360-bench >/dev/null 2>&1 || true; }
serve rabbitmq '[sinks.s]
type = "rabbitmq"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
exchange = "bench"'
for r in $(seq 1 "$ROUNDS"); do
  purge; $DIRECT direct-rabbit --exchange bench --bind-queue c360-bench $(load) >"$OUT/rabbitmq-direct-$r.json"
  purge; $LG http $(hook) $(load) >"$OUT/rabbitmq-http-$r.json"
done
median rabbitmq http; median rabbitmq direct
purge; $LG http $(hook) $(load) --rate "$(half_rate rabbitmq)" >"$OUT/rabbitmq-half.json"
stop rabbitmq

# Kafka on the mock cluster: `dev` embeds it (its route keys messages by /payload/new/id, so the
# direct run does too); the direct run produces to the same cluster.
$BIN dev --listen 127.0.0.1:18182 --worker-threads "$WORKERS" >"$OUT/dev.out" 2>"$OUT/dev.log" & PID=$!
wait_ready 127.0.0.1:18182
BOOT=$(awk -F': ' '/Kafka bootstrap/ {print $2}' "$OUT/dev.out"); DKEY=$(awk -F': ' '/Demo key/ {print $2}' "$OUT/dev.out")
for r in $(seq 1 "$ROUNDS"); do
  $LG http --url http://127.0.0.1:18182/webhooks/catalog360 --key "$DKEY" $(load) >"$OUT/kafka-mock-http-$r.json"
  $DIRECT direct-kafka --bootstrap "$BOOT" --prefix catalog360 --key-pointer /payload/new/id $(load) >"$OUT/kafka-mock-direct-$r.json"
done
median kafka-mock http; median kafka-mock direct
$LG http --url http://127.0.0.1:18182/webhooks/catalog360 --key "$DKEY" $(load) --rate "$(half_rate kafka-mock)" >"$OUT/kafka-mock-half.json"
peak_rss_mib $PID >"$OUT/kafka-mock-rss"
kill -INT $PID; wait $PID || true

printf '\n%s, %s cores, %s B events, concurrency %s, %s per run, median of %s rounds, worker threads %s\n\n' \
  "$(date -u +%F)" "$(nproc)" "$EVENT_SIZE" "$CONCURRENCY" "$DURATION" "$ROUNDS" "$WORKERS"
printf '| broker, %s-event batches | bridge events/s | direct events/s | ratio | bridge p99 ms (full) | direct p99 ms | bridge p99 ms at half rate | non-200 | bridge peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|\n' "$BATCH"
for b in kafka-tansu rabbitmq kafka-mock; do
  h="$OUT/$b-http.json"; d="$OUT/$b-direct.json"; f="$OUT/$b-half.json"
  printf '| %s | %.0f | %.0f | %.2f | %s | %s | %s (at %.0f ev/s) | %s | %s |\n' "$b" \
    "$(get "$h" "d['events_per_s']")" "$(get "$d" "d['events_per_s']")" \
    "$(python3 -c "import json; h=json.load(open('$h')); d=json.load(open('$d')); print(h['events_per_s']/max(d['events_per_s'],1))")" \
    "$(get "$h" "d['latency_ms']['p99']")" "$(get "$d" "d['latency_ms']['p99']")" \
    "$(get "$f" "d['latency_ms']['p99']")" "$(get "$f" "d['events_per_s']")" \
    "$(python3 -c "import glob, json; print(sum(sum(json.load(open(p))['failures'].values()) for p in glob.glob('$OUT/$b-http-*.json') + ['$f']))")" \
    "$(cat "$OUT/$b-rss")"
done
printf '\nAll rounds (events/s): '
for b in kafka-tansu rabbitmq kafka-mock; do
  printf '%s bridge %s, direct %s; ' "$b" \
    "$(python3 -c "import glob, json; print(' '.join('%.0f' % json.load(open(p))['events_per_s'] for p in sorted(glob.glob('$OUT/$b-http-[0-9]*.json'))))")" \
    "$(python3 -c "import glob, json; print(' '.join('%.0f' % json.load(open(p))['events_per_s'] for p in sorted(glob.glob('$OUT/$b-direct-[0-9]*.json'))))")"
done
printf '\n\nHTTPS vs HTTP on tansu (same rounds): HTTPS %.0f events/s (p99 %s ms, non-200 %s), HTTP %.0f events/s (p99 %s ms), ratio %.2f; rounds HTTPS %s, HTTP %s\n' \
  "$(get "$OUT/tls-https-http.json" "d['events_per_s']")" "$(get "$OUT/tls-https-http.json" "d['latency_ms']['p99']")" \
  "$(python3 -c "import glob, json; print(sum(sum(json.load(open(p))['failures'].values()) for p in glob.glob('$OUT/tls-https-http-*.json')))")" \
  "$(get "$OUT/tls-plain-http.json" "d['events_per_s']")" "$(get "$OUT/tls-plain-http.json" "d['latency_ms']['p99']")" \
  "$(python3 -c "import json; a=json.load(open('$OUT/tls-https-http.json')); b=json.load(open('$OUT/tls-plain-http.json')); print(a['events_per_s']/max(b['events_per_s'],1))")" \
  "$(python3 -c "import glob, json; print(' '.join('%.0f' % json.load(open(p))['events_per_s'] for p in sorted(glob.glob('$OUT/tls-https-http-[0-9]*.json'))))")" \
  "$(python3 -c "import glob, json; print(' '.join('%.0f' % json.load(open(p))['events_per_s'] for p in sorted(glob.glob('$OUT/tls-plain-http-[0-9]*.json'))))")"
printf '\n1-event batches on tansu: bridge %.0f requests/s (p99 %s ms), direct %.0f batches/s (p99 %s ms)\n' \
  "$(get "$OUT/one-event-http.json" "d['batches_per_s']")" "$(get "$OUT/one-event-http.json" "d['latency_ms']['p99']")" \
  "$(get "$OUT/one-event-direct.json" "d['batches_per_s']")" "$(get "$OUT/one-event-direct.json" "d['latency_ms']['p99']")"
