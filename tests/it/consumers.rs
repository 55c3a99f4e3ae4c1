//! The consumers' side (SPEC §8): what the CloudEvents Python SDK decodes from the messages the
//! bridge published to tansu and RabbitMQ (tests/consumers/ce_consume.py), and `cloudevents = false`.

use crate::harness::*;
use lapin::types::FieldTable;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

const KEY: &str = "consumers-key";

/// The Python with the CloudEvents SDK, confluent-kafka and pika (scripts/consumer-tools.sh).
fn python() -> PathBuf {
    let path = std::env::var_os("C360_CONSUMER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME");
            PathBuf::from(home).join(".cache/c360-bridge/consumers-venv/bin/python")
        });
    assert!(
        path.exists(),
        "{} is missing: run scripts/consumer-tools.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Runs the SDK consumer with `args` and returns the events it decoded.
async fn sdk_consume(args: Vec<String>) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consumers/ce_consume.py");
    let out = tokio::process::Command::new(python())
        .arg(script)
        .args(&args)
        .output()
        .await
        .expect("run ce_consume.py");
    assert!(
        out.status.success(),
        "ce_consume.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ce_consume.py prints JSON")
}

/// Decodes NATS messages (`[{"headers": {...}, "body_b64": "..."}]`) with the SDK: the CloudEvents
/// NATS binding's binary mode is HTTP's, so ce_consume.py uses the SDK's HTTP binding.
pub(crate) async fn sdk_decode_nats(messages: &Value) -> Vec<Value> {
    use tokio::io::AsyncWriteExt;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consumers/ce_consume.py");
    let mut child = tokio::process::Command::new(python())
        .arg(script)
        .arg("nats")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ce_consume.py");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(messages.to_string().as_bytes())
        .await
        .expect("write stdin");
    drop(stdin);
    let out = child.wait_with_output().await.expect("ce_consume.py ends");
    assert!(
        out.status.success(),
        "ce_consume.py nats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ce_consume.py prints JSON")
}

/// Microseconds since the epoch, as the consumer reports `time`.
pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as i64
}

/// One event without a key (no `/payload/new/id` or `/payload/old/id`) and no payload_class.
fn keyless(class: &str) -> String {
    format!(
        r#"{{"event_class":"{class}","payload":{{"new":{{"name":"n\u00e4me"}}}},"x":[1,2.50]}}"#
    )
}

