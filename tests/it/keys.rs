//! Key rotation with the built binary and real files: a rewritten keys file, a Kubernetes-style
//! `..data` symlink swap, SIGHUP alone, broken and empty files. Each test checks what catalog360
//! gets (200 / 401), what a consumer reads from RabbitMQ (a 401 publishes nothing), that no key
//! reaches the log, and prints the time from the file change to the first 200 with the new key.

use crate::harness::*;
use lapin::types::FieldTable;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// §9: a changed keys file is in force within this.
const WITHIN: Duration = Duration::from_secs(5);

/// A served bridge whose webhook `rot` reads its keys from a file, publishing to a queue of its own.
struct Setup {
    bridge: Served,
    queue: Queue,
    _config: tempfile::TempDir,
}

/// Serves webhook `rot` with `keys_file = keys` (and `server` lines) to a RabbitMQ queue.
async fn setup(keys: &Path, server: &str) -> Setup {
    let exchange = unique("keys-x");
    let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
    let toml = format!(
        "[server]\n{server}[[webhooks]]\nname = \"rot\"\npath = \"/hook\"\nkeys_file = \"{}\"\n{}{}",
        keys.display(),
        rabbit_sink_toml("rabbit", &exchange),
        route_all_toml(&["rabbit"], "")
    );
    let (dir, path) = write_config(&toml);
    let bridge = Served::start(&path, &[("RUST_LOG", "debug")]).await;
    Setup {
        bridge,
        queue,
        _config: dir,
    }
}

/// A key no other test or run uses.
fn key(name: &str) -> String {
    unique(&format!("{name}-key-3f9c1e"))
}

/// A one-event batch of its own: the event (what a consumer must read) and the body.
fn one_event() -> (String, Vec<u8>) {
    let e = event("task_created", &unique("rot"));
    let body = batch(std::slice::from_ref(&e));
    (e, body)
}

impl Setup {
    /// Posts a new one-event batch signed with `key`; on 200 the consumer must read exactly that
    /// event, on any other answer it must read nothing. Returns the status.
    async fn send(&self, key: &str) -> u16 {
        let (e, body) = one_event();
        let status = post(&self.bridge.url("/hook"), &body, Some(key))
            .await
            .status;
        let expected: Vec<&[u8]> = if status == 200 {
            vec![e.as_bytes()]
        } else {
            vec![]
        };
        self.assert_consumed(&expected).await;
        status
    }

    async fn assert_consumed(&self, expected: &[&[u8]]) {
        let got: Vec<Vec<u8>> = self
            .queue
            .drain()
            .await
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(got, expected, "what the consumer reads");
    }

