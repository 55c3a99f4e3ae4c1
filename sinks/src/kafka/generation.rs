//! One librdkafka producer instance ("generation") and the client context that reports its
//! fatal errors to the supervisor.
//!
//! An idempotent producer whose broker lost its state (`UNKNOWN_PRODUCER_ID` with messages
//! outstanding, `OUT_OF_ORDER_SEQUENCE_NUMBER`, a fenced epoch) raises a fatal error and never
//! produces again: librdkafka's documentation says the application must create a new instance.
//! Each instance carries a generation number, so a late report about a replaced instance is
//! recognised and ignored.

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use std::sync::mpsc;

/// Why a producer instance is replaced (the `reason` label of `c360_sink_restarts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    /// librdkafka raised a fatal error: the instance is dead for good.
    Fatal,
    /// Deliveries time out for a whole message timeout while the cluster answers metadata
    /// requests (e.g. a broker that keeps refusing a bumped producer epoch).
    Stalled,
}

impl Reason {
    pub(super) fn label(self) -> &'static str {
        match self {
            Reason::Fatal => "fatal_error",
            Reason::Stalled => "deliveries_stalled",
        }
    }
}

/// What wakes the supervisor thread.
pub(super) enum Wake {
    /// The sink is closing or dropped.
    Stop,
    /// Replace generation `generation` (ignored if it was already replaced).
    Rebuild {
        generation: u64,
        reason: Reason,
        detail: String,
        /// The topic of the message whose failure asked for it.
        topic: Option<String>,
    },
}

/// Reports librdkafka's error events; a fatal one asks the supervisor for a new producer.
pub(super) struct Context {
    sink: String,
    generation: u64,
    wake: mpsc::Sender<Wake>,
    last_error: LastError,
}

/// The last error librdkafka reported for a sink's client (a refused TLS handshake, a failed
/// login, a broker down), shared by its producer instances: `/readyz` shows it while no broker
/// answers, and a new one is logged once, not once per retry.
pub(super) type LastError = std::sync::Arc<std::sync::Mutex<Option<String>>>;

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            let _ = self.wake.send(Wake::Rebuild {
                generation: self.generation,
                reason: Reason::Fatal,
                detail: reason.to_owned(),
                topic: None,
            });
        } else if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            // A summary ("1/1 brokers are down") that would hide the cause reported before it.
            tracing::debug!(sink = %self.sink, "librdkafka: {reason}");
        } else {
            let reason = worded(&error, reason);
            if self.note(&reason) {
                tracing::warn!(sink = %self.sink, generation = self.generation, error = %error, "librdkafka: {reason}");
            }
        }
    }
}

/// librdkafka's reason as `/readyz` words it: `tls: …` for a failed handshake (unknown CA,
/// host-name mismatch, expired or missing certificate), `authentication failed: …` for a
/// refused login, the reason itself otherwise.
fn worded(error: &KafkaError, reason: &str) -> String {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::SSL) => format!("tls: {reason}"),
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
            format!("authentication failed: {reason}")
        }
        _ => reason.to_owned(),
    }
}

impl Context {
    /// Keeps `reason` as the last error; whether it differs from the one before.
    fn note(&self, reason: &str) -> bool {
        let Ok(mut last) = self.last_error.lock() else {
            return true;
        };
        let new = last.as_deref() != Some(reason);
        *last = Some(reason.to_owned());
        new
    }
}

/// One producer instance.
pub(super) struct Generation {
    pub(super) id: u64,
    pub(super) producer: FutureProducer<Context>,
}

impl Generation {
    /// Creates producer instance number `id` from `config`.
    pub(super) fn create(
        config: &ClientConfig,
        sink: &str,
        id: u64,
        wake: mpsc::Sender<Wake>,
        last_error: LastError,
    ) -> KafkaResult<Generation> {
        let context = Context {
            sink: sink.to_owned(),
            generation: id,
            wake,
            last_error,
        };
        Ok(Generation {
            id,
            producer: config.create_with_context(context)?,
        })
    }
}

/// Errors that mean the producer instance lost its idempotence state: retrying on the same
/// instance cannot help, a new instance can.
pub(super) fn is_state_loss(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::Fatal
            | C::Fenced
            | C::ProducerFenced
            | C::InvalidProducerEpoch
            | C::UnknownProducerId
            | C::OutOfOrderSequenceNumber
            | C::PurgeQueue
            | C::PurgeInflight
    )
}
