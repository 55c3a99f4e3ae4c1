//! The POST handler: verify → split → route → publish every event → await every confirm → answer.
//! Events no broker will ever take go to the dead letter when one is configured (`dead_letter`).

use crate::answer::{Answer, Rejection};
use crate::app::{App, Webhook};
use crate::cloudevents;
use crate::config::Unrouted;
use crate::dead_letter::{self, Class};
use crate::envelope::{self, EnvelopeError, Event};
use crate::event_id::{EventId, event_ids};
use crate::ledger;
use crate::metrics as m;
use crate::routing::Target;
use crate::signature::{HEADER, Verdict};
use bytes::Bytes;
use c360_sinks::{EventMeta, Message, Permanence, SinkError};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

/// One message for one sink, with its ledger key.
struct Job {
    sink: usize,
    msg: Message,
    /// The sink of the (event, sink) pair the job stands for: `sink`, except on a dead-letter
    /// job, which keeps the pair (and its ledger key) of the publish it replaces.
    origin: usize,
    ledger_key: ledger::Key,
    /// Set on a job to the dead-letter destination: why the event goes there.
    dead_letter: Option<Permanence>,
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
    let jobs = unconfirmed(app, plan(app, webhook, &body, &events)?).await;
    publish(app, jobs, permit, deadline).await?;
    Ok(events.len())
}

/// Turns events into one job per (event, target). An event without a legal destination goes to
/// the dead letter, or without one rejects the whole batch before anything is published.
fn plan(
    app: &App,
    webhook: &Webhook,
    body: &Bytes,
    events: &[Event],
) -> Result<Vec<Job>, Rejection> {
    let ids = event_ids(&webhook.name, events);
    // Received: the whole batch is read and verified. Shared by its events, built once.
    let ce = cloudevents::Batch::new(webhook.ce_source.clone(), SystemTime::now());
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
            cloudevent: Some(ce.event(&event.event_class)),
            dead_letter: None,
        });
        let raw = body.slice_ref(event.raw.get().as_bytes());
        for t in &route.targets {
            jobs.push(event_job(app, index, event, &id, t, &meta, &raw)?);
        }
    }
    Ok(jobs)
}

/// The job that publishes event `index` (its bytes `raw`, its headers `meta`) to target `t`,
/// or to the dead letter when its destination is illegal.
fn event_job(
    app: &App,
    index: usize,
    event: &Event,
    id: &EventId,
    t: &Target,
    meta: &Arc<EventMeta>,
    raw: &Bytes,
) -> Result<Job, EnvelopeError> {
    let job = |destination| Job {
        sink: t.sink,
        msg: Message {
            destination,
            key: t
                .key
                .as_ref()
                .and_then(|k| k.extract(event.raw))
                .map(Bytes::from),
            body: raw.clone(),
            meta: meta.clone(),
        },
        origin: t.sink,
        ledger_key: id.ledger_key(t.sink),
        dead_letter: None,
    };
    let illegal = match t.topic.destination(event, &meta.webhook) {
        Ok(destination) => return Ok(job(destination)),
        Err(illegal) => format!("event_class {:?} {illegal}", event.event_class),
    };
    let payload_class = event.payload_class.as_deref();
    let original = job(t
        .topic
        .render_parts(&event.event_class, payload_class, &meta.webhook));
    divert(app, &original, Permanence::IllegalDestination, &illegal).ok_or(
        EnvelopeError::BadEvent {
            index,
            reason: illegal,
        },
    )
}

/// The job that takes `job`'s event to the dead-letter destination instead (`None` without
/// `[dead_letter]`, or when its template gives this event no legal destination either).
fn divert(app: &App, job: &Job, reason: Permanence, detail: &str) -> Option<Job> {
    let dl = app.dead_letter.as_ref()?;
    let original_sink = app.sinks[job.sink].name();
    let msg = dl.message(&job.msg, original_sink, reason, detail).ok()?;
    Some(Job {
        sink: dl.sink,
        msg,
        origin: job.origin,
        ledger_key: job.ledger_key,
        dead_letter: Some(reason),
    })
}

