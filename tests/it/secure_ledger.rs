//! The Redis ledger over TLS: a `redis-server` of the test's own with a TLS port only and
//! client certificates required; the ledger skips a resend through it, and `check --connect`
//! says what answered or why not.

use crate::facing::{Leaf, Pki};
use crate::harness::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "secure-ledger-key";

/// A `redis-server` serving TLS only (`--port 0`) with `leaf`, requiring a client certificate
/// signed by the CA in `ca_file`.
struct TlsRedis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    async fn start(leaf: &Leaf, ca_file: &str) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, &leaf.cert_pem).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "yes"])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .args(["--tls-ca-cert-file", ca_file])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (scripts/brokers.sh start installs it)");
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < until,
                "redis-server's TLS port {port} did not open"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        TlsRedis {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_ledger_over_mutual_tls_skips_a_resend_and_check_connect_reports_it() {
    let _shared = SHARED_BROKERS.read().await;
    let pki = Pki::new("redis CA");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let ca = write("ca.pem", &pki.ca_pem());
    let client = pki.leaf();
    let (cert, key) = (
        write("client.pem", &client.cert_pem),
        write("client.key", &client.key_pem),
    );
    let redis = TlsRedis::start(&pki.leaf(), &ca).await;
    let topic = unique("ledger-tls");
    create_topics(&kafka(), std::slice::from_ref(&topic), 1).await;
    let ledger = format!(
        "[ledger]\nbackend = \"redis\"\nurl = \"rediss://localhost:{}/0\"\nkey_prefix = \"{}:\"\ntimeout = \"1s\"\n[ledger.tls]\nca_file = \"{ca}\"\n",
        redis.port,
        unique("tls-ledger")
    );
    let with_cert = format!("{ledger}cert_file = \"{cert}\"\nkey_file = \"{key}\"\n");
    let toml = |ledger: &str| {
        format!(
            "{}{}{}{ledger}",
            webhook_toml("wh", KEY),
            kafka_sink_toml("kafka", &kafka()),
            route_all_toml(&["kafka"], &format!("topic = \"{topic}\"\n"))
        )
    };

    // The same batch twice: published once, the resend skipped by what the ledger recorded.
    let bridge = Bridge::start(&toml(&with_cert)).await;
    let events: Vec<String> = (0..3)
        .map(|i| event("task_created", &format!("ledger-tls-{i}")))
        .collect();
    for _ in 0..2 {
        let r = post(&bridge.url("/hook"), &batch(&events), Some(KEY)).await;
        assert_eq!(r.status, 200, "{:?}", r.json);
    }
    let ready: serde_json::Value = reqwest::get(bridge.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ledger"], "ok", "{ready}");
    let got = consume(&kafka(), &topic, 1).await;
    assert_eq!(
        got.len(),
        events.len(),
        "the resend was skipped through TLS"
    );
    bridge.shutdown().await;

    let (_d, path) = write_config(&toml(&with_cert));
    let (code, out, err) = run(&["check", "--config", &path, "--connect"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ledger: ok (redis, one server, mutual TLS)"),
        "{out}"
    );

    // No client certificate: Redis refuses the handshake, and check says the ledger failed.
    let (_d, path) = write_config(&toml(&ledger));
    let (code, out, err) = run(&["check", "--config", &path, "--connect"], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("kafka: ok"), "{out}");
    assert!(out.contains("ledger: tls: "), "{out}");
    assert!(err.contains("could not connect to ledger"), "{err}");
}
