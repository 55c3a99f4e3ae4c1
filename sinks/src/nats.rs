//! The NATS JetStream sink: JetStream publishes whose PubAck is the confirm, deduplicated by
//! `Nats-Msg-Id`, over one self-healing connection.
//!
//! async-nats keeps the connection up by itself (reconnecting with backoff, re-reading the TLS
//! files on every attempt); the sink watches its events to say why it is not ready, logs each
//! change of state once, fails publishes fast while the connection is down (instead of letting
//! the client queue them for later), and creates the configured stream after every (re)connect
//! when it is missing.

use crate::cloudevents::{self, Names};
use crate::message::CONTENT_TYPE;
use crate::{Message, Permanence, Readiness, Sink, SinkError};
use async_nats::connection::State;
use async_nats::header::{HeaderMap, HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::{Client, ConnectOptions, Event};
use async_trait::async_trait;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;

/// `[sinks.NAME] type = "nats"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs, comma-separated: `nats://host:4222`, or `tls://host:4222` for TLS.
    pub url: String,
    /// A `.creds` file (user JWT and NKey seed), as NATS account tooling writes it.
    pub creds_file: Option<PathBuf>,
    /// A file holding an NKey seed (`SU…`).
    pub nkey_seed_file: Option<PathBuf>,
    /// A server token.
    pub token: Option<String>,
    /// User name; goes with `password`.
    pub user: Option<String>,
    pub password: Option<String>,
    /// `[sinks.NAME.tls]`: CA to verify the server with (else the system's CAs) and a client
    /// certificate; setting any of them requires TLS.
    #[serde(default)]
    pub tls: NatsTls,
    /// Create this stream after connecting when it does not exist (absent: never create).
    pub create_stream: Option<CreateStream>,
    /// Add the CloudEvents `ce-*` headers to every message (SPEC §8, the NATS binding).
    #[serde(default = "crate::cloudevents::default_on")]
    pub cloudevents: bool,
}

/// Secrets stay out of `Debug` (a config may be printed in an error).
impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("auth", &self.auth_method())
            .field("tls", &self.tls)
            .field("create_stream", &self.create_stream)
            .field("cloudevents", &self.cloudevents)
            .finish()
    }
}

/// `[sinks.NAME.tls]` (PEM files).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// `create_stream = { name, subjects, duplicate_window }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStream {
    pub name: String,
    /// Subjects the stream captures (wildcards allowed, e.g. `catalog360.>`).
    pub subjects: Vec<String>,
    /// How long JetStream remembers a `Nats-Msg-Id` to store a resend once.
    #[serde(with = "humantime_serde", default = "default_duplicate_window")]
    pub duplicate_window: Duration,
}

fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}

