//! What the ledger remembers a confirmed (event, sink) pair by: its delivery, or its event.
//!
//! `ledger.match = "batch"` (the default) remembers the **delivery**: the batch's digest (the
//! first 128 bits of one SHA-256 over its events' ids in order, each id being a digest of the
//! event's exact bytes, so the envelope's other fields do not count) with the event's position
//! folded in, and the sink. Only a resend of the same batch finds it; a byte-identical event in
//! another batch is a new delivery and is published. `ledger.match = "event"` remembers the
//! event id (the event's bytes and its repeat within the batch) and the sink, so an identical
//! event in any batch is skipped: for a sender that re-batches its retries.
//!
//! The sink is added where the pair is stored: folded into the memory key by number, or named
//! by the Redis set the member goes to (by name, so replicas agree whatever their sink order).

use super::Key;
use crate::config::LedgerMatch;
use crate::webhook::event_id::EventId;
use sha2::{Digest, Sha256};

/// Sets the batch digest apart from any other SHA-256 the bridge takes.
const BATCH_DOMAIN: &[u8] = b"c360-bridge ledger batch\0";

/// What one event of a batch is remembered by, sink aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// `match = "batch"`: the batch digest with the event's position in bits 64 and up.
    Delivery(u128),
    /// `match = "event"`: the event's id.
    Event(EventId),
}

impl Subject {
    /// The pair's key in this process at sink number `sink`: the sink folded into bits the
    /// digest already randomises, so no second hash is needed. Distinct (position, sink)
    /// pairs of one batch never collide.
    pub fn key(&self, sink: usize) -> Key {
        match self {
            Subject::Delivery(d) => d ^ sink as u128,
            Subject::Event(id) => id.ledger_key(sink),
        }
    }

    /// The pair's member in its Redis set (the set names the webhook and the sink): the
    /// delivery as 32 hex digits, or the event id (`c360-event-id`).
    pub fn member(&self) -> String {
        match self {
            Subject::Delivery(d) => format!("{d:032x}"),
            Subject::Event(id) => id.to_string(),
        }
    }

    /// The member's first hex digit, which picks its set's shard on a Redis Cluster.
    pub fn shard(&self) -> char {
        let top = match self {
            Subject::Delivery(d) => d >> 124,
            Subject::Event(id) => id.digest() >> 124,
        };
        char::from_digit(top as u32, 16).unwrap_or('0')
    }
}

/// The subjects of one batch's events.
#[derive(Debug, Clone, Copy)]
pub struct Subjects {
    /// The batch digest, or `None` with `match = "event"`.
    batch: Option<u128>,
}

impl Subjects {
    /// For the batch whose events have `ids`, in order (every event of the batch, routed or
    /// not). Only `match = "batch"` hashes: one SHA-256 over the ids.
    pub fn new(matching: LedgerMatch, ids: &[EventId]) -> Self {
        let batch = match matching {
            LedgerMatch::Batch => Some(batch_digest(ids)),
            LedgerMatch::Event => None,
        };
        Self { batch }
    }

    /// The subject of the event at `position` in the batch, whose id is `id`.
    pub fn of(&self, position: usize, id: EventId) -> Subject {
        match self.batch {
            Some(digest) => Subject::Delivery(digest ^ ((position as u128) << 64)),
            None => Subject::Event(id),
        }
    }
}

