//! What managed brokers need from the Kafka client built into the bridge: every compression
//! codec delivers to a real broker; TLS with a verified CA and host name, and mutual TLS, to
//! tansu behind a TLS front (stunnel4), as a managed broker's TLS listener.

use crate::facing::{Leaf, Pki};
use crate::harness::*;
use crate::tansu::Tansu;
use std::time::{Duration, Instant};

const KEY: &str = "secure-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_codec_delivers_to_tansu() {
    let _shared = SHARED_BROKERS.read().await;
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = unique(&format!("codec-{codec}"));
        create_topics(&kafka(), std::slice::from_ref(&topic), 1).await;
        let sink = format!(
            "[sinks.kafka]\ntype = \"kafka\"\nbootstrap_servers = \"{}\"\n[sinks.kafka.librdkafka]\n\"compression.type\" = \"{codec}\"\n",
            kafka()
        );
        let toml = format!(
            "{}{sink}{}",
            webhook_toml("wh", KEY),
            route_all_toml(&["kafka"], &format!("topic = \"{topic}\"\n"))
        );
        let bridge = Bridge::start(&toml).await;
        let events: Vec<String> = (0..20)
            .map(|i| event("task_created", &format!("{codec}-{i}")))
            .collect();
        let r = post(&bridge.url("/hook"), &batch(&events), Some(KEY)).await;
        assert_eq!(r.status, 200, "{codec}: {:?}", r.json);
        let got = consume(&kafka(), &topic, 1).await;
        let bodies: Vec<&[u8]> = got.iter().map(|r| r.payload.as_slice()).collect();
        let sent: Vec<&[u8]> = events.iter().map(|e| e.as_bytes()).collect();
        assert_eq!(
            bodies, sent,
            "{codec}: every event once, in order, byte for byte"
        );
        bridge.shutdown().await;
    }
}

/// A TLS front (Debian's stunnel4) before a plaintext port: the test's stand-in for a managed
/// broker's TLS listener. With a client CA it requires a client certificate (`verify = 2`).
pub struct Stunnel {
    pub port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Stunnel {
    /// Serves `leaf` on `port` of 127.0.0.1 and forwards to `target`.
    async fn start_on(port: u16, target: &str, leaf: &Leaf, client_ca: Option<&str>) -> Stunnel {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path.display().to_string()
        };
        let cert = file("front.pem", &leaf.cert_pem);
        let key = file("front.key", &leaf.key_pem);
        let verify = client_ca.map_or_else(String::new, |ca| {
            format!("CAfile = {}\nverify = 2\n", file("clients.pem", ca))
        });
        let conf = file(
            "stunnel.conf",
            &format!(
                "foreground = yes\npid =\n[front]\naccept = 127.0.0.1:{port}\nconnect = {target}\ncert = {cert}\nkey = {key}\n{verify}"
            ),
        );
        let child = std::process::Command::new(stunnel_bin())
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("stunnel4 must be installed (scripts/test.sh installs it)");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "stunnel did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Stunnel { port, dir, child }
    }

