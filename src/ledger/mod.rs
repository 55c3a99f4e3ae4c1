//! The retry ledger: which (event id, sink) pairs were confirmed, so a resent batch skips them.
//!
//! A batch asks it once before publishing (`seen`) and tells it once after the confirms
//! (`record`), only about pairs its broker confirmed. Two backends: this process's memory
//! (`memory.rs`), or Redis shared by every replica (`redis.rs`), which is an optimisation and
//! never a gate: when Redis fails, `seen` answers "nothing recorded" and the batch publishes.

pub mod memory;
pub mod redis;

use crate::config::{LedgerBackend, LedgerConfig};
pub use memory::{BuildKeyHasher, Key, KeyHasher, MemoryLedger};
pub use redis::{RedisLedger, RedisSetupError};

/// One (event, sink) pair as a batch hands it to the ledger.
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    /// The pair's key in this process (`EventId::ledger_key`), for the memory backend.
    pub key: Key,
    /// The webhook, the event id (`c360-event-id`) and the sink's name: the pair's Redis key,
    /// stable across replicas and restarts whatever the order of the `[sinks]` table.
    pub webhook: &'a str,
    pub event_id: &'a str,
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

/// The ledger a bridge uses, chosen by `ledger.backend`.
pub enum Ledger {
    Memory(MemoryLedger),
    Redis(Box<RedisLedger>),
}

impl Ledger {
    /// The configured backend. Connecting to Redis happens on first use, so a bridge starts
    /// (and stays ready) while Redis is down.
    pub fn from_config(config: &LedgerConfig) -> Result<Self, RedisSetupError> {
        Ok(match config.backend {
            LedgerBackend::Memory => {
                Ledger::Memory(MemoryLedger::new(config.max_entries, config.ttl))
            }
            LedgerBackend::Redis => Ledger::Redis(Box::new(RedisLedger::new(config)?)),
        })
    }

    /// For each pair, whether its broker already confirmed it (within the ttl).
    pub async fn seen(&self, pairs: &[Pair<'_>]) -> Vec<bool> {
        match self {
            Ledger::Memory(m) => m.seen(pairs.iter().map(|p| p.key)),
            Ledger::Redis(r) => r.seen(pairs).await,
        }
    }

    /// Records pairs their broker confirmed.
    pub async fn record(&self, pairs: &[Pair<'_>]) {
        match self {
            Ledger::Memory(m) => m.record(pairs.iter().map(|p| p.key)),
            Ledger::Redis(r) => r.record(pairs).await,
        }
    }

    pub fn health(&self) -> Health {
        match self {
            Ledger::Memory(_) => Health::Memory,
            Ledger::Redis(r) => r.health(),
        }
    }
}
