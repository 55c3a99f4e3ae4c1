//! Kafka path against a real tansu broker: what a consumer reads after each answer.

use crate::harness::*;
use std::time::{Duration, Instant};

const KEY: &str = "current-key";

/// A one-webhook, Kafka-only config whose topics are `<prefix>.<event_class>`.
fn config(prefix: &str, bootstrap: &str, ack_timeout: &str) -> String {
    let server = format!("[server]\nack_timeout = \"{ack_timeout}\"\nmax_body_bytes = 4096\n");
    let webhook = format!(
        "[[webhooks]]\nname = \"{prefix}-wh\"\npath = \"/hook\"\nkeys = [\"{KEY}\", \"previous-key\"]\nmax_events = 5\n"
    );
    let route = format!("topic = \"{prefix}.{{event_class}}\"\nkey = \"/payload/new/id\"\n");
    server + &webhook + &kafka_sink_toml("kafka", bootstrap) + &route_all_toml(&["kafka"], &route)
}

async fn bridge_with_topics(classes: &[&str]) -> (Bridge, String) {
    let prefix = unique("k");
    let topics: Vec<String> = classes.iter().map(|c| format!("{prefix}.{c}")).collect();
    create_topics(&kafka(), &topics, 3).await;
    (
        Bridge::start(&config(&prefix, &kafka(), "10s")).await,
        prefix,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_lands_once_with_exact_bytes_headers_and_key() {
    let _shared = SHARED_BROKERS.read().await;
    let (bridge, prefix) = bridge_with_topics(&["task_created", "assetitem_updated"]).await;
    let e1 = event("task_created", "t-1");
    let e2 = r#"{ "event_class" : "assetitem_updated",  "payload":{"old":{"id":9},"new":{"id":  12345678901234567890123}} , "extra":[1, 2.50, "\u263a"] }"#.to_owned();
    let e3 = event("task_created", "t-2");
    let body = format!("{{\"sent_at\": \"now\", \"events\": [ {e1} ,\n{e2},{e3}] }}");
    let r = post(&bridge.url("/hook"), body.as_bytes(), Some(KEY)).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, serde_json::json!({"accepted": 3}))
    );

    let tasks = consume(&kafka(), &format!("{prefix}.task_created"), 3).await;
    let assets = consume(&kafka(), &format!("{prefix}.assetitem_updated"), 3).await;
    assert_eq!(tasks.len(), 2);
    assert_eq!(assets.len(), 1);
    let a = &assets[0];
    assert_eq!(a.topic, format!("{prefix}.assetitem_updated"));
    assert_eq!(a.payload, e2.as_bytes(), "body is the event byte for byte");
    assert_eq!(a.key.as_deref(), Some(&b"12345678901234567890123"[..]));
    assert_eq!(a.headers["c360-event-class"], "assetitem_updated");
    assert!(
        !a.headers.contains_key("c360-payload-class"),
        "absent payload_class → no header"
    );
    assert_eq!(a.headers["c360-webhook"], format!("{prefix}-wh"));
    assert_eq!(a.headers["content-type"], "application/json");
    let id = &a.headers["c360-event-id"];
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "event id {id}"
    );

    let mut bodies: Vec<&[u8]> = tasks.iter().map(|t| &t.payload[..]).collect();
    bodies.sort();
    let mut want = vec![e1.as_bytes(), e3.as_bytes()];
    want.sort();
    assert_eq!(bodies, want);
    for t in &tasks {
        assert_eq!(t.headers["c360-payload-class"], "task");
        let key = String::from_utf8(t.key.clone().unwrap()).unwrap();
        assert!(key == "t-1" || key == "t-2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_batch_is_not_published_twice_and_ids_are_stable() {
    let _shared = SHARED_BROKERS.read().await;
    let (bridge, prefix) = bridge_with_topics(&["task_updated"]).await;
    let body = batch(&[
        event("task_updated", "a"),
        event("task_updated", "b"),
        event("task_updated", "a"),
    ]);
    for _ in 0..2 {
        let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
        assert_eq!(r.status, 200, "{:?}", r.json);
    }
    let topic = format!("{prefix}.task_updated");
    let first = consume(&kafka(), &topic, 3).await;
    assert_eq!(
        first.len(),
        3,
        "the resend was skipped by the ledger; identical events both kept"
    );
    let ids: std::collections::BTreeSet<_> = first
        .iter()
        .map(|r| r.headers["c360-event-id"].clone())
        .collect();
    assert_eq!(
        ids.len(),
        3,
        "two identical events in one batch still get distinct ids: {ids:?}"
    );
    let same_key: Vec<i32> = first
        .iter()
        .filter(|r| r.key.as_deref() == Some(b"a"))
        .map(|r| r.partition)
        .collect();
    assert_eq!(same_key.len(), 2);
    assert_eq!(
        same_key[0], same_key[1],
        "events sharing a key share a partition, so keep their order"
    );

    // A second bridge (no shared ledger, like a restart) publishes again, with the same ids.
    bridge.shutdown().await;
    let again = Bridge::start(&config(&prefix, &kafka(), "10s")).await;
    assert_eq!(
        post(&again.url("/hook"), &body, Some(KEY)).await.status,
        200
    );
    let all = consume(&kafka(), &topic, 3).await;
    assert_eq!(all.len(), 6);
    let ids2: std::collections::BTreeSet<_> = all
        .iter()
        .map(|r| r.headers["c360-event-id"].clone())
        .collect();
    assert_eq!(ids, ids2, "consumers can dedupe on c360-event-id");
}

/// What is sent, signed with which key, and the status and error code expected.
type Case<'a> = (&'a str, Vec<u8>, Option<&'a str>, u16, &'a str);

