//! RabbitMQ path against a real RabbitMQ: confirms, mandatory, nacks, fan-out with Kafka.

use crate::harness::*;
use lapin::types::FieldTable;

const KEY: &str = "rabbit-key";

fn config(exchange: &str, routes: &str) -> String {
    format!(
        "[server]\nack_timeout = \"5s\"\n{}{}{}{routes}",
        webhook_toml("wh", KEY),
        kafka_sink_toml("kafka", &kafka()),
        rabbit_sink_toml("rabbit", exchange)
    )
}

fn to_rabbit() -> String {
    route_all_toml(&["rabbit"], "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_persistent_with_properties_and_headers() {
    let _shared = SHARED_BROKERS.read().await;
    let exchange = unique("x");
    let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
    let bridge = Bridge::start(&config(&exchange, &to_rabbit())).await;
    let events = [
        event("task_created", "1"),
        event("assetitem_updated", "2"),
        event("task_created", "3"),
        // An unknown class outside Kafka's topic alphabet is still a fine routing key.
        event("aufgabe_geprüft", "4"),
    ];
    let r = post(&bridge.url("/hook"), &batch(&events), Some(KEY)).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, serde_json::json!({"accepted": 4}))
    );
    let got = queue.drain().await;
    assert_eq!(got.len(), 4);
    for m in &got {
        assert!(
            events.iter().any(|e| e.as_bytes() == m.body),
            "body is an event byte for byte"
        );
        let class = &m.headers["c360-event-class"];
        assert_eq!(&m.routing_key, class);
        assert_eq!(m.delivery_mode, Some(2), "persistent");
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert_eq!(m.message_id.as_ref(), Some(&m.headers["c360-event-id"]));
        assert_eq!(m.headers["c360-webhook"], "wh");
        assert_eq!(
            &m.headers["c360-payload-class"],
            class.split('_').next().unwrap()
        );
    }
    let ids: std::collections::BTreeSet<_> = got.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(ids.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_event_gets_503_and_the_resend_after_binding_completes_it() {
    let _shared = SHARED_BROKERS.read().await;
    let exchange = unique("x");
    let queue = Queue::bind(&exchange, &["task_created"], FieldTable::default()).await;
    let bridge = Bridge::start(&config(&exchange, &to_rabbit())).await;

    let lonely = batch(&[event("shipment_created", "s")]);
    let r = post(&bridge.url("/hook"), &lonely, Some(KEY)).await;
    assert_eq!(r.status, 503, "{:?}", r.json);
    assert!(
        r.json["message"].as_str().unwrap().contains("unroutable"),
        "{:?}",
        r.json
    );
    assert!(queue.drain().await.is_empty(), "nothing reached any queue");

    let mixed = batch(&[event("task_created", "t"), event("shipment_created", "s")]);
    assert_eq!(
        post(&bridge.url("/hook"), &mixed, Some(KEY)).await.status,
        503
    );
    queue.add_binding(&exchange, "shipment_created").await;
    assert_eq!(
        post(&bridge.url("/hook"), &mixed, Some(KEY)).await.status,
        200
    );
    let got = queue.drain().await;
    let mut keys: Vec<_> = got.iter().map(|m| m.routing_key.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["shipment_created", "task_created"],
        "the confirmed event was not published again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_gets_503() {
    let _shared = SHARED_BROKERS.read().await;
    let exchange = unique("x");
    let full = Queue::bind(&exchange, &["#"], reject_everything()).await;
    let bridge = Bridge::start(&config(&exchange, &to_rabbit())).await;
    let r = post(
        &bridge.url("/hook"),
        &batch(&[event("task_created", "1")]),
        Some(KEY),
    )
    .await;
    assert_eq!(r.status, 503, "{:?}", r.json);
    assert!(
        r.json["message"].as_str().unwrap().contains("nack"),
        "{:?}",
        r.json
    );
    assert_eq!(r.retry_after.as_deref(), Some("5"));
    assert!(full.drain().await.is_empty());
}

fn fan_out(prefix: &str) -> String {
    route_all_toml(
        &["kafka", "rabbit"],
        &format!("topic = \"{prefix}.{{event_class}}\"\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_answers_200_when_both_brokers_confirmed() {
    let _shared = SHARED_BROKERS.read().await;
    let (exchange, prefix) = (unique("x"), unique("fan"));
    create_topics(&kafka(), &[format!("{prefix}.task_updated")], 1).await;
    let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
    let bridge = Bridge::start(&config(&exchange, &fan_out(&prefix))).await;
    let e = event("task_updated", "9");
    assert_eq!(
        post(
            &bridge.url("/hook"),
            &batch(std::slice::from_ref(&e)),
            Some(KEY)
        )
        .await
        .status,
        200
    );
    let k = consume(&kafka(), &format!("{prefix}.task_updated"), 1).await;
    let q = queue.drain().await;
    assert_eq!((k.len(), q.len()), (1, 1));
    assert_eq!(
        (k[0].payload.as_slice(), q[0].body.as_slice()),
        (e.as_bytes(), e.as_bytes())
    );
    assert_eq!(q[0].routing_key, format!("{prefix}.task_updated"));
    assert_eq!(
        k[0].headers["c360-event-id"], q[0].headers["c360-event-id"],
        "one id for both copies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_where_rabbitmq_fails_gets_503_and_the_resend_skips_kafka() {
    let _shared = SHARED_BROKERS.read().await;
    let (exchange, prefix) = (unique("x"), unique("fan"));
    create_topics(&kafka(), &[format!("{prefix}.task_updated")], 1).await;
    let queue = Queue::bind(&exchange, &["nothing.matches"], FieldTable::default()).await;
    let bridge = Bridge::start(&config(&exchange, &fan_out(&prefix))).await;
    let body = batch(&[event("task_updated", "9")]);
    assert_eq!(
        post(&bridge.url("/hook"), &body, Some(KEY)).await.status,
        503
    );
    queue.add_binding(&exchange, "#").await;
    assert_eq!(
        post(&bridge.url("/hook"), &body, Some(KEY)).await.status,
        200
    );
    assert_eq!(
        consume(&kafka(), &format!("{prefix}.task_updated"), 1)
            .await
            .len(),
        1,
        "Kafka copy published once"
    );
    assert_eq!(queue.drain().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_share_a_key_keep_their_order() {
    let _shared = SHARED_BROKERS.read().await;
    let exchange = unique("x");
    let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
    let routes = route_all_toml(&["rabbit"], "key = \"/payload/new/id\"\n");
    let bridge = Bridge::start(&config(&exchange, &routes)).await;
    let events: Vec<String> = (0..40)
        .map(|i| {
            format!(
                r#"{{"event_class":"task_updated","payload":{{"new":{{"id":"same","seq":{i}}}}}}}"#
            )
        })
        .collect();
    assert_eq!(
        post(&bridge.url("/hook"), &batch(&events), Some(KEY))
            .await
            .status,
        200
    );
    let got: Vec<Vec<u8>> = queue.drain().await.into_iter().map(|m| m.body).collect();
    let want: Vec<Vec<u8>> = events.into_iter().map(String::into_bytes).collect();
    assert_eq!(
        got, want,
        "one key, one channel: the queue holds the batch's order"
    );
}