/// Why a NATS sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NatsSetupError {
    #[error("url: {0}")]
    Url(String),
    #[error("auth: {0}")]
    Auth(&'static str),
    #[error("{key}: cannot read {path}: {error}")]
    File {
        key: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("{key}: {error}")]
    Credentials { key: &'static str, error: String },
    #[error("tls: {0}")]
    Tls(&'static str),
    #[error("create_stream: {0}")]
    Stream(String),
}

/// The NATS binding's names of the CloudEvents attributes: `ce-` headers.
pub const NAMES: &Names = &cloudevents::NATS;

impl NatsConfig {
    /// Checks what can be checked without connecting.
    pub fn validate(&self) -> Result<(), NatsSetupError> {
        let servers = self.servers()?;
        if servers.is_empty() {
            return Err(NatsSetupError::Url("names no server".into()));
        }
        let methods = [
            self.creds_file.is_some(),
            self.nkey_seed_file.is_some(),
            self.token.is_some(),
            self.user.is_some() || self.password.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(NatsSetupError::Auth(
                "use one of creds_file, nkey_seed_file, token, user + password",
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(NatsSetupError::Auth("user and password go together"));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(NatsSetupError::Tls(
                "tls.cert_file and tls.key_file go together",
            ));
        }
        if let Some(s) = &self.create_stream {
            if s.name.is_empty() || s.name.contains(['.', '*', '>', ' ', '/', '\\']) {
                return Err(NatsSetupError::Stream(format!(
                    "name {:?} is not a stream name (no . * > / \\ or spaces)",
                    s.name
                )));
            }
            if s.subjects.is_empty() {
                return Err(NatsSetupError::Stream("subjects is empty".into()));
            }
            if let Some(bad) = s.subjects.iter().find(|x| !subject_filter_ok(x)) {
                return Err(NatsSetupError::Stream(format!(
                    "{bad:?} is not a subject (tokens separated by '.', no spaces)"
                )));
            }
        }
        Ok(())
    }

    /// The server URLs, trimmed; each must parse as a NATS server address.
    fn servers(&self) -> Result<Vec<async_nats::ServerAddr>, NatsSetupError> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<async_nats::ServerAddr>()
                    .map_err(|e| NatsSetupError::Url(format!("{e}")))
            })
            .collect()
    }

    /// `host:port` of the first server, without a user or password (for documents and logs).
    pub fn first_server(&self) -> Option<String> {
        let first = self.servers().ok()?.into_iter().next()?;
        Some(format!("{}:{}", first.host(), first.port()))
    }

    /// Whether the connection is over TLS (a `tls://` URL or any `tls.*` file).
    pub fn tls_wanted(&self) -> bool {
        let t = &self.tls;
        self.url.split(',').any(|u| u.trim().starts_with("tls://"))
            || t.ca_file.is_some()
            || t.cert_file.is_some()
    }

    fn auth_method(&self) -> &'static str {
        if self.creds_file.is_some() {
            "creds"
        } else if self.nkey_seed_file.is_some() {
            "nkey"
        } else if self.token.is_some() {
            "token"
        } else if self.user.is_some() {
            "user/password"
        } else {
            "no auth"
        }
    }

    /// What `check --connect` prints after `ok`: the transport and the login.
    pub fn describe_security(&self) -> String {
        let transport = match (self.tls_wanted(), self.tls.cert_file.is_some()) {
            (true, true) => "mutual TLS",
            (true, false) => "TLS",
            _ => "plaintext",
        };
        format!("{transport}, {}", self.auth_method())
    }

    /// The client options: login (reading its files now), TLS, and the bridge's name.
    fn options(&self, name: &str) -> Result<ConnectOptions, NatsSetupError> {
        let read = |key: &'static str, path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|error| NatsSetupError::File {
                key,
                path: path.display().to_string(),
                error,
            })
        };
        let mut o = ConnectOptions::new().name(format!("c360-bridge/{name}"));
        if let Some(path) = &self.creds_file {
            o = o.credentials(&read("creds_file", path)?).map_err(|e| {
                NatsSetupError::Credentials {
                    key: "creds_file",
                    error: e.to_string(),
                }
            })?;
        } else if let Some(path) = &self.nkey_seed_file {
            let seed = read("nkey_seed_file", path)?.trim().to_owned();
            if !seed.starts_with('S') || seed.contains(char::is_whitespace) {
                return Err(NatsSetupError::Credentials {
                    key: "nkey_seed_file",
                    error: "not an NKey seed (one line starting with S)".into(),
                });
            }
            o = o.nkey(seed);
        } else if let Some(token) = &self.token {
            o = o.token(token.clone());
        } else if let (Some(u), Some(p)) = (&self.user, &self.password) {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if self.tls_wanted() {
            o = o.require_tls(true);
        }
        if let Some(ca) = &self.tls.ca_file {
            o = o.add_root_certificates(ca.clone());
        }
        if let (Some(c), Some(k)) = (&self.tls.cert_file, &self.tls.key_file) {
            o = o.add_client_certificate(c.clone(), k.clone());
        }
        Ok(o)
    }
}

/// Whether `s` is a subject or a subscription filter: non-empty tokens separated by '.', no
/// white space, `>` only last.
fn subject_filter_ok(s: &str) -> bool {
    let tokens: Vec<&str> = s.split('.').collect();
    !s.is_empty()
        && tokens.iter().enumerate().all(|(i, t)| {
            !t.is_empty()
                && !t.contains(char::is_whitespace)
                && (*t != ">" || i + 1 == tokens.len())
                && (!t.contains(['*', '>']) || *t == "*" || *t == ">")
        })
}

/// Why `subject` cannot be published to (no wildcards, no empty tokens, no white space), if
/// it cannot: NATS refuses it for good, whatever the server's state.
pub fn illegal_subject(subject: &str) -> Option<String> {
    let ok = !subject.is_empty()
        && subject.split('.').all(|t| {
            !t.is_empty() && !t.contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
        });
    (!ok).then(|| {
        "which NATS does not allow (non-empty tokens separated by '.', no spaces, no * or >)".into()
    })
}

/// One live client and its JetStream context.
struct Link {
    client: Client,
    js: async_nats::jetstream::Context,
}

