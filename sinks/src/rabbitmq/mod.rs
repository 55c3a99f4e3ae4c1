//! The RabbitMQ sink: persistent messages with publisher confirms and `mandatory`, reconnecting.

mod confirms;
mod tls;

pub use tls::RabbitTls;

use crate::cloudevents;
use crate::message::CONTENT_TYPE;
use crate::{Message, Permanence, Readiness, Sink, SinkError};
use async_trait::async_trait;
use confirms::{Confirms, Identity, Outcome};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::uri::{AMQPScheme, AMQPUri, SASLMechanism};
use lapin::{BasicProperties, Channel, Connect, Connection, ConnectionProperties, ExchangeKind};
use serde::Deserialize;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// `[sinks.NAME] type = "rabbitmq"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitConfig {
    /// AMQP URI, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`, or `amqps://…` for TLS.
    pub url: String,
    /// `[sinks.NAME.tls]`: CA and client certificate for an `amqps://` URL.
    #[serde(default)]
    pub tls: RabbitTls,
    /// `plain` (the default), `amqplain`, or `external`: log in as the client certificate's
    /// subject (RabbitMQ's `rabbitmq_auth_mechanism_ssl`).
    #[serde(default)]
    pub auth_mechanism: Option<String>,
    /// Exchange every message is published to.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// `topic`, `direct`, `fanout` or `headers`.
    #[serde(default = "default_exchange_type")]
    pub exchange_type: String,
    /// Declare the exchange (durable) on connect; turn off when it is managed elsewhere.
    #[serde(default = "default_true")]
    pub declare_exchange: bool,
    /// Channels on the connection; publishes are spread over them round-robin.
    #[serde(default = "default_channels")]
    pub channels: usize,
    /// Add the CloudEvents `ce-*` headers to every message (SPEC §8).
    #[serde(default = "crate::cloudevents::default_on")]
    pub cloudevents: bool,
}

/// The AMQP heartbeat the bridge asks for when the URL sets none (`?heartbeat=N`): a silent
/// network partition is noticed after two missed heartbeats, so within 20 s.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;

fn default_exchange() -> String {
    "catalog360".into()
}
fn default_exchange_type() -> String {
    "topic".into()
}
fn default_true() -> bool {
    true
}
fn default_channels() -> usize {
    4
}

impl RabbitConfig {
    /// Checks what can be checked without connecting.
    pub fn validate(&self) -> Result<(), RabbitSetupError> {
        self.uri()?;
        self.exchange_kind().map(|_| ())
    }

    /// The parsed URL, with the bridge's heartbeat when the URL sets none and the configured
    /// login mechanism; TLS settings only with `amqps://`, and EXTERNAL only with a certificate.
    fn uri(&self) -> Result<AMQPUri, RabbitSetupError> {
        let mut uri = AMQPUri::from_str(&self.url).map_err(RabbitSetupError::Url)?;
        uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
        if let Some(m) = &self.auth_mechanism {
            let m = SASLMechanism::from_str(m)
                .map_err(|_| RabbitSetupError::AuthMechanism(m.clone()))?;
            uri.query.auth_mechanism = Some(m);
        }
        let tls = uri.scheme == AMQPScheme::AMQPS;
        let t = &self.tls;
        if !tls && (t.ca_file.is_some() || t.cert_file.is_some() || t.key_file.is_some()) {
            return Err(RabbitSetupError::Tls("tls.* needs an amqps:// url"));
        }
        if t.cert_file.is_some() != t.key_file.is_some() {
            return Err(RabbitSetupError::Tls(
                "tls.cert_file and tls.key_file go together",
            ));
        }
        if uri.query.auth_mechanism == Some(SASLMechanism::External) && !t.has_client_cert() {
            return Err(RabbitSetupError::Tls(
                "auth_mechanism = \"external\" needs tls.cert_file and tls.key_file",
            ));
        }
        Ok(uri)
    }

