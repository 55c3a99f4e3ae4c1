#!/usr/bin/env bash
# Benchmarks the bridge against the direct-producer ceiling on the same broker:
# Kafka (tansu), Kafka (librdkafka mock cluster, via `c360-bridge dev`) and RabbitMQ.
# For each: bridge at full load, direct at full load, bridge at half of its full-load rate
# (p99 there), peak RSS of the bridge; then 1-event batches on tansu (requests/s).
# Knobs: DURATION (10s), CONCURRENCY (8), BATCH (100), EVENT_SIZE (1024).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10s}"; CONCURRENCY="${CONCURRENCY:-8}"; BATCH="${BATCH:-100}"; EVENT_SIZE="${EVENT_SIZE:-1024}"
OUT="${BENCH_OUT:-target/bench}"; mkdir -p "$OUT"
# A separate assignment, so that `set -e` stops here when a broker cannot start.
brokers_env=$(scripts/brokers.sh start)
eval "$brokers_env"
cargo build --release --locked --bins >&2
BIN=target/release/c360-bridge; LG=target/release/c360-loadgen
KEY=bench-key; PORT=18181

load() { echo --concurrency "$CONCURRENCY" --batch-size "${1:-$BATCH}" --event-size "$EVENT_SIZE" --duration "$DURATION"; }
wait_ready() { for _ in $(seq 1 200); do curl -fs "http://$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "bridge not ready" >&2; return 1; }
peak_rss_mib() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
get() { python3 -c "import json; d=json.load(open('$1')); print($2)"; }
half_rate() { get "$1" "d['batches_per_s']/2"; }

# http_runs NAME URL KEY: full load, then half of the rate it reached.
http_runs() {
  $LG http --url "$2" --key "$3" $(load) >"$OUT/$1-http.json"
  $LG http --url "$2" --key "$3" $(load) --rate "$(half_rate "$OUT/$1-http.json")" >"$OUT/$1-half.json"
}

# serve NAME SINK_TOML: writes a config and starts the bridge; sets $PID.
serve() {
  cat >"$OUT/$1.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
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
  wait_ready "127.0.0.1:$PORT"
}
stop() { peak_rss_mib "$PID" >"$OUT/$1-rss"; kill -TERM "$PID"; wait "$PID"; }

TANSU_SINK='[sinks.s]
type = "kafka"
bootstrap_servers = "127.0.0.1:9092"
[sinks.s.librdkafka]
"compression.type" = "none"'

# Kafka on tansu: every run gets an empty tansu (its memory storage keeps all it was sent, and
# slows down as it grows) and, for the bridge, a fresh bridge process.
fresh_tansu() { scripts/brokers.sh restart-kafka 2>/dev/null; }
fresh_tansu; serve kafka-tansu "$TANSU_SINK"
$LG http --url "http://127.0.0.1:$PORT/hook" --key "$KEY" $(load) >"$OUT/kafka-tansu-http.json"
stop kafka-tansu
fresh_tansu; serve kafka-tansu-half "$TANSU_SINK"
$LG http --url "http://127.0.0.1:$PORT/hook" --key "$KEY" $(load) --rate "$(half_rate "$OUT/kafka-tansu-http.json")" >"$OUT/kafka-tansu-half.json"
stop kafka-tansu-half
fresh_tansu; serve one-event "$TANSU_SINK"
$LG http --url "http://127.0.0.1:$PORT/hook" --key "$KEY" $(load 1) >"$OUT/one-event-http.json"
stop one-event
fresh_tansu; $LG direct-kafka --bootstrap 127.0.0.1:9092 --prefix catalog360 $(load) >"$OUT/kafka-tansu-direct.json"
fresh_tansu; $LG direct-kafka --bootstrap 127.0.0.1:9092 --prefix catalog360 $(load 1) >"$OUT/one-event-direct.json"
fresh_tansu

# RabbitMQ (a bounded queue bound with # makes the messages routable).
$LG direct-rabbit --exchange bench --bind-queue c360-bench $(load) >"$OUT/rabbitmq-direct.json"
serve rabbitmq '[sinks.s]
type = "rabbitmq"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
exchange = "bench"'
http_runs rabbitmq "http://127.0.0.1:$PORT/hook" "$KEY"
stop rabbitmq

# Kafka on the mock cluster: `dev` embeds it; the direct run produces to the same cluster.
$BIN dev --listen 127.0.0.1:18182 >"$OUT/dev.out" 2>"$OUT/dev.log" & PID=$!
wait_ready 127.0.0.1:18182
BOOT=$(awk -F': ' '/Kafka bootstrap/ {print $2}' "$OUT/dev.out"); DKEY=$(awk -F': ' '/Demo key/ {print $2}' "$OUT/dev.out")
http_runs kafka-mock http://127.0.0.1:18182/webhooks/catalog360 "$DKEY"
peak_rss_mib $PID >"$OUT/kafka-mock-rss"
$LG direct-kafka --bootstrap "$BOOT" --prefix catalog360 $(load) >"$OUT/kafka-mock-direct.json"
kill -INT $PID; wait $PID || true

printf '\n%s, %s cores, %s B events, concurrency %s, %s per run\n\n' "$(date -u +%F)" "$(nproc)" "$EVENT_SIZE" "$CONCURRENCY" "$DURATION"
printf '| broker, %s-event batches | bridge events/s | direct events/s | ratio | bridge p99 ms (full) | direct p99 ms | bridge p99 ms at half rate | non-200 | bridge peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|\n' "$BATCH"
for b in kafka-tansu rabbitmq kafka-mock; do
  h="$OUT/$b-http.json"; d="$OUT/$b-direct.json"; f="$OUT/$b-half.json"
  printf '| %s | %.0f | %.0f | %.2f | %s | %s | %s (at %.0f ev/s) | %s | %s |\n' "$b" \
    "$(get "$h" "d['events_per_s']")" "$(get "$d" "d['events_per_s']")" \
    "$(python3 -c "import json; h=json.load(open('$h')); d=json.load(open('$d')); print(h['events_per_s']/max(d['events_per_s'],1))")" \
    "$(get "$h" "d['latency_ms']['p99']")" "$(get "$d" "d['latency_ms']['p99']")" \
    "$(get "$f" "d['latency_ms']['p99']")" "$(get "$f" "d['events_per_s']")" \
    "$(get "$h" "sum(d['failures'].values()) + sum(json.load(open('$f'))['failures'].values())")" "$(cat "$OUT/$b-rss")"
done
printf '\n1-event batches on tansu: bridge %.0f requests/s (p99 %s ms), direct %.0f batches/s (p99 %s ms)\n' \
  "$(get "$OUT/one-event-http.json" "d['batches_per_s']")" "$(get "$OUT/one-event-http.json" "d['latency_ms']['p99']")" \
  "$(get "$OUT/one-event-direct.json" "d['batches_per_s']")" "$(get "$OUT/one-event-direct.json" "d['latency_ms']['p99']")"
