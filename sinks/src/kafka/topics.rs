//! What the Kafka sink knows of each topic it publishes to: whether the cluster has it (creating
//! it when `create_topics` is set) and its `max.message.bytes`. Asked once per topic and cached,
//! so a missing topic fails its own events fast and never reaches the producer.

use crate::{Permanence, SinkError};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `[sinks.NAME.create_topics]`: create a topic a route names when the cluster lacks it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateTopics {
    pub partitions: i32,
    /// -1: the broker's default.
    #[serde(default = "broker_default")]
    pub replication_factor: i32,
    /// Topic configuration, e.g. `"retention.ms" = "604800000"`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn broker_default() -> i32 {
    -1
}

impl CreateTopics {
    /// What can be checked without a cluster.
    pub fn validate(&self) -> Result<(), String> {
        if self.partitions < 1 {
            return Err(format!(
                "partitions must be at least 1, not {}",
                self.partitions
            ));
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            return Err(format!(
                "replication_factor must be -1 (the broker's default) or at least 1, not {}",
                self.replication_factor
            ));
        }
        Ok(())
    }
}

/// How long an answer other than "it exists" (missing, refused, no answer) is believed before
/// the cluster is asked again.
const MISSING_FOR: Duration = Duration::from_secs(1);
/// How long one metadata or admin request may take; past it the topic counts as unknown and
/// its messages go to the producer as usual.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a DescribeConfigs may hold a topic's first batch (a cluster that does not answer it,
/// such as librdkafka's mock cluster, leaves the topic's limit unknown).
const DESCRIBE_TIMEOUT: Duration = Duration::from_millis(300);
/// The producer's settings an admin client must not take (it would become an idempotent
/// producer of its own, with a producer id the broker could fence).
const PRODUCER_ONLY: [&str; 5] = [
    "enable.idempotence",
    "acks",
    "linger.ms",
    "message.timeout.ms",
    "compression.type",
];
/// A missing topic is logged at most once per this period.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// What the cluster said of one topic.
#[derive(Debug, Clone)]
pub(super) enum Known {
    /// It exists; `max_bytes` is its `max.message.bytes` when the cluster told.
    Exists { max_bytes: Option<usize> },
    /// It does not exist, or this client may not write it: its events fail with this.
    Refused { why: Refusal },
    /// The cluster did not answer in time: publish and let the producer decide.
    Unknown,
}

#[derive(Debug, Clone)]
pub(super) enum Refusal {
    Missing,
    NotAuthorized,
    Illegal(String),
    CreationRefused(String),
}

impl Refusal {
    pub(super) fn error(&self, topic: &str) -> SinkError {
        match self {
            Refusal::Missing => SinkError::UnknownTopic(topic.to_owned()),
            Refusal::NotAuthorized => SinkError::TopicAuthorization(topic.to_owned()),
            Refusal::Illegal(why) => SinkError::Permanent(
                Permanence::IllegalDestination,
                format!("topic {topic:?}: {why}"),
            ),
            Refusal::CreationRefused(why) => {
                SinkError::Refused(format!("creating topic {topic:?} failed: {why}"))
            }
        }
    }
}

/// One topic's cached answer, behind a lock that concurrent batches wait on together.
#[derive(Default)]
struct Slot {
    known: Option<Known>,
    /// When the cluster was last asked.
    asked: Option<Instant>,
    logged: Option<Instant>,
}

