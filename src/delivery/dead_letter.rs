//! Dead letters (SPEC §10): which sink failures are permanent, and the message that takes an
//! event no broker will ever accept to the `[dead_letter]` destination instead.
//!
//! Only a failure of the message itself is permanent (an illegal destination, too large, a
//! record the broker rejects as invalid); the sinks say which in `SinkError::Permanent`.
//! Everything that can heal (a broker down, a timeout, an unbound routing key) stays transient:
//! the batch gets 503 and catalog360 resends it, and nothing of it goes to the dead letter.

use crate::config::{Config, ConfigError, DeadLetterConfig, SinkConfig, invalid};
use crate::delivery::routing::Template;
use crate::telemetry::metrics as m;
use bytes::Bytes;
use c360_sinks::{DeadLetterHeaders, EventMeta, Message, Permanence, Sink, SinkError};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether a failed publish can succeed later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A retry may help: answer 503, never dead-letter.
    Transient,
    /// No retry can help: dead-letter it when `[dead_letter]` is configured.
    Permanent(Permanence),
}

/// The class of a sink failure.
pub fn classify(e: &SinkError) -> Class {
    match e {
        SinkError::Permanent(p, _) => Class::Permanent(*p),
        SinkError::Unavailable(_)
        | SinkError::Overloaded(_)
        | SinkError::Refused(_)
        | SinkError::Unroutable(_)
        | SinkError::UnknownTopic(_)
        | SinkError::TopicAuthorization(_)
        | SinkError::Timeout(_) => Class::Transient,
    }
}

/// The compiled `[dead_letter]` table.
#[derive(Debug)]
pub struct DeadLetter {
    /// Index of the dead-letter sink in the sorted `[sinks]` table.
    pub sink: usize,
    pub sink_name: String,
    pub topic: Template,
    pub max_bytes: usize,
}

/// Longest message key a dead letter keeps (a longer one, say the id that made an event too
/// large, is left out: the letter must fit where the event did not).
const MAX_KEY_BYTES: usize = 256;
/// Longest `c360-dead-letter-reason` and `c360-original-destination` (an illegal destination
/// may be as long as the event class it came from); longer ones are cut.
const MAX_HEADER_BYTES: usize = 512;
/// What a dead-letter sink's own message limit must leave above `max_bytes` for the key, the
/// headers and the record's framing.
const HEADROOM: usize = 1024;

impl DeadLetter {
    /// Compiles `[dead_letter]` (none when absent); errors name `dead_letter.KEY`.
    pub fn compile(config: &Config, file: Option<&Path>) -> Result<Option<Self>, ConfigError> {
        let Some(dl) = &config.dead_letter else {
            return Ok(None);
        };
        Self::from_config(config, dl)
            .map(Some)
            .map_err(|(key, m)| invalid(file, format!("dead_letter.{key}"), m))
    }

    fn from_config(config: &Config, dl: &DeadLetterConfig) -> Result<Self, (&'static str, String)> {
        let sink = config.sinks.keys().position(|n| *n == dl.sink);
        let (Some(sink), Some(sink_cfg)) = (sink, config.sinks.get(&dl.sink)) else {
            let names: Vec<&String> = config.sinks.keys().collect();
            let m = format!("unknown sink {:?} (known: {names:?})", dl.sink);
            return Err(("sink", m));
        };
        let rules = sink_cfg.kind().destinations();
        let topic = Template::parse(&dl.topic, rules).map_err(|m| ("topic", m))?;
        if !dl.topic.contains('{') {
            topic.legal(dl.topic.clone()).map_err(|m| ("topic", m))?;
        }
        check_max_bytes(dl, sink_cfg).map_err(|m| ("max_bytes", m))?;
        Ok(Self {
            sink,
            sink_name: dl.sink.clone(),
            topic,
            max_bytes: dl.max_bytes,
        })
    }

