//! Self-healing sinks: broker states the client cannot retry out of (a Kafka producer that lost
//! its idempotence state, an AMQP channel the broker closed, a silent partition) end in 200s
//! again without a restart, and every event of every 200 is there.
//!
//! Each scenario prints a `HEAL-TABLE` row: time from the fault's end to the first 200, and
//! the conservation tally (lost must be 0).

use crate::faults::{KEY, mock, payloads};
use crate::harness::*;
use crate::partition::Partition;
use crate::tansu::Tansu;
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A bridge with one Kafka sink named `sink` (metrics are per process: a name of the test's
/// own keeps its counters apart) routing everything to `topic`.
fn kafka_toml(sink: &str, bootstrap: &str, topic: &str, ack_timeout: &str) -> String {
    format!(
        "[server]\nack_timeout = \"{ack_timeout}\"\n{}{}{}",
        webhook_toml("wh", KEY),
        kafka_sink_toml(sink, bootstrap),
        route_all_toml(&[sink], &format!("topic = \"{topic}\"\n"))
    )
}

/// `n` events of a fresh batch, unique to this call.
fn fresh(n: usize) -> Vec<String> {
    let tag = unique("heal");
    (0..n)
        .map(|i| event("task_updated", &format!("{tag}-{i}")))
        .collect()
}

/// Posts `events` as catalog360 would resend them: again every 250 ms until a 200 or until
/// `within` has passed. Returns every attempt and the time to the 200.
async fn resend_until_ok(
    bridge: &Bridge,
    events: &[String],
    within: Duration,
) -> (Vec<Sent>, Duration) {
    let started = Instant::now();
    let body = batch(events);
    let mut sent = Vec::new();
    loop {
        let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
        sent.push(Sent {
            events: events.to_vec(),
            status: r.status,
        });
        if r.status == 200 {
            return (sent, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "no 200 within {within:?}; last answer {} {:?}",
            r.status,
            r.json
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Posts `events` once, expecting a 503 with Retry-After before `deadline`.
async fn refused_in_time(bridge: &Bridge, events: &[String], deadline: Duration) -> Sent {
    let started = Instant::now();
    let r = post(&bridge.url("/hook"), &batch(events), Some(KEY)).await;
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{:?}", r.json);
    assert!(r.retry_after.is_some(), "503 without Retry-After");
    assert!(took < deadline, "answered after {took:?}");
    Sent {
        events: events.to_vec(),
        status: 503,
    }
}

/// `c360_sink_restarts_total` of `sink` for `reason`.
fn restarts(metrics: &str, sink: &str, reason: &str) -> f64 {
    let labels = format!("sink=\"{sink}\",reason=\"{reason}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("c360_sink_restarts_total") && l.contains(&labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn heal_row(scenario: &str, to_first_200: Duration, t: &Tally) {
    eprintln!(
        "HEAL-TABLE | {scenario} | first 200 after {:.1} s | lost {} | duplicates {}",
        to_first_200.as_secs_f64(),
        t.lost,
        t.duplicates
    );
}

/// A librdkafka fault the idempotent producer cannot retry out of, injected by the mock cluster.
struct FatalCase {
    name: &'static str,
    api: RDKafkaApiKey,
    errors: &'static [RDKafkaRespErr],
}

const FATAL_CASES: [FatalCase; 3] = [
    FatalCase {
        name: "OUT_OF_ORDER_SEQUENCE_NUMBER on Produce",
        api: RDKafkaApiKey::Produce,
        errors: &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    },
    FatalCase {
        name: "UNKNOWN_PRODUCER_ID on a retried Produce",
        api: RDKafkaApiKey::Produce,
        errors: &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID,
        ],
    },
    FatalCase {
        name: "INVALID_PRODUCER_EPOCH on Produce",
        api: RDKafkaApiKey::Produce,
        errors: &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH],
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_lost_its_state_is_replaced_and_nothing_is_lost() {
    for case in &FATAL_CASES {
        let cluster = mock(&[("t", 1)]);
        let sink = unique("kafka").replace('-', "_");
        let bridge =
            Bridge::start(&kafka_toml(&sink, &cluster.bootstrap_servers(), "t", "5s")).await;
        let first = fresh(5);
        let (mut sent, _) = resend_until_ok(&bridge, &first, Duration::from_secs(1)).await;
        cluster.request_errors(case.api, case.errors);
        // Not a wait for the answer deadline (4.5 s): the dead instance's messages fail at once.
        let hit = fresh(5);
        sent.push(refused_in_time(&bridge, &hit, Duration::from_secs(3)).await);
        let (again, took) = resend_until_ok(&bridge, &hit, Duration::from_secs(10)).await;
        sent.extend(again);
        let metrics = metrics_text(&bridge).await;
        assert_eq!(
            restarts(&metrics, &sink, "fatal_error"),
            1.0,
            "{}: one new producer\n{metrics}",
            case.name
        );
        let got = payloads(&consume(&cluster.bootstrap_servers(), "t", 1).await);
        let t = conservation(case.name, &sent, &got);
        heal_row(case.name, took, &t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_fenced_at_start_is_replaced_until_one_works() {
    let cluster = mock(&[("t", 1)]);
    cluster.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED; 2],
    );
    let sink = unique("kafka").replace('-', "_");
    let started = Instant::now();
    let bridge = Bridge::start(&kafka_toml(&sink, &cluster.bootstrap_servers(), "t", "5s")).await;
    let events = fresh(3);
    let (sent, _) = resend_until_ok(&bridge, &events, Duration::from_secs(15)).await;
    let took = started.elapsed();
    let metrics = metrics_text(&bridge).await;
    // Two fenced instances, replaced one after the other (the second after a 1 s backoff).
    assert_eq!(restarts(&metrics, &sink, "fatal_error"), 2.0, "{metrics}");
    let got = payloads(&consume(&cluster.bootstrap_servers(), "t", 1).await);
    let t = conservation("PRODUCER_FENCED on InitProducerId x2", &sent, &got);
    heal_row(
        "PRODUCER_FENCED on InitProducerId x2 (from start-up)",
        took,
        &t,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_restarted_empty_under_a_running_bridge_gets_200s_within_two_ack_timeouts() {
    let mut tansu = Tansu::start_memory().await;
    create_topics(&tansu.addr, &["t".into()], 1).await;
    let sink = unique("kafka").replace('-', "_");
    let bridge = Bridge::start(&kafka_toml(&sink, &tansu.addr, "t", "3s")).await;
    resend_until_ok(&bridge, &fresh(3), Duration::from_secs(1)).await;
    tansu.kill9();
    let during = fresh(5);
    let mut sent = vec![refused_in_time(&bridge, &during, Duration::from_secs(3)).await];
    tansu.restart().await; // memory storage: no topic, no record, no producer state
    create_topics(&tansu.addr, &["t".into()], 1).await;
    let (again, took) = resend_until_ok(&bridge, &during, Duration::from_secs(6)).await;
    sent.extend(again);
    let (after, _) = resend_until_ok(&bridge, &fresh(5), Duration::from_secs(1)).await;
    sent.extend(after);
    // Only what was sent after the restart can be there: the broker itself lost the rest.
    let got = payloads(&consume(&tansu.addr, "t", 1).await);
    let t = conservation("tansu restarted with empty state", &sent, &got);
    heal_row("tansu restarted with empty state (memory)", took, &t);
    let metrics = metrics_text(&bridge).await;
    eprintln!(
        "tansu restarted empty: restarts fatal_error {}, deliveries_stalled {}",
        restarts(&metrics, &sink, "fatal_error") + 0.0,
        restarts(&metrics, &sink, "deliveries_stalled") + 0.0
    );
}

/// What a silent partition of a broker's port did to a bridge that had delivered before it.
struct Cut {
    sent: Vec<Sent>,
    /// From the cut until /readyz said 503.
    unready: Duration,
    /// From the heal until the first 200.
    to_first_200: Duration,
}

/// Cuts `port` under `bridge` for `hold`: /readyz must turn 503 within `unready_within`,
/// batches sent during the cut get 503 on time, and their resend after the heal gets 200.
async fn through_a_partition(
    bridge: &Bridge,
    port: u16,
    hold: Duration,
    unready_within: Duration,
) -> Cut {
    let (mut sent, _) = resend_until_ok(bridge, &fresh(3), Duration::from_secs(1)).await;
    let cut = Partition::cut(port);
    let cut_at = Instant::now();
    wait_not_ready_at(&bridge.url(""), unready_within).await;
    let unready = cut_at.elapsed();
    let hit = fresh(5);
    sent.push(refused_in_time(bridge, &hit, Duration::from_secs(3)).await);
    // Longer than ack_timeout, as a cloud network blip can be.
    tokio::time::sleep(hold.saturating_sub(cut_at.elapsed())).await;
    sent.push(refused_in_time(bridge, &hit, Duration::from_secs(3)).await);
    drop(cut);
    let (again, to_first_200) = resend_until_ok(bridge, &hit, Duration::from_secs(30)).await;
    sent.extend(again);
    Cut {
        sent,
        unready,
        to_first_200,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_from_tansu_gets_503s_on_time_then_200s_without_a_restart() {
    let tansu = Tansu::start_memory().await;
    create_topics(&tansu.addr, &["t".into()], 1).await;
    let bridge = Bridge::start(&kafka_toml("kafka", &tansu.addr, "t", "3s")).await;
    // The metadata probe (every 0.5 s, 1 s timeout) notices.
    let c = through_a_partition(
        &bridge,
        tansu.port,
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .await;
    let got = payloads(&consume(&tansu.addr, "t", 1).await);
    let t = conservation("silent partition from tansu", &c.sent, &got);
    eprintln!("tansu partition: not ready {:?} after the cut", c.unready);
    heal_row("silent partition from tansu (5 s)", c.to_first_200, &t);
}

/// A bridge with one RabbitMQ sink named `sink` at `url`, publishing to `exchange`.
fn rabbit_toml(sink: &str, url: &str, exchange: &str) -> String {
    format!(
        "[server]\nack_timeout = \"3s\"\n{}{}{}",
        webhook_toml("wh", KEY),
        rabbit_sink_toml(sink, exchange).replace(RABBIT_URL, url),
        route_all_toml(&[sink], "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_from_rabbitmq_gets_503s_on_time_then_200s_without_a_restart() {
    let _exclusive = SHARED_BROKERS.write().await;
    let exchange = unique("x");
    let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
    // A 2 s heartbeat: two missed ones drop the connection.
    let url = format!("{RABBIT_URL}?heartbeat=2");
    let bridge = Bridge::start(&rabbit_toml("rabbit", &url, &exchange)).await;
    let c = through_a_partition(
        &bridge,
        5672,
        Duration::from_secs(8),
        Duration::from_secs(8),
    )
    .await;
    let got: Vec<Vec<u8>> = queue.drain().await.into_iter().map(|m| m.body).collect();
    let t = conservation("silent partition from RabbitMQ", &c.sent, &got);
    eprintln!(
        "RabbitMQ partition: not ready {:?} after the cut",
        c.unready
    );
    heal_row("silent partition from RabbitMQ (8 s)", c.to_first_200, &t);
}

/// Waits until /readyz is 503 with `needle` in its detail (the sink's first connection
/// attempt may still be under way).
async fn wait_not_ready_detail(bridge: &Bridge, needle: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let r = reqwest::get(bridge.url("/readyz")).await.expect("readyz");
        let status = r.status();
        let body = r.text().await.expect("body");
        if status == 503 && body.contains(needle) {
            return;
        }
        assert!(Instant::now() < until, "readyz {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `exchange` exists again (declared passively on a fresh channel each try).
async fn wait_exchange(exchange: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    loop {
        let (_conn, ch) = amqp_channel().await;
        let kind = lapin::ExchangeKind::Topic;
        if ch
            .exchange_declare(exchange.into(), kind, passive, FieldTable::default())
            .await
            .is_ok()
        {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{exchange} not re-declared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_deleted_under_load_is_declared_again_and_nothing_is_lost() {
    let _shared = SHARED_BROKERS.read().await;
    let exchange = unique("x");
    let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
    let bridge = Bridge::start(&rabbit_toml("rabbit_exchange_gone", RABBIT_URL, &exchange)).await;
    let stop = CancellationToken::new();
    let load = tokio::spawn(load_until(
        bridge.url("/hook"),
        KEY,
        "task_updated",
        10,
        3,
        100_000,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_conn, ch) = amqp_channel().await;
    ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete exchange");
    let deleted = Instant::now();
    let back = wait_exchange(&exchange, Duration::from_secs(20)).await;
    // Deleting the exchange removed the queue's binding too; the operator binds it again.
    queue.add_binding(&exchange, "#").await;
    let (mut sent, _) = resend_until_ok(&bridge, &fresh(5), Duration::from_secs(10)).await;
    let took = deleted.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    sent.extend(load.await.expect("load"));
    let metrics = metrics_text(&bridge).await;
    // Usually `channel_closed`; under load lapin sometimes drops the whole connection.
    let rebuilt = restarts(&metrics, "rabbit_exchange_gone", "channel_closed")
        + restarts(&metrics, "rabbit_exchange_gone", "connection_lost");
    assert!(rebuilt >= 1.0, "{metrics}");
    let got: Vec<Vec<u8>> = queue.drain().await.into_iter().map(|m| m.body).collect();
    let t = conservation("exchange deleted under load", &sent, &got);
    assert!(
        t.ok > 0 && t.ok < t.batches,
        "the fault hit the load: {t:?}"
    );
    eprintln!("exchange declared again {back:?} after its deletion");
    heal_row(
        "exchange deleted under load (rebound by the test)",
        took,
        &t,
    );
}

/// `rabbitmqctl` that may fail (e.g. deleting a user that does not exist).
fn rabbitmqctl_lenient(args: &[&str]) {
    let _ = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output();
}

/// Closes the connections of `user` only, so other tests keep theirs.
fn close_connections_of(user: &str) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "user", "pid"])
        .output()
        .expect("rabbitmqctl runs");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((u, pid)) = line.split_once('\t') {
            if u == user {
                rabbitmqctl(&["close_connection", pid, "permissions changed"]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_permission_revoked_then_restored_ends_in_200s() {
    let _shared = SHARED_BROKERS.read().await;
    let user = unique("c360heal");
    rabbitmqctl(&["add_user", &user, "pw"]);
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);
    let exchange = unique("x");
    let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
    let url = format!("amqp://{user}:pw@127.0.0.1:5672/%2f");
    let bridge = Bridge::start(&rabbit_toml("rabbit", &url, &exchange)).await;
    let (mut sent, _) = resend_until_ok(&bridge, &fresh(3), Duration::from_secs(1)).await;
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", "", ".*"]);
    close_connections_of(&user);
    let hit = fresh(5);
    for _ in 0..3 {
        sent.push(refused_in_time(&bridge, &hit, Duration::from_secs(3)).await);
    }
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);
    let (again, took) = resend_until_ok(&bridge, &hit, Duration::from_secs(20)).await;
    sent.extend(again);
    drop(bridge);
    rabbitmqctl_lenient(&["delete_user", &user]);
    let got: Vec<Vec<u8>> = queue.drain().await.into_iter().map(|m| m.body).collect();
    let t = conservation("write permission revoked, then restored", &sent, &got);
    heal_row("write permission revoked, then restored", took, &t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_exchange_the_bridge_does_not_own_keeps_it_not_ready_until_it_exists() {
    let _shared = SHARED_BROKERS.read().await;
    let exchange = unique("x");
    let toml = rabbit_toml("rabbit_not_owned", RABBIT_URL, &exchange)
        .replace("[[routes]]", "declare_exchange = false\n[[routes]]");
    let bridge = Bridge::start_unready(&toml).await;
    // The first connection attempt fails on the passive declare (NOT_FOUND).
    wait_not_ready_detail(&bridge, "NOT_FOUND").await;
    let r = reqwest::get(bridge.url("/readyz")).await.expect("readyz");
    assert_eq!(r.status(), 503);
    let detail = r.text().await.expect("body");
    assert!(detail.contains("NOT_FOUND"), "{detail}");
    let events = fresh(2);
    let mut sent = vec![refused_in_time(&bridge, &events, Duration::from_secs(3)).await];
    // The operator creates the exchange (and a queue): the bridge finds it without a restart.
    let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
    let created = Instant::now();
    bridge.wait_ready(Duration::from_secs(10)).await;
    let (again, _) = resend_until_ok(&bridge, &events, Duration::from_secs(5)).await;
    let took = created.elapsed();
    sent.extend(again);
    let got: Vec<Vec<u8>> = queue.drain().await.into_iter().map(|m| m.body).collect();
    let t = conservation("exchange not owned, missing, then created", &sent, &got);
    heal_row("exchange not owned, missing, then created", took, &t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_of_another_type_keeps_it_not_ready_until_it_is_fixed() {
    let _shared = SHARED_BROKERS.read().await;
    let exchange = unique("x");
    let (_conn, ch) = amqp_channel().await;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let direct = lapin::ExchangeKind::Direct;
    ch.exchange_declare(
        exchange.as_str().into(),
        direct,
        durable,
        FieldTable::default(),
    )
    .await
    .expect("a direct exchange");
    let bridge =
        Bridge::start_unready(&rabbit_toml("rabbit_wrong_type", RABBIT_URL, &exchange)).await;
    // The bridge's declare (topic) is refused: PRECONDITION_FAILED, inequivalent type.
    wait_not_ready_detail(&bridge, "PRECONDITION_FAILED").await;
    let events = fresh(2);
    let mut sent = vec![refused_in_time(&bridge, &events, Duration::from_secs(3)).await];
    ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete exchange");
    let fixed = Instant::now();
    // The bridge declares its own exchange on the next attempt; the operator binds a queue.
    wait_exchange(&exchange, Duration::from_secs(10)).await;
    let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
    bridge.wait_ready(Duration::from_secs(10)).await;
    let (again, _) = resend_until_ok(&bridge, &events, Duration::from_secs(5)).await;
    let took = fixed.elapsed();
    sent.extend(again);
    let got: Vec<Vec<u8>> = queue.drain().await.into_iter().map(|m| m.body).collect();
    let t = conservation("exchange of another type, then deleted", &sent, &got);
    heal_row(
        "exchange of another type (PRECONDITION_FAILED), then deleted",
        took,
        &t,
    );
}