/// State shared between the sink, the client's event callback and the stream keeper.
struct Shared {
    name: String,
    cfg: NatsConfig,
    link: OnceLock<Link>,
    /// Why the sink is not ready (or `connected`), logged when it changes.
    detail: Mutex<String>,
    /// With `create_stream`: the stream is known to exist on the current connection.
    stream_ok: AtomicBool,
    /// Woken on every (re)connect, for the stream keeper.
    connected: Notify,
    closing: AtomicBool,
}

/// Publishes to NATS JetStream; `publish` resolves with the stream's PubAck.
pub struct NatsSink {
    shared: Arc<Shared>,
}

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a missing stream is looked at again while it cannot be created.
const STREAM_RETRY: Duration = Duration::from_secs(2);

impl NatsSink {
    /// Validates the configuration, reads the login files, and starts connecting in the
    /// background; the sink is not ready (and fails publishes fast) until connected.
    /// `ack_wait` bounds the wait for one PubAck.
    pub fn new(name: &str, cfg: &NatsConfig, ack_wait: Duration) -> Result<Self, NatsSetupError> {
        cfg.validate()?;
        let servers = cfg.servers()?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            cfg: cfg.clone(),
            link: OnceLock::new(),
            detail: Mutex::new("connecting".into()),
            stream_ok: AtomicBool::new(cfg.create_stream.is_none()),
            connected: Notify::new(),
            closing: AtomicBool::new(false),
        });
        let events = Arc::downgrade(&shared);
        let options = cfg
            .options(name)?
            .connection_timeout(CONNECT_TIMEOUT)
            .ping_interval(Duration::from_secs(10))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                let shared = events.upgrade();
                async move {
                    if let Some(s) = shared {
                        s.on_event(event);
                    }
                }
            });
        let task = shared.clone();
        tokio::spawn(async move {
            match options.connect(servers).await {
                Ok(client) => {
                    let js = async_nats::jetstream::ContextBuilder::new()
                        .timeout(ack_wait)
                        .build(client.clone());
                    let _ = task.link.set(Link { client, js });
                    if task.cfg.create_stream.is_some() {
                        keep_stream(task).await;
                    }
                }
                Err(e) => task.refused(format!("cannot connect: {e}")),
            }
        });
        Ok(Self { shared })
    }

    /// The live link, or why there is none usable right now.
    fn link(&self) -> Result<&Link, SinkError> {
        match self.shared.link.get() {
            Some(l) if l.client.connection_state() == State::Connected => {
                if self.shared.stream_ok.load(Ordering::Relaxed) {
                    Ok(l)
                } else {
                    let detail = self.shared.detail();
                    Err(unavailable(if detail == "connected" {
                        "connected; looking for the stream to create"
                    } else {
                        &detail
                    }))
                }
            }
            _ => Err(unavailable(&self.shared.detail())),
        }
    }
}

impl Drop for NatsSink {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        self.shared.connected.notify_waiters();
    }
}

fn unavailable(why: &str) -> SinkError {
    SinkError::Unavailable(why.to_owned())
}