/// The first 128 bits of SHA-256 over the domain and the ids' digests in order (fixed width,
/// so the concatenation is unambiguous).
fn batch_digest(ids: &[EventId]) -> u128 {
    let mut hasher = Sha256::new_with_prefix(BATCH_DOMAIN);
    for id in ids {
        hasher.update(id.digest().to_be_bytes());
    }
    let digest = hasher.finalize();
    let mut head = [0u8; 16];
    head.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::envelope::split;
    use crate::webhook::event_id::event_ids;
    use std::collections::HashSet;

    const A: &str = r#"{"event_class":"a","n":1}"#;
    const B: &str = r#"{"event_class":"b","n":2}"#;
    const C: &str = r#"{"event_class":"c","n":3}"#;

    /// The memory keys of every (event, sink) pair of `body`'s events at sinks 0 and 1, by
    /// position, and the Redis members by position.
    fn keys(matching: LedgerMatch, body: &str) -> (Vec<[Key; 2]>, Vec<String>) {
        let events = split(body.as_bytes(), 100).unwrap();
        let ids = event_ids("w", &events);
        let subjects = Subjects::new(matching, &ids);
        let of: Vec<Subject> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| subjects.of(i, *id))
            .collect();
        let keys = of.iter().map(|s| [s.key(0), s.key(1)]).collect();
        (keys, of.iter().map(Subject::member).collect())
    }

    fn body(events: &[&str]) -> String {
        format!("{{\"events\":[{}]}}", events.join(","))
    }

    #[test]
    fn the_same_batch_gives_the_same_keys() {
        let batch = body(&[A, B]);
        assert_eq!(
            keys(LedgerMatch::Batch, &batch),
            keys(LedgerMatch::Batch, &batch)
        );
    }

    #[test]
    fn an_envelope_only_change_gives_the_same_keys() {
        let resend =
            format!("{{\"sent_at\": \"later\", \"attempt\": 2, \"events\": [ {A} ,\n{B}] }}");
        assert_eq!(
            keys(LedgerMatch::Batch, &body(&[A, B])),
            keys(LedgerMatch::Batch, &resend)
        );
    }

    #[test]
    fn the_same_event_in_another_batch_gets_another_key() {
        let (first, first_members) = keys(LedgerMatch::Batch, &body(&[A]));
        let (second, second_members) = keys(LedgerMatch::Batch, &body(&[C, A]));
        assert!(!second.iter().flatten().any(|k| first[0].contains(k)));
        assert_ne!(first_members[0], second_members[1]);
        // Even at the same position, in a batch that differs only after it.
        let (longer, _) = keys(LedgerMatch::Batch, &body(&[A, B]));
        assert_ne!(first[0], longer[0]);
    }

    #[test]
    fn position_matters() {
        let (swapped, _) = keys(LedgerMatch::Batch, &body(&[B, A]));
        let (straight, _) = keys(LedgerMatch::Batch, &body(&[A, B]));
        assert_ne!(swapped, straight, "another order is another batch");
        let (twice, members) = keys(LedgerMatch::Batch, &body(&[A, A]));
        assert_ne!(
            twice[0], twice[1],
            "identical events in one batch are two deliveries"
        );
        assert_ne!(members[0], members[1]);
    }

    #[test]
    fn sink_matters_and_no_pair_of_a_batch_collides() {
        let (k, _) = keys(LedgerMatch::Batch, &body(&[A, B, A, C]));
        let all: HashSet<Key> = k.iter().flatten().copied().collect();
        assert_eq!(all.len(), 8);
        assert_ne!(k[0][0], k[0][1]);
    }

    #[test]
    fn event_matching_keys_the_event_id_whatever_the_batch() {
        let (alone, alone_members) = keys(LedgerMatch::Event, &body(&[A]));
        let (later, later_members) = keys(LedgerMatch::Event, &body(&[C, A, A]));
        assert_eq!(
            alone[0], later[1],
            "the same event in another batch: the same key"
        );
        assert_ne!(
            later[1], later[2],
            "its repeat within a batch is another pair"
        );
        assert_ne!(alone[0][0], alone[0][1], "per sink");
        let ids = event_ids("w", &split(body(&[C, A, A]).as_bytes(), 100).unwrap());
        assert_eq!(alone_members[0], later_members[1]);
        assert_eq!(
            later_members[2],
            ids[2].to_string(),
            "the member is the c360-event-id"
        );
    }

    #[test]
    fn a_delivery_member_is_32_hex_digits_and_its_shard_their_first() {
        let (_, members) = keys(LedgerMatch::Batch, &body(&[A, B]));
        let batch = body(&[A, B]);
        let ids = event_ids("w", &split(batch.as_bytes(), 100).unwrap());
        let subjects = Subjects::new(LedgerMatch::Batch, &ids);
        for (i, m) in members.iter().enumerate() {
            assert_eq!(m.len(), 32);
            assert!(m.bytes().all(|b| b.is_ascii_hexdigit()), "{m}");
            assert_eq!(m.chars().next(), Some(subjects.of(i, ids[i]).shard()));
        }
        let event = Subject::Event(ids[0]);
        assert_eq!(event.member().chars().next(), Some(event.shard()));
    }
}
