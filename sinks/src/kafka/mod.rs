//! The Kafka sink: one shared idempotent producer (acks=all), headers per SPEC §3, replaced by
//! a new instance when it cannot recover (see `generation` and `supervisor`).

mod generation;
mod supervisor;
mod topics;

use crate::cloudevents;
use crate::message::CONTENT_TYPE;
use crate::{Message, Permanence, Readiness, Sink, SinkError};
use async_trait::async_trait;
use generation::{Generation, Reason, Wake};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
pub use topics::CreateTopics;
use topics::{Known, Topics};

/// `[sinks.NAME] type = "kafka"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers` of the cluster, e.g. `127.0.0.1:9092`.
    pub bootstrap_servers: String,
    /// Passed to librdkafka verbatim (`[sinks.NAME.librdkafka]`), after the bridge's defaults.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
    /// Add the CloudEvents `ce_*` headers to every message (SPEC §8).
    #[serde(default = "crate::cloudevents::default_on")]
    pub cloudevents: bool,
    /// Create a missing topic before its first publish (absent: never create).
    #[serde(default)]
    pub create_topics: Option<CreateTopics>,
}

/// Settings the delivery guarantee depends on: the operator may not override them.
const PINNED: [(&str, &str); 2] = [("enable.idempotence", "true"), ("acks", "all")];

impl KafkaConfig {
    /// The transport and login of the librdkafka table, as `check --connect` prints them:
    /// `TLS, SCRAM-SHA-512`, `mutual TLS`, `plaintext`.
    pub fn describe_security(&self) -> String {
        let get = |k: &str| self.librdkafka.get(k).map(|v| v.to_ascii_lowercase());
        let protocol = get("security.protocol").unwrap_or_else(|| "plaintext".into());
        let client_cert = [
            "ssl.certificate.location",
            "ssl.certificate.pem",
            "ssl.keystore.location",
        ]
        .iter()
        .any(|k| self.librdkafka.contains_key(*k));
        let transport = match (protocol.ends_with("ssl"), client_cert) {
            (true, true) => "mutual TLS",
            (true, false) => "TLS",
            _ => "plaintext",
        };
        if !protocol.starts_with("sasl") {
            return transport.to_owned();
        }
        let mechanism = self
            .librdkafka
            .get("sasl.mechanisms")
            .or_else(|| self.librdkafka.get("sasl.mechanism"))
            .map_or("GSSAPI", String::as_str);
        format!("{transport}, {mechanism}")
    }
}

