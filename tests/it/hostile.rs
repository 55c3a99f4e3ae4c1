//! Hostile input against a bridge publishing to real tansu and RabbitMQ: each attack's answer,
//! how long it held its connection, that no topic or queue received anything, and that the
//! bridge still serves a real batch afterwards. Each case prints one table row
//! (`cargo test --test it hostile:: -- --nocapture`).

use crate::facing;
use crate::harness::*;
use lapin::types::FieldTable;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "hostile-key";
/// The deadlines the attacks run into (short, so the suite stays quick).
const HEADER: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(2);

/// A bridge fanning every event out to its own Kafka topic and RabbitMQ queue.
pub struct Target {
    pub bridge: Bridge,
    pub topic: String,
    pub queue: Queue,
    /// Kafka records already looked at (a consumer reads the topic from offset 0).
    seen: std::sync::Mutex<usize>,
}

/// `[server]` keys for the attacks, plus `extra` lines.
pub fn server_toml(extra: &str) -> String {
    format!(
        "[server]\nack_timeout = \"5s\"\nheader_timeout = \"{}ms\"\nidle_timeout = \"{}ms\"\n{extra}",
        HEADER.as_millis(),
        IDLE.as_millis()
    )
}

impl Target {
    /// Starts the bridge with `server` as its `[server]` table and `webhook_extra` keys on the
    /// webhook.
    pub async fn start(server: &str, webhook_extra: &str) -> Target {
        let topic = unique("hostile");
        create_topics(&kafka(), std::slice::from_ref(&topic), 1).await;
        let exchange = unique("x-hostile");
        let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
        let toml = format!(
            "{server}\n{}{webhook_extra}\n{}{}{}",
            webhook_toml("hostile", KEY),
            kafka_sink_toml("kafka", &kafka()),
            rabbit_sink_toml("rabbit", &exchange),
            route_all_toml(&["kafka", "rabbit"], &format!("topic = \"{topic}\"\n")),
        );
        let bridge = Bridge::start(&toml).await;
        Target {
            bridge,
            topic,
            queue,
            seen: std::sync::Mutex::new(0),
        }
    }

    /// Messages published since the last look: new Kafka records, and the queue (drained).
    pub async fn published(&self) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let kafka = consume(&kafka(), &self.topic, 1).await;
        let rabbit = self.queue.drain().await;
        let mut seen = self.seen.lock().unwrap();
        let new = kafka
            .into_iter()
            .skip(*seen)
            .map(|r| r.payload)
            .collect::<Vec<_>>();
        *seen += new.len();
        (new, rabbit.into_iter().map(|m| m.body).collect())
    }

    /// Asserts nothing was published, then that a real batch still gets 200 and is the only
    /// thing on the topic and the queue.
    pub async fn nothing_published_and_still_serving(&self) -> bool {
        let (k, r) = self.published().await;
        assert!(
            k.is_empty() && r.is_empty(),
            "the attack published {} + {}",
            k.len(),
            r.len()
        );
        let e = event("task_created", &unique("real"));
        let reply = post(
            &self.bridge.url("/hook"),
            &batch(std::slice::from_ref(&e)),
            Some(KEY),
        )
        .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        let (k, r) = self.published().await;
        assert_eq!((k, r), (vec![e.clone().into_bytes()], vec![e.into_bytes()]));
        true
    }
}

/// One row of the closing table.
pub fn row(attack: &str, answer: &str, held: Duration, published: usize, serving: bool) {
    println!(
        "| {attack} | {answer} | {:.2} | {published} | {} |",
        held.as_secs_f64(),
        if serving { "yes" } else { "NO" }
    );
}

/// Reads until the bridge closes the connection; returns what it sent.
pub async fn read_to_close(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "connection still open after {within:?}");
    out
}

/// The status code of the first HTTP response in `bytes` ("none" without one).
/// A kept-alive connection whose first request (`HEAD /hook`) got its 200, retried for 5 s.
async fn answered_connection(addr: std::net::SocketAddr) -> TcpStream {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"HEAD /hook HTTP/1.1\r\nHost: b\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        if status_of(&head) == "200" {
            return s;
        }
        assert!(Instant::now() < until, "no connection answered within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.split_whitespace()
        .nth(1)
        .filter(|_| text.starts_with("HTTP/1.1"))
        .unwrap_or("none (closed)")
        .to_owned()
}

