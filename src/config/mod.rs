//! Configuration: defaults < TOML file < `C360_BRIDGE_*` environment, validated at start-up.

pub mod cidr;
pub mod key_list;
pub mod secrets;
pub mod watch;

use c360_sinks::SinkKind;
use c360_sinks::kafka::KafkaConfig;
use c360_sinks::nats::NatsConfig;
use c360_sinks::rabbitmq::RabbitConfig;
pub use cidr::Cidr;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration of one bridge process.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub ledger: LedgerConfig,
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// What to do with an event no route matches: `error` (refuse to start without a
    /// catch-all route) or `drop` (accept and count it in `c360_events_unrouted_total`).
    #[serde(default)]
    pub unrouted: Unrouted,
    /// `[dead_letter]`: where events no broker will ever take are published (SPEC §10).
    #[serde(default)]
    pub dead_letter: Option<DeadLetterConfig>,
    /// `[telemetry]`: where traces go (off without an endpoint here or in `OTEL_*`).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The configuration in force as one value (defaults, file, environment, secrets resolved):
    /// what a reload compares and `config_hash` digests. Never printed.
    #[serde(skip)]
    pub effective: serde_json::Value,
}

impl Config {
    /// `config_hash`: the first 12 hex digits of SHA-256 over the effective configuration.
    pub fn hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.effective.to_string().as_bytes());
        digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
    }

    /// The effective value at `path` (`["sinks", "kafka"]`), `Null` when absent.
    pub fn section(&self, path: &[&str]) -> &serde_json::Value {
        path.iter().fold(&self.effective, |v, k| {
            v.get(k).unwrap_or(&serde_json::Value::Null)
        })
    }

    /// Makes `path` of the effective configuration (what `hash` covers) what it is in `from`:
    /// the same value, or absent when `from` has none.
    pub fn copy_section(&mut self, from: &Config, path: &[&str]) {
        let Some((last, parents)) = path.split_last() else {
            return;
        };
        let found = path
            .iter()
            .try_fold(&from.effective, |v, k| v.get(k))
            .cloned();
        let mut at = &mut self.effective;
        for k in parents {
            at = match at {
                serde_json::Value::Object(map) => map
                    .entry(*k)
                    .or_insert_with(|| serde_json::Value::Object(Default::default())),
                _ => return,
            };
        }
        if let serde_json::Value::Object(map) = at {
            match found {
                Some(v) => map.insert((*last).to_owned(), v),
                None => map.remove(*last),
            };
        }
    }
}

/// `[telemetry]`: the OTLP collector traces are exported to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of the collector, like `OTEL_EXPORTER_OTLP_ENDPOINT` (HTTP appends `/v1/traces`).
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf`; unset: `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf`.
    pub protocol: Option<String>,
}

/// `[dead_letter]`: the sink and destination of events that failed permanently.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Any configured sink (`[sinks.NAME]`).
    pub sink: String,
    /// Kafka topic / AMQP routing key template (`{event_class}`, `{payload_class}`, `{webhook}`).
    #[serde(default = "default_dead_letter_topic")]
    pub topic: String,
    /// Larger event bodies are cut to this many bytes (header `c360-truncated: true`).
    #[serde(default = "default_dead_letter_max_bytes")]
    pub max_bytes: usize,
}

fn default_dead_letter_topic() -> String {
    "catalog360.dead-letter".into()
}
fn default_dead_letter_max_bytes() -> usize {
    900_000
}

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub admin_listen: Option<String>,
    pub max_body_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Batches being published at once; past it new batches get an immediate 503.
    pub max_in_flight_batches: usize,
    /// Threads of the async runtime that serves HTTP and drives the sinks; 0 = one per core.
    pub worker_threads: usize,
    /// How often every `keys_file` is read to see whether it changed (SIGHUP re-reads at once).
    #[serde(with = "humantime_serde")]
    pub keys_poll_interval: Duration,
    /// Reload the configuration when its file changes (looked at every `keys_poll_interval`),
    /// not only on SIGHUP.
    pub watch_config: bool,
    /// From accept to a complete request head (TLS handshake included); then the connection is
    /// closed. Also bounds a later request's head from its first byte.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A kept-alive connection with no request in flight is closed after this.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open connections on the webhook listener; beyond it new ones are closed at once.
    pub max_connections: usize,
    /// CIDRs of reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// `[server.tls]`: serve HTTPS with this certificate chain and key (PEM).
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`: PEM files, re-read when they change and on SIGHUP.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: None,
            max_body_bytes: 16 * 1024 * 1024,
            ack_timeout: Duration::from_secs(20),
            max_in_flight_batches: 512,
            worker_threads: 0,
            keys_poll_interval: Duration::from_secs(1),
            watch_config: false,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            trusted_proxies: Vec::new(),
            tls: None,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `c360_bridge=debug,info`; `RUST_LOG` wins.
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[ledger]`: memory of confirmed deliveries, so a resent batch skips them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Where confirmations are kept: this process's memory, or Redis shared by every replica.
    pub backend: LedgerBackend,
    /// What a confirmation is remembered by: the delivery (batch, position, sink) or the
    /// event's own bytes and the sink.
    #[serde(rename = "match")]
    pub matching: LedgerMatch,
    /// Memory backend only: most pairs remembered.
    pub max_entries: usize,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Redis backend: `redis://` or `rediss://` (TLS) URL; with `cluster`, any node of it.
    pub url: String,
    /// Redis backend: the URL names a node of a Redis Cluster.
    pub cluster: bool,
    /// Redis backend: prefix of every key the bridge writes.
    pub key_prefix: String,
    /// Redis backend: bound of one ledger round trip (connecting included).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Redis backend, `rediss://`: `[ledger.tls]` CA and client certificate (PEM files).
    pub tls: LedgerTls,
}

