//! `App`: everything a running bridge shares — webhooks, routes, sinks, ledger, limits.

use crate::config::{Config, ConfigError, SinkConfig};
use crate::delivery::dead_letter::DeadLetter;
use crate::delivery::ledger::{Ledger, RedisSetupError};
use crate::delivery::routing::Routes;
use crate::server::Limits;
use crate::server::client_addr::{self, Cidr};
use crate::server::tls::{Tls, TlsError};
use crate::telemetry::{Telemetry, TelemetryError};
use crate::webhook::keys::WebhookKeys;
use c360_sinks::kafka::{KafkaSetupError, KafkaSink};
use c360_sinks::{BuildContext, Messaging, Readiness, Sink};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// One configured webhook.
pub struct Webhook {
    pub name: Arc<str>,
    pub path: String,
    /// Its key set in force, renewed from its `keys_file` while running.
    pub keys: Arc<WebhookKeys>,
    pub max_events: usize,
    /// CloudEvents `source` of its events.
    pub ce_source: Arc<str>,
    /// Deepest nesting allowed inside one event.
    pub max_depth: usize,
    /// Client networks allowed to post; `None` = any.
    pub allow_from: Option<Vec<Cidr>>,
}

impl Webhook {
    /// Whether a client at `ip` may post (no address known: only when any address may).
    pub fn allows(&self, ip: Option<IpAddr>) -> bool {
        match (&self.allow_from, ip) {
            (None, _) => true,
            (Some(nets), Some(ip)) => client_addr::contains(nets, ip),
            (Some(_), None) => false,
        }
    }
}

/// The shared state of one bridge process.
pub struct App {
    pub webhooks: Vec<Webhook>,
    pub routes: Routes,
    /// Where events no broker will ever take go (`[dead_letter]`), if configured.
    pub dead_letter: Option<DeadLetter>,
    /// Sinks in the order of the sorted `[sinks]` table; `Target::sink` indexes it.
    pub sinks: Vec<Arc<dyn Sink>>,
    pub ledger: Arc<Ledger>,
    pub in_flight: Arc<Semaphore>,
    pub max_body_bytes: usize,
    /// When the answer must be on its way (a little before `server.ack_timeout`).
    pub answer_deadline: Duration,
    /// When a batch's publishes are abandoned even if nobody waits for them any more.
    pub publish_deadline: Duration,
    /// How often the webhooks' keys files are looked at.
    pub keys_poll_interval: Duration,
    /// Deadlines and connection limit of the listeners.
    pub limits: Limits,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// The HTTPS certificate pair in force, when `[server.tls]` is set.
    pub tls: Option<Arc<Tls>>,
    /// Publish tasks, awaited on shutdown.
    pub tasks: TaskTracker,
    /// The tracer (off without an OTLP endpoint).
    pub telemetry: Telemetry,
    /// How each sink's sends are described in PRODUCER spans, in `sinks` order.
    pub messaging: Vec<Messaging>,
    /// The configuration file (reloaded on SIGHUP), and whether a change of it reloads too.
    pub config_file: Option<PathBuf>,
    pub watch_config: bool,
    /// The configuration this generation was built from (`effective`, never printed).
    pub config: Config,
    closing: Arc<AtomicBool>,
}

/// What every generation of one running bridge shares, made once at start-up: a reload
/// changes none of it (a change of these settings needs a restart).
pub struct Kept {
    ledger: Arc<Ledger>,
    in_flight: Arc<Semaphore>,
    tasks: TaskTracker,
    telemetry: Telemetry,
    tls: Option<Arc<Tls>>,
    limits: Limits,
    keys_poll_interval: Duration,
    closing: Arc<AtomicBool>,
}

