//! Which later publishes the retry ledger skips (SPEC §7), read back from a real topic: by
//! default only a resend of the same batch (whatever its envelope, through any replica); a
//! byte-identical event in another batch, or twice in one batch, is published each time.
//! `ledger.match = "event"` skips an identical event in any batch. Each case runs with the
//! memory ledger and with the suite's Redis.

use crate::harness::{self, Bridge, Record, create_topics, kafka, post};
use crate::redis_server;

const KEY: &str = "ledger-key";

/// Where the ledger keeps its confirmations.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Memory,
    Redis,
}

impl Backend {
    /// `[ledger]` of this backend (Redis: the suite's, under a prefix of the test's own), with
    /// `match` set when `matching` is given.
    fn toml(self, matching: Option<&str>) -> String {
        let matching = matching.map_or(String::new(), |m| format!("match = \"{m}\"\n"));
        match self {
            Backend::Memory => format!("[ledger]\n{matching}"),
            Backend::Redis => format!(
                "[ledger]\nbackend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"{}:\"\nttl = \"10m\"\ntimeout = \"1s\"\n{matching}",
                redis_server::shared_url(),
                harness::unique("it-ledger")
            ),
        }
    }
}

/// A topic of the test's own and the configuration of a bridge publishing every event to it
/// through a Kafka sink of a unique name (its skip counter is the test's alone).
struct Setup {
    topic: String,
    sink: String,
    toml: String,
}

impl Setup {
    async fn new(backend: Backend, matching: Option<&str>) -> Setup {
        let topic = harness::unique("ledger");
        create_topics(&kafka(), std::slice::from_ref(&topic), 1).await;
        let sink = harness::unique("lk");
        let toml = format!(
            "{}{}{}{}",
            harness::webhook_toml("ledger", KEY),
            harness::kafka_sink_toml(&sink, &kafka()),
            harness::route_all_toml(&[&sink], &format!("topic = \"{topic}\"\n")),
            backend.toml(matching),
        );
        Setup { topic, sink, toml }
    }

    async fn bridge(&self) -> Bridge {
        Bridge::start(&self.toml).await
    }

    /// Everything on the topic.
    async fn read(&self) -> Vec<Record> {
        harness::consume(&kafka(), &self.topic, 1).await
    }

    /// The pairs `bridge` skipped so far.
    async fn skips(&self, bridge: &Bridge) -> f64 {
        let line = format!("c360_ledger_skips_total{{sink=\"{}\"}}", self.sink);
        harness::metric(&harness::metrics_text(bridge).await, &line)
    }
}

/// Posts `body` to `bridge` and requires `200 {"accepted": events}`.
async fn accepted(bridge: &Bridge, body: &[u8], events: usize) {
    let r = post(&bridge.url("/hook"), body, Some(KEY)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json, serde_json::json!({ "accepted": events }));
}

/// A batch of these events, exactly as given.
fn batch(events: &[&String]) -> Vec<u8> {
    let owned: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    harness::batch(&owned)
}

/// The records whose body is `event`, byte for byte.
fn copies<'a>(records: &'a [Record], event: &str) -> Vec<&'a Record> {
    records
        .iter()
        .filter(|r| r.payload == event.as_bytes())
        .collect()
}

/// The `c360-event-id`s of `records`, in order.
fn ids(records: &[&Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.headers["c360-event-id"].clone())
        .collect()
}

fn event(tag: &str) -> String {
    harness::event("task_created", &harness::unique(tag))
}

/// The same batch posted twice, the second time inside another envelope: every event once.
async fn the_same_batch_twice_is_published_once(backend: Backend) {
    let setup = Setup::new(backend, None).await;
    let bridge = setup.bridge().await;
    let (e, f) = (event("e"), event("f"));
    accepted(&bridge, &batch(&[&e, &f]), 2).await;
    accepted(&bridge, &batch(&[&e, &f]), 2).await;
    let envelope =
        format!("{{\"attempt\": 2, \"events\": [ {e} ,\n {f} ], \"sent_at\": \"later\"}}");
    accepted(&bridge, envelope.as_bytes(), 2).await;
    let records = setup.read().await;
    assert_eq!(records.len(), 2, "{backend:?}: the resends published again");
    assert_eq!(copies(&records, &e).len(), 1);
    assert_eq!(copies(&records, &f).len(), 1);
    assert_eq!(setup.skips(&bridge).await, 4.0, "both resends skipped both");
}

/// E in one batch, then E again (byte-identical) in another batch: both 200, E read twice
/// with the same `c360-event-id`.
async fn the_same_event_in_two_batches_is_published_twice(backend: Backend) {
    let setup = Setup::new(backend, None).await;
    let bridge = setup.bridge().await;
    let (e, f) = (event("e"), event("f"));
    accepted(&bridge, &batch(&[&e]), 1).await;
    accepted(&bridge, &batch(&[&f, &e]), 2).await;
    let records = setup.read().await;
    let e_copies = copies(&records, &e);
    assert_eq!(
        e_copies.len(),
        2,
        "{backend:?}: the second batch's 200 promised E too"
    );
    let e_ids = ids(&e_copies);
    assert_eq!(e_ids[0], e_ids[1], "consumers dedupe on content");
    assert_eq!(copies(&records, &f).len(), 1);
    assert_eq!(records.len(), 3);
    assert_eq!(setup.skips(&bridge).await, 0.0);
}