/// Why a Kafka sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("librdkafka.\"{key}\" cannot be overridden: the bridge needs {key}={value}")]
    Pinned { key: String, value: &'static str },
    #[error("librdkafka rejected the producer configuration: {0}")]
    Client(#[from] KafkaError),
    #[error("create_topics: {0}")]
    CreateTopics(String),
}

/// Publishes to Kafka; `publish` resolves with the delivery report of the message.
pub struct KafkaSink {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

/// What the sink and its supervisor thread share.
struct Shared {
    name: String,
    /// Whether messages carry the CloudEvents headers.
    cloudevents: bool,
    /// The configuration every producer instance is made from.
    config: ClientConfig,
    /// The producer instance in use; replaced when it cannot recover.
    current: RwLock<Arc<Generation>>,
    /// Whether the current instance's last metadata probe was answered.
    reachable: AtomicBool,
    /// Why publishes are refused while the producer is being replaced.
    rebuilding: Mutex<Option<String>>,
    /// Whether a message was delivered since the last rebuild (resets the rebuild backoff).
    delivered: AtomicBool,
    /// When the last message was delivered, in ms since `born`.
    last_delivery_ms: AtomicU64,
    born: Instant,
    /// librdkafka's `message.timeout.ms` (`None` when messages never time out).
    message_timeout: Option<Duration>,
    /// Wakes the supervisor thread.
    wake: mpsc::Sender<Wake>,
    /// What the cluster said of each topic published to.
    topics: Topics,
    /// librdkafka's last error for this sink (TLS, login, connection).
    last_error: generation::LastError,
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
        let config = client_config(cfg, message_timeout)?;
        let (wake, wakes) = mpsc::channel();
        let last_error = generation::LastError::default();
        let first = Generation::create(&config, name, 1, wake.clone(), last_error.clone())?;
        let topics = Topics::new(name, &config, cfg.create_topics.clone())?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            cloudevents: cfg.cloudevents,
            message_timeout: configured_timeout(&config),
            config,
            current: RwLock::new(Arc::new(first)),
            reachable: AtomicBool::new(false),
            rebuilding: Mutex::new(None),
            delivered: AtomicBool::new(false),
            last_delivery_ms: AtomicU64::new(0),
            born: Instant::now(),
            wake,
            topics,
            last_error,
        });
        let supervisor = supervisor::spawn(shared.clone(), wakes);
        Ok(Self {
            shared,
            supervisor: Mutex::new(supervisor),
        })
    }

    /// Tells the supervisor thread to end; the thread is returned for joining.
    fn stop_supervisor(&self) -> Option<JoinHandle<()>> {
        let thread = self.supervisor.lock().ok()?.take()?;
        let _ = self.shared.wake.send(Wake::Stop);
        Some(thread)
    }

    /// Whether the cluster has `topic` (`None` when no broker answered within `timeout`).
    /// Blocks; for start-up checks, not for the publish path.
    pub fn knows_topic(&self, topic: &str, timeout: Duration) -> Option<bool> {
        let current = self.shared.current();
        let md = current
            .producer
            .client()
            .fetch_metadata(Some(topic), timeout)
            .ok()?;
        let found = md
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        Some(found)
    }

    /// Blocks (up to `timeout`) until the cluster has answered a metadata request: the number
    /// of brokers it named, or why no broker answered (`tls: …`, `authentication failed: …`).
    pub fn probe_now(&self, timeout: Duration) -> Result<usize, String> {
        let until = Instant::now() + timeout;
        while !supervisor::probe(&self.shared) {
            if Instant::now() >= until {
                return Err(self.shared.unreachable("no Kafka broker answered"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let current = self.shared.current();
        let md = current.producer.client().fetch_metadata(None, timeout);
        Ok(md.map(|m| m.brokers().len()).unwrap_or(0))
    }
}

/// `message.timeout.ms` as librdkafka will apply it; 0 means infinite.
fn configured_timeout(config: &ClientConfig) -> Option<Duration> {
    config
        .get("message.timeout.ms")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}

impl Shared {
    fn current(&self) -> Arc<Generation> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn generation(&self) -> u64 {
        self.current().id
    }

    /// Puts `next` in use and returns the instance it replaces.
    fn replace(&self, next: Generation) -> Arc<Generation> {
        let mut current = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        std::mem::replace(&mut *current, Arc::new(next))
    }

    /// `what`, with librdkafka's last error when it reported one (a TLS or login failure).
    fn unreachable(&self, what: &str) -> String {
        match self.last_error.lock().ok().and_then(|l| l.clone()) {
            Some(why) => format!("{what}: {why}"),
            None => what.to_owned(),
        }
    }

    fn rebuilding(&self) -> Option<String> {
        self.rebuilding.lock().ok().and_then(|r| r.clone())
    }

    fn set_rebuilding(&self, why: Option<String>) {
        if let Ok(mut r) = self.rebuilding.lock() {
            *r = why;
        }
    }

    fn note_delivery(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_delivery_ms.store(ms, Ordering::Relaxed);
        self.delivered.store(true, Ordering::Relaxed);
    }

    /// The producer instance to publish with, or why publishes are refused right now.
    fn usable(&self) -> Result<Arc<Generation>, String> {
        if let Some(why) = self.rebuilding() {
            return Err(why);
        }
        if !self.reachable.load(Ordering::Relaxed) {
            return Err(self.unreachable("no Kafka broker answered the last probe"));
        }
        Ok(self.current())
    }

    /// Hands `msg` to `current`'s producer; returns the generation and its delivery report.
    fn enqueue(
        &self,
        current: &Generation,
        msg: &Message,
    ) -> Result<(u64, DeliveryFuture), SinkError> {
        let mut record = FutureRecord::<[u8], [u8]>::to(&msg.destination)
            .payload(&msg.body[..])
            .headers(headers(msg, self.cloudevents));
        if let Some(key) = &msg.key {
            record = record.key(&key[..]);
        }
        let delivery = current.producer.send_result(record).map_err(|(e, _)| {
            match e.rdkafka_error_code() {
                // librdkafka measured this very message against `message.max.bytes`.
                Some(RDKafkaErrorCode::MessageSizeTooLarge) => classify(e),
                _ => self.failed(current.id, msg, None, e),
            }
        })?;
        Ok((current.id, delivery))
    }

    /// Hands the messages to the producer in order, except those whose topic the cluster
    /// refuses or whose record exceeds the topic's `max.message.bytes`. Once a message of a
    /// (topic, key) is not handed over, the later ones of that key are held back too, so a
    /// resend cannot deliver them out of order.
    fn enqueue_all(
        &self,
        current: &Generation,
        msgs: &[&Message],
        known: &HashMap<&str, Known>,
    ) -> Vec<Result<(u64, DeliveryFuture), SinkError>> {
        let mut held: HashSet<(&str, &[u8])> = HashSet::new();
        msgs.iter()
            .map(|m| {
                let key = m.key.as_deref().map(|k| (m.destination.as_str(), k));
                if key.is_some_and(|k| held.contains(&k)) {
                    return Err(SinkError::Overloaded(
                        "held back: an earlier event with the same key was not published".into(),
                    ));
                }
                let r = admissible(m, known.get(m.destination.as_str()), self.cloudevents)
                    .and_then(|()| self.enqueue(current, m));
                if let (Err(_), Some(k)) = (&r, key) {
                    held.insert(k);
                }
                r
            })
            .collect()
    }

    /// What a delivery report of generation `generation` for `msg` means for the caller;
    /// `limit` is the topic's `max.message.bytes` when known.
    fn settle(
        &self,
        generation: u64,
        msg: &Message,
        limit: Option<usize>,
        report: <DeliveryFuture as std::future::Future>::Output,
    ) -> Result<(), SinkError> {
        match report {
            Ok(Ok(_)) => {
                self.note_delivery();
                Ok(())
            }
            Ok(Err((e, _))) => Err(self.failed(generation, msg, limit, e)),
            Err(_) => Err(SinkError::Unavailable(
                "producer shut down before delivery".into(),
            )),
        }
    }

    /// Classifies a failed delivery of `msg` by generation `generation`, and asks for a new
    /// producer when the failure says the instance cannot recover: it lost its idempotence
    /// state, or its deliveries time out for a whole message timeout while the cluster answers
    /// (the supervisor then checks that the message's topic itself is healthy).
    fn failed(
        &self,
        generation: u64,
        msg: &Message,
        limit: Option<usize>,
        e: KafkaError,
    ) -> SinkError {
        use RDKafkaErrorCode as C;
        let code = e.rdkafka_error_code();
        let reason = match code {
            Some(c) if generation::is_state_loss(c) => Some(Reason::Fatal),
            Some(C::MessageTimedOut) if self.stalled() => Some(Reason::Stalled),
            _ => None,
        };
        if let Some(reason) = reason {
            let _ = self.wake.send(Wake::Rebuild {
                generation,
                reason,
                detail: e.to_string(),
                topic: Some(msg.destination.clone()),
            });
            return SinkError::Unavailable(format!("Kafka producer being replaced: {e}"));
        }
        match code {
            Some(C::UnknownTopicOrPartition | C::UnknownTopic) => {
                self.topics.forget(&msg.destination);
                SinkError::UnknownTopic(msg.destination.clone())
            }
            Some(C::TopicAuthorizationFailed) => {
                SinkError::TopicAuthorization(msg.destination.clone())
            }
            Some(C::MessageSizeTooLarge) => too_large(msg, limit, self.cloudevents, e),
            _ => classify(e),
        }
    }

    /// Nothing was delivered for a whole message timeout although the cluster answers.
    fn stalled(&self) -> bool {
        let Some(timeout) = self.message_timeout else {
            return false;
        };
        let last = Duration::from_millis(self.last_delivery_ms.load(Ordering::Relaxed));
        self.reachable.load(Ordering::Relaxed) && self.born.elapsed() >= last + timeout
    }
}

impl KafkaConfig {
    /// Checks what can be checked without connecting: pinned keys, and every librdkafka key
    /// and value (librdkafka parses them; nothing connects).
    pub fn validate(&self) -> Result<(), KafkaSetupError> {
        client_config(self, Duration::from_secs(1))?.create_native_config()?;
        if let Some(create) = &self.create_topics {
            create.validate().map_err(KafkaSetupError::CreateTopics)?;
        }
        Ok(())
    }
}

/// librdkafka's default `message.max.bytes`.
const LIBRDKAFKA_MAX_BYTES: usize = 1_000_000;

/// Whether Kafka allows byte `b` in a topic name.
fn topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._-".contains(&b)
}

/// The literal text of a topic template: Kafka's topic alphabet only.
fn topic_literal(s: &str) -> Result<(), String> {
    if s.bytes().all(topic_byte) {
        Ok(())
    } else {
        Err("has characters a Kafka topic cannot have (letters, digits, . _ - only)".into())
    }
}

/// A Kafka topic is 1-249 letters, digits, '.', '_', '-' and not "." or "..".
fn topic_legal(d: &str) -> Result<(), String> {
    if (1..=249).contains(&d.len()) && d.bytes().all(topic_byte) && d != "." && d != ".." {
        Ok(())
    } else {
        Err(format!(
            "Kafka topic {d:?}, which Kafka does not allow (letters, digits, . _ - only, at most 249)"
        ))
    }
}

/// Kafka's rules for topics.
pub const TOPICS: crate::DestinationRules = crate::DestinationRules {
    noun: "Kafka topic",
    literal: topic_literal,
    check: topic_legal,
};

#[async_trait]
impl crate::SinkKind for KafkaConfig {
    fn type_name(&self) -> &'static str {
        "kafka"
    }
    fn default_topic(&self) -> &'static str {
        "catalog360.{event_class}"
    }
    fn validate(&self) -> Result<(), String> {
        KafkaConfig::validate(self).map_err(|e| e.to_string())
    }
    fn cloudevents(&self) -> bool {
        self.cloudevents
    }
    fn cloudevents_names(&self) -> &'static cloudevents::Names {
        &cloudevents::KAFKA
    }
    fn destinations(&self) -> crate::DestinationRules {
        TOPICS
    }
    fn max_message_bytes(&self) -> Option<(usize, &'static str)> {
        let limit = self
            .librdkafka
            .get("message.max.bytes")
            .and_then(|v| v.parse::<usize>().ok());
        Some((
            limit.unwrap_or(LIBRDKAFKA_MAX_BYTES),
            "librdkafka \"message.max.bytes\"",
        ))
    }
    fn build(&self, name: &str, ctx: &crate::BuildContext) -> Result<Arc<dyn Sink>, String> {
        KafkaSink::new(name, self, ctx.confirm_within)
            .map(|s| Arc::new(s) as Arc<dyn Sink>)
            .map_err(|e| e.to_string())
    }
    async fn probe(&self, name: &str, timeout: Duration) -> Result<String, String> {
        let sink = KafkaSink::new(name, self, timeout).map_err(|e| e.to_string())?;
        let brokers = tokio::task::spawn_blocking(move || sink.probe_now(timeout))
            .await
            .map_err(|e| e.to_string())??;
        let plural = if brokers == 1 { "" } else { "s" };
        Ok(format!(
            "{brokers} broker{plural}, {}",
            self.describe_security()
        ))
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
    /// Ends the supervisor thread (it holds the producer) when the sink goes away unclosed.
    fn drop(&mut self) {
        self.stop_supervisor();
    }
}

