//! Prometheus metrics: one global recorder, the table of every metric the bridge exports (with
//! its HELP), the series that exist from start-up at zero, and the named counters the bridge keeps.

use crate::config::{Config, SinkConfig};
use c360_sinks::Permanence;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// What a metric is, for its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the bridge and its sinks export: name, kind, HELP. `describe()` registers them
/// all; a metric missing here has no HELP and fails `promtool check metrics`.
pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        "c360_requests_total",
        Kind::Counter,
        "POSTs answered, by webhook, HTTP status and reason (accepted, or the answer's error code).",
    ),
    (
        "c360_signature_failures_total",
        Kind::Counter,
        "POSTs refused for their X-C360-Signature, by webhook and reason.",
    ),
    (
        "c360_forbidden_sources_total",
        Kind::Counter,
        "POSTs refused because the client address is outside the webhook's allow_from.",
    ),
    (
        "c360_events_published_total",
        Kind::Counter,
        "Events confirmed by their broker, by sink and destination (Kafka topic or AMQP routing key).",
    ),
    (
        "c360_publish_failures_total",
        Kind::Counter,
        "Messages a broker did not confirm, by sink and reason.",
    ),
    (
        "c360_publish_seconds",
        Kind::Histogram,
        "Seconds from a batch's first publish to its last broker confirm (or failure).",
    ),
    (
        "c360_ack_timeout_seconds",
        Kind::Gauge,
        "server.ack_timeout in force: the sender gives up on an answer after this many seconds.",
    ),
    (
        "c360_batches_in_flight",
        Kind::Gauge,
        "Batches being published now.",
    ),
    (
        "c360_events_dead_lettered_total",
        Kind::Counter,
        "Events confirmed at the dead-letter destination instead of their own, by reason.",
    ),
    (
        "c360_events_unrouted_total",
        Kind::Counter,
        "Events dropped because no route matched their event class, by event class.",
    ),
    (
        "c360_sink_ready",
        Kind::Gauge,
        "1 while the sink can publish, else 0 (refreshed at every scrape).",
    ),
    (
        "c360_sink_restarts_total",
        Kind::Counter,
        "Kafka producers or RabbitMQ connections and channels replaced after a failure, by sink and reason.",
    ),
    (
        "c360_topics_created_total",
        Kind::Counter,
        "Kafka topics the bridge created, by sink.",
    ),
    (
        "c360_ledger_skips_total",
        Kind::Counter,
        "Messages not published again because the ledger holds their earlier confirm, by sink.",
    ),
    (
        "c360_ledger_errors_total",
        Kind::Counter,
        "Failed Redis ledger round trips, by op (read, write) and reason (timeout, error).",
    ),
    (
        "c360_ledger_degraded",
        Kind::Gauge,
        "1 while the Redis ledger's last round trip failed.",
    ),
    (
        "c360_key_reloads_total",
        Kind::Counter,
        "Re-reads of a webhook's keys file, by webhook and result (ok, unchanged, error, empty, invalid).",
    ),
    (
        "c360_config_reloads_total",
        Kind::Counter,
        "Reloads of the configuration file, by result (ok, error).",
    ),
    (
        "c360_tls_reloads_total",
        Kind::Counter,
        "Re-reads of the serving TLS certificate pair, by result (ok, error).",
    ),
    (
        "c360_config_info",
        Kind::Gauge,
        "1 for the configuration in force, by hash (the first 12 hex digits of SHA-256 over the effective configuration); 0 for earlier ones.",
    ),
    (
        "c360_spans_dropped_total",
        Kind::Counter,
        "Trace spans dropped: the export queue was full or the OTLP collector did not take them.",
    ),
    (
        "c360_tls_cert_expiry_timestamp_seconds",
        Kind::Gauge,
        "Unix time of the notAfter of the serving TLS certificate in force.",
    ),
    (
        "c360_connections_open",
        Kind::Gauge,
        "Connections open now, by listener.",
    ),
    (
        "c360_connections_refused_total",
        Kind::Counter,
        "Connections closed at once because their listener was at server.max_connections, by listener.",
    ),
    (
        "c360_connections_closed_total",
        Kind::Counter,
        "Connections closed by the bridge, by listener and reason (header_timeout, idle_timeout, tls_error).",
    ),
];

