//! Publisher confirms attributed to their own message: one collector per channel that books each
//! `basic.return` against the message it names, never against whichever confirm lapin completes.
//!
//! lapin hands the oldest returned message to the next confirm it completes, and completes the
//! tags of a `basic.ack(multiple)` in hash-map order, so the returned message a confirm carries
//! may be another message's. RabbitMQ sends a message's `basic.return` before its `basic.ack`, so
//! by the end of the ack frame that completes a message, lapin has handed its return to one of
//! the confirms that frame (or an earlier one) completed. The collector therefore owns every
//! confirm of its channel and, when one completes:
//! 1. waits for lapin to finish the frame (it takes the lock lapin completes a frame under, by
//!    starting a `wait_for_confirms`, which also yields returns of confirms nobody awaits);
//! 2. harvests the returns carried by every confirm completed so far, keyed by the returned
//!    message's own `message_id` (the event id) and routing key;
//! 3. decides: a confirm is "returned" only when a return with its identity was harvested.
//!
//! RabbitMQ documents the return as sent before the ack, yet under load a return was seen here
//! arriving after its ack (RabbitMQ 3.10, one channel, 16 concurrent senders). So a confirm
//! acked with no return of its own is decided "confirmed" only after a fence: a `basic.qos`
//! round trip on the channel, started after the ack, whose reply follows every frame RabbitMQ
//! wrote for the earlier publishes; and only while lapin holds no return waiting for a confirm
//! to take it (lapin shows that queue only in its `Debug` output, which is read for it; an
//! unreadable output counts as "returns waiting"). A return still waiting is taken by the next
//! confirm; a channel that falls quiet meanwhile answers 503 at the deadline, never a 200.

//! A confirm can complete before its publisher has handed it over (the frames are written, the
//! broker answers, the publishing task has not run yet). Each publish therefore takes a numbered
//! [`Ticket`] before lapin gives its message a delivery tag; a confirm is decided only once every
//! ticket numbered before it was seen complete has been handed over (or given up), and swept.
//!
//! Taking lapin's pending-confirm marker means `Channel::wait_for_confirms` elsewhere may return
//! before the last confirm; closing a channel fails what is still pending, which answers 503.

use lapin::{Channel, Confirmation, PublisherConfirm};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What the broker said about one message.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Acked, and no queue returned it: it reached at least one queue.
    Confirmed,
    /// Returned as unroutable (no queue bound for its routing key), then acked.
    Returned,
    /// The broker nacked it.
    Nacked,
    /// The channel is not in confirm mode.
    NotRequested,
    /// The channel or connection failed before the confirm.
    Failed(lapin::Error),
}

/// Which message a return is about: its `message_id` (the event id) and routing key. Two
/// messages alike in both are the same event to the same destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Identity {
    pub message_id: String,
    pub routing_key: String,
}

impl Identity {
    fn of_return(ret: &lapin::message::BasicReturnMessage) -> Self {
        let message_id = ret.delivery.properties.message_id().as_ref();
        Identity {
            message_id: message_id
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            routing_key: ret.delivery.routing_key.as_str().to_owned(),
        }
    }
}

/// The handle publishers of one channel use; the collector task ends when it is dropped and
/// every confirm handed to it is decided.
pub(super) struct Confirms {
    next: Arc<AtomicU64>,
    tx: mpsc::UnboundedSender<Note>,
}

impl Confirms {
    /// Starts the channel's collector task (needs a Tokio runtime).
    pub(super) fn start(channel: Channel) -> Self {
        let next = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(Collector::new(channel, next.clone(), rx));
        Self { next, tx }
    }

    /// A numbered place for one publish; take it before `basic_publish`.
    pub(super) fn ticket(&self) -> Ticket {
        Ticket {
            seq: self.next.fetch_add(1, Ordering::SeqCst),
            tx: Some(self.tx.clone()),
        }
    }
}

/// One publish's place in the collector's order. Dropped without [`Ticket::submit`] (the publish
/// failed or was cancelled), it tells the collector not to wait for it.
pub(super) struct Ticket {
    seq: u64,
    tx: Option<mpsc::UnboundedSender<Note>>,
}

impl Ticket {
    /// Hands the message's confirm to the collector; the answer comes once it is decided.
    pub(super) fn submit(
        mut self,
        confirm: PublisherConfirm,
        identity: Identity,
    ) -> oneshot::Receiver<Outcome> {
        let (reply, answer) = oneshot::channel();
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Note::Sent(Entry {
                seq: self.seq,
                identity,
                confirm,
                reply,
            }));
        }
        answer
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Note::GaveUp(self.seq));
        }
    }
}

