//! The Redis ledger: confirmed (event id, sink) pairs in Redis, shared by every replica.
//!
//! One key a pair, `{key_prefix}{webhook}:{event id}:{sink}` = `1`, written with `PX ttl`
//! only after the pair's broker confirmed it (never claimed before delivery, so at-least-once
//! holds). A batch reads its keys with one `MGET` before publishing and writes them with one
//! pipeline after the confirms. Every round trip is bounded by `ledger.timeout`; a failed one
//! is counted (`c360_ledger_errors_total`), marks the ledger degraded and makes the batch
//! publish as if nothing were recorded. The next round trip that succeeds clears it.
//!
//! Redis Cluster: the `MGET` is split per node by the client; a cluster pipeline must stay in
//! one hash slot, so the writes go out as single `SET`s at once over each node's multiplexed
//! connection (still one round trip in time).

use super::{Health, Pair};
use crate::config::LedgerConfig;
use crate::metrics as m;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Why the Redis ledger cannot be set up (a URL the client refuses).
#[derive(Debug, thiserror::Error)]
#[error("ledger.url: {0}")]
pub struct RedisSetupError(#[source] redis::RedisError);

/// A failed ledger round trip.
#[derive(Debug, thiserror::Error)]
enum RoundTripError {
    #[error("no answer from Redis within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl RoundTripError {
    fn reason(&self) -> &'static str {
        match self {
            RoundTripError::Timeout(_) => "timeout",
            RoundTripError::Redis(_) => "error",
        }
    }
}

/// The connection: one server (reconnects by itself), or a cluster (connected on first use).
enum Conn {
    Single(ConnectionManager),
    Cluster(Box<Cluster>),
}

/// A cluster client and its connection, made on first use (and tried again on the next use
/// if that failed, so a bridge starts while the cluster is down).
struct Cluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl Cluster {
    async fn get(&self) -> Result<ClusterConnection, redis::RedisError> {
        let c = self
            .conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await?;
        Ok(c.clone())
    }
}

pub struct RedisLedger {
    conn: Conn,
    prefix: String,
    ttl_ms: u64,
    timeout: Duration,
    /// Why the last round trip failed; `None` while the last one succeeded.
    degraded: Mutex<Option<String>>,
}

