//! Delivery: a verified batch becomes messages (`ingest`, the orchestrator), routed by event
//! class (`routing`), filtered by the `ledger`, published and confirmed (`publish`), with
//! CloudEvents attributes (`cloudevents`) and the dead letter for what no broker will take.

pub mod cloudevents;
pub mod dead_letter;
pub mod ingest;
pub mod ledger;
pub mod publish;
pub mod routing;
