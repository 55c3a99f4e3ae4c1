//! Reading a RabbitMQ dead-letter queue for redrive: `basic.get` until the queue is empty; a
//! letter is acked once it is published again, and every letter still waiting is requeued at
//! the end.

use super::letter::Letter;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use lapin::{Channel, Connection, ConnectionProperties};
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

/// The delivery tag of a letter on the source's channel.
#[derive(Debug, Clone, Copy)]
pub struct Position(u64);

/// The queue the operator bound to the dead-letter routing key.
pub struct RabbitSource {
    _conn: Connection,
    channel: Channel,
    queue: String,
    /// Letters taken but not acked, requeued at the end.
    waiting: Vec<u64>,
}

impl RabbitSource {
    pub async fn open(url: &str, queue: &str) -> Result<Self, lapin::Error> {
        let props =
            ConnectionProperties::default().with_connection_name("c360-bridge redrive".into());
        let conn = Connection::connect(url, props).await?;
        let channel = conn.create_channel().await?;
        Ok(Self {
            _conn: conn,
            channel,
            queue: queue.to_owned(),
            waiting: Vec::new(),
        })
    }

    /// The next letter, or `None` when the queue holds no other.
    pub async fn next_letter(&mut self) -> Result<Option<(Letter, Position)>, lapin::Error> {
        let got = self
            .channel
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?;
        Ok(got.map(|m| (letter(&m.delivery), Position(m.delivery.delivery_tag))))
    }

    /// The letter was published again: it leaves the queue.
    pub async fn done(&mut self, pos: Position) -> Result<(), lapin::Error> {
        self.channel
            .basic_ack(pos.0, BasicAckOptions::default())
            .await
    }

    /// The letter stays: requeued when the redrive ends.
    pub fn keep(&mut self, pos: Position) {
        self.waiting.push(pos.0);
    }

    /// Requeues every letter still waiting, in the order they were taken.
    pub async fn finish(&mut self) -> Result<(), lapin::Error> {
        for tag in std::mem::take(&mut self.waiting) {
            let opts = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            self.channel.basic_nack(tag, opts).await?;
        }
        Ok(())
    }
}

fn letter(d: &lapin::message::Delivery) -> Letter {
    let mut headers = BTreeMap::new();
    if let Some(table) = d.properties.headers() {
        for (k, v) in table.inner() {
            let text = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_owned(),
                other => format!("{other:?}"),
            };
            headers.insert(k.to_string(), text);
        }
    }
    let time = d
        .properties
        .timestamp()
        .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
    Letter {
        body: bytes::Bytes::copy_from_slice(&d.data),
        headers,
        time,
    }
}
