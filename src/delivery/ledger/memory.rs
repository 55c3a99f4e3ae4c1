//! The memory ledger: confirmed (event, sink) pairs kept in this process alone.
//!
//! Bounded in entries and in age; it lives in memory, so a restart or another replica forgets
//! it (docs/consumers.md lists the duplicates a consumer can therefore still see). An entry is the
//! 128-bit key of an (event, sink) pair (`Subject::key`) plus a timestamp, about
//! 80 bytes with the map's overhead.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the ledger remembers of one (event, sink) pair: see `Subject::key`.
pub type Key = u128;

pub use crate::webhook::event_id::{BuildKeyHasher, KeyHasher};

type KeyMap = HashMap<Key, Instant, BuildKeyHasher>;

/// Remembers confirmations for at most `max_entries` pairs and `ttl`.
pub struct MemoryLedger {
    inner: Mutex<Inner>,
    max_entries: usize,
    ttl: Duration,
}

#[derive(Default)]
struct Inner {
    confirmed: KeyMap,
    order: VecDeque<(Key, Instant)>,
}

impl MemoryLedger {
    pub fn new(max_entries: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_entries,
            ttl,
        }
    }

    /// For each key, whether its pair was confirmed within the ttl.
    pub fn seen(&self, keys: impl Iterator<Item = Key>) -> Vec<bool> {
        let Ok(inner) = self.inner.lock() else {
            return keys.map(|_| false).collect();
        };
        let now = Instant::now();
        keys.map(|k| {
            inner
                .confirmed
                .get(&k)
                .is_some_and(|at| now.duration_since(*at) < self.ttl)
        })
        .collect()
    }

    /// Records confirmed pairs, evicting the oldest past the bounds.
    pub fn record(&self, keys: impl Iterator<Item = Key>) {
        if self.max_entries == 0 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let now = Instant::now();
        for k in keys {
            inner.confirmed.insert(k, now);
            inner.order.push_back((k, now));
        }
        self.evict(&mut inner, now);
    }

    fn evict(&self, inner: &mut Inner, now: Instant) {
        while let Some((key, at)) = inner.order.front() {
            let expired = now.duration_since(*at) >= self.ttl;
            if !expired
                && inner.confirmed.len() <= self.max_entries
                && inner.order.len() <= 2 * self.max_entries
            {
                break;
            }
            // Remove the map entry only if this queue slot is its latest confirmation.
            if inner.confirmed.get(key) == Some(at) {
                inner.confirmed.remove(key);
            }
            inner.order.pop_front();
        }
    }

    /// Pairs currently remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.confirmed.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for `Subject::key`: any distinct u128 per (name, sink) will do.
    fn key(name: &str, sink: usize) -> Key {
        name.bytes()
            .fold(sink as u128, |k, b| k.wrapping_mul(257) + u128::from(b))
            << 8
            | sink as u128
    }

    #[test]
    fn remembers_confirmed_pairs_per_sink() {
        let l = MemoryLedger::new(10, Duration::from_secs(60));
        l.record([key("a", 0), key("b", 1)].into_iter());
        assert_eq!(
            l.seen([key("a", 0), key("a", 1), key("b", 1), key("c", 0)].into_iter()),
            vec![true, false, true, false]
        );
    }

    #[test]
    fn bounded_in_entries() {
        let l = MemoryLedger::new(3, Duration::from_secs(60));
        l.record((0..10).map(|i| key(&i.to_string(), 0)));
        assert_eq!(l.len(), 3);
        assert_eq!(
            l.seen(["0", "9"].into_iter().map(|s| key(s, 0))),
            vec![false, true]
        );
    }

    #[test]
    fn bounded_in_time() {
        let l = MemoryLedger::new(10, Duration::ZERO);
        l.record([key("a", 0)].into_iter());
        assert_eq!(l.seen([key("a", 0)].into_iter()), vec![false]);
        assert!(l.is_empty());
    }
}
