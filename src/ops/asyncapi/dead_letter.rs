//! The dead-letter channel of the AsyncAPI document (SPEC §10): where the events that no
//! broker will ever take are published, with the headers that say why.

use super::{Context, Destination, operation};
use crate::config::Config;
use crate::delivery::dead_letter::DeadLetter;
use crate::delivery::routing::{KNOWN_EVENT_CLASSES, Target};
use serde_json::{Value, json};

/// The channel id of the dead letter. Route channel ids always join sink and template with
/// `_`, so this one (no `_`) never clashes with them.
pub const CHANNEL_ID: &str = "dead-letter";

/// The dead-letter channel and its `receive` operation. The channel is described like a
/// route's (server, parameters, bindings) but has its own message: the usual headers plus the
/// dead-letter ones, and a body that is the event's bytes, cut when too large.
pub fn channel(ctx: &Context, config: &Config, dl: &DeadLetter) -> Option<(Value, Value)> {
    let sink = config.sinks.get(&dl.sink_name)?;
    let target = Target {
        sink: dl.sink,
        sink_name: dl.sink_name.clone(),
        topic: dl.topic.clone(),
        key: None,
    };
    let d = Destination {
        target: &target,
        sink,
        // Any event can end here, known class or not.
        classes: KNOWN_EVENT_CLASSES.to_vec(),
        patterns: Vec::new(),
        keys: Vec::new(),
    };
    let mut ch = ctx.channel(&d);
    ch["title"] = json!(format!("dead letters on {}", dl.sink_name));
    ch["description"] = json!(format!(
        "Events no broker will ever take (an illegal destination, larger than the broker accepts, a record the broker rejects), published here instead so that catalog360's batch can be answered 200. Sink `{}`; the address is the template of the dead-letter destination.",
        dl.sink_name
    ));
    let msg = &mut ch["messages"]["event"];
    msg["title"] = json!("catalog360 event that no broker will ever take");
    msg["summary"] = json!(
        "The event's bytes as received, with every usual header and the dead-letter headers."
    );
    msg["payload"] = json!({
        "description": format!("The event's JSON exactly as received, unless it was larger than max_bytes ({}): then its first max_bytes bytes, cut at a character boundary (c360-truncated: true), which is no valid JSON.", dl.max_bytes),
    });
    add_headers(&mut msg["headers"]);
    Some((ch, operation(CHANNEL_ID, &d)))
}

/// Adds the dead-letter headers to a message's headers schema.
fn add_headers(headers: &mut Value) {
    let s = |d: &str| json!({"type": "string", "description": d});
    let extra = [
        (
            "c360-dead-letter-reason",
            s(
                "Why no broker will ever take the event: a short code (illegal_destination, too_large, invalid_record) and the broker's or the bridge's text.",
            ),
        ),
        ("c360-original-sink", s("The sink the event was meant for.")),
        (
            "c360-original-destination",
            s("The topic or routing key the event was meant for."),
        ),
        (
            "c360-truncated",
            json!({"type": "string", "const": "true", "description": "Present when the body was cut to max_bytes."}),
        ),
        (
            "c360-original-bytes",
            s("The size of the event before it was cut (with c360-truncated)."),
        ),
    ];
    if let Some(props) = headers["properties"].as_object_mut() {
        for (name, schema) in extra {
            props.insert(name.into(), schema);
        }
    }
    if let Some(required) = headers["required"].as_array_mut() {
        required.extend(
            [
                "c360-dead-letter-reason",
                "c360-original-sink",
                "c360-original-destination",
            ]
            .map(Value::from),
        );
    }
}
