#!/usr/bin/env bash
# Benchmarks the bridge against the direct-producer ceiling on the same broker:
# Kafka (tansu), Kafka (librdkafka mock cluster, via `c360-bridge dev`) and RabbitMQ.
# Prints one table: events/s bridge, events/s direct, ratio, p99 per batch, peak RSS of the bridge.
# Knobs: DURATION (10s), CONCURRENCY (8), BATCH (100), EVENT_SIZE (1024).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10s}"; CONCURRENCY="${CONCURRENCY:-8}"; BATCH="${BATCH:-100}"; EVENT_SIZE="${EVENT_SIZE:-1024}"
OUT="${BENCH_OUT:-target/bench}"; mkdir -p "$OUT"
eval "$(scripts/brokers.sh start)"
cargo build --release --locked --bins >&2
BIN=target/release/c360-bridge; LG=target/release/c360-loadgen
LOAD=(--concurrency "$CONCURRENCY" --batch-size "$BATCH" --event-size "$EVENT_SIZE" --duration "$DURATION")
KEY=bench-key

wait_ready() { for _ in $(seq 1 200); do curl -fs "http://$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "bridge not ready" >&2; return 1; }
peak_rss_mib() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
field() { python3 -c "import json,sys; d=json.load(open('$1')); print($2)"; }

# serve_bench NAME SINK_TOML: runs the bridge, the http load, records peak RSS, stops it.
serve_bench() {
  local name=$1 sink=$2 port=18181
  cat >"$OUT/$name.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[log]
level = "warn"
[[webhooks]]
name = "bench"
path = "/hook"
keys = ["$KEY"]
$sink
[[routes]]
match = "*"
sinks = ["s"]
TOML
  $BIN serve --config "$OUT/$name.toml" 2>"$OUT/$name.log" & local pid=$!
  wait_ready "127.0.0.1:$port"
  $LG http --url "http://127.0.0.1:$port/hook" --key "$KEY" "${LOAD[@]}" >"$OUT/$name-http.json"
  peak_rss_mib $pid >"$OUT/$name-rss"
  kill -TERM $pid; wait $pid
}

# Kafka on tansu
serve_bench kafka-tansu "[sinks.s]
type = \"kafka\"
bootstrap_servers = \"127.0.0.1:9092\"
[sinks.s.librdkafka]
\"compression.type\" = \"none\""
$LG direct-kafka --bootstrap 127.0.0.1:9092 --prefix catalog360 "${LOAD[@]}" >"$OUT/kafka-tansu-direct.json"

# RabbitMQ (a bounded queue makes the messages routable)
$LG direct-rabbit --exchange bench --bind-queue c360-bench "${LOAD[@]}" >"$OUT/rabbitmq-direct.json"
serve_bench rabbitmq "[sinks.s]
type = \"rabbitmq\"
url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"
exchange = \"bench\""

# Kafka on the mock cluster: `dev` embeds it; the direct run produces to the same cluster.
$BIN dev --listen 127.0.0.1:18182 >"$OUT/dev.out" 2>"$OUT/dev.log" & DEV=$!
wait_ready 127.0.0.1:18182
BOOT=$(awk -F': ' '/Kafka bootstrap/ {print $2}' "$OUT/dev.out"); DKEY=$(awk -F': ' '/Demo key/ {print $2}' "$OUT/dev.out")
$LG http --url http://127.0.0.1:18182/webhooks/catalog360 --key "$DKEY" "${LOAD[@]}" >"$OUT/kafka-mock-http.json"
peak_rss_mib $DEV >"$OUT/kafka-mock-rss"
$LG direct-kafka --bootstrap "$BOOT" --prefix catalog360 "${LOAD[@]}" >"$OUT/kafka-mock-direct.json"
kill -INT $DEV; wait $DEV || true

printf '\n%s, %s cores, batch %s x %s B, concurrency %s, %s per run\n' "$(date -u +%F)" "$(nproc)" "$BATCH" "$EVENT_SIZE" "$CONCURRENCY" "$DURATION"
printf '| broker | bridge events/s | direct events/s | ratio | bridge p99 ms | direct p99 ms | bridge non-200 | bridge peak RSS MiB |\n|---|---|---|---|---|---|---|---|\n'
for b in kafka-tansu rabbitmq kafka-mock; do
  h="$OUT/$b-http.json"; d="$OUT/$b-direct.json"
  printf '| %s | %.0f | %.0f | %.2f | %s | %s | %s | %s |\n' "$b" \
    "$(field "$h" "d['events_per_s']")" "$(field "$d" "d['events_per_s']")" \
    "$(python3 -c "import json; h=json.load(open('$h')); d=json.load(open('$d')); print(h['events_per_s']/max(d['events_per_s'],1))")" \
    "$(field "$h" "d['latency_ms']['p99']")" "$(field "$d" "d['latency_ms']['p99']")" \
    "$(field "$h" "sum(d['failures'].values())")" "$(cat "$OUT/$b-rss")"
done
