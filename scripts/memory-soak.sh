#!/usr/bin/env bash
# Runs the bridge under a steady load for a while and samples its RSS, to show whether memory
# stays flat. Usage: scripts/memory-soak.sh [kafka|rabbitmq]; knobs DURATION (300s), RATE
# (batches/s, default 50 = 5000 events/s), SAMPLE (15 s), WORKERS (1, as in bench.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${1:-kafka}"; DURATION="${DURATION:-300s}"; RATE="${RATE:-50}"; SAMPLE="${SAMPLE:-15}"
OUT="${BENCH_OUT:-target/bench}"; mkdir -p "$OUT"
# A separate assignment, so that `set -e` stops here when a broker cannot start.
brokers_env=$(scripts/brokers.sh start)
eval "$brokers_env"
cargo build --release --locked --bins >&2
PORT=18183
case "$TARGET" in
  kafka) scripts/brokers.sh restart-kafka
         SINK=$'[sinks.s]\ntype = "kafka"\nbootstrap_servers = "127.0.0.1:9092"\n[sinks.s.librdkafka]\n"compression.type" = "none"' ;;
  rabbitmq) target/release/c360-loadgen direct-rabbit --exchange bench --bind-queue c360-bench --duration 0s >/dev/null
         SINK=$'[sinks.s]\ntype = "rabbitmq"\nurl = "amqp://guest:guest@127.0.0.1:5672/%2f"\nexchange = "bench"' ;;
  *) echo "usage: $0 [kafka|rabbitmq]" >&2; exit 2 ;;
esac
cat >"$OUT/soak-$TARGET.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
worker_threads = ${WORKERS:-1}
[log]
level = "warn"
[[webhooks]]
name = "soak"
path = "/hook"
keys = ["soak-key"]
$SINK
[[routes]]
match = "*"
sinks = ["s"]
TOML
target/release/c360-bridge serve --config "$OUT/soak-$TARGET.toml" 2>"$OUT/soak-$TARGET.log" & PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
ready=no
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && { ready=yes; break; }; sleep 0.1; done
[ "$ready" = yes ] || { echo "bridge not ready; see $OUT/soak-$TARGET.log" >&2; exit 1; }
target/release/c360-loadgen http --url "http://127.0.0.1:$PORT/hook" --key soak-key --concurrency 8 \
  --duration "$DURATION" --rate "$RATE" >"$OUT/soak-$TARGET.json" & LG=$!
echo "seconds rss_mib"
start=$(date +%s)
while kill -0 $LG 2>/dev/null; do
  echo "$(( $(date +%s) - start )) $(awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$PID/status)"
  sleep "$SAMPLE"
done
wait $LG
echo "peak $(awk '/VmHWM/ {printf "%.1f", $2/1024}' /proc/$PID/status) MiB"
kill -TERM $PID; wait $PID
python3 -c "import json; d=json.load(open('$OUT/soak-$TARGET.json')); print('events/s %.0f, p99 %s ms, failures %s' % (d['events_per_s'], d['latency_ms']['p99'], d['failures']))"
