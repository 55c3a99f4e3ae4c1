//! A missing topic is one topic's problem: SPEC §12 against tansu and librdkafka's mock cluster.
//! A batch for a topic the cluster lacks (or refuses) gets a fast 503 naming the topic while
//! the other traffic keeps getting 200 and /readyz stays 200; `create_topics` creates a topic
//! once; an event over its topic's `max.message.bytes` is dead-lettered alone; a resend after a
//! full local queue keeps per-key order.

use crate::faults::mock;
use crate::harness::*;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaRespErr;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const KEY: &str = "topics-key";

/// A one-webhook config with sink `sink` (Kafka at `bootstrap`, `librdkafka` lines, then
/// `sink_extra` TOML after the sink's tables) routing every event to `topic`, keyed by the
/// record id, plus `tail` (e.g. a `[dead_letter]` table).
fn config(
    ack_timeout: &str,
    sink: &str,
    bootstrap: &str,
    librdkafka: &str,
    sink_extra: &str,
    topic: &str,
    tail: &str,
) -> String {
    format!(
        "[server]\nack_timeout = \"{ack_timeout}\"\n{}{}{sink_extra}{}{tail}",
        webhook_toml("wh", KEY),
        kafka_sink_toml_with(sink, bootstrap, librdkafka),
        route_all_toml(
            &[sink],
            &format!("topic = \"{topic}\"\nkey = \"/payload/new/id\"\n")
        ),
    )
}

/// How many times each payload was consumed.
fn counts(records: &[Record]) -> HashMap<Vec<u8>, usize> {
    let mut seen = HashMap::new();
    for r in records {
        *seen.entry(r.payload.clone()).or_default() += 1;
    }
    seen
}

/// The partition count the cluster reports for `topic` (`None`: no such topic), asked by a
/// plain consumer, which never auto-creates it.
fn partitions_of(bootstrap: &str, topic: &str) -> Option<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
}

/// Polls `{base}/readyz` every 200 ms until `stop`; returns (polls, the non-200 answers).
fn watch_readiness(
    base: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let started = Instant::now();
        let (mut polls, mut bad) = (0, Vec::new());
        while !stop.is_cancelled() {
            polls += 1;
            match client.get(format!("{base}/readyz")).send().await {
                Ok(r) if r.status() == 200 => {}
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    bad.push(format!("{:?}: {status} {text}", started.elapsed()));
                }
                Err(e) => bad.push(format!("{:?}: {e}", started.elapsed())),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (polls, bad)
    })
}