/// `[ledger.tls]`: the CA to verify Redis with (the system's CAs when unset) and an optional
/// client certificate; read at start-up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl LedgerTls {
    fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            backend: LedgerBackend::Memory,
            matching: LedgerMatch::Batch,
            max_entries: 200_000,
            ttl: Duration::from_secs(3600),
            url: "redis://127.0.0.1:6379/0".into(),
            cluster: false,
            key_prefix: "c360:ledger:".into(),
            timeout: Duration::from_millis(100),
            tls: LedgerTls::default(),
        }
    }
}

/// `ledger.match`: which later publishes a confirmation lets the ledger skip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LedgerMatch {
    /// Only a resend of the same batch: the same events' bytes in the same order, the same
    /// position, the same sink. A byte-identical event in another batch is published.
    #[default]
    Batch,
    /// Any event with the same bytes (and repeat within its batch) at the same sink, for a
    /// sender that re-batches its retries: a genuine repeat in another batch is skipped.
    Event,
}

/// A `ledger.match` that is neither value (figment names the key and the file around it).
#[derive(Debug, thiserror::Error)]
#[error("must be \"batch\" (the default) or \"event\", not {0:?}")]
pub struct UnknownLedgerMatch(String);

impl TryFrom<String> for LedgerMatch {
    type Error = UnknownLedgerMatch;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "batch" => Ok(LedgerMatch::Batch),
            "event" => Ok(LedgerMatch::Event),
            _ => Err(UnknownLedgerMatch(value)),
        }
    }
}

/// `ledger.backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerBackend {
    #[default]
    Memory,
    Redis,
}

/// `[[webhooks]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    pub path: String,
    /// Inline keys.
    #[serde(default)]
    pub keys: Vec<SecretString>,
    /// Name of an environment variable holding keys, comma-separated.
    pub keys_env: Option<String>,
    /// A file holding keys, one per line; re-read when it changes and on SIGHUP.
    pub keys_file: Option<PathBuf>,
    /// The keys `keys_env` gave at load (not a configuration key).
    #[serde(skip)]
    pub env_keys: Vec<SecretString>,
    /// The keys `keys_file` gave at load (not a configuration key).
    #[serde(skip)]
    pub file_keys: Vec<SecretString>,
    #[serde(default = "yes")]
    pub accept_test_ping: bool,
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// CloudEvents `source` of its events; default `/catalog360/{name}`.
    pub source: Option<String>,
    /// Deepest nesting of arrays/objects inside one event (serde_json's recursion limit).
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// CIDRs whose clients may post to this webhook; unset = any.
    pub allow_from: Option<Vec<Cidr>>,
}

impl WebhookConfig {
    /// Every key of the webhook: inline, then `keys_env`, then `keys_file` (first = current).
    pub fn all_keys(&self) -> impl Iterator<Item = &SecretString> {
        self.keys
            .iter()
            .chain(&self.env_keys)
            .chain(&self.file_keys)
    }

