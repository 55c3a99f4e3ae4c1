//! The catalog360 envelope, split into events without re-serialising them (`RawValue`).

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// One event of a batch: its exact bytes plus the fields the bridge routes on.
#[derive(Debug)]
pub struct Event<'a> {
    /// The element of `events` byte for byte as received.
    pub raw: &'a RawValue,
    pub event_class: String,
    pub payload_class: Option<String>,
}

/// Why a verified body is not a usable batch (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("body is not a JSON object: {0}")]
    NotJson(String),
    #[error("body has no \"events\" array")]
    NoEvents,
    #[error("{count} events in one batch; this webhook accepts at most {max}")]
    TooMany { count: usize, max: usize },
    #[error("event {index}: {reason}")]
    BadEvent { index: usize, reason: String },
}

impl EnvelopeError {
    pub fn code(&self) -> &'static str {
        match self {
            EnvelopeError::NotJson(_) => "invalid_json",
            EnvelopeError::NoEvents => "no_events_array",
            EnvelopeError::TooMany { .. } => "too_many_events",
            EnvelopeError::BadEvent { .. } => "invalid_event",
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    events: Option<Events<'a>>,
}

/// The `events` member, split into raw elements in the same pass that validates the body.
enum Events<'a> {
    Array(Vec<&'a RawValue>),
    NotAnArray,
}

impl<'de: 'a, 'a> Deserialize<'de> for Events<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EventsVisitor)
    }
}

struct EventsVisitor;

impl<'de> Visitor<'de> for EventsVisitor {
    type Value = Events<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut raws = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            raws.push(raw);
        }
        Ok(Events::Array(raws))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Events::NotAnArray)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Events::NotAnArray)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Events::NotAnArray)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Events::NotAnArray)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Events::NotAnArray)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Events::NotAnArray)
    }
}

/// Deserializes an object key to its index among `names` (None for any other key), without
/// allocating for the key.
struct KeyIndex<'n>(&'n [&'n str]);

impl<'de> DeserializeSeed<'de> for KeyIndex<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIndex<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|n| *n == key))
    }
}

pub use crate::config::DEFAULT_MAX_DEPTH;

/// Splits `body` into its events with the default depth limit; other top-level fields are
/// ignored.
pub fn split(body: &[u8], max_events: usize) -> Result<Vec<Event<'_>>, EnvelopeError> {
    split_limited(body, max_events, DEFAULT_MAX_DEPTH)
}

/// Splits `body` into its events. An event whose nesting of arrays and objects reaches
/// `max_depth` (the event itself counts 1) is refused: that is serde_json's rule, so with 128
/// every event accepted parses again with serde_json's defaults.
pub fn split_limited(
    body: &[u8],
    max_events: usize,
    max_depth: usize,
) -> Result<Vec<Event<'_>>, EnvelopeError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(EnvelopeError::NotJson("expected a JSON object".into()));
    }
    let env: Envelope =
        serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
    let Some(Events::Array(raws)) = env.events else {
        return Err(EnvelopeError::NoEvents);
    };
    if raws.len() > max_events {
        return Err(EnvelopeError::TooMany {
            count: raws.len(),
            max: max_events,
        });
    }
    raws.into_iter()
        .enumerate()
        .map(|(index, raw)| event(index, raw, max_depth))
        .collect()
}

/// What a scan of an event's bytes found wrong with it for a strict consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unparsable {
    /// Arrays/objects nested this many levels deep (the limit it reached).
    TooDeep(usize),
    /// A `\\uD800`–`\\uDFFF` escape that is not half of a surrogate pair: no Unicode text,
    /// refused by serde_json (and by every I-JSON parser) when it reads the string.
    LoneSurrogate,
    /// A number beyond f64's range (`1e400`): serde_json refuses it ("number out of range").
    NumberOutOfRange,
    /// `event_class` or `payload_class` twice at the top of the event.
    RepeatedField,
}

