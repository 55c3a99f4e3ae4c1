//! The Redis ledger: confirmed (event, sink) pairs in Redis, shared by every replica.
//!
//! Pairs are members of Redis sets, one set per webhook, sink and window of `ttl`:
//! `{key_prefix}{webhook}:{sink}:{window}` holds the members (`Subject::member`: the delivery's
//! 32 hex digits, or with `ledger.match = "event"` the `c360-event-id`) confirmed at that sink
//! while the window lasted (window = Unix milliseconds / ttl). A set is written with
//! `SADD` only after its pairs' broker confirmed them (never claimed before delivery, so
//! at-least-once holds) and expires two windows after it began (`PEXPIRE`, in the same
//! `MULTI`), so a pair is remembered at least `ttl` and at most twice that plus the skew
//! allowance. A batch reads with `SMISMEMBER` in every window a pair of the last `ttl` can be in
//! (two, three near a window's edge: a clock skew between replicas of up to a minute, or half
//! the ttl when that is shorter, is allowed) before publishing, and
//! writes once after the confirms: one pipelined round trip each. One command a set instead
//! of one a pair is what keeps Redis cheap (a `SET … PX` a pair cost Redis 2.4 µs each).
//! Every round trip is bounded by `ledger.timeout`; a failed one is counted
//! (`c360_ledger_errors_total`), marks the ledger degraded and makes the batch publish as if
//! nothing were recorded. The next round trip that succeeds clears it.
//!
//! Redis Cluster: each window's set is split in 16 by the member's first hex digit
//! (`…:{window}:{digit}`), so the sets spread over the nodes; every set's commands go out
//! at once over each node's multiplexed connection (still one round trip in time).

use super::{Health, Pair};
use crate::config::{LedgerConfig, LedgerTls};
use crate::telemetry::metrics as m;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ClientTlsConfig, TlsCertificates};
use std::ops::RangeInclusive;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;