    /// The CloudEvents `source` of its events: `source`, or `/catalog360/{name}`.
    pub fn ce_source(&self) -> String {
        self.source
            .clone()
            .unwrap_or_else(|| default_source(&self.name))
    }
}

fn yes() -> bool {
    true
}
fn default_max_events() -> usize {
    100
}
fn default_max_depth() -> usize {
    DEFAULT_MAX_DEPTH
}

/// `[sinks.NAME]`, tagged by `type`: one variant per kind of sink, each the configuration type
/// its sink module defines (and implements [`SinkKind`] for).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    Kafka(KafkaConfig),
    Rabbitmq(RabbitConfig),
    Nats(NatsConfig),
}

impl SinkConfig {
    /// What the bridge knows of this kind of sink: defaults, destination rules, build, probe.
    pub fn kind(&self) -> &dyn SinkKind {
        match self {
            SinkConfig::Kafka(k) => k,
            SinkConfig::Rabbitmq(r) => r,
            SinkConfig::Nats(n) => n,
        }
    }

    /// The destination template a route gets when it names none.
    pub fn default_topic(&self) -> &'static str {
        self.kind().default_topic()
    }
}

/// `[[routes]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(rename = "match")]
    pub pattern: String,
    pub sinks: Vec<String>,
    pub topic: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unrouted {
    #[default]
    Error,
    Drop,
}

/// A configuration that cannot be used, with the file and key it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: {error}")]
    Load {
        source_name: String,
        error: Box<figment::Error>,
    },
    #[error("{source_name}: {key}: {message}")]
    Invalid {
        source_name: String,
        key: String,
        message: String,
    },
}

/// Where the configuration came from, for error messages.
pub fn source_name(file: Option<&Path>) -> String {
    match file {
        Some(p) => p.display().to_string(),
        None => "embedded defaults + environment".into(),
    }
}

/// Reads defaults, then `file` (if any), then `C360_BRIDGE_*` variables.
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    let mut fig = Figment::new()
        .merge(Serialized::default("server", ServerConfig::default()))
        .merge(Serialized::default("log", LogConfig::default()))
        .merge(Serialized::default("ledger", LedgerConfig::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(invalid(file, "--config", "file not found"));
        }
        fig = fig.merge(Toml::file(path));
    }
    fig = fig.merge(
        Env::prefixed("C360_BRIDGE_")
            .ignore(&["config"])
            .split("__"),
    );
    let load_error = |e| ConfigError::Load {
        source_name: source_name(file),
        error: Box::new(e),
    };
    let tree: figment::value::Value = fig.extract().map_err(load_error)?;
    let secrets =
        secrets::resolve(&tree).map_err(|e| invalid(file, e.key.clone(), e.to_string()))?;
    if let Some(resolved) = secrets {
        fig = fig.merge(Serialized::globals(resolved));
    }
    let mut config: Config = fig.extract().map_err(load_error)?;
    config.effective = fig.extract().map_err(load_error)?;
    resolve_keys(&mut config, file)?;
    validate(&config, file)?;
    Ok(config)
}

pub(crate) fn invalid(
    file: Option<&Path>,
    key: impl Into<String>,
    message: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        source_name: source_name(file),
        key: key.into(),
        message: message.into(),
    }
}

/// Reads the keys named by `keys_env` and `keys_file` of each webhook.
fn resolve_keys(config: &mut Config, file: Option<&Path>) -> Result<(), ConfigError> {
    for (i, wh) in config.webhooks.iter_mut().enumerate() {
        if let Some(var) = &wh.keys_env {
            let value = std::env::var(var).map_err(|_| {
                invalid(
                    file,
                    format!("webhooks[{i}].keys_env"),
                    format!("variable {var} is not set"),
                )
            })?;
            wh.env_keys = key_list::split(&value, ',');
        }
        if let Some(path) = &wh.keys_file {
            wh.file_keys = key_list::read_file(path)
                .map_err(|e| invalid(file, format!("webhooks[{i}].keys_file"), e.to_string()))?;
        }
    }
    Ok(())
}