/// Every rejection the envelope and signature checks make, with its status and code.
fn rejection_cases() -> Vec<Case<'static>> {
    let good = batch(&[event("task_created", "x")]);
    let six = batch(
        &(0..6)
            .map(|i| event("task_created", &i.to_string()))
            .collect::<Vec<_>>(),
    );
    let big = batch(&[event("task_created", &"y".repeat(5000))]);
    vec![
        ("no signature", good.clone(), None, 401, "signature_missing"),
        (
            "wrong key",
            good.clone(),
            Some("other-key"),
            401,
            "signature_mismatch",
        ),
        (
            "test key with events",
            good.clone(),
            Some("test-webhook"),
            401,
            "test_key_with_events",
        ),
        ("too large", big, Some(KEY), 413, "body_too_large"),
        (
            "not JSON",
            b"{\"events\": [".to_vec(),
            Some(KEY),
            400,
            "invalid_json",
        ),
        (
            "no events array",
            b"{\"event\": []}".to_vec(),
            Some(KEY),
            400,
            "no_events_array",
        ),
        ("too many events", six, Some(KEY), 400, "too_many_events"),
        (
            "event 1 without class",
            batch(&[event("task_created", "x"), "{\"payload\":{}}".into()]),
            Some(KEY),
            400,
            "invalid_event",
        ),
        (
            "event 1 whose class makes no Kafka topic",
            batch(&[event("task_created", "x"), event("task/created", "y")]),
            Some(KEY),
            400,
            "invalid_event",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_publishes_nothing() {
    let _shared = SHARED_BROKERS.read().await;
    let (bridge, prefix) = bridge_with_topics(&["task_created"]).await;
    let url = bridge.url("/hook");
    let good = batch(&[event("task_created", "x")]);
    let cases = rejection_cases();
    for (what, body, key, status, code) in cases {
        let r = post(&url, &body, key).await;
        assert_eq!(r.status, status, "{what}: {:?}", r.json);
        assert_eq!(r.json["error"], code, "{what}");
        assert!(
            r.json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    let r = post(
        &url,
        &batch(&[event("task_created", "x"), "{\"payload\":{}}".into()]),
        Some(KEY),
    )
    .await;
    assert!(
        r.json["message"].as_str().unwrap().contains("event 1"),
        "names the index: {:?}",
        r.json
    );

    let malformed = reply(
        reqwest::Client::new()
            .post(&url)
            .header("x-c360-signature", "%%%not-base64")
            .body(good.clone()),
    )
    .await;
    assert_eq!(
        (malformed.status, malformed.json["error"].as_str()),
        (401, Some("signature_malformed"))
    );

    let hex_sig = hex_signature(KEY, &good);
    let hexed = reply(
        reqwest::Client::new()
            .post(&url)
            .header("x-c360-signature", hex_sig)
            .body(good.clone()),
    )
    .await;
    assert_eq!(hexed.status, 401, "a hex signature is refused");

    let ping = post(&url, b"{\"events\": []}", Some("test-webhook")).await;
    assert_eq!(
        (ping.status, ping.json.clone()),
        (200, serde_json::json!({"accepted": 0}))
    );
    let head = reqwest::Client::new().head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let get = reply(reqwest::Client::new().get(&url)).await;
    assert_eq!(
        (get.status, get.json["error"].as_str()),
        (405, Some("method_not_allowed"))
    );

    assert!(
        consume(&kafka(), &format!("{prefix}.task_created"), 3)
            .await
            .is_empty(),
        "nothing was published"
    );
}

fn hex_signature(key: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_key_still_verifies_during_rotation() {
    let _shared = SHARED_BROKERS.read().await;
    let (bridge, prefix) = bridge_with_topics(&["shipment_created"]).await;
    let body = batch(&[event("shipment_created", "s1")]);
    assert_eq!(
        post(&bridge.url("/hook"), &body, Some("previous-key"))
            .await
            .status,
        200
    );
    let got = consume(&kafka(), &format!("{prefix}.shipment_created"), 3).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, event("shipment_created", "s1").as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_webhooks_in_one_process_keep_their_own_keys() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("multi");
    create_topics(
        &kafka(),
        &[
            format!("{prefix}.a.task_created"),
            format!("{prefix}.b.task_created"),
        ],
        1,
    )
    .await;
    let toml = format!(
        r#"
[[webhooks]]
name = "a"
path = "/a"
keys = ["key-a"]
[[webhooks]]
name = "b"
path = "/b"
keys = ["key-b"]
accept_test_ping = false
[sinks.k]
type = "kafka"
bootstrap_servers = "{}"
[[routes]]
match = "*"
sinks = ["k"]
topic = "{prefix}.{{webhook}}.{{event_class}}"
"#,
        kafka()
    );
    let bridge = Bridge::start(&toml).await;
    let body = batch(&[event("task_created", "1")]);
    assert_eq!(
        post(&bridge.url("/a"), &body, Some("key-b")).await.status,
        401
    );
    assert_eq!(
        post(&bridge.url("/b"), b"{\"events\":[]}", Some("test-webhook"))
            .await
            .status,
        401
    );
    assert_eq!(
        post(&bridge.url("/a"), &body, Some("key-a")).await.status,
        200
    );
    assert_eq!(
        post(&bridge.url("/b"), &body, Some("key-b")).await.status,
        200
    );
    let a = consume(&kafka(), &format!("{prefix}.a.task_created"), 1).await;
    let b = consume(&kafka(), &format!("{prefix}.b.task_created"), 1).await;
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(
        (
            a[0].headers["c360-webhook"].as_str(),
            b[0].headers["c360-webhook"].as_str()
        ),
        ("a", "b")
    );
    assert_eq!(a[0].key, None, "no key configured → no key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_the_broker_refuses_gets_503_with_retry_after_before_the_deadline() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("missing");
    // The topics are never created: tansu refuses to produce to them.
    let bridge = Bridge::start(&config(&prefix, &kafka(), "2s")).await;
    let started = Instant::now();
    let r = post(
        &bridge.url("/hook"),
        &batch(&[event("task_created", "1")]),
        Some(KEY),
    )
    .await;
    assert_eq!(r.status, 503, "{:?}", r.json);
    assert_eq!(r.retry_after.as_deref(), Some("5"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_fails_fast_and_reports_not_ready() {
    let toml = config(&unique("down"), "127.0.0.1:1", "10s");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let app =
        c360_bridge::App::build(c360_bridge::config::load(Some(&path)).unwrap(), None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(c360_bridge::serve(
        std::sync::Arc::new(app),
        listener,
        None,
        std::future::pending(),
    ));
    let ready = reply(reqwest::Client::new().get(format!("http://{addr}/readyz"))).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json["sinks"]["kafka"]["ready"], false);
    let started = Instant::now();
    let r = post(
        &format!("http://{addr}/hook"),
        &batch(&[event("task_created", "1")]),
        Some(KEY),
    )
    .await;
    assert_eq!(r.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "fails fast, took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_at_the_deadline_and_publishes_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("stall");
    create_topics(&kafka(), &[format!("{prefix}.task_created")], 1).await;
    let bridge = Bridge::start(&config(&prefix, &kafka(), "1s")).await;
    let body = batch(&[event("task_created", "1")]);
    let sig = c360_bridge::webhook::signature::sign(KEY.as_bytes(), &body);
    let mut conn = tokio::net::TcpStream::connect(bridge.addr).await.unwrap();
    let head = format!(
        "POST /hook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-c360-signature: {sig}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..body.len() / 2]).await.unwrap();
    let started = Instant::now();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered after {:?}",
        started.elapsed()
    );
    assert!(
        consume(&kafka(), &format!("{prefix}.task_created"), 1)
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_bridge_refuses_batches_with_503_and_publishes_nothing() {
    let _shared = SHARED_BROKERS.read().await;
    let (bridge, prefix) = bridge_with_topics(&["task_created"]).await;
    // What SIGTERM sets first, while connections that are already open are still served.
    bridge.app.begin_shutdown();
    let r = post(
        &bridge.url("/hook"),
        &batch(&[event("task_created", "c")]),
        Some(KEY),
    )
    .await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (503, Some("shutting_down"))
    );
    assert!(r.retry_after.is_some(), "Retry-After on a 503");
    let ready = reqwest::get(bridge.url("/readyz")).await.expect("readyz");
    assert_eq!(ready.status(), 503, "a closing bridge is not ready");
    assert!(
        consume(&kafka(), &format!("{prefix}.task_created"), 3)
            .await
            .is_empty(),
        "nothing was published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_drop_publishes_the_routed_events_and_counts_the_others() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("k");
    create_topics(&kafka(), &[format!("{prefix}.task_created")], 3).await;
    let dropped = format!("{prefix}_gone");
    let toml = format!(
        "unrouted = \"drop\"\n{}{}[[routes]]\nmatch = \"task_*\"\nsinks = [\"kafka\"]\ntopic = \"{prefix}.{{event_class}}\"\n",
        webhook_toml("wh", KEY),
        kafka_sink_toml("kafka", &kafka()),
    );
    let bridge = Bridge::start(&toml).await;
    let routed = event("task_created", "d1");
    let body = batch(&[routed.clone(), event(&dropped, "d2")]);
    let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, serde_json::json!({"accepted": 2}))
    );
    let got = consume(&kafka(), &format!("{prefix}.task_created"), 3).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, routed.as_bytes());
    let metrics = metrics_text(&bridge).await;
    let name = format!("c360_events_unrouted_total{{event_class=\"{dropped}\"}}");
    assert_eq!(metric(&metrics, &name), 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_share_a_key_keep_their_order() {
    let _shared = SHARED_BROKERS.read().await;
    let (bridge, prefix) = bridge_with_topics(&["task_updated"]).await;
    let mut sent = Vec::new();
    // Three batches of five (this bridge's max_events), all keyed "same".
    for b in 0..3 {
        let events: Vec<String> = (0..5)
            .map(|i| {
                format!(
                    r#"{{"event_class":"task_updated","payload":{{"new":{{"id":"same","seq":{}}}}}}}"#,
                    b * 5 + i
                )
            })
            .collect();
        let r = post(&bridge.url("/hook"), &batch(&events), Some(KEY)).await;
        assert_eq!(r.status, 200, "{:?}", r.json);
        sent.extend(events.into_iter().map(String::into_bytes));
    }
    let got = consume(&kafka(), &format!("{prefix}.task_updated"), 3).await;
    let partitions: std::collections::BTreeSet<i32> = got.iter().map(|r| r.partition).collect();
    assert_eq!(partitions.len(), 1, "one key, one partition");
    let got: Vec<Vec<u8>> = got.into_iter().map(|r| r.payload).collect();
    assert_eq!(
        got, sent,
        "the partition holds the events in the order they were sent"
    );
}
