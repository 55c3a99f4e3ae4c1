//! Publisher confirms attributed to their own message: one collector per channel that books each
//! `basic.return` against the message it names, never against whichever confirm lapin completes.
//!
//! lapin hands the oldest returned message to the next confirm it completes, and completes the
//! tags of a `basic.ack(multiple)` in hash-map order, so the returned message a confirm carries
//! may be another message's. RabbitMQ sends a message's `basic.return` before its `basic.ack`, so
//! when a confirm completes, its return (if any) has reached lapin and was handed to a confirm
//! completed at the same moment or earlier. The collector therefore owns every confirm of its
//! channel and, before deciding any of them, harvests the returns of all confirms completed so
//! far, identified by the returned message's own `message_id` (the event id) and routing key.
//!
//! A confirm can complete before its publisher has handed it over (the frames are written, the
//! broker answers, the publishing task has not run yet). Each publish therefore takes a numbered
//! [`Ticket`] before lapin gives its message a delivery tag; a confirm observed complete is decided
//! only once every ticket numbered before that moment has been handed over (or given up), and
//! swept once more.

use lapin::{Confirmation, PublisherConfirm};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
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
    pub(super) fn start(channel: u16) -> Self {
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
}

/// The per-channel task: owns the channel's confirms and decides each one.
struct Collector {
    channel: u16,
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
}

impl Collector {
    fn new(channel: u16, next: Arc<AtomicU64>, rx: mpsc::UnboundedReceiver<Note>) -> Self {
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

    /// Polls every pending confirm until a pass completes none, so that every confirm completed
    /// before one seen complete has given up the return it may carry.
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
            // Read after seeing them complete: every publish that had a delivery tag by then
            // holds a lower ticket.
            let barrier = self.next.load(Ordering::SeqCst);
            for c in &mut self.completed[before..] {
                c.barrier = barrier;
            }
        }
    }

    /// Keeps a completed confirm for decision, taking out the return it carries (whosever it is).
    fn complete(&mut self, entry: Entry, result: Result<Confirmation, lapin::Error>) {
        let result = result.map(|c| match c {
            Confirmation::Ack(Some(ret)) => {
                *self.returned.entry(Identity::of_return(&ret)).or_default() += 1;
                Confirmation::Ack(None)
            }
            Confirmation::Nack(Some(ret)) => {
                *self.returned.entry(Identity::of_return(&ret)).or_default() += 1;
                Confirmation::Nack(None)
            }
            other => other,
        });
        self.completed.push(Completed {
            identity: entry.identity,
            result,
            reply: entry.reply,
            barrier: u64::MAX,
        });
    }

    /// Answers every completed confirm whose barrier is passed.
    fn decide(&mut self) {
        let low = self.low;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.completed)
            .into_iter()
            .partition(|c| c.barrier <= low);
        self.completed = waiting;
        for c in ready {
            let outcome = self.outcome(&c.identity, c.result);
            let _ = c.reply.send(outcome);
        }
        if self.pending.is_empty() && self.completed.is_empty() && !self.returned.is_empty() {
            // Returns that named no message in flight: nothing can claim them any more.
            tracing::warn!(channel = self.channel, stray = ?self.returned, "RabbitMQ returned messages that match no publish in flight");
            self.returned.clear();
        }
    }

    fn outcome(
        &mut self,
        identity: &Identity,
        result: Result<Confirmation, lapin::Error>,
    ) -> Outcome {
        let returned = self.take_return(identity);
        match result {
            Ok(Confirmation::Ack(_)) => match returned {
                Some(()) => Outcome::Returned,
                None => Outcome::Confirmed,
            },
            Ok(Confirmation::Nack(_)) => Outcome::Nacked,
            Ok(Confirmation::NotRequested) => Outcome::NotRequested,
            Err(e) => Outcome::Failed(e),
        }
    }

    fn take_return(&mut self, identity: &Identity) -> Option<()> {
        let n = self.returned.get_mut(identity)?;
        *n -= 1;
        if *n == 0 {
            self.returned.remove(identity);
        }
        Some(())
    }
}

impl Future for Collector {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        this.receive(cx);
        this.sweep(cx);
        this.decide();
        if this.closed && this.pending.is_empty() && this.completed.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