fn validate(config: &Config, file: Option<&Path>) -> Result<(), ConfigError> {
    validate_server(&config.server, file)?;
    if let Some((key, problem)) = ledger_problem(&config.ledger, config.server.ack_timeout) {
        return Err(invalid(file, format!("ledger.{key}"), problem));
    }
    for (name, sink) in &config.sinks {
        sink.kind()
            .validate()
            .map_err(|m| invalid(file, format!("sinks.{name}"), m))?;
    }
    if config.webhooks.is_empty() {
        return Err(invalid(
            file,
            "webhooks",
            "at least one [[webhooks]] entry is needed",
        ));
    }
    let mut paths = std::collections::HashSet::new();
    for (i, wh) in config.webhooks.iter().enumerate() {
        let problem = webhook_problem(wh, &mut paths);
        if let Some((key, problem)) = problem {
            return Err(invalid(file, format!("webhooks[{i}].{key}"), problem));
        }
    }
    Ok(())
}

/// What is wrong with `[ledger]` (its key and the problem), if anything. The URL is never
/// quoted: it may hold a password.
fn ledger_problem(l: &LedgerConfig, ack_timeout: Duration) -> Option<(&'static str, String)> {
    if l.ttl < Duration::from_millis(1) {
        return Some(("ttl", "must be at least 1ms".into()));
    }
    if l.backend == LedgerBackend::Memory {
        return None;
    }
    if l.timeout < Duration::from_millis(1) || l.timeout * 4 > ack_timeout {
        // A batch may wait for a read and a write: both must leave the brokers most of the time.
        return Some((
            "timeout",
            "must be at least 1ms and at most a quarter of server.ack_timeout".into(),
        ));
    }
    if !(l.url.starts_with("redis://") || l.url.starts_with("rediss://")) {
        return Some(("url", "must start with redis:// or rediss://".into()));
    }
    if let Err(e) = redis::IntoConnectionInfo::into_connection_info(l.url.as_str()) {
        return Some(("url", format!("not a Redis URL ({:?})", e.kind())));
    }
    if l.tls.is_set() && !l.url.starts_with("rediss://") {
        return Some(("tls", "needs a rediss:// url".into()));
    }
    if l.tls.cert_file.is_some() != l.tls.key_file.is_some() {
        return Some(("tls", "cert_file and key_file go together".into()));
    }
    None
}

fn validate_server(s: &ServerConfig, file: Option<&Path>) -> Result<(), ConfigError> {
    if s.ack_timeout < Duration::from_secs(1) {
        return Err(invalid(file, "server.ack_timeout", "must be at least 1s"));
    }
    if s.keys_poll_interval < Duration::from_millis(100) {
        return Err(invalid(
            file,
            "server.keys_poll_interval",
            "must be at least 100ms",
        ));
    }
    if s.header_timeout < Duration::from_millis(100) || s.idle_timeout < Duration::from_millis(100)
    {
        return Err(invalid(
            file,
            "server.header_timeout / idle_timeout",
            "must be at least 100ms",
        ));
    }
    if s.max_connections == 0 {
        return Err(invalid(
            file,
            "server.max_connections",
            "must be at least 1",
        ));
    }
    if s.max_in_flight_batches == 0 {
        return Err(invalid(
            file,
            "server.max_in_flight_batches",
            "must be at least 1",
        ));
    }
    Ok(())
}

/// What is wrong with a webhook (its key and the problem), if anything. `paths` collects the
/// paths seen so far.
fn webhook_problem<'a>(
    wh: &'a WebhookConfig,
    paths: &mut std::collections::HashSet<&'a str>,
) -> Option<(&'static str, &'static str)> {
    let path_chars = |c: char| c.is_ascii_alphanumeric() || "/-_.~".contains(c);
    if !wh.path.starts_with('/') || !wh.path.chars().all(path_chars) {
        return Some((
            "path",
            "must start with / and use only letters, digits and / - _ . ~",
        ));
    }
    if ["/healthz", "/readyz", "/metrics"].contains(&wh.path.as_str()) {
        return Some(("path", "is an admin path"));
    }
    if !paths.insert(wh.path.as_str()) {
        return Some(("path", "used by two webhooks"));
    }
    if wh.all_keys().next().is_none() {
        return Some(("keys", "no key (give keys, keys_env or keys_file)"));
    }
    if wh
        .all_keys()
        .any(|k| k.expose_secret() == key_list::TEST_KEY)
    {
        return Some((
            "keys",
            "\"test-webhook\" is catalog360's test key, whose batches never publish",
        ));
    }
    if wh.max_events == 0 {
        return Some(("max_events", "must be at least 1"));
    }
    if wh.source.as_deref().is_some_and(|s| s.trim().is_empty()) {
        return Some((
            "source",
            "must not be empty (a URI reference such as /catalog360/main)",
        ));
    }
    if wh.max_depth < 2 {
        return Some(("max_depth", "must be at least 2 (an event is an object)"));
    }
    if wh.allow_from.as_ref().is_some_and(Vec::is_empty) {
        return Some((
            "allow_from",
            "is empty: nobody could post (leave it out to allow any address)",
        ));
    }
    None
}