enum Note {
    Sent(Entry),
    GaveUp(u64),
}

struct Entry {
    seq: u64,
    identity: Identity,
    confirm: PublisherConfirm,
    reply: oneshot::Sender<Outcome>,
}

/// A confirm seen complete, waiting until every ticket numbered below `barrier` is in.
struct Completed {
    identity: Identity,
    result: Result<Confirmation, lapin::Error>,
    reply: oneshot::Sender<Outcome>,
    barrier: u64,
    /// For an ack with no return of its own: the fence that must have completed first.
    fence: Option<u64>,
}

/// The per-channel task: owns the channel's confirms and decides each one.
struct Collector {
    channel: Channel,
    next: Arc<AtomicU64>,
    rx: mpsc::UnboundedReceiver<Note>,
    closed: bool,
    pending: Vec<Entry>,
    completed: Vec<Completed>,
    /// Returns harvested and not yet booked, by the identity of the message they name.
    returned: HashMap<Identity, usize>,
    /// Every ticket numbered below this is in (handed over or given up).
    low: u64,
    /// Tickets in, numbered at or above `low`.
    early: BTreeSet<u64>,
    /// The timer that brings the collector back while confirms wait on lapin's returns.
    recheck: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The fence round trip in flight, with its number.
    fence: Option<(u64, Fence)>,
    /// The number of the last fence started, and of the last one completed.
    fences_started: u64,
    fences_done: u64,
}