    /// What `check --connect` prints after `ok`: the transport and the login mechanism.
    pub fn describe_security(&self) -> String {
        let uri = self.uri().ok();
        let tls = uri.as_ref().is_some_and(|u| u.scheme == AMQPScheme::AMQPS);
        let mechanism = uri.and_then(|u| u.query.auth_mechanism).unwrap_or_default();
        let transport = match (tls, self.tls.has_client_cert()) {
            (true, true) => "mutual TLS",
            (true, false) => "TLS",
            _ => "plaintext",
        };
        format!("{transport}, {mechanism}")
    }

    /// The validated exchange type.
    fn exchange_kind(&self) -> Result<ExchangeKind, RabbitSetupError> {
        if self.channels == 0 || self.channels > 64 {
            return Err(RabbitSetupError::Channels(self.channels));
        }
        exchange_kind(&self.exchange_type)
    }
}

/// Why a RabbitMQ sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RabbitSetupError {
    #[error("exchange_type {0:?} is not one of topic, direct, fanout, headers")]
    ExchangeType(String),
    #[error("channels must be between 1 and 64, not {0}")]
    Channels(usize),
    #[error("url is not an AMQP URI: {0}")]
    Url(String),
    #[error("auth_mechanism {0:?} is not one of plain, amqplain, external")]
    AuthMechanism(String),
    #[error("{0}")]
    Tls(&'static str),
}

/// One confirm-mode channel and the collector that decides its confirms.
struct Lane {
    channel: Channel,
    confirms: Confirms,
}

/// One live connection with its confirm-mode channels.
struct Link {
    conn: Connection,
    lanes: Vec<Lane>,
    next: AtomicUsize,
}

impl Link {
    fn broken(&self) -> bool {
        !self.conn.status().connected()
            || self.lanes.iter().any(|l| !l.channel.status().connected())
    }

    fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.lanes.iter().map(|l| &l.channel)
    }

    /// Messages with the same key always take the same channel, so they keep their order;
    /// the others are spread round-robin.
    fn pick(&self, key: Option<&[u8]>) -> &Lane {
        let i = match key {
            Some(k) => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                k.hash(&mut h);
                h.finish() as usize
            }
            None => self.next.fetch_add(1, Ordering::Relaxed),
        };
        &self.lanes[i % self.lanes.len()]
    }
}

/// State shared between the sink and its reconnecting supervisor task.
struct Shared {
    name: String,
    cfg: RabbitConfig,
    uri: AMQPUri,
    kind: ExchangeKind,
    /// The last error a publish met, to say why a link broke.
    last_error: Mutex<Option<String>>,
    link: RwLock<Option<Arc<Link>>>,
    detail: Mutex<String>,
    closing: AtomicBool,
}

/// Publishes to a RabbitMQ exchange; `publish` resolves with the broker's confirm.
pub struct RabbitSink {
    shared: Arc<Shared>,
}

impl RabbitSink {
    /// Validates the configuration and starts connecting in the background; the sink is not
    /// ready (and fails publishes fast) until the first connection is up.
    pub fn new(name: &str, cfg: &RabbitConfig) -> Result<Self, RabbitSetupError> {
        let kind = cfg.exchange_kind()?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            cfg: cfg.clone(),
            uri: cfg.uri()?,
            kind,
            last_error: Mutex::new(None),
            link: RwLock::new(None),
            detail: Mutex::new("connecting".into()),
            closing: AtomicBool::new(false),
        });
        tokio::spawn(supervise(shared.clone()));
        Ok(Self { shared })
    }

    fn link(&self) -> Result<Arc<Link>, SinkError> {
        let link = self
            .shared
            .link
            .read()
            .map_err(|_| unavailable("state lock poisoned"))?
            .clone();
        match link {
            Some(l) if l.conn.status().blocked() => Err(unavailable(
                "connection blocked by the broker (resource alarm)",
            )),
            Some(l) if !l.broken() => Ok(l),
            _ => Err(unavailable(&self.shared.detail())),
        }
    }
}

impl Drop for RabbitSink {
    /// Ends the supervisor task when the sink goes away unclosed.
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Relaxed);
    }
}

fn unavailable(why: &str) -> SinkError {
    SinkError::Unavailable(why.to_owned())
}