fn headers(msg: &Message, cloudevents: bool) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(11);
    for (key, value) in msg.headers(&cloudevents::KAFKA, cloudevents) {
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
///
/// Permanent only when the failure belongs to this message and no retry can change it (the
/// transient/permanent table of docs/operations.md): too large for the producer's `message.max.bytes` or the
/// broker's limit, a record the broker validated and rejected, a topic name the broker refuses.
/// Everything else may heal (a broker back, a topic created, an ACL granted, a batch-mate's bad
/// record: `_INVALID_DIFFERENT_RECORD`; a corrupt message: librdkafka retries `INVALID_MSG`
/// itself) and is transient.
fn classify(e: KafkaError) -> SinkError {
    use RDKafkaErrorCode as C;
    let permanent = |p| SinkError::Permanent(p, e.to_string());
    match e.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge) => permanent(Permanence::TooLarge),
        Some(C::InvalidRecord) => permanent(Permanence::InvalidRecord),
        Some(C::InvalidTopic) => permanent(Permanence::IllegalDestination),
        Some(C::QueueFull) => SinkError::Overloaded(e.to_string()),
        Some(C::MessageTimedOut) => SinkError::Timeout(e.to_string()),
        Some(C::AllBrokersDown) => SinkError::Unavailable(e.to_string()),
        _ => SinkError::Refused(e.to_string()),
    }
}

