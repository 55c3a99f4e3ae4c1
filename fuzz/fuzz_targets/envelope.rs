//! Fuzz target: the envelope split. Never a panic; at most max_events events; every event is a
//! byte-exact slice of the body that parses again with serde_json's defaults.
#![no_main]

use c360_bridge::webhook::envelope::split_limited;
use libfuzzer_sys::fuzz_target;

const MAX_EVENTS: usize = 5;

fuzz_target!(|body: &[u8]| {
    let Ok(events) = split_limited(body, MAX_EVENTS, 128) else {
        return;
    };
    assert!(events.len() <= MAX_EVENTS);
    let range = body.as_ptr_range();
    for e in &events {
        let raw = e.raw.get().as_bytes();
        assert!(range.contains(&raw.as_ptr()) && raw.as_ptr_range().end <= range.end);
        let v: serde_json::Value = serde_json::from_slice(raw).expect("an accepted event parses");
        assert_eq!(v["event_class"].as_str(), Some(e.event_class.as_str()));
    }
});
