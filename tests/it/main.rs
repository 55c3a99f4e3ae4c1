//! The integration suite (one binary, so librdkafka is linked once): real tansu and RabbitMQ.

mod cli;
mod faults;
mod harness;
mod kafka;
mod rabbit;
