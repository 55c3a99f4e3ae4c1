//! `Message`: one event on its way to one broker destination, body bytes untouched.

use crate::Permanence;
use crate::cloudevents::{CloudEvent, Names};
use bytes::Bytes;
use std::sync::Arc;

/// What consumers learn about an event from the message headers (SPEC §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// `c360-event-id`: stable across retries of the same batch.
    pub id: String,
    /// `c360-event-class`.
    pub event_class: String,
    /// `c360-payload-class`, absent when the event had none.
    pub payload_class: Option<String>,
    /// `c360-webhook`: the name of the webhook that received the event.
    pub webhook: Arc<str>,
    /// The CloudEvents attributes (SPEC §8); `None` leaves the `ce` headers out.
    pub cloudevent: Option<CloudEvent>,
    /// Set only on a message to the dead-letter destination (SPEC §10): its extra headers.
    pub dead_letter: Option<Box<DeadLetterHeaders>>,
}

/// What a dead-letter message says about the publish it replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterHeaders {
    /// Why the event can never be published where it was meant to go.
    pub code: Permanence,
    /// `c360-dead-letter-reason`: `code` and the broker's or the bridge's text.
    pub reason: String,
    /// `c360-original-sink`: the sink the event was meant for.
    pub original_sink: String,
    /// `c360-original-destination`: the topic / routing key the event was meant for.
    pub original_destination: String,
    /// `c360-truncated: true` and `c360-original-bytes` when the body was cut to `max_bytes`.
    pub original_bytes: Option<String>,
}

impl DeadLetterHeaders {
    fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("c360-dead-letter-reason", Some(self.reason.as_str())),
            ("c360-original-sink", Some(self.original_sink.as_str())),
            (
                "c360-original-destination",
                Some(self.original_destination.as_str()),
            ),
            (
                "c360-truncated",
                self.original_bytes.as_ref().map(|_| "true"),
            ),
            ("c360-original-bytes", self.original_bytes.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
    }
}

impl EventMeta {
    /// The headers every message carries, in a fixed order (content-type is added by the sink
    /// in the way its protocol expects), then a dead-letter message's own.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let dead_letter = self.dead_letter.iter().flat_map(|d| d.headers());
        [
            ("c360-event-id", Some(self.id.as_str())),
            ("c360-event-class", Some(self.event_class.as_str())),
            ("c360-payload-class", self.payload_class.as_deref()),
            ("c360-webhook", Some(&*self.webhook)),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
        .chain(dead_letter)
    }
}

/// The W3C trace context of a traced message's PRODUCER span, as its headers carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// `traceparent`: `00-{trace id}-{span id}-{flags}`.
    pub traceparent: String,
    /// `tracestate`, only when not empty.
    pub tracestate: Option<String>,
}

impl TraceContext {
    fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("traceparent", Some(self.traceparent.as_str())),
            ("tracestate", self.tracestate.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
    }
}

impl Message {
    /// Every header of the message, `c360-*` first, then (with `cloudevents`) the CloudEvents
    /// attributes under the binding's `names`, then `traceparent` / `tracestate` when the
    /// message is traced (content-type is the sink's to add).
    pub fn headers(
        &self,
        names: &'static Names,
        cloudevents: bool,
    ) -> impl Iterator<Item = (&'static str, &str)> {
        let ce = self.meta.cloudevent.as_ref().filter(|_| cloudevents);
        self.meta
            .headers()
            .chain(
                ce.into_iter()
                    .flat_map(move |ce| ce.headers(names, &self.meta.id, self.key.as_deref())),
            )
            .chain(self.trace.iter().flat_map(|t| t.headers()))
    }
}

/// One event addressed to one destination of one sink.
#[derive(Debug, Clone)]
pub struct Message {
    /// Kafka topic, or RabbitMQ routing key.
    pub destination: String,
    /// Kafka message key; RabbitMQ picks the channel by it, so same-key messages keep their order.
    pub key: Option<Bytes>,
    /// The event's JSON exactly as received: a slice of the request body, not a copy.
    pub body: Bytes,
    /// Header values.
    pub meta: Arc<EventMeta>,
    /// The trace context its headers carry; `None` when tracing is off.
    pub trace: Option<Box<TraceContext>>,
}

#[cfg(test)]
impl Message {
    /// A message of class `task_created` with key `k1` and every CloudEvents attribute.
    pub(crate) fn sample() -> Self {
        use crate::cloudevents::BatchAttributes;
        Message {
            destination: "t".into(),
            key: Some(Bytes::from_static(b"k1")),
            body: Bytes::from_static(b"{}"),
            meta: Arc::new(EventMeta {
                id: "abc".into(),
                event_class: "task_created".into(),
                payload_class: Some("task".into()),
                webhook: "w".into(),
                dead_letter: None,
                cloudevent: Some(CloudEvent {
                    ty: "com.catalog360.task_created".into(),
                    batch: Arc::new(BatchAttributes {
                        source: "/catalog360/w".into(),
                        time: "2026-11-29T17:00:00Z".into(),
                    }),
                }),
            }),
            trace: None,
        }
    }
}

/// The MIME type of every message body.
pub const CONTENT_TYPE: &str = "application/json";
