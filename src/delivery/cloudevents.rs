//! The CloudEvents attributes of a batch's events (SPEC §8): what a batch shares is built once.

use c360_sinks::cloudevents::{BatchAttributes, CloudEvent};
use std::sync::Arc;
use std::time::SystemTime;

/// Prefix of every `type`: `com.catalog360.{event_class}`.
pub const TYPE_PREFIX: &str = "com.catalog360.";

pub use crate::config::default_source;

/// The attributes every event of a batch shares: the webhook's `source` and the receipt time.
pub struct Batch(Arc<BatchAttributes>);

impl Batch {
    /// The shared attributes of a batch `source` received at `received`.
    pub fn new(source: Arc<str>, received: SystemTime) -> Self {
        let time = humantime::format_rfc3339_micros(received).to_string();
        Self(Arc::new(BatchAttributes {
            source,
            time: time.into(),
        }))
    }

    /// The attributes of one event of the batch.
    pub fn event(&self, event_class: &str) -> CloudEvent {
        let mut ty = String::with_capacity(TYPE_PREFIX.len() + event_class.len());
        ty.push_str(TYPE_PREFIX);
        ty.push_str(event_class);
        CloudEvent {
            ty,
            batch: self.0.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn events_of_a_batch_share_source_and_time() {
        let at = UNIX_EPOCH + Duration::from_millis(1_795_971_600_123);
        let batch = Batch::new(default_source("main").into(), at);
        let a = batch.event("task_created");
        let b = batch.event("shipment_updated");
        assert_eq!(a.ty, "com.catalog360.task_created");
        assert_eq!(b.ty, "com.catalog360.shipment_updated");
        assert!(Arc::ptr_eq(&a.batch, &b.batch));
        assert_eq!(&*a.batch.source, "/catalog360/main");
        assert_eq!(&*a.batch.time, "2026-11-29T17:00:00.123000Z");
    }
}
