//! `c360-loadgen`: posts signed catalog360 batches to a bridge (`http`), or publishes the same
//! events straight to the broker with the bridge's own sinks (`direct-kafka`, `direct-rabbit`,
//! `direct-nats`), and reports events/s and per-batch latency percentiles as JSON; `otlp-sink`
//! stands in for an OpenTelemetry collector while a traced bridge is measured.

use anyhow::{Context, Result};
use bytes::Bytes;
use c360_bridge::delivery::routing::KeyPointer;
use c360_bridge::ops::sample;
use c360_bridge::webhook::signature;
use c360_sinks::kafka::{KafkaConfig, KafkaSink};
use c360_sinks::nats::{NatsConfig, NatsSink};
use c360_sinks::rabbitmq::{RabbitConfig, RabbitSink};
use c360_sinks::{EventMeta, Message, Sink};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The allocator of the bridge (`src/main.rs`), so that the direct baseline runs on the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Load generator and direct-producer baseline for c360-bridge")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// Threads of the generator's async runtime (0 = one per core); give the `direct` modes
    /// the bridge's `server.worker_threads` to compare like with like.
    #[arg(long, global = true, default_value_t = 0)]
    worker_threads: usize,
}

#[derive(Args, Clone)]
struct Load {
    /// Concurrent senders.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Approximate bytes per event.
    #[arg(long, default_value_t = 1024)]
    event_size: usize,
    /// How long to send, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Target batches per second over all senders (0 = as fast as they go).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Batches generated before the clock starts, then sent in turn. In `http` mode each send
    /// stamps a unique sequence number into every event and signs it, so no two requests
    /// carry the same event (the bridge's ledger would skip repeats).
    #[arg(long, default_value_t = 64)]
    pool: usize,
    /// `http` only: every N-th event of a batch gets the class `bench/poison`, whose topic
    /// (`catalog360.bench/poison`) Kafka does not allow, so a bridge with `[dead_letter]` sends
    /// it there (0 = none).
    #[arg(long, default_value_t = 0)]
    poison_every: usize,
}

/// The event class of `--poison-every` events.
const POISON_CLASS: &str = "bench/poison";

#[derive(Subcommand)]
enum Mode {
    /// POST signed batches to a running bridge.
    Http {
        #[arg(long)]
        url: String,
        #[arg(long)]
        key: String,
        /// For an https:// URL: the PEM certificate of the CA that signed the bridge's
        /// certificate (the chain and name are verified, as catalog360 does).
        #[arg(long)]
        ca_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        load: Load,
    },
    /// Publish the same events with the bridge's Kafka sink, no HTTP.
    DirectKafka {
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap: String,
        /// Topic prefix; events go to PREFIX.<event_class>.
        #[arg(long, default_value = "catalog360")]
        prefix: String,
        /// Message key from this JSON pointer, as a route's `key` (default: no key).
        #[arg(long)]
        key_pointer: Option<String>,
        #[command(flatten)]
        load: Load,
    },
    /// Publish the same events with the bridge's RabbitMQ sink, no HTTP.
    DirectRabbit {
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        url: String,
        #[arg(long, default_value = "catalog360")]
        exchange: String,
        /// Declare this queue (bounded to 100k messages, dropping the oldest) bound with `#`,
        /// so that the published messages are routable.
        #[arg(long)]
        bind_queue: Option<String>,
        /// Channels of the sink's connection (the bridge's `channels` setting).
        #[arg(long, default_value_t = 4)]
        channels: usize,
        #[command(flatten)]
        load: Load,
    },
    /// Answer 200 to every OTLP/HTTP export (decoding nothing) until killed: the collector of
    /// a traced bridge under load.
    OtlpSink {
        #[arg(long, default_value = "127.0.0.1:4318")]
        listen: String,
    },
    /// Publish the same events with the bridge's NATS JetStream sink, no HTTP (subjects
    /// `{prefix}.{event_class}`; a stream must capture them, e.g. with `--create-stream`).
    DirectNats {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        #[arg(long, default_value = "catalog360")]
        prefix: String,
        /// Create this stream (capturing `{prefix}.>`) when it does not exist.
        #[arg(long)]
        create_stream: Option<String>,
        #[command(flatten)]
        load: Load,
    },
}

