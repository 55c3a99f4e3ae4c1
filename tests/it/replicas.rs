//! Several replicas, one memory (SPEC §7): the retry ledger in Redis. Two bridges sharing one
//! Redis, a restart, Redis killed under load, and a three-node Redis Cluster; the memory
//! ledger runs the same scenarios, so the duplicates each backend leaves are measured side by
//! side (`DUP-TABLE` lines).

use crate::harness::{self, Bridge, Queue, Served, create_topics, kafka, post};
use crate::redis_server::{self, RedisCluster, RedisServer};
use c360_bridge::config::{LedgerBackend, LedgerConfig};
use c360_bridge::delivery::ledger::{Health, Pair, RedisLedger, Subject};
use lapin::types::FieldTable;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const KEY: &str = "replicas-key";
const EVENTS: usize = 5;

/// Where the resend of the failed batch goes.
#[derive(Clone, Copy, Debug)]
enum Resend {
    /// To a second bridge process running next to the first.
    OtherReplica,
    /// To the same bridge, stopped and started again.
    AfterRestart,
}

/// `[ledger]` with Redis at `url` and a key prefix of the test's own.
fn redis_ledger(url: &str, cluster: bool) -> String {
    redis_ledger_prefixed(url, cluster, &format!("{}:", harness::unique("it-ledger")))
}

fn redis_ledger_prefixed(url: &str, cluster: bool, prefix: &str) -> String {
    format!(
        "[ledger]\nbackend = \"redis\"\nurl = \"{url}\"\ncluster = {cluster}\nkey_prefix = \"{prefix}\"\nttl = \"10m\"\ntimeout = \"1s\"\n"
    )
}

/// What a consumer read after the scenario, and what the replica that got the resend counted.
struct Outcome {
    kafka_duplicates: usize,
    queue_duplicates: usize,
    skips: f64,
}

