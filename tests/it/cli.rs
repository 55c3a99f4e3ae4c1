//! The built binary as an operator runs it: check, sign, send, dev, serve with env overrides
//! and SIGTERM, /readyz and /metrics over HTTP.

use crate::harness::*;
use crate::tansu::Tansu;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const GOOD: &str = r#"
[[webhooks]]
name = "main"
path = "/hook"
keys = ["k"]
[sinks.kafka]
type = "kafka"
bootstrap_servers = "127.0.0.1:9092"
[sinks.rabbit]
type = "rabbitmq"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
[[routes]]
match = "reportjob_*"
sinks = ["rabbit"]
[[routes]]
match = "*"
sinks = ["kafka", "rabbit"]
topic = "c360.{webhook}.{event_class}"
key = "/payload/new/id"
"#;

#[test]
fn check_prints_the_routing_table() {
    let (_d, path) = write_config(GOOD);
    let (code, out, err) = run(&["check", "--config", &path], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("reportjob_updated        rabbit     reportjob_updated"),
        "{out}"
    );
    assert!(
        out.contains("task_created             kafka      c360.main.task_created"),
        "{out}"
    );
    assert!(out.contains("/payload/new/id"), "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("assetitem_created"))
            .count(),
        2,
        "fan-out lists both sinks"
    );
}

#[test]
fn check_names_the_file_and_key_of_each_mistake() {
    let cases = [
        (
            GOOD.replace("keys = [\"k\"]", "keys = [\"k\"]\nkeyz = 1"),
            "keyz",
        ),
        (
            GOOD.replace("sinks = [\"rabbit\"]", "sinks = [\"rabit\"]"),
            "routes[0].sinks",
        ),
        (
            GOOD.replace("c360.{webhook}", "c360.{hook}"),
            "routes[1].topic",
        ),
        (
            format!("[server]\nack_timeout = \"soon\"\n{GOOD}"),
            "ack_timeout",
        ),
        (
            format!("[server]\nkeys_poll_interval = \"10ms\"\n{GOOD}"),
            "server.keys_poll_interval",
        ),
        (
            GOOD.replace("match = \"*\"", "match = \"task_*\""),
            "routes",
        ),
        (
            GOOD.replace("key = \"/payload/new/id\"", "key = \"payload.id\""),
            "routes[1].key",
        ),
        (
            GOOD.replace(
                "type = \"rabbitmq\"",
                "type = \"rabbitmq\"\nexchange_type = \"weird\"",
            ),
            "sinks.rabbit",
        ),
        (
            GOOD.replace("url = \"amqp://", "url = \"amqp//"),
            "sinks.rabbit",
        ),
        (
            GOOD.replace(
                "bootstrap_servers = \"127.0.0.1:9092\"",
                "bootstrap_servers = \"127.0.0.1:9092\"\n[sinks.kafka.librdkafka]\n\"linger.msec\" = \"5\"",
            ),
            "sinks.kafka",
        ),
        (
            GOOD.replace(
                "bootstrap_servers = \"127.0.0.1:9092\"",
                "bootstrap_servers = \"127.0.0.1:9092\"\n[sinks.kafka.librdkafka]\n\"acks\" = \"1\"",
            ),
            "sinks.kafka",
        ),
        (
            GOOD.replace("path = \"/hook\"", "path = \"/hook/{id}\""),
            "webhooks[0].path",
        ),
        (
            GOOD.replace("keys = [\"k\"]", "keys = [\"k\", \"test-webhook\"]"),
            "webhooks[0].keys",
        ),
        (
            format!("{GOOD}\n[ledger]\nmatch = \"bytes\"\n"),
            "ledger.match",
        ),
    ];
    for (text, key) in cases {
        let (_d, path) = write_config(&text);
        let (code, _out, err) = run(&["check", "--config", &path], None);
        assert_eq!(code, 1, "{key}: {err}");
        assert!(err.contains(&path), "names the file: {err}");
        assert!(err.contains(key), "names {key}: {err}");
    }
    let (code, _, err) = run(&["check", "--config", "/nonexistent.toml"], None);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent.toml"), "{err}");
}