impl Kept {
    fn new(config: &Config) -> Result<Self, BuildError> {
        // The recorder first: loading the serving certificate records its expiry.
        crate::telemetry::metrics::install(config.server.ack_timeout);
        let tls = match &config.server.tls {
            Some(files) => Some(Arc::new(Tls::load(files)?)),
            None => None,
        };
        Ok(Self {
            ledger: Arc::new(Ledger::from_config(&config.ledger)?),
            in_flight: Arc::new(Semaphore::new(config.server.max_in_flight_batches)),
            tasks: TaskTracker::new(),
            telemetry: Telemetry::from_config(&config.telemetry)?,
            tls,
            limits: Limits {
                header_timeout: config.server.header_timeout,
                idle_timeout: config.server.idle_timeout,
                max_connections: config.server.max_connections,
            },
            keys_poll_interval: config.server.keys_poll_interval,
            closing: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// Why the bridge cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("server.tls: {0}")]
    Tls(#[from] TlsError),
    #[error("sinks.{name}: {source}")]
    Kafka {
        name: String,
        source: KafkaSetupError,
    },
    #[error("sinks.{name}: {message}")]
    Sink { name: String, message: String },
    #[error(transparent)]
    Ledger(#[from] RedisSetupError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// The answer deadline and how long a sink may wait for one confirm (librdkafka's
/// `message.timeout.ms`, the JetStream PubAck wait), both derived from `ack_timeout`.
pub fn deadlines(ack_timeout: Duration) -> (Duration, Duration) {
    let answer = ack_timeout.mul_f64(0.9);
    let kafka_message = ack_timeout.mul_f64(0.75);
    (answer, kafka_message)
}

/// Has a look at the dead-letter topic when `name` is the dead letter's Kafka sink and the topic
/// is a fixed name (a template's topics are known only per event).
fn dead_letter_topic(config: &Config, name: &str, sink: &Arc<KafkaSink>) {
    if let Some(dl) = config.dead_letter.as_ref()
        && dl.sink == name
        && !dl.topic.contains('{')
    {
        crate::delivery::dead_letter::look_at_kafka_topic(sink.clone(), dl.topic.clone());
    }
}

impl App {
    /// Connects the configured sinks and compiles the routes. Must run inside a tokio runtime.
    pub fn build(config: Config, file: Option<&Path>) -> Result<Self, BuildError> {
        let sinks = build_sinks(&config, |_| None)?;
        Self::with_sinks(config, file, sinks)
    }

    /// The next generation: `config` applied over this one, keeping the connection of every
    /// sink whose section did not change, and everything `Kept`.
    pub fn next(&self, config: Config) -> Result<Self, BuildError> {
        let sinks = build_sinks(&config, |name| {
            let same = config.section(&["sinks", name]) == self.config.section(&["sinks", name]);
            let old = self.config.sinks.keys().position(|n| n == name);
            old.filter(|_| same).map(|i| self.sinks[i].clone())
        })?;
        let kept = Kept {
            ledger: self.ledger.clone(),
            in_flight: self.in_flight.clone(),
            tasks: self.tasks.clone(),
            telemetry: self.telemetry.clone(),
            tls: self.tls.clone(),
            limits: self.limits,
            keys_poll_interval: self.keys_poll_interval,
            closing: self.closing.clone(),
        };
        let file = self.config_file.clone();
        Self::assemble(config, file.as_deref(), sinks, kept)
    }

    /// Builds the app around sinks made elsewhere (one per `[sinks]` entry, in name order).
    pub fn with_sinks(
        config: Config,
        file: Option<&Path>,
        sinks: Vec<Arc<dyn Sink>>,
    ) -> Result<Self, BuildError> {
        let kept = Kept::new(&config)?;
        Self::assemble(config, file, sinks, kept)
    }
}

/// One sink per `[sinks]` entry, in name order: `reuse(name)`'s, or a new connection.
fn build_sinks(
    config: &Config,
    reuse: impl Fn(&str) -> Option<Arc<dyn Sink>>,
) -> Result<Vec<Arc<dyn Sink>>, BuildError> {
    let (_, confirm_within) = deadlines(config.server.ack_timeout);
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    for (name, sc) in &config.sinks {
        if let Some(sink) = reuse(name) {
            sinks.push(sink);
            continue;
        }
        sinks.push(match sc {
            SinkConfig::Kafka(k) => {
                let sink = Arc::new(KafkaSink::new(name, k, confirm_within).map_err(|source| {
                    BuildError::Kafka {
                        name: name.clone(),
                        source,
                    }
                })?);
                dead_letter_topic(config, name, &sink);
                sink
            }
            other => {
                let ctx = BuildContext { confirm_within };
                other
                    .kind()
                    .build(name, &ctx)
                    .map_err(|message| BuildError::Sink {
                        name: name.clone(),
                        message,
                    })?
            }
        });
    }
    Ok(sinks)
}

impl App {
    fn assemble(
        config: Config,
        file: Option<&Path>,
        sinks: Vec<Arc<dyn Sink>>,
        kept: Kept,
    ) -> Result<Self, BuildError> {
        let routes = Routes::compile(&config, file)?;
        // Destinations known before any event: routes whose topic has no placeholder.
        let fixed = routes.iter().flat_map(|r| &r.targets);
        let fixed = fixed.filter(|t| t.topic.placeholders().next().is_none());
        crate::telemetry::metrics::start_up(
            &config,
            fixed.map(|t| (t.sink_name.as_str(), t.topic.text.as_str())),
        );
        let dead_letter = DeadLetter::compile(&config, file)?;
        let (answer_deadline, _) = deadlines(config.server.ack_timeout);
        let webhooks = config
            .webhooks
            .iter()
            .map(|w| {
                let name: Arc<str> = w.name.as_str().into();
                Webhook {
                    ce_source: w.ce_source().into(),
                    keys: Arc::new(WebhookKeys::new(name.clone(), w)),
                    name,
                    path: w.path.clone(),
                    max_events: w.max_events,
                    max_depth: w.max_depth,
                    allow_from: w.allow_from.clone(),
                }
            })
            .collect();
        Ok(Self {
            webhooks,
            routes,
            dead_letter,
            messaging: sinks.iter().map(|s| s.messaging()).collect(),
            sinks,
            telemetry: kept.telemetry,
            ledger: kept.ledger,
            in_flight: kept.in_flight,
            max_body_bytes: config.server.max_body_bytes,
            answer_deadline,
            publish_deadline: config.server.ack_timeout * 2,
            keys_poll_interval: kept.keys_poll_interval,
            limits: kept.limits,
            trusted_proxies: config.server.trusted_proxies.clone(),
            tls: kept.tls,
            tasks: kept.tasks,
            config_file: file.map(Path::to_path_buf),
            watch_config: config.server.watch_config,
            config,
            closing: kept.closing,
        })
    }

    /// Every webhook's keys, for the reloads.
    pub fn webhook_keys(&self) -> Vec<Arc<WebhookKeys>> {
        self.webhooks.iter().map(|w| w.keys.clone()).collect()
    }

    /// Readiness of every sink, by name.
    pub fn readiness(&self) -> Vec<(&str, Readiness)> {
        self.sinks
            .iter()
            .map(|s| (s.name(), s.readiness()))
            .collect()
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// From now on new batches are refused with 503.
    pub fn begin_shutdown(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Waits for in-flight publishes (bounded by the publish deadline) and closes every sink.
    pub async fn finish(&self) {
        self.tasks.close();
        if tokio::time::timeout(self.publish_deadline, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "some publishes were still unconfirmed at shutdown; their batches got 503"
            );
        }
        for sink in &self.sinks {
            sink.close(Duration::from_secs(5)).await;
        }
        let telemetry = self.telemetry.clone();
        let flushed =
            tokio::task::spawn_blocking(move || telemetry.shutdown(Duration::from_secs(5)));
        let _ = flushed.await;
    }
}
