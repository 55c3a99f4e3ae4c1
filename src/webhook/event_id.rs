//! Event ids: stable across retries of a batch, and the ledger keys derived from them
//! (`ledger.match = "event"`; the default keys the delivery, see `ledger::key`).
//!
//! An id is the first 128 bits of SHA-256(webhook name, 0x00, the event's exact bytes), in hex;
//! the k-th byte-identical repeat within one batch gets the suffix `-k`. SHA-256 rather than a
//! faster non-cryptographic hash because two events that collide would share a ledger entry,
//! and a resent batch would then skip one of them.

use crate::webhook::envelope::Event;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// The id of one event of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId {
    digest: u128,
    /// 0 for the first occurrence of these bytes in the batch, k for the k-th repeat.
    repeat: u32,
}

impl EventId {
    /// The 128-bit digest of the event's bytes (the id without its repeat suffix).
    pub fn digest(&self) -> u128 {
        self.digest
    }

    /// The ledger key of this event for sink number `sink`: the digest with (repeat, sink)
    /// folded into bits the digest already randomises, so no second hash is needed. Distinct
    /// (repeat, sink) pairs of one event never collide; distinct events collide only as often
    /// as two 128-bit SHA-256 prefixes do.
    pub fn ledger_key(&self, sink: usize) -> u128 {
        self.digest ^ ((u128::from(self.repeat) << 64) | sink as u128)
    }
}

impl std::str::FromStr for EventId {
    type Err = String;

    /// An id as the `c360-event-id` header carries it: 32 hex digits, and `-k` for a repeat.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hex, repeat) = match s.split_once('-') {
            Some((hex, k)) => (
                hex,
                k.parse::<u32>().map_err(|_| format!("{s:?}: bad repeat"))?,
            ),
            None => (s, 0),
        };
        if hex.len() != 32 {
            return Err(format!("{s:?} is not 32 hex digits"));
        }
        let digest = u128::from_str_radix(hex, 16).map_err(|_| format!("{s:?} is not hex"))?;
        Ok(Self { digest, repeat })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:032x}", self.digest)?;
        if self.repeat > 0 {
            write!(f, "-{}", self.repeat)?;
        }
        Ok(())
    }
}

/// The ids of a batch's events, in order.
pub fn event_ids(webhook: &str, events: &[Event]) -> Vec<EventId> {
    let mut repeats: HashMap<u128, u32, BuildKeyHasher> = HashMap::default();
    events
        .iter()
        .map(|e| {
            let digest = Sha256::new()
                .chain_update(webhook)
                .chain_update([0u8])
                .chain_update(e.raw.get())
                .finalize();
            let mut head = [0u8; 16];
            head.copy_from_slice(&digest[..16]);
            let digest = u128::from_be_bytes(head);
            let seen = repeats.entry(digest).and_modify(|n| *n += 1).or_insert(0);
            EventId {
                digest,
                repeat: *seen,
            }
        })
        .collect()
}

/// Keys are already uniform SHA-256 bits: hashing them again (SipHash) is wasted work.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, k: u128) {
        self.0 = k as u64;
    }
}

/// For maps keyed by SHA-256 bits (the ledger, and the repeat count of event ids).
pub type BuildKeyHasher = BuildHasherDefault<KeyHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::envelope::split;

    #[test]
    fn ids_are_the_hex_sha256_prefix_with_a_repeat_suffix() {
        let body = br#"{"events":[{"event_class":"a"},{"event_class":"b"},{"event_class":"a"}]}"#;
        let ids = event_ids("w", &split(body, 10).unwrap());
        let want = Sha256::new()
            .chain_update("w")
            .chain_update([0u8])
            .chain_update(br#"{"event_class":"a"}"#)
            .finalize();
        assert_eq!(ids[0].to_string(), hex::encode(&want[..16]));
        assert_eq!(
            ids[2].to_string(),
            format!("{}-1", hex::encode(&want[..16]))
        );
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn an_id_reads_back_from_its_header_text() {
        let body = br#"{"events":[{"event_class":"a"},{"event_class":"a"}]}"#;
        for id in event_ids("w", &split(body, 10).unwrap()) {
            assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
        }
        assert!("xyz".parse::<EventId>().is_err());
    }

    #[test]
    fn ledger_keys_differ_per_sink_and_repeat() {
        let body = br#"{"events":[{"event_class":"a"},{"event_class":"a"}]}"#;
        let ids = event_ids("w", &split(body, 10).unwrap());
        let keys = [
            ids[0].ledger_key(0),
            ids[0].ledger_key(1),
            ids[1].ledger_key(0),
            ids[1].ledger_key(1),
        ];
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), 4);
    }
}
