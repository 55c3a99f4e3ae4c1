//! The bounded span queue: ended spans wait here and an exporter thread sends them in batches;
//! a full queue or a failed export drops spans and counts them (`c360_spans_dropped_total`),
//! so a slow or absent collector never slows a batch.

use crate::telemetry::metrics as m;
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _, SpanProcessor};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Spans the queue holds at most; more are dropped.
pub const CAPACITY: usize = 4096;
/// Spans one export sends at most.
const BATCH: usize = 512;
/// How long a span may wait for more to fill its batch.
const LINGER: Duration = Duration::from_secs(1);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

enum Item {
    Span(Box<SpanData>),
    /// Export what is queued, then say so.
    Flush(SyncSender<()>),
}

/// A [`SpanProcessor`] that queues ended spans for the exporter thread.
#[derive(Debug)]
pub struct Queue {
    tx: Mutex<Option<SyncSender<Item>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Queue {
    /// Starts the exporter thread; `exporter` is built there, inside the thread's own runtime
    /// (the gRPC and HTTP clients need a reactor), and sends every batch.
    pub fn start(
        build: impl FnOnce() -> Result<SpanExporter, String> + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(CAPACITY);
        let worker = std::thread::Builder::new()
            .name("c360-otlp-export".into())
            .spawn(move || run(build, rx))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
        })
    }

    fn send(&self, item: Item) -> Result<(), TrySendError<Item>> {
        match self.tx.lock().ok().and_then(|t| t.clone()) {
            Some(tx) => tx.try_send(item),
            None => Err(TrySendError::Disconnected(item)),
        }
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.send(Item::Span(Box::new(span))).is_err() {
            m::spans_dropped(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        self.send(Item::Flush(done_tx))
            .map_err(|_| OTelSdkError::InternalFailure("span queue full or closed".into()))?;
        done_rx
            .recv_timeout(EXPORT_TIMEOUT * 2)
            .map_err(|_| OTelSdkError::Timeout(EXPORT_TIMEOUT * 2))
    }

    /// Exports what is queued (bounded by `timeout`) and stops the thread.
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let flushed = self.force_flush();
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let worker = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(worker) = worker {
            let until = Instant::now() + timeout;
            while !worker.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if worker.is_finished() {
                let _ = worker.join();
            }
        }
        flushed
    }
}

/// The exporter thread: batches of up to `BATCH` spans, sent when full or `LINGER` after the
/// first, until every sender is gone.
fn run(build: impl FnOnce() -> Result<SpanExporter, String>, rx: Receiver<Item>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return drain_dropping(&rx, &format!("no runtime: {e}")),
    };
    let exporter = match runtime.block_on(async { build() }) {
        Ok(e) => e,
        Err(e) => return drain_dropping(&rx, &e),
    };
    let mut health = Health::default();
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH);
    loop {
        let wait = if batch.is_empty() {
            Duration::MAX
        } else {
            LINGER
        };
        let (done, closed) = match rx.recv_timeout(wait) {
            Ok(Item::Span(s)) => {
                batch.push(*s);
                if batch.len() < BATCH {
                    continue;
                }
                (None, false)
            }
            Ok(Item::Flush(done)) => (Some(done), false),
            Err(RecvTimeoutError::Timeout) => (None, false),
            Err(RecvTimeoutError::Disconnected) => (None, true),
        };
        if !batch.is_empty() {
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            let n = spans.len();
            let sent = runtime.block_on(async {
                tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await
            });
            health.note(
                n,
                sent.map_err(|_| "timed out".to_owned())
                    .and_then(|r| r.map_err(|e| e.to_string())),
            );
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
        if closed {
            return;
        }
    }
}

/// Whether the collector took the last batch; said in the log once per change.
#[derive(Default)]
struct Health {
    failing: bool,
}

impl Health {
    fn note(&mut self, spans: usize, result: Result<(), String>) {
        match result {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("traces: the OTLP collector takes spans again");
            }
            Ok(()) => {}
            Err(why) => {
                m::spans_dropped(spans as u64);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(
                        "traces: OTLP export failed, spans are dropped and counted until it works: {why}"
                    );
                }
            }
        }
    }
}

/// Without an exporter every span is dropped (and counted); the reason is logged once.
fn drain_dropping(rx: &Receiver<Item>, why: &str) {
    tracing::error!("traces: no OTLP exporter ({why}); every span is dropped");
    for item in rx {
        match item {
            Item::Span(_) => m::spans_dropped(1),
            Item::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}