/// Where the fields the bridge routes on start in an event, found by [`check_strict`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heads {
    /// Whether the event is a JSON object.
    pub object: bool,
    /// Offset of the value of the top-level `event_class`.
    pub event_class: Option<usize>,
    /// Offset of the value of the top-level `payload_class`.
    pub payload_class: Option<usize>,
}

/// Checks valid JSON `json` for what strict consumers refuse although the JSON grammar allows
/// it: nesting that reaches `max_depth` (serde_json's rule: the outermost value counts 1), lone
/// surrogate escapes, numbers beyond f64 and a repeated routing field. On the way it notes
/// where the values of `event_class` and `payload_class` start, so they are read without a
/// second pass. One loop over the bytes with a counter, no recursion: any depth costs one pass
/// and no stack.
pub fn check_strict(json: &[u8], max_depth: usize) -> Result<Heads, Unparsable> {
    let mut heads = Heads::default();
    let mut depth = 0usize;
    let mut key_next = false;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let end = check_string(json, i + 1)?;
                if depth == 1 && key_next {
                    let key = &json[i..(end + 1).min(json.len())];
                    if let Some(slot) = head_slot(key, &mut heads)? {
                        *slot = Some(value_start(json, end + 1));
                    }
                    key_next = false;
                }
                i = end;
            }
            open @ (b'{' | b'[') => {
                depth += 1;
                if depth >= max_depth {
                    return Err(Unparsable::TooDeep(max_depth));
                }
                if depth == 1 {
                    heads.object = open == b'{';
                    key_next = heads.object;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => key_next = heads.object,
            b'-' | b'0'..=b'9' => {
                i = check_number(json, i)?;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(heads)
}

/// The slot of a top-level key (`raw`, with its quotes) if it is one the bridge routes on; a
/// second `event_class` or `payload_class` is refused: the bridge reads the first, serde_json
/// and most consumers the last, so the event would be routed by a value its consumers never see.
fn head_slot<'h>(
    raw: &[u8],
    heads: &'h mut Heads,
) -> Result<Option<&'h mut Option<usize>>, Unparsable> {
    let escaped;
    let name = if raw.contains(&b'\\') {
        escaped = serde_json::from_slice::<String>(raw).unwrap_or_default();
        escaped.as_str()
    } else {
        std::str::from_utf8(raw.get(1..raw.len().saturating_sub(1)).unwrap_or_default())
            .unwrap_or_default()
    };
    let slot = match name {
        "event_class" => &mut heads.event_class,
        "payload_class" => &mut heads.payload_class,
        _ => return Ok(None),
    };
    if slot.is_some() {
        return Err(Unparsable::RepeatedField);
    }
    Ok(Some(slot))
}

/// The offset of the value after a key that ends before `i` (past the `:` and any whitespace).
fn value_start(json: &[u8], i: usize) -> usize {
    let rest = json.get(i..).unwrap_or_default();
    i + rest
        .iter()
        .take_while(|b| matches!(b, b':' | b' ' | b'\t' | b'\n' | b'\r'))
        .count()
}

