//! Realistic catalog360 events and batches, for `send`, `dev` and the load generator.

use crate::delivery::routing::KNOWN_EVENT_CLASSES;
use serde_json::{Value, json};

/// The payload class catalog360 pairs with an event class (`assetitem_created` → `assetitem`).
pub fn payload_class(event_class: &str) -> &str {
    event_class.rsplit_once('_').map_or(event_class, |(p, _)| p)
}

/// One event of `event_class` with record id `id`, padded with a description to about
/// `size` bytes. Updates carry `old` and `new`, creations only `new`.
pub fn event(event_class: &str, id: u64, size: usize) -> Value {
    let record = |rev: u64| {
        json!({
            "id": format!("{}-{id}", payload_class(event_class)),
            "revision": rev,
            "name": format!("Item {id}"),
            "status": if rev == 0 { "draft" } else { "active" },
            "updated_at": "2026-11-29T01:02:03Z",
            "description": "",
        })
    };
    let payload = if event_class.ends_with("_created") {
        json!({ "new": record(1) })
    } else {
        json!({ "old": record(1), "new": record(2) })
    };
    let mut ev = json!({
        "event_class": event_class,
        "payload_class": payload_class(event_class),
        "event_time": "2026-11-29T01:02:03Z",
        "payload": payload,
    });
    let len = ev.to_string().len();
    if size > len {
        let pad = "x".repeat(size - len);
        if let Some(d) = ev.pointer_mut("/payload/new/description") {
            *d = Value::String(pad);
        }
    }
    ev
}

/// A batch of `n` events cycling through the known classes, ids starting at `first_id`.
pub fn batch(n: usize, first_id: u64, event_size: usize) -> Vec<u8> {
    let events: Vec<Value> = (0..n)
        .map(|i| {
            let class = KNOWN_EVENT_CLASSES[i % KNOWN_EVENT_CLASSES.len()];
            event(class, first_id + i as u64, event_size)
        })
        .collect();
    json!({ "events": events }).to_string().into_bytes()
}

/// One small event of every known class.
pub fn one_of_each() -> Vec<u8> {
    batch(KNOWN_EVENT_CLASSES.len(), 1, 0)
}