/// Why the Redis ledger cannot be set up: a URL the client refuses, or its TLS files.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("ledger.url: {0}")]
    Url(#[source] redis::RedisError),
    #[error("ledger.tls.{key}: cannot read {path}: {source}")]
    TlsFile {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger.tls: {0}")]
    Tls(#[source] redis::RedisError),
}

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

/// Clock skew between replicas (and Redis) a read allows for, at most.
const MAX_SKEW_MS: u64 = 60_000;
/// The longest expiry the ledger asks for (a century): Redis refuses one that overflows.
const MAX_LIVE_MS: u64 = 100 * 365 * 24 * 3_600_000;

pub struct RedisLedger {
    conn: Conn,
    prefix: String,
    windows: Windows,
    /// Redis Cluster: each window's set is split by the member's first hex digit.
    sharded: bool,
    timeout: Duration,
    /// Why the last round trip failed; `None` while the last one succeeded.
    degraded: Mutex<Option<String>>,
    /// Whether Redis's way of freeing expired keys was looked at (once, after a success).
    settings_checked: AtomicBool,
}

/// Time cut in windows of `ttl`: which set a confirm goes to, which sets a read looks in.
#[derive(Debug, Clone, Copy)]
struct Windows {
    len_ms: u64,
    skew_ms: u64,
}

impl Windows {
    fn new(ttl: Duration) -> Self {
        let len_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        Self {
            len_ms,
            skew_ms: MAX_SKEW_MS.min(len_ms / 2),
        }
    }

    /// The window a confirm at `now_ms` is written to, and the milliseconds its set must
    /// live from now: until two windows after its start (plus the skew), so every member
    /// outlives `ttl`.
    fn write(&self, now_ms: u64) -> (u64, u64) {
        let w = now_ms / self.len_ms;
        let end = (w.saturating_add(2))
            .saturating_mul(self.len_ms)
            .saturating_add(self.skew_ms);
        (w, end.saturating_sub(now_ms).clamp(1, MAX_LIVE_MS))
    }

    /// The windows holding every pair confirmed within `ttl` before `now_ms`, by a clock
    /// up to the skew ahead of or behind this one.
    fn read(&self, now_ms: u64) -> RangeInclusive<u64> {
        let from = now_ms.saturating_sub(self.len_ms.saturating_add(self.skew_ms)) / self.len_ms;
        from..=now_ms.saturating_add(self.skew_ms) / self.len_ms
    }
}

/// The pairs of a batch that share a set (in every window): their index in the batch and
/// member.
struct Group<'a> {
    webhook: &'a str,
    sink: &'a str,
    shard: Option<char>,
    members: Vec<(usize, String)>,
}

impl RedisLedger {
    /// Prepares the client; nothing is connected yet. Must run inside a tokio runtime.
    pub fn new(config: &LedgerConfig) -> Result<Self, RedisSetupError> {
        Ok(Self {
            conn: Conn::new(config)?,
            prefix: config.key_prefix.clone(),
            windows: Windows::new(config.ttl),
            sharded: config.cluster,
            timeout: config.timeout,
            degraded: Mutex::new(None),
            settings_checked: AtomicBool::new(false),
        })
    }

    fn shard(&self, p: &Pair<'_>) -> Option<char> {
        self.sharded.then(|| p.subject.shard())
    }

    /// The batch's pairs grouped by set, in order of first appearance.
    fn groups<'a>(&self, pairs: &[Pair<'a>]) -> Vec<Group<'a>> {
        let mut groups: Vec<Group<'a>> = Vec::new();
        for (i, p) in pairs.iter().enumerate() {
            let shard = self.shard(p);
            let same =
                |g: &&mut Group<'a>| g.webhook == p.webhook && g.sink == p.sink && g.shard == shard;
            let member = (i, p.subject.member());
            match groups.iter_mut().find(same) {
                Some(g) => g.members.push(member),
                None => groups.push(Group {
                    webhook: p.webhook,
                    sink: p.sink,
                    shard,
                    members: vec![member],
                }),
            }
        }
        groups
    }

    /// The Redis key of group `g`'s set in `window`: `{prefix}{webhook}:{sink}:{window}`, and
    /// `:{shard}` on a cluster.
    fn set_key(&self, g: &Group<'_>, window: u64) -> String {
        let (prefix, webhook, sink) = (&self.prefix, g.webhook, g.sink);
        match g.shard {
            None => format!("{prefix}{webhook}:{sink}:{window}"),
            Some(c) => format!("{prefix}{webhook}:{sink}:{window}:{c}"),
        }
    }

    /// `COMMAND set member…` with the members of group `g`.
    fn members(command: &str, set: &str, g: &Group<'_>) -> redis::Cmd {
        let mut cmd = redis::cmd(command);
        cmd.arg(set);
        for (_, member) in &g.members {
            cmd.arg(member);
        }
        cmd
    }

    /// For each pair, whether its broker confirmed it within `ttl`; all `false` when Redis
    /// fails.
    pub async fn seen(&self, pairs: &[Pair<'_>]) -> Vec<bool> {
        let mut seen = vec![false; pairs.len()];
        if pairs.is_empty() {
            return seen;
        }
        let groups = self.groups(pairs);
        let windows = self.windows.read(unix_ms());
        let (asked, cmds): (Vec<&Group>, Vec<redis::Cmd>) = groups
            .iter()
            .flat_map(|g| {
                windows
                    .clone()
                    .map(move |w| (g, Self::members("SMISMEMBER", &self.set_key(g, w), g)))
            })
            .unzip();
        let read = self.bounded(self.ask(cmds)).await;
        if let Some(replies) = self.outcome("read", read) {
            for (g, found) in asked.iter().zip(replies) {
                for ((i, _), hit) in g.members.iter().zip(found) {
                    seen[*i] |= hit;
                }
            }
        }
        seen
    }

    /// Adds confirmed pairs to their sets; a failure is counted and otherwise ignored.
    pub async fn record(&self, pairs: &[Pair<'_>]) {
        if pairs.is_empty() {
            return;
        }
        let (window, live_ms) = self.windows.write(unix_ms());
        let live_ms = i64::try_from(live_ms).unwrap_or(i64::MAX);
        let writes = self.groups(pairs).into_iter().map(|g| {
            let set = self.set_key(&g, window);
            let mut expire = redis::cmd("PEXPIRE");
            expire.arg(&set).arg(live_ms);
            [Self::members("SADD", &set, &g), expire]
        });
        let written = self.bounded(self.write(writes.collect())).await;
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
        if r.is_ok() {
            self.check_settings_once();
        }
        r.ok()
    }

    /// After the first round trip that succeeded, looks once (in a task of its own) whether
    /// Redis frees expired keys in its main thread.
    fn check_settings_once(&self) {
        // A read first: after the first success this costs every batch no write.
        if self.settings_checked.load(Ordering::Relaxed)
            || self.settings_checked.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let timeout = self.timeout;
        match &self.conn {
            Conn::Single(c) => {
                tokio::spawn(warn_unless_lazy_expire(c.clone(), timeout));
            }
            Conn::Cluster(c) => {
                if let Some(conn) = c.conn.get() {
                    tokio::spawn(warn_unless_lazy_expire(conn.clone(), timeout));
                }
            }
        }
    }

    /// The `SMISMEMBER` replies, in order: one pipeline on one server, each command at once
    /// on its node in a cluster.
    async fn ask(&self, cmds: Vec<redis::Cmd>) -> Result<Vec<Vec<bool>>, RoundTripError> {
        Ok(match &self.conn {
            Conn::Single(c) => {
                let mut pipe = redis::pipe();
                cmds.into_iter().for_each(|cmd| {
                    pipe.add_command(cmd);
                });
                pipe.query_async(&mut c.clone()).await?
            }
            Conn::Cluster(c) => {
                let conn = c.get().await?;
                let asks = cmds.into_iter().map(|cmd| {
                    let mut conn = conn.clone();
                    async move { cmd.query_async::<Vec<bool>>(&mut conn).await }
                });
                let replies = futures::future::join_all(asks).await;
                replies.into_iter().collect::<Result<_, _>>()?
            }
        })
    }

    /// Each set's `SADD` and `PEXPIRE` in one `MULTI`: all sets in one on one server, each
    /// set's at once on its node in a cluster.
    async fn write(&self, sets: Vec<[redis::Cmd; 2]>) -> Result<(), RoundTripError> {
        let atomic = |cmds: &mut dyn Iterator<Item = redis::Cmd>| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            cmds.for_each(|cmd| {
                pipe.add_command(cmd).ignore();
            });
            pipe
        };
        match &self.conn {
            Conn::Single(c) => {
                let pipe = atomic(&mut sets.into_iter().flatten());
                pipe.query_async::<()>(&mut c.clone()).await?;
            }
            Conn::Cluster(c) => {
                let conn = c.get().await?;
                let writes = sets.into_iter().map(|set| {
                    let mut conn = conn.clone();
                    let pipe = atomic(&mut set.into_iter());
                    async move { pipe.query_async::<()>(&mut conn).await }
                });
                for r in futures::future::join_all(writes).await {
                    r?;
                }
            }
        }
        Ok(())
    }
}