/// The answer's `error` code and `message`.
fn error_of(r: &Reply) -> (&str, &str) {
    (
        r.json["error"].as_str().unwrap_or(""),
        r.json["message"].as_str().unwrap_or(""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_good_traffic_keeps_200s_and_readiness_while_a_missing_topic_gets_a_fast_503() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("t");
    let good = [
        format!("{prefix}.task_created"),
        format!("{prefix}.task_updated"),
    ];
    create_topics(&kafka(), &good, 2).await;
    let bad_class = "brandnew_created";
    let bad_topic = format!("{prefix}.{bad_class}");
    let toml = config(
        "10s",
        "kafka",
        &kafka(),
        "",
        "",
        &format!("{prefix}.{{event_class}}"),
        "",
    );
    let bridge = Bridge::start(&toml).await;
    let url = bridge.url("/hook");

    let stop = CancellationToken::new();
    let readiness = watch_readiness(bridge.url(""), stop.clone());
    let started = Instant::now();
    let run_for = Duration::from_secs(15);
    let mut senders = Vec::new();
    for w in 0..8 {
        let (url, tag) = (url.clone(), prefix.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client");
            let mut sent = Vec::new();
            // Bounded twice: by time and by count.
            for n in 0..2_000 {
                if started.elapsed() >= run_for {
                    break;
                }
                let events: Vec<String> = (0..3)
                    .map(|i| {
                        let class = if (n + i) % 2 == 0 {
                            "task_created"
                        } else {
                            "task_updated"
                        };
                        event(class, &format!("{tag}-{w}-{n}-{i}"))
                    })
                    .collect();
                let body = batch(&events);
                let req = client
                    .post(&url)
                    .header(
                        "x-c360-signature",
                        c360_bridge::webhook::signature::sign(KEY.as_bytes(), &body),
                    )
                    .body(body);
                let status = match req.send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                sent.push(Sent { events, status });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        }));
    }

    // The bad batch: one event for the missing topic, one for a good topic.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bad_event = event(bad_class, &format!("{prefix}-bad"));
    let mate = event("task_created", &format!("{prefix}-mate"));
    let asked = Instant::now();
    let bad = post(&url, &batch(&[bad_event.clone(), mate.clone()]), Some(KEY)).await;
    let bad_took = asked.elapsed();

    let mut sent = Vec::new();
    for s in senders {
        sent.extend(s.await.expect("sender"));
    }
    stop.cancel();
    let (polls, not_ready) = readiness.await.expect("readiness watcher");
    let not_200 = sent.iter().filter(|s| s.status != 200).count();
    eprintln!(
        "TOPICS-FIGURES | good batches {} | non-200 among them {not_200} | bad batch {} {} in {bad_took:?} | /readyz polls {polls}, non-200 {}",
        sent.len(),
        bad.status,
        bad.json,
        not_ready.len()
    );

    assert_eq!(bad.status, 503, "{:?}", bad.json);
    let (code, message) = error_of(&bad);
    assert_eq!(code, "unknown_topic", "{:?}", bad.json);
    assert!(
        message.contains(&format!("topic \"{bad_topic}\" does not exist")),
        "the message names the topic: {:?}",
        bad.json
    );
    assert!(
        bad_took < Duration::from_secs(3),
        "the missing topic took {bad_took:?} to answer (ack_timeout 10s)"
    );
    assert!(
        sent.len() >= 8,
        "the senders sent only {} batches",
        sent.len()
    );
    let statuses: Vec<u16> = sent
        .iter()
        .filter(|s| s.status != 200)
        .map(|s| s.status)
        .collect();
    assert!(
        statuses.is_empty(),
        "good batches not answered 200: {statuses:?}"
    );
    assert!(polls >= 40, "only {polls} /readyz polls");
    assert!(not_ready.is_empty(), "/readyz was not 200: {not_ready:?}");
    assert_eq!(
        partitions_of(&kafka(), &bad_topic),
        None,
        "nothing created the missing topic"
    );

    // Every event of every 200 exactly once, and nothing else but the bad batch's event for a
    // good topic, which §12 publishes (only the missing topic's events fail): once.
    let mut seen = counts(&consume(&kafka(), &good[0], 2).await);
    for (payload, n) in counts(&consume(&kafka(), &good[1], 2).await) {
        *seen.entry(payload).or_default() += n;
    }
    let mut want: HashMap<Vec<u8>, usize> = sent
        .iter()
        .flat_map(|s| &s.events)
        .map(|e| (e.as_bytes().to_vec(), 1))
        .collect();
    want.insert(mate.into_bytes(), 1);
    let missing = want.keys().filter(|e| !seen.contains_key(*e)).count();
    let twice = seen.values().filter(|&&n| n > 1).count();
    let unexpected = seen.keys().filter(|e| !want.contains_key(*e)).count();
    eprintln!(
        "TOPICS-FIGURES | consumed {} distinct events, expected {} | missing {missing} | duplicated {twice} | unexpected {unexpected}",
        seen.len(),
        want.len()
    );
    assert_eq!((missing, twice, unexpected), (0, 0, 0));
    assert!(!seen.contains_key(bad_event.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_authorization_failed_fails_only_that_topics_batch() {
    let cluster = mock(&[("allowed", 1), ("denied", 1)]);
    cluster
        .topic_error(
            "denied",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .expect("topic error");
    let bootstrap = cluster.bootstrap_servers();
    let toml = config("10s", "kafka", &bootstrap, "", "", "{payload_class}", "");
    let bridge = Bridge::start(&toml).await;
    let url = bridge.url("/hook");

    let stop = CancellationToken::new();
    let readiness = watch_readiness(bridge.url(""), stop.clone());
    let goods: Vec<Vec<String>> = (0..6)
        .map(|b| {
            (0..3)
                .map(|i| event("allowed_created", &format!("a-{b}-{i}")))
                .collect()
        })
        .collect();
    let denied_body = batch(&[event("denied_created", "d-1")]);
    let asked = Instant::now();
    let denied = {
        let url = url.clone();
        tokio::spawn(async move {
            let r = post(&url, &denied_body, Some(KEY)).await;
            (r, asked.elapsed())
        })
    };
    let mut oks = Vec::new();
    for events in &goods {
        let (url, body) = (url.clone(), batch(events));
        oks.push(tokio::spawn(
            async move { post(&url, &body, Some(KEY)).await },
        ));
    }
    let (denied, took) = denied.await.expect("denied post");
    let mut statuses = Vec::new();
    for o in oks {
        let r = o.await.expect("post");
        statuses.push((r.status, r.json));
    }
    // A second denied batch after the cached answer grew old: still refused, still fast.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = Instant::now();
    let denied2 = post(&url, &batch(&[event("denied_created", "d-2")]), Some(KEY)).await;
    let took2 = again.elapsed();
    let after = post(
        &url,
        &batch(&[event("allowed_created", "a-after")]),
        Some(KEY),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let (polls, not_ready) = readiness.await.expect("readiness watcher");
    eprintln!(
        "TOPICS-AUTH | denied: {} {} in {took:?}; again {} {} in {took2:?} | allowed batches {:?} | /readyz polls {polls}, non-200 {not_ready:?}",
        denied.status,
        denied.json,
        denied2.status,
        denied2.json,
        statuses.iter().map(|s| s.0).collect::<Vec<_>>()
    );

    for r in [&denied, &denied2] {
        assert_eq!(r.status, 503, "{:?}", r.json);
        let (code, message) = error_of(r);
        assert_eq!(code, "topic_authorization", "{:?}", r.json);
        assert!(
            message.contains("\"denied\""),
            "names the topic: {:?}",
            r.json
        );
    }
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert!(took2 < Duration::from_secs(3), "answered after {took2:?}");
    for (status, json) in &statuses {
        assert_eq!(*status, 200, "{json:?}");
    }
    assert_eq!(after.status, 200, "{:?}", after.json);
    assert!(not_ready.is_empty(), "/readyz was not 200: {not_ready:?}");
    let got = counts(&consume(&bootstrap, "allowed", 1).await);
    let want: Vec<&String> = goods.iter().flatten().collect();
    assert_eq!(got.len(), want.len() + 1, "{} records", got.len());
    for e in want {
        assert_eq!(got.get(e.as_bytes()), Some(&1), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topics_creates_a_missing_topic_once_even_when_two_bridges_race() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("t");
    // A sink name of its own: the metrics recorder is the process's, shared by every bridge.
    let sink = "autocreate";
    let created_metric = format!("c360_topics_created_total{{sink=\"{sink}\"}}");
    let create = format!("[sinks.{sink}.create_topics]\npartitions = 2\n");
    let toml = config(
        "10s",
        sink,
        &kafka(),
        "",
        &create,
        &format!("{prefix}.{{event_class}}"),
        "",
    );
    let first = Bridge::start(&toml).await;
    let fresh = format!("{prefix}.fresh_created");
    assert_eq!(
        partitions_of(&kafka(), &fresh),
        None,
        "{fresh} exists already"
    );
    let before = metric(&metrics_text(&first).await, &created_metric);

    let e = event("fresh_created", "f-1");
    let r = post(
        &first.url("/hook"),
        &batch(std::slice::from_ref(&e)),
        Some(KEY),
    )
    .await;
    assert_eq!(
        (r.status, &r.json),
        (200, &serde_json::json!({"accepted": 1}))
    );
    assert_eq!(
        partitions_of(&kafka(), &fresh),
        Some(2),
        "created with 2 partitions"
    );
    let got = consume(&kafka(), &fresh, 2).await;
    assert_eq!(
        got.iter().map(|r| &r.payload[..]).collect::<Vec<_>>(),
        [e.as_bytes()]
    );
    let once = metric(&metrics_text(&first).await, &created_metric);
    assert_eq!(
        once - before,
        1.0,
        "c360_topics_created_total after the first creation"
    );

    // Two bridges, one new topic, two batches at the same moment.
    let second = Bridge::start(&toml).await;
    let raced = format!("{prefix}.raced_created");
    let (e1, e2) = (event("raced_created", "r-1"), event("raced_created", "r-2"));
    let (b1, b2) = (
        batch(std::slice::from_ref(&e1)),
        batch(std::slice::from_ref(&e2)),
    );
    let (u1, u2) = (first.url("/hook"), second.url("/hook"));
    let (r1, r2) = tokio::join!(post(&u1, &b1, Some(KEY)), post(&u2, &b2, Some(KEY)));
    // Both bridges run in this process and share one metrics recorder: one read is the sum.
    let total = metric(&metrics_text(&second).await, &created_metric);
    eprintln!(
        "TOPICS-CREATE | race: {} {} / {} {} | created by the race {}",
        r1.status,
        r1.json,
        r2.status,
        r2.json,
        total - once
    );
    assert_eq!(
        (r1.status, &r1.json),
        (200, &serde_json::json!({"accepted": 1}))
    );
    assert_eq!(
        (r2.status, &r2.json),
        (200, &serde_json::json!({"accepted": 1}))
    );
    assert_eq!(partitions_of(&kafka(), &raced), Some(2));
    assert_eq!(total - once, 1.0, "the raced topic counted as created once");
    let got = counts(&consume(&kafka(), &raced, 2).await);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got.get(e1.as_bytes()), Some(&1));
    assert_eq!(got.get(e2.as_bytes()), Some(&1));
    for b in [&first, &second] {
        let m = metrics_text(b).await;
        let failed = metric(&m, &format!("c360_publish_failures_total{{sink=\"{sink}\""));
        assert_eq!(failed, 0.0, "{m}");
    }
}

/// Creates `topic` (1 partition) with topic configuration `config`.
async fn create_topic_with(bootstrap: &str, topic: &str, config: &[(&str, &str)]) {
    require(bootstrap, "the Kafka broker");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let mut new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    for (k, v) in config {
        new = new.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&[new], &opts)
        .await
        .expect("create_topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
}

/// The small events sent by `post` number `n`: a compact `task_created` of about 60 bytes.
fn small(prefix: &str, n: usize) -> String {
    format!(r#"{{"event_class":"task_created","payload":{{"new":{{"id":"{prefix}-s{n}"}}}}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_its_topics_max_message_bytes_is_dead_lettered_alone() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("t");
    let topic = format!("{prefix}.task_created");
    let dead = format!("{prefix}.dead-letter");
    create_topic_with(&kafka(), &topic, &[("max.message.bytes", "2000")]).await;
    create_topics(&kafka(), std::slice::from_ref(&dead), 1).await;
    let dl = format!("[dead_letter]\nsink = \"kafka\"\ntopic = \"{dead}\"\n");
    let toml = config(
        "10s",
        "kafka",
        &kafka(),
        "",
        "",
        &format!("{prefix}.{{event_class}}"),
        &dl,
    );
    let bridge = Bridge::start(&toml).await;
    let url = bridge.url("/hook");

    let big = format!(
        r#"{{"event_class":"task_created","payload":{{"new":{{"id":"{prefix}-big","pad":"{}"}}}}}}"#,
        "x".repeat(3000)
    );
    let tiny = small(&prefix, 0);
    assert!(big.len() > 3000 && tiny.len() < 120);
    let mixed = batch(&[big.clone(), tiny.clone()]);
    let others: Vec<Vec<String>> = (0..4)
        .map(|p| (1..=5).map(|i| small(&prefix, p * 10 + i)).collect())
        .collect();
    let mut posts = vec![{
        let url = url.clone();
        tokio::spawn(async move { post(&url, &mixed, Some(KEY)).await })
    }];
    for events in &others {
        let (url, body) = (url.clone(), batch(events));
        posts.push(tokio::spawn(
            async move { post(&url, &body, Some(KEY)).await },
        ));
    }
    let mut replies = Vec::new();
    for p in posts {
        replies.push(p.await.expect("post"));
    }
    for r in &replies {
        eprintln!("TOPICS-TOO-LARGE | {} {}", r.status, r.json);
    }
    assert_eq!(
        (replies[0].status, &replies[0].json),
        (200, &serde_json::json!({"accepted": 2}))
    );
    for (r, events) in replies[1..].iter().zip(&others) {
        assert_eq!(
            (r.status, &r.json),
            (200, &serde_json::json!({"accepted": events.len()}))
        );
    }

    let on_topic = counts(&consume(&kafka(), &topic, 1).await);
    let letters = consume(&kafka(), &dead, 1).await;
    for l in &letters {
        eprintln!(
            "TOPICS-TOO-LARGE | dead letter of {} bytes, reason {:?}",
            l.payload.len(),
            l.headers.get("c360-dead-letter-reason")
        );
    }
    assert!(
        !on_topic.contains_key(big.as_bytes()),
        "the big event is not on its topic"
    );
    let mut want = vec![tiny];
    want.extend(others.into_iter().flatten());
    for e in &want {
        assert_eq!(on_topic.get(e.as_bytes()), Some(&1), "{e} on {topic}");
    }
    assert_eq!(on_topic.len(), want.len(), "nothing else on {topic}");
    assert_eq!(letters.len(), 1, "one dead letter, the big event");
    let letter = &letters[0];
    assert_eq!(
        letter.payload,
        big.as_bytes(),
        "the big event's bytes, uncut"
    );
    let h = &letter.headers;
    assert!(
        h.get("c360-dead-letter-reason")
            .is_some_and(|r| r.starts_with("too_large")),
        "{h:?}"
    );
    assert_eq!(h.get("c360-original-destination"), Some(&topic), "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_local_queue_holds_back_the_rest_of_a_key_and_resends_keep_its_order() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("t");
    let topic = format!("{prefix}.task_created");
    create_topics(&kafka(), std::slice::from_ref(&topic), 3).await;
    let librdkafka = "\"queue.buffering.max.messages\" = \"5\"\n\"linger.ms\" = \"50\"\n";
    let toml = config(
        "10s",
        "kafka",
        &kafka(),
        librdkafka,
        "",
        &format!("{prefix}.{{event_class}}"),
        "",
    );
    let bridge = Bridge::start(&toml).await;
    let events: Vec<String> = (0..30)
        .map(|seq| {
            format!(
                r#"{{"event_class":"task_created","payload":{{"new":{{"id":"same","seq":{seq}}}}}}}"#
            )
        })
        .collect();
    let body = batch(&events);
    let mut attempts = Vec::new();
    for _ in 0..40 {
        let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
        let done = r.status == 200;
        attempts.push((r.status, r.json));
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bridge.wait_idle(Duration::from_secs(10)).await;
    eprintln!(
        "TOPICS-ORDER | {} attempts: {:?}",
        attempts.len(),
        attempts.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    for (status, json) in &attempts {
        if *status != 200 {
            eprintln!("TOPICS-ORDER | {status} {json}");
        }
    }
    assert_eq!(attempts.last().map(|a| a.0), Some(200), "{attempts:?}");
    assert!(
        attempts.iter().any(|a| a.0 == 503),
        "the local queue of 5 never filled up: the test does not test anything"
    );

    let got = consume(&kafka(), &topic, 3).await;
    let seqs: Vec<u64> = got
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON");
            v["payload"]["new"]["seq"].as_u64().expect("seq")
        })
        .collect();
    eprintln!("TOPICS-ORDER | consumed seqs {seqs:?}");
    assert_eq!(
        seqs,
        (0..30).collect::<Vec<u64>>(),
        "every event once, in batch order"
    );
    assert!(got.iter().all(|r| r.key.as_deref() == Some(&b"same"[..])));
}
