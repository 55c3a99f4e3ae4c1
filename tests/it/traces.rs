//! Traces as a collector and a consumer see them: an OTLP receiver inside the test (gRPC with
//! tonic, HTTP/protobuf with axum) gets the SERVER span of a POST and one PRODUCER span per
//! message, and every Kafka and RabbitMQ message carries its PRODUCER span's `traceparent`.

use crate::harness::*;
use lapin::types::FieldTable;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message as _;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "traces-key";

/// Every span the receiver got.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    fn take(&self, req: ExportTraceServiceRequest) {
        let spans = req
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
    }

    /// Waits until `n` spans of trace `trace_id` arrived; returns them.
    async fn of_trace(&self, trace_id: &[u8], n: usize) -> Vec<Span> {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let got: Vec<Span> = self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            if got.len() >= n || Instant::now() > until {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on a free port; its base URL.
async fn grpc_receiver(received: Received) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream_of(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received))
            .serve_with_incoming(incoming),
    );
    format!("http://{addr}")
}

fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    })
}

/// An OTLP/HTTP (protobuf) receiver on a free port; its base URL (`/v1/traces` is its path).
async fn http_receiver(received: Received) -> String {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let received = received.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(req) => {
                        received.take(req);
                        (http::StatusCode::OK, Vec::new())
                    }
                    Err(_) => (http::StatusCode::BAD_REQUEST, Vec::new()),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn attrs(span: &Span) -> BTreeMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// The spans as an indented tree (parent first), with their attributes: for `--nocapture`.
fn tree(spans: &[Span]) -> String {
    fn walk(spans: &[Span], parent: &[u8], depth: usize, out: &mut String) {
        for s in spans.iter().filter(|s| s.parent_span_id == parent) {
            let kind = if s.kind == SpanKind::Server as i32 {
                "SERVER"
            } else {
                "PRODUCER"
            };
            out.push_str(&format!(
                "{}{} [{kind}] {:?}\n",
                "  ".repeat(depth),
                s.name,
                attrs(s)
            ));
            walk(spans, &s.span_id, depth + 1, out);
        }
    }
    let ids: Vec<&Vec<u8>> = spans.iter().map(|s| &s.span_id).collect();
    let mut out = String::new();
    for root in spans.iter().filter(|s| !ids.contains(&&s.parent_span_id)) {
        out.push_str(&format!("(parent {}) ", hex(&root.parent_span_id)));
        walk(
            std::slice::from_ref(root),
            &root.parent_span_id,
            0,
            &mut out,
        );
        walk(spans, &root.span_id, 1, &mut out);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A bridge config: Kafka topic `topic` and RabbitMQ `exchange` for everything, traces to
/// `endpoint` over `protocol` (none: tracing off).
fn config(topic: &str, exchange: &str, trace: Option<(&str, &str)>) -> String {
    let telemetry = trace.map_or(String::new(), |(endpoint, protocol)| {
        format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\n")
    });
    format!(
        "{telemetry}{}{}{}{}",
        webhook_toml("wh", KEY),
        kafka_sink_toml("kafka", &kafka()),
        rabbit_sink_toml("rabbit", exchange),
        "[[routes]]\nmatch = \"*\"\nsinks = [\"kafka\", \"rabbit\"]\n".to_owned()
            + &format!("topic = \"{topic}\"\n")
    )
}

/// Posts `events` with `traceparent` and expects 200.
async fn post_traced(bridge: &Bridge, events: &[String], traceparent: &str) {
    let r = reqwest::Client::new()
        .post(bridge.url("/hook"))
        .header("traceparent", traceparent)
        .header(
            "X-C360-Signature",
            c360_bridge::webhook::signature::sign(KEY.as_bytes(), &batch(events)),
        )
        .body(batch(events))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_over_grpc_and_http_link_the_post_its_producer_spans_and_the_messages() {
    let _shared = SHARED_BROKERS.read().await;
    for protocol in ["grpc", "http/protobuf"] {
        let received = Received::default();
        let endpoint = match protocol {
            "grpc" => grpc_receiver(received.clone()).await,
            _ => http_receiver(received.clone()).await,
        };
        let topic = unique("traced");
        create_topics(&kafka(), std::slice::from_ref(&topic), 1).await;
        let exchange = unique("traced-x");
        let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
        let bridge = Bridge::start(&config(&topic, &exchange, Some((&endpoint, protocol)))).await;
        let trace_id = format!("{:032x}", rand_u128());
        let parent = "00f067aa0ba902b7";
        let events: Vec<String> = (0..3)
            .map(|i| event("task_created", &format!("traced-{i}")))
            .collect();
        post_traced(&bridge, &events, &format!("00-{trace_id}-{parent}-01")).await;

        // The messages: every one carries a traceparent of the POST's trace, sampled.
        let records = consume(&kafka(), &topic, 1).await;
        let amqp = queue.drain().await;
        assert_eq!((records.len(), amqp.len()), (3, 3), "{protocol}");
        let mut carried: Vec<(String, String, String)> = Vec::new(); // (system, event id, span id)
        for (system, headers) in records
            .iter()
            .map(|r| ("kafka", &r.headers))
            .chain(amqp.iter().map(|m| ("rabbitmq", &m.headers)))
        {
            let tp = headers.get("traceparent").expect("a traceparent header");
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!(
                (parts[0], parts[1], parts[3]),
                ("00", trace_id.as_str(), "01"),
                "{tp}"
            );
            carried.push((
                system.into(),
                headers["c360-event-id"].clone(),
                parts[2].into(),
            ));
        }

        // The spans: one SERVER span under the caller's, six PRODUCER spans under it.
        let spans = received.of_trace(&unhex(&trace_id), 7).await;
        assert_eq!(spans.len(), 7, "{protocol}: {spans:#?}");
        eprintln!(
            "{protocol}: the trace as the receiver got it:\n{}",
            tree(&spans)
        );
        let server: Vec<&Span> = spans
            .iter()
            .filter(|s| s.kind == SpanKind::Server as i32)
            .collect();
        assert_eq!(server.len(), 1, "{protocol}");
        let server = server[0];
        assert_eq!(server.name, "POST /hook");
        assert_eq!(hex(&server.parent_span_id), parent);
        let sa = attrs(server);
        assert_eq!(sa["http.request.method"], "POST");
        assert_eq!(sa["url.path"], "/hook");
        assert_eq!(sa["http.response.status_code"], "200");
        assert_eq!(sa["c360.webhook"], "wh");
        assert_eq!(sa["c360.events"], "3");
        for (system, id, span_id) in &carried {
            let span = spans
                .iter()
                .find(|s| hex(&s.span_id) == *span_id)
                .unwrap_or_else(|| panic!("{protocol}: no span {span_id} for {system} {id}"));
            assert_eq!(span.kind, SpanKind::Producer as i32);
            assert_eq!(
                span.parent_span_id, server.span_id,
                "child of the SERVER span"
            );
            let a = attrs(span);
            assert_eq!(a["messaging.system"], *system);
            assert_eq!(a["messaging.operation.type"], "send");
            assert_eq!(a["messaging.message.id"], *id);
            match system.as_str() {
                "kafka" => {
                    assert_eq!(span.name, format!("send {topic}"));
                    assert_eq!(a["messaging.destination.name"], topic);
                }
                _ => {
                    assert_eq!(span.name, format!("send {exchange}"));
                    assert_eq!(a["messaging.destination.name"], exchange);
                    assert_eq!(a["messaging.rabbitmq.destination.routing_key"], topic);
                }
            }
        }

        // A caller that did not sample: the messages keep its trace id, flag clear, no spans.
        let unsampled = format!("{:032x}", rand_u128());
        post_traced(
            &bridge,
            &events[..1],
            &format!("00-{unsampled}-{parent}-00"),
        )
        .await;
        let tp = queue.drain().await[0].headers["traceparent"].clone();
        assert!(
            tp.starts_with(&format!("00-{unsampled}-")) && tp.ends_with("-00"),
            "{tp}"
        );
        // A refusal: the SERVER span says its status and reason; nothing is produced.
        let refused = format!("{:032x}", rand_u128());
        let r = reqwest::Client::new()
            .post(bridge.url("/hook"))
            .header("traceparent", format!("00-{refused}-{parent}-01"))
            .header("X-C360-Signature", "bm90IGEgc2lnbmF0dXJl")
            .body(batch(&events))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let spans = received.of_trace(&unhex(&refused), 1).await;
        assert_eq!(spans.len(), 1, "{protocol}: only the SERVER span");
        let a = attrs(&spans[0]);
        assert_eq!(a["http.response.status_code"], "401");
        assert!(!a["c360.reason"].is_empty(), "{a:?}");
        bridge.shutdown().await; // exports every span still queued
        let leaked = received
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.trace_id == unhex(&unsampled));
        assert!(!leaked, "{protocol}: an unsampled trace was exported");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tracing_off_no_message_carries_a_traceparent() {
    let _shared = SHARED_BROKERS.read().await;
    let topic = unique("untraced");
    create_topics(&kafka(), std::slice::from_ref(&topic), 1).await;
    let exchange = unique("untraced-x");
    let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
    let bridge = Bridge::start(&config(&topic, &exchange, None)).await;
    let events = vec![event("task_created", "untraced")];
    post_traced(
        &bridge,
        &events,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .await;
    let records = consume(&kafka(), &topic, 1).await;
    let amqp = queue.drain().await;
    assert_eq!((records.len(), amqp.len()), (1, 1));
    assert!(!records[0].headers.contains_key("traceparent"));
    assert!(!amqp[0].headers.contains_key("traceparent"));
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_no_batch_and_its_spans_are_counted_as_dropped() {
    let _shared = SHARED_BROKERS.read().await;
    let topic = unique("collector-down");
    create_topics(&kafka(), std::slice::from_ref(&topic), 1).await;
    let exchange = unique("collector-down-x");
    let _queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let bridge = Bridge::start(&config(&topic, &exchange, Some((&nobody, "http/protobuf")))).await;
    let before = metric(&metrics_text(&bridge).await, "c360_spans_dropped_total");
    for i in 0..5 {
        let events = vec![event("task_created", &format!("down-{i}"))];
        let r = post(&bridge.url("/hook"), &batch(&events), Some(KEY)).await;
        assert_eq!(r.status, 200, "{:?}", r.json);
    }
    // 5 batches × (1 SERVER + 2 PRODUCER spans), exported about a second after they end.
    let until = Instant::now() + Duration::from_secs(15);
    let mut dropped = before;
    while dropped < before + 15.0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        dropped = metric(&metrics_text(&bridge).await, "c360_spans_dropped_total");
    }
    assert!(dropped >= before + 15.0, "dropped {before} -> {dropped}");
    assert_eq!(consume(&kafka(), &topic, 1).await.len(), 5);
    bridge.shutdown().await;
}

/// A random 128-bit number (a trace id), from the time and a counter.
fn rand_u128() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (t << 16) ^ u128::from(N.fetch_add(1, Ordering::Relaxed)) | 1
}
