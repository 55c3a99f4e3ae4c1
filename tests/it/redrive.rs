//! `c360-bridge redrive` against real brokers: events dead-lettered by a broken route are
//! published again once the route is fixed, with their ids and bytes, without the dead-letter
//! headers, once; truncated letters and letters that still fail stay where they are.

use crate::harness::*;
use lapin::types::FieldTable;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

const KEY: &str = "redrive-key";

/// A config with a Kafka sink whose catch-all topic is `{prefix}.{event_class}`, `routes` before
/// it, and the dead letter on `dead`.
fn kafka_config(prefix: &str, routes: &str, dead: &str) -> String {
    format!(
        "[server]\nack_timeout = \"3s\"\n{}{}{routes}{}[dead_letter]\nsink = \"kafka\"\ntopic = \"{dead}\"\n",
        webhook_toml("wh", KEY),
        kafka_sink_toml("kafka", &kafka()),
        route_all_toml(
            &["kafka"],
            &format!("topic = \"{prefix}.{{event_class}}\"\n")
        ),
    )
}

/// Writes one letter straight to `topic`, with `headers`.
async fn produce(topic: &str, body: &[u8], headers: &[(&str, &str)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    let mut hs = OwnedHeaders::new();
    for (k, v) in headers {
        hs = hs.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let record = FutureRecord::<(), _>::to(topic).payload(body).headers(hs);
    producer
        .send(record, Duration::from_secs(5))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// How many records partition 0 of `topic` holds (its high watermark): cheap to ask while a
/// producer is still writing, unlike reading to the end.
fn high_watermark(topic: &str) -> i64 {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    rdkafka::consumer::Consumer::fetch_watermarks(&consumer, topic, 0, Duration::from_secs(5))
        .unwrap()
        .1
}

/// Publishes one letter straight to `exchange` with the dead-letter routing key and `headers`.
async fn publish_letter(exchange: &str, body: &[u8], headers: &[(&str, &str)]) {
    use lapin::types::AMQPValue;
    let (_conn, channel) = amqp_channel().await;
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert((*k).into(), AMQPValue::LongString((*v).into()));
    }
    channel
        .basic_publish(
            exchange.into(),
            "dead-letter".into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            lapin::BasicProperties::default().with_headers(table),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

fn redrive(path: &str, more: &[&str]) -> (i32, String, String) {
    let mut args = vec!["redrive", "--config", path];
    args.extend_from_slice(more);
    run(&args, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_kafka_route_redrives_its_dead_letters_once_and_leaves_what_cannot_go() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("rd");
    let (fixed, dead) = (format!("{prefix}.fixed"), format!("{prefix}.dead-letter"));
    create_topics(&kafka(), &[fixed.clone(), dead.clone()], 1).await;

    // A route gives task/created an illegal topic: three events go to the dead letter, then one
    // shipment/created whose fixed route will name a topic that does not exist.
    let bridge = Bridge::start(&kafka_config(&prefix, "", &dead)).await;
    let bad: Vec<String> = (0..3)
        .map(|i| event("task/created", &format!("rd-{i}")))
        .collect();
    let r = post(&bridge.url("/hook"), &batch(&bad), Some(KEY)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let stuck = event("shipment/created", "rd-stuck");
    let r = post(
        &bridge.url("/hook"),
        &batch(std::slice::from_ref(&stuck)),
        Some(KEY),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    bridge.shutdown().await;
    let letters = consume(&kafka(), &dead, 1).await;
    assert_eq!(letters.len(), 4);
    let mut truncated = letters[0].headers.clone();
    truncated.insert("c360-truncated".into(), "true".into());
    let pairs: Vec<(&str, &str)> = truncated
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    produce(&dead, &letters[0].payload[..10], &pairs).await;

    let routes = format!(
        "[[routes]]\nmatch = \"task/created\"\nsinks = [\"kafka\"]\ntopic = \"{fixed}\"\n[[routes]]\nmatch = \"shipment/created\"\nsinks = [\"kafka\"]\ntopic = \"{prefix}.missing\"\n"
    );
    let (_d, path) = write_config(&kafka_config(&prefix, &routes, &dead));
    let group = ["--group", &prefix];

    // --dry-run says where each letter would go, and changes nothing.
    let (code, out, err) = redrive(&path, &[&group[..], &["--dry-run"]].concat());
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.matches(&format!("to kafka: {fixed}")).count(),
        3,
        "{out}"
    );
    assert!(
        out.contains("redriven 0, truncated 1, still failing 0, left 4"),
        "{out}"
    );
    assert!(
        consume(&kafka(), &fixed, 1).await.is_empty(),
        "a dry run publishes nothing"
    );

    let (code, out, err) = redrive(&path, &group);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("redriven 3, truncated 1, still failing 1, left 0"),
        "{out}{err}"
    );
    assert!(
        err.contains("still failing: ") && err.contains("truncated, not redriven: "),
        "{err}"
    );
    let redriven = consume(&kafka(), &fixed, 1).await;
    let bodies: Vec<&[u8]> = redriven.iter().map(|r| r.payload.as_slice()).collect();
    let sent: Vec<&[u8]> = bad.iter().map(|e| e.as_bytes()).collect();
    assert_eq!(bodies, sent, "the events' own bytes, in order");
    for (r, l) in redriven.iter().zip(&letters) {
        assert_eq!(r.headers["c360-event-id"], l.headers["c360-event-id"]);
        assert_eq!(r.headers["c360-webhook"], "wh");
        assert!(
            !r.headers
                .keys()
                .any(|k| k.starts_with("c360-dead-letter") || k.starts_with("c360-original")),
            "{:?}",
            r.headers
        );
    }

    // Again: the commit passed the redriven letters only; what stayed is reported again.
    let (code, out, err) = redrive(&path, &group);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("redriven 0, truncated 1, still failing 1, left 0"),
        "{out}{err}"
    );
    assert_eq!(
        consume(&kafka(), &fixed, 1).await.len(),
        3,
        "nothing published twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_rabbitmq_route_redrives_from_the_dead_letter_queue_and_requeues_the_rest() {
    let _shared = SHARED_BROKERS.read().await;
    let exchange = unique("rd-x");
    let dlq = Queue::bind(&exchange, &["dead-letter"], FieldTable::default()).await;
    let fixed = Queue::bind(&exchange, &["fixed.#"], FieldTable::default()).await;
    let long = "c".repeat(300); // a routing key over 255 bytes: an illegal destination
    let base = |routes: &str| {
        format!(
            "[server]\nack_timeout = \"3s\"\n{}{}{routes}{}[dead_letter]\nsink = \"rabbit\"\ntopic = \"dead-letter\"\n",
            webhook_toml("wh", KEY),
            rabbit_sink_toml("rabbit", &exchange),
            route_all_toml(&["rabbit"], ""),
        )
    };
    let bridge = Bridge::start(&base("")).await;
    let bad: Vec<String> = (0..2).map(|i| event(&long, &format!("rq-{i}"))).collect();
    let unbound = "d".repeat(300); // illegal too; its fixed route names a key no queue is bound to
    let stuck = event(&unbound, "rq-stuck");
    let all = [bad.clone(), vec![stuck]].concat();
    let r = post(&bridge.url("/hook"), &batch(&all), Some(KEY)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    bridge.shutdown().await;

    // Fixed: the long class goes to fixed.long, the other to a key no queue is bound to.
    let routes = format!(
        "[[routes]]\nmatch = \"{long}\"\nsinks = [\"rabbit\"]\ntopic = \"fixed.long\"\n[[routes]]\nmatch = \"{unbound}\"\nsinks = [\"rabbit\"]\ntopic = \"nobody.listens\"\n"
    );
    // A truncated copy of the first letter, as the dead letter writes one for a large event.
    publish_letter(
        &exchange,
        &bad[0].as_bytes()[..10],
        &[
            ("c360-truncated", "true"),
            ("c360-event-id", "0123456789abcdef0123456789abcdef"),
            ("c360-webhook", "wh"),
        ],
    )
    .await;
    let (_d, path) = write_config(&base(&routes));
    let queue = ["--queue", dlq.name.as_str()];

    // --dry-run says where each letter would go, and leaves every letter in the queue.
    let (code, out, err) = redrive(&path, &[&queue[..], &["--dry-run"]].concat());
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("to rabbit: fixed.long").count(), 2, "{out}");
    assert!(
        out.contains("redriven 0, truncated 1, still failing 0, left 3"),
        "{out}{err}"
    );
    assert!(
        fixed.drain().await.is_empty(),
        "a dry run publishes nothing"
    );

    let (code, out, err) = redrive(&path, &queue);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("redriven 2, truncated 1, still failing 1, left 0"),
        "{out}{err}"
    );
    assert!(
        err.contains("still failing: ") && err.contains("truncated, not redriven: "),
        "{err}"
    );
    let got = fixed.drain().await;
    let mut bodies: Vec<Vec<u8>> = got.iter().map(|m| m.body.clone()).collect();
    bodies.sort();
    let mut sent: Vec<Vec<u8>> = bad.iter().map(|e| e.clone().into_bytes()).collect();
    sent.sort();
    assert_eq!(bodies, sent);
    assert!(
        got.iter()
            .all(|m| !m.headers.contains_key("c360-dead-letter-reason"))
    );

    // The letter that still fails was requeued: a second run finds it, and only it.
    let (code, out, err) = redrive(&path, &queue);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("redriven 0, truncated 1, still failing 1, left 0"),
        "{out}{err}"
    );
    assert!(fixed.drain().await.is_empty(), "nothing published twice");
    assert_eq!(
        dlq.drain().await.len(),
        2,
        "the unroutable and the truncated letter stay in the queue"
    );
}

/// A redrive that a replica runs with the shared Redis ledger, SIGKILLed after some letters
/// were published (nothing committed yet) and run again: the ledger skips every event already
/// confirmed, so each reaches the fixed topic once. (A kill between a confirm and its ledger
/// write could still repeat that one event: at least once, like every other delivery.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_killed_midway_and_run_again_through_the_redis_ledger_publishes_nothing_twice() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("rk");
    let (fixed, dead) = (format!("{prefix}.fixed"), format!("{prefix}.dead-letter"));
    create_topics(&kafka(), &[fixed.clone(), dead.clone()], 1).await;
    let ledger = format!(
        "[ledger]\nbackend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"{prefix}:\"\nttl = \"10m\"\ntimeout = \"500ms\"\n",
        crate::redis_server::shared_url()
    );
    let bridge = Bridge::start(&format!("{}{ledger}", kafka_config(&prefix, "", &dead))).await;
    let bad: Vec<String> = (0..30)
        .map(|i| event("task/created", &format!("rk-{i}")))
        .collect();
    let r = post(&bridge.url("/hook"), &batch(&bad), Some(KEY)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    bridge.shutdown().await;
    assert_eq!(consume(&kafka(), &dead, 1).await.len(), 30);

    let routes =
        format!("[[routes]]\nmatch = \"task/created\"\nsinks = [\"kafka\"]\ntopic = \"{fixed}\"\n");
    let fixed_config = format!("{}{ledger}", kafka_config(&prefix, &routes, &dead));
    let (_d, path) = write_config(&fixed_config);
    let mut first = std::process::Command::new(BIN)
        .args([
            "redrive",
            "--config",
            &path,
            "--group",
            &prefix,
            "--max-rate",
            "3",
        ])
        .spawn()
        .expect("redrive runs");
    let started = std::time::Instant::now();
    let midway = loop {
        let n = high_watermark(&fixed);
        if n >= 3 {
            break n;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first redrive published {n} in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let published = consume(&kafka(), &fixed, 1).await.len();
    eprintln!("redrive killed after {midway}–{published} of 30 letters were published");
    assert!(published < 30, "killed midway, not after the end");

    let (code, out, err) = redrive(&path, &["--group", &prefix]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("redriven 30, truncated 0, still failing 0, left 0"),
        "{out}{err}"
    );
    let got = consume(&kafka(), &fixed, 1).await;
    let mut bodies: Vec<&[u8]> = got.iter().map(|r| r.payload.as_slice()).collect();
    bodies.sort();
    let mut sent: Vec<&[u8]> = bad.iter().map(|e| e.as_bytes()).collect();
    sent.sort();
    assert_eq!(
        bodies, sent,
        "each of the 30 events once in the fixed topic"
    );
}