impl Conn {
    async fn ping(&self) -> Result<(), redis::RedisError> {
        let ping = redis::cmd("PING");
        match self {
            Conn::Single(m) => ping.query_async::<String>(&mut m.clone()).await.map(drop),
            Conn::Cluster(c) => ping
                .query_async::<String>(&mut c.get().await?)
                .await
                .map(drop),
        }
    }

    fn new(config: &LedgerConfig) -> Result<Self, RedisSetupError> {
        let t = config.timeout;
        Ok(if config.cluster {
            let mut builder = ClusterClient::builder(vec![config.url.as_str()]);
            if let Some(certs) = certificates(&config.tls)? {
                builder = builder.certs(certs);
            }
            let client = builder
                .connection_timeout(t)
                .response_timeout(t)
                .retries(1)
                .build()
                .map_err(RedisSetupError::Url)?;
            Conn::Cluster(Box::new(Cluster {
                client,
                conn: OnceCell::new(),
            }))
        } else {
            let client = match certificates(&config.tls)? {
                Some(certs) => redis::Client::build_with_tls(config.url.as_str(), certs)
                    .map_err(RedisSetupError::Tls)?,
                None => redis::Client::open(config.url.as_str()).map_err(RedisSetupError::Url)?,
            };
            let settings = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(t))
                .set_response_timeout(Some(t))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            Conn::Single(
                ConnectionManager::new_lazy_with_config(client, settings)
                    .map_err(RedisSetupError::Url)?,
            )
        })
    }
}