impl Shared {
    fn detail(&self) -> String {
        self.detail.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Sets the reason; says whether it changed.
    fn set_detail(&self, why: String) -> bool {
        match self.detail.lock() {
            Ok(mut d) if *d != why => {
                *d = why;
                true
            }
            _ => false,
        }
    }

    /// A reason the sink is not ready, logged once per change.
    fn refused(&self, why: String) {
        if self.set_detail(why.clone()) {
            tracing::warn!(sink = %self.name, "NATS not ready: {why}");
        }
    }

    /// The client's word on its connection.
    fn on_event(&self, event: Event) {
        match event {
            Event::Connected => {
                if self.set_detail("connected".into()) {
                    tracing::info!(sink = %self.name, "NATS connected");
                }
                self.connected.notify_waiters();
            }
            Event::Disconnected => {
                if self.cfg.create_stream.is_some() {
                    self.stream_ok.store(false, Ordering::Relaxed);
                }
                self.refused("disconnected; reconnecting".into());
            }
            Event::ClientError(async_nats::ClientError::Other(kind)) => {
                self.refused(describe_connect_kind(&kind))
            }
            Event::ServerError(async_nats::ServerError::AuthorizationViolation) => {
                self.refused("authentication failed: authorization violation".into())
            }
            Event::LameDuckMode => {
                tracing::info!(sink = %self.name, "NATS server entered lame duck mode")
            }
            other => tracing::debug!(sink = %self.name, "NATS event: {other}"),
        }
    }
}

/// The client's connect-failure kind, worded for `/readyz` like the other sinks' reasons.
fn describe_connect_kind(kind: &str) -> String {
    match kind {
        "TLS error" => "tls: handshake failed (check --connect says why)".into(),
        "authorization violation" | "failed signing nonce" => {
            format!("authentication failed: {kind}")
        }
        "timed out" => "cannot connect: timed out".into(),
        other => format!("cannot connect: {other}"),
    }
}

/// With `create_stream`: after every (re)connect, makes sure the stream exists (creating it
/// when missing), and says why not until it does.
async fn keep_stream(shared: Arc<Shared>) {
    let Some(cfg) = shared.cfg.create_stream.clone() else {
        return;
    };
    let Some(link) = shared.link.get() else {
        return;
    };
    while !shared.closing.load(Ordering::Relaxed) {
        let notified = shared.connected.notified();
        if link.client.connection_state() == State::Connected
            && !shared.stream_ok.load(Ordering::Relaxed)
        {
            match ensure_stream(&link.js, &cfg).await {
                Ok(created) => {
                    if created {
                        tracing::info!(sink = %shared.name, stream = %cfg.name, "NATS stream created");
                    }
                    shared.stream_ok.store(true, Ordering::Relaxed);
                    shared.set_detail("connected".into());
                }
                Err(why) => shared.refused(format!("create_stream {}: {why}", cfg.name)),
            }
        }
        if shared.stream_ok.load(Ordering::Relaxed) {
            notified.await;
        } else {
            let _ = tokio::time::timeout(STREAM_RETRY, notified).await;
        }
    }
}

/// Looks the stream up and creates it when missing; `Ok(true)` when it was created.
async fn ensure_stream(
    js: &async_nats::jetstream::Context,
    cfg: &CreateStream,
) -> Result<bool, String> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    match js.get_stream(&cfg.name).await {
        Ok(_) => return Ok(false),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(j)
                if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND => {}
            _ => return Err(e.to_string()),
        },
    }
    let config = stream::Config {
        name: cfg.name.clone(),
        subjects: cfg.subjects.clone(),
        duplicate_window: cfg.duplicate_window,
        storage: StorageType::File,
        ..Default::default()
    };
    match js.create_stream(config).await {
        Ok(_) => Ok(true),
        Err(e) => Err(e.to_string()),
    }
}

/// Connects once with the sink's URL, login and TLS files, checks JetStream answers, and
/// closes again: what `check --connect` does. `Ok` says the server, transport and login.
pub async fn probe(name: &str, cfg: &NatsConfig, timeout: Duration) -> Result<String, String> {
    let attempt = async {
        cfg.validate().map_err(|e| e.to_string())?;
        let servers = cfg.servers().map_err(|e| e.to_string())?;
        let options = cfg
            .options(name)
            .map_err(|e| e.to_string())?
            .connection_timeout(timeout);
        let client = options
            .connect(servers)
            .await
            .map_err(|e| describe_connect_error(&e))?;
        let info = client.server_info();
        let js = async_nats::jetstream::new(client.clone());
        let account = jetstream_answers(&client).await;
        let stream = match (&account, &cfg.create_stream) {
            (Ok(()), Some(s)) => match js.get_stream(&s.name).await {
                Ok(_) => format!(", stream {} exists", s.name),
                Err(_) => format!(", stream {} will be created", s.name),
            },
            _ => String::new(),
        };
        let _ = client.drain().await;
        account.map_err(|e| format!("JetStream not available: {e}"))?;
        Ok(format!(
            "nats-server {}, JetStream, {}{stream}",
            info.version,
            cfg.describe_security()
        ))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err("cannot connect: timed out".into()),
    }
}

/// Whether JetStream answers for this account (`$JS.API.INFO`); read as plain JSON, since the
/// client's typed account info expects fields only newer servers send.
async fn jetstream_answers(client: &Client) -> Result<(), String> {
    let reply = client
        .request("$JS.API.INFO", bytes::Bytes::new())
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => "not enabled on the server".to_owned(),
            _ => e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&reply.payload);
    if text.contains("\"error\"") {
        return Err(text.into_owned());
    }
    Ok(())
}

