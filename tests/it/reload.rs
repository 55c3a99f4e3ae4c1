//! Configuration reload in a running `serve` process: a topic change in force within 5 s of
//! SIGHUP or of the file's change (`watch_config`), a broken file that changes nothing, and
//! senders that see no non-200 while routes and sinks change under them.

use crate::harness::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const KEY: &str = "reload-key";

/// A config publishing everything to Kafka topic `topic`, with more `[server]` keys and more
/// sinks (`extra_sinks`, also in the route).
fn config(topic: &str, server: &str, extra_sinks: &[&str], sink_tables: &str) -> String {
    let sinks: Vec<&str> = std::iter::once("kafka")
        .chain(extra_sinks.iter().copied())
        .collect();
    format!(
        "[server]\nkeys_poll_interval = \"200ms\"\n{server}{}{}{sink_tables}{}",
        webhook_toml("wh", KEY),
        kafka_sink_toml("kafka", &kafka()),
        route_all_toml(&sinks, &format!("topic = \"{topic}\"\n"))
    )
}

async fn config_hash(served: &Served) -> String {
    let ready: serde_json::Value = reqwest::get(served.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    ready["config_hash"].as_str().unwrap_or_default().to_owned()
}

/// Waits until `/readyz` shows a hash other than `old`; how long that took.
async fn new_hash(served: &Served, old: &str, within: Duration) -> Duration {
    let started = Instant::now();
    while config_hash(served).await == old {
        assert!(
            started.elapsed() < within,
            "no reload within {within:?}:\n{}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// How many Kafka sinks the bridge has connected so far (each logs its first reachability).
fn kafka_starts(served: &Served) -> usize {
    served
        .log()
        .lines()
        .filter(|l| l.contains("Kafka cluster reachability changed"))
        .count()
}

async fn post_one(served: &Served, id: &str) -> (u16, String) {
    let e = event("task_created", id);
    let r = post(
        &served.url("/hook"),
        &batch(std::slice::from_ref(&e)),
        Some(KEY),
    )
    .await;
    (r.status, e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_the_topic_within_5s_a_broken_file_keeps_the_running_config_and_a_runtime_change_waits()
 {
    let _shared = SHARED_BROKERS.read().await;
    let (a, b) = (unique("reload-a"), unique("reload-b"));
    create_topics(&kafka(), &[a.clone(), b.clone()], 1).await;
    let (_d, path) = write_config(&config(&a, "", &[], ""));
    let served = Served::start(&path, &[]).await;
    assert_eq!(post_one(&served, "before").await.0, 200);
    let first = config_hash(&served).await;
    assert_eq!(first.len(), 12, "{first}");

    std::fs::write(&path, config(&b, "", &[], "")).unwrap();
    served.signal("HUP");
    let took = new_hash(&served, &first, Duration::from_secs(5)).await;
    eprintln!("SIGHUP to the new config_hash: {took:?}");
    let (status, moved) = post_one(&served, "after").await;
    assert_eq!(status, 200);
    let in_b = consume(&kafka(), &b, 1).await;
    assert_eq!(in_b.len(), 1);
    assert_eq!(in_b[0].payload, moved.as_bytes());
    assert_eq!(
        consume(&kafka(), &a, 1).await.len(),
        1,
        "only the first event in the old topic"
    );

    // A broken file: ERROR naming the key, the running configuration stays, counted.
    let second = config_hash(&served).await;
    std::fs::write(&path, config(&b, "bogus_knob = 1\n", &[], "")).unwrap();
    served.signal("HUP");
    let line = served
        .log_line("configuration reload (SIGHUP) failed")
        .await;
    assert!(
        line.contains("ERROR") && line.contains("bogus_knob"),
        "{line}"
    );
    assert_eq!(config_hash(&served).await, second);
    assert_eq!(post_one(&served, "still-b").await.0, 200);
    assert_eq!(consume(&kafka(), &b, 1).await.len(), 2);
    // A listener or runtime change: a WARN naming the key, and nothing else changes.
    std::fs::write(&path, config(&b, "worker_threads = 3\n", &[], "")).unwrap();
    served.signal("HUP");
    let warn = served.log_line("changes only with a restart").await;
    assert!(
        warn.contains("WARN") && warn.contains("server.worker_threads"),
        "{warn}"
    );
    served
        .log_line("configuration reload (SIGHUP): unchanged")
        .await;
    assert_eq!(config_hash(&served).await, second);
    let metrics = served.metrics().await;
    assert_eq!(
        metric(&metrics, "c360_config_reloads_total{result=\"error\"}"),
        1.0
    );
    assert_eq!(
        metric(&metrics, "c360_config_reloads_total{result=\"ok\"}"),
        2.0
    );
    assert_eq!(
        metric(&metrics, &format!("c360_config_info{{hash=\"{second}\"}}")),
        1.0
    );
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_file_reloads_and_four_senders_see_no_non_200_while_sinks_go_and_change() {
    let _shared = SHARED_BROKERS.read().await;
    let (a, a2) = (unique("watch-a"), unique("watch-a2"));
    create_topics(&kafka(), &[a.clone(), a2.clone()], 1).await;
    let exchange = unique("watch-x");
    let queue = Queue::bind(&exchange, &["#"], lapin::types::FieldTable::default()).await;
    let watch = "watch_config = true\n";
    // Kafka and RabbitMQ both take every event; then RabbitMQ goes, then the topic moves, then
    // the Kafka sink's own section changes (a new producer, warmed up before the swap).
    let fanout = config(
        &a,
        watch,
        &["rabbit"],
        &rabbit_sink_toml("rabbit", &exchange),
    );
    let (_d, path) = write_config(&fanout);
    let served = Arc::new(Served::start(&path, &[]).await);

    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for s in 0..4 {
        let (served, stop) = (served.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (status, e) = post_one(&served, &format!("s{s}-{n}")).await;
                answers.push((status, e, started.elapsed()));
                n += 1;
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Reload 1: the RabbitMQ sink removed.
    let h0 = config_hash(&served).await;
    std::fs::write(&path, config(&a, watch, &[], "")).unwrap();
    let took = new_hash(&served, &h0, Duration::from_secs(5)).await;
    eprintln!("file change to the new config_hash (sink removed): {took:?}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Reload 2: the topic moves to a2.
    let h1 = config_hash(&served).await;
    std::fs::write(&path, config(&a2, watch, &[], "")).unwrap();
    let took = new_hash(&served, &h1, Duration::from_secs(5)).await;
    eprintln!("file change to the new config_hash (topic moved): {took:?}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The Kafka section never changed so far: its one connection served all three generations.
    assert_eq!(kafka_starts(&served), 1, "{}", served.log());
    // Reload 3: the Kafka sink's section changes.
    let h2 = config_hash(&served).await;
    let linger = "\"linger.ms\" = \"1\"\n";
    std::fs::write(&path, config(&a2, watch, &[], linger)).unwrap();
    let took = new_hash(&served, &h2, Duration::from_secs(5)).await;
    eprintln!("file change to the new config_hash (Kafka sink changed): {took:?}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(kafka_starts(&served), 2, "{}", served.log());
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for s in senders {
        answers.extend(s.await.unwrap());
    }
    let non_200: Vec<u16> = answers
        .iter()
        .map(|(s, _, _)| *s)
        .filter(|s| *s != 200)
        .collect();
    let longest = answers.iter().map(|(_, _, d)| *d).max().unwrap_or_default();
    eprintln!(
        "reload under load (three reloads): {} batches, {} non-200, longest answer {longest:?}",
        answers.len(),
        non_200.len()
    );
    assert!(non_200.is_empty(), "{non_200:?}");

    // Every 200's event is in Kafka (the old or the new topic) exactly once; the queue holds
    // only events of 200 batches (those served before RabbitMQ was removed), each once.
    let mut kafka_got: Vec<Vec<u8>> = consume(&kafka(), &a, 1)
        .await
        .into_iter()
        .map(|r| r.payload)
        .collect();
    kafka_got.extend(
        consume(&kafka(), &a2, 1)
            .await
            .into_iter()
            .map(|r| r.payload),
    );
    let mut sent: Vec<Vec<u8>> = answers
        .iter()
        .map(|(_, e, _)| e.clone().into_bytes())
        .collect();
    kafka_got.sort();
    sent.sort();
    assert_eq!(kafka_got, sent, "every 200's event once in Kafka");
    let mut queued: Vec<Vec<u8>> = queue.drain().await.into_iter().map(|m| m.body).collect();
    let n = queued.len();
    queued.sort();
    queued.dedup();
    assert_eq!(queued.len(), n, "no event twice in the queue");
    assert!(n > 0, "RabbitMQ took events before it was removed");
    assert!(
        queued.iter().all(|e| sent.binary_search(e).is_ok()),
        "only events of 200 batches"
    );
    eprintln!("{n} events reached RabbitMQ before its removal");
    served
        .log_line("sink closed after a configuration reload")
        .await;
    Arc::try_unwrap(served)
        .ok()
        .expect("senders are done")
        .stop()
        .await;
}