/// The jobs whose (event, sink) pair the ledger has no confirm for; counts the skipped ones.
async fn unconfirmed(app: &App, mut jobs: Vec<Job>) -> Vec<Job> {
    if jobs.is_empty() {
        return jobs;
    }
    let pairs: Vec<ledger::Pair> = jobs.iter().map(|j| pair(app, j)).collect();
    let mut seen = app.ledger.seen(&pairs).await.into_iter();
    jobs.retain(|j| {
        let skip = seen.next().unwrap_or(false);
        if skip {
            m::ledger_skip(app.sinks[j.sink].name());
        }
        !skip
    });
    jobs
}

/// The ledger's view of a job: the (event, sink) pair it stands for (a dead-letter job stands
/// for the pair of the publish it replaces).
fn pair<'a>(app: &'a App, j: &'a Job) -> ledger::Pair<'a> {
    ledger::Pair {
        key: j.ledger_key,
        webhook: &j.msg.meta.webhook,
        event_id: &j.msg.meta.id,
        sink: app.sinks[j.origin].name(),
    }
}

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
        let outcome = publish_all(&task_app, jobs).await;
        let _ = tx.send(outcome);
    });
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(failures)) => match failures.first() {
            None => Ok(()),
            Some(e) => Err(Rejection::Unconfirmed {
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

/// Publishes the jobs, then sends the events that failed permanently to the dead letter;
/// returns why each message that is still unconfirmed failed.
async fn publish_all(app: &App, jobs: Vec<Job>) -> Vec<SinkError> {
    let started = Instant::now();
    let mut failed = attempt(app, jobs).await;
    let diverted = dead_letters(app, &mut failed);
    if !diverted.is_empty() {
        failed.extend(attempt(app, diverted).await);
    }
    m::publish_latency(started.elapsed());
    failed.into_iter().map(|(_, e)| e).collect()
}

/// Starts every job at once and waits for all confirms; records the confirmed pairs in the
/// ledger and returns the failed jobs with why.
async fn attempt(app: &App, jobs: Vec<Job>) -> Vec<(Job, SinkError)> {
    // Each publish has its own deadline, so the confirms that did arrive are still recorded
    // when another sink never answers.
    let results = futures::future::join_all(jobs.iter().map(|j| async {
        let sink = &*app.sinks[j.sink];
        let publish = async {
            match j.dead_letter {
                None => sink.publish(&j.msg).await,
                Some(_) => dead_letter::publish(sink, &j.msg).await,
            }
        };
        tokio::time::timeout(app.publish_deadline, publish)
            .await
            .unwrap_or_else(|_| {
                Err(SinkError::Timeout(
                    "no confirm before the publish deadline".into(),
                ))
            })
    }))
    .await;
    let mut confirmed = Vec::with_capacity(jobs.len());
    let mut failed = Vec::new();
    for (job, r) in jobs.into_iter().zip(results) {
        match r {
            Ok(()) => confirmed.push(job),
            Err(e) => failed.push((job, e)),
        }
    }
    let pairs: Vec<ledger::Pair> = confirmed.iter().map(|j| pair(app, j)).collect();
    app.ledger.record(&pairs).await;
    count(app, &confirmed, &failed);
    failed
}

/// Takes the permanent failures out of `failed` and returns their dead-letter jobs (none
/// without `[dead_letter]`; a failed dead letter is never dead-lettered again).
fn dead_letters(app: &App, failed: &mut Vec<(Job, SinkError)>) -> Vec<Job> {
    if app.dead_letter.is_none() {
        return Vec::new();
    }
    let mut diverted = Vec::new();
    failed.retain(|(job, e)| {
        let to = match dead_letter::classify(e) {
            Class::Permanent(reason) if job.dead_letter.is_none() => {
                divert(app, job, reason, e.detail())
            }
            _ => None,
        };
        let keep = to.is_none();
        diverted.extend(to);
        keep
    });
    diverted
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

fn count(app: &App, confirmed: &[Job], failed: &[(Job, SinkError)]) {
    let mut per_destination: HashMap<(usize, &str), u64> = HashMap::new();
    for j in confirmed {
        *per_destination
            .entry((j.sink, j.msg.destination.as_str()))
            .or_default() += 1;
        if let Some(reason) = j.dead_letter {
            dead_letter::confirmed(&j.msg, reason);
        }
    }
    for ((sink, topic), n) in per_destination {
        m::events_published(app.sinks[sink].name(), topic, n);
    }
    for (j, e) in failed {
        m::publish_failure(app.sinks[j.sink].name(), e.code());
        if j.dead_letter.is_some() {
            dead_letter::failed(&j.msg, e);
        }
    }
}
