//! RabbitMQ over TLS against the suite's RabbitMQ's own TLS listener (5671, set up by
//! scripts/brokers.sh): a verified CA, a refused CA healed by fixing the file, a refused login,
//! and EXTERNAL login with a client certificate; `check --connect` says the same.

use crate::facing::Pki;
use crate::harness::*;
use lapin::types::FieldTable;
use std::time::{Duration, Instant};

const KEY: &str = "secure-rabbit-key";
const TLS_PORT: &str = "127.0.0.1:5671";

/// The directory scripts/brokers.sh wrote the broker's CA and the client certificate to.
fn broker_pki(file: &str) -> String {
    require(TLS_PORT, "RabbitMQ's TLS listener");
    let dir = std::env::var("C360_RABBITMQ_TLS")
        .unwrap_or_else(|_| "/tmp/c360-bridge-brokers/rabbitmq-tls".into());
    let path = format!("{dir}/{file}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: scripts/brokers.sh start makes it"
    );
    path
}

/// A bridge config publishing everything to `exchange` over `url` with more sink keys `extra`.
fn config(url: &str, exchange: &str, extra: &str) -> String {
    format!(
        "[server]\nack_timeout = \"4s\"\n{}[sinks.rabbit]\ntype = \"rabbitmq\"\nurl = \"{url}\"\nexchange = \"{exchange}\"\n{extra}{}",
        webhook_toml("wh", KEY),
        route_all_toml(&["rabbit"], "")
    )
}

/// Posts one event every 250 ms until `within` passes; every answer must be 503.
async fn only_503(bridge: &Bridge, within: Duration) {
    let until = Instant::now() + within;
    while Instant::now() < until {
        let one = batch(&[event("task_created", "never")]);
        let r = post(&bridge.url("/hook"), &one, Some(KEY)).await;
        assert_eq!(r.status, 503, "{:?}", r.json);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `/readyz`: 503, and its text.
async fn not_ready_saying(bridge: &Bridge) -> String {
    let ready = reqwest::get(bridge.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    ready.text().await.unwrap()
}

/// Posts five events and expects 200, then finds exactly them in `queue`.
async fn delivers(bridge: &Bridge, queue: &Queue, tag: &str) {
    let events: Vec<String> = (0..5)
        .map(|i| event("task_created", &format!("{tag}-{i}")))
        .collect();
    let r = post(&bridge.url("/hook"), &batch(&events), Some(KEY)).await;
    assert_eq!(r.status, 200, "{tag}: {:?}", r.json);
    // Events without a key are spread over the channels: compare them as a set.
    let mut got: Vec<Vec<u8>> = queue.drain().await.into_iter().map(|m| m.body).collect();
    let mut sent: Vec<Vec<u8>> = events.iter().map(|e| e.clone().into_bytes()).collect();
    got.sort();
    sent.sort();
    assert!(got == sent, "{tag}: every event once, byte for byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_over_tls_delivers_and_an_untrusted_ca_never_gets_200_until_the_file_is_fixed() {
    let broker_ca = std::fs::read_to_string(broker_pki("ca.pem")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, Pki::new("some other CA").ca_pem()).unwrap();
    let exchange = unique("tls-x");
    let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
    let toml = config(
        "amqps://guest:guest@localhost:5671/%2f",
        &exchange,
        &format!("[sinks.rabbit.tls]\nca_file = \"{}\"\n", ca_file.display()),
    );

    let bridge = Bridge::start_unready(&toml).await;
    only_503(&bridge, Duration::from_secs(2)).await;
    let detail = not_ready_saying(&bridge).await;
    assert!(
        detail.contains("rabbit") && detail.contains("tls: "),
        "/readyz names the sink and the TLS failure: {detail}"
    );
    assert!(queue.drain().await.is_empty(), "nothing was published");

    // The right CA written to the same file: the next connect reads it, no restart.
    std::fs::write(&ca_file, &broker_ca).unwrap();
    bridge.wait_ready(Duration::from_secs(20)).await;
    delivers(&bridge, &queue, "tls").await;
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_refuses_a_wrong_password_over_tls_and_the_password_is_shown_nowhere() {
    let ca = broker_pki("ca.pem");
    let exchange = unique("tls-login");
    let password = "not-the-guest-password-7d1e";
    let toml = config(
        &format!("amqps://guest:{password}@localhost:5671/%2f"),
        &exchange,
        &format!("[sinks.rabbit.tls]\nca_file = \"{ca}\"\n"),
    );
    let bridge = Bridge::start_unready(&toml).await;
    only_503(&bridge, Duration::from_secs(2)).await;
    let detail = not_ready_saying(&bridge).await;
    assert!(
        detail.contains("authentication failed: "),
        "/readyz names the refused login: {detail}"
    );
    assert!(!detail.contains(password), "{detail}");
    bridge.shutdown().await;

    let (_d, path) = write_config(&toml);
    let (code, out, err) = run(&["check", "--config", &path, "--connect"], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("rabbit: authentication failed: "), "{out}");
    assert!(
        !out.contains(password) && !err.contains(password),
        "{out}{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_external_login_with_a_client_certificate_delivers() {
    let (ca, cert, key) = (
        broker_pki("ca.pem"),
        broker_pki("client.pem"),
        broker_pki("client.key"),
    );
    let exchange = unique("tls-external");
    let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
    let tls = format!(
        "auth_mechanism = \"external\"\n[sinks.rabbit.tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n"
    );
    // No user or password in the URL: the broker logs in the certificate's subject.
    let toml = config("amqps://localhost:5671/%2f", &exchange, &tls);
    let bridge = Bridge::start(&toml).await;
    delivers(&bridge, &queue, "external").await;
    bridge.shutdown().await;

    let (_d, path) = write_config(&toml);
    let (code, out, err) = run(&["check", "--config", &path, "--connect"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rabbit: ok (mutual TLS, EXTERNAL)"), "{out}");
    assert!(
        queue.drain().await.is_empty(),
        "check --connect published nothing"
    );

    // A client certificate from a CA the broker does not trust: the handshake fails.
    let stranger = Pki::new("a CA the broker does not know").leaf();
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&c, &stranger.cert_pem).unwrap();
    std::fs::write(&k, &stranger.key_pem).unwrap();
    let untrusted = toml
        .replace(&cert, &c.display().to_string())
        .replace(&key, &k.display().to_string());
    let (_d, path) = write_config(&untrusted);
    let (code, out, err) = run(&["check", "--config", &path, "--connect"], None);
    assert_eq!(code, 1, "{out}{err}");
    // With TLS 1.3 the broker refuses the client certificate after the client's side of the
    // handshake is done: the refusal reads as an alert (`tls: …`) or, when the broker closes
    // first, as a reset connection.
    let line = out
        .lines()
        .find(|l| l.starts_with("rabbit: "))
        .unwrap_or_default();
    assert!(!line.starts_with("rabbit: ok"), "{out}");
    assert!(err.contains("could not connect to rabbit"), "{err}");
}
