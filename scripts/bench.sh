#!/usr/bin/env bash
# Benchmarks the bridge against the direct-producer ceiling on the same broker:
# Kafka (tansu), Kafka (librdkafka mock cluster, via `c360-bridge dev`) and RabbitMQ; and the cost
# of the Redis retry ledger (`ledger`): the same bridge on tansu with the memory ledger and with
# the Redis ledger, alternating, then the Redis ledger at half of its rate (p99 there), with
# the CPU the bridge, tansu and Redis spent per event in those runs; then both again with twice
# the senders (how much of the Redis ledger's cost is its round trips' wait).
# For each: ROUNDS alternating runs of the bridge and of the direct producer at full load (the
# table shows the median run of each), then the bridge at half of its median rate (p99 there),
# and the peak RSS of the bridge; then 1-event batches on tansu (requests/s). On tansu and
# RabbitMQ every round also runs the bridge with `cloudevents = false` on its sink, so the cost
# of the CloudEvents headers (on by default) comes from the same invocation, with the CPU the
# bridge and the broker spent per event in those runs. `dead-letter`: the
# tansu load with 1 event in POISON_EVERY (100) of an illegal class, sent to the dead letter.
# `tls`: HTTPS against HTTP on tansu, alternating in the same rounds. `traces`: tracing off, on
# with every batch sampled and with 10 % sampled (and BASELINE_BIN, a build without tracing).
# `nats`: NATS JetStream (a nats-server of the benchmark's own on BENCH_NATS_PORT, 14222, its file
# store emptied before each run; the stream made by the sink's create_stream), bridge against
# `direct-nats`.
# Knobs: DURATION (10s), ROUNDS (3), CONCURRENCY (8), BATCH (100), EVENT_SIZE (1024),
# WORKERS (1: the async runtime threads of the bridge and, to compare like with like, of the
# direct producer; 0 = one per core). The HTTP load generator keeps one thread per core.
# SCENARIOS (default "kafka-tansu rabbitmq kafka-mock nats ledger dead-letter tls") picks what runs; C360_KAFKA_PORT
# and C360_STATE put the benchmark's tansu on a port of its own (scripts/brokers.sh), BENCH_PORT
# the bridge (18181); C360_REDIS_PORT the Redis of the ledger scenario (6379). PROFILE (release)
# is the cargo profile built and run: PROFILE=profiling keeps symbols for `perf record`
# (binaries in target/profiling/; the stripped release binary has none).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10s}"; ROUNDS="${ROUNDS:-3}"; WORKERS="${WORKERS:-1}"
CONCURRENCY="${CONCURRENCY:-8}"; BATCH="${BATCH:-100}"; EVENT_SIZE="${EVENT_SIZE:-1024}"
OUT="${BENCH_OUT:-target/bench}"; mkdir -p "$OUT"
SCENARIOS="${SCENARIOS:-kafka-tansu rabbitmq kafka-mock nats ledger dead-letter tls}"
POISON_EVERY="${POISON_EVERY:-100}"
KAFKA_PORT="${C360_KAFKA_PORT:-9092}"; REDIS_URL="redis://127.0.0.1:${C360_REDIS_PORT:-6379}/0"
want() { [[ " $SCENARIOS " == *" $1 "* ]]; }
# A separate assignment, so that `set -e` stops here when a broker cannot start.
brokers_env=$(scripts/brokers.sh start)
eval "$brokers_env"
PROFILE="${PROFILE:-release}"
cargo build --profile "$PROFILE" --locked --bins >&2
BIN=target/$PROFILE/c360-bridge; LG=target/$PROFILE/c360-loadgen; DIRECT="$LG --worker-threads $WORKERS"
KEY=bench-key; PORT="${BENCH_PORT:-18181}"
PID=""; NATS_PID=""
# No bridge (and no nats-server of the benchmark) outlives a failure.
trap '{ [ -n "$PID" ] && kill "$PID"; [ -n "$NATS_PID" ] && kill "$NATS_PID"; } 2>/dev/null || true' EXIT
# Results of earlier invocations (other ROUNDS, older binaries) must not enter this table.
rm -f "$OUT"/*.json "$OUT"/*-rss "$OUT"/*.cpu "$OUT"/ledger-redis-cpu-* "$OUT"/traces-*-dropped-*

load() { echo --concurrency "${SENDERS:-$CONCURRENCY}" --batch-size "${1:-$BATCH}" --event-size "$EVENT_SIZE" --duration "$DURATION"; }
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
# ratio A B: events/s of result A over those of result B.
ratio() { python3 -c "import json, sys; a, b = (json.load(open(p))['events_per_s'] for p in sys.argv[1:]); print(a / max(b, 1))" "$1" "$2"; }
# rounds STEM: the events/s of every round of STEM (e.g. kafka-tansu-http), in round order.
rounds() { python3 -c "import glob, json, sys; print(' '.join('%.0f' % json.load(open(p))['events_per_s'] for p in sorted(glob.glob(sys.argv[1] + '-[0-9]*.json'))))" "$OUT/$1"; }
# non200 FILE...: how many answers in these results were not 200.
non200() { python3 -c "import json, sys; print(sum(sum(json.load(open(p))['failures'].values()) for p in sys.argv[1:]))" "$@"; }

# serve NAME SINK_TOML [SERVER_TOML] [MORE_TOML]: writes a config (SERVER_TOML: more [server]
# keys and tables; MORE_TOML: tables at the end) and starts the bridge; sets $PID. Readiness is
# polled on $READY_AT (default: $PORT).
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
${4:-}
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
# measured STEM BROKER_PID CMD...: runs the load CMD (its JSON to STEM.json) and writes the CPU
# ticks the bridge ($PID) and the broker spent meanwhile to STEM.cpu (for the CloudEvents table).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
measured() {
  local stem=$1 broker=$2 b0 k0; shift 2
  b0=$(ticks "$PID"); k0=$(ticks "$broker")
  "$@" >"$OUT/$stem.json"
  echo "$(($(ticks "$PID") - b0)) $(($(ticks "$broker") - k0))" >"$OUT/$stem.cpu"
}
tansu_pid() { cat "${C360_STATE:-/tmp/c360-bridge-brokers}/tansu.pid"; }
rabbit_pid() { pgrep -x beam.smp | head -1; }
# cpu_per_event STEM: the median over rounds of the bridge's and the broker's CPU µs per event.
cpu_per_event() {
  python3 - "$OUT/$1" <<'PY'
import glob, json, statistics, sys
bridge, broker = [], []
for c in glob.glob(sys.argv[1] + "-[0-9]*.cpu"):
    d = json.load(open(c[:-4] + ".json"))
    n = max(d["events_per_s"] * d["seconds"], 1) / 1e4  # ticks are 10 ms: µs per event
    b, k = map(int, open(c).read().split())
    bridge.append(b / n); broker.append(k / n)
print(f"{statistics.median(bridge):.1f} / {statistics.median(broker):.1f}")
PY
}

# The tansu sink, with `cloudevents = false` (NO_CE) or without (the headers are on by default).
NO_CE='
cloudevents = false'
tansu_sink() {
  printf '[sinks.s]\ntype = "kafka"\nbootstrap_servers = "127.0.0.1:%s"%s\n[sinks.s.librdkafka]\n"compression.type" = "none"\n' "$KAFKA_PORT" "${1:-}"
}
TANSU_SINK=$(tansu_sink)

# Kafka on tansu: every run gets an empty tansu (its memory storage keeps all it was sent, and
# slows down as it grows) and, for the bridge, a fresh bridge process.
fresh_tansu() { scripts/brokers.sh restart-kafka; }
if want kafka-tansu; then
rm -f "$OUT"/*-rss
for r in $(seq 1 "$ROUNDS"); do
  fresh_tansu; serve kafka-tansu "$TANSU_SINK"
  measured "kafka-tansu-http-$r" "$(tansu_pid)" $LG http $(hook) $(load)
  stop kafka-tansu
  fresh_tansu; serve kafka-tansu-noce "$(tansu_sink "$NO_CE")"
  measured "kafka-tansu-noce-http-$r" "$(tansu_pid)" $LG http $(hook) $(load)
  stop kafka-tansu-noce
  fresh_tansu; $DIRECT direct-kafka --bootstrap 127.0.0.1:$KAFKA_PORT --prefix catalog360 $(load) >"$OUT/kafka-tansu-direct-$r.json"
done
median kafka-tansu http; median kafka-tansu direct; median kafka-tansu-noce http
fresh_tansu; serve kafka-tansu "$TANSU_SINK"
$LG http $(hook) $(load) --rate "$(half_rate kafka-tansu)" >"$OUT/kafka-tansu-half.json"
stop kafka-tansu
fresh_tansu; serve one-event "$TANSU_SINK"
$LG http $(hook) $(load 1) >"$OUT/one-event-http.json"
stop one-event
fresh_tansu; $DIRECT direct-kafka --bootstrap 127.0.0.1:$KAFKA_PORT --prefix catalog360 $(load 1) >"$OUT/one-event-direct.json"
fresh_tansu
fi

# RabbitMQ (a bounded queue bound with # makes the messages routable; emptied before each run,
# because how full it is changes how fast RabbitMQ takes more).
purge() { rabbitmqctl -q purge_queue c360-bench >/dev/null 2>&1 || true; }
RABBIT_SINK='[sinks.s]
type = "rabbitmq"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
exchange = "bench"'
if want rabbitmq; then
for r in $(seq 1 "$ROUNDS"); do
  purge; $DIRECT direct-rabbit --exchange bench --bind-queue c360-bench $(load) >"$OUT/rabbitmq-direct-$r.json"
  serve rabbitmq-noce "$RABBIT_SINK$NO_CE"
  purge; measured "rabbitmq-noce-http-$r" "$(rabbit_pid)" $LG http $(hook) $(load)
  stop rabbitmq-noce
  serve rabbitmq "$RABBIT_SINK"
  purge; measured "rabbitmq-http-$r" "$(rabbit_pid)" $LG http $(hook) $(load)
  [ "$r" = "$ROUNDS" ] || stop rabbitmq
done
median rabbitmq http; median rabbitmq direct; median rabbitmq-noce http
purge; $LG http $(hook) $(load) --rate "$(half_rate rabbitmq)" >"$OUT/rabbitmq-half.json"
stop rabbitmq
fi

# NATS JetStream: a nats-server of the benchmark's own, its store emptied before each run (a
# stream that keeps growing would slow later runs down); the sink creates the stream.
NATS_PORT="${BENCH_NATS_PORT:-14222}"
fresh_nats() {
  if [ -n "$NATS_PID" ]; then kill "$NATS_PID" 2>/dev/null || true; wait "$NATS_PID" 2>/dev/null || true; fi
  rm -rf "$OUT/nats-store"
  nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$OUT/nats-store" >"$OUT/nats-server.log" 2>&1 & NATS_PID=$!
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && return 0; sleep 0.1; done
  echo "nats-server did not start; see $OUT/nats-server.log" >&2; return 1
}
NATS_SINK="[sinks.s]
type = \"nats\"
url = \"nats://127.0.0.1:$NATS_PORT\"
create_stream = { name = \"BENCH\", subjects = [\"catalog360.>\"] }"
if want nats; then
for r in $(seq 1 "$ROUNDS"); do
  fresh_nats; $DIRECT direct-nats --url "nats://127.0.0.1:$NATS_PORT" --create-stream BENCH $(load) >"$OUT/nats-direct-$r.json"
  fresh_nats; serve nats "$NATS_SINK"
  $LG http $(hook) $(load) >"$OUT/nats-http-$r.json"
  [ "$r" = "$ROUNDS" ] || stop nats
done
median nats http; median nats direct
$LG http $(hook) $(load) --rate "$(half_rate nats)" >"$OUT/nats-half.json"
stop nats
kill "$NATS_PID" 2>/dev/null || true; wait "$NATS_PID" 2>/dev/null || true; NATS_PID=""
fi

# Dead letter on tansu: the same load with 1 event in POISON_EVERY of an illegal class, which the
# bridge publishes to catalog360.dead-letter (created by brokers.sh); every batch must get 200.
DL_TOML='[dead_letter]
sink = "s"
topic = "catalog360.dead-letter"'
if want dead-letter; then
for r in $(seq 1 "$ROUNDS"); do
  fresh_tansu; serve kafka-tansu-dl "$TANSU_SINK" "" "$DL_TOML"
  $LG http $(hook) $(load) --poison-every "$POISON_EVERY" >"$OUT/kafka-tansu-dl-http-$r.json"
  curl -fs "http://127.0.0.1:$PORT/metrics" | awk '/^c360_events_dead_lettered_total/ {n += $NF} END {print n + 0}' >"$OUT/kafka-tansu-dl-lettered-$r"
  stop kafka-tansu-dl
done
median kafka-tansu-dl http
fresh_tansu
fi

# HTTPS vs HTTP on tansu, alternating in the same rounds: the same bridge, once with
# [server.tls] (a P-256 certificate from a CA of the run, verified by the load generator) and
# once without. Kept-alive connections, so the handshake is paid once per sender.
if want tls; then
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
fi

# Traces on tansu, alternating in the same rounds: the bridge with tracing off, with every batch
# sampled and with 10 % sampled (OTEL_TRACES_SAMPLER), exporting over OTLP/HTTP to
# `c360-loadgen otlp-sink` (200 to every export); with BASELINE_BIN (a c360-bridge built
# without the tracing code), that binary too.
TEL_TOML='[telemetry]
otlp_endpoint = "http://127.0.0.1:4318"'
if want traces; then
$LG otlp-sink --listen 127.0.0.1:4318 >"$OUT/otlp-sink.log" 2>&1 & SINK_PID=$!
trace_modes="off all tenth${BASELINE_BIN:+ baseline}"
for r in $(seq 1 "$ROUNDS"); do
  for m in $trace_modes; do
    fresh_tansu
    case $m in
      off) serve traces-off "$TANSU_SINK" ;;
      all) OTEL_TRACES_SAMPLER=always_on serve traces-all "$TANSU_SINK" "" "$TEL_TOML" ;;
      tenth) OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0.1 serve traces-tenth "$TANSU_SINK" "" "$TEL_TOML" ;;
      baseline) BIN="$BASELINE_BIN" serve traces-baseline "$TANSU_SINK" ;;
    esac
    measured "traces-$m-http-$r" "$(tansu_pid)" $LG http $(hook) $(load)
    [ "$m" = off ] || curl -fs "http://127.0.0.1:$PORT/metrics" | awk '/^c360_spans_dropped_total/ {n += $NF} END {print n + 0}' >"$OUT/traces-$m-dropped-$r"
    stop "traces-$m"
  done
done
for m in $trace_modes; do median "traces-$m" http; done
kill "$SINK_PID" 2>/dev/null || true
fresh_tansu
fi

# Kafka on the mock cluster: `dev` embeds it (its route keys messages by /payload/new/id, so the
# direct run does too); the direct run produces to the same cluster.
if want kafka-mock; then
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
fi

# The Redis retry ledger against the memory ledger: the same bridge, sink and load on an empty
# tansu, alternating; a key prefix of each run's own, so no run skips what an earlier one sent.
# The default ttl (1h), as a deployment has it; the sets are removed at the end (UNLINK).
ledger_toml() { printf '[ledger]\nbackend = "redis"\nurl = "%s"\nkey_prefix = "c360-bench:%s:"\n' "$REDIS_URL" "$1"; }
# The Redis server's own CPU seconds so far (user + system, from INFO cpu): on this machine it
# shares the cores with the bridge, tansu and the load generator.
redis_cpu() { redis-cli -u "$REDIS_URL" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {print s}'; }
if want ledger; then
  [ "$(redis-cli -u "$REDIS_URL" ping 2>/dev/null)" = PONG ] || { echo "no Redis at $REDIS_URL" >&2; exit 1; }
  for r in $(seq 1 "$ROUNDS"); do
    fresh_tansu; serve ledger-memory "$TANSU_SINK"
    measured "ledger-memory-http-$r" "$(tansu_pid)" $LG http $(hook) $(load)
    stop ledger-memory
    fresh_tansu; serve ledger-redis "$TANSU_SINK" "" "$(ledger_toml "$$-$r")"
    cpu0=$(redis_cpu)
    measured "ledger-redis-http-$r" "$(tansu_pid)" $LG http $(hook) $(load)
    echo "$cpu0 $(redis_cpu)" >"$OUT/ledger-redis-cpu-$r"
    stop ledger-redis
  done
  median ledger-memory http; median ledger-redis http
  # The same pair with twice the senders: how much of the cost is the round trips' wait.
  for r in $(seq 1 "$ROUNDS"); do
    for l in memory redis; do
      fresh_tansu; serve "ledger-$l" "$TANSU_SINK" "" "$([ $l = redis ] && ledger_toml "$$-wide-$r" || true)"
      $LG http $(hook) $(SENDERS=$((CONCURRENCY * 2)) load) >"$OUT/ledger-$l-wide-$r.json"
      stop "ledger-$l-wide" # its RSS (more batches in flight) apart from the table's
    done
  done
  median ledger-memory wide; median ledger-redis wide
  for l in memory redis; do
    fresh_tansu; serve "ledger-$l" "$TANSU_SINK" "" "$([ $l = redis ] && ledger_toml "$$-half" || true)"
    $LG http $(hook) $(load) --rate "$(half_rate "ledger-$l")" >"$OUT/ledger-$l-half.json"
    stop "ledger-$l"
  done
  redis-cli -u "$REDIS_URL" --scan --pattern "c360-bench:$$-*" | xargs -r -n 100 redis-cli -u "$REDIS_URL" unlink >/dev/null
  fresh_tansu
fi

printf '\n%s, %s cores, %s B events, concurrency %s, %s per run, median of %s rounds, worker threads %s\n\n' \
  "$(date -u +%F)" "$(nproc)" "$EVENT_SIZE" "$CONCURRENCY" "$DURATION" "$ROUNDS" "$WORKERS"
brokers=""; for b in kafka-tansu rabbitmq kafka-mock nats; do want "$b" && brokers="$brokers $b"; done
if [ -n "$brokers" ]; then
printf '| broker, %s-event batches | bridge events/s | direct events/s | ratio | bridge p99 ms (full) | direct p99 ms | bridge p99 ms at half rate | non-200 | bridge peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|\n' "$BATCH"
for b in $brokers; do
  h="$OUT/$b-http.json"; d="$OUT/$b-direct.json"; f="$OUT/$b-half.json"
  printf '| %s | %.0f | %.0f | %.2f | %s | %s | %s (at %.0f ev/s) | %s | %s |\n' "$b" \
    "$(get "$h" "d['events_per_s']")" "$(get "$d" "d['events_per_s']")" \
    "$(ratio "$h" "$d")" \
    "$(get "$h" "d['latency_ms']['p99']")" "$(get "$d" "d['latency_ms']['p99']")" \
    "$(get "$f" "d['latency_ms']['p99']")" "$(get "$f" "d['events_per_s']")" \
    "$(non200 "$OUT"/$b-http-*.json "$f")" \
    "$(cat "$OUT/$b-rss")"
done
printf '\nAll rounds (events/s): '
for b in $brokers; do
  printf '%s bridge %s, direct %s; ' "$b" \
    "$(rounds "$b-http")" \
    "$(rounds "$b-direct")"
done
printf '\n'
fi
if want kafka-tansu; then
printf '\n1-event batches on tansu: bridge %.0f requests/s (p99 %s ms), direct %.0f batches/s (p99 %s ms)\n' \
  "$(get "$OUT/one-event-http.json" "d['batches_per_s']")" "$(get "$OUT/one-event-http.json" "d['latency_ms']['p99']")" \
  "$(get "$OUT/one-event-direct.json" "d['batches_per_s']")" "$(get "$OUT/one-event-direct.json" "d['latency_ms']['p99']")"
fi
if want traces; then
  o="$OUT/traces-off-http.json"
  printf '\n| traces, kafka-tansu, %s-event batches | bridge events/s | vs tracing off | p99 ms | CPU µs per event, bridge / tansu | spans dropped | non-200 |\n|---|---|---|---|---|---|---|\n' "$BATCH"
  for m in $trace_modes; do
    h="$OUT/traces-$m-http.json"
    printf '| %s | %.0f | %.3f | %s | %s | %s | %s |\n' "$m" "$(get "$h" "d['events_per_s']")" "$(ratio "$h" "$o")" \
      "$(get "$h" "d['latency_ms']['p99']")" "$(cpu_per_event "traces-$m-http")" \
      "$(cat "$OUT"/traces-$m-dropped-* 2>/dev/null | awk '{n += $1} END {print n + 0}')" \
      "$(non200 "$OUT"/traces-$m-http-*.json)"
  done
  printf '\nAll rounds (events/s): '
  for m in $trace_modes; do printf '%s %s; ' "$m" "$(rounds "traces-$m-http")"; done
  printf '\n'
fi
if want ledger; then
  m="$OUT/ledger-memory-http.json"
  printf '\n| retry ledger, kafka-tansu, %s-event batches | bridge events/s | vs memory ledger | p99 ms (full) | p99 ms at half rate | non-200 | peak RSS MiB |\n|---|---|---|---|---|---|---|\n' "$BATCH"
  for l in memory redis; do
    h="$OUT/ledger-$l-http.json"; f="$OUT/ledger-$l-half.json"
    printf '| %s | %.0f | %.2f | %s | %s (at %.0f ev/s) | %s | %s |\n' "$l" \
      "$(get "$h" "d['events_per_s']")" \
      "$(ratio "$h" "$m")" \
      "$(get "$h" "d['latency_ms']['p99']")" "$(get "$f" "d['latency_ms']['p99']")" "$(get "$f" "d['events_per_s']")" \
      "$(non200 "$OUT"/ledger-$l-http-*.json "$f")" \
      "$(cat "$OUT/ledger-$l-rss")"
  done
  printf '\nRedis server CPU per event in the Redis rounds (INFO cpu, user + system): %s µs\n' \
    "$(python3 - "$OUT" <<'PY'
import glob, json, sys
out = sys.argv[1]
per = []
for c in sorted(glob.glob(f"{out}/ledger-redis-cpu-[0-9]*")):
    r = c.rsplit("-", 1)[1]
    a, b = map(float, open(c).read().split())
    d = json.load(open(f"{out}/ledger-redis-http-{r}.json"))
    per.append((b - a) / max(d["events_per_s"] * d["seconds"], 1) * 1e6)
print(" ".join(f"{p:.2f}" for p in per))
PY
)"
  printf '\nWith %s senders (median of %s rounds): memory ledger %.0f, Redis ledger %.0f events/s, ratio %.2f; rounds memory %s, Redis %s\n' \
    "$((CONCURRENCY * 2))" "$ROUNDS" "$(get "$OUT/ledger-memory-wide.json" "d['events_per_s']")" \
    "$(get "$OUT/ledger-redis-wide.json" "d['events_per_s']")" \
    "$(ratio "$OUT/ledger-redis-wide.json" "$OUT/ledger-memory-wide.json")" \
    "$(rounds ledger-memory-wide)" "$(rounds ledger-redis-wide)"
  printf '\nCPU µs per event, bridge / tansu (median of the rounds): memory ledger %s; Redis ledger %s\n' \
    "$(cpu_per_event ledger-memory-http)" "$(cpu_per_event ledger-redis-http)"
  printf '\nAll rounds (events/s): memory ledger %s; Redis ledger %s\n' \
    "$(rounds "ledger-memory-http")" \
    "$(rounds "ledger-redis-http")"
fi
if want kafka-tansu && want rabbitmq; then
printf '\nCloudEvents headers (on by default) against a sink with cloudevents = false, same invocation:\n\n'
printf '| broker, %s-event batches | bridge events/s, CloudEvents on | bridge events/s, cloudevents = false | on/off | CPU µs/event bridge / broker, on | off | all rounds on | all rounds off |\n|---|---|---|---|---|---|---|---|\n' "$BATCH"
for b in kafka-tansu rabbitmq; do
  on="$OUT/$b-http.json"; off="$OUT/$b-noce-http.json"
  printf '| %s | %.0f | %.0f | %.3f | %s | %s | %s | %s |\n' "$b" \
    "$(get "$on" "d['events_per_s']")" "$(get "$off" "d['events_per_s']")" \
    "$(ratio "$on" "$off")" \
    "$(cpu_per_event "$b-http")" "$(cpu_per_event "$b-noce-http")" \
    "$(rounds "$b-http")" \
    "$(rounds "$b-noce-http")"
done
fi
if want dead-letter; then
printf '\nDead letter on tansu, 1 event in %s to the dead letter (median round): bridge %.0f events/s, p99 %s ms, non-200 %s, dead-lettered per round %s (events of 200s / %s: %s), peak RSS %s MiB\n' \
  "$POISON_EVERY" "$(get "$OUT/kafka-tansu-dl-http.json" "d['events_per_s']")" "$(get "$OUT/kafka-tansu-dl-http.json" "d['latency_ms']['p99']")" \
  "$(non200 "$OUT"/kafka-tansu-dl-http-*.json)" \
  "$(cat "$OUT"/kafka-tansu-dl-lettered-* | tr '\n' ' ')" "$POISON_EVERY" \
  "$(python3 -c "import glob, json; print(' '.join(str(json.load(open(p))['ok_batches'] * $BATCH // $POISON_EVERY) for p in sorted(glob.glob('$OUT/kafka-tansu-dl-http-[0-9]*.json'))))")" \
  "$(cat "$OUT/kafka-tansu-dl-rss")"
fi
if want tls; then
printf '\nHTTPS vs HTTP on tansu (same rounds): HTTPS %.0f events/s (p99 %s ms, non-200 %s), HTTP %.0f events/s (p99 %s ms), ratio %.2f; rounds HTTPS %s, HTTP %s\n' \
  "$(get "$OUT/tls-https-http.json" "d['events_per_s']")" "$(get "$OUT/tls-https-http.json" "d['latency_ms']['p99']")" \
  "$(non200 "$OUT"/tls-https-http-*.json)" \
  "$(get "$OUT/tls-plain-http.json" "d['events_per_s']")" "$(get "$OUT/tls-plain-http.json" "d['latency_ms']['p99']")" \
  "$(ratio "$OUT/tls-https-http.json" "$OUT/tls-plain-http.json")" \
  "$(rounds "tls-https-http")" \
  "$(rounds "tls-plain-http")"
fi