/// A failed connect, worded like the other sinks' (`tls: …`, `authentication failed: …`).
fn describe_connect_error(e: &async_nats::ConnectError) -> String {
    use async_nats::ConnectErrorKind as K;
    let detail = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.kind().to_string());
    match e.kind() {
        K::Tls => format!("tls: {detail}"),
        K::Authentication | K::AuthorizationViolation => {
            format!("authentication failed: {detail}")
        }
        _ => format!("cannot connect: {detail}"),
    }
}

/// Every header of `msg`: `Nats-Msg-Id`, the `c360-*` ones, `content-type`, and (with
/// `cloudevents`) the `ce-*` attributes. A value NATS cannot carry (a CR or LF in it) makes the
/// message one that can never be published as it is.
fn headers(msg: &Message, cloudevents: bool) -> Result<HeaderMap, SinkError> {
    let mut map = HeaderMap::new();
    let value = |v: &str| {
        v.parse::<HeaderValue>().map_err(|_| {
            SinkError::Permanent(
                Permanence::InvalidRecord,
                "a header value holds a CR or LF, which NATS headers cannot carry".into(),
            )
        })
    };
    map.insert(NATS_MESSAGE_ID, value(&msg.meta.id)?);
    for (name, v) in msg.headers(NAMES, cloudevents) {
        map.insert(name, value(v)?);
    }
    map.insert("content-type", value(CONTENT_TYPE)?);
    Ok(map)
}

/// A failed JetStream publish, classified: no stream is unroutable, a lost connection or a
/// missing PubAck is transient, a message over the limits is permanent.
fn classify(e: PublishError, subject: &str) -> SinkError {
    let text = e.to_string();
    match e.kind() {
        PublishErrorKind::StreamNotFound => {
            SinkError::Unroutable(format!("no JetStream stream captures subject {subject:?}"))
        }
        PublishErrorKind::TimedOut => SinkError::Timeout(format!("no PubAck: {text}")),
        PublishErrorKind::BrokenPipe => {
            SinkError::Unavailable(format!("connection lost before the PubAck: {text}"))
        }
        PublishErrorKind::MaxAckPending => SinkError::Overloaded(text),
        PublishErrorKind::MaxPayloadExceeded => SinkError::Permanent(Permanence::TooLarge, text),
        _ => {
            let js = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>());
            match js.map(|j| j.error_code()) {
                Some(async_nats::jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM) => {
                    SinkError::Permanent(Permanence::TooLarge, text)
                }
                _ => SinkError::Refused(text),
            }
        }
    }
}

