//! The sender's protocol: the signature and its keys, the batch envelope and its events' ids,
//! and the answers the sender gets.

pub mod answer;
pub mod envelope;
pub mod event_id;
pub mod keys;
pub mod signature;
