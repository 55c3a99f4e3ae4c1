//! The dead letter (SPEC §10) against tansu and RabbitMQ: events no broker will ever take land
//! on the dead-letter destination and the batch gets 200; transient failures never do.

use crate::faults::mock;
use crate::harness::*;
use lapin::types::FieldTable;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::time::Duration;

const KEY: &str = "dead-letter-key";

/// A Kafka sink `kafka` on tansu (topics `<prefix>.<event_class>`, keyed by id), with
/// `librdkafka` lines, `sinks` more sink tables, `routes` before the catch-all, and a
/// `[dead_letter]` table of `dead_letter` keys.
fn config(prefix: &str, librdkafka: &str, sinks: &str, routes: &str, dead_letter: &str) -> String {
    let catch_all = format!("topic = \"{prefix}.{{event_class}}\"\nkey = \"/payload/new/id\"\n");
    format!(
        "[server]\nack_timeout = \"3s\"\n{}{}{sinks}{routes}{}[dead_letter]\n{dead_letter}",
        webhook_toml("wh", KEY),
        kafka_sink_toml_with("kafka", &kafka(), librdkafka),
        route_all_toml(&["kafka"], &catch_all),
    )
}

/// Creates `<prefix>.<name>` for each name on tansu (1 partition) and returns the topic names.
async fn topics(prefix: &str, names: &[&str]) -> Vec<String> {
    let topics: Vec<String> = names.iter().map(|n| format!("{prefix}.{n}")).collect();
    create_topics(&kafka(), &topics, 1).await;
    topics
}

fn payloads(records: &[Record]) -> Vec<&[u8]> {
    records.iter().map(|r| &r.payload[..]).collect()
}