    /// Posts one batch signed with `key` until it gets 200 (every earlier answer must be 401,
    /// and must have published nothing); prints and returns the time since `changed`.
    async fn first_200(&self, key: &str, changed: Instant, how: &str) -> Duration {
        let (e, body) = one_event();
        loop {
            let r = post(&self.bridge.url("/hook"), &body, Some(key)).await;
            let elapsed = changed.elapsed();
            if r.status == 200 {
                eprintln!(
                    "KEY-ROTATION | {how} | {} ms from the file change to the first 200 with the new key",
                    elapsed.as_millis()
                );
                self.assert_consumed(&[e.as_bytes()]).await;
                return elapsed;
            }
            assert_eq!(r.status, 401, "{how}: before the new key is known: {r:?}");
            assert!(
                elapsed < WITHIN,
                "{how}: the new key still gets 401 after {elapsed:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `c360_key_reloads_total{webhook="rot",result}`.
    async fn reloads(&self, result: &str) -> f64 {
        let text = self.bridge.metrics().await;
        metric(
            &text,
            &format!("c360_key_reloads_total{{webhook=\"rot\",result=\"{result}\"}}"),
        )
    }

    /// Waits (at most `WITHIN`) until `result` was counted `n` times.
    async fn wait_reloads(&self, result: &str, n: f64) {
        let until = Instant::now() + WITHIN;
        while self.reloads(result).await < n {
            assert!(
                Instant::now() < until,
                "c360_key_reloads_total{{result={result}}} < {n} after {WITHIN:?}:\n{}",
                self.bridge.metrics().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the bridge and checks that its log holds none of `keys`; returns the log.
    async fn stop_and_check_log(self, keys: &[&str]) -> String {
        let log = self.bridge.stop().await;
        for k in keys {
            assert!(!log.contains(k), "a key appears in the bridge's log");
        }
        log
    }
}

/// A keys file written as catalog360's operator would: new key first, previous key second.
fn keys_text(keys: &[&str]) -> String {
    keys.iter().map(|k| format!("{k}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_the_keys_file_rotates_the_key_without_a_restart() {
    let _shared = SHARED_BROKERS.read().await;
    let (old, new) = (key("old"), key("new"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, keys_text(&[&old])).unwrap();
    let s = setup(&file, "").await;
    assert_eq!(s.send(&old).await, 200);
    assert_eq!(s.send(&new).await, 401, "the new key before it is written");

    std::fs::write(&file, keys_text(&[&new, &old])).unwrap();
    let took = s.first_200(&new, Instant::now(), "rewrite").await;
    assert!(took < WITHIN);
    assert_eq!(
        s.send(&old).await,
        200,
        "the previous key, second line, still verifies"
    );
    assert_eq!(s.reloads("ok").await, 1.0);

    std::fs::write(&file, keys_text(&[&new])).unwrap();
    s.wait_reloads("ok", 2.0).await;
    assert_eq!(s.send(&old).await, 401, "a removed key");
    assert_eq!(s.send(&new).await, 200);
    let log = s.stop_and_check_log(&[&old, &new]).await;
    assert!(log.contains("the new key set is in force"), "{log}");
}

/// A directory laid out like a Kubernetes Secret volume: `keys -> ..data/keys`,
/// `..data -> ..<timestamp>`, updated by an atomic rename of a new `..data_tmp` link.
struct SecretVolume {
    dir: tempfile::TempDir,
    version: u32,
}

impl SecretVolume {
    fn new(content: &str) -> SecretVolume {
        let mut v = SecretVolume {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        let first = v.write_version(content);
        std::os::unix::fs::symlink(&first, v.dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/keys", v.file()).unwrap();
        v
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    fn write_version(&mut self, content: &str) -> String {
        self.version += 1;
        let name = format!("..2026_11_29_16_45_00.{}", 1000 + self.version);
        std::fs::create_dir(self.dir.path().join(&name)).unwrap();
        std::fs::write(self.dir.path().join(&name).join("keys"), content).unwrap();
        name
    }

    /// What the kubelet does: new timestamped dir, `..data_tmp` link to it, renamed over
    /// `..data`, old dir removed.
    fn update(&mut self, content: &str) {
        let d = self.dir.path().to_owned();
        let old = std::fs::read_link(d.join("..data")).unwrap();
        let new = self.write_version(content);
        std::os::unix::fs::symlink(&new, d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        std::fs::remove_dir_all(d.join(old)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_secret_update_rotates_the_key_without_a_restart() {
    let _shared = SHARED_BROKERS.read().await;
    let (old, new) = (key("k8s-old"), key("k8s-new"));
    let mut volume = SecretVolume::new(&keys_text(&[&old]));
    let s = setup(&volume.file(), "").await;
    assert_eq!(s.send(&old).await, 200);
    assert_eq!(s.send(&new).await, 401);

    volume.update(&keys_text(&[&new, &old]));
    let took = s
        .first_200(&new, Instant::now(), "kubernetes ..data swap")
        .await;
    assert!(took < WITHIN);
    assert_eq!(s.send(&old).await, 200);

    volume.update(&keys_text(&[&new]));
    s.wait_reloads("ok", 2.0).await;
    assert_eq!(s.send(&old).await, 401, "a removed key");
    assert_eq!(s.send(&new).await, 200);
    s.stop_and_check_log(&[&old, &new]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_keys_file_at_once() {
    let _shared = SHARED_BROKERS.read().await;
    let (old, new) = (key("hup-old"), key("hup-new"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, keys_text(&[&old])).unwrap();
    // The periodic look is an hour away: only SIGHUP can make the bridge read the file.
    let s = setup(&file, "keys_poll_interval = \"1h\"\n").await;
    assert_eq!(s.send(&old).await, 200);

    std::fs::write(&file, keys_text(&[&new])).unwrap();
    let changed = Instant::now();
    let r = s.send(&new).await;
    assert_eq!(r, 401, "not polled: the change is not seen yet");
    let hup = Instant::now();
    s.bridge.signal("HUP");
    let took = s.first_200(&new, changed, "SIGHUP after the change").await;
    eprintln!(
        "KEY-ROTATION | SIGHUP | {} ms from SIGHUP to the first 200 with the new key",
        hup.elapsed().as_millis()
    );
    assert!(took < WITHIN);
    assert_eq!(s.send(&old).await, 401, "a removed key");
    assert_eq!(s.reloads("ok").await, 1.0);

    s.bridge.signal("HUP");
    s.wait_reloads("unchanged", 1.0).await;
    assert_eq!(s.send(&new).await, 200);
    let log = s.stop_and_check_log(&[&old, &new]).await;
    assert!(log.contains("SIGHUP"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_does_not_stop_a_bridge_without_keys_file() {
    let _shared = SHARED_BROKERS.read().await;
    let exchange = unique("keys-x");
    let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
    let k = key("inline");
    let toml = webhook_toml("w", &k)
        + &rabbit_sink_toml("rabbit", &exchange)
        + &route_all_toml(&["rabbit"], "");
    let (_d, path) = write_config(&toml);
    let bridge = Served::start(&path, &[]).await;
    bridge.signal("HUP");
    bridge
        .log_line("configuration reload (SIGHUP): unchanged")
        .await;
    let (e, body) = one_event();
    assert_eq!(
        post(&bridge.url("/hook"), &body, Some(&k)).await.status,
        200
    );
    let got: Vec<Vec<u8>> = queue.drain().await.into_iter().map(|m| m.body).collect();
    assert_eq!(got, [e.into_bytes()]);
    let log = bridge.stop().await;
    assert!(!log.contains(&k), "a key appears in the bridge's log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_or_empty_keys_file_keeps_the_keys_in_force() {
    let _shared = SHARED_BROKERS.read().await;
    let (old, new) = (key("kept-old"), key("kept-new"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, keys_text(&[&old])).unwrap();
    let s = setup(&file, "").await;
    assert_eq!(s.send(&old).await, 200);

    std::fs::write(&file, "\n").unwrap();
    s.wait_reloads("empty", 1.0).await;
    assert_eq!(s.send(&old).await, 200, "an empty file keeps the old keys");
    std::fs::remove_file(&file).unwrap();
    s.wait_reloads("error", 1.0).await;
    assert_eq!(s.send(&old).await, 200, "a deleted file keeps the old keys");
    std::fs::create_dir(&file).unwrap();
    s.wait_reloads("error", 2.0).await;
    assert_eq!(
        s.send(&old).await,
        200,
        "an unreadable file keeps the old keys"
    );
    std::fs::remove_dir(&file).unwrap();
    std::fs::write(&file, format!("{new}\ntest-webhook\n")).unwrap();
    s.wait_reloads("invalid", 1.0).await;
    assert_eq!(
        s.send(&old).await,
        200,
        "a file with the test key keeps the old keys"
    );
    assert_eq!(s.send(&new).await, 401);
    assert_eq!(s.reloads("ok").await, 0.0);

    std::fs::write(&file, keys_text(&[&new])).unwrap();
    let took = s
        .first_200(&new, Instant::now(), "rewrite after broken files")
        .await;
    assert!(took < WITHIN);
    assert_eq!(s.send(&old).await, 401, "a removed key");
    let log = s.stop_and_check_log(&[&old, &new]).await;
    for why in [
        "holds no key",
        "cannot read",
        "test key",
        "previous keys stay in force",
    ] {
        assert!(log.contains(why), "the log says why ({why}):\n{log}");
    }
}

#[test]
fn check_says_where_each_webhooks_keys_come_from_but_not_the_keys() {
    let (a, b, c) = (key("check-a"), key("check-b"), key("check-c"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, keys_text(&[&b, &c])).unwrap();
    let toml = format!(
        "[[webhooks]]\nname = \"w\"\npath = \"/hook\"\nkeys = [\"{a}\"]\nkeys_env = \"C360_TEST_CHECK_KEYS\"\nkeys_file = \"{}\"\n{}{}",
        file.display(),
        kafka_sink_toml("kafka", "127.0.0.1:9092"),
        route_all_toml(&["kafka"], "")
    );
    let (_d, path) = write_config(&toml);
    let env = [("C360_TEST_CHECK_KEYS", "env-key-one-5d1f, env-key-two-5d1f")];
    let (code, out, err) = run_with_env(&["check", "--config", &path], None, &env);
    assert_eq!(code, 0, "{err}");
    for line in [
        "webhook w on /hook (5 key(s), test ping accepted)".to_owned(),
        "  keys from inline: 1 (fixed until restart)".to_owned(),
        "  keys from env C360_TEST_CHECK_KEYS: 2 (fixed until restart)".to_owned(),
        format!(
            "  keys from file {}: 2 (re-read when it changes and on SIGHUP)",
            file.display()
        ),
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "{line:?} missing from:\n{out}"
        );
    }
    for k in [&a, &b, &c, "env-key-one-5d1f", "env-key-two-5d1f"] {
        assert!(!out.contains(k) && !err.contains(k), "check prints a key");
    }
    std::fs::write(&file, "\n").unwrap();
    let (code, _, err) = run_with_env(&["check", "--config", &path], None, &env);
    assert_eq!(code, 1);
    assert!(
        err.contains("webhooks[0].keys_file") && err.contains("holds no key"),
        "{err}"
    );
}