impl Shared {
    /// What the topic cache says of each topic of `msgs` (asked together; a topic whose answer
    /// is not in by `deadline` counts as unknown).
    async fn known_topics<'m>(
        &self,
        msgs: &[&'m Message],
        deadline: tokio::time::Instant,
    ) -> HashMap<&'m str, Known> {
        let topics: HashSet<&str> = msgs.iter().map(|m| m.destination.as_str()).collect();
        let asks = topics.into_iter().map(|t| async move {
            let known = tokio::time::timeout_at(deadline, self.topics.check(t)).await;
            (t, known.unwrap_or(Known::Unknown))
        });
        futures::future::join_all(asks).await.into_iter().collect()
    }
}

/// Whether `msg` may go to the producer, by what is known of its topic.
fn admissible(msg: &Message, known: Option<&Known>, cloudevents: bool) -> Result<(), SinkError> {
    match known {
        Some(Known::Refused { why }) => Err(why.error(&msg.destination)),
        Some(Known::Exists {
            max_bytes: Some(limit),
        }) => match record_bytes(msg, cloudevents) {
            size if size > *limit => Err(over_limit(msg, size, *limit, "")),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The record's size on the wire before compression (see `topics::record_size`).
fn record_bytes(msg: &Message, cloudevents: bool) -> usize {
    let headers = msg
        .headers(&cloudevents::KAFKA, cloudevents)
        .map(|(k, v)| (k.len(), v.len()))
        .chain([("content-type".len(), CONTENT_TYPE.len())]);
    topics::record_size(
        msg.body.len(),
        msg.key.as_ref().map_or(0, |k| k.len()),
        headers,
    )
}

/// The permanent failure of a record of `size` bytes over its topic's `limit`, after `cause`
/// (the broker's words, when it refused it).
fn over_limit(msg: &Message, size: usize, limit: usize, cause: &str) -> SinkError {
    SinkError::Permanent(
        Permanence::TooLarge,
        format!(
            "{cause}record of {size} bytes over topic {:?}'s max.message.bytes ({limit})",
            msg.destination
        ),
    )
}

/// A broker's `MESSAGE_TOO_LARGE`, which it gives every message of the record batch it refused:
/// permanent only when this message's own record exceeds the topic's `max.message.bytes`; the
/// others travelled with it and are retried.
fn too_large(msg: &Message, limit: Option<usize>, cloudevents: bool, e: KafkaError) -> SinkError {
    let size = record_bytes(msg, cloudevents);
    match limit {
        Some(limit) if size > limit => over_limit(msg, size, limit, &format!("{e}: ")),
        Some(limit) => SinkError::Refused(format!(
            "{e}: the broker refused the record batch this event travelled in; the event itself fits ({size} of {limit} bytes)"
        )),
        None => SinkError::Refused(format!(
            "{e}: the topic's max.message.bytes is unknown, so the event is not taken as too large by itself"
        )),
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn messaging(&self) -> crate::Messaging {
        crate::Messaging {
            system: "kafka",
            exchange: None,
        }
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    async fn publish(&self, msg: &Message) -> Result<(), SinkError> {
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let mut results = self.publish_many(&[msg], far).await;
        results
            .pop()
            .unwrap_or_else(|| Err(crate::deadline_passed()))
    }

    /// Asks the topic cache about each topic of the batch, hands every admissible message to
    /// the producer in one go (one look at the instance in use, in order, so same-key messages
    /// keep theirs), then awaits the delivery reports in turn against one timer.
    async fn publish_many(
        &self,
        msgs: &[&Message],
        deadline: tokio::time::Instant,
    ) -> Vec<Result<(), SinkError>> {
        let s = &self.shared;
        // An unreachable cluster fails fast, before any topic is asked about.
        let known = match s.usable() {
            Ok(_) => s.known_topics(msgs, deadline).await,
            Err(why) => {
                return msgs
                    .iter()
                    .map(|_| Err(SinkError::Unavailable(why.clone())))
                    .collect();
            }
        };
        // Reachability was judged above; a probe that failed while the topics were asked about
        // (a slow cluster) does not refuse a batch already admitted. A rebuild does.
        let pending = match s.rebuilding().map_or_else(|| Ok(s.current()), Err) {
            // The instance is dropped before the wait (a replaced one is destroyed by the
            // supervisor).
            Ok(current) => s.enqueue_all(&current, msgs, &known),
            Err(why) => {
                return msgs
                    .iter()
                    .map(|_| Err(SinkError::Unavailable(why.clone())))
                    .collect();
            }
        };
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        let mut out = Vec::with_capacity(pending.len());
        for (p, m) in pending.into_iter().zip(msgs) {
            let limit = match known.get(m.destination.as_str()) {
                Some(Known::Exists { max_bytes }) => *max_bytes,
                _ => None,
            };
            out.push(match p {
                Err(e) => Err(e),
                Ok((generation, delivery)) => tokio::select! {
                    biased;
                    r = delivery => s.settle(generation, m, limit, r),
                    () = &mut timer => Err(crate::deadline_passed()),
                },
            });
        }
        out
    }

    fn readiness(&self) -> Readiness {
        if let Some(why) = self.shared.rebuilding() {
            Readiness::not_ready(why)
        } else if let Some((code, why)) = self.shared.current().producer.client().fatal_error() {
            Readiness::not_ready(format!("producer failed fatally ({code:?}: {why})"))
        } else if self.shared.reachable.load(Ordering::Relaxed) {
            Readiness::ready("cluster reachable")
        } else {
            Readiness::not_ready(
                self.shared
                    .unreachable("no Kafka broker answered the last metadata probe"),
            )
        }
    }

    async fn close(&self, deadline: Duration) {
        let supervisor = self.stop_supervisor();
        let shared = self.shared.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            // Joined, so no rebuild races with the flush.
            if let Some(thread) = supervisor {
                let _ = thread.join();
            }
            shared.current().producer.flush(deadline)
        })
        .await;
        let name = &self.shared.name;
        match flushed {
            Ok(Ok(())) => tracing::info!(sink = %name, "Kafka producer flushed"),
            Ok(Err(e)) => tracing::warn!(sink = %name, error = %e, "Kafka flush incomplete"),
            Err(e) => tracing::warn!(sink = %name, error = %e, "Kafka flush task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(librdkafka: &[(&str, &str)]) -> ClientConfig {
        let cfg = KafkaConfig {
            bootstrap_servers: "127.0.0.1:1".into(),
            librdkafka: librdkafka
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cloudevents: true,
            create_topics: None,
        };
        client_config(&cfg, Duration::from_millis(1500)).expect("valid")
    }

    #[test]
    fn cloudevents_headers_follow_the_sink_setting() {
        use rdkafka::message::Headers;
        let msg = Message::sample();
        let names = |h: &OwnedHeaders| h.iter().map(|h| h.key.to_owned()).collect::<Vec<_>>();
        let on = names(&headers(&msg, true));
        assert_eq!(on.len(), 11, "{on:?}");
        assert!(on.contains(&"ce_subject".to_owned()) && on.contains(&"content-type".to_owned()));
        let off = names(&headers(&msg, false));
        assert_eq!(
            off,
            [
                "c360-event-id",
                "c360-event-class",
                "c360-payload-class",
                "c360-webhook",
                "content-type"
            ]
        );
    }

    #[test]
    fn the_stall_rule_uses_the_message_timeout_librdkafka_applies() {
        assert_eq!(
            configured_timeout(&config(&[])),
            Some(Duration::from_millis(1500))
        );
        let overridden = config(&[("message.timeout.ms", "4000")]);
        assert_eq!(
            configured_timeout(&overridden),
            Some(Duration::from_secs(4))
        );
        // Messages that never time out never stall the producer by this rule.
        assert_eq!(
            configured_timeout(&config(&[("message.timeout.ms", "0")])),
            None
        );
    }

    #[test]
    fn only_failures_of_the_message_itself_are_permanent() {
        use RDKafkaErrorCode as C;
        let class = |c| classify(KafkaError::MessageProduction(c));
        for (code, why) in [
            (C::MessageSizeTooLarge, Permanence::TooLarge),
            (C::InvalidRecord, Permanence::InvalidRecord),
            (C::InvalidTopic, Permanence::IllegalDestination),
        ] {
            assert!(
                matches!(class(code), SinkError::Permanent(p, _) if p == why),
                "{code:?}"
            );
        }
        for code in [
            C::MessageTimedOut,
            C::AllBrokersDown,
            C::BrokerTransportFailure,
            C::RequestTimedOut,
            C::QueueFull,
            C::LeaderNotAvailable,
            C::NotLeaderForPartition,
            C::NotEnoughReplicas,
            C::NotEnoughReplicasAfterAppend,
            C::KafkaStorageError,
            C::UnknownTopicOrPartition,
            C::UnknownTopic,
            C::UnknownPartition,
            C::TopicAuthorizationFailed,
            C::ClusterAuthorizationFailed,
            C::InvalidDifferentRecord,
            C::InvalidMessage,
            C::InvalidMessageSize,
            C::MessageBatchTooLarge,
            C::InvalidTimestamp,
            C::PolicyViolation,
            C::UnsupportedCompressionType,
        ] {
            assert!(
                !matches!(class(code), SinkError::Permanent(..)),
                "{code:?} must stay transient"
            );
        }
    }

    #[test]
    fn only_lost_idempotence_state_replaces_the_producer() {
        use RDKafkaErrorCode as C;
        for code in [
            C::Fatal,
            C::OutOfOrderSequenceNumber,
            C::UnknownProducerId,
            C::InvalidProducerEpoch,
            C::ProducerFenced,
        ] {
            assert!(generation::is_state_loss(code), "{code:?}");
        }
        for code in [
            C::MessageTimedOut,
            C::NotEnoughReplicas,
            C::MessageSizeTooLarge,
            C::AllBrokersDown,
        ] {
            assert!(!generation::is_state_loss(code), "{code:?}");
        }
    }
}