/// The usual headers of SPEC §3 on a dead letter of a `class` event from webhook `wh`.
fn assert_usual_headers(h: &std::collections::BTreeMap<String, String>, class: &str) {
    let id = &h["c360-event-id"];
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{h:?}"
    );
    assert_eq!(h["c360-event-class"], class);
    assert_eq!(h["c360-webhook"], "wh");
    assert_eq!(h["content-type"], "application/json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_illegal_topic_goes_to_the_dead_letter_and_the_good_events_to_their_topics() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("dl");
    let [good, dead] = &topics(&prefix, &["task_created", "dead-letter"]).await[..] else {
        unreachable!()
    };
    let dl = format!("sink = \"kafka\"\ntopic = \"{dead}\"\n");
    let bridge = Bridge::start(&config(&prefix, "", "", "", &dl)).await;
    let bad = event("task/created", "b-1");
    let events = [
        event("task_created", "g-1"),
        bad.clone(),
        event("task_created", "g-2"),
    ];
    let body = batch(&events);
    let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(
        (r.status, &r.json),
        (200, &serde_json::json!({"accepted": 3}))
    );

    let got = consume(&kafka(), good, 1).await;
    assert_eq!(payloads(&got), [events[0].as_bytes(), events[2].as_bytes()]);
    let letters = consume(&kafka(), dead, 1).await;
    assert_eq!(
        payloads(&letters),
        [bad.as_bytes()],
        "the event's bytes, uncut"
    );
    let letter = &letters[0];
    eprintln!(
        "DEAD-LETTER as consumed: topic {} key {:?} headers {:?} body {}",
        letter.topic,
        letter.key.as_deref().map(String::from_utf8_lossy),
        letter.headers,
        String::from_utf8_lossy(&letter.payload)
    );
    assert_eq!(letter.key.as_deref(), Some(&b"b-1"[..]), "the route's key");
    let h = &letter.headers;
    assert_usual_headers(h, "task/created");
    assert_eq!(h["c360-payload-class"], "task/created");
    assert!(
        h["c360-dead-letter-reason"]
            .starts_with("illegal_destination: event_class \"task/created\""),
        "{h:?}"
    );
    assert_eq!(h["c360-original-sink"], "kafka");
    assert_eq!(
        h["c360-original-destination"],
        format!("{prefix}.task/created")
    );
    assert!(!h.contains_key("c360-truncated"), "{h:?}");

    // catalog360 resends (say the 200 was lost): nothing is published twice.
    let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(consume(&kafka(), good, 1).await.len(), 2);
    assert_eq!(
        consume(&kafka(), dead, 1).await.len(),
        1,
        "no second dead letter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_message_max_bytes_is_dead_lettered_cut_to_max_bytes() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("dl");
    let [good, dead] = &topics(&prefix, &["task_created", "dead-letter"]).await[..] else {
        unreachable!()
    };
    // The dead letter shares the sink and its limit: max_bytes keeps the letter under it.
    let limit = "\"message.max.bytes\" = \"2000\"\n";
    let dl = format!("sink = \"kafka\"\ntopic = \"{dead}\"\nmax_bytes = 900\n");
    let bridge = Bridge::start(&config(&prefix, limit, "", "", &dl)).await;
    let big = event("task_created", &"x".repeat(3000));
    let events = [event("task_created", "small"), big.clone()];
    let body = batch(&events);
    let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(
        (r.status, &r.json),
        (200, &serde_json::json!({"accepted": 2}))
    );

    assert_eq!(
        payloads(&consume(&kafka(), good, 1).await),
        [events[0].as_bytes()]
    );
    let letters = consume(&kafka(), dead, 1).await;
    assert_eq!(
        payloads(&letters),
        [&big.as_bytes()[..900]],
        "the first 900 bytes"
    );
    let h = &letters[0].headers;
    eprintln!("TRUNCATED DEAD-LETTER headers: {h:?}");
    assert_usual_headers(h, "task_created");
    assert_eq!(
        letters[0].key, None,
        "a 3000-byte key is left out: the letter must fit"
    );
    assert_eq!(h["c360-truncated"], "true");
    assert_eq!(h["c360-original-bytes"], big.len().to_string());
    assert!(
        h["c360-dead-letter-reason"].starts_with("too_large: "),
        "{h:?}"
    );
    assert_eq!(h["c360-original-sink"], "kafka");
    assert_eq!(&h["c360-original-destination"], good);

    let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(consume(&kafka(), good, 1).await.len(), 1);
    assert_eq!(
        consume(&kafka(), dead, 1).await.len(),
        1,
        "no second dead letter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_sink_that_is_down_gets_503_and_nothing_is_lost() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("dl");
    let [good] = &topics(&prefix, &["task_created"]).await[..] else {
        unreachable!()
    };
    let cluster = mock(&[("dead", 1)]);
    let dl_sink = kafka_sink_toml("dl", &cluster.bootstrap_servers());
    let dl = "sink = \"dl\"\ntopic = \"dead\"\n";
    let bridge = Bridge::start(&config(&prefix, "", &dl_sink, "", dl)).await;
    cluster.broker_down(1).expect("down");
    wait_not_ready_at(&bridge.url(""), Duration::from_secs(10)).await;
    let bad = event("task/created", "b");
    let events = [event("task_created", "g"), bad.clone()];
    let body = batch(&events);
    let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(r.status, 503, "{:?}", r.json);
    assert!(r.retry_after.is_some());

    // Like catalog360: resend once the dead letter is back.
    cluster.broker_up(1).expect("up");
    bridge.wait_ready(Duration::from_secs(10)).await;
    bridge.wait_idle(Duration::from_secs(10)).await;
    let letters = consume(&cluster.bootstrap_servers(), "dead", 1).await;
    assert!(letters.is_empty(), "the refused letter was not sent");
    let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let got = consume(&kafka(), good, 1).await;
    assert_eq!(
        payloads(&got),
        [events[0].as_bytes()],
        "the good event once"
    );
    let letters = consume(&cluster.bootstrap_servers(), "dead", 1).await;
    assert_eq!(
        payloads(&letters),
        [bad.as_bytes()],
        "the bad one at the dead letter once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_a_503_does_not_dead_letter_twice() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("dl");
    let [dead] = &topics(&prefix, &["dead-letter"]).await[..] else {
        unreachable!()
    };
    // task_* events go to a mock cluster that is down; everything else to tansu.
    let cluster = mock(&[("tasks", 1)]);
    let down = kafka_sink_toml("mock", &cluster.bootstrap_servers());
    let tasks = "[[routes]]\nmatch = \"task_*\"\nsinks = [\"mock\"]\ntopic = \"tasks\"\n";
    let dl = format!("sink = \"kafka\"\ntopic = \"{dead}\"\n");
    let bridge = Bridge::start(&config(&prefix, "", &down, tasks, &dl)).await;
    cluster.broker_down(1).expect("down");
    wait_not_ready_at(&bridge.url(""), Duration::from_secs(10)).await;
    let bad = event("bad/class", "b");
    let events = [bad.clone(), event("task_created", "t")];
    let body = batch(&events);
    let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(r.status, 503, "{:?}", r.json);
    assert_eq!(
        payloads(&consume(&kafka(), dead, 1).await),
        [bad.as_bytes()]
    );

    cluster.broker_up(1).expect("up");
    bridge.wait_ready(Duration::from_secs(10)).await;
    let before = metrics_text(&bridge).await;
    let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let after = metrics_text(&bridge).await;
    let skips = "c360_ledger_skips_total{sink=\"kafka\"}";
    // The metrics recorder is the test process's: other tests' sinks named "kafka" may skip
    // meanwhile, so at least this batch's one skip (the dead letter's count below is exact).
    assert!(metric(&after, skips) - metric(&before, skips) >= 1.0);
    assert_eq!(
        payloads(&consume(&kafka(), dead, 1).await),
        [bad.as_bytes()],
        "the resend did not dead-letter the event again"
    );
    let delivered = consume(&cluster.bootstrap_servers(), "tasks", 1).await;
    assert_eq!(payloads(&delivered), [events[1].as_bytes()]);

    // The same event in another batch is another delivery: dead-lettered again.
    let r = post(
        &bridge.url("/hook"),
        &batch(std::slice::from_ref(&bad)),
        Some(KEY),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(
        payloads(&consume(&kafka(), dead, 1).await),
        [bad.as_bytes(), bad.as_bytes()],
        "a dead letter is recorded under its batch's delivery, not the event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_never_reach_the_dead_letter() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("dl");
    let [dead] = &topics(&prefix, &["dead-letter"]).await[..] else {
        unreachable!()
    };
    // task_* to a mock cluster (then down), shipment_* to a RabbitMQ exchange with no queue
    // bound (unroutable), the dead letter on tansu.
    let cluster = mock(&[("tasks", 1)]);
    let exchange = unique("x");
    let sinks = kafka_sink_toml("mock", &cluster.bootstrap_servers())
        + &rabbit_sink_toml("rabbit", &exchange);
    let routes = "[[routes]]\nmatch = \"task_*\"\nsinks = [\"mock\"]\ntopic = \"tasks\"\n\
                  [[routes]]\nmatch = \"shipment_*\"\nsinks = [\"rabbit\"]\n";
    let dl = format!("sink = \"kafka\"\ntopic = \"{dead}\"\n");
    let bridge = Bridge::start(&config(&prefix, "", &sinks, routes, &dl)).await;
    let unroutable = batch(&[event("shipment_created", "s")]);
    let r = post(&bridge.url("/hook"), &unroutable, Some(KEY)).await;
    assert_eq!(r.status, 503, "{:?}", r.json);
    assert!(
        r.json["message"].as_str().unwrap().contains("unroutable"),
        "{:?}",
        r.json
    );

    cluster.broker_down(1).expect("down");
    wait_not_ready_at(&bridge.url(""), Duration::from_secs(10)).await;
    let r = post(
        &bridge.url("/hook"),
        &batch(&[event("task_created", "t")]),
        Some(KEY),
    )
    .await;
    assert_eq!(r.status, 503, "{:?}", r.json);
    bridge.wait_idle(Duration::from_secs(10)).await;
    assert!(
        consume(&kafka(), dead, 1).await.is_empty(),
        "a transient failure never goes to the dead letter"
    );
}

/// The served binary with a RabbitMQ dead letter: a routing key over 255 bytes, the WARN line,
/// the counter and `check`'s line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_key_over_255_bytes_goes_to_a_rabbitmq_dead_letter_logged_and_counted() {
    let _shared = SHARED_BROKERS.read().await;
    let exchange = unique("x");
    let good = Queue::bind(&exchange, &["task_created"], FieldTable::default()).await;
    let dead = Queue::bind(&exchange, &["dead-letter.wh"], FieldTable::default()).await;
    let toml = format!(
        "{}{}{}[dead_letter]\nsink = \"rabbit\"\ntopic = \"dead-letter.{{webhook}}\"\n",
        webhook_toml("wh", KEY),
        rabbit_sink_toml("rabbit", &exchange),
        route_all_toml(&["rabbit"], ""),
    );
    let (_dir, path) = write_config(&toml);
    let (code, out, err) = run(&["check", "--config", &path], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("dead letter: sink rabbit, topic dead-letter.{webhook}, max_bytes 900000"),
        "{out}"
    );
    let bridge = Served::start(&path, &[]).await;
    let long_class = "k".repeat(300);
    let bad = event(&long_class, "b");
    let events = [event("task_created", "g"), bad.clone()];
    let r = post(&bridge.url("/hook"), &batch(&events), Some(KEY)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);

    let got = good.drain().await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, events[0].as_bytes());
    let letters = dead.drain().await;
    assert_eq!(letters.len(), 1);
    let m = &letters[0];
    eprintln!(
        "RABBITMQ DEAD-LETTER as consumed: routing key {} message_id {:?} headers {:?}",
        m.routing_key, m.message_id, m.headers
    );
    assert_eq!(m.body, bad.as_bytes());
    assert_eq!(m.delivery_mode, Some(2));
    assert_eq!(m.content_type.as_deref(), Some("application/json"));
    assert_eq!(m.message_id.as_ref(), Some(&m.headers["c360-event-id"]));
    let h = &m.headers;
    assert_eq!(h["c360-event-class"], long_class);
    assert!(
        h["c360-dead-letter-reason"].starts_with("illegal_destination: ")
            && h["c360-dead-letter-reason"].contains("over AMQP's 255"),
        "{h:?}"
    );
    assert_eq!(h["c360-original-sink"], "rabbit");
    assert_eq!(h["c360-original-destination"], long_class);

    let metrics = bridge.metrics().await;
    let counter = "c360_events_dead_lettered_total{reason=\"illegal_destination\"}";
    assert_eq!(metric(&metrics, counter), 1.0, "{metrics}");
    let log = bridge.stop().await;
    let id = &m.headers["c360-event-id"];
    let line = log
        .lines()
        .find(|l| l.contains("event dead-lettered"))
        .unwrap_or_else(|| panic!("no dead-letter line in\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(id.as_str()), "{line}");
    assert!(line.contains(&long_class), "{line}");
    assert!(line.contains("illegal_destination"), "{line}");
}

#[test]
fn check_names_a_bad_dead_letter_table() {
    let base = format!(
        "{}{}{}",
        webhook_toml("wh", KEY),
        kafka_sink_toml("kafka", "127.0.0.1:9092"),
        route_all_toml(&["kafka"], "")
    );
    for (table, want) in [
        (
            "sink = \"kafks\"",
            "dead_letter.sink: unknown sink \"kafks\" (known: [\"kafka\"])",
        ),
        (
            "sink = \"kafka\"\ntopic = \"dead letters\"",
            "dead_letter.topic",
        ),
        (
            "sink = \"kafka\"\nmax_bytes = 999000",
            "dead_letter.max_bytes: 999000 does not fit",
        ),
    ] {
        let (_dir, path) = write_config(&format!("{base}[dead_letter]\n{table}\n"));
        let (code, _, err) = run(&["check", "--config", &path], None);
        assert_eq!(code, 1, "{table}");
        assert!(err.contains(&format!("{path}: {want}")), "{table}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_says_at_start_up_whether_the_kafka_dead_letter_topic_exists() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("dl");
    let [dead] = &topics(&prefix, &["dead-letter"]).await[..] else {
        unreachable!()
    };
    let missing = format!("{prefix}.missing");
    for (topic, what) in [
        (&missing, "dead-letter topic does not exist"),
        (dead, "dead-letter topic exists"),
    ] {
        let toml = config(
            &prefix,
            "",
            "",
            "",
            &format!("sink = \"kafka\"\ntopic = \"{topic}\"\n"),
        );
        let (_dir, path) = write_config(&toml);
        let bridge = Served::start(&path, &[]).await;
        let line = bridge.log_line(what).await;
        assert!(line.contains(topic.as_str()), "{line}");
        bridge.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_broker_rejects_as_invalid_is_dead_lettered() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let _shared = SHARED_BROKERS.read().await;
    // task_* to a mock cluster whose next Produce is refused with INVALID_RECORD (87).
    let (cluster, bridge, dead) = tasks_on_a_mock_cluster().await;
    let dead = &dead;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD],
    );
    let invalid = event("task_created", "i");
    let r = post(
        &bridge.url("/hook"),
        &batch(std::slice::from_ref(&invalid)),
        Some(KEY),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert!(
        consume(&cluster.bootstrap_servers(), "tasks", 1)
            .await
            .is_empty()
    );
    let letters = consume(&kafka(), dead, 1).await;
    assert_eq!(payloads(&letters), [invalid.as_bytes()]);
    let h = &letters[0].headers;
    assert!(
        h["c360-dead-letter-reason"].starts_with("invalid_record: "),
        "{h:?}"
    );
    assert_eq!(h["c360-original-sink"], "mock");
    assert_eq!(h["c360-original-destination"], "tasks");
}

/// A bridge routing `task_*` to the topic `tasks` of a fresh mock cluster (sink `mock`), with a
/// dead letter on tansu; the dead-letter topic's name.
async fn tasks_on_a_mock_cluster() -> (MockCluster<'static, DefaultProducerContext>, Bridge, String)
{
    let prefix = unique("dl");
    let [dead] = &topics(&prefix, &["dead-letter"]).await[..] else {
        unreachable!()
    };
    let cluster = mock(&[("tasks", 1)]);
    let strict = kafka_sink_toml("mock", &cluster.bootstrap_servers());
    let tasks = "[[routes]]\nmatch = \"task_*\"\nsinks = [\"mock\"]\ntopic = \"tasks\"\n";
    let dl = format!("sink = \"kafka\"\ntopic = \"{dead}\"\n");
    let bridge = Bridge::start(&config(&prefix, "", &strict, tasks, &dl)).await;
    (cluster, bridge, dead.clone())
}

/// The broker refuses a whole record batch as too large (`MESSAGE_TOO_LARGE` for every message
/// in it): no event whose own record fits is dead-lettered. The mock cluster does not answer
/// DescribeConfigs, so the topic's limit is unknown and the refusal is transient for all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_batch_refused_as_too_large_dead_letters_none_of_its_small_events() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let _shared = SHARED_BROKERS.read().await;
    let (cluster, bridge, dead) = tasks_on_a_mock_cluster().await;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let events: Vec<String> = (0..3)
        .map(|i| event("task_created", &format!("s{i}")))
        .collect();
    let body = batch(&events);
    let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(r.status, 503, "{:?}", r.json);
    assert!(
        r.json["message"].as_str().unwrap().contains("too large"),
        "{:?}",
        r.json
    );
    assert!(
        consume(&kafka(), &dead, 1).await.is_empty(),
        "nothing dead-lettered"
    );
    let again = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(again.status, 200, "{:?}", again.json);
    let records = consume(&cluster.bootstrap_servers(), "tasks", 1).await;
    let mut got = payloads(&records);
    got.sort();
    let mut want: Vec<&[u8]> = events.iter().map(|e| e.as_bytes()).collect();
    want.sort();
    assert_eq!(got, want, "each event once on its topic");
    assert!(
        consume(&kafka(), &dead, 1).await.is_empty(),
        "still nothing dead-lettered"
    );
}
