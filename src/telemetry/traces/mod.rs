//! Traces: one SERVER span per POST and one PRODUCER span per message, exported over OTLP;
//! off (and free) unless an endpoint is configured.
//!
//! On when `[telemetry] otlp_endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. The standard `OTEL_*` variables apply (protocol,
//! service name, resource attributes, sampler). An incoming `traceparent` is honoured; every
//! traced message carries its PRODUCER span's context as `traceparent` / `tracestate`.

pub mod queue;

use crate::config::TelemetryConfig;
use c360_sinks::{Message, Messaging, SinkError, TraceContext};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::time::Duration;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Why traces cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry: protocol {0:?} is not grpc or http/protobuf")]
    Protocol(String),
    #[error("telemetry: cannot start the exporter thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// The bridge's tracer, or nothing when traces are off.
#[derive(Clone)]
pub struct Telemetry {
    on: Option<On>,
}

#[derive(Clone)]
struct On {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Traces off: every span call is a branch on `None`.
    pub fn off() -> Self {
        Self { on: None }
    }

    /// Traces as `[telemetry]` and the `OTEL_*` environment say.
    pub fn from_config(cfg: &TelemetryConfig) -> Result<Self, TelemetryError> {
        let from_env = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
        if cfg.otlp_endpoint.is_none() && !from_env {
            return Ok(Self::off());
        }
        let protocol = protocol(cfg.protocol.as_deref())?;
        let endpoint = cfg.otlp_endpoint.clone();
        let queue = queue::Queue::start(move || exporter(protocol, endpoint))?;
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "c360-bridge".into());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        let tracer = provider.tracer("c360-bridge");
        tracing::info!(?protocol, "traces on: OTLP export");
        Ok(Self {
            on: Some(On { tracer, provider }),
        })
    }

    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// The SERVER span of a POST on `path`, child of the request's `traceparent` if any.
    pub fn server_span(
        &self,
        headers: &http::HeaderMap,
        path: &str,
        webhook: &str,
    ) -> Option<Context> {
        let on = self.on.as_ref()?;
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let span = on
            .tracer
            .span_builder(format!("POST {path}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("url.path", path.to_owned()),
                KeyValue::new("c360.webhook", webhook.to_owned()),
            ])
            .start_with_context(&on.tracer, &parent);
        Some(parent.with_span(span))
    }

    /// Starts the PRODUCER span of `msg` to a sink described by `messaging`, child of
    /// `parent`, and puts its context on the message.
    pub fn producer_span(
        &self,
        parent: &Context,
        messaging: &Messaging,
        msg: &mut Message,
    ) -> Option<opentelemetry_sdk::trace::Span> {
        let on = self.on.as_ref()?;
        let destination = messaging.exchange.as_deref().unwrap_or(&msg.destination);
        let mut attributes = vec![
            KeyValue::new("messaging.system", messaging.system),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.operation.name", "send"),
            KeyValue::new("messaging.destination.name", destination.to_owned()),
            KeyValue::new("messaging.message.id", msg.meta.id.clone()),
        ];
        if messaging.exchange.is_some() {
            attributes.push(KeyValue::new(
                "messaging.rabbitmq.destination.routing_key",
                msg.destination.clone(),
            ));
        } else if let Some(key) = &msg.key {
            attributes.push(KeyValue::new(
                "messaging.kafka.message.key",
                String::from_utf8_lossy(key).into_owned(),
            ));
        }
        let span = on
            .tracer
            .span_builder(format!("send {destination}"))
            .with_kind(SpanKind::Producer)
            .with_attributes(attributes)
            .start_with_context(&on.tracer, parent);
        msg.trace = Some(Box::new(trace_context(span.span_context())));
        Some(span)
    }

    /// Exports what is queued (at most `within`) and stops the exporter.
    pub fn shutdown(&self, within: Duration) {
        if let Some(on) = &self.on
            && let Err(e) = on.provider.shutdown_with_timeout(within)
        {
            tracing::warn!("traces: shutdown: {e}");
        }
    }
}

/// Ends a PRODUCER span at the broker's word: an error status and `error.type` on failure.
pub fn end_producer_span(mut span: opentelemetry_sdk::trace::Span, result: &Result<(), SinkError>) {
    if let Err(e) = result {
        span.set_attribute(KeyValue::new("error.type", e.code()));
        span.set_status(Status::error(e.to_string()));
    }
    span.end();
}

/// Ends the SERVER span with the answer's status (and its reason on a refusal).
pub fn end_server_span(
    cx: Context,
    status: u16,
    events: Option<usize>,
    reason: Option<&'static str>,
) {
    let span = cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if let Some(n) = events {
        span.set_attribute(KeyValue::new("c360.events", n as i64));
    }
    if let Some(reason) = reason {
        span.set_attribute(KeyValue::new("c360.reason", reason));
    }
    if status >= 500 {
        span.set_status(Status::error(reason.unwrap_or("server error")));
    }
    span.end();
}

/// A span's context as W3C headers (the sampled flag as the sampler decided).
fn trace_context(sc: &opentelemetry::trace::SpanContext) -> TraceContext {
    let traceparent = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    let state = sc.trace_state().header();
    TraceContext {
        traceparent,
        tracestate: (!state.is_empty()).then_some(state),
    }
}

/// `[telemetry] protocol`, else `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `_PROTOCOL`, else
/// `http/protobuf` (the OpenTelemetry default).
fn protocol(configured: Option<&str>) -> Result<Protocol, TelemetryError> {
    let env = || {
        std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .ok()
    };
    match configured.map(str::to_owned).or_else(env).as_deref() {
        None | Some("http/protobuf") => Ok(Protocol::HttpProtobuf),
        Some("grpc") => Ok(Protocol::Grpc),
        Some(other) => Err(TelemetryError::Protocol(other.to_owned())),
    }
}

/// The OTLP exporter; `endpoint` (a base URL) overrides the environment's. Runs in the
/// exporter thread's runtime.
fn exporter(protocol: Protocol, endpoint: Option<String>) -> Result<SpanExporter, String> {
    let built = match (protocol, endpoint) {
        (Protocol::Grpc, Some(base)) => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(base)
            .build(),
        (Protocol::Grpc, None) => SpanExporter::builder().with_tonic().build(),
        (Protocol::HttpProtobuf, Some(base)) => SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')))
            .build(),
        (Protocol::HttpProtobuf, None) => SpanExporter::builder().with_http().build(),
    };
    built.map_err(|e| e.to_string())
}

/// A request's headers as the propagator reads them.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
