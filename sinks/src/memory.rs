//! An in-memory sink for tests: records what it was asked to publish, can be told to fail.

use crate::{Message, Readiness, Sink, SinkError};
use async_trait::async_trait;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Records every published message; `fail(true)` makes every publish fail as unavailable.
pub struct MemorySink {
    name: String,
    published: Mutex<Vec<Message>>,
    failing: AtomicBool,
}

impl MemorySink {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            published: Mutex::new(Vec::new()),
            failing: AtomicBool::new(false),
        }
    }

    /// Every message published so far, in order of confirmation.
    pub fn published(&self) -> Vec<Message> {
        self.published.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Takes every message published so far, leaving none (keeps a long run, such as a
    /// fuzzer's, from growing).
    pub fn take(&self) -> Vec<Message> {
        self.published
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    /// Makes later publishes fail (`true`) or succeed (`false`).
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }
}

#[async_trait]
impl Sink for MemorySink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, msg: &Message) -> Result<(), SinkError> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(SinkError::Unavailable("memory sink told to fail".into()));
        }
        if let Ok(mut p) = self.published.lock() {
            p.push(msg.clone());
        }
        Ok(())
    }

    fn readiness(&self) -> Readiness {
        if self.failing.load(Ordering::Relaxed) {
            Readiness::not_ready("told to fail")
        } else {
            Readiness::ready("in memory")
        }
    }

    async fn close(&self, _deadline: Duration) {}
}
