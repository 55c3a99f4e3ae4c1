//! Test harness: a bridge served on port 0 from a TOML string, and real consumers for what it
//! published (rdkafka assigned from offset 0; lapin `basic_get` on a bound queue).

use c360_bridge::webhook::signature;
use c360_bridge::{App, config};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub const RABBIT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The Kafka-protocol broker of the suite (tansu started by scripts/test.sh).
pub fn kafka() -> String {
    std::env::var("C360_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Panics (fails the test) when nothing listens on `addr`: a test never skips its broker.
pub fn require(addr: &str, what: &str) {
    let ok = addr
        .parse::<SocketAddr>()
        .ok()
        .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
        .is_some();
    assert!(
        ok,
        "{what} is not reachable on {addr}: start it with scripts/brokers.sh start (scripts/test.sh does)"
    );
}

/// A name no other test uses (topics, exchanges, queues, webhooks), in this run or an earlier
/// one: the brokers keep durable exchanges and queues across runs, and a process id alone comes
/// round again (pid_max is 32768 here), so the run's start second goes in too.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("{}-{}", std::process::id(), started.as_secs())
    });
    format!("{prefix}-{run}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Serialises tests that disturb a shared broker (stop it, block it) against all others.
pub static SHARED_BROKERS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

// ---------------------------------------------------------------- config fragments

/// `[[webhooks]]` named `name` on `/hook`, verified with `key`.
pub fn webhook_toml(name: &str, key: &str) -> String {
    format!("[[webhooks]]\nname = \"{name}\"\npath = \"/hook\"\nkeys = [\"{key}\"]\n")
}

/// `[sinks.NAME]` for Kafka at `bootstrap`, without compression (tansu needs none).
pub fn kafka_sink_toml(name: &str, bootstrap: &str) -> String {
    kafka_sink_toml_with(name, bootstrap, "")
}

/// `kafka_sink_toml` with `librdkafka` lines (`"key" = "value"`) added to its librdkafka table.
pub fn kafka_sink_toml_with(name: &str, bootstrap: &str, librdkafka: &str) -> String {
    format!(
        "[sinks.{name}]\ntype = \"kafka\"\nbootstrap_servers = \"{bootstrap}\"\n[sinks.{name}.librdkafka]\n\"compression.type\" = \"none\"\n{librdkafka}"
    )
}

/// `[sinks.NAME]` for the suite's RabbitMQ, publishing to `exchange`.
pub fn rabbit_sink_toml(name: &str, exchange: &str) -> String {
    format!(
        "[sinks.{name}]\ntype = \"rabbitmq\"\nurl = \"{RABBIT_URL}\"\nexchange = \"{exchange}\"\n"
    )
}

/// A catch-all `[[routes]]` to `sinks`, followed by `extra` keys of the route.
pub fn route_all_toml(sinks: &[&str], extra: &str) -> String {
    format!("[[routes]]\nmatch = \"*\"\nsinks = {sinks:?}\n{extra}")
}

/// Waits until `{base}/readyz` answers 200 (a bridge in this process or a spawned binary).
pub async fn wait_ready_at(base: &str, within: Duration) {
    let until = Instant::now() + within;
    loop {
        let r = reqwest::get(format!("{base}/readyz")).await;
        if matches!(&r, Ok(r) if r.status() == 200) {
            return;
        }
        assert!(
            Instant::now() < until,
            "{base} not ready within {within:?}: {:?}",
            r.map(|r| r.status())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `{base}/readyz` answers 503 and says how long that took.
pub async fn wait_not_ready_at(base: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let r = reqwest::get(format!("{base}/readyz")).await;
        if matches!(&r, Ok(r) if r.status() == 503) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{base} still ready after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A bridge running in this process on an ephemeral port.
pub struct Bridge {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    /// In-flight permits when nothing is being published.
    idle_permits: usize,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Bridge {
    /// Starts a bridge from a TOML configuration (written to a temp file, loaded like `serve`).
    pub async fn start(toml: &str) -> Bridge {
        let bridge = Self::start_unready(toml).await;
        bridge.wait_ready(Duration::from_secs(20)).await;
        bridge
    }

    /// Like `start`, without waiting until the sinks are ready.
    pub async fn start_unready(toml: &str) -> Bridge {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bridge.toml");
        std::fs::write(&path, toml).expect("write config");
        let config = config::load(Some(&path)).expect("test config loads");
        Self::spawn(App::build(config, Some(&path)).expect("app builds")).await
    }

    /// Serves an app built elsewhere (e.g. around an in-memory sink) once its sinks are ready.
    pub async fn from_app(app: App) -> Bridge {
        let bridge = Self::spawn(app).await;
        bridge.wait_ready(Duration::from_secs(20)).await;
        bridge
    }

    /// Serves `app` on an ephemeral port.
    async fn spawn(app: App) -> Bridge {
        let app = Arc::new(app);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(c360_bridge::serve(app.clone(), listener, None, async {
            let _ = rx.await;
        }));
        Bridge {
            addr,
            idle_permits: app.in_flight.available_permits(),
            app,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until /readyz says every sink is ready.
    pub async fn wait_ready(&self, within: Duration) {
        wait_ready_at(&self.url(""), within).await;
    }

    /// Waits until no batch is being published any more: every publish task, including those
    /// still collecting confirms after their batch was answered 503, has ended.
    pub async fn wait_idle(&self, within: Duration) {
        let until = Instant::now() + within;
        while self.app.in_flight.available_permits() < self.idle_permits {
            assert!(
                Instant::now() < until,
                "batches still being published after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops like SIGTERM would and waits until `serve` returned.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("serve task").expect("serve ends cleanly");
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The answer to a POST: status, headers we look at, JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub json: serde_json::Value,
}

/// POSTs `body` signed with `key` (no signature header when `key` is `None`).
pub async fn post(url: &str, body: &[u8], key: Option<&str>) -> Reply {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(k) = key {
        req = req.header("x-c360-signature", signature::sign(k.as_bytes(), body));
    }
    reply(req).await
}

pub async fn reply(req: reqwest::RequestBuilder) -> Reply {
    let resp = req.send().await.expect("bridge answers");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let text = resp.text().await.expect("body");
    let json = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).expect("JSON body")
    };
    Reply {
        status,
        retry_after,
        json,
    }
}

/// The sum of the Prometheus samples in `text` whose line starts with `name` (a metric name,
/// optionally with the start of its labels).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The bridge's `/metrics` text.
pub async fn metrics_text(bridge: &Bridge) -> String {
    reqwest::get(bridge.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

/// A batch body from event JSON texts, joined exactly as given.
pub fn batch(events: &[String]) -> Vec<u8> {
    format!("{{\"events\":[{}]}}", events.join(",")).into_bytes()
}

/// One event of `class` with record id `id`, as catalog360 would send an update.
pub fn event(class: &str, id: &str) -> String {
    let payload_class = class.rsplit_once('_').map_or(class, |(p, _)| p);
    format!(
        r#"{{"event_class":"{class}","payload_class":"{payload_class}","payload":{{"old":{{"id":"{id}","rev":1}},"new":{{"id":"{id}","rev":2,"note":"caf\u00e9 \"x\" 12345678901234567890123"}}}}}}"#
    )
}

// ---------------------------------------------------------------- Kafka

pub async fn create_topics(bootstrap: &str, topics: &[String], partitions: i32) {
    require(bootstrap, "the Kafka broker");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .expect("create_topics");
    for r in results {
        if let Err((t, e)) = r {
            assert_eq!(
                e,
                rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                "creating {t}: {e}"
            );
        }
    }
}

/// One consumed Kafka record.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// Reads every record of `topic` from offset 0 until each partition reports its end.
///
/// Ends on librdkafka's partition-EOF events rather than on ListOffsets watermarks: tansu 0.6
/// reports a high watermark that counts record batches, not records.
pub async fn consume(bootstrap: &str, topic: &str, partitions: i32) -> Vec<Record> {
    consume_with(bootstrap, topic, partitions, &[]).await
}

/// `consume` with more librdkafka settings for the consumer (TLS, a login).
pub async fn consume_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) -> Vec<Record> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("it-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || consume_blocking(&config, &topic, partitions))
        .await
        .expect("consumer thread")
}

fn consume_blocking(config: &ClientConfig, topic: &str, partitions: i32) -> Vec<Record> {
    let consumer: BaseConsumer = config.create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("offset");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut at_end = std::collections::BTreeSet::new();
    let mut last_error = None;
    let until = Instant::now() + Duration::from_secs(20);
    while at_end.len() < partitions as usize {
        assert!(
            Instant::now() < until,
            "{topic}: only partitions {at_end:?} reached their end after {} records (last error: {last_error:?})",
            out.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(record(&m)),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            // Transient client errors (a broker that just restarted) are retried until the deadline.
            Some(Err(e)) => last_error = Some(e),
            None => {}
        }
    }
    out
}

/// Fails if the broker already deleted records of `topic` (a log start offset above 0), which
/// would make a conservation check meaningless. (Not for tansu: see `consume`.)
pub fn assert_nothing_deleted(bootstrap: &str, topic: &str, partitions: i32) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    for p in 0..partitions {
        let (low, _) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        assert_eq!(
            low, 0,
            "{topic}/{p}: the broker deleted records (retention), the check would be void"
        );
    }
}

fn record(m: &rdkafka::message::BorrowedMessage) -> Record {
    Record {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().unwrap_or_default().to_vec(),
        headers: m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

// ---------------------------------------------------------------- RabbitMQ

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};

/// A test's own durable queue (expiring when unused), bound to an exchange, read with
/// `basic_get`. Every call opens its own connection, so broker restarts do not break it.
pub struct Queue {
    pub name: String,
}

/// A consumed AMQP message.
#[derive(Debug)]
pub struct Amqp {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub delivery_mode: Option<u8>,
    pub content_type: Option<String>,
    pub message_id: Option<String>,
    pub headers: BTreeMap<String, String>,
}

pub async fn amqp_channel() -> (lapin::Connection, lapin::Channel) {
    require("127.0.0.1:5672", "RabbitMQ");
    let conn = lapin::Connection::connect(RABBIT_URL, lapin::ConnectionProperties::default())
        .await
        .expect("amqp connect");
    let channel = conn.create_channel().await.expect("channel");
    (conn, channel)
}

impl Queue {
    /// Declares `exchange` (durable topic, as the bridge does) and a queue bound with `bindings`.
    pub async fn bind(exchange: &str, bindings: &[&str], mut arguments: FieldTable) -> Queue {
        let (_conn, channel) = amqp_channel().await;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .expect("exchange");
        let name = unique("q");
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(600_000));
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(name.as_str().into(), opts, arguments)
            .await
            .expect("queue");
        let q = Queue { name };
        for b in bindings {
            q.add_binding(exchange, b).await;
        }
        q
    }

    pub async fn add_binding(&self, exchange: &str, key: &str) {
        let (_conn, channel) = amqp_channel().await;
        channel
            .queue_bind(
                self.name.as_str().into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
    }

    /// Takes every message now in the queue.
    pub async fn drain(&self) -> Vec<Amqp> {
        let (_conn, channel) = amqp_channel().await;
        let mut out = Vec::new();
        let opts = BasicGetOptions { no_ack: true };
        while let Some(m) = channel
            .basic_get(self.name.as_str().into(), opts)
            .await
            .expect("basic_get")
        {
            out.push(amqp(m.delivery));
        }
        out
    }
}

fn amqp(d: lapin::message::Delivery) -> Amqp {
    let p = &d.properties;
    let header = |v: &AMQPValue| match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => format!("{other:?}"),
    };
    Amqp {
        routing_key: d.routing_key.to_string(),
        body: d.data.clone(),
        delivery_mode: *p.delivery_mode(),
        content_type: p.content_type().as_ref().map(|s| s.to_string()),
        message_id: p.message_id().as_ref().map(|s| s.to_string()),
        headers: p
            .headers()
            .as_ref()
            .map(|t| {
                t.inner()
                    .iter()
                    .map(|(k, v)| (k.to_string(), header(v)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Queue arguments that make RabbitMQ nack every publish routed to the queue.
pub fn reject_everything() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    t.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    t
}

/// Runs `rabbitmqctl ARGS`, failing the test if it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------- load and conservation

/// One POSTed batch and what the bridge answered.
#[derive(Debug, Clone)]
pub struct Sent {
    pub events: Vec<String>,
    pub status: u16,
}

/// Posts batches of `size` unique `class` events from `workers` concurrent senders until
/// `stop` is cancelled (or `max_batches` is reached).
pub async fn load_until(
    url: String,
    key: &'static str,
    class: &'static str,
    size: usize,
    workers: usize,
    max_batches: usize,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<Sent> {
    let next = Arc::new(AtomicU32::new(0));
    let tag = unique("load");
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (url, stop, next, tag) = (url.clone(), stop.clone(), next.clone(), tag.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client");
            let mut sent = Vec::new();
            while !stop.is_cancelled() {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                if n >= max_batches {
                    break;
                }
                let events: Vec<String> = (0..size)
                    .map(|i| event(class, &format!("{tag}-{n}-{i}")))
                    .collect();
                let body = batch(&events);
                let sig = signature::sign(key.as_bytes(), &body);
                let status = match client
                    .post(&url)
                    .header("x-c360-signature", sig)
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                if status != 200 {
                    // Like catalog360, come back later rather than hammer a failing bridge.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                sent.push(Sent { events, status });
            }
            sent
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load worker"));
    }
    all
}

/// The conservation tally of a run: batches, 200s, events lost, duplicates seen.
#[derive(Debug)]
pub struct Tally {
    pub batches: usize,
    pub ok: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub failed_events: usize,
}

/// Checks that every event of every 200 was consumed, and that only events of a failed attempt
/// were duplicated, no more often than such events were sent; prints one row for the fault table.
pub fn conservation(scenario: &str, sent: &[Sent], consumed: &[Vec<u8>]) -> Tally {
    let mut seen: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    for c in consumed {
        *seen.entry(c.as_slice()).or_default() += 1;
    }
    let ok: Vec<&Sent> = sent.iter().filter(|s| s.status == 200).collect();
    let lost = ok
        .iter()
        .flat_map(|s| &s.events)
        .filter(|e| !seen.contains_key(e.as_bytes()))
        .count();
    let duplicates = seen.values().map(|n| n - 1).sum();
    let failed_events = sent
        .iter()
        .filter(|s| s.status != 200)
        .map(|s| s.events.len())
        .sum();
    let t = Tally {
        batches: sent.len(),
        ok: ok.len(),
        lost,
        duplicates,
        failed_events,
    };
    eprintln!(
        "FAULT-TABLE | {scenario} | batches {} | 200s {} | lost {} | duplicates {} | events of failed attempts {}",
        t.batches, t.ok, t.lost, t.duplicates, t.failed_events
    );
    assert_eq!(t.lost, 0, "{scenario}: events of a 200 are missing");
    assert!(
        t.duplicates <= t.failed_events,
        "{scenario}: more duplicates than events of failed attempts: {t:?}"
    );
    let failed: std::collections::HashSet<&[u8]> = sent
        .iter()
        .filter(|s| s.status != 200)
        .flat_map(|s| s.events.iter().map(|e| e.as_bytes()))
        .collect();
    let unexplained = seen
        .iter()
        .filter(|&(e, &n)| n > 1 && !failed.contains(e))
        .count();
    assert_eq!(
        unexplained, 0,
        "{scenario}: events duplicated although no attempt to send them failed: {t:?}"
    );
    t
}

// ---------------------------------------------------------------- the built binary

/// The `c360-bridge` binary cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_c360-bridge");

/// Runs the binary with `args` (and `stdin`) to its end: exit code, stdout, stderr.
pub fn run(args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    run_with_env(args, stdin, &[])
}

/// `run` with extra environment variables for the child.
pub fn run_with_env(
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("binary ends");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// Writes a configuration file into a new temp dir; returns the dir (keep it) and the path.
pub fn write_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bridge.toml");
    std::fs::write(&path, text).expect("write");
    let p = path.display().to_string();
    (dir, p)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// `c360-bridge serve` in a process of its own, as an operator runs it, with its stdout and
/// stderr captured in one log file. Killed when dropped.
pub struct Served {
    pub base: String,
    child: std::process::Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Serves `config` on a free port (plus `env` for the child); waits until /readyz is 200.
    pub async fn start(config: &str, env: &[(&str, &str)]) -> Served {
        let served = Self::start_unready(config, env);
        wait_ready_at(&served.base, Duration::from_secs(20)).await;
        served
    }

    /// Serves `config` on a free port (plus `env` for the child), without waiting.
    pub fn start_unready(config: &str, env: &[(&str, &str)]) -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("bridge.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let port = free_port();
        let child = std::process::Command::new(BIN)
            .args(["serve", "--config", config])
            .env("C360_BRIDGE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("serve starts");
        Served {
            base: format!("http://127.0.0.1:{port}"),
            child,
            log,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends the signal `name` (`HUP`, `TERM`, ...) to the process.
    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{name} {}", self.child.id());
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).expect("bridge log")
    }

    /// Waits until the log has a line containing `what` (20 s at most), and returns it.
    pub async fn log_line(&self, what: &str) -> String {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(what)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < until,
                "no line with {what:?} in\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Stops it with SIGTERM, requires exit 0 within 30 s, and returns its whole log.
    pub async fn stop(mut self) -> String {
        self.signal("TERM");
        let until = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < until, "serve did not stop after SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let log = self.log();
        assert!(
            status.success(),
            "serve exits 0 after SIGTERM: {status:?}\n{log}"
        );
        log
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
