//! The sink layer of c360-bridge: one `Sink` trait, with Kafka, RabbitMQ and NATS JetStream
//! implementations.
//!
//! A sink knows nothing of HTTP or catalog360. It takes a [`Message`] (a destination, an
//! optional key, the exact body bytes and a few headers) and returns once its broker has
//! confirmed the message, or with a [`SinkError`] saying why not.

pub mod cloudevents;
mod error;
pub mod kafka;
mod kind;
#[cfg(feature = "test-util")]
pub mod memory;
mod message;
pub mod nats;
pub mod rabbitmq;

pub use error::{Permanence, SinkError};
pub use kind::{BuildContext, DestinationRules, SinkKind, anything};
pub use message::{CONTENT_TYPE, DeadLetterHeaders, EventMeta, Message, TraceContext};

use async_trait::async_trait;

/// The error of a message still unconfirmed at its publish deadline.
pub fn deadline_passed() -> SinkError {
    SinkError::Timeout("no confirm before the publish deadline".into())
}

/// Whether a sink can publish right now, with a short human-readable reason when it cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub detail: String,
}

impl Readiness {
    pub fn ready(detail: impl Into<String>) -> Self {
        Self {
            ready: true,
            detail: detail.into(),
        }
    }

    pub fn not_ready(detail: impl Into<String>) -> Self {
        Self {
            ready: false,
            detail: detail.into(),
        }
    }
}

/// Waits until every sink of `sinks` is ready, at most `within`; past it, `Err` names each one
/// that is not, with its readiness detail (`"kafka: …; rabbit: …"`).
pub async fn wait_ready(
    sinks: &[std::sync::Arc<dyn Sink>],
    within: std::time::Duration,
) -> Result<(), String> {
    let until = tokio::time::Instant::now() + within;
    loop {
        let waiting: Vec<String> = sinks
            .iter()
            .filter_map(|s| {
                let r = s.readiness();
                (!r.ready).then(|| format!("{}: {}", s.name(), r.detail))
            })
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= until {
            return Err(waiting.join("; "));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// What a PRODUCER span says of a sink (OpenTelemetry's messaging conventions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Messaging {
    /// `messaging.system`: `kafka`, `rabbitmq`, `nats`.
    pub system: &'static str,
    /// RabbitMQ: the exchange, which is the span's destination (the message's destination is
    /// its routing key, an attribute of its own). `None`: the destination is the message's.
    pub exchange: Option<String>,
}

/// A broker connection that publishes messages and reports when they are confirmed.
///
/// `publish` must be cheap to start: callers start every message of a batch at once and then
/// await them together, so an implementation hands the message to its client and awaits only
/// the broker's confirmation.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// The name of the sink in the configuration (`[sinks.NAME]`).
    fn name(&self) -> &str;

    /// Publishes one message; returns once the broker confirmed it.
    async fn publish(&self, msg: &Message) -> Result<(), SinkError>;

    /// Publishes several messages at once; returns each one's outcome, in order, once every
    /// one is confirmed or failed, the ones still unconfirmed at `deadline` failing with
    /// [`SinkError::Timeout`]. The default starts every `publish` together.
    async fn publish_many(
        &self,
        msgs: &[&Message],
        deadline: tokio::time::Instant,
    ) -> Vec<Result<(), SinkError>> {
        let each = msgs.iter().map(|m| async move {
            tokio::time::timeout_at(deadline, self.publish(m))
                .await
                .unwrap_or_else(|_| Err(deadline_passed()))
        });
        futures::future::join_all(each).await
    }

    /// How OpenTelemetry's messaging conventions describe this sink's sends.
    fn messaging(&self) -> Messaging {
        Messaging {
            system: "unknown",
            exchange: None,
        }
    }

    /// Whether the sink is connected and able to publish.
    fn readiness(&self) -> Readiness;

    /// Flushes what is in flight (bounded by `deadline`) and closes the connection.
    async fn close(&self, deadline: std::time::Duration);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Confirms every message at once, except those to `slow`, which it never confirms.
    struct Stalling;

    #[async_trait]
    impl Sink for Stalling {
        fn name(&self) -> &str {
            "stalling"
        }
        async fn publish(&self, msg: &Message) -> Result<(), SinkError> {
            if msg.destination == "slow" {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
        fn readiness(&self) -> Readiness {
            Readiness::ready("")
        }
        async fn close(&self, _deadline: Duration) {}
    }

    #[tokio::test]
    async fn publish_many_gives_each_outcome_in_order_and_times_out_the_unconfirmed() {
        let fast = Message::sample();
        let slow = Message {
            destination: "slow".into(),
            ..Message::sample()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        let results = Stalling
            .publish_many(&[&fast, &slow, &fast], deadline)
            .await;
        assert!(
            matches!(results[..], [Ok(()), Err(SinkError::Timeout(_)), Ok(())]),
            "{results:?}"
        );
    }
}
