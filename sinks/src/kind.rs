//! `SinkKind`: what the bridge knows of a kind of sink besides publishing (its defaults, the
//! destinations its broker accepts, how to build and probe it), implemented by each sink's
//! configuration type next to the sink.

use crate::Sink;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// The destinations (topics, routing keys, subjects) a broker accepts.
#[derive(Debug, Clone, Copy)]
pub struct DestinationRules {
    /// What a destination is called, for messages (`Kafka topic`, `routing key`, `subject`).
    pub noun: &'static str,
    /// Why the literal text of a destination template can never be part of a legal
    /// destination, if it cannot (checked when the configuration is loaded).
    pub literal: fn(&str) -> Result<(), String>,
    /// Why a rendered destination is refused by the broker for good, if it is, worded to
    /// follow "gives" (`a routing key of 300 bytes, over AMQP's 255`).
    pub check: fn(&str) -> Result<(), String>,
}

/// Accepts anything: for brokers whose destinations have no rules of their own.
pub fn anything(_: &str) -> Result<(), String> {
    Ok(())
}

/// What building a sink gets from the bridge.
#[derive(Debug, Clone, Copy)]
pub struct BuildContext {
    /// How long the sink may wait for one message's confirm: set below the bridge's answer
    /// deadline, so that every confirm or failure arrives before the answer is due.
    pub confirm_within: Duration,
}

/// A kind of sink (the `type` of `[sinks.NAME]`), implemented by its configuration type.
#[async_trait]
pub trait SinkKind: Send + Sync {
    /// The `type` of `[sinks.NAME]`: `kafka`, `rabbitmq`, `nats`.
    fn type_name(&self) -> &'static str;

    /// The destination template a route gets when it names none.
    fn default_topic(&self) -> &'static str;

    /// Checks what can be checked without connecting; the error is worded for the operator.
    fn validate(&self) -> Result<(), String>;

    /// Whether its messages carry the CloudEvents attributes.
    fn cloudevents(&self) -> bool;

    /// The header names of the CloudEvents attributes in its protocol binding.
    fn cloudevents_names(&self) -> &'static crate::cloudevents::Names;

    /// The rules of its broker for destinations.
    fn destinations(&self) -> DestinationRules;

    /// The largest message its own configuration lets through, when it says (a dead letter
    /// must fit under it), and the key of `[sinks.NAME]` that sets it.
    fn max_message_bytes(&self) -> Option<(usize, &'static str)> {
        None
    }

    /// Builds the sink named `name`; it connects in the background. Must run inside a tokio
    /// runtime.
    fn build(&self, name: &str, ctx: &BuildContext) -> Result<Arc<dyn Sink>, String>;

    /// Connects once with the real credentials, publishes nothing, and says what answered
    /// (`Ok`: e.g. `TLS, SCRAM-SHA-512`) or why nothing did: what `check --connect` prints.
    async fn probe(&self, name: &str, timeout: Duration) -> Result<String, String>;
}