    /// The same front on the same port, now serving `leaf`.
    pub async fn restart_with(mut self, target: &str, leaf: &Leaf) -> Stunnel {
        let port = self.port;
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(
                Instant::now() < until,
                "old stunnel still listens on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self::start_on(port, target, leaf, None).await
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stunnel_bin() -> &'static str {
    if std::path::Path::new("/usr/bin/stunnel4").exists() {
        "/usr/bin/stunnel4"
    } else {
        "stunnel"
    }
}

/// Writes `text` into `dir` as `name`; the path.
fn pem(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write pem");
    path.display().to_string()
}

/// A bridge config whose Kafka sink reaches `bootstrap` over TLS with `settings` (librdkafka
/// lines), creating the topic `topic` it publishes everything to.
fn tls_config(bootstrap: &str, topic: &str, settings: &str) -> String {
    format!(
        "[server]\nack_timeout = \"4s\"\n{}[sinks.kafka]\ntype = \"kafka\"\nbootstrap_servers = \"{bootstrap}\"\n[sinks.kafka.librdkafka]\n\"security.protocol\" = \"ssl\"\n\"broker.address.family\" = \"v4\"\n{settings}[sinks.kafka.create_topics]\npartitions = 1\n{}",
        webhook_toml("wh", KEY),
        route_all_toml(&["kafka"], &format!("topic = \"{topic}\"\n"))
    )
}

/// Posts one event every 250 ms until `within` passes; every answer must be a non-200.
async fn never_200(bridge: &Bridge, within: Duration) -> Vec<u16> {
    let until = Instant::now() + within;
    let mut seen = Vec::new();
    while Instant::now() < until {
        let r = post(
            &bridge.url("/hook"),
            &batch(&[event("task_created", "never")]),
            Some(KEY),
        )
        .await;
        assert_ne!(
            r.status, 200,
            "a batch got 200 through a TLS front it must not trust"
        );
        seen.push(r.status);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls_delivers_refuses_a_wrong_ca_or_name_and_heals_when_the_front_is_fixed() {
    let front_port = free_port();
    let tansu = Tansu::start_advertising(&format!("localhost:{front_port}")).await;
    let trusted = Pki::new("trusted kafka CA");
    let other = Pki::new("some other CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pem(&dir, "ca.pem", &trusted.ca_pem());
    let ca_setting = format!("\"ssl.ca.location\" = \"{ca}\"\n");
    let topic = unique("tls");
    let bootstrap = format!("localhost:{front_port}");

    // A front whose certificate the bridge's CA did not sign: never ready, never 200.
    let front = Stunnel::start_on(front_port, &tansu.addr, &other.leaf(), None).await;
    let bridge = Bridge::start_unready(&tls_config(&bootstrap, &topic, &ca_setting)).await;
    let answers = never_200(&bridge, Duration::from_secs(3)).await;
    assert!(answers.iter().all(|&s| s == 503), "{answers:?}");
    let ready = reqwest::get(bridge.url("/readyz")).await.unwrap();
    assert_eq!(
        ready.status(),
        503,
        "not ready behind an untrusted certificate"
    );
    let detail = ready.text().await.unwrap();
    assert!(
        detail.contains("tls: ")
            && (detail.contains("SSL handshake failed")
                || detail.contains("certificate verify failed")),
        "/readyz names the TLS failure: {detail}"
    );

    // The front restarted with a certificate the CA signed: 200 without restarting the bridge.
    let _front = front.restart_with(&tansu.addr, &trusted.leaf()).await;
    bridge.wait_ready(Duration::from_secs(20)).await;
    let events: Vec<String> = (0..5)
        .map(|i| event("task_created", &format!("tls-{i}")))
        .collect();
    let r = post(&bridge.url("/hook"), &batch(&events), Some(KEY)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let consumer = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", ca.as_str()),
        ("broker.address.family", "v4"),
    ];
    let got = consume_with(&bootstrap, &topic, 1, &consumer).await;
    let bodies: Vec<&[u8]> = got.iter().map(|r| r.payload.as_slice()).collect();
    let sent: Vec<&[u8]> = events.iter().map(|e| e.as_bytes()).collect();
    assert_eq!(bodies, sent);

    // The right CA, but the certificate names localhost, not 127.0.0.1: never ready, never 200.
    let by_address = format!("127.0.0.1:{front_port}");
    let mismatch = Bridge::start_unready(&tls_config(&by_address, &topic, &ca_setting)).await;
    let answers = never_200(&mismatch, Duration::from_secs(3)).await;
    assert!(answers.iter().all(|&s| s == 503), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_mutual_tls_needs_the_client_certificate() {
    let front_port = free_port();
    let tansu = Tansu::start_advertising(&format!("localhost:{front_port}")).await;
    let servers = Pki::new("kafka server CA");
    let clients = Pki::new("kafka client CA");
    let _front = Stunnel::start_on(
        front_port,
        &tansu.addr,
        &servers.leaf(),
        Some(&clients.ca_pem()),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pem(&dir, "ca.pem", &servers.ca_pem());
    let client = clients.leaf();
    let cert = pem(&dir, "client.pem", &client.cert_pem);
    let key = pem(&dir, "client.key", &client.key_pem);
    let bootstrap = format!("localhost:{front_port}");
    let topic = unique("mtls");
    let ca_setting = format!("\"ssl.ca.location\" = \"{ca}\"\n");

    let anonymous = Bridge::start_unready(&tls_config(&bootstrap, &topic, &ca_setting)).await;
    let answers = never_200(&anonymous, Duration::from_secs(3)).await;
    assert!(answers.iter().all(|&s| s == 503), "{answers:?}");

    let with_cert = format!(
        "{ca_setting}\"ssl.certificate.location\" = \"{cert}\"\n\"ssl.key.location\" = \"{key}\"\n"
    );
    let bridge = Bridge::start(&tls_config(&bootstrap, &topic, &with_cert)).await;
    let consumer = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", ca.as_str()),
        ("ssl.certificate.location", cert.as_str()),
        ("ssl.key.location", key.as_str()),
        ("broker.address.family", "v4"),
    ];
    delivers(&bridge, "mtls", &bootstrap, &topic, &consumer).await;
}

/// Posts one event `id` and expects 200, then a consumer with `settings` reads it on `topic`.
async fn delivers(
    bridge: &Bridge,
    id: &str,
    bootstrap: &str,
    topic: &str,
    settings: &[(&str, &str)],
) {
    let e = event("task_created", id);
    let r = post(
        &bridge.url("/hook"),
        &batch(std::slice::from_ref(&e)),
        Some(KEY),
    )
    .await;
    assert_eq!(r.status, 200, "{id}: {:?}", r.json);
    let got = consume_with(bootstrap, topic, 1, settings).await;
    assert!(
        got.iter().any(|r| r.payload == e.as_bytes()),
        "{id}: the event is on the topic"
    );
}

/// Runs the tansu binary's `ARGS` (a `user create` or `topic create`) against `addr`.
fn tansu_cli(args: &[&str]) {
    let bin = std::env::var("C360_TANSU_BIN").unwrap_or_else(|_| "tansu".into());
    let out = std::process::Command::new(&bin)
        .args(args)
        .output()
        .expect("tansu cli runs");
    assert!(
        out.status.success(),
        "tansu {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge config whose Kafka sink logs in to `addr` with SCRAM `mechanism`.
fn scram_config(addr: &str, topic: &str, mechanism: &str, user: &str, password: &str) -> String {
    format!(
        "[server]\nack_timeout = \"4s\"\n{}[sinks.kafka]\ntype = \"kafka\"\nbootstrap_servers = \"{addr}\"\n[sinks.kafka.librdkafka]\n\"security.protocol\" = \"sasl_plaintext\"\n\"sasl.mechanisms\" = \"{mechanism}\"\n\"sasl.username\" = \"{user}\"\n\"sasl.password\" = \"{password}\"\n{}",
        webhook_toml("wh", KEY),
        route_all_toml(&["kafka"], &format!("topic = \"{topic}\"\n"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_and_512_log_in_and_a_wrong_password_never_gets_200_nor_reaches_the_logs() {
    // Users are created before authentication is switched on; sqlite keeps them across the
    // restart.
    let mut tansu = Tansu::start_sqlite().await;
    let broker = format!("tcp://{}", tansu.addr);
    let topic = unique("scram");
    tansu_cli(&[
        "topic",
        "create",
        &topic,
        "--broker",
        &broker,
        "--partitions",
        "1",
    ]);
    tansu_cli(&[
        "user",
        "create",
        "--broker",
        &broker,
        "--mechanism",
        "scram256",
        "alice",
        "alice-secret-256",
    ]);
    tansu_cli(&[
        "user",
        "create",
        "--broker",
        &broker,
        "--mechanism",
        "scram512",
        "bob",
        "bob-secret-512",
    ]);
    tansu.restart_with(&["--authentication"]).await;

    let dir = tempfile::tempdir().expect("tempdir");
    for (mechanism, user, password) in [
        ("SCRAM-SHA-256", "alice", "alice-secret-256"),
        ("SCRAM-SHA-512", "bob", "bob-secret-512"),
    ] {
        // The password from a file, as a mounted secret: `${file:PATH}` (one newline dropped).
        let secret = pem(&dir, user, &format!("{password}\n"));
        let reference = format!("${{file:{secret}}}");
        let toml = scram_config(&tansu.addr, &topic, mechanism, user, &reference);
        let bridge = Bridge::start(&toml).await;
        let login = [
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanisms", mechanism),
            ("sasl.username", user),
            ("sasl.password", password),
        ];
        delivers(&bridge, mechanism, &tansu.addr, &topic, &login).await;
        bridge.shutdown().await;
        let path = pem(&dir, "check.toml", &toml);
        let (code, out, err) = run(&["check", "--config", &path, "--connect"], None);
        assert_eq!(code, 0, "{out}{err}");
        let line = format!("kafka: ok (1 broker, plaintext, {mechanism})");
        assert!(out.contains(&line), "{out}");
        assert!(!out.contains(password), "check prints no secret: {out}");
    }

    // A wrong password from the environment: `${env:NAME}`.
    let wrong = "not-bobs-password-4711";
    let from_env = "${env:C360_TEST_BOB_PASSWORD}";
    let path = pem(
        &dir,
        "bridge.toml",
        &scram_config(&tansu.addr, &topic, "SCRAM-SHA-512", "bob", from_env),
    );
    let served = Served::start_unready(&path, &[("C360_TEST_BOB_PASSWORD", wrong)]);
    let mut detail = String::new();
    let listening = Instant::now() + Duration::from_secs(20);
    while reqwest::get(served.url("/healthz")).await.is_err() {
        assert!(Instant::now() < listening, "the bridge never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let r = post(
            &served.url("/hook"),
            &batch(&[event("task_created", "w")]),
            Some(KEY),
        )
        .await;
        assert_ne!(r.status, 200, "a wrong password got 200");
        let ready = reqwest::get(served.url("/readyz")).await.unwrap();
        assert_eq!(ready.status(), 503, "not ready with a wrong password");
        detail = ready.text().await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = served.stop().await;
    let (code, out, err) = run_with_env(
        &["check", "--config", &path, "--connect"],
        None,
        &[("C360_TEST_BOB_PASSWORD", wrong)],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("kafka: no Kafka broker answered: authentication failed: "),
        "{out}"
    );
    assert!(!out.contains(wrong) && !err.contains(wrong), "{out}{err}");
    assert!(
        detail.contains("authentication failed: "),
        "/readyz names the failed login: {detail}"
    );
    assert!(
        !detail.contains(wrong),
        "the password appears in /readyz: {detail}"
    );
    assert!(
        !log.contains(wrong),
        "the password appears in the log:\n{log}"
    );
}