/// `reason`s of the sinks crate's `c360_sink_restarts_total`, by sink type.
const KAFKA_RESTART_REASONS: [&str; 2] = ["fatal_error", "deliveries_stalled"];
const RABBIT_RESTART_REASONS: [&str; 2] = ["channel_closed", "connection_lost"];
/// `(status, reason)` of `c360_requests_total` present from start-up for every webhook: the
/// success, and the 503s the 5xx-ratio alert is about.
const START_UP_ANSWERS: [(&str, &str); 4] = [
    ("200", "accepted"),
    ("503", "broker_unconfirmed"),
    ("503", "broker_timeout"),
    ("503", "overloaded"),
];
const KEY_RELOAD_RESULTS: [&str; 5] = ["ok", "unchanged", "error", "empty", "invalid"];
const CLOSE_REASONS: [&str; 3] = ["header_timeout", "idle_timeout", "tls_error"];
const DEAD_LETTER_REASONS: [Permanence; 3] = [
    Permanence::IllegalDestination,
    Permanence::TooLarge,
    Permanence::InvalidRecord,
];

/// `c360_publish_seconds` buckets: fine below a second, then fractions of `ack_timeout` (the
/// answer goes out at 0.9 of it, publishes are abandoned at twice it), so `histogram_quantile`
/// is exact where the "confirm latency near ack_timeout" alert looks (0.75 of it).
pub fn publish_buckets(ack_timeout: Duration) -> Vec<f64> {
    let ack = ack_timeout.as_secs_f64();
    let fixed = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
    let relative = [0.25, 0.5, 0.75, 0.9, 1.0, 1.5, 2.0].map(|f| f * ack);
    let mut all: Vec<f64> = fixed.into_iter().chain(relative).collect();
    all.sort_by(f64::total_cmp);
    all.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    all
}

/// Installs the process-wide recorder once (buckets made for `ack_timeout`), describes every
/// metric, and returns its handle. Later calls return the same handle.
pub fn install(ack_timeout: Duration) -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = publish_buckets(ack_timeout);
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full("c360_publish_seconds".into()), &buckets)
                .map(PrometheusBuilder::build_recorder);
            let handle = match recorder {
                Ok(r) => {
                    let h = r.handle();
                    if metrics::set_global_recorder(r).is_err() {
                        tracing::warn!(
                            "a metrics recorder was already installed; /metrics may be empty"
                        );
                    }
                    h
                }
                Err(e) => {
                    tracing::error!(error = %e, "metrics recorder not installed");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            describe();
            handle
        })
        .clone()
}

/// The recorder's handle (for `/metrics`), installed with the default `ack_timeout` if nothing
/// installed it yet.
pub fn handle() -> PrometheusHandle {
    install(crate::config::ServerConfig::default().ack_timeout)
}

/// Gives every metric of `METRICS` its HELP.
fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => describe_counter!(name, help),
            Kind::Gauge => describe_gauge!(name, help),
            Kind::Histogram => describe_histogram!(name, help),
        }
    }
}