fn exchange_kind(s: &str) -> Result<ExchangeKind, RabbitSetupError> {
    Ok(match s {
        "topic" => ExchangeKind::Topic,
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        other => return Err(RabbitSetupError::ExchangeType(other.to_owned())),
    })
}

/// One AMQP connection to `uri`, over TLS with `tls`'s files when the URL says `amqps://`.
async fn open_connection(name: &str, uri: &AMQPUri, tls: &RabbitTls) -> Result<Connection, String> {
    let over_tls = uri.scheme == AMQPScheme::AMQPS;
    let tls_config = tls.load().map_err(|e| e.to_string())?;
    let props =
        ConnectionProperties::default().with_connection_name(format!("c360-bridge/{name}").into());
    let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
    uri.clone()
        .connect_with_config(props, tls_config, runtime)
        .await
        .map_err(|e| tls::describe_connect_error(&e, over_tls))
}

/// Connects once with the sink's URL, TLS files and login, opens a channel, and closes again:
/// what `check --connect` does. `Ok` carries the transport and mechanism, `Err` the reason.
pub async fn probe(name: &str, cfg: &RabbitConfig, timeout: Duration) -> Result<String, String> {
    let uri = cfg.uri().map_err(|e| e.to_string())?;
    let attempt = async {
        let conn = open_connection(name, &uri, &cfg.tls).await?;
        let opened = conn.create_channel().await;
        let _ = conn.close(200, "c360-bridge: check --connect".into()).await;
        opened.map_err(|e| format!("cannot open a channel: {e}"))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(_)) => Ok(cfg.describe_security()),
        Ok(Err(why)) => Err(why),
        Err(_) => Err("cannot connect: timed out".into()),
    }
}

impl Shared {
    /// Records why a connection attempt failed, and logs it when the reason changed (so a
    /// broker that stays unreachable or refuses the login is said once, not every retry).
    fn refused(&self, why: String) {
        if self.detail() != why {
            tracing::warn!(sink = %self.name, "RabbitMQ not ready: {why}");
        }
        self.set(None, why);
    }

    /// Takes a broken link out of use, says why, counts the restart, and closes what is left
    /// of it (a connection whose channel the broker closed is still open).
    fn replace_broken(&self, link: Arc<Link>) {
        let connection_alive = link.conn.status().connected();
        let reason = if connection_alive {
            "channel_closed"
        } else {
            "connection_lost"
        };
        let error = self.last_error.lock().ok().and_then(|mut e| e.take());
        let detail = format!(
            "{reason}: {}",
            error.as_deref().unwrap_or("no error reported")
        );
        tracing::warn!(sink = %self.name, reason, "RabbitMQ link broken ({detail}); reconnecting");
        metrics::counter!("c360_sink_restarts_total", "sink" => self.name.clone(), "reason" => reason)
            .increment(1);
        self.set(None, format!("{detail}; reconnecting"));
        if connection_alive {
            tokio::spawn(retire(link));
        }
    }

