//! Operating the bridge: `dev`, sample batches, `check --connect`, and the AsyncAPI
//! document of the configured topics.

pub mod asyncapi;
pub mod connect;
pub mod dev;
pub mod redrive;
pub mod sample;