/// Connects to the configured Redis once and asks `PING` (what `check --connect` does): the
/// transport on success, else why not (`tls: …`, `authentication failed: …`).
pub async fn probe(config: &LedgerConfig, within: Duration) -> Result<String, String> {
    let config = LedgerConfig {
        timeout: within,
        ..config.clone()
    };
    let conn = Conn::new(&config).map_err(|e| e.to_string())?;
    let tls = config.url.starts_with("rediss://");
    match tokio::time::timeout(within, conn.ping()).await {
        Ok(Ok(())) => Ok(describe_security(&config)),
        Ok(Err(e)) if e.kind() == redis::ErrorKind::AuthenticationFailed => {
            Err(format!("authentication failed: {e}"))
        }
        Ok(Err(e)) if tls && is_handshake_error(&e) => Err(format!("tls: {e}")),
        Ok(Err(e)) => Err(format!("cannot connect: {e}")),
        Err(_) => Err(format!("cannot connect: no answer within {within:?}")),
    }
}

/// rustls's words for a failed handshake (certificate checks, alerts from the peer).
fn is_handshake_error(e: &redis::RedisError) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    ["certificate", "handshake", "alert"]
        .iter()
        .any(|w| text.contains(w))
}

fn describe_security(config: &LedgerConfig) -> String {
    let transport = match (config.url.starts_with("rediss://"), &config.tls.cert_file) {
        (true, Some(_)) => "mutual TLS",
        (true, None) => "TLS",
        (false, _) => "plaintext",
    };
    let shape = if config.cluster {
        "cluster"
    } else {
        "one server"
    };
    format!("redis, {shape}, {transport}")
}

/// The `[ledger.tls]` files as the Redis client takes them, or `None` when none is set (then a
/// `rediss://` URL is verified against the system's CAs).
fn certificates(tls: &LedgerTls) -> Result<Option<TlsCertificates>, RedisSetupError> {
    if tls.ca_file.is_none() && tls.cert_file.is_none() {
        return Ok(None);
    }
    let root_cert = tls
        .ca_file
        .as_deref()
        .map(|p| read("ca_file", p))
        .transpose()?;
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read("cert_file", cert)?,
            client_key: read("key_file", key)?,
        }),
        _ => None,
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

fn read(key: &'static str, path: &std::path::Path) -> Result<Vec<u8>, RedisSetupError> {
    std::fs::read(path).map_err(|source| RedisSetupError::TlsFile {
        key,
        path: path.display().to_string(),
        source,
    })
}

/// Warns when Redis frees expired keys in its main thread (`lazyfree-lazy-expire no`, the
/// default of Redis 7): a ledger set holds a window's pairs, and freeing a large one blocks
/// Redis for everyone (docs/deployment.md, *Redis settings*). A Redis that refuses `CONFIG` (managed
/// services may) is only noted at debug level.
async fn warn_unless_lazy_expire(mut conn: impl redis::aio::ConnectionLike, timeout: Duration) {
    let get = redis::cmd("CONFIG")
        .arg("GET")
        .arg("lazyfree-lazy-expire")
        .to_owned();
    let reply = tokio::time::timeout(timeout, get.query_async::<Vec<String>>(&mut conn)).await;
    match reply {
        Ok(Ok(kv)) if kv.get(1).is_some_and(|v| v == "no") => tracing::warn!(
            "ledger: Redis frees expired keys in its main thread (lazyfree-lazy-expire no); a \
             ledger set holds a window's pairs, and when a large one expires Redis answers \
             nobody until it is freed: set lazyfree-lazy-expire yes (docs/deployment.md: Redis settings)"
        ),
        Ok(Ok(_)) => {
            tracing::debug!("ledger: Redis frees expired keys lazily (lazyfree-lazy-expire yes)")
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "ledger: cannot read Redis's lazyfree-lazy-expire")
        }
        Err(_) => tracing::debug!("ledger: no answer to CONFIG GET lazyfree-lazy-expire"),
    }
}