/// serde_json's recursion limit, the strictest common consumer parser (webhooks' `max_depth`).
pub const DEFAULT_MAX_DEPTH: usize = 128;

/// A webhook's `source` when its configuration names none.
pub fn default_source(webhook: &str) -> String {
    format!("/catalog360/{webhook}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment's own error type
    fn keys_come_from_inline_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(&keys, "from-file-1\n\n  from-file-2  \n").unwrap();
        let cfg = dir.path().join("c.toml");
        let toml = format!(
            "[[webhooks]]\nname = \"w\"\npath = \"/h\"\nkeys = [\"inline\"]\nkeys_env = \"C360_TEST_KEYS_UNIT\"\nkeys_file = \"{}\"\n[sinks.k]\ntype = \"kafka\"\nbootstrap_servers = \"127.0.0.1:9092\"\n[[routes]]\nmatch = \"*\"\nsinks = [\"k\"]\n",
            keys.display()
        );
        std::fs::write(&cfg, toml).unwrap();
        // Jail sets the variable for this closure only.
        figment::Jail::expect_with(|jail| {
            jail.set_env("C360_TEST_KEYS_UNIT", "env-1, env-2");
            let config = load(Some(&cfg)).map_err(|e| e.to_string())?;
            let got: Vec<&str> = config.webhooks[0]
                .all_keys()
                .map(|k| k.expose_secret())
                .collect();
            assert_eq!(
                got,
                ["inline", "env-1", "env-2", "from-file-1", "from-file-2"]
            );
            Ok(())
        });
    }

    #[test]
    fn a_bad_redis_ledger_is_named_without_its_url() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        let base = "[[webhooks]]\nname = \"w\"\npath = \"/h\"\nkeys = [\"k\"]\n[ledger]\nbackend = \"redis\"\n";
        for (extra, key) in [
            ("url = \"http://user:s3cret@host/\"\n", "ledger.url"),
            (
                "url = \"redis://user:s3cret@host:notaport/\"\n",
                "ledger.url",
            ),
            ("timeout = \"10s\"\n", "ledger.timeout"),
        ] {
            std::fs::write(&cfg, format!("{base}{extra}")).unwrap();
            let err = load(Some(&cfg)).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment's own error type
    fn ledger_match_defaults_to_batch_and_comes_from_the_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        let base = "[[webhooks]]\nname = \"w\"\npath = \"/h\"\nkeys = [\"k\"]\n";
        std::fs::write(&cfg, base).unwrap();
        assert_eq!(
            load(Some(&cfg)).unwrap().ledger.matching,
            LedgerMatch::Batch
        );
        std::fs::write(&cfg, format!("{base}[ledger]\nmatch = \"event\"\n")).unwrap();
        assert_eq!(
            load(Some(&cfg)).unwrap().ledger.matching,
            LedgerMatch::Event
        );
        std::fs::write(&cfg, base).unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("C360_BRIDGE_LEDGER__MATCH", "event");
            let config = load(Some(&cfg)).map_err(|e| e.to_string())?;
            assert_eq!(config.ledger.matching, LedgerMatch::Event);
            Ok(())
        });
    }

    #[test]
    fn a_bad_ledger_match_is_named_with_the_values_it_can_take() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        let toml = "[[webhooks]]\nname = \"w\"\npath = \"/h\"\nkeys = [\"k\"]\n[ledger]\nmatch = \"bytes\"\n";
        std::fs::write(&cfg, toml).unwrap();
        let err = load(Some(&cfg)).unwrap_err().to_string();
        eprintln!("{err}");
        for want in ["c.toml", "ledger.match", "bytes", "batch", "event"] {
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn a_missing_keys_env_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            "[[webhooks]]\nname = \"w\"\npath = \"/h\"\nkeys_env = \"C360_SURELY_UNSET\"\n",
        )
        .unwrap();
        let err = load(Some(&cfg)).unwrap_err().to_string();
        assert!(
            err.contains("webhooks[0].keys_env") && err.contains("C360_SURELY_UNSET"),
            "{err}"
        );
    }
}