#[test]
fn sign_matches_rfc4231_case_2() {
    let (code, out, _) = run(
        &["sign", "--key", "Jefe"],
        Some(b"what do ya want for nothing?"),
    );
    assert_eq!(
        (code, out.trim()),
        (0, "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_posts_a_signed_sample_of_every_class() {
    let _shared = SHARED_BROKERS.read().await;
    let exchange = unique("x");
    let queue = Queue::bind(&exchange, &["#"], lapin::types::FieldTable::default()).await;
    let toml = webhook_toml("w", "sk")
        + &rabbit_sink_toml("rabbit", &exchange)
        + &route_all_toml(&["rabbit"], "");
    let bridge = Bridge::start(&toml).await;
    let url = bridge.url("/hook");
    let (code, out, err) =
        tokio::task::spawn_blocking(move || run(&["send", "--url", &url, "--key", "sk"], None))
            .await
            .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("200\n{\"accepted\":11}"), "{out}");
    let mut keys: Vec<String> = queue
        .drain()
        .await
        .into_iter()
        .map(|m| m.routing_key)
        .collect();
    keys.sort();
    assert_eq!(keys, c360_bridge::delivery::routing::KNOWN_EVENT_CLASSES);
    let url = bridge.url("/hook");
    let (code, out, _) =
        tokio::task::spawn_blocking(move || run(&["send", "--url", &url, "--key", "bad"], None))
            .await
            .unwrap();
    assert_eq!(code, 1);
    assert!(out.starts_with("401"), "{out}");
}

/// Reads the child's stdout until the banner printed everything we need.
fn banner_value(lines: &[String], label: &str) -> String {
    lines
        .iter()
        .find_map(|l| {
            l.strip_prefix(label)
                .map(|v| v.trim_start_matches([' ', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {label} in {lines:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_a_demo_that_a_real_consumer_reads() {
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dev starts");
    let stdout = child.stdout.take().expect("stdout");
    let lines: Vec<String> = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.starts_with("Health:"))
            .collect()
    })
    .await
    .unwrap();
    let (bootstrap, url, key) = (
        banner_value(&lines, "Kafka bootstrap"),
        banner_value(&lines, "Webhook URL"),
        banner_value(&lines, "Demo key"),
    );
    assert!(
        lines.iter().any(|l| l.contains("keeps NOTHING")),
        "{lines:?}"
    );
    wait_ready_at(&format!("http://127.0.0.1:{port}"), Duration::from_secs(20)).await;
    let (code, out, err) =
        tokio::task::spawn_blocking(move || run(&["send", "--url", &url, "--key", &key], None))
            .await
            .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let got = consume(&bootstrap, "catalog360.task_updated", 3).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key.as_deref(), Some(&b"task-11"[..]));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().expect("dev ends");
    assert!(status.success(), "dev exits 0 on Ctrl-C: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_from_env_stops_cleanly_on_sigterm_and_every_200_is_in_the_topic() {
    let _shared = SHARED_BROKERS.read().await;
    let topic = unique("term");
    create_topics(&kafka(), std::slice::from_ref(&topic), 3).await;
    let secret = "very-secret-key-0123456789";
    let toml = "[[webhooks]]\nname = \"w\"\npath = \"/hook\"\nkeys_env = \"TEST_C360_KEYS\"\n"
        .to_owned()
        + &kafka_sink_toml("kafka", &kafka())
        + &route_all_toml(&["kafka"], &format!("topic = \"{topic}\"\n"));
    let (_d, path) = write_config(&toml);
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--log-format", "json"])
        .env("C360_BRIDGE_CONFIG", &path)
        .env("C360_BRIDGE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("TEST_C360_KEYS", format!("old-key, {secret}"))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let logs = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let base = format!("http://127.0.0.1:{port}");
    wait_ready_at(&base, Duration::from_secs(20)).await;
    let unsigned = post(&format!("{base}/hook"), b"{\"events\":[]}", Some("wrong")).await;
    assert_eq!(unsigned.status, 401);
    let stop = CancellationToken::new();
    let load = tokio::spawn(load_until(
        format!("{base}/hook"),
        secret,
        "task_created",
        20,
        3,
        100_000,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .expect("serve ends");
    stop.cancel();
    let sent = load.await.expect("load");
    assert_eq!(status.code(), Some(0), "exit 0 after SIGTERM");
    let got: Vec<Vec<u8>> = consume(&kafka(), &topic, 3)
        .await
        .into_iter()
        .map(|r| r.payload)
        .collect();
    let t = conservation("8 SIGTERM during load", &sent, &got);
    assert!(t.ok > 0, "{t:?}");
    let logs = logs.join().unwrap();
    assert!(
        logs.contains("\"reason\":\"signature_mismatch\""),
        "rejections are logged with their reason"
    );
    assert!(logs.contains("stopped"), "clean stop logged");
    for needle in [secret, "old-key"] {
        assert!(!logs.contains(needle), "a key appears in the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_when_the_broker_goes_away_and_metrics_count_what_happened() {
    let mut tansu = Tansu::start_sqlite().await;
    create_topics(&tansu.addr, &["m".into()], 1).await;
    let toml = webhook_toml("metrics-wh", "k")
        + &kafka_sink_toml("kafka", &tansu.addr)
        + &route_all_toml(&["kafka"], "topic = \"m\"\n");
    let bridge = Bridge::start(&toml).await;
    assert_eq!(
        post(
            &bridge.url("/hook"),
            &batch(&[event("task_created", "1"), event("task_created", "2")]),
            Some("k")
        )
        .await
        .status,
        200
    );
    assert_eq!(post(&bridge.url("/hook"), b"{}", None).await.status, 401);
    let text = reqwest::get(bridge.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "c360_requests_total{webhook=\"metrics-wh\",status=\"200\",reason=\"accepted\"} 1",
        "c360_requests_total{webhook=\"metrics-wh\",status=\"401\",reason=\"signature_missing\"} 1",
        "c360_signature_failures_total{webhook=\"metrics-wh\",reason=\"signature_missing\"} 1",
        "c360_events_published_total{sink=\"kafka\",destination=\"m\"} 2",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert!(text.contains("c360_publish_seconds_bucket"), "{text}");
    assert!(text.contains("c360_sink_ready{sink=\"kafka\"} 1"), "{text}");
    tansu.kill9();
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let r = reply(reqwest::Client::new().get(bridge.url("/readyz"))).await;
        if r.status == 503 {
            assert_eq!(r.json["sinks"]["kafka"]["ready"], false);
            break;
        }
        assert!(
            Instant::now() < until,
            "readyz still 200 with the broker gone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        reqwest::get(bridge.url("/healthz")).await.unwrap().status(),
        200,
        "alive though not ready"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listen_keeps_the_operational_endpoints_off_the_public_port() {
    let _shared = SHARED_BROKERS.read().await;
    let (public, admin) = (free_port(), free_port());
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:{public}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n{}{}{}",
        webhook_toml("w", "k"),
        kafka_sink_toml("kafka", &kafka()),
        route_all_toml(&["kafka"], "")
    );
    let (_d, path) = write_config(&toml);
    let mut child = Command::new(BIN)
        .args(["serve", "--config", &path])
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    wait_ready_at(
        &format!("http://127.0.0.1:{admin}"),
        Duration::from_secs(20),
    )
    .await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("c360_sink_ready{sink=\"kafka\"} 1")
    );
    for p in ["/metrics", "/readyz", "/healthz"] {
        let r = reply(reqwest::Client::new().get(format!("http://127.0.0.1:{public}{p}"))).await;
        assert_eq!(
            (r.status, r.json["error"].as_str()),
            (404, Some("not_found")),
            "{p} on the public port"
        );
    }
    assert_eq!(
        reqwest::Client::new()
            .head(format!("http://127.0.0.1:{public}/hook"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_lists_the_missing_topics_and_fails_on_an_unreachable_cluster() {
    let prefix = unique("cc");
    create_topics(&kafka(), &[format!("{prefix}.task_created")], 1).await;
    let toml = format!(
        "{}{}{}",
        webhook_toml("wh", "k"),
        kafka_sink_toml("kafka", &kafka()),
        route_all_toml(
            &["kafka"],
            &format!("topic = \"{prefix}.{{event_class}}\"\n")
        )
    );
    let (_d, path) = write_config(&toml);
    let (code, out, err) = run(&["check", "--config", &path, "--connect"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("kafka: ok"), "{out}");
    assert!(
        out.contains(&format!("  missing topic: {prefix}.task_updated")),
        "{out}"
    );
    assert!(
        !out.contains(&format!("missing topic: {prefix}.task_created")),
        "{out}"
    );
    let missing = out.lines().filter(|l| l.contains("missing topic:")).count();
    assert_eq!(missing, 10, "every known class but task_created: {out}");

    let (_d, path) = write_config(&toml.replace(&kafka(), "127.0.0.1:1"));
    let (code, out, err) = run(&["check", "--config", &path, "--connect"], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("kafka: no Kafka broker answered"), "{out}");
    assert!(err.contains("could not connect to kafka"), "{err}");
}

#[test]
fn check_resolves_secret_references_and_names_an_unresolved_one_without_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("rabbit-password");
    std::fs::write(&secret, "very-secret-value\n").unwrap();
    let with_file = GOOD.replace(
        "amqp://guest:guest@",
        &format!("amqp://guest:${{file:{}}}@", secret.display()),
    );
    assert_ne!(
        with_file, GOOD,
        "the fixture has a RabbitMQ URL to put a reference in"
    );
    let (_d, path) = write_config(&with_file);
    let (code, out, err) = run(&["check", "--config", &path], None);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("very-secret-value") && !err.contains("very-secret-value"));

    let unset = GOOD.replace(
        "amqp://guest:guest@",
        "amqp://guest:${env:C360_TEST_UNSET_SECRET}@",
    );
    let (_d, path) = write_config(&unset);
    let (code, _out, err) = run(&["check", "--config", &path], None);
    assert_eq!(code, 1);
    assert!(err.contains("sinks.rabbit.url"), "names the key: {err}");
    assert!(
        err.contains("${env:C360_TEST_UNSET_SECRET}: the environment variable is not set"),
        "names the reference: {err}"
    );
    let missing = GOOD.replace(
        "amqp://guest:guest@",
        "amqp://guest:${file:/nonexistent/c360-pw}@",
    );
    let (_d, path) = write_config(&missing);
    let (code, _out, err) = run(&["check", "--config", &path], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("${file:/nonexistent/c360-pw}: cannot read the file"),
        "{err}"
    );
}
