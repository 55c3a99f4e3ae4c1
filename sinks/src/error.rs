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
    /// RabbitMQ returned the message: no queue is bound for its routing key.
    #[error("message unroutable: no queue bound for routing key {0:?}")]
    Unroutable(String),
    /// The broker did not confirm in time.
    #[error("broker did not confirm in time: {0}")]
    Timeout(String),
    /// The message can never be accepted as it is (e.g. larger than the broker allows).
    #[error("message rejected permanently: {0}")]
    Permanent(String),
}

impl SinkError {
    /// A short stable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            SinkError::Unavailable(_) => "unavailable",
            SinkError::Overloaded(_) => "overloaded",
            SinkError::Refused(_) => "refused",
            SinkError::Unroutable(_) => "unroutable",
            SinkError::Timeout(_) => "timeout",
            SinkError::Permanent(_) => "permanent",
        }
    }
}
