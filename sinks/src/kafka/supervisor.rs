//! The Kafka sink's supervisor thread: probes the cluster for readiness and replaces a producer
//! instance that cannot recover (fatal error, or deliveries stalled while the cluster answers).
//!
//! It is a plain thread because everything it does (metadata requests, creating and destroying
//! a producer) blocks inside librdkafka.

use super::Shared;
use super::generation::{Generation, Reason, Wake};
use rdkafka::producer::{Producer, PurgeConfig};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the cluster is asked for metadata.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long one metadata request may take before the cluster counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Waits between rebuilds that follow each other without a delivery in between.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Starts the thread (stopped by `Wake::Stop`); `None` (logged) if the OS refuses a thread.
pub(super) fn spawn(shared: Arc<Shared>, wakes: mpsc::Receiver<Wake>) -> Option<JoinHandle<()>> {
    let name = format!("kafka-supervisor-{}", shared.name);
    let spawned = std::thread::Builder::new()
        .name(name)
        .spawn(move || run(&shared, &wakes));
    match spawned {
        Ok(thread) => Some(thread),
        Err(e) => {
            tracing::error!(error = %e, "could not start the Kafka supervisor thread");
            None
        }
    }
}

fn run(shared: &Shared, wakes: &mpsc::Receiver<Wake>) {
    let mut backoff = Duration::ZERO;
    loop {
        probe(shared);
        let wake = match wakes.recv_timeout(PROBE_INTERVAL) {
            Ok(w) => w,
            Err(RecvTimeoutError::Timeout) => match unreported_fatal(shared) {
                Some(w) => w,
                None => continue,
            },
            Err(RecvTimeoutError::Disconnected) => return,
        };
        match wake {
            Wake::Stop => return,
            Wake::Rebuild {
                generation,
                reason,
                detail,
                topic,
            } if generation == shared.generation() => {
                if reason == Reason::Stalled && !topic_healthy(shared, topic.as_deref()) {
                    continue;
                }
                if rebuild(shared, wakes, reason, &detail, &mut backoff).is_break() {
                    return;
                }
            }
            Wake::Rebuild { .. } => {} // about an instance already replaced
        }
    }
}

/// A fatal error the context did not report (belt and braces: librdkafka reports it once).
fn unreported_fatal(shared: &Shared) -> Option<Wake> {
    let current = shared.current();
    let (code, detail) = current.producer.client().fatal_error()?;
    Some(Wake::Rebuild {
        generation: current.id,
        reason: Reason::Fatal,
        detail: format!("{code:?}: {detail}"),
        topic: None,
    })
}

/// Whether the topic of a message that timed out has every partition led, as the cluster
/// says: if not, the timeouts are that topic's problem and the producer stays. No topic, or no
/// answer: the stall counts as the producer's.
fn topic_healthy(shared: &Shared, topic: Option<&str>) -> bool {
    let Some(topic) = topic else {
        return true;
    };
    let current = shared.current();
    let Ok(md) = current
        .producer
        .client()
        .fetch_metadata(Some(topic), PROBE_TIMEOUT)
    else {
        return true;
    };
    let healthy = md.topics().iter().any(|t| {
        t.name() == topic
            && t.error().is_none()
            && !t.partitions().is_empty()
            && t.partitions()
                .iter()
                .all(|p| p.error().is_none() && p.leader() >= 0)
    });
    if !healthy {
        tracing::warn!(sink = %shared.name, topic, "deliveries to this topic time out and the cluster reports the topic unavailable: the producer is kept");
    }
    healthy
}

/// Asks the cluster for metadata with the current producer; the answer is the readiness.
pub(super) fn probe(shared: &Shared) -> bool {
    let ok = shared
        .current()
        .producer
        .client()
        .fetch_metadata(None, PROBE_TIMEOUT)
        .map(|m| !m.brokers().is_empty())
        .unwrap_or(false);
    if shared.reachable.swap(ok, Ordering::Relaxed) != ok {
        tracing::info!(sink = %shared.name, reachable = ok, "Kafka cluster reachability changed");
    }
    if ok {
        // The next failure is news again, and readiness shows no stale reason.
        if let Ok(mut last) = shared.last_error.lock() {
            *last = None;
        }
    }
    ok
}

/// Replaces the current producer: its outstanding messages fail at once, publishes are refused
/// fast until a new instance exists, and readiness stays false until the new one has answered.
/// Rebuilds without a delivery in between back off (1 s doubling to 30 s); `Break` = stop.
fn rebuild(
    shared: &Shared,
    wakes: &mpsc::Receiver<Wake>,
    reason: Reason,
    detail: &str,
    backoff: &mut Duration,
) -> std::ops::ControlFlow<()> {
    tracing::error!(sink = %shared.name, reason = reason.label(), "Kafka producer cannot recover ({detail}); replacing it");
    metrics::counter!("c360_sink_restarts_total", "sink" => shared.name.clone(), "reason" => reason.label())
        .increment(1);
    shared.set_rebuilding(Some(format!(
        "producer being replaced after {}: {detail}",
        reason.label()
    )));
    shared.reachable.store(false, Ordering::Relaxed);
    shared
        .current()
        .producer
        .purge(PurgeConfig::default().queue().inflight());
    if shared.delivered.swap(false, Ordering::Relaxed) {
        *backoff = Duration::ZERO;
    }
    let next = loop {
        pause(wakes, *backoff)?;
        *backoff = (*backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
        match Generation::create(
            &shared.config,
            &shared.name,
            shared.generation() + 1,
            shared.wake.clone(),
            shared.last_error.clone(),
        ) {
            Ok(g) => break g,
            Err(e) => {
                tracing::error!(sink = %shared.name, error = %e, "cannot create a new Kafka producer")
            }
        }
    };
    let old = shared.replace(next);
    drop(old); // purges and flushes what is left of the dead instance, on this thread
    shared.set_rebuilding(None);
    tracing::info!(sink = %shared.name, generation = shared.generation(), "new Kafka producer created");
    std::ops::ControlFlow::Continue(())
}

/// Sleeps `d` unless told to stop meanwhile (`Break`). Rebuild requests that arrive during the
/// pause are about the instance being replaced, so they are dropped.
fn pause(wakes: &mpsc::Receiver<Wake>, d: Duration) -> std::ops::ControlFlow<()> {
    let until = std::time::Instant::now() + d;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        match wakes.recv_timeout(left) {
            Ok(Wake::Rebuild { .. }) => continue,
            Err(RecvTimeoutError::Timeout) => return std::ops::ControlFlow::Continue(()),
            Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => {
                return std::ops::ControlFlow::Break(());
            }
        }
    }
}