/// Checks that `got` is what the SDK should decode from `sent` (the exact event text), received
/// by a bridge between `before` and `after` (µs since the epoch) with CloudEvents `source`.
pub(crate) fn assert_decoded(got: &Value, sent: &str, source: &str, (before, after): (i64, i64)) {
    let sent_json: Value = serde_json::from_str(sent).unwrap();
    let class = sent_json["event_class"].as_str().unwrap();
    assert_eq!(got["specversion"], "1.0");
    let id = got["id"].as_str().unwrap();
    assert_eq!(id, got["c360_event_id"], "ce id = c360-event-id");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(got["type"], format!("com.catalog360.{class}"));
    assert_eq!(got["source"], source);
    let subject = sent_json
        .pointer("/payload/new/id")
        .or_else(|| sent_json.pointer("/payload/old/id"))
        .and_then(Value::as_str);
    assert_eq!(got["subject"].as_str(), subject, "subject = the key");
    let time = got["time_epoch_us"].as_i64().unwrap();
    assert!(
        (before..=after).contains(&time),
        "time {} is the receipt time (between {before} and {after} µs)",
        got["time"]
    );
    assert_eq!(got["datacontenttype"], "application/json");
    assert_eq!(got["data"], sent_json, "data is the event");
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD
        .decode(got["body_b64"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        body,
        sent.as_bytes(),
        "the body stays the event's exact bytes"
    );
}

/// The event the SDK decoded whose data is `sent` (messages of different keys may come in any order).
fn decoded_of<'a>(got: &'a [Value], sent: &str) -> &'a Value {
    let sent_json: Value = serde_json::from_str(sent).unwrap();
    got.iter()
        .find(|g| g["data"] == sent_json)
        .unwrap_or_else(|| panic!("{sent} not among {got:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloudevents_sdk_decodes_what_the_bridge_published_to_kafka() {
    let _shared = SHARED_BROKERS.read().await;
    let topic = unique("ce-kafka");
    create_topics(&kafka(), std::slice::from_ref(&topic), 3).await;
    let source = "https://catalog360.example/tenants/acme";
    let config = format!(
        "{}source = \"{source}\"\n{}{}",
        webhook_toml("ce-kafka-wh", KEY),
        kafka_sink_toml("kafka", &kafka()),
        route_all_toml(
            &["kafka"],
            &format!("topic = \"{topic}\"\nkey = \"/payload/new/id\"\n")
        )
    );
    let bridge = Bridge::start(&config).await;
    let events = [
        event("task_created", "t-1"),
        event("assetitem_updated", "a-2"),
        keyless("someday_invented"),
    ];
    let body = batch(&events);

    let forged = post(&bridge.url("/hook"), &body, Some("not-the-key")).await;
    assert_eq!(forged.status, 401);
    let before = now_us();
    let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    let after = now_us();
    assert_eq!(
        (r.status, r.json),
        (200, serde_json::json!({"accepted": 3}))
    );

    let args = [
        "kafka",
        "--bootstrap",
        &kafka(),
        "--topic",
        &topic,
        "--partitions",
        "3",
    ];
    let got = sdk_consume(args.map(String::from).to_vec()).await;
    assert_eq!(got.len(), 3, "the 401 published nothing: {got:?}");
    for sent in &events {
        let class: Value = serde_json::from_str(sent).unwrap();
        let m = decoded_of(&got, sent);
        assert_decoded(m, sent, source, (before, after));
        let key = class.pointer("/payload/new/id").and_then(Value::as_str);
        assert_eq!(
            m["partitionkey"].as_str(),
            key,
            "the Kafka key, as the SDK maps it"
        );
    }
    let ids: std::collections::BTreeSet<_> =
        got.iter().map(|g| g["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    let keyed = decoded_of(&got, &events[0]);
    println!("decoded from tansu by the CloudEvents SDK: {keyed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloudevents_sdk_decodes_rabbitmq_and_a_sink_can_leave_them_out() {
    let _shared = SHARED_BROKERS.read().await;
    let (with_ce, without_ce) = (unique("ce-x"), unique("plain-x"));
    let q_ce = Queue::bind(&with_ce, &["#"], FieldTable::default()).await;
    let q_plain = Queue::bind(&without_ce, &["#"], FieldTable::default()).await;
    let webhook = unique("ce-rabbit-wh");
    let config = format!(
        "{}{}{}cloudevents = false\n{}",
        webhook_toml(&webhook, KEY),
        rabbit_sink_toml("ce", &with_ce),
        rabbit_sink_toml("plain", &without_ce),
        route_all_toml(&["ce", "plain"], "key = \"/payload/new/id\"\n")
    );
    let bridge = Bridge::start(&config).await;
    let events = [event("shipment_created", "s-1"), keyless("task_updated")];
    let body = batch(&events);

    let too_many = batch(&vec![event("task_created", "x"); 101]);
    assert_eq!(
        post(&bridge.url("/hook"), &too_many, Some(KEY))
            .await
            .status,
        400
    );
    let before = now_us();
    let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    let after = now_us();
    assert_eq!(
        (r.status, r.json),
        (200, serde_json::json!({"accepted": 2}))
    );

    let args = ["rabbitmq", "--url", RABBIT_URL, "--queue", &q_ce.name];
    let got = sdk_consume(args.map(String::from).to_vec()).await;
    assert_eq!(got.len(), 2, "the 400 published nothing: {got:?}");
    for sent in &events {
        let source = format!("/catalog360/{webhook}");
        assert_decoded(decoded_of(&got, sent), sent, &source, (before, after));
    }

    let plain = q_plain.drain().await;
    assert_eq!(plain.len(), 2);
    for sent in &events {
        let m = plain
            .iter()
            .find(|m| m.body == sent.as_bytes())
            .unwrap_or_else(|| panic!("{sent} not in the queue of the plain sink"));
        assert!(
            m.headers.keys().all(|h| !h.starts_with("ce-")),
            "cloudevents = false: no ce- header in {:?}",
            m.headers
        );
        assert_eq!(m.headers["c360-webhook"], webhook, "the c360 headers stay");
        assert_eq!(m.message_id.as_ref(), Some(&m.headers["c360-event-id"]));
    }
    let keyed = decoded_of(&got, &events[0]);
    println!("decoded from RabbitMQ by the CloudEvents SDK: {keyed}");
}
