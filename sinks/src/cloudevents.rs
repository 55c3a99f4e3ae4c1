//! CloudEvents 1.0 attributes of a message (SPEC §8), and their names in each protocol binding.

use std::sync::Arc;

/// `specversion` of every event the bridge emits.
pub const SPEC_VERSION: &str = "1.0";

/// The default of a sink's `cloudevents` setting: on.
pub fn default_on() -> bool {
    true
}

/// The attributes shared by every event of one batch: built once per batch, not per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAttributes {
    /// `source`: the receiving webhook's `source` (default `/catalog360/{webhook}`).
    pub source: Arc<str>,
    /// `time`: when the batch was received, RFC 3339.
    pub time: Arc<str>,
}

/// The CloudEvents attributes of one event that are not copies of other headers: `id` is the
/// `c360-event-id` and `subject` the message key, so neither is stored twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    /// `type`: `com.catalog360.{event_class}`.
    pub ty: String,
    pub batch: Arc<BatchAttributes>,
}

/// The header names of the attributes in one protocol binding, in the order
/// specversion, id, source, type, time, subject.
pub type Names = [&'static str; 6];

/// The Kafka protocol binding: `ce_` headers.
pub const KAFKA: Names = [
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_time",
    "ce_subject",
];

/// The RabbitMQ binding (Knative eventing-rabbitmq, the CloudEvents SDKs): `ce-` headers.
pub const AMQP: Names = [
    "ce-specversion",
    "ce-id",
    "ce-source",
    "ce-type",
    "ce-time",
    "ce-subject",
];

/// The NATS binding's binary mode (NATS servers 2.2 and later carry headers): `ce-` headers,
/// the same names as the RabbitMQ binding.
pub const NATS: Names = AMQP;

impl CloudEvent {
    /// The attributes as (header name, value) under `names`; `subject` only when the message
    /// has a key that is text (the bridge's keys always are).
    pub fn headers<'a>(
        &'a self,
        names: &'static Names,
        id: &'a str,
        key: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'static str, &'a str)> {
        let subject = key.and_then(|k| std::str::from_utf8(k).ok());
        [
            Some(SPEC_VERSION),
            Some(id),
            Some(&*self.batch.source),
            Some(self.ty.as_str()),
            Some(&*self.batch.time),
            subject,
        ]
        .into_iter()
        .zip(names)
        .filter_map(|(value, name)| value.map(|v| (*name, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> CloudEvent {
        CloudEvent {
            ty: "com.catalog360.task_created".into(),
            batch: Arc::new(BatchAttributes {
                source: "/catalog360/main".into(),
                time: "2026-11-29T17:00:00.123Z".into(),
            }),
        }
    }

    #[test]
    fn every_attribute_under_the_bindings_names() {
        let ev = event();
        let got: Vec<_> = ev.headers(&KAFKA, "abc", Some(b"42")).collect();
        assert_eq!(
            got,
            [
                ("ce_specversion", "1.0"),
                ("ce_id", "abc"),
                ("ce_source", "/catalog360/main"),
                ("ce_type", "com.catalog360.task_created"),
                ("ce_time", "2026-11-29T17:00:00.123Z"),
                ("ce_subject", "42"),
            ]
        );
        let amqp: Vec<_> = ev.headers(&AMQP, "abc", None).map(|(n, _)| n).collect();
        assert_eq!(
            amqp,
            ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time"]
        );
    }

    #[test]
    fn a_key_that_is_not_text_gives_no_subject() {
        let ev = event();
        assert!(
            ev.headers(&KAFKA, "abc", Some(&[0xff, 0xfe]))
                .all(|(n, _)| n != "ce_subject")
        );
    }
}
