//! The POST handler: verify → split → route → publish every event → await every confirm → answer.

use crate::answer::{Answer, Rejection};
use crate::app::{App, Webhook};
use crate::config::Unrouted;
use crate::envelope::{self, EnvelopeError, Event};
use crate::event_id::{EventId, event_ids};
use crate::ledger;
use crate::metrics as m;
use crate::routing::Target;
use crate::signature::{HEADER, Verdict};
use bytes::Bytes;
use c360_sinks::{EventMeta, Message, SinkError};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

/// One message for one sink, with its ledger key.
struct Job {
    sink: usize,
    msg: Message,
    ledger_key: ledger::Key,
}

/// Handles one POST on a webhook path and says what to answer.
pub async fn receive(
    app: Arc<App>,
    wh: usize,
    client: Option<IpAddr>,
    headers: http::HeaderMap,
    body: axum::body::Body,
    rid: String,
) -> Answer {
    let started = Instant::now();
    let webhook = &app.webhooks[wh];
    let outcome = match admit(webhook, client) {
        Ok(()) => ingest(&app, webhook, &headers, body, started).await,
        Err(r) => Err(r),
    };
    let answer = match outcome {
        Ok(n) => Answer::Accepted(n),
        Err(r) => Answer::Rejected(r),
    };
    log_outcome(webhook, &answer, &rid, started);
    m::request(&webhook.name, answer.status().as_u16());
    answer
}

/// Refuses a client outside the webhook's `allow_from`, before anything of the body is read.
fn admit(webhook: &Webhook, client: Option<IpAddr>) -> Result<(), Rejection> {
    if webhook.allows(client) {
        return Ok(());
    }
    m::forbidden_source(&webhook.name);
    let who = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    Err(Rejection::ForbiddenSource(who))
}

async fn ingest(
    app: &Arc<App>,
    webhook: &Webhook,
    headers: &http::HeaderMap,
    body: axum::body::Body,
    started: Instant,
) -> Result<usize, Rejection> {
    if app.is_closing() {
        return Err(Rejection::ShuttingDown);
    }
    let permit = app
        .in_flight
        .clone()
        .try_acquire_owned()
        .map_err(|_| Rejection::Overloaded)?;
    // A slow sender must not hold an in-flight permit past the answer deadline.
    let read = axum::body::to_bytes(body, app.max_body_bytes);
    let deadline = tokio::time::Instant::from_std(started + app.answer_deadline);
    let body = tokio::time::timeout_at(deadline, read)
        .await
        .map_err(|_| Rejection::BodyTimeout)?
        .map_err(|_| Rejection::TooLarge(app.max_body_bytes))?;
    let signature = headers.get(HEADER).map(|v| v.as_bytes());
    let verdict = webhook
        .keys
        .verifier()
        .verify(signature, &body)
        .inspect_err(|e| m::signature_failure(&webhook.name, e.code()))?;
    let events = envelope::split_limited(&body, webhook.max_events, webhook.max_depth)?;
    if verdict == Verdict::TestKey {
        return if events.is_empty() {
            Ok(0)
        } else {
            Err(Rejection::TestKeyWithEvents)
        };
    }
    let jobs = plan(app, webhook, &body, &events)?;
    publish(app, jobs, permit, deadline).await?;
    Ok(events.len())
}

/// Turns events into one job per (event, target), leaving out pairs the ledger has confirmed.
/// An event without a legal destination rejects the whole batch before anything is published.
fn plan(
    app: &App,
    webhook: &Webhook,
    body: &Bytes,
    events: &[Event],
) -> Result<Vec<Job>, Rejection> {
    let ids = event_ids(&webhook.name, events);
    let mut jobs = Vec::with_capacity(events.len());
    for (index, (event, id)) in events.iter().zip(ids).enumerate() {
        let Some(route) = app.routes.lookup(&event.event_class) else {
            debug_assert_eq!(
                app.routes.unrouted,
                Unrouted::Drop,
                "start-up requires a catch-all route"
            );
            m::unrouted(&event.event_class);
            continue;
        };
        let meta = Arc::new(EventMeta {
            id: id.to_string(),
            event_class: event.event_class.clone(),
            payload_class: event.payload_class.clone(),
            webhook: webhook.name.clone(),
        });
        let raw = body.slice_ref(event.raw.get().as_bytes());
        for t in &route.targets {
            jobs.push(event_job(index, event, &id, t, &meta, &raw)?);
        }
    }
    Ok(unconfirmed(app, jobs))
}

