//! `SinkError`: why a broker did not confirm a message, with a stable code for logs and metrics.

/// A message that was not confirmed by its broker.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink is known to be disconnected or blocked; nothing was sent.
    #[error("sink unavailable: {0}")]
    Unavailable(String),
    /// The client's local queue is full; the caller should back off.
    #[error("sink overloaded: {0}")]
    Overloaded(String),
    /// The broker refused the message (Kafka error, AMQP nack).
    #[error("broker refused the message: {0}")]
    Refused(String),
    /// Nothing takes the message at its destination: RabbitMQ returned it (no queue bound for
    /// its routing key), or no JetStream stream captures its NATS subject.
    #[error("message unroutable: {0}")]
    Unroutable(String),
    /// The Kafka cluster has no such topic (and the sink does not create topics).
    #[error("topic {0:?} does not exist on the Kafka cluster")]
    UnknownTopic(String),
    /// The Kafka cluster does not let the bridge write this topic.
    #[error("not authorized to write topic {0:?}")]
    TopicAuthorization(String),
    /// The broker did not confirm in time.
    #[error("broker did not confirm in time: {0}")]
    Timeout(String),
    /// The message can never be accepted as it is (e.g. larger than the broker allows):
    /// retrying cannot help, whatever the broker's state.
    #[error("message rejected permanently ({code}): {1}", code = .0.code())]
    Permanent(Permanence, String),
}

/// Why a message can never be accepted as it is: only failures specific to the message itself,
/// never a broker's or the configuration's state (those are retried).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permanence {
    /// The broker refuses the destination for good (an illegal topic name, a routing key over
    /// 255 bytes).
    IllegalDestination,
    /// Larger than the producer or the broker accepts.
    TooLarge,
    /// The broker validated the record and rejected it (e.g. no key on a compacted topic).
    InvalidRecord,
}

impl Permanence {
    /// A short stable code (the `reason` of dead-letter metrics and headers).
    pub fn code(self) -> &'static str {
        match self {
            Permanence::IllegalDestination => "illegal_destination",
            Permanence::TooLarge => "too_large",
            Permanence::InvalidRecord => "invalid_record",
        }
    }
}

impl SinkError {
    /// A short stable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            SinkError::Unavailable(_) => "unavailable",
            SinkError::Overloaded(_) => "overloaded",
            SinkError::Refused(_) => "refused",
            SinkError::Unroutable(_) => "unroutable",
            SinkError::UnknownTopic(_) => "unknown_topic",
            SinkError::TopicAuthorization(_) => "topic_authorization",
            SinkError::Timeout(_) => "timeout",
            SinkError::Permanent(..) => "permanent",
        }
    }

    /// The broker's or the client's own words, without the classification.
    pub fn detail(&self) -> &str {
        match self {
            SinkError::Unavailable(s)
            | SinkError::Overloaded(s)
            | SinkError::Refused(s)
            | SinkError::Unroutable(s)
            | SinkError::UnknownTopic(s)
            | SinkError::TopicAuthorization(s)
            | SinkError::Timeout(s)
            | SinkError::Permanent(_, s) => s,
        }
    }
}