/// Creates, at zero, every series the shipped dashboard and alerts read whose labels are known
/// from the configuration, so that the first increment shows in `increase()` and an alert has
/// a series to look at before anything happened. Adds nothing to a series that already exists.
pub fn start_up<'a>(config: &Config, fixed_destinations: impl Iterator<Item = (&'a str, &'a str)>) {
    install(config.server.ack_timeout);
    gauge!("c360_ack_timeout_seconds").set(config.server.ack_timeout.as_secs_f64());
    gauge!("c360_batches_in_flight").increment(0.0);
    gauge!("c360_ledger_degraded").increment(0.0);
    // Registered, so that its buckets are there (at zero) before the first batch.
    let _ = histogram!("c360_publish_seconds");
    for w in &config.webhooks {
        let webhook = || w.name.clone();
        for (status, reason) in START_UP_ANSWERS {
            counter!("c360_requests_total", "webhook" => webhook(), "status" => status, "reason" => reason)
                .increment(0);
        }
        for result in KEY_RELOAD_RESULTS {
            counter!("c360_key_reloads_total", "webhook" => webhook(), "result" => result)
                .increment(0);
        }
        counter!("c360_forbidden_sources_total", "webhook" => webhook()).increment(0);
    }
    for (name, sink) in &config.sinks {
        let reasons: &[&'static str] = match sink {
            SinkConfig::Kafka(_) => {
                counter!("c360_topics_created_total", "sink" => name.clone()).increment(0);
                &KAFKA_RESTART_REASONS
            }
            SinkConfig::Rabbitmq(_) => &RABBIT_RESTART_REASONS,
            // The NATS client reconnects by itself: no restarts of the bridge's own to count.
            SinkConfig::Nats(_) => &[],
        };
        for reason in reasons {
            counter!("c360_sink_restarts_total", "sink" => name.clone(), "reason" => *reason)
                .increment(0);
        }
        gauge!("c360_sink_ready", "sink" => name.clone()).increment(0.0);
        counter!("c360_ledger_skips_total", "sink" => name.clone()).increment(0);
    }
    // Destinations known before any event: routes whose topic has no placeholder.
    for (sink, destination) in fixed_destinations {
        events_published(sink, destination, 0);
    }
    for reason in DEAD_LETTER_REASONS {
        counter!("c360_events_dead_lettered_total", "reason" => reason.code()).increment(0);
    }
    for op in ["read", "write"] {
        for reason in ["timeout", "error"] {
            counter!("c360_ledger_errors_total", "op" => op, "reason" => reason).increment(0);
        }
    }
    counter!("c360_spans_dropped_total").increment(0);
    for result in ["ok", "error"] {
        counter!("c360_config_reloads_total", "result" => result).increment(0);
        if config.server.tls.is_some() {
            counter!("c360_tls_reloads_total", "result" => result).increment(0);
        }
    }
    let admin = config.server.admin_listen.is_some().then_some("admin");
    for listener in std::iter::once("webhook").chain(admin) {
        counter!("c360_connections_refused_total", "listener" => listener).increment(0);
        gauge!("c360_connections_open", "listener" => listener).increment(0.0);
        for reason in CLOSE_REASONS {
            counter!("c360_connections_closed_total", "listener" => listener, "reason" => reason)
                .increment(0);
        }
    }
}

/// A POST answered: `reason` is `accepted` or the answer's error code.
pub fn request(webhook: &str, status: u16, reason: &'static str) {
    counter!("c360_requests_total", "webhook" => webhook.to_owned(), "status" => status.to_string(), "reason" => reason)
        .increment(1);
}

pub fn signature_failure(webhook: &str, reason: &'static str) {
    counter!("c360_signature_failures_total", "webhook" => webhook.to_owned(), "reason" => reason)
        .increment(1);
}

/// `n` events confirmed at `destination` (a Kafka topic or an AMQP routing key) of `sink`.
pub fn events_published(sink: &str, destination: &str, n: u64) {
    counter!("c360_events_published_total", "sink" => sink.to_owned(), "destination" => destination.to_owned())
        .increment(n);
}

pub fn publish_failure(sink: &str, reason: &'static str) {
    counter!("c360_publish_failures_total", "sink" => sink.to_owned(), "reason" => reason)
        .increment(1);
}

pub fn publish_latency(d: Duration) {
    histogram!("c360_publish_seconds").record(d.as_secs_f64());
}

/// An event confirmed at the dead-letter destination instead of its own (SPEC §10).
pub fn dead_lettered(reason: &'static str) {
    counter!("c360_events_dead_lettered_total", "reason" => reason).increment(1);
}

pub fn ledger_skip(sink: &str) {
    counter!("c360_ledger_skips_total", "sink" => sink.to_owned()).increment(1);
}

/// A failed Redis ledger round trip: `op` read or write, `reason` timeout or error.
pub fn ledger_error(op: &'static str, reason: &'static str) {
    counter!("c360_ledger_errors_total", "op" => op, "reason" => reason).increment(1);
}