    /// The dead-letter message for `msg`, which sink `original_sink` can never take for
    /// `reason` (`detail`: the broker's or the bridge's words). Fails when the dead-letter
    /// template gives this event an illegal destination too.
    pub fn message(
        &self,
        msg: &Message,
        original_sink: &str,
        reason: Permanence,
        detail: &str,
    ) -> Result<Message, String> {
        let meta = &msg.meta;
        let rendered = self.topic.render_parts(
            &meta.event_class,
            meta.payload_class.as_deref(),
            &meta.webhook,
        );
        let destination = self.topic.legal(rendered)?;
        let (body, original_bytes) = cut(&msg.body, self.max_bytes);
        let headers = DeadLetterHeaders {
            code: reason,
            reason: cut_text(&format!("{}: {detail}", reason.code())),
            original_sink: original_sink.to_owned(),
            original_destination: cut_text(&msg.destination),
            original_bytes,
        };
        Ok(Message {
            destination,
            key: msg.key.clone().filter(|k| k.len() <= MAX_KEY_BYTES),
            body,
            meta: Arc::new(EventMeta {
                dead_letter: Some(Box::new(headers)),
                ..EventMeta::clone(meta)
            }),
            trace: None,
        })
    }
}

/// A dead-letter message must fit under the dead-letter sink's own limit, or every dead letter
/// would fail (and its batch get 503) for ever.
fn check_max_bytes(dl: &DeadLetterConfig, sink: &SinkConfig) -> Result<(), String> {
    if dl.max_bytes == 0 {
        return Err("must be at least 1".into());
    }
    let Some((limit, key)) = sink.kind().max_message_bytes() else {
        return Ok(());
    };
    if dl.max_bytes + HEADROOM > limit {
        return Err(format!(
            "{} does not fit under sinks.{}.{key} ({limit}) with {HEADROOM} bytes for key and headers: use at most {}",
            dl.max_bytes,
            dl.sink,
            limit.saturating_sub(HEADROOM)
        ));
    }
    Ok(())
}

/// `body` cut to at most `max` bytes, at a UTF-8 character boundary so the cut text stays
/// readable, and its original length when it was cut.
fn cut(body: &Bytes, max: usize) -> (Bytes, Option<String>) {
    if body.len() <= max {
        return (body.clone(), None);
    }
    (
        body.slice(..boundary(body, max)),
        Some(body.len().to_string()),
    )
}

/// `text` cut to `MAX_HEADER_BYTES` at a character boundary.
fn cut_text(text: &str) -> String {
    if text.len() <= MAX_HEADER_BYTES {
        return text.to_owned();
    }
    let end = boundary(text.as_bytes(), MAX_HEADER_BYTES);
    text.get(..end).unwrap_or_default().to_owned()
}

