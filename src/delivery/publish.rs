//! Publishing a batch's jobs: the ledger filter before, every publish started at once, the
//! confirms awaited (until one publish deadline), permanent failures sent to the dead letter,
//! one ledger write of what was confirmed, and the counters.

use crate::app::App;
use crate::delivery::dead_letter::{self, Class};
use crate::delivery::ledger;
use crate::telemetry;
use crate::telemetry::metrics as m;
use crate::webhook::answer::Rejection;
use c360_sinks::{Message, Permanence, SinkError};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

/// One message for one sink, with what the ledger remembers it by.
pub struct Job {
    pub sink: usize,
    pub msg: Message,
    /// The sink of the (event, sink) pair the job stands for: `sink`, except on a dead-letter
    /// job, which keeps the pair (its origin and subject) of the publish it replaces.
    pub origin: usize,
    /// The event's delivery (or, with `ledger.match = "event"`, the event itself).
    pub subject: ledger::Subject,
}

impl Job {
    /// Why the event goes to the dead letter, on a job to the dead-letter destination.
    pub fn dead_letter(&self) -> Option<Permanence> {
        self.msg.meta.dead_letter.as_ref().map(|d| d.code)
    }
}

/// The job that takes `job`'s event to the dead-letter destination instead (`None` without
/// `[dead_letter]`, or when its template gives this event no legal destination either).
pub fn divert(app: &App, job: &Job, reason: Permanence, detail: &str) -> Option<Job> {
    let dl = app.dead_letter.as_ref()?;
    let original_sink = app.sinks[job.sink].name();
    let msg = dl.message(&job.msg, original_sink, reason, detail).ok()?;
    Some(Job {
        sink: dl.sink,
        msg,
        origin: job.origin,
        subject: job.subject,
    })
}

/// The jobs whose (event, sink) pair the ledger has no confirm for; counts the skipped ones.
pub async fn unconfirmed(app: &App, mut jobs: Vec<Job>) -> Vec<Job> {
    if jobs.is_empty() {
        return jobs;
    }
    let pairs: Vec<ledger::Pair> = jobs.iter().map(|j| pair(app, j)).collect();
    let mut seen = app.ledger.seen(&pairs).await.into_iter();
    jobs.retain(|j| {
        let skip = seen.next().unwrap_or(false);
        if skip {
            m::ledger_skip(app.sinks[j.origin].name());
        }
        !skip
    });
    jobs
}

/// The ledger's view of a job: the (event, sink) pair it stands for (a dead-letter job stands
/// for the pair of the publish it replaces).
fn pair<'a>(app: &'a App, j: &'a Job) -> ledger::Pair<'a> {
    ledger::Pair {
        key: j.subject.key(j.origin),
        webhook: &j.msg.meta.webhook,
        subject: j.subject,
        sink: app.sinks[j.origin].name(),
    }
}

/// Starts every job at once, waits for all confirms until the answer `deadline`.
///
/// The publishing runs in its own task holding the in-flight permit, so confirms that arrive
/// after a 503 are still recorded in the ledger, and memory stays bounded by the permits.
pub async fn publish(
    app: &Arc<App>,
    jobs: Vec<Job>,
    permit: OwnedSemaphorePermit,
    deadline: tokio::time::Instant,
    trace: Option<opentelemetry::Context>,
) -> Result<(), Rejection> {
    if jobs.is_empty() {
        return Ok(());
    }
    let (tx, rx) = oneshot::channel();
    let task_app = app.clone();
    app.tasks.spawn(async move {
        let _permit = permit;
        let _gauge = m::InFlight::enter();
        let outcome = publish_all(&task_app, jobs, trace.as_ref()).await;
        let _ = tx.send(outcome);
    });
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(failures)) => match telling(&failures) {
            None => Ok(()),
            Some(e) => Err(Rejection::Unconfirmed {
                failed: failures.len(),
                reason: reason(e),
                first: e.to_string(),
            }),
        },
        Ok(Err(_)) => Err(Rejection::Unconfirmed {
            failed: 0,
            reason: "broker_unconfirmed",
            first: "publish task ended".into(),
        }),
        Err(_) => Err(Rejection::DeadlineExceeded(app.answer_deadline)),
    }
}

/// The failure the answer names: a destination's own problem first (its code tells
/// catalog360's operator what to fix), else the first failure.
fn telling(failures: &[SinkError]) -> Option<&SinkError> {
    failures
        .iter()
        .find(|e| {
            matches!(
                e,
                SinkError::UnknownTopic(_)
                    | SinkError::TopicAuthorization(_)
                    | SinkError::Unroutable(_)
            )
        })
        .or_else(|| failures.first())
}

/// The answer's `error` code for a batch that failed with `e`.
fn reason(e: &SinkError) -> &'static str {
    match e {
        SinkError::UnknownTopic(_)
        | SinkError::TopicAuthorization(_)
        | SinkError::Unroutable(_) => e.code(),
        _ => "broker_unconfirmed",
    }
}