#[async_trait]
impl Sink for NatsSink {
    fn messaging(&self) -> crate::Messaging {
        crate::Messaging {
            system: "nats",
            exchange: None,
        }
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    /// Resolves with the stream's PubAck for this message; a PubAck saying `duplicate` (the
    /// stream already holds this `Nats-Msg-Id`) is a confirm too.
    async fn publish(&self, msg: &Message) -> Result<(), SinkError> {
        if let Some(why) = illegal_subject(&msg.destination) {
            return Err(SinkError::Permanent(
                Permanence::IllegalDestination,
                format!("{:?} {why}", msg.destination),
            ));
        }
        let link = self.link()?;
        let publish = PublishMessage::build()
            .payload(msg.body.clone())
            .headers(headers(msg, self.shared.cfg.cloudevents)?);
        let ack = link
            .js
            .send_publish(msg.destination.clone(), publish)
            .await
            .map_err(|e| classify(e, &msg.destination))?;
        ack.await
            .map(|_| ())
            .map_err(|e| classify(e, &msg.destination))
    }

    fn readiness(&self) -> Readiness {
        match self.link() {
            Ok(_) => Readiness::ready("connected"),
            Err(e) => Readiness::not_ready(e.detail().to_owned()),
        }
    }

    async fn close(&self, deadline: Duration) {
        self.shared.closing.store(true, Ordering::Relaxed);
        self.shared.connected.notify_waiters();
        if let Some(link) = self.shared.link.get() {
            match tokio::time::timeout(deadline, link.client.drain()).await {
                Ok(Ok(())) => tracing::info!(sink = %self.shared.name, "NATS connection closed"),
                Ok(Err(e)) => {
                    tracing::warn!(sink = %self.shared.name, error = %e, "NATS close failed")
                }
                Err(_) => tracing::warn!(sink = %self.shared.name, "NATS close timed out"),
            }
        }
        self.shared.set_detail("closed".into());
    }
}

/// The literal text of a subject template: no white space, no wildcards.
fn subject_literal(s: &str) -> Result<(), String> {
    if s.contains(|c: char| c.is_whitespace() || c == '*' || c == '>') {
        Err("has characters a NATS subject cannot have (white space, * or >)".into())
    } else {
        Ok(())
    }
}

fn subject_legal(d: &str) -> Result<(), String> {
    match illegal_subject(d) {
        None => Ok(()),
        Some(why) => Err(format!("subject {d:?}, {why}")),
    }
}

/// NATS's rules for subjects to publish to.
pub const SUBJECTS: crate::DestinationRules = crate::DestinationRules {
    noun: "subject",
    literal: subject_literal,
    check: subject_legal,
};

#[async_trait]
impl crate::SinkKind for NatsConfig {
    fn type_name(&self) -> &'static str {
        "nats"
    }
    fn default_topic(&self) -> &'static str {
        "catalog360.{event_class}"
    }
    fn validate(&self) -> Result<(), String> {
        NatsConfig::validate(self).map_err(|e| e.to_string())
    }
    fn cloudevents(&self) -> bool {
        self.cloudevents
    }
    fn cloudevents_names(&self) -> &'static Names {
        NAMES
    }
    fn destinations(&self) -> crate::DestinationRules {
        SUBJECTS
    }
    fn build(&self, name: &str, ctx: &crate::BuildContext) -> Result<Arc<dyn Sink>, String> {
        NatsSink::new(name, self, ctx.confirm_within)
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

    fn cfg(url: &str) -> NatsConfig {
        NatsConfig {
            url: url.into(),
            creds_file: None,
            nkey_seed_file: None,
            token: None,
            user: None,
            password: None,
            tls: NatsTls::default(),
            create_stream: None,
            cloudevents: true,
        }
    }

    #[test]
    fn one_login_at_most_and_pairs_go_together() {
        cfg("nats://127.0.0.1:4222, nats://127.0.0.1:4223")
            .validate()
            .expect("two servers");
        let mut c = cfg("nats://127.0.0.1:4222");
        c.token = Some("t".into());
        c.user = Some("u".into());
        c.password = Some("p".into());
        assert!(c.validate().is_err(), "token and user/password");
        c.token = None;
        c.validate().expect("user + password");
        c.password = None;
        assert!(c.validate().is_err(), "user without password");
        let mut c = cfg("tls://127.0.0.1:4222");
        c.tls.cert_file = Some("c.pem".into());
        assert!(c.validate().is_err(), "cert without key");
        c.tls.key_file = Some("c.key".into());
        c.validate().expect("mutual TLS");
        assert_eq!(c.describe_security(), "mutual TLS, no auth");
        assert!(format!("{:?}", cfg("nats://x:1")).contains("no auth"));
    }

    #[test]
    fn stream_settings_are_checked() {
        let mut c = cfg("nats://127.0.0.1:4222");
        c.create_stream = Some(CreateStream {
            name: "CATALOG360".into(),
            subjects: vec!["catalog360.>".into()],
            duplicate_window: default_duplicate_window(),
        });
        c.validate().expect("valid stream");
        for (name, subject) in [("A.B", "x"), ("A", "a.>.b"), ("A", "a..b"), ("A", "a b")] {
            c.create_stream = Some(CreateStream {
                name: name.into(),
                subjects: vec![subject.into()],
                duplicate_window: default_duplicate_window(),
            });
            assert!(c.validate().is_err(), "{name} {subject}");
        }
    }

    #[test]
    fn subjects_that_cannot_be_published_to() {
        assert_eq!(illegal_subject("catalog360.task_created"), None);
        assert_eq!(illegal_subject("catalog360.aufgabe_geprüft"), None);
        for bad in ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "a\tb"] {
            assert!(illegal_subject(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn every_header_with_the_message_id_and_ce_prefix() {
        let msg = Message::sample();
        let h = headers(&msg, true).expect("headers");
        let get = |n: &str| h.get(n).map(|v| v.as_str().to_owned());
        assert_eq!(get("Nats-Msg-Id").as_deref(), Some("abc"));
        assert_eq!(get("c360-event-id").as_deref(), Some("abc"));
        assert_eq!(get("content-type").as_deref(), Some("application/json"));
        assert_eq!(get("ce-id").as_deref(), Some("abc"));
        assert_eq!(get("ce-subject").as_deref(), Some("k1"));
        assert_eq!(get("ce-specversion").as_deref(), Some("1.0"));
        let off = headers(&msg, false).expect("headers");
        assert!(off.iter().all(|(n, _)| !n.to_string().starts_with("ce-")));
    }
}
