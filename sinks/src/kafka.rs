//! The Kafka sink: one shared idempotent `FutureProducer` (acks=all), headers per SPEC §3.

use crate::message::CONTENT_TYPE;
use crate::{Message, Readiness, Sink, SinkError};
use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

/// `[sinks.NAME] type = "kafka"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers` of the cluster, e.g. `127.0.0.1:9092`.
    pub bootstrap_servers: String,
    /// Passed to librdkafka verbatim (`[sinks.NAME.librdkafka]`), after the bridge's defaults.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

/// Settings the delivery guarantee depends on: the operator may not override them.
const PINNED: [(&str, &str); 2] = [("enable.idempotence", "true"), ("acks", "all")];

/// Why a Kafka sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("librdkafka.\"{key}\" cannot be overridden: the bridge needs {key}={value}")]
    Pinned { key: String, value: &'static str },
    #[error("librdkafka rejected the producer configuration: {0}")]
    Client(#[from] KafkaError),
}

/// Publishes to Kafka; `publish` resolves with the delivery report of the message.
pub struct KafkaSink {
    name: String,
    producer: FutureProducer,
    health: Arc<Health>,
    probe: Mutex<Option<ProbeThread>>,
}

/// The probe thread and the sender whose drop wakes it up and ends it.
struct ProbeThread {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

/// Whether the cluster answered the last metadata probe, kept up to date by a probe thread.
struct Health {
    reachable: AtomicBool,
}

impl KafkaSink {
    /// Builds the producer. `message_timeout` bounds librdkafka's own retries; the bridge sets
    /// it below its answer deadline so that every delivery report arrives in time (unless the
    /// operator's `librdkafka` table overrides `message.timeout.ms`).
    pub fn new(
        name: &str,
        cfg: &KafkaConfig,
        message_timeout: Duration,
    ) -> Result<Self, KafkaSetupError> {
        let producer: FutureProducer = client_config(cfg, message_timeout)?.create()?;
        let health = Arc::new(Health {
            reachable: AtomicBool::new(false),
        });
        let probe = spawn_probe(name, producer.clone(), health.clone());
        Ok(Self {
            name: name.to_owned(),
            producer,
            health,
            probe: Mutex::new(probe),
        })
    }

    /// Tells the probe thread to end; the thread is returned for joining.
    fn stop_probe(&self) -> Option<JoinHandle<()>> {
        let probe = self.probe.lock().ok()?.take()?;
        drop(probe.stop);
        Some(probe.thread)
    }

    /// Blocks (up to `timeout`) until the cluster has answered a metadata request.
    pub fn probe_now(&self, timeout: Duration) -> bool {
        probe(&self.producer, &self.health, timeout)
    }
}

impl KafkaConfig {
    /// Checks what can be checked without connecting: pinned keys, and every librdkafka key
    /// and value (librdkafka parses them; nothing connects).
    pub fn validate(&self) -> Result<(), KafkaSetupError> {
        client_config(self, Duration::from_secs(1))?.create_native_config()?;
        Ok(())
    }
}

fn client_config(
    cfg: &KafkaConfig,
    message_timeout: Duration,
) -> Result<ClientConfig, KafkaSetupError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cfg.bootstrap_servers)
        .set("client.id", "c360-bridge")
        .set(
            "message.timeout.ms",
            message_timeout.as_millis().to_string(),
        )
        .set("linger.ms", "2")
        // A broker that comes back is used within a second, not after up to 10 s of backoff.
        .set("reconnect.backoff.max.ms", "1000");
    for (key, value) in &cfg.librdkafka {
        cc.set(key, value);
    }
    for (key, value) in PINNED {
        match cfg.librdkafka.get(key) {
            Some(v) if !(v == value || (key == "acks" && v == "-1")) => {
                return Err(KafkaSetupError::Pinned {
                    key: key.to_owned(),
                    value,
                });
            }
            _ => {
                cc.set(key, value);
            }
        }
    }
    Ok(cc)
}

impl Drop for KafkaSink {
    /// Ends the probe thread (it holds a producer handle) when the sink goes away unclosed.
    fn drop(&mut self) {
        self.stop_probe();
    }
}

/// How often the probe thread asks the cluster for metadata.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

fn spawn_probe(name: &str, producer: FutureProducer, health: Arc<Health>) -> Option<ProbeThread> {
    let (stop, stopped) = mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(format!("kafka-probe-{name}"))
        .spawn(move || {
            loop {
                probe(&producer, &health, Duration::from_secs(1));
                if stopped.recv_timeout(PROBE_INTERVAL) != Err(mpsc::RecvTimeoutError::Timeout) {
                    break;
                }
            }
        });
    match spawned {
        Ok(thread) => Some(ProbeThread { stop, thread }),
        Err(e) => {
            tracing::error!(sink = name, error = %e, "could not start the Kafka probe thread");
            None
        }
    }
}

fn probe(producer: &FutureProducer, health: &Health, timeout: Duration) -> bool {
    let ok = producer
        .client()
        .fetch_metadata(None, timeout)
        .map(|m| !m.brokers().is_empty())
        .unwrap_or(false);
    let was = health.reachable.swap(ok, Ordering::Relaxed);
    if was != ok {
        tracing::info!(reachable = ok, "Kafka cluster reachability changed");
    }
    ok
}

fn headers(msg: &Message) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(5);
    for (key, value) in msg.meta.headers() {
        h = h.insert(Header {
            key,
            value: Some(value),
        });
    }
    h.insert(Header {
        key: "content-type",
        value: Some(CONTENT_TYPE),
    })
}

/// Maps a librdkafka error to whether the bridge should tell the sender to retry.
fn classify(e: KafkaError) -> SinkError {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidMessage) => {
            SinkError::Permanent(e.to_string())
        }
        Some(C::QueueFull) => SinkError::Overloaded(e.to_string()),
        Some(C::MessageTimedOut) => SinkError::Timeout(e.to_string()),
        Some(C::AllBrokersDown) => SinkError::Unavailable(e.to_string()),
        _ => SinkError::Refused(e.to_string()),
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, msg: &Message) -> Result<(), SinkError> {
        if !self.health.reachable.load(Ordering::Relaxed) {
            return Err(SinkError::Unavailable(
                "no Kafka broker answered the last probe".into(),
            ));
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&msg.destination)
            .payload(&msg.body[..])
            .headers(headers(msg));
        if let Some(key) = &msg.key {
            record = record.key(&key[..]);
        }
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| classify(e))?;
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(classify(e)),
            Err(_) => Err(SinkError::Unavailable(
                "producer shut down before delivery".into(),
            )),
        }
    }

    fn readiness(&self) -> Readiness {
        if self.health.reachable.load(Ordering::Relaxed) {
            Readiness::ready("cluster reachable")
        } else {
            Readiness::not_ready("no Kafka broker answered the last metadata probe")
        }
    }

    async fn close(&self, deadline: Duration) {
        let probe = self.stop_probe();
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            // Joined, so no producer handle outlives the sink's close.
            if let Some(thread) = probe {
                let _ = thread.join();
            }
            producer.flush(deadline)
        })
        .await;
        match flushed {
            Ok(Ok(())) => tracing::info!(sink = %self.name, "Kafka producer flushed"),
            Ok(Err(e)) => tracing::warn!(sink = %self.name, error = %e, "Kafka flush incomplete"),
            Err(e) => tracing::warn!(sink = %self.name, error = %e, "Kafka flush task failed"),
        }
    }
}