/// Publishes the jobs, then sends the events that failed permanently to the dead letter;
/// returns why each message that is still unconfirmed failed.
async fn publish_all(
    app: &App,
    jobs: Vec<Job>,
    trace: Option<&opentelemetry::Context>,
) -> Vec<SinkError> {
    let started = Instant::now();
    let (mut confirmed, mut failed) = attempt(app, jobs, trace).await;
    let diverted = dead_letters(app, &mut failed);
    if !diverted.is_empty() {
        let (letters, lost) = attempt(app, diverted, trace).await;
        confirmed.extend(letters);
        failed.extend(lost);
    }
    // One ledger write per batch, of the pairs confirmed at their destination or dead letter.
    let pairs: Vec<ledger::Pair> = confirmed.iter().map(|j| pair(app, j)).collect();
    app.ledger.record(&pairs).await;
    count(app, &confirmed, &failed);
    m::publish_latency(started.elapsed());
    failed.into_iter().map(|(_, e)| e).collect()
}

/// Starts every job at once and waits for all confirms; returns the confirmed jobs and the
/// failed ones with why. Traced, each message has a PRODUCER span ended at its confirm.
async fn attempt(
    app: &App,
    mut jobs: Vec<Job>,
    trace: Option<&opentelemetry::Context>,
) -> (Vec<Job>, Vec<(Job, SinkError)>) {
    let mut spans = trace.map(|cx| producer_spans(app, cx, &mut jobs).into_iter());
    // One deadline for the whole attempt: the confirms that did arrive are still recorded
    // when another sink never answers.
    let deadline = tokio::time::Instant::now() + app.publish_deadline;
    let groups = groups(&jobs);
    let settled = futures::future::join_all(groups.iter().map(|(&(sink, letters), members)| {
        let msgs: Vec<&Message> = members.iter().map(|&i| &jobs[i].msg).collect();
        let sink = &*app.sinks[sink];
        async move {
            if letters {
                dead_letter::publish(sink, &msgs, deadline).await
            } else {
                sink.publish_many(&msgs, deadline).await
            }
        }
    }))
    .await;
    let mut outcomes: Vec<Option<Result<(), SinkError>>> = jobs.iter().map(|_| None).collect();
    for (members, results) in groups.values().zip(settled) {
        for (&i, r) in members.iter().zip(results) {
            outcomes[i] = Some(r);
        }
    }
    let mut confirmed = Vec::with_capacity(jobs.len());
    let mut failed = Vec::new();
    for (job, r) in jobs.into_iter().zip(outcomes) {
        let r = r.unwrap_or_else(|| Err(c360_sinks::deadline_passed()));
        if let Some(span) = spans.as_mut().and_then(Iterator::next).flatten() {
            telemetry::end_producer_span(span, &r);
        }
        match r {
            Ok(()) => confirmed.push(job),
            Err(e) => failed.push((job, e)),
        }
    }
    (confirmed, failed)
}

/// Starts every job's PRODUCER span under the batch's SERVER span, its context put on the
/// message; `None` in place of a span the tracer did not start.
fn producer_spans(
    app: &App,
    cx: &opentelemetry::Context,
    jobs: &mut [Job],
) -> Vec<Option<opentelemetry_sdk::trace::Span>> {
    jobs.iter_mut()
        .map(|j| {
            app.telemetry
                .producer_span(cx, &app.messaging[j.sink], &mut j.msg)
        })
        .collect()
}

/// The jobs' indices by (sink, whether they are dead letters), in batch order within each.
fn groups(jobs: &[Job]) -> BTreeMap<(usize, bool), Vec<usize>> {
    let mut groups: BTreeMap<(usize, bool), Vec<usize>> = BTreeMap::new();
    for (i, j) in jobs.iter().enumerate() {
        groups
            .entry((j.sink, j.dead_letter().is_some()))
            .or_insert_with(|| Vec::with_capacity(jobs.len()))
            .push(i);
    }
    groups
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
            Class::Permanent(reason) if job.dead_letter().is_none() => {
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

fn count(app: &App, confirmed: &[Job], failed: &[(Job, SinkError)]) {
    let mut per_destination: HashMap<(usize, &str), u64> = HashMap::new();
    for j in confirmed {
        *per_destination
            .entry((j.sink, j.msg.destination.as_str()))
            .or_default() += 1;
        dead_letter::confirmed(&j.msg);
    }
    for ((sink, topic), n) in per_destination {
        m::events_published(app.sinks[sink].name(), topic, n);
    }
    for (j, e) in failed {
        m::publish_failure(app.sinks[j.sink].name(), e.code());
        if j.dead_letter().is_some() {
            dead_letter::failed(&j.msg, e);
        }
    }
}