/// Fan-out to Kafka and RabbitMQ. The batch goes to replica A while no queue is bound (503,
/// Kafka confirmed); then a queue is bound and the same batch is resent through replica B.
async fn resend_elsewhere(scenario: &str, ledger: &str, resend: Resend) -> Outcome {
    let topic = harness::unique("replicas");
    create_topics(&kafka(), std::slice::from_ref(&topic), 1).await;
    let exchange = harness::unique("replicas-x");
    let (k, r) = (harness::unique("rk"), harness::unique("rr"));
    let toml = format!(
        "{}{}{}{}{ledger}",
        harness::webhook_toml("replicas", KEY),
        harness::kafka_sink_toml(&k, &kafka()),
        harness::rabbit_sink_toml(&r, &exchange),
        harness::route_all_toml(&[&k, &r], &format!("topic = \"{topic}\"\n")),
    );
    let events: Vec<String> = (0..EVENTS)
        .map(|_| harness::event("task_created", &harness::unique("ev")))
        .collect();
    let body = harness::batch(&events);

    let a = Bridge::start(&toml).await;
    let first = post(&a.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(first.status, 503, "no queue bound yet: {:?}", first.json);
    a.wait_idle(Duration::from_secs(10)).await;
    let after_503 = harness::consume(&kafka(), &topic, 1).await;
    assert_eq!(after_503.len(), EVENTS, "Kafka confirmed every event once");

    let queue = Queue::bind(&exchange, &[&topic], FieldTable::default()).await;
    let b = match resend {
        Resend::OtherReplica => {
            let b = Bridge::start(&toml).await;
            drop(a); // still ran while B started; stopped only now
            b
        }
        Resend::AfterRestart => {
            a.shutdown().await;
            Bridge::start(&toml).await
        }
    };
    let second = post(&b.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(second.status, 200, "{:?}", second.json);
    assert_eq!(second.json["accepted"], EVENTS);

    let records = harness::consume(&kafka(), &topic, 1).await;
    let kafka_bodies: Vec<Vec<u8>> = records.into_iter().map(|r| r.payload).collect();
    let queue_bodies: Vec<Vec<u8>> = queue.drain().await.into_iter().map(|m| m.body).collect();
    let skips = harness::metric(
        &harness::metrics_text(&b).await,
        &format!("c360_ledger_skips_total{{sink=\"{k}\"}}"),
    );
    let outcome = Outcome {
        kafka_duplicates: duplicates(&events, &kafka_bodies, "Kafka"),
        queue_duplicates: duplicates(&events, &queue_bodies, "the queue"),
        skips,
    };
    eprintln!(
        "DUP-TABLE | {scenario} ({resend:?}) | events {EVENTS} | Kafka duplicates {} | queue duplicates {} | skips counted by the replica that got the resend {}",
        outcome.kafka_duplicates,
        outcome.queue_duplicates,
        outcome.skips + 0.0
    );
    outcome
}

/// Copies beyond the first of each sent event; fails if an event is missing or a stranger came.
fn duplicates(events: &[String], consumed: &[Vec<u8>], where_: &str) -> usize {
    let mut seen: HashMap<&[u8], usize> = HashMap::new();
    for c in consumed {
        *seen.entry(c.as_slice()).or_default() += 1;
    }
    for e in events {
        assert!(seen.contains_key(e.as_bytes()), "{where_} lacks an event");
    }
    assert_eq!(seen.len(), events.len(), "{where_} holds other messages");
    consumed.len() - events.len()
}

#[tokio::test]
async fn two_replicas_sharing_redis_publish_each_event_once() {
    let _shared = harness::SHARED_BROKERS.read().await;
    let prefix = format!("{}:", harness::unique("it-ledger"));
    let ledger = redis_ledger_prefixed(&redis_server::shared_url(), false, &prefix);
    let o = resend_elsewhere("redis ledger", &ledger, Resend::OtherReplica).await;
    assert_eq!(
        o.kafka_duplicates, 0,
        "B republished events A had confirmed"
    );
    assert_eq!(o.queue_duplicates, 0);
    assert_eq!(o.skips, EVENTS as f64, "B skipped each Kafka pair");
    // What Redis holds: the event ids in one set per sink and window of the ttl, each set
    // expiring at most two windows (and a minute of clock skew) later.
    let sets = redis_server::keys(6379, &prefix);
    assert!(
        (2..=4).contains(&sets.len()),
        "one set per sink (two if a window ended meanwhile): {sets:?}"
    );
    assert_eq!(redis_server::members(6379, &prefix), 2 * EVENTS);
    for set in &sets {
        assert!(set.starts_with(&format!("{prefix}replicas:")), "{sets:?}");
        let pttl: u64 = redis_server::cli(6379, &["pttl", set])
            .trim()
            .parse()
            .unwrap();
        // At least the ttl (10 min) and the minute of skew from the write, minus this test's
        // seconds; at most two windows and the minute.
        assert!(
            pttl > 600_000 && pttl <= 2 * 600_000 + 60_000,
            "{set}: PTTL {pttl}"
        );
    }
}

/// The ledger's windows over time, against the suite's Redis with a ttl of 1.5 s: a pair is
/// still found after the window it was recorded in ended (a resend across a window's edge is
/// skipped), for at least the ttl, and forgotten once its set expired.
#[tokio::test]
async fn a_pair_is_found_across_a_window_edge_for_the_ttl_then_forgotten() {
    let _shared = harness::SHARED_BROKERS.read().await;
    let ttl = Duration::from_millis(1500);
    let ledger = RedisLedger::new(&LedgerConfig {
        backend: LedgerBackend::Redis,
        url: redis_server::shared_url(),
        key_prefix: format!("{}:", harness::unique("it-windows")),
        ttl,
        timeout: Duration::from_secs(1),
        ..LedgerConfig::default()
    })
    .unwrap();
    let pair = Pair {
        key: 0,
        webhook: "w",
        subject: Subject::Delivery(0x0123456789abcdef0123456789abcdef),
        sink: "s",
    };
    let window = || {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        ms / ttl.as_millis()
    };
    ledger.record(&[pair]).await;
    let recorded = Instant::now();
    let first = window();
    while window() == first {
        assert_eq!(ledger.seen(&[pair]).await, [true], "within its window");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ledger.seen(&[pair]).await, [true], "after its window ended");
    let until = recorded + 3 * ttl;
    while ledger.seen(&[pair]).await == [true] {
        assert!(Instant::now() < until, "never forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let remembered = recorded.elapsed();
    eprintln!("ledger windows: a pair recorded with ttl {ttl:?} was found for {remembered:?}");
    assert!(remembered >= ttl, "forgotten after {remembered:?}");
    assert_eq!(ledger.health(), Health::Ok);
}

/// The served binary looks once at how its Redis frees expired keys: in the main thread
/// (`lazyfree-lazy-expire no`, Redis 7's default) it says so in a WARN line naming the
/// setting; lazily, it says nothing above debug.
#[tokio::test]
async fn a_redis_that_frees_expired_sets_in_its_main_thread_is_named_in_the_log() {
    let _shared = harness::SHARED_BROKERS.read().await;
    let topic = harness::unique("ledger-settings");
    create_topics(&kafka(), std::slice::from_ref(&topic), 1).await;
    let eager = RedisServer::start_configured(&["--lazyfree-lazy-expire", "no"]).await;
    let lazy = RedisServer::start().await;
    for (redis, eager_free) in [(&eager, true), (&lazy, false)] {
        let toml = format!(
            "{}{}{}{}",
            harness::webhook_toml("settings", KEY),
            harness::kafka_sink_toml("k", &kafka()),
            harness::route_all_toml(&["k"], &format!("topic = \"{topic}\"\n")),
            redis_ledger(&redis.url(), false),
        );
        let (_dir, path) = harness::write_config(&toml);
        let served = Served::start(
            &path,
            &[("RUST_LOG", "info,c360_bridge::delivery::ledger=debug")],
        )
        .await;
        let body = harness::batch(&[harness::event("task_created", &harness::unique("ev"))]);
        assert_eq!(
            post(&served.url("/hook"), &body, Some(KEY)).await.status,
            200
        );
        let want = if eager_free {
            "lazyfree-lazy-expire no"
        } else {
            "lazyfree-lazy-expire yes"
        };
        let line = served.log_line(want).await;
        assert_eq!(line.contains("WARN"), eager_free, "{line}");
        let log = served.stop().await;
        assert_eq!(
            log.lines().filter(|l| l.contains("lazyfree")).count(),
            1,
            "looked at once:\n{log}"
        );
    }
}

#[tokio::test]
async fn two_replicas_with_memory_ledgers_republish_what_the_other_confirmed() {
    let _shared = harness::SHARED_BROKERS.read().await;
    let o = resend_elsewhere("memory ledger", "", Resend::OtherReplica).await;
    assert_eq!(o.kafka_duplicates, EVENTS, "B cannot know what A confirmed");
    assert_eq!(o.queue_duplicates, 0);
    assert_eq!(o.skips, 0.0);
}

#[tokio::test]
async fn a_restarted_bridge_remembers_through_redis() {
    let _shared = harness::SHARED_BROKERS.read().await;
    let ledger = redis_ledger(&redis_server::shared_url(), false);
    let o = resend_elsewhere("redis ledger", &ledger, Resend::AfterRestart).await;
    assert_eq!(o.kafka_duplicates, 0, "the restarted bridge republished");
    assert_eq!(o.queue_duplicates, 0);
    assert_eq!(o.skips, EVENTS as f64);
}

#[tokio::test]
async fn a_restarted_bridge_with_a_memory_ledger_republishes() {
    let _shared = harness::SHARED_BROKERS.read().await;
    let o = resend_elsewhere("memory ledger", "", Resend::AfterRestart).await;
    assert_eq!(o.kafka_duplicates, EVENTS);
    assert_eq!(o.queue_duplicates, 0);
    assert_eq!(o.skips, 0.0);
}

#[tokio::test]
async fn two_replicas_sharing_a_redis_cluster_publish_each_event_once() {
    let _shared = harness::SHARED_BROKERS.read().await;
    let cluster = RedisCluster::start().await;
    let prefix = format!("{}:", harness::unique("it-ledger"));
    let ledger = redis_ledger_prefixed(&cluster.url(), true, &prefix);
    let o = resend_elsewhere("redis cluster ledger", &ledger, Resend::OtherReplica).await;
    assert_eq!(
        o.kafka_duplicates, 0,
        "B republished events A had confirmed"
    );
    assert_eq!(o.queue_duplicates, 0);
    assert_eq!(o.skips, EVENTS as f64);
    let members = cluster.members_per_node(&prefix);
    eprintln!("redis cluster: ledger pairs per node {members:?}");
    assert_eq!(
        members.iter().sum::<usize>(),
        2 * EVENTS,
        "each confirmed (event, sink) pair once"
    );
}

/// Polls `/readyz` until its `ledger` field is `want`; the bridge must stay ready meanwhile.
async fn wait_ledger_state(bridge: &Bridge, want: &str, within: Duration) {
    let until = Instant::now() + within;
    loop {
        let r = reqwest::get(bridge.url("/readyz")).await.unwrap();
        let status = r.status().as_u16();
        let json: serde_json::Value = r.json().await.unwrap();
        if json["ledger"] == want {
            assert_eq!(status, 200, "the ledger never decides readiness: {json}");
            return;
        }
        assert!(
            Instant::now() < until,
            "ledger not {want} within {within:?}: {json}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the webhook `name` answered at least `n` batches with 200 in all.
async fn wait_accepted(bridge: &Bridge, name: &str, n: f64) {
    let until = Instant::now() + Duration::from_secs(60);
    let line = format!("c360_requests_total{{webhook=\"{name}\",status=\"200\"");
    while harness::metric(&harness::metrics_text(bridge).await, &line) < n {
        assert!(Instant::now() < until, "fewer than {n} batches accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn redis_killed_under_load_changes_no_answer_and_loses_nothing() {
    let _shared = harness::SHARED_BROKERS.read().await;
    let mut redis = RedisServer::start().await;
    let topic = harness::unique("replicas-load");
    create_topics(&kafka(), std::slice::from_ref(&topic), 3).await;
    let (name, k) = (harness::unique("killed"), harness::unique("rk"));
    let toml = format!(
        "{}{}{}{}",
        harness::webhook_toml(&name, KEY),
        harness::kafka_sink_toml(&k, &kafka()),
        harness::route_all_toml(&[&k], &format!("topic = \"{topic}\"\n")),
        redis_ledger(&redis.url(), false).replace("1s", "200ms"),
    );
    let bridge = Bridge::start(&toml).await;
    let errors = |t: &str| harness::metric(t, "c360_ledger_errors_total");
    let errors_before = errors(&harness::metrics_text(&bridge).await);
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tokio::spawn(harness::load_until(
        bridge.url("/hook"),
        KEY,
        "task_created",
        20,
        4,
        100_000,
        stop.clone(),
    ));

    wait_accepted(&bridge, &name, 20.0).await;
    redis.kill();
    wait_ledger_state(&bridge, "degraded", Duration::from_secs(10)).await;
    let at_kill = harness::metric(
        &harness::metrics_text(&bridge).await,
        &format!("c360_requests_total{{webhook=\"{name}\",status=\"200\""),
    );
    wait_accepted(&bridge, &name, at_kill + 40.0).await; // 40 batches while Redis is gone
    redis.restart().await;
    wait_ledger_state(&bridge, "ok", Duration::from_secs(15)).await;
    let at_return = harness::metric(
        &harness::metrics_text(&bridge).await,
        &format!("c360_requests_total{{webhook=\"{name}\",status=\"200\""),
    );
    wait_accepted(&bridge, &name, at_return + 20.0).await;
    stop.cancel();
    let sent = load.await.unwrap();

    let non_200 = sent.iter().filter(|s| s.status != 200).count();
    assert_eq!(non_200, 0, "an answer changed while Redis was gone");
    let consumed: Vec<Vec<u8>> = harness::consume(&kafka(), &topic, 3)
        .await
        .into_iter()
        .map(|r| r.payload)
        .collect();
    let tally = harness::conservation("redis killed under load", &sent, &consumed);
    assert_eq!(tally.duplicates, 0);
    let errors_after = errors(&harness::metrics_text(&bridge).await);
    eprintln!(
        "redis killed under load: {} batches of 20, all 200; c360_ledger_errors_total +{}",
        sent.len(),
        errors_after - errors_before
    );
    assert!(errors_after > errors_before, "Redis failures were counted");

    // Back to skipping: a batch sent twice is published once.
    let event = harness::event("task_created", &harness::unique("again"));
    let body = harness::batch(std::slice::from_ref(&event));
    let skip_line = format!("c360_ledger_skips_total{{sink=\"{k}\"}}");
    let skips_before = harness::metric(&harness::metrics_text(&bridge).await, &skip_line);
    for _ in 0..2 {
        let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
        assert_eq!(r.status, 200, "{:?}", r.json);
    }
    let skips = harness::metric(&harness::metrics_text(&bridge).await, &skip_line) - skips_before;
    assert_eq!(
        skips, 1.0,
        "the resent event was skipped once Redis was back"
    );
    let again = harness::consume(&kafka(), &topic, 3).await;
    let copies = again
        .iter()
        .filter(|r| r.payload == event.as_bytes())
        .count();
    assert_eq!(copies, 1, "the event sent twice is in Kafka once");
}

/// `/readyz`'s status and JSON.
async fn readyz(bridge: &Bridge) -> (u16, serde_json::Value) {
    let r = reqwest::get(bridge.url("/readyz")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_redis_that_refuses_writes_or_hangs_costs_no_answer() {
    let _shared = harness::SHARED_BROKERS.read().await;
    let redis = RedisServer::start().await;
    let topic = harness::unique("replicas-slow");
    create_topics(&kafka(), std::slice::from_ref(&topic), 1).await;
    let k = harness::unique("rk");
    let toml = format!(
        "{}{}{}{}",
        harness::webhook_toml("slow", KEY),
        harness::kafka_sink_toml(&k, &kafka()),
        harness::route_all_toml(&[&k], &format!("topic = \"{topic}\"\n")),
        redis_ledger(&redis.url(), false).replace("1s", "200ms"),
    );
    let bridge = Bridge::start(&toml).await;
    let batch_of = |tag: &str| {
        let e = harness::event("task_created", &harness::unique(tag));
        (harness::batch(std::slice::from_ref(&e)), e)
    };

    // Refusing writes: maxmemory reached with the default noeviction policy (OOM on SET).
    redis_server::cli(redis.port, &["config", "set", "maxmemory", "1"]);
    let (full, full_event) = batch_of("full");
    let r = post(&bridge.url("/hook"), &full, Some(KEY)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let (status, json) = readyz(&bridge).await;
    assert_eq!(
        (status, &json["ledger"]),
        (200, &serde_json::json!("degraded"))
    );
    assert!(
        json["ledger_error"].as_str().unwrap().contains("OOM"),
        "{json}"
    );
    redis_server::cli(redis.port, &["config", "set", "maxmemory", "0"]);
    // Its confirmation was not recorded: the resend publishes it again (at least once), and is
    // recorded this time, so a third send is skipped.
    for _ in 0..2 {
        let r = post(&bridge.url("/hook"), &full, Some(KEY)).await;
        assert_eq!(r.status, 200, "{:?}", r.json);
    }
    assert_eq!(readyz(&bridge).await.1["ledger"], "ok");

    // Hanging: the server stopped (SIGSTOP) answers nothing; each round trip ends at the timeout.
    redis.signal("STOP");
    let (hung, hung_event) = batch_of("hung");
    let started = Instant::now();
    let r = post(&bridge.url("/hook"), &hung, Some(KEY)).await;
    let took = started.elapsed();
    redis.signal("CONT");
    assert_eq!(r.status, 200, "{:?}", r.json);
    let (status, json) = readyz(&bridge).await;
    assert_eq!(status, 200);
    assert!(
        json["ledger_error"]
            .as_str()
            .unwrap_or("")
            .contains("no answer"),
        "{json}"
    );
    eprintln!("a batch while Redis hung (timeout 200ms): answered 200 in {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    let records = harness::consume(&kafka(), &topic, 1).await;
    let count = |e: &String| records.iter().filter(|r| r.payload == e.as_bytes()).count();
    assert_eq!(
        count(&full_event),
        2,
        "published, republished once (not recorded), then skipped"
    );
    assert_eq!(count(&hung_event), 1);
}
