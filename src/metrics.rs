//! Prometheus metrics: one global recorder, and the few named counters the bridge keeps.

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle (for `/metrics`).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full("c360_publish_seconds".into()), &buckets)
                .map(PrometheusBuilder::build_recorder);
            match recorder {
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
            }
        })
        .clone()
}

pub fn request(webhook: &str, status: u16) {
    counter!("c360_requests_total", "webhook" => webhook.to_owned(), "status" => status.to_string()).increment(1);
}

pub fn signature_failure(webhook: &str, reason: &'static str) {
    counter!("c360_signature_failures_total", "webhook" => webhook.to_owned(), "reason" => reason)
        .increment(1);
}

pub fn events_published(sink: &str, topic: &str, n: u64) {
    counter!("c360_events_published_total", "sink" => sink.to_owned(), "topic" => topic.to_owned())
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
