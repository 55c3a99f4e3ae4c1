//! The integration suite (one binary, so librdkafka is linked once): real tansu, RabbitMQ and
//! nats-server.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod asyncapi;
mod attribution;
mod cli;
mod consumers;
mod dead_letter;
mod docs;
mod facing;
mod faults;
mod harness;
mod healing;
mod hostile;
mod kafka;
mod keys;
mod ledger;
mod monitoring;
mod nats;
mod partition;
mod props;
mod rabbit;
mod redis_server;
mod redrive;
mod reload;
mod replicas;
mod secure;
mod secure_ledger;
mod secure_rabbit;
mod tansu;
mod topics;
mod traces;