/// Checks the number starting at `i` and returns the index after it. Only a number with an
/// exponent, or longer than any finite f64 needs (308 digits), can be out of range, so the
/// common short number costs no parse.
fn check_number(json: &[u8], start: usize) -> Result<usize, Unparsable> {
    let len = json[start..]
        .iter()
        .take_while(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
        .count();
    let token = &json[start..start + len];
    let may_overflow = len > 300 || token.iter().any(|b| matches!(b, b'e' | b'E'));
    if may_overflow {
        let finite = std::str::from_utf8(token)
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .is_some_and(f64::is_finite);
        if !finite {
            return Err(Unparsable::NumberOutOfRange);
        }
    }
    Ok(start + len)
}

/// Walks a string body from `i` (after its opening quote) to its closing quote, whose index it
/// returns; checks that surrogate escapes come in pairs. Plain text is skipped with `memchr2`
/// up to the next quote or backslash, so a long string costs a vectorised search, not a loop
/// over its bytes.
fn check_string(json: &[u8], mut i: usize) -> Result<usize, Unparsable> {
    let mut pending_high = false;
    loop {
        if pending_high {
            // A high surrogate must be followed at once by a low one.
            match unicode_escape(json, i) {
                Some(0xDC00..=0xDFFF) => {
                    pending_high = false;
                    i += 6;
                    continue;
                }
                _ => return Err(Unparsable::LoneSurrogate),
            }
        }
        let Some(at) = memchr::memchr2(b'"', b'\\', json.get(i..).unwrap_or_default()) else {
            return Ok(json.len());
        };
        i += at;
        if json[i] == b'"' {
            return Ok(i);
        }
        match unicode_escape(json, i) {
            Some(0xD800..=0xDBFF) => pending_high = true,
            Some(0xDC00..=0xDFFF) => return Err(Unparsable::LoneSurrogate),
            _ => {}
        }
        // `\uXXXX` is six bytes, any other escape two.
        i += if json.get(i + 1) == Some(&b'u') { 6 } else { 2 };
    }
}

/// The code unit of the `\uXXXX` escape at `i`, if there is one.
fn unicode_escape(json: &[u8], i: usize) -> Option<u32> {
    if json.get(i..i + 2) != Some(b"\\u") {
        return None;
    }
    hex4(json.get(i + 2..i + 6))
}

fn hex4(digits: Option<&[u8]>) -> Option<u32> {
    let text = std::str::from_utf8(digits?).ok()?;
    u32::from_str_radix(text, 16).ok()
}

/// Whether `json` (valid JSON) nests arrays/objects `limit` levels deep or more.
#[cfg(test)]
fn nests_at_least(json: &[u8], limit: usize) -> bool {
    matches!(check_strict(json, limit), Err(Unparsable::TooDeep(_)))
}

fn event(index: usize, raw: &RawValue, max_depth: usize) -> Result<Event<'_>, EnvelopeError> {
    let bad = |reason: &str| EnvelopeError::BadEvent {
        index,
        reason: reason.to_owned(),
    };
    let json = raw.get();
    let heads = match check_strict(json.as_bytes(), max_depth) {
        Ok(heads) => heads,
        Err(Unparsable::TooDeep(d)) => {
            return Err(bad(&format!(
                "nested {d} levels deep or more (this webhook's max_depth)"
            )));
        }
        Err(Unparsable::RepeatedField) => {
            return Err(bad(
                "event_class or payload_class appears twice (consumers would read another value than the one it is routed by)",
            ));
        }
        Err(Unparsable::NumberOutOfRange) => {
            return Err(bad("a number is beyond the range of a 64-bit float"));
        }
        Err(Unparsable::LoneSurrogate) => {
            return Err(bad(
                "a string holds a lone surrogate escape (\\uD800-\\uDFFF), not Unicode text",
            ));
        }
    };
    if !heads.object {
        return Err(bad("not a JSON object"));
    }
    let class = heads.event_class.ok_or_else(|| bad("has no event_class"))?;
    let event_class = string_at(json, class).ok_or_else(|| bad("event_class is not a string"))?;
    // Only a string names a payload class; anything else counts as none (the bytes pass as sent).
    let payload_class = heads.payload_class.and_then(|at| string_at(json, at));
    Ok(Event {
        raw,
        event_class,
        payload_class,
    })
}

/// The JSON string that starts at `at` in `json`, unescaped (`None` for any other value).
fn string_at(json: &str, at: usize) -> Option<String> {
    let mut de = serde_json::Deserializer::from_str(json.get(at..)?);
    String::deserialize(&mut de).ok()
}

/// Follows a JSON pointer (already split into segments) into `raw` without parsing the rest.
pub fn pointer<'a>(raw: &'a RawValue, segments: &[String]) -> Option<&'a RawValue> {
    segments.iter().try_fold(raw, |node, seg| {
        let mut de = serde_json::Deserializer::from_str(node.get());
        FieldSeed(seg).deserialize(&mut de).ok().flatten()
    })
}

/// The bytes a pointed-at value contributes as a message key: a string's text, else its JSON.
pub fn key_bytes(raw: &RawValue) -> Option<Vec<u8>> {
    match raw.get().as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(raw.get())
            .ok()
            .map(String::into_bytes),
        Some(b'n') => None,
        _ => Some(raw.get().as_bytes().to_vec()),
    }
}