impl RedisLedger {
    /// Prepares the client; nothing is connected yet. Must run inside a tokio runtime.
    pub fn new(config: &LedgerConfig) -> Result<Self, RedisSetupError> {
        let t = config.timeout;
        let conn = if config.cluster {
            let client = ClusterClient::builder(vec![config.url.as_str()])
                .connection_timeout(t)
                .response_timeout(t)
                .retries(1)
                .build()
                .map_err(RedisSetupError)?;
            Conn::Cluster(Box::new(Cluster {
                client,
                conn: OnceCell::new(),
            }))
        } else {
            let client = redis::Client::open(config.url.as_str()).map_err(RedisSetupError)?;
            let settings = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(t))
                .set_response_timeout(Some(t))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            Conn::Single(
                ConnectionManager::new_lazy_with_config(client, settings)
                    .map_err(RedisSetupError)?,
            )
        };
        Ok(Self {
            conn,
            prefix: config.key_prefix.clone(),
            ttl_ms: u64::try_from(config.ttl.as_millis()).unwrap_or(u64::MAX),
            timeout: t,
            degraded: Mutex::new(None),
        })
    }

    /// The Redis key of a pair.
    pub fn key(&self, p: &Pair<'_>) -> String {
        format!("{}{}:{}:{}", self.prefix, p.webhook, p.event_id, p.sink)
    }

    /// For each pair, whether its key exists; all `false` when Redis fails.
    pub async fn seen(&self, pairs: &[Pair<'_>]) -> Vec<bool> {
        if pairs.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = pairs.iter().map(|p| self.key(p)).collect();
        let read = self.bounded(self.mget(&keys)).await;
        match self.outcome("read", read) {
            Some(found) if found.len() == pairs.len() => found,
            _ => vec![false; pairs.len()],
        }
    }

    /// Writes the keys of confirmed pairs; a failure is counted and otherwise ignored.
    pub async fn record(&self, pairs: &[Pair<'_>]) {
        if pairs.is_empty() {
            return;
        }
        let keys: Vec<String> = pairs.iter().map(|p| self.key(p)).collect();
        let written = self.bounded(self.set_all(&keys)).await;
        self.outcome("write", written);
    }

    pub fn health(&self) -> Health {
        match self.degraded.lock().ok().and_then(|d| d.clone()) {
            None => Health::Ok,
            Some(why) => Health::Degraded(why),
        }
    }

    async fn bounded<T>(
        &self,
        f: impl Future<Output = Result<T, RoundTripError>>,
    ) -> Result<T, RoundTripError> {
        // The client's own response timeout (the same bound) counts as the same timeout.
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Err(RoundTripError::Redis(e))) if e.is_timeout() => {
                Err(RoundTripError::Timeout(self.timeout))
            }
            Ok(r) => r,
            Err(_) => Err(RoundTripError::Timeout(self.timeout)),
        }
    }

    /// Counts a failed round trip and keeps the health up to date.
    fn outcome<T>(&self, op: &'static str, r: Result<T, RoundTripError>) -> Option<T> {
        let why = r.as_ref().err().map(|e| {
            m::ledger_error(op, e.reason());
            e.to_string()
        });
        if let Ok(mut d) = self.degraded.lock() {
            match (&*d, &why) {
                (None, Some(w)) => tracing::warn!(
                    op,
                    error = %w,
                    "ledger degraded: Redis failed, batches publish as if nothing were recorded"
                ),
                (Some(_), None) => tracing::info!("ledger recovered: Redis answers again"),
                _ => {}
            }
            m::ledger_degraded(why.is_some());
            *d = why;
        }
        r.ok()
    }

    async fn mget(&self, keys: &[String]) -> Result<Vec<bool>, RoundTripError> {
        let cmd = redis::cmd("MGET").arg(keys).to_owned();
        let values: Vec<Option<Vec<u8>>> = match &self.conn {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await?,
            Conn::Cluster(c) => cmd.query_async(&mut c.get().await?).await?,
        };
        Ok(values.iter().map(Option::is_some).collect())
    }

    async fn set_all(&self, keys: &[String]) -> Result<(), RoundTripError> {
        let set = |k: &String| {
            redis::cmd("SET")
                .arg(k)
                .arg(1)
                .arg("PX")
                .arg(self.ttl_ms)
                .to_owned()
        };
        match &self.conn {
            Conn::Single(c) => {
                let mut pipe = redis::pipe();
                for k in keys {
                    pipe.add_command(set(k)).ignore();
                }
                pipe.query_async::<()>(&mut c.clone()).await?;
            }
            Conn::Cluster(c) => {
                let conn = c.get().await?;
                let sets = keys.iter().map(|k| {
                    let mut conn = conn.clone();
                    let cmd = set(k);
                    async move { cmd.query_async::<()>(&mut conn).await }
                });
                for r in futures::future::join_all(sets).await {
                    r?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_carry_prefix_webhook_event_id_and_sink_name() {
        let config = LedgerConfig {
            key_prefix: "p:".into(),
            ..LedgerConfig::default()
        };
        let l = RedisLedger::new(&config).unwrap();
        let pair = Pair {
            key: 7,
            webhook: "wh",
            event_id: "00ff",
            sink: "kafka",
        };
        assert_eq!(l.key(&pair), "p:wh:00ff:kafka");
    }

    #[tokio::test]
    async fn an_unreachable_redis_reads_as_nothing_recorded_and_degrades() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let config = LedgerConfig {
            url: format!("redis://127.0.0.1:{port}/0"),
            timeout: Duration::from_millis(200),
            ..LedgerConfig::default()
        };
        let l = RedisLedger::new(&config).unwrap();
        assert_eq!(l.health(), Health::Ok);
        let pair = Pair {
            key: 1,
            webhook: "wh",
            event_id: "e",
            sink: "s",
        };
        l.record(&[pair]).await;
        assert_eq!(l.seen(&[pair, pair]).await, vec![false, false]);
        assert!(matches!(l.health(), Health::Degraded(_)));
    }

    #[tokio::test]
    async fn a_tls_url_reaches_the_handshake_and_fails_without_panicking() {
        // A listener that is no TLS server: the rediss:// client must build its TLS settings
        // (system roots, the process's rustls provider) and then fail the handshake cleanly.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(b"-ERR not tls\r\n").await;
            }
        });
        for cluster in [false, true] {
            let config = LedgerConfig {
                url: format!("rediss://127.0.0.1:{port}/0"),
                cluster,
                timeout: Duration::from_millis(500),
                ..LedgerConfig::default()
            };
            let l = RedisLedger::new(&config).unwrap();
            let pair = Pair {
                key: 1,
                webhook: "wh",
                event_id: "e",
                sink: "s",
            };
            assert_eq!(l.seen(&[pair]).await, vec![false]);
            let Health::Degraded(why) = l.health() else {
                panic!("not degraded: {:?}", l.health())
            };
            eprintln!("rediss:// to a server that is no TLS server (cluster = {cluster}): {why}");
            assert!(!why.contains("no answer"), "{why}");
        }
    }
}