fn assert_near(held: Duration, deadline: Duration) {
    assert!(
        held >= deadline.mul_f64(0.9) && held <= deadline + Duration::from_millis(1500),
        "held {held:?}, deadline {deadline:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_the_header_deadline() {
    let _shared = SHARED_BROKERS.read().await;
    let t = Target::start(&server_toml(""), "").await;
    let started = Instant::now();
    let mut s = TcpStream::connect(t.bridge.addr).await.unwrap();
    let sent = read_to_close(&mut s, Duration::from_secs(10)).await;
    let held = started.elapsed();
    assert_near(held, HEADER);
    let serving = t.nothing_published_and_still_serving().await;
    row("silent connection", &status_of(&sent), held, 0, serving);
    let m = metrics_text(&t.bridge).await;
    assert!(
        metric(
            &m,
            "c360_connections_closed_total{listener=\"webhook\",reason=\"header_timeout\"}"
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_trickled_a_byte_at_a_time_are_cut_at_the_header_deadline() {
    let _shared = SHARED_BROKERS.read().await;
    let t = Target::start(&server_toml(""), "").await;
    let started = Instant::now();
    let s = TcpStream::connect(t.bridge.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        wr.write_all(b"POST /hook HTTP/1.1\r\n").await?;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            wr.write_all(b"X").await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut buf)).await;
    let held = started.elapsed();
    assert!(read.is_ok(), "still open after 10 s");
    trickle.abort();
    assert_near(held, HEADER);
    let serving = t.nothing_published_and_still_serving().await;
    row(
        "slow headers (1 byte / 200 ms)",
        &status_of(&buf),
        held,
        0,
        serving,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_at_the_idle_deadline() {
    let _shared = SHARED_BROKERS.read().await;
    let t = Target::start(&server_toml(""), "").await;
    let mut s = TcpStream::connect(t.bridge.addr).await.unwrap();
    s.write_all(b"HEAD /hook HTTP/1.1\r\nHost: bridge\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "answer to HEAD");
        head.push(b[0]);
    }
    let answered = Instant::now();
    let rest = read_to_close(&mut s, Duration::from_secs(10)).await;
    let held = answered.elapsed();
    assert!(rest.is_empty());
    assert_near(held, IDLE);
    let serving = t.nothing_published_and_still_serving().await;
    row(
        "idle keep-alive after a HEAD",
        &status_of(&head),
        held,
        0,
        serving,
    );
    let m = metrics_text(&t.bridge).await;
    assert!(
        metric(
            &m,
            "c360_connections_closed_total{listener=\"webhook\",reason=\"idle_timeout\"}"
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_idle_connections_do_not_stop_a_real_request() {
    let _shared = SHARED_BROKERS.read().await;
    let t = Target::start(
        "[server]\nack_timeout = \"5s\"\nheader_timeout = \"30s\"\n",
        "",
    )
    .await;
    let started = Instant::now();
    let mut idle = Vec::with_capacity(3000);
    for _ in 0..3000 {
        idle.push(TcpStream::connect(t.bridge.addr).await.unwrap());
    }
    let open_for = Instant::now();
    let e = event("task_created", &unique("among-idle"));
    let reply = post(
        &t.bridge.url("/hook"),
        &batch(std::slice::from_ref(&e)),
        Some(KEY),
    )
    .await;
    let answered_in = open_for.elapsed();
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert!(answered_in < Duration::from_secs(2), "{answered_in:?}");
    let m = metrics_text(&t.bridge).await;
    assert!(
        metric(&m, "c360_connections_open{listener=\"webhook\"}") >= 3000.0,
        "{m}"
    );
    let held = started.elapsed();
    drop(idle);
    let (k, r) = t.published().await;
    assert_eq!((k.len(), r.len()), (1, 1), "only the real batch");
    println!(
        "real request among 3000 idle connections: 200 in {:.1} ms",
        answered_in.as_secs_f64() * 1000.0
    );
    row(
        "3,000 idle connections + a real request",
        "200 for the real request",
        held,
        0,
        true,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_at_once_and_counted() {
    let _shared = SHARED_BROKERS.read().await;
    let t = Target::start(
        "[server]\nack_timeout = \"5s\"\nmax_connections = 4\nheader_timeout = \"20s\"\n",
        "",
    )
    .await;
    // Four connections that each got an answer: the bridge holds a slot for every one (a
    // connection of the harness's readiness check, closed but not yet seen closed, can hold
    // a slot for a moment; a connection refused meanwhile is opened again).
    let mut held_open = Vec::new();
    for _ in 0..4 {
        held_open.push(answered_connection(t.bridge.addr).await);
    }
    let until = Instant::now() + Duration::from_secs(5);
    let started = Instant::now();
    let mut extra = TcpStream::connect(t.bridge.addr).await.unwrap();
    let sent = read_to_close(&mut extra, Duration::from_secs(5)).await;
    let held = started.elapsed();
    assert!(held < Duration::from_secs(1), "{held:?}");
    for s in &mut held_open {
        // Existing connections are unaffected: each still gets its answer.
        s.write_all(b"HEAD /hook HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(s, Duration::from_secs(5)).await;
        assert_eq!(status_of(&answer), "200");
    }
    while Instant::now() < until {
        let m = reqwest::get(t.bridge.url("/metrics")).await;
        if let Ok(m) = m {
            let m = m.text().await.unwrap();
            assert!(
                metric(&m, "c360_connections_refused_total{listener=\"webhook\"}") >= 1.0,
                "{m}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let serving = t.nothing_published_and_still_serving().await;
    row(
        "over max_connections (4)",
        &status_of(&sent),
        held,
        0,
        serving,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_stalls_is_closed_at_the_header_deadline() {
    let _shared = SHARED_BROKERS.read().await;
    let pki = facing::Pki::new("c360 test CA");
    let dir = tempfile::tempdir().unwrap();
    let (bridge, queue) = facing::https_bridge(
        &facing::install(dir.path(), &pki.leaf()),
        "header_timeout = \"1s\"\n",
    )
    .await;
    let started = Instant::now();
    let mut s = TcpStream::connect(bridge.addr).await.unwrap();
    // The first bytes of a ClientHello record, then nothing.
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let sent = read_to_close(&mut s, Duration::from_secs(10)).await;
    let held = started.elapsed();
    assert!(sent.is_empty());
    assert!(
        held >= Duration::from_millis(900) && held <= Duration::from_millis(2500),
        "{held:?}"
    );
    assert!(queue.drain().await.is_empty());
    let mut ok = facing::connect(&pki, bridge.addr).await.unwrap();
    let (status, _) = facing::exchange(
        &mut ok,
        "POST",
        "/hook",
        &batch(&[event("task_created", "after")]),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(queue.drain().await.len(), 1);
    row("TLS handshake that stalls", "none (closed)", held, 0, true);
}

/// Sends a raw request and reads the answer to the close; returns (status, seconds held).
async fn raw(t: &Target, request: &[u8]) -> (String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(t.bridge.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let answer = read_to_close(&mut s, Duration::from_secs(15)).await;
    (status_of(&answer), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_headers_and_a_64_kib_header_get_a_fast_4xx() {
    let _shared = SHARED_BROKERS.read().await;
    let t = Target::start(&server_toml(""), "").await;
    let body = batch(&[event("task_created", "h")]);
    let sig = c360_bridge::webhook::signature::sign(KEY.as_bytes(), &body);
    let mut many = format!(
        "POST /hook HTTP/1.1\r\nHost: b\r\nConnection: close\r\nContent-Type: application/json\r\nX-C360-Signature: {sig}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for i in 0..200 {
        many.push_str(&format!("X-Filler-{i}: v\r\n"));
    }
    let mut req = many.into_bytes();
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(&body);
    let (status, held) = raw(&t, &req).await;
    assert!(status.starts_with('4'), "{status}");
    assert!(held < Duration::from_secs(1), "{held:?}");
    let serving = t.nothing_published_and_still_serving().await;
    row("200 headers", &status, held, 0, serving);

    let big = "a".repeat(64 * 1024);
    let mut req = format!(
        "POST /hook HTTP/1.1\r\nHost: b\r\nConnection: close\r\nX-Big: {big}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let (status, held) = raw(&t, &req).await;
    assert!(status.starts_with('4'), "{status}");
    assert!(held < Duration::from_secs(1), "{held:?}");
    let serving = t.nothing_published_and_still_serving().await;
    row("a 64 KiB header (unsigned)", &status, held, 0, serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_and_invalid_utf8_get_400_and_publish_nothing() {
    let _shared = SHARED_BROKERS.read().await;
    let t = Target::start(&server_toml(""), "").await;
    let deep = format!(
        r#"{{"event_class":"task_created","payload":{}0{}}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let ok = event("task_created", "fine");
    let started = Instant::now();
    let r = post(&t.bridge.url("/hook"), &batch(&[ok, deep]), Some(KEY)).await;
    let held = started.elapsed();
    assert_eq!(r.status, 400, "{:?}", r.json);
    assert_eq!(r.json["error"], "invalid_event");
    assert!(
        r.json["message"].as_str().unwrap().starts_with("event 1:"),
        "{:?}",
        r.json
    );
    let serving = t.nothing_published_and_still_serving().await;
    row(
        "event nested 20,000 deep (signed)",
        "400 invalid_event",
        held,
        0,
        serving,
    );

    let bad: &[u8] = b"{\"events\":[{\"event_class\":\"task_created\",\"s\":\"\xff\xfe\"}]}";
    let started = Instant::now();
    let r = post(&t.bridge.url("/hook"), bad, Some(KEY)).await;
    let held = started.elapsed();
    assert_eq!(r.status, 400, "{:?}", r.json);
    let serving = t.nothing_published_and_still_serving().await;
    row(
        "invalid UTF-8 (signed)",
        &format!("400 {}", r.json["error"].as_str().unwrap()),
        held,
        0,
        serving,
    );
}

/// A small deterministic generator (xorshift), so a failing run can be repeated from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `seed` with 1–4 random edits: a byte replaced (often by a JSON metacharacter), inserted or
/// removed.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    const META: &[u8] = b"{}[]\",:\\u0e-+.9 \xff\x00";
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let i = rng.below(b.len());
        let byte = if rng.below(2) == 0 {
            META[rng.below(META.len())]
        } else {
            rng.next() as u8
        };
        match rng.below(3) {
            0 => b[i] = byte,
            1 => b.insert(i, byte),
            _ => {
                b.remove(i);
            }
        }
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_signed_envelopes_get_200_or_400_and_only_strict_json_is_published() {
    let _shared = SHARED_BROKERS.read().await;
    let t = Target::start(&server_toml(""), "").await;
    let seed_value = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("mutations: HOSTILE_SEED={seed_value}");
    let mut rng = Rng(seed_value);
    let seed = batch(&[
        event("task_created", "m1"),
        r#"{"event_class":"shipment_updated","payload":{"new":{"id":"\ud83d\ude00","n":[1.5e3,-0,true,null]}}}"#.to_owned(),
    ]);
    let started = Instant::now();
    let (mut ok, mut refused) = (0, 0);
    let mut accepted_events = BTreeSet::new();
    for _ in 0..300 {
        let body = mutate(&seed, &mut rng);
        let r = post(&t.bridge.url("/hook"), &body, Some(KEY)).await;
        let strict = serde_json::from_slice::<serde_json::Value>(&body);
        match r.status {
            200 => {
                ok += 1;
                let v = strict.unwrap_or_else(|e| {
                    panic!(
                        "200 for a body a strict parser refuses ({e}): {}",
                        String::from_utf8_lossy(&body)
                    )
                });
                for e in v["events"].as_array().unwrap() {
                    accepted_events.insert(serde_json::to_vec(e).unwrap());
                }
            }
            400 => refused += 1,
            other => panic!(
                "{other} {:?} for {}",
                r.json,
                String::from_utf8_lossy(&body)
            ),
        }
    }
    let held = started.elapsed();
    let (k, r) = t.published().await;
    for m in k.iter().chain(&r) {
        let v: serde_json::Value =
            serde_json::from_slice(m).expect("every published event parses strictly");
        assert!(
            accepted_events.contains(&serde_json::to_vec(&v).unwrap()),
            "published only from 200 batches"
        );
    }
    let distinct = |msgs: &[Vec<u8>]| msgs.iter().cloned().collect::<BTreeSet<_>>().len();
    assert_eq!(distinct(&k), distinct(&r), "both sinks got the same events");
    println!(
        "mutations: {ok} x 200, {refused} x 400, {} distinct events published (each parsed strictly)",
        distinct(&k)
    );
    row(
        "300 random mutations of a signed envelope (seconds: mean per request; published: distinct events of the 200s, all strict JSON)",
        &format!("{ok} x 200, {refused} x 400"),
        held / 300,
        distinct(&k),
        true,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_signatures_never_reach_the_log() {
    let _shared = SHARED_BROKERS.read().await;
    let exchange = unique("x-hostile");
    let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
    let config = format!(
        "{}\n{}{}{}",
        server_toml(""),
        webhook_toml("hostile", KEY),
        rabbit_sink_toml("rabbit", &exchange),
        route_all_toml(&["rabbit"], "")
    );
    let (_dir, path) = write_config(&config);
    let served = Served::start(&path, &[("RUST_LOG", "debug")]).await;
    let body = batch(&[event("task_created", "log")]);
    let mut signatures = Vec::new();
    for key in [KEY, "wrong-key", "test-webhook"] {
        signatures.push(c360_bridge::webhook::signature::sign(key.as_bytes(), &body));
        let r = reqwest::Client::new()
            .post(served.url("/hook"))
            .header("x-c360-signature", signatures.last().unwrap())
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), if key == KEY { 200 } else { 401 });
    }
    let mut s = TcpStream::connect(served.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let _ = read_to_close(&mut s, Duration::from_secs(10)).await;
    let log = served.stop().await;
    assert_eq!(queue.drain().await.len(), 1, "only the valid batch");
    assert!(!log.contains(KEY), "the key is in the log");
    for sig in &signatures {
        assert!(!log.contains(sig.as_str()), "a signature is in the log");
    }
    row(
        "keys and signatures in the log (debug level)",
        "absent",
        Duration::ZERO,
        0,
        true,
    );
}