/// The largest UTF-8 character boundary of `bytes` at or below `max` (< its length).
fn boundary(bytes: &[u8], max: usize) -> usize {
    let mut end = max;
    while end > 0 && bytes[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    end
}

/// How long the start-up look at a Kafka dead-letter topic waits for the cluster.
const STARTUP_LOOK: Duration = Duration::from_secs(30);

/// At start-up, in a thread of its own (the cluster may not be up yet): warns when the fixed
/// Kafka dead-letter `topic` does not exist on `sink`, since every dead letter would then fail
/// (503) until it is created. It never stops the bridge: a topic may be created later.
pub fn look_at_kafka_topic(sink: Arc<c360_sinks::kafka::KafkaSink>, topic: String) {
    let spawned = std::thread::Builder::new()
        .name("c360-dead-letter-look".into())
        .spawn(move || {
            let name = sink.name().to_owned();
            let known = ready_within(&*sink, STARTUP_LOOK)
                .then(|| sink.knows_topic(&topic, Duration::from_secs(5)))
                .flatten();
            match known {
                Some(true) => tracing::info!(sink = %name, topic = %topic, "dead-letter topic exists"),
                Some(false) => tracing::warn!(
                    sink = %name, topic = %topic,
                    "dead-letter topic does not exist: dead letters fail (their batches get 503) until it is created"
                ),
                None => tracing::warn!(sink = %name, topic = %topic, "could not look at the dead-letter topic: no Kafka broker answered"),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not look at the dead-letter topic");
    }
}

/// Whether `sink` says it is ready within `within` (its own probe keeps that up to date).
fn ready_within(sink: &dyn Sink, within: Duration) -> bool {
    let until = std::time::Instant::now() + within;
    while !sink.readiness().ready {
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// How long a dead letter waits for its sink to be ready again before it fails.
const REBUILD_WAIT: Duration = Duration::from_secs(2);

/// Publishes dead letters to `sink`. If the sink is unavailable, the publish waits up to
/// `REBUILD_WAIT` for it and tries once more. RabbitMQ closes the channel when a message is
/// too large, and the sink then rebuilds its link. Without the retry, a dead letter sent to
/// the same sink would fail every time its event is resent.
pub async fn publish(
    sink: &dyn Sink,
    msgs: &[&Message],
    deadline: tokio::time::Instant,
) -> Vec<Result<(), SinkError>> {
    let mut results = sink.publish_many(msgs, deadline).await;
    let again: Vec<usize> = (0..results.len())
        .filter(|&i| matches!(results[i], Err(SinkError::Unavailable(_))))
        .collect();
    if again.is_empty() {
        return results;
    }
    let until = Instant::now() + REBUILD_WAIT;
    while !sink.readiness().ready && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let retry: Vec<&Message> = again.iter().map(|&i| msgs[i]).collect();
    for (i, r) in again
        .into_iter()
        .zip(sink.publish_many(&retry, deadline).await)
    {
        results[i] = r;
    }
    results
}

/// Logs (WARN) and counts an event its dead-letter destination confirmed (nothing for any
/// other message).
pub fn confirmed(msg: &Message) {
    let Some(dl) = msg.meta.dead_letter.as_deref() else {
        return;
    };
    tracing::warn!(
        event_id = %msg.meta.id,
        event_class = %msg.meta.event_class,
        reason = %dl.reason,
        original_sink = %dl.original_sink,
        original_destination = %dl.original_destination,
        dead_letter = %msg.destination,
        truncated = dl.original_bytes.is_some(),
        "event dead-lettered: no broker will ever take it"
    );
    m::dead_lettered(dl.code.code());
}

/// Logs a dead-letter publish that failed: its batch gets 503 and will be resent.
pub fn failed(msg: &Message, e: &SinkError) {
    tracing::warn!(
        event_id = %msg.meta.id,
        event_class = %msg.meta.event_class,
        dead_letter = %msg.destination,
        error = %e,
        "dead-letter publish failed; the batch is answered 503"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_permanent_sink_errors_go_to_the_dead_letter() {
        let transient = [
            SinkError::Unavailable("broker down".into()),
            SinkError::Overloaded("queue full".into()),
            SinkError::Refused("nack".into()),
            SinkError::Unroutable("no queue".into()),
            SinkError::Timeout("no confirm".into()),
        ];
        for e in &transient {
            assert_eq!(classify(e), Class::Transient, "{e}");
        }
        for p in [
            Permanence::IllegalDestination,
            Permanence::TooLarge,
            Permanence::InvalidRecord,
        ] {
            let e = SinkError::Permanent(p, "x".into());
            assert_eq!(classify(&e), Class::Permanent(p));
        }
    }

    #[tokio::test]
    async fn a_dead_letter_waits_for_its_sink_to_come_back_briefly() {
        let sink = Arc::new(c360_sinks::memory::MemorySink::new("m"));
        sink.fail(true);
        let msg = Message {
            destination: "d".into(),
            key: None,
            body: Bytes::from_static(b"{}"),
            meta: Arc::new(EventMeta {
                id: "i".into(),
                event_class: "c".into(),
                payload_class: None,
                webhook: "w".into(),
                cloudevent: None,
                dead_letter: None,
            }),
            trace: None,
        };
        let (s, m) = (sink.clone(), msg.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let publishing = tokio::spawn(async move { publish(&*s, &[&m], deadline).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        sink.fail(false); // the link is rebuilt
        let results = publishing.await.unwrap();
        assert!(matches!(results[..], [Ok(())]), "{results:?}");
        assert_eq!(sink.published().len(), 1);
    }

    #[test]
    fn cuts_at_a_character_boundary_and_says_so() {
        let body = Bytes::from("abcé€x".as_bytes().to_vec()); // é: 2 bytes, €: 3 bytes
        assert_eq!(cut(&body, 100), (body.clone(), None));
        let (c, n) = cut(&body, 5);
        assert_eq!((&c[..], n.as_deref()), ("abcé".as_bytes(), Some("9")));
        let (c, _) = cut(&body, 6);
        assert_eq!(&c[..], "abcé".as_bytes(), "never half a €");
        let long = "é".repeat(400);
        assert_eq!(cut_text(&long), "é".repeat(256));
        assert_eq!(cut_text("short"), "short");
    }

    fn config(extra: &str) -> Result<Option<DeadLetter>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let text = format!(
            "[[webhooks]]\nname = \"w\"\npath = \"/h\"\nkeys = [\"k\"]\n[sinks.k]\ntype = \"kafka\"\nbootstrap_servers = \"127.0.0.1:9092\"\n[sinks.k.librdkafka]\n\"message.max.bytes\" = \"5000\"\n[sinks.r]\ntype = \"rabbitmq\"\nurl = \"amqp://127.0.0.1:5672/%2f\"\n[[routes]]\nmatch = \"*\"\nsinks = [\"k\"]\n{extra}"
        );
        std::fs::write(&path, text).unwrap();
        let config = crate::config::load(Some(&path)).map_err(|e| e.to_string())?;
        DeadLetter::compile(&config, Some(&path)).map_err(|e| e.to_string())
    }

    #[test]
    fn the_dead_letter_table_is_checked_at_start_up() {
        assert!(config("").unwrap().is_none());
        let dl = config("[dead_letter]\nsink = \"k\"\nmax_bytes = 3000\n").unwrap();
        let dl = dl.expect("configured");
        assert_eq!(
            (dl.sink_name.as_str(), dl.topic.text.as_str()),
            ("k", "catalog360.dead-letter")
        );
        let cases = [
            ("sink = \"nope\"", "dead_letter.sink: unknown sink \"nope\""),
            (
                "sink = \"k\"\ntopic = \"dead letters\"",
                "dead_letter.topic",
            ),
            ("sink = \"k\"\ntopic = \"dl.{nope}\"", "dead_letter.topic"),
            (
                "sink = \"k\"\nmax_bytes = 0",
                "dead_letter.max_bytes: must be at least 1",
            ),
            (
                "sink = \"k\"\nmax_bytes = 4500",
                "dead_letter.max_bytes: 4500 does not fit",
            ),
            ("sink = \"r\"\ntopic = \"x\"\nextra = 1", "extra"),
        ];
        for (table, want) in cases {
            let err = config(&format!("[dead_letter]\n{table}\n")).unwrap_err();
            assert!(err.contains(want), "{table}: {err}");
        }
        let long = "x".repeat(256);
        let err = config(&format!(
            "[dead_letter]\nsink = \"r\"\ntopic = \"{long}\"\n"
        ))
        .unwrap_err();
        assert!(
            err.contains("dead_letter.topic") && err.contains("255"),
            "{err}"
        );
        // RabbitMQ has no byte limit of its own to check against.
        let dl = config("[dead_letter]\nsink = \"r\"\ntopic = \"dead.{event_class}\"\n").unwrap();
        assert!(dl.is_some());
    }

    #[test]
    fn a_dead_letter_carries_the_event_and_says_where_it_was_going() {
        let dl = config("[dead_letter]\nsink = \"k\"\ntopic = \"dl.{webhook}\"\nmax_bytes = 8\n")
            .unwrap()
            .unwrap();
        let msg = Message {
            destination: "catalog360.bad/topic".into(),
            key: Some(Bytes::from_static(b"id-1")),
            body: Bytes::from_static(b"{\"event_class\":\"bad/topic\"}"),
            meta: Arc::new(EventMeta {
                id: "abc".into(),
                event_class: "bad/topic".into(),
                payload_class: None,
                webhook: "w".into(),
                cloudevent: None,
                dead_letter: None,
            }),
            trace: None,
        };
        let d = dl
            .message(
                &msg,
                "kafka",
                Permanence::IllegalDestination,
                "no such topic",
            )
            .unwrap();
        assert_eq!(d.destination, "dl.w");
        assert_eq!(&d.body[..], b"{\"event_");
        assert_eq!(d.key, msg.key);
        let headers: Vec<(&str, &str)> = d.meta.headers().collect();
        assert_eq!(
            headers,
            [
                ("c360-event-id", "abc"),
                ("c360-event-class", "bad/topic"),
                ("c360-webhook", "w"),
                (
                    "c360-dead-letter-reason",
                    "illegal_destination: no such topic"
                ),
                ("c360-original-sink", "kafka"),
                ("c360-original-destination", "catalog360.bad/topic"),
                ("c360-truncated", "true"),
                ("c360-original-bytes", "27"),
            ]
        );
        // A template that gives this event an illegal destination too: no dead letter.
        let per_class =
            config("[dead_letter]\nsink = \"k\"\ntopic = \"dl.{event_class}\"\nmax_bytes = 8\n")
                .unwrap()
                .unwrap();
        assert!(
            per_class
                .message(&msg, "kafka", Permanence::IllegalDestination, "x")
                .is_err()
        );
    }
}