/// The job that publishes event `index` (its bytes `raw`, its headers `meta`) to target `t`.
fn event_job(
    index: usize,
    event: &Event,
    id: &EventId,
    t: &Target,
    meta: &Arc<EventMeta>,
    raw: &Bytes,
) -> Result<Job, EnvelopeError> {
    let destination = t
        .topic
        .destination(event, &meta.webhook)
        .map_err(|reason| EnvelopeError::BadEvent {
            index,
            reason: format!("event_class {:?} {reason}", event.event_class),
        })?;
    let msg = Message {
        destination,
        key: t
            .key
            .as_ref()
            .and_then(|k| k.extract(event.raw))
            .map(Bytes::from),
        body: raw.clone(),
        meta: meta.clone(),
    };
    Ok(Job {
        sink: t.sink,
        msg,
        ledger_key: id.ledger_key(t.sink),
    })
}

/// The jobs whose (event, sink) pair the ledger has no confirm for; counts the skipped ones.
fn unconfirmed(app: &App, mut jobs: Vec<Job>) -> Vec<Job> {
    let mut seen = app
        .ledger
        .seen(jobs.iter().map(|j| j.ledger_key))
        .into_iter();
    jobs.retain(|j| {
        let skip = seen.next().unwrap_or(false);
        if skip {
            m::ledger_skip(app.sinks[j.sink].name());
        }
        !skip
    });
    jobs
}

/// The jobs of a batch that were not confirmed (index into the jobs, and why).
type Failures = Vec<(usize, SinkError)>;

/// Starts every job at once, waits for all confirms until the answer `deadline`.
///
/// The publishing runs in its own task holding the in-flight permit, so confirms that arrive
/// after a 503 are still recorded in the ledger, and memory stays bounded by the permits.
async fn publish(
    app: &Arc<App>,
    jobs: Vec<Job>,
    permit: OwnedSemaphorePermit,
    deadline: tokio::time::Instant,
) -> Result<(), Rejection> {
    if jobs.is_empty() {
        return Ok(());
    }
    let (tx, rx) = oneshot::channel();
    let task_app = app.clone();
    app.tasks.spawn(async move {
        let _permit = permit;
        let _gauge = m::InFlight::enter();
        let outcome = publish_all(&task_app, &jobs).await;
        let _ = tx.send(outcome);
    });
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(failures)) => match failures.first() {
            None => Ok(()),
            Some((_, e)) => Err(Rejection::Unconfirmed {
                failed: failures.len(),
                first: e.to_string(),
            }),
        },
        Ok(Err(_)) => Err(Rejection::Unconfirmed {
            failed: 0,
            first: "publish task ended".into(),
        }),
        Err(_) => Err(Rejection::DeadlineExceeded(app.answer_deadline)),
    }
}

async fn publish_all(app: &App, jobs: &[Job]) -> Failures {
    let started = Instant::now();
    // Each publish has its own deadline, so the confirms that did arrive are still recorded
    // when another sink never answers.
    let results = futures::future::join_all(jobs.iter().map(|j| async {
        tokio::time::timeout(app.publish_deadline, app.sinks[j.sink].publish(&j.msg))
            .await
            .unwrap_or_else(|_| {
                Err(SinkError::Timeout(
                    "no confirm before the publish deadline".into(),
                ))
            })
    }))
    .await;
    let mut confirmed = Vec::with_capacity(jobs.len());
    let mut failures = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(()) => confirmed.push(i),
            Err(e) => failures.push((i, e)),
        }
    }
    app.ledger
        .record(confirmed.iter().map(|&i| jobs[i].ledger_key));
    count(app, jobs, &confirmed, &failures, started);
    failures
}

fn log_outcome(webhook: &Webhook, answer: &Answer, rid: &str, started: Instant) {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match answer {
        Answer::Accepted(n) => {
            tracing::info!(request_id = rid, webhook = %webhook.name, events = n, ms, "batch accepted")
        }
        Answer::Rejected(r) => tracing::warn!(
            request_id = rid, webhook = %webhook.name, status = r.status().as_u16(), reason = r.code(), ms,
            "batch rejected: {r}"
        ),
    }
}

fn count(
    app: &App,
    jobs: &[Job],
    confirmed: &[usize],
    failures: &[(usize, SinkError)],
    started: Instant,
) {
    let mut per_destination: HashMap<(usize, &str), u64> = HashMap::new();
    for &i in confirmed {
        *per_destination
            .entry((jobs[i].sink, jobs[i].msg.destination.as_str()))
            .or_default() += 1;
    }
    for ((sink, topic), n) in per_destination {
        m::events_published(app.sinks[sink].name(), topic, n);
    }
    for (i, e) in failures {
        m::publish_failure(app.sinks[jobs[*i].sink].name(), e.code());
    }
    m::publish_latency(started.elapsed());
}