/// Deserializes a JSON object, returning the raw value of one field and skipping the others.
struct FieldSeed<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Option<&'de RawValue>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Option<&'de RawValue>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(hit) = map.next_key_seed(KeyIndex(&[self.0]))? {
            if found.is_none() && hit.is_some() {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(p: &str) -> Vec<String> {
        p.split('/').skip(1).map(str::to_owned).collect()
    }

    #[test]
    fn routing_fields_are_read_wherever_they_stand_and_however_spelled() {
        let body = br#"{"events":[
            {"payload":{"event_class":"inner"},"payload_class" :	"task","event_class": "task_created"},
            {"event_\u0063lass":"a\u0062c","x":[1,{"payload_class":"no"}]},
            {"event_class":"k","payload_class":7}
        ]}"#;
        let events = split(body, 10).unwrap();
        let heads: Vec<(&str, Option<&str>)> = events
            .iter()
            .map(|e| (e.event_class.as_str(), e.payload_class.as_deref()))
            .collect();
        assert_eq!(
            heads,
            [("task_created", Some("task")), ("abc", None), ("k", None)]
        );
    }

    #[test]
    fn an_event_that_is_no_object_is_refused() {
        for event in [r#"["event_class"]"#, r#""event_class""#, "7", "null"] {
            let body = format!(r#"{{"events":[{event}]}}"#);
            let err = split(body.as_bytes(), 10).unwrap_err();
            assert_eq!(err.code(), "invalid_event", "{event}");
        }
    }

    #[test]
    fn events_keep_their_exact_bytes() {
        let body = br#"{"other": 1, "events": [ {"event_class":"task_created", "payload":{"n": 123456789012345678901234567890, "s":"caf\u00e9 \"q\""}} ,{"event_class":"x","payload_class":"task"}]}"#;
        let events = split(body, 100).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].raw.get(),
            r#"{"event_class":"task_created", "payload":{"n": 123456789012345678901234567890, "s":"caf\u00e9 \"q\""}}"#
        );
        assert_eq!(events[0].payload_class, None);
        assert_eq!(events[1].payload_class.as_deref(), Some("task"));
    }

    #[test]
    fn empty_events_is_a_batch_of_none() {
        assert!(split(br#"{"events":[]}"#, 100).unwrap().is_empty());
    }

    #[test]
    fn bad_envelopes_are_named() {
        assert_eq!(split(b"nope", 100).unwrap_err().code(), "invalid_json");
        assert_eq!(split(b"[1]", 100).unwrap_err().code(), "invalid_json");
        assert_eq!(
            split(br#"{"x":[]}"#, 100).unwrap_err(),
            EnvelopeError::NoEvents
        );
        for not_an_array in [r#"{}"#, r#"{"a":[1]}"#, "null", "\"x\"", "7", "true"] {
            let body = format!(r#"{{"events":{not_an_array}}}"#);
            assert_eq!(
                split(body.as_bytes(), 100).unwrap_err(),
                EnvelopeError::NoEvents,
                "{body}"
            );
        }
        assert_eq!(
            split(br#"{"events":[1,}"#, 100).unwrap_err().code(),
            "invalid_json"
        );
        assert_eq!(
            split(br#"{"events":[{},{}]}"#, 1).unwrap_err(),
            EnvelopeError::TooMany { count: 2, max: 1 }
        );
    }

    #[test]
    fn bad_events_are_named_with_their_index() {
        let e = split(
            br#"{"events":[{"event_class":"a"},{"event_class":7}]}"#,
            100,
        )
        .unwrap_err();
        assert!(
            matches!(e, EnvelopeError::BadEvent { index: 1, .. }),
            "{e:?}"
        );
        let e = split(
            br#"{"events":[{"event_class":"a"},{"event_class":"b"},3]}"#,
            100,
        )
        .unwrap_err();
        assert!(
            matches!(e, EnvelopeError::BadEvent { index: 2, .. }),
            "{e:?}"
        );
        let e = split(br#"{"events":[{"payload":{}}]}"#, 100).unwrap_err();
        assert_eq!(e.to_string(), "event 0: has no event_class");
        let e = split(br#"{"events":[{"event_class":["a"]}]}"#, 100).unwrap_err();
        assert_eq!(e.to_string(), "event 0: event_class is not a string");
    }

    #[test]
    fn unknown_classes_pass_whatever_their_characters() {
        let body = r#"{"events":[{"event_class":"aufgabe_geprüft","payload_class":7}]}"#;
        let events = split(body.as_bytes(), 100).unwrap();
        assert_eq!(events[0].event_class, "aufgabe_geprüft");
        assert_eq!(events[0].payload_class, None);
    }

    #[test]
    fn the_head_is_found_wherever_it_sits_and_escaped_keys_count() {
        let body = br#"{"events":[{"payload":{"event_class":"inner"},"payload_class":"task","event_class":"task_created"},{"ev\u0065nt_class":"a","payload_class":null}]}"#;
        let events = split(body, 100).unwrap();
        assert_eq!(events[0].event_class, "task_created");
        assert_eq!(events[0].payload_class.as_deref(), Some("task"));
        assert_eq!(events[1].event_class, "a");
        assert_eq!(events[1].payload_class, None);
        let repeated = split(
            br#"{"events":[{"event_class":"a","event_class":"b"}]}"#,
            100,
        );
        assert!(matches!(
            repeated,
            Err(EnvelopeError::BadEvent { index: 0, .. })
        ));
    }

    fn nested(levels: usize) -> String {
        format!(
            r#"{{"event_class":"a","p":{}1{}}}"#,
            "[".repeat(levels - 1),
            "]".repeat(levels - 1)
        )
    }

    #[test]
    fn depth_follows_serde_jsons_recursion_limit() {
        let ok = nested(127);
        let deep = nested(128);
        assert!(serde_json::from_str::<serde_json::Value>(&ok).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&deep).is_err());
        let body = format!(r#"{{"events":[{ok}]}}"#);
        assert_eq!(split(body.as_bytes(), 100).unwrap().len(), 1);
        let body = format!(r#"{{"events":[{ok},{deep}]}}"#);
        let e = split(body.as_bytes(), 100).unwrap_err();
        assert!(
            matches!(e, EnvelopeError::BadEvent { index: 1, .. }),
            "{e:?}"
        );
        assert_eq!(e.code(), "invalid_event");
        let brackets_in_strings = r#"{"event_class":"a","s":"[[[[{{{{\"[[["}"#;
        assert!(!nests_at_least(brackets_in_strings.as_bytes(), 3));
        assert!(nests_at_least(b"[[[]]]", 3));
        assert!(!nests_at_least(b"[[]]", 3));
    }

    #[test]
    fn lone_surrogates_are_refused_and_pairs_pass() {
        let ok = [r#""\ud83d\ude00""#, r#""a\\ud800""#, r#""\u0041\"\\""#];
        for s in ok {
            assert_eq!(check_strict(s.as_bytes(), 128).map(drop), Ok(()), "{s}");
            assert!(serde_json::from_str::<serde_json::Value>(s).is_ok(), "{s}");
        }
        let bad = [
            r#""\ud800""#,
            r#""\udc00x""#,
            r#""\ud800\u0041""#,
            r#""\ud800\ud800""#,
        ];
        for s in bad {
            assert_eq!(
                check_strict(s.as_bytes(), 128),
                Err(Unparsable::LoneSurrogate),
                "{s}"
            );
            assert!(serde_json::from_str::<serde_json::Value>(s).is_err(), "{s}");
        }
        let body = br#"{"events":[{"event_class":"a","s":"\ud800"}]}"#;
        let e = split(body, 10).unwrap_err();
        assert!(
            matches!(e, EnvelopeError::BadEvent { index: 0, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn a_repeated_head_field_is_refused_wherever_it_repeats() {
        // Found by the envelope fuzz target: the bridge routed by the first event_class, a
        // consumer's serde_json read the second.
        let found = br#"{"events":[{"event_class":"task_created","payload_class":"task","event_cl\u0061ss":"e3","payload":{"old":{"id":"x"}}}]}"#;
        let e = split(found, 10).unwrap_err();
        assert!(e.to_string().contains("appears twice"), "{e}");
        let late = br#"{"events":[{"event_class":"a","payload_class":"t","payload":{"event_class":"inner"},"payload_class":"u"}]}"#;
        assert!(split(late, 10).is_err());
        let nested_only = br#"{"events":[{"event_class":"a","payload":{"event_class":"b","x":["event_class","event_class"]}}]}"#;
        assert_eq!(split(nested_only, 10).unwrap()[0].event_class, "a");
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        let huge_int = "9".repeat(400);
        for n in ["1e400", "-1E+400", huge_int.as_str()] {
            assert_eq!(
                check_strict(n.as_bytes(), 128),
                Err(Unparsable::NumberOutOfRange),
                "{n}"
            );
            assert!(serde_json::from_str::<serde_json::Value>(n).is_err(), "{n}");
        }
        for n in ["1e308", "-0.5e-400", "123456789012345678901234567890", "0"] {
            assert_eq!(check_strict(n.as_bytes(), 128).map(drop), Ok(()), "{n}");
            assert!(serde_json::from_str::<serde_json::Value>(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn a_very_deep_event_costs_no_stack() {
        let deep = nested(1_000_000);
        let body = format!(r#"{{"events":[{deep}]}}"#);
        let e = split_limited(body.as_bytes(), 100, 128).unwrap_err();
        assert!(
            matches!(e, EnvelopeError::BadEvent { index: 0, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn pointer_finds_nested_values() {
        let raw: &RawValue =
            serde_json::from_str(r#"{"payload":{"old":{"id":7},"n\u0065w":{"id":"a\"b"}}}"#)
                .unwrap();
        let v = pointer(raw, &seg("/payload/new/id")).unwrap();
        assert_eq!(key_bytes(v).unwrap(), b"a\"b");
        assert_eq!(
            key_bytes(pointer(raw, &seg("/payload/old/id")).unwrap()).unwrap(),
            b"7"
        );
        assert!(pointer(raw, &seg("/payload/none/id")).is_none());
        assert!(pointer(raw, &seg("/payload/old/id/deeper")).is_none());
    }
}

/// The fuzz targets' invariants (fuzz/fuzz_targets/envelope.rs) as property tests, so every
/// `cargo test` checks them.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    const SEED: &str = r#"{"x":[1,{"y":"\u00e9"}],"events":[{"event_class":"task_created","payload_class":"task","payload":{"new":{"id":"a\"b","n":[1.5e3,-2,true,null,{"d":[[[]]]}]}}},{"event_class":"e2","payload":{"old":{"id":7}}}]}"#;

    /// A valid envelope with some bytes replaced, inserted or removed.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        let edits =
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 0..6);
        edits.prop_map(|edits| {
            let mut b = SEED.as_bytes().to_vec();
            for (at, byte, kind) in edits {
                let i = at.index(b.len() + 1);
                match kind {
                    0 if i < b.len() => b[i] = byte,
                    1 => b.insert(i, byte),
                    _ if i < b.len() => {
                        b.remove(i);
                    }
                    _ => {}
                }
            }
            b
        })
    }

    fn holds(body: &[u8], max_events: usize) {
        let Ok(events) = split_limited(body, max_events, DEFAULT_MAX_DEPTH) else {
            return;
        };
        assert!(events.len() <= max_events);
        let range = body.as_ptr_range();
        for e in &events {
            let raw = e.raw.get().as_bytes();
            assert!(range.start <= raw.as_ptr() && raw.as_ptr_range().end <= range.end);
            let v: serde_json::Value = serde_json::from_slice(raw).expect("accepted event parses");
            assert_eq!(v["event_class"].as_str(), Some(e.event_class.as_str()));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn mutated_envelopes_split_into_slices_that_parse(body in mutated(), max in 1usize..4) {
            holds(&body, max);
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            holds(&body, 100);
        }
    }
}