/// The per-sink topic cache and its admin client.
pub(super) struct Topics {
    sink: String,
    admin: Arc<AdminClient<DefaultClientContext>>,
    create: Option<CreateTopics>,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl Topics {
    pub(super) fn new(
        sink: &str,
        config: &ClientConfig,
        create: Option<CreateTopics>,
    ) -> rdkafka::error::KafkaResult<Self> {
        let mut admin = config.clone();
        for key in PRODUCER_ONLY {
            admin.remove(key);
        }
        Ok(Self {
            sink: sink.to_owned(),
            admin: Arc::new(admin.create()?),
            create,
            slots: Mutex::new(HashMap::new()),
        })
    }

    fn slot(&self, topic: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = match self.slots.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(slot) = slots.get(topic) {
            return slot.clone();
        }
        slots.entry(topic.to_owned()).or_default().clone()
    }

    /// What is known of `topic`, asking the cluster (and creating it when configured) the
    /// first time and after a refusal grows old. Concurrent callers wait for one answer.
    pub(super) async fn check(&self, topic: &str) -> Known {
        let slot = self.slot(topic);
        let mut slot = slot.lock().await;
        let fresh = match &slot.known {
            Some(Known::Exists { .. }) => true,
            Some(_) => slot.asked.is_some_and(|at| at.elapsed() < MISSING_FOR),
            None => false,
        };
        if !fresh {
            let known = self.ask(topic).await;
            self.log(topic, &known, &mut slot);
            slot.known = Some(known);
            slot.asked = Some(Instant::now());
        }
        slot.known.clone().unwrap_or(Known::Unknown)
    }

    /// Forgets what is known of `topic` (a delivery report said it is gone).
    pub(super) fn forget(&self, topic: &str) {
        if let Ok(mut slot) = self.slot(topic).try_lock() {
            slot.known = None;
        }
    }

    async fn ask(&self, topic: &str) -> Known {
        match self.metadata(topic).await {
            Some(Ok(())) => Known::Exists {
                max_bytes: self.max_bytes(topic).await,
            },
            Some(Err(Refusal::Missing)) if self.create.is_some() => self.create(topic).await,
            Some(Err(why)) => Known::Refused { why },
            None => Known::Unknown,
        }
    }

    /// The cluster's metadata for `topic`: `None` when no broker answered in time.
    async fn metadata(&self, topic: &str) -> Option<Result<(), Refusal>> {
        let admin = self.admin.clone();
        let name = topic.to_owned();
        let md = tokio::task::spawn_blocking(move || {
            admin.inner().fetch_metadata(Some(&name), ASK_TIMEOUT)
        })
        .await
        .ok()?
        .ok()?;
        let t = md.topics().iter().find(|t| t.name() == topic)?;
        use RDKafkaErrorCode as C;
        match t.error().map(RDKafkaErrorCode::from) {
            None if !t.partitions().is_empty() => Some(Ok(())),
            Some(C::UnknownTopicOrPartition | C::UnknownTopic) => Some(Err(Refusal::Missing)),
            Some(C::TopicAuthorizationFailed) => Some(Err(Refusal::NotAuthorized)),
            Some(C::InvalidTopic) => {
                Some(Err(Refusal::Illegal("the broker calls it invalid".into())))
            }
            _ => None, // no leader yet, being created, …: let the producer wait for it
        }
    }

    /// The topic's `max.message.bytes`, when the cluster answers DescribeConfigs.
    async fn max_bytes(&self, topic: &str) -> Option<usize> {
        let opts = AdminOptions::new().request_timeout(Some(DESCRIBE_TIMEOUT));
        let resources = [ResourceSpecifier::Topic(topic)];
        let describe = self.admin.describe_configs(&resources, &opts);
        let described = tokio::time::timeout(DESCRIBE_TIMEOUT, describe)
            .await
            .ok()?
            .ok()?;
        let resource = described.into_iter().next()?.ok()?;
        let entry = resource.get("max.message.bytes")?;
        entry.value.as_deref()?.parse().ok()
    }

    /// Creates `topic` as `create_topics` says; another bridge creating it first is fine.
    async fn create(&self, topic: &str) -> Known {
        let Some(spec) = &self.create else {
            return Known::Unknown;
        };
        let mut new = NewTopic::new(
            topic,
            spec.partitions,
            TopicReplication::Fixed(spec.replication_factor),
        );
        for (k, v) in &spec.config {
            new = new.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(ASK_TIMEOUT));
        let refused = |why: String| Known::Refused {
            why: Refusal::CreationRefused(why),
        };
        match self.admin.create_topics(&[new], &opts).await {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) => {
                    tracing::info!(sink = %self.sink, topic, partitions = spec.partitions, "created Kafka topic");
                    metrics::counter!("c360_topics_created_total", "sink" => self.sink.clone())
                        .increment(1);
                    self.settled(topic).await
                }
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => self.settled(topic).await,
                Some(Err((_, code))) => refused(code.to_string()),
                None => refused("the cluster gave no result".into()),
            },
            Err(e) => refused(e.to_string()),
        }
    }

    /// After a creation: the topic as the metadata shows it once it has propagated.
    async fn settled(&self, topic: &str) -> Known {
        let until = Instant::now() + ASK_TIMEOUT;
        while Instant::now() < until {
            if let Some(Ok(())) = self.metadata(topic).await {
                return Known::Exists {
                    max_bytes: self.max_bytes(topic).await,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Known::Unknown
    }

    /// Logs a refusal once per topic per minute.
    fn log(&self, topic: &str, known: &Known, slot: &mut Slot) {
        let Known::Refused { why, .. } = known else {
            return;
        };
        if slot.logged.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return;
        }
        slot.logged = Some(Instant::now());
        let error = why.error(topic);
        tracing::warn!(sink = %self.sink, topic, "events for this topic fail: {error}");
    }
}

/// The size librdkafka gives the record on the wire before compression: body, key, headers and
/// the record batch's framing (61 bytes of batch header, up to 21 of record header, and up to 10
/// per header).
pub(super) fn record_size(
    body: usize,
    key: usize,
    headers: impl IntoIterator<Item = (usize, usize)>,
) -> usize {
    61 + 21 + body + key + headers.into_iter().map(|(k, v)| k + v + 10).sum::<usize>()
}