/// Milliseconds since the Unix epoch (0 for a clock set before it).
fn unix_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::ledger::Subject;

    #[tokio::test]
    async fn a_batch_is_grouped_by_set_named_by_prefix_webhook_sink_window_and_cluster_shard() {
        let mut config = LedgerConfig {
            key_prefix: "p:".into(),
            ..LedgerConfig::default()
        };
        // Deliveries whose members start with these 16 bits: a0ff…, b0ff…, a1ee….
        let pair = |top: u128| Pair {
            key: 7,
            webhook: "wh",
            subject: Subject::Delivery(top << 112 | 5),
            sink: "kafka",
        };
        let pairs = [pair(0xa0ff), pair(0xb0ff), pair(0xa1ee)];
        let sets = |l: &RedisLedger| {
            l.groups(&pairs)
                .iter()
                .map(|g| {
                    let members = g.members.iter().map(|(i, m)| (*i, m[..4].to_owned()));
                    (l.set_key(g, 42), members.collect::<Vec<_>>())
                })
                .collect::<Vec<_>>()
        };
        let member = |i, m: &str| (i, m.to_owned());
        let single = RedisLedger::new(&config).unwrap();
        let all = vec![member(0, "a0ff"), member(1, "b0ff"), member(2, "a1ee")];
        assert_eq!(sets(&single), [("p:wh:kafka:42".to_owned(), all)]);
        assert_eq!(
            single.groups(&pairs)[0].members[0].1,
            format!("a0ff{:028x}", 5)
        );
        config.cluster = true;
        let cluster = RedisLedger::new(&config).unwrap();
        assert_eq!(
            sets(&cluster),
            [
                (
                    "p:wh:kafka:42:a".to_owned(),
                    vec![member(0, "a0ff"), member(2, "a1ee")]
                ),
                ("p:wh:kafka:42:b".to_owned(), vec![member(1, "b0ff")]),
            ]
        );
    }

    #[test]
    fn a_pair_is_read_back_for_at_least_ttl_whatever_the_moment_it_was_written() {
        let w = Windows::new(Duration::from_secs(3600));
        let hour = 3_600_000;
        for written in [60_000, hour - 1, hour, 5 * hour + 1234, 7 * hour - 60_001] {
            let (window, live) = w.write(written);
            // The set outlives ttl and the skew after the write, by at most two windows.
            assert!(
                live > hour + 60_000 && live <= 2 * hour + 60_000,
                "{written}: {live}"
            );
            for read in [written, written + 1, written + hour / 2, written + hour] {
                // Read by this clock, or by a replica's a minute behind or ahead.
                for skew in [-60_000, 0, 60_000] {
                    let clock = read.saturating_add_signed(skew);
                    assert!(w.read(clock).contains(&window), "{written} read at {clock}");
                }
            }
        }
    }

    #[test]
    fn a_read_looks_in_two_windows_and_three_within_the_skew_of_a_window_edge() {
        let w = Windows::new(Duration::from_secs(3600));
        let hour = 3_600_000;
        assert_eq!(w.read(10 * hour + 120_000), 9..=10);
        assert_eq!(w.read(11 * hour - 30_000), 9..=11);
        assert_eq!(w.read(10 * hour + 30_000), 8..=10);
    }

    #[test]
    fn a_short_ttl_allows_half_of_it_as_skew_and_still_finds_every_pair() {
        let w = Windows::new(Duration::from_millis(100));
        for written in [1_000_000, 1_000_049, 1_000_099] {
            let (window, live) = w.write(written);
            assert!(live > 100 + 50 && live <= 250, "{written}: {live}");
            for read in written..=written + 100 {
                for clock in [read - 50, read, read + 50] {
                    let windows = w.read(clock);
                    assert!(windows.contains(&window), "{written} read at {clock}");
                    assert!(windows.count() <= 4);
                }
            }
        }
    }

    #[test]
    fn a_huge_ttl_asks_redis_for_an_expiry_it_accepts() {
        let w = Windows::new(Duration::from_secs(u64::MAX / 4));
        let (_, live) = w.write(1_800_000_000_000);
        assert_eq!(live, MAX_LIVE_MS);
        assert!(w.read(1_800_000_000_000).contains(&0));
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
            subject: Subject::Delivery(1),
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
                subject: Subject::Delivery(1),
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
