//! The POST handler: verify → split → route → publish every event → await every confirm → answer.
//! Publishing the planned jobs is `publish`'s; events no broker will ever take go to the dead
//! letter when one is configured (`dead_letter`).

use crate::app::{App, Webhook};
use crate::config::Unrouted;
use crate::delivery::cloudevents;
use crate::delivery::ledger::Subject;
use crate::delivery::publish::{self, Job};
use crate::delivery::routing::Target;
use crate::telemetry;
use crate::telemetry::metrics as m;
use crate::webhook::answer::{Answer, Rejection};
use crate::webhook::envelope::{self, EnvelopeError, Event};
use crate::webhook::event_id::event_ids;
use crate::webhook::signature::{HEADER, Verdict};
use bytes::Bytes;
use c360_sinks::{EventMeta, Message, Permanence};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

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
    let trace = app
        .telemetry
        .server_span(&headers, &webhook.path, &webhook.name);
    let outcome = match admit(webhook, client) {
        Ok(()) => ingest(&app, webhook, &headers, body, started, trace.as_ref()).await,
        Err(r) => Err(r),
    };
    let answer = match outcome {
        Ok(n) => Answer::Accepted(n),
        Err(r) => Answer::Rejected(r),
    };
    log_outcome(webhook, &answer, &rid, started);
    m::request(&webhook.name, answer.status().as_u16(), answer.code());
    if let Some(cx) = trace {
        end_server_span(cx, &answer);
    }
    answer
}

/// The SERVER span gets the answer: its status, the events accepted or the refusal's code.
fn end_server_span(cx: opentelemetry::Context, answer: &Answer) {
    let (events, reason) = match answer {
        Answer::Accepted(n) => (Some(*n), None),
        Answer::Rejected(r) => (None, Some(r.code())),
    };
    telemetry::end_server_span(cx, answer.status().as_u16(), events, reason);
}

/// Refuses a client outside the webhook's `allow_from`, before anything of the body is read.
pub fn admit(webhook: &Webhook, client: Option<IpAddr>) -> Result<(), Rejection> {
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
    trace: Option<&opentelemetry::Context>,
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
    let jobs = publish::unconfirmed(app, plan(app, webhook, &body, &events)?).await;
    publish::publish(app, jobs, permit, deadline, trace.cloned()).await?;
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
    let subjects = app.ledger.subjects(&ids);
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
        let subject = subjects.of(index, id);
        for t in &route.targets {
            jobs.push(event_job(app, index, event, subject, t, &meta, &raw)?);
        }
    }
    Ok(jobs)
}

/// The job that publishes event `index` (its bytes `raw`, its headers `meta`, its ledger
/// `subject`) to target `t`, or to the dead letter when its destination is illegal.
pub fn event_job(
    app: &App,
    index: usize,
    event: &Event,
    subject: Subject,
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
            trace: None,
        },
        origin: t.sink,
        subject,
    };
    let illegal = match t.topic.destination(event, &meta.webhook) {
        Ok(destination) => return Ok(job(destination)),
        Err(illegal) => format!("event_class {:?} {illegal}", event.event_class),
    };
    let payload_class = event.payload_class.as_deref();
    let original = job(t
        .topic
        .render_parts(&event.event_class, payload_class, &meta.webhook));
    publish::divert(app, &original, Permanence::IllegalDestination, &illegal).ok_or(
        EnvelopeError::BadEvent {
            index,
            reason: illegal,
        },
    )
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