    /// Remembers why a publish of a `body_len`-byte message failed (the broker's reply text
    /// when it closed a channel) and classifies it.
    fn note_error(&self, e: &lapin::Error, body_len: usize) -> SinkError {
        let text = e.to_string();
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(text.clone());
        }
        if too_large(e, body_len) {
            return SinkError::Permanent(Permanence::TooLarge, text);
        }
        SinkError::Unavailable(text)
    }

    fn detail(&self) -> String {
        self.detail.lock().map(|d| d.clone()).unwrap_or_default()
    }

    fn set(&self, link: Option<Arc<Link>>, detail: String) {
        if let Ok(mut l) = self.link.write() {
            *l = link;
        }
        if let Ok(mut d) = self.detail.lock() {
            *d = detail;
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a replaced connection may wait for its outstanding confirms before it is closed.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// Keeps one connection up: connects, watches it, and reconnects with backoff when it breaks.
async fn supervise(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    while !shared.closing.load(Ordering::Relaxed) {
        match tokio::time::timeout(CONNECT_TIMEOUT, connect(&shared)).await {
            Ok(Ok(link)) => {
                tracing::info!(sink = %shared.name, channels = link.lanes.len(), "RabbitMQ connected");
                backoff = Duration::from_millis(100);
                shared.set(Some(link.clone()), "connected".into());
                while !link.broken() && !shared.closing.load(Ordering::Relaxed) {
                    tokio::time::sleep(WATCH_INTERVAL).await;
                }
                if shared.closing.load(Ordering::Relaxed) {
                    return;
                }
                shared.replace_broken(link);
            }
            Ok(Err(why)) => shared.refused(why),
            Err(_) => shared.refused("cannot connect: timed out".into()),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Lets the confirms still outstanding on a replaced link arrive, then closes its connection.
async fn retire(link: Arc<Link>) {
    let closing = drain_and_close(&link, "c360-bridge: link replaced");
    let _ = tokio::time::timeout(RETIRE_TIMEOUT, closing).await;
}

/// Waits for the link's outstanding confirms, then closes its connection with `reason`.
async fn drain_and_close(link: &Link, reason: &str) -> Result<(), lapin::Error> {
    for ch in link.channels() {
        let _ = ch.wait_for_confirms().await;
    }
    link.conn.close(200, reason.into()).await
}

/// Opens a connection (reading the TLS files afresh) and its confirm-mode channels; a connection
/// whose setup failed is closed again rather than left open on the broker. The error is worded
/// for `/readyz`.
async fn connect(shared: &Shared) -> Result<Arc<Link>, String> {
    let conn = open_connection(&shared.name, &shared.uri, &shared.cfg.tls).await?;
    let setup = open_channels(shared, &conn).await;
    match setup.map_err(|e| format!("cannot set up the channels: {e}")) {
        Ok(channels) => Ok(Arc::new(Link {
            conn,
            lanes: channels
                .into_iter()
                .map(|channel| Lane {
                    confirms: Confirms::start(channel.clone()),
                    channel,
                })
                .collect(),
            next: AtomicUsize::new(0),
        })),
        Err(e) => {
            let close = conn.close(200, "c360-bridge: setup failed".into());
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, close).await;
            Err(e)
        }
    }
}

/// The confirm-mode channels, after declaring the exchange (passively when the bridge does not
/// own it, so a missing exchange keeps the sink not ready).
async fn open_channels(shared: &Shared, conn: &Connection) -> Result<Vec<Channel>, lapin::Error> {
    let mut channels = Vec::with_capacity(shared.cfg.channels);
    for _ in 0..shared.cfg.channels {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(ch);
    }
    let opts = ExchangeDeclareOptions {
        durable: true,
        passive: !shared.cfg.declare_exchange,
        ..Default::default()
    };
    channels[0]
        .exchange_declare(
            shared.cfg.exchange.as_str().into(),
            shared.kind.clone(),
            opts,
            FieldTable::default(),
        )
        .await?;
    Ok(channels)
}

/// Whether `e` is RabbitMQ refusing THIS message (of `body_len` bytes) as larger than its
/// `max_message_size`. The broker closes the channel (406 PRECONDITION_FAILED, "message size N
/// is larger than [configured] max size M") and lapin hands that error to every confirm still
/// pending on the channel; only the message whose size is N is the one refused, the others
/// failed with it and are transient.
fn too_large(e: &lapin::Error, body_len: usize) -> bool {
    let lapin::ErrorKind::ProtocolError(amqp) = e.kind() else {
        return false;
    };
    if amqp.get_id() != 406 {
        return false;
    }
    // The reply text reads "PRECONDITION_FAILED - message size N is larger than ...".
    let text = amqp.get_message().as_str();
    let size = text
        .split_once("message size ")
        .and_then(|(_, rest)| rest.split_once(" is larger than "))
        .and_then(|(n, _)| n.parse::<usize>().ok());
    size == Some(body_len)
}

fn properties(msg: &Message, cloudevents: bool) -> BasicProperties {
    let mut table = FieldTable::default();
    for (key, value) in msg.headers(&cloudevents::AMQP, cloudevents) {
        table.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(CONTENT_TYPE.into())
        .with_message_id(msg.meta.id.as_str().into())
        .with_headers(table)
}

#[async_trait]
impl Sink for RabbitSink {
    fn messaging(&self) -> crate::Messaging {
        crate::Messaging {
            system: "rabbitmq",
            exchange: Some(self.shared.cfg.exchange.clone()),
        }
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    /// Resolves with the broker's word on this very message: its confirm, and whether RabbitMQ
    /// returned it (matched by its own id and routing key, see `confirms`).
    async fn publish(&self, msg: &Message) -> Result<(), SinkError> {
        let link = self.link()?;
        let opts = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let exchange = self.shared.cfg.exchange.as_str().into();
        let lane = link.pick(msg.key.as_deref());
        let ticket = lane.confirms.ticket();
        let confirm = lane
            .channel
            .basic_publish(
                exchange,
                msg.destination.as_str().into(),
                opts,
                &msg.body,
                properties(msg, self.shared.cfg.cloudevents),
            )
            .await
            .map_err(|e| self.shared.note_error(&e, msg.body.len()))?;
        let identity = Identity {
            message_id: msg.meta.id.clone(),
            routing_key: msg.destination.clone(),
        };
        match ticket.submit(confirm, identity).await {
            Ok(Outcome::Confirmed) => Ok(()),
            Ok(Outcome::Returned) => Err(SinkError::Unroutable(format!(
                "no queue bound for routing key {:?}",
                msg.destination
            ))),
            Ok(Outcome::Nacked) => Err(SinkError::Refused("broker nacked the message".into())),
            Ok(Outcome::NotRequested) => {
                Err(SinkError::Refused("publisher confirms are off".into()))
            }
            Ok(Outcome::Failed(e)) => Err(self.shared.note_error(&e, msg.body.len())),
            Err(_) => Err(unavailable("the channel's confirm collector stopped")),
        }
    }

    fn readiness(&self) -> Readiness {
        match self.link() {
            Ok(_) => Readiness::ready("connected"),
            Err(e) => Readiness::not_ready(e.to_string()),
        }
    }

    async fn close(&self, deadline: Duration) {
        self.shared.closing.store(true, Ordering::Relaxed);
        let link = self.shared.link.read().ok().and_then(|l| l.clone());
        if let Some(link) = link {
            let closing = drain_and_close(&link, "c360-bridge shutting down");
            match tokio::time::timeout(deadline, closing).await {
                Ok(Ok(())) => {
                    tracing::info!(sink = %self.shared.name, "RabbitMQ connection closed")
                }
                Ok(Err(e)) => {
                    tracing::warn!(sink = %self.shared.name, error = %e, "RabbitMQ close failed")
                }
                Err(_) => tracing::warn!(sink = %self.shared.name, "RabbitMQ close timed out"),
            }
        }
        self.shared.set(None, "closed".into());
    }
}

/// An AMQP routing key is at most 255 bytes.
fn routing_key_legal(d: &str) -> Result<(), String> {
    if d.len() <= 255 {
        Ok(())
    } else {
        Err(format!(
            "a routing key of {} bytes, over AMQP's 255",
            d.len()
        ))
    }
}

/// AMQP's rules for routing keys.
pub const ROUTING_KEYS: crate::DestinationRules = crate::DestinationRules {
    noun: "routing key",
    literal: crate::kind::anything,
    check: routing_key_legal,
};

#[async_trait]
impl crate::SinkKind for RabbitConfig {
    fn type_name(&self) -> &'static str {
        "rabbitmq"
    }
    fn default_topic(&self) -> &'static str {
        "{event_class}"
    }
    fn validate(&self) -> Result<(), String> {
        RabbitConfig::validate(self).map_err(|e| e.to_string())
    }
    fn cloudevents(&self) -> bool {
        self.cloudevents
    }
    fn cloudevents_names(&self) -> &'static cloudevents::Names {
        &cloudevents::AMQP
    }
    fn destinations(&self) -> crate::DestinationRules {
        ROUTING_KEYS
    }
    fn build(&self, name: &str, _ctx: &crate::BuildContext) -> Result<Arc<dyn Sink>, String> {
        RabbitSink::new(name, self)
            .map(|s| Arc::new(s) as Arc<dyn Sink>)
            .map_err(|e| e.to_string())
    }
    async fn probe(&self, name: &str, timeout: Duration) -> Result<String, String> {
        probe(name, self, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> RabbitConfig {
        RabbitConfig {
            url: url.into(),
            exchange: default_exchange(),
            exchange_type: default_exchange_type(),
            declare_exchange: true,
            channels: 1,
            cloudevents: true,
            tls: RabbitTls::default(),
            auth_mechanism: None,
        }
    }

    #[test]
    fn tls_settings_need_amqps_and_external_needs_a_client_certificate() {
        let mut c = cfg("amqp://127.0.0.1:5672/%2f");
        c.tls.ca_file = Some("ca.pem".into());
        assert!(c.validate().is_err(), "tls.ca_file with amqp://");
        let mut c = cfg("amqps://127.0.0.1:5671/%2f");
        c.auth_mechanism = Some("external".into());
        assert!(c.validate().is_err(), "external without a certificate");
        c.tls.cert_file = Some("c.pem".into());
        assert!(c.validate().is_err(), "cert_file without key_file");
        c.tls.key_file = Some("c.key".into());
        c.validate().expect("external with a client certificate");
        assert_eq!(c.describe_security(), "mutual TLS, EXTERNAL");
        c.auth_mechanism = Some("kerberos".into());
        assert!(c.validate().is_err(), "an unknown mechanism");
    }

    fn closed_with(code: u16, text: &str) -> lapin::Error {
        let amqp = lapin::protocol::AMQPError::from_id(code, text.into()).expect("known code");
        lapin::ErrorKind::ProtocolError(amqp).into()
    }

    #[test]
    fn only_the_message_rabbitmq_found_too_large_is_permanent() {
        let size = closed_with(
            406,
            "PRECONDITION_FAILED - message size 3000 is larger than configured max size 2000",
        );
        assert!(too_large(&size, 3000));
        // The other confirms pending on the closed channel get the same error: transient.
        assert!(!too_large(&size, 120));
        let default_max = closed_with(
            406,
            "PRECONDITION_FAILED - message size 3000 is larger than max size 2000",
        );
        assert!(too_large(&default_max, 3000));
        // Other channel closes and a dropped connection: transient (the link is rebuilt).
        for e in [
            closed_with(406, "PRECONDITION_FAILED - inequivalent arg 'durable'"),
            closed_with(404, "NOT_FOUND - no exchange 'x' in vhost '/'"),
            closed_with(403, "ACCESS_REFUSED - write access to exchange 'x' refused"),
            lapin::ErrorKind::MissingHeartbeatError.into(),
        ] {
            assert!(!too_large(&e, 3000), "{e}");
        }
    }

    #[test]
    fn cloudevents_headers_follow_the_sink_setting() {
        let msg = Message::sample();
        let names = |p: BasicProperties| -> Vec<String> {
            p.headers()
                .as_ref()
                .map(|t| t.inner().keys().map(|k| k.to_string()).collect())
                .unwrap_or_default()
        };
        let on = names(properties(&msg, true));
        assert_eq!(on.len(), 10, "{on:?}");
        assert!(on.contains(&"ce-id".to_owned()) && on.contains(&"ce-subject".to_owned()));
        assert!(
            names(properties(&msg, false))
                .iter()
                .all(|h| h.starts_with("c360-"))
        );
    }

    #[test]
    fn a_url_without_heartbeat_gets_the_bridges_so_partitions_are_noticed() {
        let uri = cfg("amqp://guest:guest@127.0.0.1:5672/%2f")
            .uri()
            .expect("uri");
        assert_eq!(uri.query.heartbeat, Some(DEFAULT_HEARTBEAT_SECS));
        let own = cfg("amqp://127.0.0.1:5672/%2f?heartbeat=3")
            .uri()
            .expect("uri");
        assert_eq!(own.query.heartbeat, Some(3));
    }
}
