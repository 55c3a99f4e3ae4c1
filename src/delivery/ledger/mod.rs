//! The retry ledger: which (event, sink) pairs were confirmed, so a resent batch skips them.
//!
//! What a pair is remembered by is `key.rs`'s: the delivery (this batch, this position, this
//! sink) by default, or with `ledger.match = "event"` the event's own bytes and the sink.
//! A batch asks it once before publishing (`seen`) and tells it once after the confirms
//! (`record`), only about pairs its broker confirmed. Two backends: this process's memory
//! (`memory.rs`), or Redis shared by every replica (`redis.rs`), which is an optimisation and
//! never a gate: when Redis fails, `seen` answers "nothing recorded" and the batch publishes.

pub mod key;
pub mod memory;
pub mod redis;

use crate::config::{LedgerBackend, LedgerConfig, LedgerMatch};
use crate::webhook::event_id::EventId;
pub use key::{Subject, Subjects};
pub use memory::{BuildKeyHasher, Key, KeyHasher, MemoryLedger};
pub use redis::{RedisLedger, RedisSetupError};

/// One (event, sink) pair as a batch hands it to the ledger.
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    /// The pair's key in this process (`Subject::key`), for the memory backend.
    pub key: Key,
    /// The webhook, the subject (`Subject::member`) and the sink's name: the pair's Redis set
    /// and member, stable across replicas and restarts whatever the order of `[sinks]`.
    pub webhook: &'a str,
    pub subject: Subject,
    pub sink: &'a str,
}

/// What `/readyz` shows of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The memory backend: nothing to fail.
    Memory,
    /// The Redis backend, whose last round trip succeeded (or none was made yet).
    Ok,
    /// The Redis backend, whose last round trip failed (why): batches publish as if nothing
    /// were recorded until a round trip succeeds again.
    Degraded(String),
}

/// The ledger a bridge uses: the backend of `ledger.backend`, keyed as `ledger.match` says.
pub struct Ledger {
    store: Store,
    matching: LedgerMatch,
}

/// Where the confirmations are kept.
enum Store {
    Memory(MemoryLedger),
    Redis(Box<RedisLedger>),
}

impl Ledger {
    /// The configured backend. Connecting to Redis happens on first use, so a bridge starts
    /// (and stays ready) while Redis is down.
    pub fn from_config(config: &LedgerConfig) -> Result<Self, RedisSetupError> {
        let store = match config.backend {
            LedgerBackend::Memory => {
                Store::Memory(MemoryLedger::new(config.max_entries, config.ttl))
            }
            LedgerBackend::Redis => Store::Redis(Box::new(RedisLedger::new(config)?)),
        };
        Ok(Self {
            store,
            matching: config.matching,
        })
    }

    /// What the events of a batch whose ids are `ids` (all of them, in order) are remembered
    /// by.
    pub fn subjects(&self, ids: &[EventId]) -> Subjects {
        Subjects::new(self.matching, ids)
    }

    /// For each pair, whether its broker already confirmed it (within the ttl).
    pub async fn seen(&self, pairs: &[Pair<'_>]) -> Vec<bool> {
        match &self.store {
            Store::Memory(m) => m.seen(pairs.iter().map(|p| p.key)),
            Store::Redis(r) => r.seen(pairs).await,
        }
    }

    /// Records pairs their broker confirmed.
    pub async fn record(&self, pairs: &[Pair<'_>]) {
        match &self.store {
            Store::Memory(m) => m.record(pairs.iter().map(|p| p.key)),
            Store::Redis(r) => r.record(pairs).await,
        }
    }

    pub fn health(&self) -> Health {
        match &self.store {
            Store::Memory(_) => Health::Memory,
            Store::Redis(r) => r.health(),
        }
    }
}