/// A synchronous method's round trip on the channel (`basic.qos`, which changes nothing for a
/// publisher): its reply comes after every frame RabbitMQ wrote for the publishes before it.
type Fence = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Collector {
    fn new(channel: Channel, next: Arc<AtomicU64>, rx: mpsc::UnboundedReceiver<Note>) -> Self {
        Self {
            channel,
            next,
            rx,
            closed: false,
            pending: Vec::new(),
            completed: Vec::new(),
            returned: HashMap::new(),
            low: 0,
            early: BTreeSet::new(),
            recheck: None,
            fence: None,
            fences_started: 0,
            fences_done: 0,
        }
    }

    /// Takes in what publishers handed over.
    fn receive(&mut self, cx: &mut Context<'_>) {
        while let Poll::Ready(note) = self.rx.poll_recv(cx) {
            match note {
                Some(Note::Sent(entry)) => {
                    self.arrived(entry.seq);
                    self.pending.push(entry);
                }
                Some(Note::GaveUp(seq)) => self.arrived(seq),
                None => {
                    self.closed = true;
                    break;
                }
            }
        }
    }

    fn arrived(&mut self, seq: u64) {
        self.early.insert(seq);
        while self.early.remove(&self.low) {
            self.low += 1;
        }
    }

    /// Polls every pending confirm until a pass completes none; after each pass that completed
    /// some, lets lapin finish the frames that completed them, so that the confirms given their
    /// returns in those frames are completed too and harvested by the next pass.
    fn sweep(&mut self, cx: &mut Context<'_>) {
        loop {
            let mut i = 0;
            let before = self.completed.len();
            while i < self.pending.len() {
                match Pin::new(&mut self.pending[i].confirm).poll(cx) {
                    Poll::Ready(result) => {
                        let entry = self.pending.swap_remove(i);
                        self.complete(entry, result);
                    }
                    Poll::Pending => i += 1,
                }
            }
            if self.completed.len() == before {
                return;
            }
            self.frames_done(cx);
            // Read after seeing them complete: every publish that had a delivery tag by then
            // holds a lower ticket.
            let barrier = self.next.load(Ordering::SeqCst);
            for c in &mut self.completed[before..] {
                c.barrier = barrier;
            }
        }
    }

    /// Returns once lapin is not inside an ack frame of this channel: `wait_for_confirms` takes
    /// the lock lapin completes a whole frame under. When nothing is pending it also hands over
    /// the returns of confirms that were dropped unawaited; they are harvested too.
    fn frames_done(&mut self, cx: &mut Context<'_>) {
        let mut wait = Box::pin(self.channel.wait_for_confirms());
        let stray = match wait.as_mut().poll(cx) {
            Poll::Ready(Ok(stray)) => stray,
            _ => Vec::new(),
        };
        drop(wait);
        for ret in &stray {
            self.book(ret);
        }
    }

    /// Counts a returned message against the identity it names.
    fn book(&mut self, ret: &lapin::message::BasicReturnMessage) {
        *self.returned.entry(Identity::of_return(ret)).or_default() += 1;
    }

    /// Keeps a completed confirm for decision, taking out the return it carries (whosever it is).
    fn complete(&mut self, entry: Entry, result: Result<Confirmation, lapin::Error>) {
        let result = result.map(|c| match c {
            Confirmation::Ack(Some(ret)) => {
                self.book(&ret);
                Confirmation::Ack(None)
            }
            Confirmation::Nack(Some(ret)) => {
                self.book(&ret);
                Confirmation::Nack(None)
            }
            other => other,
        });
        self.completed.push(Completed {
            identity: entry.identity,
            result,
            reply: entry.reply,
            barrier: u64::MAX,
            fence: None,
        });
    }

    /// Answers every completed confirm whose barrier is passed. One acked with no return of its
    /// own waits for a fence started after it completed (RabbitMQ may write a return after its
    /// ack), and then for lapin to hold no return that a later confirm has yet to take.
    fn decide(&mut self) {
        let low = self.low;
        let mut quiet = None;
        for mut c in std::mem::take(&mut self.completed) {
            let clean_ack = matches!(c.result, Ok(Confirmation::Ack(_)))
                && !self.returned.contains_key(&c.identity);
            let decidable = c.barrier <= low
                && (!clean_ack || {
                    let fence = *c.fence.get_or_insert(self.fences_started + 1);
                    fence <= self.fences_done
                        && *quiet.get_or_insert_with(|| !returns_waiting(&self.channel))
                });
            if decidable {
                let outcome = self.outcome(&c.identity, c.result);
                let _ = c.reply.send(outcome);
            } else {
                self.completed.push(c);
            }
        }
        if self.pending.is_empty() && self.completed.is_empty() && !self.returned.is_empty() {
            // Returns that named no message in flight: nothing can claim them any more.
            tracing::warn!(channel = self.channel.id(), stray = ?self.returned, "RabbitMQ returned messages that match no publish in flight");
            self.returned.clear();
        }
    }

    /// Polls the fence in flight; starts the next one when a completed confirm waits for it.
    fn fence(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some((n, fence)) = &mut self.fence {
            if fence.as_mut().poll(cx).is_pending() {
                return false;
            }
            self.fences_done = *n;
            self.fence = None;
            return true;
        }
        let wanted = self.completed.iter().filter_map(|c| c.fence).max();
        if wanted.is_some_and(|n| n > self.fences_done) {
            self.fences_started += 1;
            let channel = self.channel.clone();
            let mut fence: Fence = Box::pin(async move {
                let _ = channel
                    .basic_qos(0, lapin::options::BasicQosOptions::default())
                    .await;
            });
            if fence.as_mut().poll(cx).is_ready() {
                self.fences_done = self.fences_started;
                return true;
            }
            self.fence = Some((self.fences_started, fence));
        }
        false
    }

    fn outcome(
        &mut self,
        identity: &Identity,
        result: Result<Confirmation, lapin::Error>,
    ) -> Outcome {
        let returned = self.take_return(identity);
        match result {
            Ok(Confirmation::Ack(_)) if returned => Outcome::Returned,
            Ok(Confirmation::Ack(_)) => Outcome::Confirmed,
            Ok(Confirmation::Nack(_)) => Outcome::Nacked,
            Ok(Confirmation::NotRequested) => Outcome::NotRequested,
            Err(e) => Outcome::Failed(e),
        }
    }

    /// Takes one return booked against `identity`; whether there was one.
    fn take_return(&mut self, identity: &Identity) -> bool {
        let Some(n) = self.returned.get_mut(identity) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            self.returned.remove(identity);
        }
        true
    }
}

/// Whether lapin holds returned messages no confirm has taken yet (or cannot say: its lock was
/// busy, or its `Debug` output changed), read from the channel's `Debug` output.
fn returns_waiting(channel: &Channel) -> bool {
    const FIELD: &str = "waiting_messages: ";
    let text = format!("{channel:?}");
    match text.find(FIELD) {
        Some(i) => !text[i + FIELD.len()..].starts_with("[]"),
        None => true,
    }
}

/// How soon a collector whose confirms wait for lapin's returned messages looks again.
const RECHECK: Duration = Duration::from_millis(1);

impl Future for Collector {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            this.receive(cx);
            this.sweep(cx);
            this.decide();
            if !this.fence(cx) {
                break;
            }
        }
        if this.closed && this.pending.is_empty() && this.completed.is_empty() {
            return Poll::Ready(());
        }
        let waiting_on_lapin = this
            .completed
            .iter()
            .any(|c| c.barrier <= this.low && c.fence.is_some_and(|n| n <= this.fences_done));
        if waiting_on_lapin {
            // Waiting on lapin's returned messages, which wake nobody: look again shortly.
            let recheck = this
                .recheck
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(RECHECK)));
            if recheck.as_mut().poll(cx).is_ready() {
                this.recheck = None;
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }
}