/// [E, E] in one batch: two messages (ids `X` and `X-1`); the batch's resend publishes neither.
async fn two_identical_events_in_one_batch_are_published_twice(backend: Backend) {
    let setup = Setup::new(backend, None).await;
    let bridge = setup.bridge().await;
    let e = event("e");
    let body = batch(&[&e, &e]);
    accepted(&bridge, &body, 2).await;
    accepted(&bridge, &body, 2).await;
    let records = setup.read().await;
    assert_eq!(records.len(), 2, "{backend:?}");
    let e_ids = ids(&copies(&records, &e));
    assert_eq!(e_ids.len(), 2);
    assert_eq!(e_ids[1], format!("{}-1", e_ids[0]));
    assert_eq!(setup.skips(&bridge).await, 2.0, "the resend skipped both");
}

/// `ledger.match = "event"`: E in a second batch is skipped, as for a sender that re-batches.
async fn event_matching_skips_an_identical_event_in_another_batch(backend: Backend) {
    let setup = Setup::new(backend, Some("event")).await;
    let bridge = setup.bridge().await;
    let (e, f) = (event("e"), event("f"));
    accepted(&bridge, &batch(&[&e]), 1).await;
    accepted(&bridge, &batch(&[&f, &e]), 2).await;
    let records = setup.read().await;
    assert_eq!(
        copies(&records, &e).len(),
        1,
        "{backend:?}: E published again"
    );
    assert_eq!(copies(&records, &f).len(), 1);
    assert_eq!(records.len(), 2);
    assert_eq!(setup.skips(&bridge).await, 1.0);
}

#[tokio::test]
async fn memory_the_same_batch_twice_is_published_once() {
    let _shared = harness::SHARED_BROKERS.read().await;
    the_same_batch_twice_is_published_once(Backend::Memory).await;
}

#[tokio::test]
async fn redis_the_same_batch_twice_is_published_once() {
    let _shared = harness::SHARED_BROKERS.read().await;
    the_same_batch_twice_is_published_once(Backend::Redis).await;
}

#[tokio::test]
async fn memory_the_same_event_in_two_batches_is_published_twice() {
    let _shared = harness::SHARED_BROKERS.read().await;
    the_same_event_in_two_batches_is_published_twice(Backend::Memory).await;
}

#[tokio::test]
async fn redis_the_same_event_in_two_batches_is_published_twice() {
    let _shared = harness::SHARED_BROKERS.read().await;
    the_same_event_in_two_batches_is_published_twice(Backend::Redis).await;
}

#[tokio::test]
async fn memory_two_identical_events_in_one_batch_are_published_twice() {
    let _shared = harness::SHARED_BROKERS.read().await;
    two_identical_events_in_one_batch_are_published_twice(Backend::Memory).await;
}

#[tokio::test]
async fn redis_two_identical_events_in_one_batch_are_published_twice() {
    let _shared = harness::SHARED_BROKERS.read().await;
    two_identical_events_in_one_batch_are_published_twice(Backend::Redis).await;
}

#[tokio::test]
async fn memory_event_matching_skips_an_identical_event_in_another_batch() {
    let _shared = harness::SHARED_BROKERS.read().await;
    event_matching_skips_an_identical_event_in_another_batch(Backend::Memory).await;
}

#[tokio::test]
async fn redis_event_matching_skips_an_identical_event_in_another_batch() {
    let _shared = harness::SHARED_BROKERS.read().await;
    event_matching_skips_an_identical_event_in_another_batch(Backend::Redis).await;
}

/// Two replicas sharing Redis: [E, F, E] accepted by A, resent to B inside another envelope,
/// is not published again (B skips all three); E in another batch through B is.
#[tokio::test]
async fn a_resend_through_another_replica_publishes_nothing_twice() {
    let _shared = harness::SHARED_BROKERS.read().await;
    let setup = Setup::new(Backend::Redis, None).await;
    let (a, b) = (setup.bridge().await, setup.bridge().await);
    let (e, f) = (event("e"), event("f"));
    accepted(&a, &batch(&[&e, &f, &e]), 3).await;
    let resend = format!("{{\"events\":[{e},{f},{e}],\"retry\":true}}");
    accepted(&b, resend.as_bytes(), 3).await;
    let records = setup.read().await;
    assert_eq!(
        copies(&records, &e).len(),
        2,
        "E twice in its batch, once each"
    );
    assert_eq!(copies(&records, &f).len(), 1);
    assert_eq!(records.len(), 3, "B published part of the resend again");
    assert_eq!(setup.skips(&b).await, 3.0);

    accepted(&b, &batch(&[&e]), 1).await;
    let records = setup.read().await;
    assert_eq!(copies(&records, &e).len(), 3, "another batch is published");
}