/// What one sender saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    failures: HashMap<String, u64>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = c360_bridge::runtime(cli.worker_threads)?;
    let report = rt.block_on(async {
        match cli.mode {
            Mode::Http {
                url,
                key,
                ca_file,
                load,
            } => http(url, key, ca_file, load).await,
            Mode::DirectKafka {
                bootstrap,
                prefix,
                key_pointer,
                load,
            } => direct_kafka(bootstrap, prefix, key_pointer, load).await,
            Mode::DirectRabbit {
                url,
                exchange,
                bind_queue,
                channels,
                load,
            } => direct_rabbit(url, exchange, bind_queue, channels, load).await,
            Mode::OtlpSink { listen } => otlp_sink(&listen).await,
            Mode::DirectNats {
                url,
                prefix,
                create_stream,
                load,
            } => direct_nats(url, prefix, create_stream, load).await,
        }
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// `otlp-sink`: takes every POST and answers 200 with an empty export response.
async fn otlp_sink(listen: &str) -> Result<serde_json::Value> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    let app = axum::Router::new().fallback(|_body: Bytes| async { (http::StatusCode::OK, "") });
    axum::serve(listener, app).await?;
    Ok(json!({}))
}

/// `direct-kafka`: the bridge's Kafka sink, once a broker at `bootstrap` answered.
async fn direct_kafka(
    bootstrap: String,
    prefix: String,
    key_pointer: Option<String>,
    load: Load,
) -> Result<serde_json::Value> {
    let key = key_pointer
        .as_deref()
        .map(KeyPointer::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let cfg = KafkaConfig {
        bootstrap_servers: bootstrap,
        librdkafka: BTreeMap::from([("compression.type".into(), "none".into())]),
        cloudevents: true,
        create_topics: None,
    };
    let sink = KafkaSink::new("kafka", &cfg, Duration::from_secs(15))?;
    if let Err(why) = sink.probe_now(Duration::from_secs(5)) {
        anyhow::bail!("{why} (at {})", cfg.bootstrap_servers);
    }
    direct(Arc::new(sink), format!("{prefix}."), key, false, load).await
}

/// `direct-rabbit`: the bridge's RabbitMQ sink, once connected (binding `bind_queue` first).
async fn direct_rabbit(
    url: String,
    exchange: String,
    bind_queue: Option<String>,
    channels: usize,
    load: Load,
) -> Result<serde_json::Value> {
    if let Some(q) = &bind_queue {
        bind(&url, &exchange, q).await?;
    }
    let cfg: RabbitConfig =
        serde_json::from_value(json!({ "url": url, "exchange": exchange, "channels": channels }))?;
    let sink = Arc::new(RabbitSink::new("rabbit", &cfg)?);
    let until = Instant::now() + Duration::from_secs(10);
    while !sink.readiness().ready {
        anyhow::ensure!(
            Instant::now() < until,
            "RabbitMQ not ready: {}",
            sink.readiness().detail
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    direct(sink, String::new(), None, false, load).await
}

/// `direct-nats`: the bridge's NATS sink, once connected (and its stream made).
async fn direct_nats(
    url: String,
    prefix: String,
    create_stream: Option<String>,
    load: Load,
) -> Result<serde_json::Value> {
    let stream = create_stream.map(|name| {
        json!({ "name": name, "subjects": [format!("{prefix}.>")], "duplicate_window": "2m" })
    });
    let cfg: NatsConfig = serde_json::from_value(json!({ "url": url, "create_stream": stream }))?;
    let sink = Arc::new(NatsSink::new("nats", &cfg, Duration::from_secs(15))?);
    let until = Instant::now() + Duration::from_secs(10);
    while !sink.readiness().ready {
        anyhow::ensure!(
            Instant::now() < until,
            "NATS not ready: {}",
            sink.readiness().detail
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // JetStream would store a pool batch sent again once (same Nats-Msg-Id): every send gets
    // ids of its own, as the bridge's events have.
    direct(sink, format!("{prefix}."), None, true, load).await
}

async fn http(
    url: String,
    key: String,
    ca_file: Option<std::path::PathBuf>,
    load: Load,
) -> Result<serde_json::Value> {
    let mut client = reqwest::Client::builder().pool_max_idle_per_host(load.concurrency);
    if let Some(ca) = ca_file {
        client = client.use_preconfigured_tls(tls_client(&ca)?);
    }
    let client = client.build()?;
    let pool: Arc<Vec<Template>> = Arc::new(
        (0..load.pool.max(1) as u64)
            .map(|n| Template::new(&load, n))
            .collect::<Result<_>>()?,
    );
    let started = Instant::now();
    // Stamping and signing a batch is the sender's work, not the bridge's: it is done while
    // the previous request is in flight, outside the measured latency.
    let prepare = move |n: u64| {
        let body = pool[n as usize % pool.len()].stamp(n);
        let sig = signature::sign(key.as_bytes(), &body);
        (body, sig)
    };
    let tallies = run_senders(&load, prepare, move |(body, sig)| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let resp = client
                .post(&url)
                .header(signature::HEADER, sig)
                .body(body)
                .send()
                .await;
            match resp {
                Ok(r) if r.status() == 200 => Ok(()),
                Ok(r) => Err(r.status().as_u16().to_string()),
                Err(e) => Err(format!("transport: {e}")),
            }
        }
    })
    .await?;
    Ok(report("http", &load, tallies, started.elapsed()))
}

/// A rustls client configuration (ring) that trusts only the CA in `ca` (PEM).
fn tls_client(ca: &std::path::Path) -> Result<tokio_rustls::rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(cert.with_context(|| format!("a certificate in {}", ca.display()))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A generated batch whose events carry a fixed-width `bench_seq` field to stamp per send.
struct Template {
    body: Vec<u8>,
    slots: Vec<usize>,
}

const SEQ_WIDTH: usize = 20;

impl Template {
    fn new(load: &Load, n: u64) -> Result<Self> {
        let events: Vec<serde_json::Value> = (0..load.batch_size)
            .map(|i| {
                let poison = load.poison_every > 0 && (i + 1) % load.poison_every == 0;
                let class = if poison {
                    POISON_CLASS
                } else {
                    c360_bridge::delivery::routing::KNOWN_EVENT_CLASSES[i % 11]
                };
                let mut ev = sample::event(
                    class,
                    n * load.batch_size as u64 + i as u64,
                    load.event_size,
                );
                ev["bench_seq"] = json!("0".repeat(SEQ_WIDTH));
                ev
            })
            .collect();
        let body = serde_json::to_vec(&json!({ "events": events }))?;
        let marker = b"\"bench_seq\":\"";
        let slots = body
            .windows(marker.len())
            .enumerate()
            .filter(|(_, w)| *w == marker)
            .map(|(i, _)| i + marker.len())
            .collect();
        Ok(Self { body, slots })
    }

    /// The batch with every event's `bench_seq` set to a value unique to send `n`.
    fn stamp(&self, n: u64) -> Bytes {
        let mut body = self.body.clone();
        for (i, &at) in self.slots.iter().enumerate() {
            let seq = format!(
                "{:0width$}",
                n * self.slots.len() as u64 + i as u64,
                width = SEQ_WIDTH
            );
            body[at..at + SEQ_WIDTH].copy_from_slice(seq.as_bytes());
        }
        Bytes::from(body)
    }
}

/// The same events the `http` mode sends, published with a sink: one message per event,
/// a batch's messages handed to the sink together (`publish_many`), as the bridge does. With
/// `unique_ids`, send `n` suffixes every event id with `-n` (for brokers that dedupe on it).
async fn direct(
    sink: Arc<dyn Sink>,
    prefix: String,
    key: Option<KeyPointer>,
    unique_ids: bool,
    load: Load,
) -> Result<serde_json::Value> {
    let webhook: Arc<str> = "direct".into();
    let pool: Arc<Vec<Vec<Message>>> = Arc::new(
        (0..load.pool.max(1) as u64)
            .map(|n| {
                let body = Bytes::from(sample::batch(
                    load.batch_size,
                    n * load.batch_size as u64,
                    load.event_size,
                ));
                messages(&body, &prefix, key.as_ref(), &webhook)
            })
            .collect::<Result<_>>()?,
    );
    let started = Instant::now();
    let tallies = run_senders(
        &load,
        |n| n,
        move |n| {
            let (sink, pool) = (sink.clone(), pool.clone());
            async move {
                let batch = &pool[n as usize % pool.len()];
                let renamed: Vec<Message> = if unique_ids {
                    batch.iter().map(|m| with_id_suffix(m, n)).collect()
                } else {
                    Vec::new()
                };
                let messages: Vec<&Message> = if unique_ids {
                    renamed.iter().collect()
                } else {
                    batch.iter().collect()
                };
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                let results = sink.publish_many(&messages, deadline).await;
                results
                    .into_iter()
                    .find_map(Result::err)
                    .map_or(Ok(()), |e| Err(e.code().to_owned()))
            }
        },
    )
    .await?;
    Ok(report("direct", &load, tallies, started.elapsed()))
}

/// `m` with its event id suffixed `-n`.
fn with_id_suffix(m: &Message, n: u64) -> Message {
    Message {
        meta: Arc::new(EventMeta {
            id: format!("{}-{n}", m.meta.id),
            ..EventMeta::clone(&m.meta)
        }),
        ..m.clone()
    }
}

fn messages(
    body: &Bytes,
    prefix: &str,
    key: Option<&KeyPointer>,
    webhook: &Arc<str>,
) -> Result<Vec<Message>> {
    let events = c360_bridge::webhook::envelope::split(body, usize::MAX)?;
    let ids = c360_bridge::webhook::event_id::event_ids(webhook, &events);
    let ce = c360_bridge::delivery::cloudevents::Batch::new(
        c360_bridge::delivery::cloudevents::default_source(webhook).into(),
        std::time::SystemTime::now(),
    );
    Ok(events
        .iter()
        .zip(ids)
        .map(|(e, id)| Message {
            destination: format!("{prefix}{}", e.event_class),
            key: key.and_then(|k| k.extract(e.raw)).map(Bytes::from),
            body: body.slice_ref(e.raw.get().as_bytes()),
            meta: Arc::new(EventMeta {
                id: id.to_string(),
                event_class: e.event_class.clone(),
                payload_class: e.payload_class.clone(),
                webhook: webhook.clone(),
                cloudevent: Some(ce.event(&e.event_class)),
                dead_letter: None,
            }),
            trace: None,
        })
        .collect())
}

/// Runs `concurrency` senders for `duration`, each sending batch after batch. A sender
/// prepares its next batch (`prepare`) while the current one is in flight (`send`), so the
/// latency measured is the request's alone.
async fn run_senders<P, T, F, Fut>(load: &Load, prepare: P, send: F) -> Result<Vec<Tally>>
where
    P: Fn(u64) -> T + Clone + Send + 'static,
    T: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let start = tokio::time::Instant::now();
    let until = Instant::now() + load.duration;
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let next_n = move || counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // With a target rate, each sender sends on its own fixed schedule (open loop).
    let interval =
        (load.rate > 0.0).then(|| Duration::from_secs_f64(load.concurrency as f64 / load.rate));
    let mut tasks = Vec::new();
    for w in 0..load.concurrency {
        let (prepare, send, next_n) = (prepare.clone(), send.clone(), next_n.clone());
        let offset = interval.map(|i| i.mul_f64(w as f64 / load.concurrency as f64));
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut k = 0u32;
            let mut next = prepare(next_n());
            while Instant::now() < until {
                if let (Some(i), Some(o)) = (interval, offset) {
                    tokio::time::sleep_until(start + o + i * k).await;
                    k += 1;
                }
                let began = Instant::now();
                let in_flight = tokio::spawn(send(next));
                next = prepare(next_n());
                match in_flight.await {
                    Ok(Ok(())) => t.latencies.push(began.elapsed()),
                    Ok(Err(code)) => *t.failures.entry(code).or_default() += 1,
                    Err(e) => *t.failures.entry(format!("sender: {e}")).or_default() += 1,
                }
            }
            t
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        // A sender that panicked would silently shrink the totals: fail the run instead.
        out.push(task.await.context("a sender task failed")?);
    }
    Ok(out)
}

fn report(mode: &str, load: &Load, tallies: Vec<Tally>, elapsed: Duration) -> serde_json::Value {
    let mut lat: Vec<Duration> = tallies
        .iter()
        .flat_map(|t| t.latencies.iter().copied())
        .collect();
    lat.sort();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for t in &tallies {
        for (k, v) in &t.failures {
            *failures.entry(k.clone()).or_default() += v;
        }
    }
    let secs = elapsed.as_secs_f64();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, ms)
    };
    json!({
        "mode": mode,
        "concurrency": load.concurrency,
        "target_rate": load.rate,
        "batch_size": load.batch_size,
        "event_size": load.event_size,
        "poison_every": load.poison_every,
        "seconds": secs,
        "ok_batches": lat.len(),
        "batches_per_s": lat.len() as f64 / secs,
        "events_per_s": (lat.len() * load.batch_size) as f64 / secs,
        "latency_ms": { "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": lat.last().map_or(0.0, ms) },
        "failures": failures,
    })
}

fn ms(d: &Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

async fn bind(url: &str, exchange: &str, queue: &str) -> Result<()> {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        exchange.into(),
        lapin::ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(100_000));
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), opts, args).await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    conn.close(200, "bound".into()).await?;
    Ok(())
}
