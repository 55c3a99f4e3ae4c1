//! The schemas of the AsyncAPI document: the event payload (catalog360's documentation) and the
//! message headers of each binding (SPEC §3 and §8).

use serde_json::{Map, Value, json};

/// The payload classes catalog360 documents (`{payload_class}` also renders `none`).
pub const KNOWN_PAYLOAD_CLASSES: [&str; 11] = [
    "envelope",
    "alert",
    "assetitem",
    "attachment",
    "attribute",
    "identity",
    "purchaseinvoice",
    "purchaseorder",
    "reportjob",
    "shipment",
    "task",
];

/// One catalog360 event, as catalog360 documents it; the message body is its exact bytes.
pub fn event(known_classes: &[&str]) -> Value {
    let record = |what: &str| {
        json!({
            "type": "object",
            "description": format!("The record {what}. Its fields depend on payload_class."),
            "additionalProperties": true,
        })
    };
    json!({
        "type": "object",
        "description": "One catalog360 event, byte for byte the element of the webhook batch's `events` array (not re-serialised). Unknown event classes and extra fields pass through untouched.",
        "required": ["event_class"],
        "additionalProperties": true,
        "properties": {
            "event_class": {
                "type": "string",
                "description": "What happened, e.g. assetitem_created. Known classes are listed in examples; unknown ones pass.",
                "examples": known_classes,
            },
            "payload_class": {
                "type": "string",
                "description": "The kind of record in payload, e.g. assetitem (may be absent).",
                "examples": KNOWN_PAYLOAD_CLASSES,
            },
            "payload": {
                "type": "object",
                "description": "For updates `old` and `new`; for creations only `new`; for deletions only `old`.",
                "additionalProperties": true,
                "properties": {
                    "old": record("before the change (updates and deletions)"),
                    "new": record("after the change (updates and creations)"),
                },
            },
        },
    })
}

/// How a binding spells the CloudEvents attribute headers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    Kafka,
    Amqp,
    Nats,
}

/// The headers of a message: the `c360-*` headers, `content-type` (not AMQP's: it carries it
/// as the `content_type` property), NATS's `Nats-Msg-Id` and, when `cloudevents`, the `ce_*` /
/// `ce-*` attributes.
/// `webhooks` are the webhook names, `sources` their CloudEvents sources.
pub fn headers(
    binding: Binding,
    cloudevents: bool,
    webhooks: &[String],
    sources: &[String],
) -> Value {
    let mut props = c360_headers(webhooks);
    let mut required = vec!["c360-event-id", "c360-event-class", "c360-webhook"];
    if binding != Binding::Amqp {
        props.insert(
            "content-type".into(),
            json!({"type": "string", "const": "application/json"}),
        );
        required.push("content-type");
    }
    if binding == Binding::Nats {
        props.insert(
            "Nats-Msg-Id".into(),
            json!({"type": "string", "description": "The same value as c360-event-id: JetStream stores a resend within the stream's duplicate window once."}),
        );
        required.push("Nats-Msg-Id");
    }
    if cloudevents {
        let (p, names) = ce_headers(binding, sources);
        props.extend(p);
        required.extend(names.iter().take(5));
    }
    json!({"type": "object", "properties": props, "required": required})
}

fn c360_headers(webhooks: &[String]) -> Map<String, Value> {
    let s = |d: &str| json!({"type": "string", "description": d});
    let mut m = Map::new();
    m.insert("c360-event-id".into(), json!({
        "type": "string",
        "description": "Stable id of the event: identical when catalog360 resends the batch, on any replica. Dedupe on it. (RabbitMQ: also the message_id property.)",
        "pattern": "^[0-9a-f]{32}(-[0-9]+)?$",
    }));
    m.insert("c360-event-class".into(), s("The event's event_class."));
    m.insert(
        "c360-payload-class".into(),
        s("The event's payload_class; absent when the event had none."),
    );
    m.insert(
        "c360-webhook".into(),
        json!({
            "type": "string",
            "description": "Name of the webhook that received the event.",
            "enum": webhooks,
        }),
    );
    m
}

/// The CloudEvents attribute headers, and their names in the order of `c360_sinks::cloudevents`.
fn ce_headers(
    binding: Binding,
    sources: &[String],
) -> (Map<String, Value>, &'static [&'static str; 6]) {
    use c360_sinks::cloudevents::{AMQP, KAFKA, NATS};
    let names = match binding {
        Binding::Kafka => &KAFKA,
        Binding::Amqp => &AMQP,
        Binding::Nats => &NATS,
    };
    let values = [
        json!({"type": "string", "const": "1.0", "description": "CloudEvents specversion."}),
        json!({"type": "string", "description": "CloudEvents id: the same value as c360-event-id."}),
        json!({"type": "string", "enum": sources, "description": "CloudEvents source: the receiving webhook's `source` (default /catalog360/{webhook})."}),
        json!({"type": "string", "pattern": "^com\\.catalog360\\.", "description": "CloudEvents type: com.catalog360.{event_class}."}),
        json!({"type": "string", "format": "date-time", "description": "CloudEvents time: when the bridge received the batch (RFC 3339, UTC)."}),
        json!({"type": "string", "description": "CloudEvents subject: the message key, present when the event has one."}),
    ];
    let props = names.iter().map(|n| n.to_string()).zip(values).collect();
    (props, names)
}