/// 1 while the Redis ledger's last round trip failed.
pub fn ledger_degraded(degraded: bool) {
    gauge!("c360_ledger_degraded").set(if degraded { 1.0 } else { 0.0 });
}

pub fn unrouted(event_class: &str) {
    counter!("c360_events_unrouted_total", "event_class" => event_class.to_owned()).increment(1);
}

/// A re-read of a webhook's keys file: `ok`, `unchanged`, `error`, `empty` or `invalid`.
pub fn key_reload(webhook: &str, result: &'static str) {
    counter!("c360_key_reloads_total", "webhook" => webhook.to_owned(), "result" => result)
        .increment(1);
}

/// A reload of the configuration file: `ok` or `error` (SPEC §15).
/// The configuration in force is `now` (and no longer `before`).
pub fn config_info(before: Option<&str>, now: &str) {
    if let Some(before) = before.filter(|b| *b != now) {
        gauge!("c360_config_info", "hash" => before.to_owned()).set(0.0);
    }
    gauge!("c360_config_info", "hash" => now.to_owned()).set(1.0);
}

/// Trace spans dropped before reaching the collector.
pub fn spans_dropped(n: u64) {
    counter!("c360_spans_dropped_total").increment(n);
}

pub fn config_reload(result: &'static str) {
    counter!("c360_config_reloads_total", "result" => result).increment(1);
}

pub fn sink_ready(sink: &str, ready: bool) {
    gauge!("c360_sink_ready", "sink" => sink.to_owned()).set(if ready { 1.0 } else { 0.0 });
}

/// Counts a batch in `c360_batches_in_flight` for as long as it lives.
pub struct InFlight;

impl InFlight {
    pub fn enter() -> Self {
        gauge!("c360_batches_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!("c360_batches_in_flight").decrement(1.0);
    }
}

/// A connection refused because its listener was at `server.max_connections`.
pub fn connection_refused(listener: &'static str) {
    counter!("c360_connections_refused_total", "listener" => listener).increment(1);
}

/// A connection closed by the bridge: `header_timeout`, `idle_timeout` or `tls_error`.
pub fn connection_closed(listener: &'static str, reason: &'static str) {
    counter!("c360_connections_closed_total", "listener" => listener, "reason" => reason)
        .increment(1);
}

/// A re-read of the TLS certificate pair: `ok` or `error`.
pub fn tls_reload(result: &'static str) {
    counter!("c360_tls_reloads_total", "result" => result).increment(1);
}

/// The notAfter (Unix seconds) of the serving certificate in force.
pub fn tls_cert_expiry(not_after: i64) {
    // An f64 holds every whole second up to 2^53 exactly.
    gauge!("c360_tls_cert_expiry_timestamp_seconds").set(not_after as f64);
}

/// A POST refused because its client address is outside the webhook's `allow_from`.
pub fn forbidden_source(webhook: &str) {
    counter!("c360_forbidden_sources_total", "webhook" => webhook.to_owned()).increment(1);
}

/// Counts a connection in `c360_connections_open` for as long as it lives.
pub struct OpenConnection(&'static str);

impl OpenConnection {
    pub fn enter(listener: &'static str) -> Self {
        gauge!("c360_connections_open", "listener" => listener).increment(1.0);
        OpenConnection(listener)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        gauge!("c360_connections_open", "listener" => self.0).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for &(name, kind, help) in METRICS {
            assert!(seen.insert(name), "{name} twice");
            assert!(name.starts_with("c360_"), "{name}");
            assert!(!help.is_empty() && help.ends_with('.'), "{name}: {help:?}");
            assert_eq!(
                name.ends_with("_total"),
                kind == Kind::Counter,
                "{name}: counters, and only counters, end in _total"
            );
        }
    }

    #[test]
    fn buckets_bracket_the_ack_deadline() {
        let b = publish_buckets(Duration::from_secs(20));
        for edge in [15.0, 18.0, 20.0, 40.0] {
            assert!(b.contains(&edge), "{edge} in {b:?}");
        }
        assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        let small = publish_buckets(Duration::from_secs(1));
        assert!(small.windows(2).all(|w| w[0] < w[1]), "{small:?}");
        assert!(small.contains(&0.75), "{small:?}");
    }
}
