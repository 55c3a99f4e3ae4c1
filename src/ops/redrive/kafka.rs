//! Reading a Kafka dead-letter topic for redrive: every partition from the group's committed
//! offset to its end, and at the end one commit per partition that never passes a letter
//! still waiting (truncated, still failing or left).

use super::letter::Letter;
use c360_sinks::kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Where a letter sits in the topic.
#[derive(Debug, Clone, Copy)]
pub struct Position {
    partition: i32,
    offset: i64,
}

/// The dead-letter topic, read by consumer group `group`.
pub struct KafkaSource {
    consumer: BaseConsumer,
    topic: String,
    /// Partitions not yet read to their end.
    open: BTreeSet<i32>,
    /// Per partition: the first offset still waiting, and the next offset after the last read.
    marks: BTreeMap<i32, (Option<i64>, i64)>,
}

impl KafkaSource {
    /// Assigns every partition of `topic` at the group's committed offset (the beginning when
    /// the group has none).
    pub fn open(cfg: &KafkaConfig, topic: &str, group: &str) -> Result<Self, KafkaError> {
        let consumer: BaseConsumer = consumer_config(cfg, group).create()?;
        let md = consumer.fetch_metadata(Some(topic), ANSWER_WITHIN)?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(topic, *p, Offset::Stored)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            open: partitions.into_iter().collect(),
            marks: BTreeMap::new(),
        })
    }

    /// The next letter, or `None` once every partition was read to its end.
    pub fn next_letter(&mut self) -> Result<Option<(Letter, Position)>, KafkaError> {
        while !self.open.is_empty() {
            let Some(polled) = self.consumer.poll(ANSWER_WITHIN) else {
                continue;
            };
            match polled {
                Ok(m) => {
                    let pos = Position {
                        partition: m.partition(),
                        offset: m.offset(),
                    };
                    self.marks.entry(pos.partition).or_insert((None, 0)).1 = pos.offset + 1;
                    return Ok(Some((letter(&m), pos)));
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    self.open.remove(&p);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Marks the letter at `pos` as still waiting: the commit stops before it.
    pub fn keep(&mut self, pos: Position) {
        let mark = self.marks.entry(pos.partition).or_insert((None, 0));
        mark.0 = Some(mark.0.map_or(pos.offset, |o| o.min(pos.offset)));
    }

    /// Commits, per partition read, the first offset still waiting, else the end of what was
    /// read.
    pub fn commit(&self) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (p, (waiting, next)) in &self.marks {
            let at = waiting.unwrap_or(*next);
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(at))?;
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer.commit(&tpl, CommitMode::Sync)
    }
}

/// A consumer on the sink's cluster with the sink's connection settings (TLS, SASL), reading
/// from the beginning when the group has committed nothing, committing only by hand.
fn consumer_config(cfg: &KafkaConfig, group: &str) -> ClientConfig {
    let mut cc = ClientConfig::new();
    let connection = [
        "security.",
        "sasl.",
        "ssl.",
        "client.",
        "broker.",
        "socket.",
        "reconnect.",
    ];
    for (key, value) in &cfg.librdkafka {
        if connection.iter().any(|p| key.starts_with(p)) {
            cc.set(key, value);
        }
    }
    cc.set("bootstrap.servers", &cfg.bootstrap_servers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true");
    cc
}

fn letter(m: &rdkafka::message::BorrowedMessage<'_>) -> Letter {
    let mut headers = BTreeMap::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
            headers.insert(h.key.to_owned(), value.into_owned());
        }
    }
    let time = m
        .timestamp()
        .to_millis()
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    Letter {
        body: bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        headers,
        time: time
            .filter(|t| *t > UNIX_EPOCH && *t <= SystemTime::now() + Duration::from_secs(3600)),
    }
}
