# c360-bridge container image.
#
#   docker build -t c360-bridge .
#   docker run --rm -p 8080:8080 -e C360_WEBHOOK_KEYS=your-key \
#     -v "$PWD/my-config.toml:/etc/c360-bridge/config.toml:ro" c360-bridge
#
# Two stages: a Rust toolchain image compiles the binary (with librdkafka built from source and
# linked in statically), a slim Debian image runs it as an unprivileged user. The image ships
# config/compose.toml as /etc/c360-bridge/config.toml (listens on 0.0.0.0:8080, brokers at
# kafka:9092 and rabbitmq:5672, keys from C360_WEBHOOK_KEYS); mount your own over it or
# override keys with C360_BRIDGE_* variables (see config/default.toml).

# ---------------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder

# rdkafka compiles the bundled librdkafka with its own configure script and make (no cmake):
# it needs make, a C and C++ compiler and zlib's headers; the vendored OpenSSL it links for TLS
# and SASL is configured by perl. Versions follow the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make gcc g++ perl pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Dependencies first, against placeholder sources, so that this slow layer (librdkafka and
# every crate) stays cached until Cargo.toml or Cargo.lock change. Only the targets that
# `--bin c360-bridge` builds need a placeholder (the library crates and the binary's main).
COPY Cargo.toml Cargo.lock ./
COPY sinks/Cargo.toml sinks/Cargo.toml
RUN mkdir -p src sinks/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs sinks/src/lib.rs \
 && cargo build --release --locked --bin c360-bridge \
 && rm -rf src sinks/src

# The real sources. `touch` makes them newer than the placeholders' build, whatever the
# timestamps in the build context, so cargo cannot mistake the placeholder binary for fresh.
COPY . .
RUN touch src/main.rs src/lib.rs sinks/src/lib.rs \
 && cargo build --release --locked --bin c360-bridge \
 && install -D -m 0755 target/release/c360-bridge /out/c360-bridge \
 && /out/c360-bridge --version

# ---------------------------------------------------------------------------------------------
# Runtime
# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="c360-bridge" \
      org.opencontainers.image.description="Receives catalog360 Outbound Webhooks and publishes every event to Kafka and/or RabbitMQ" \
      org.opencontainers.image.licenses="Apache-2.0"

# ca-certificates: TLS to brokers (amqps://, Kafka SSL); curl: the HEALTHCHECK below;
# zlib1g: the one shared library the binary links besides libc (already in the base image).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl zlib1g \
 && rm -rf /var/lib/apt/lists/*

# Unprivileged user and group, fixed ids so volume permissions and runAsUser are predictable.
RUN groupadd --system --gid 10001 c360 \
 && useradd --system --uid 10001 --gid c360 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin c360

COPY --from=builder /out/c360-bridge /usr/local/bin/c360-bridge
COPY config/compose.toml /etc/c360-bridge/config.toml

# Lets `docker run IMAGE check` (and serve) find the configuration without --config.
ENV C360_BRIDGE_CONFIG=/etc/c360-bridge/config.toml

USER 10001:10001

# Webhooks, and /healthz, /readyz, /metrics unless server.admin_listen moves them elsewhere
# (then change the HEALTHCHECK to that port too).
EXPOSE 8080

# Liveness only: /healthz answers while the process runs; /readyz tells whether the brokers are
# reachable, which is for load balancers, not for restarting the container. `|| exit 1` maps
# every curl failure to Docker's "unhealthy" status (curl's own codes could be 2, "reserved").
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["sh", "-c", "curl -fsS http://127.0.0.1:8080/healthz || exit 1"]

# SIGTERM (docker stop) makes the bridge stop accepting, finish or fail in-flight batches and
# flush its producers before exiting 0; give it more than server.ack_timeout (docker stop -t 30).
ENTRYPOINT ["c360-bridge"]
CMD ["serve", "--config", "/etc/c360-bridge/config.toml"]
