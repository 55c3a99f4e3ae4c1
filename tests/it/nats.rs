//! NATS JetStream path against a real nats-server: PubAcks, `Nats-Msg-Id` dedupe, no stream,
//! `create_stream`, a server restart, the dead letter, and fan-out with Kafka.

use crate::harness::*;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const KEY: &str = "nats-key";

/// The suite's nats-server (scripts/brokers.sh starts it with JetStream).
pub fn nats_url() -> String {
    std::env::var("C360_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// `[sinks.NAME]` for NATS at `url`, plus `extra` lines.
fn nats_sink_toml(name: &str, url: &str, extra: &str) -> String {
    format!("[sinks.{name}]\ntype = \"nats\"\nurl = \"{url}\"\n{extra}")
}

/// A bridge config with webhook `wh`, the NATS sink `nats` (`extra` lines) and `routes`.
fn config(url: &str, extra: &str, routes: &str) -> String {
    format!(
        "[server]\nack_timeout = \"3s\"\n{}{}{routes}",
        webhook_toml("wh", KEY),
        nats_sink_toml("nats", url, extra)
    )
}

/// A catch-all route to `sinks` whose destination is `{prefix}.{event_class}`.
fn route_to(sinks: &[&str], prefix: &str) -> String {
    route_all_toml(
        sinks,
        &format!("topic = \"{prefix}.{{event_class}}\"\nkey = \"/payload/new/id\"\n"),
    )
}

/// A JetStream context on `url` (the suite's server, or a test's own).
async fn js(url: &str) -> jetstream::Context {
    let addr = url.trim_start_matches("nats://");
    require(addr, "nats-server");
    let client = async_nats::connect(url).await.expect("NATS connects");
    jetstream::new(client)
}

/// Creates stream `name` capturing `subjects` (file storage, the default 2 min duplicate window).
async fn create_stream(url: &str, name: &str, subjects: &[String]) {
    js(url)
        .await
        .create_stream(stream::Config {
            name: name.to_owned(),
            subjects: subjects.to_vec(),
            ..Default::default()
        })
        .await
        .expect("create stream");
}

/// One message as a consumer of the stream read it.
#[derive(Debug)]
pub struct Stored {
    pub subject: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// Every message of stream `name`, read with an ephemeral pull consumer from the first one;
/// empty when the stream does not exist.
async fn read_stream(url: &str, name: &str) -> Vec<Stored> {
    let js = js(url).await;
    let Ok(mut stream) = js.get_stream(name).await else {
        return Vec::new();
    };
    let total = stream.info().await.expect("stream info").state.messages as usize;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut out = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while out.len() < total {
        assert!(Instant::now() < until, "read {} of {total}", out.len());
        let mut batch = consumer
            .fetch()
            .max_messages(total - out.len())
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("fetch");
        while let Some(m) = batch.next().await {
            let m = m.expect("message");
            let headers = m
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .map(|(k, v)| {
                    let v = v.first().map(|v| v.as_str().to_owned()).unwrap_or_default();
                    (k.to_string(), v)
                })
                .collect();
            out.push(Stored {
                subject: m.subject.to_string(),
                headers,
                body: m.payload.to_vec(),
            });
        }
    }
    out
}

/// A fresh stream capturing `{prefix}.>`, named after the prefix.
async fn stream_for(url: &str, prefix: &str) -> String {
    let name = stream_name(prefix);
    create_stream(url, &name, &[format!("{prefix}.>")]).await;
    name
}

/// A stream name for `prefix` (no dots or dashes in stream names, by convention).
fn stream_name(prefix: &str) -> String {
    prefix.replace(['.', '-'], "_").to_uppercase()
}

fn ten_events() -> Vec<String> {
    let classes = ["task_created", "assetitem_updated", "shipment_created"];
    (0..10)
        .map(|i| event(classes[i % 3], &format!("id-{i}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_lands_in_the_stream_with_every_header() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("nats");
    let stream = stream_for(&nats_url(), &prefix).await;
    let bridge = Bridge::start(&config(&nats_url(), "", &route_to(&["nats"], &prefix))).await;
    let events = ten_events();
    let r = post(&bridge.url("/hook"), &batch(&events), Some(KEY)).await;
    assert_eq!(
        (r.status, r.json),
        (200, serde_json::json!({"accepted": 10}))
    );
    let got = read_stream(&nats_url(), &stream).await;
    assert_eq!(got.len(), 10);
    for (m, sent) in got.iter().zip(&events) {
        assert_eq!(m.body, sent.as_bytes(), "bodies byte-exact, in batch order");
        let h = &m.headers;
        let class = &h["c360-event-class"];
        assert_eq!(m.subject, format!("{prefix}.{class}"));
        assert_eq!(h["Nats-Msg-Id"], h["c360-event-id"]);
        assert_eq!(h["c360-webhook"], "wh");
        assert_eq!(&h["c360-payload-class"], class.split('_').next().unwrap());
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["ce-specversion"], "1.0");
        assert_eq!(h["ce-id"], h["c360-event-id"]);
        assert_eq!(h["ce-source"], "/catalog360/wh");
        assert_eq!(h["ce-type"], format!("com.catalog360.{class}"));
        assert!(h["ce-time"].ends_with('Z'), "{}", h["ce-time"]);
        let id: serde_json::Value = serde_json::from_str(sent).unwrap();
        assert_eq!(
            h["ce-subject"],
            id["payload"]["new"]["id"].as_str().unwrap()
        );
    }
    let ids: std::collections::BTreeSet<_> =
        got.iter().map(|m| &m.headers["c360-event-id"]).collect();
    assert_eq!(ids.len(), 10);
    println!(
        "read from the stream: subject {}, headers {:?}, body {}",
        got[0].subject,
        got[0].headers,
        String::from_utf8_lossy(&got[0].body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloudevents_sdk_decodes_what_the_stream_holds_and_a_sink_can_leave_them_out() {
    let _shared = SHARED_BROKERS.read().await;
    let (with_ce, without_ce) = (unique("nats-ce"), unique("nats-plain"));
    let s_ce = stream_for(&nats_url(), &with_ce).await;
    let s_plain = stream_for(&nats_url(), &without_ce).await;
    let config = format!(
        "{}{}{}{}{}",
        webhook_toml("wh", KEY),
        nats_sink_toml("ce", &nats_url(), ""),
        nats_sink_toml("plain", &nats_url(), "cloudevents = false\n"),
        route_to(&["ce"], &with_ce).replace("match = \"*\"", "match = \"task_*\""),
        route_to(&["plain"], &without_ce),
    );
    let bridge = Bridge::start(&config).await;
    let events = [
        event("task_created", "t-1"),
        event("shipment_created", "s-2"),
    ];
    let before = crate::consumers::now_us();
    let r = post(&bridge.url("/hook"), &batch(&events), Some(KEY)).await;
    let after = crate::consumers::now_us();
    assert_eq!(r.status, 200, "{:?}", r.json);

    let got = read_stream(&nats_url(), &s_ce).await;
    assert_eq!(got.len(), 1);
    use base64::Engine;
    let messages: Vec<serde_json::Value> = got
        .iter()
        .map(|m| {
            serde_json::json!({
                "headers": m.headers,
                "body_b64": base64::engine::general_purpose::STANDARD.encode(&m.body),
            })
        })
        .collect();
    let decoded = crate::consumers::sdk_decode_nats(&serde_json::json!(messages)).await;
    crate::consumers::assert_decoded(&decoded[0], &events[0], "/catalog360/wh", (before, after));

    let plain = read_stream(&nats_url(), &s_plain).await;
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0].body, events[1].as_bytes());
    assert!(
        plain[0].headers.keys().all(|h| !h.starts_with("ce-")),
        "cloudevents = false: no ce- header in {:?}",
        plain[0].headers
    );
    assert_eq!(
        plain[0].headers["Nats-Msg-Id"],
        plain[0].headers["c360-event-id"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batch_through_a_second_bridge_is_stored_once() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("nats-dup");
    let stream = stream_for(&nats_url(), &prefix).await;
    let config = config(&nats_url(), "", &route_to(&["nats"], &prefix));
    // Two bridges, each with a ledger of its own in memory: the second knows nothing of what
    // the first published, so only JetStream's dedupe on Nats-Msg-Id keeps the stream whole.
    let first = Bridge::start(&config).await;
    let second = Bridge::start(&config).await;
    let body = batch(&ten_events());
    assert_eq!(
        post(&first.url("/hook"), &body, Some(KEY)).await.status,
        200
    );
    assert_eq!(read_stream(&nats_url(), &stream).await.len(), 10);
    let again = post(&second.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(
        (again.status, again.json),
        (200, serde_json::json!({"accepted": 10})),
        "a PubAck saying duplicate is a confirm"
    );
    let got = read_stream(&nats_url(), &stream).await;
    println!(
        "sent 20 (the same 10 twice, through two bridges), stored {}",
        got.len()
    );
    assert_eq!(got.len(), 10, "stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_without_a_stream_gets_503_and_create_stream_makes_it_200() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("nats-none");
    let name = stream_name(&prefix);
    let routes = route_to(&["nats"], &prefix);
    let bridge = Bridge::start(&config(&nats_url(), "", &routes)).await;
    let body = batch(&ten_events()[..3]);
    let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(r.status, 503, "{:?}", r.json);
    assert_eq!(r.json["error"], "unroutable", "{:?}", r.json);
    assert!(read_stream(&nats_url(), &name).await.is_empty());
    assert!(
        r.json["message"]
            .as_str()
            .unwrap()
            .contains("no JetStream stream"),
        "{:?}",
        r.json
    );
    assert!(r.retry_after.is_some());
    bridge.shutdown().await;

    let create = format!(
        "create_stream = {{ name = \"{name}\", subjects = [\"{prefix}.>\"], duplicate_window = \"1m\" }}\n"
    );
    let bridge = Bridge::start(&config(&nats_url(), &create, &routes)).await;
    let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let got = read_stream(&nats_url(), &name).await;
    assert_eq!(
        got.len(),
        3,
        "the 503 stored nothing; the 200 stored its three"
    );
    let info = js(&nats_url())
        .await
        .get_stream(&name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.duplicate_window, Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_illegal_subject_goes_to_a_nats_dead_letter() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("nats-dl");
    let stream = stream_for(&nats_url(), &prefix).await;
    let dead = format!("{prefix}.dead-letter.{{webhook}}");
    let config = format!(
        "{}[dead_letter]\nsink = \"nats\"\ntopic = \"{dead}\"\n",
        config(&nats_url(), "", &route_to(&["nats"], &prefix))
    );
    let bridge = Bridge::start(&config).await;
    // A space cannot be in a subject: the event can never be published where it was going.
    let bad = r#"{"event_class":"task done","payload":{"new":{"id":"x"}}}"#.to_owned();
    let good = event("task_created", "g");
    let r = post(
        &bridge.url("/hook"),
        &batch(&[good.clone(), bad.clone()]),
        Some(KEY),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let got = read_stream(&nats_url(), &stream).await;
    assert_eq!(got.len(), 2);
    let letter = got
        .iter()
        .find(|m| m.subject == format!("{prefix}.dead-letter.wh"))
        .expect("the dead letter");
    assert_eq!(letter.body, bad.as_bytes());
    let h = &letter.headers;
    assert!(
        h["c360-dead-letter-reason"].starts_with("illegal_destination"),
        "{h:?}"
    );
    assert_eq!(h["c360-original-sink"], "nats");
    assert_eq!(
        h["c360-original-destination"],
        format!("{prefix}.task done")
    );
    assert_eq!(h["Nats-Msg-Id"], h["c360-event-id"]);
    assert!(got.iter().any(|m| m.body == good.as_bytes()));

    // A dead-letter subject no stream captures is a transient failure: 503, nothing stored.
    let lost = format!(
        "{}[dead_letter]\nsink = \"nats\"\ntopic = \"{}.dead\"\n",
        config_without_dead_letter(&prefix),
        unique("nowhere")
    );
    let bridge = Bridge::start(&lost).await;
    let r = post(&bridge.url("/hook"), &batch(&[bad]), Some(KEY)).await;
    assert_eq!(r.status, 503, "{:?}", r.json);
    assert_eq!(
        read_stream(&nats_url(), &stream).await.len(),
        2,
        "nothing more stored"
    );
}

fn config_without_dead_letter(prefix: &str) -> String {
    config(&nats_url(), "", &route_to(&["nats"], prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_kafka_and_nats_answers_200_only_when_both_confirmed() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("nats-fan");
    let topic = format!("{prefix}.task_updated");
    create_topics(&kafka(), std::slice::from_ref(&topic), 1).await;
    let config = format!(
        "[server]\nack_timeout = \"3s\"\n{}{}{}{}",
        webhook_toml("wh", KEY),
        kafka_sink_toml("kafka", &kafka()),
        nats_sink_toml("nats", &nats_url(), ""),
        route_to(&["kafka", "nats"], &prefix)
    );
    let bridge = Bridge::start(&config).await;
    let e = event("task_updated", "9");
    let body = batch(std::slice::from_ref(&e));
    let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(
        r.status, 503,
        "Kafka confirmed, NATS has no stream: {:?}",
        r.json
    );
    assert_eq!(
        consume(&kafka(), &topic, 1).await.len(),
        1,
        "Kafka confirmed"
    );

    let stream = stream_for(&nats_url(), &prefix).await;
    assert!(
        read_stream(&nats_url(), &stream).await.is_empty(),
        "nothing of the 503 in NATS"
    );
    let r = post(&bridge.url("/hook"), &body, Some(KEY)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let k = consume(&kafka(), &topic, 1).await;
    let n = read_stream(&nats_url(), &stream).await;
    assert_eq!((k.len(), n.len()), (1, 1), "the resend skipped Kafka");
    assert_eq!(
        (k[0].payload.as_slice(), n[0].body.as_slice()),
        (e.as_bytes(), e.as_bytes())
    );
    assert_eq!(k[0].headers["c360-event-id"], n[0].headers["c360-event-id"]);
}

/// A nats-server of a test's own (its own port and store), stopped when dropped.
struct OwnServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnServer {
    async fn start() -> OwnServer {
        let mut s = OwnServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("store dir"),
            child: None,
        };
        s.restart().await;
        s
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts nats-server (again, on the same port and store) and waits until JetStream answers.
    async fn restart(&mut self) {
        let child = std::process::Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server runs (scripts/brokers.sh installs it)");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(c) = async_nats::connect(self.url()).await
                && let Ok(r) = c.request("$JS.API.INFO", "".into()).await
                && !String::from_utf8_lossy(&r.payload).contains("\"error\"")
            {
                return;
            }
            assert!(Instant::now() < until, "own nats-server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops it as a restart or an operator would (SIGTERM) and waits until it is gone.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let until = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > until {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_gets_503_within_the_deadline_then_200_without_a_bridge_restart() {
    let mut server = OwnServer::start().await;
    let prefix = unique("nats-restart");
    let name = stream_name(&prefix);
    let create = format!("create_stream = {{ name = \"{name}\", subjects = [\"{prefix}.>\"] }}\n");
    let bridge = Bridge::start(&config(
        &server.url(),
        &create,
        &route_to(&["nats"], &prefix),
    ))
    .await;
    let sent: Vec<String> = (0..30)
        .map(|i| event("task_created", &format!("r-{i}")))
        .collect();
    let mut confirmed = Vec::new();
    let first = batch(&sent[..10]);
    assert_eq!(
        post(&bridge.url("/hook"), &first, Some(KEY)).await.status,
        200
    );
    confirmed.extend_from_slice(&sent[..10]);

    server.stop();
    let took = wait_not_ready_at(&bridge.url(""), Duration::from_secs(10)).await;
    let ready = reqwest::get(bridge.url("/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(ready.contains("nats"), "/readyz names the sink: {ready}");
    let started = Instant::now();
    let r = post(&bridge.url("/hook"), &batch(&sent[10..20]), Some(KEY)).await;
    assert_eq!(r.status, 503, "{:?}", r.json);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered within the ack deadline"
    );
    println!("not ready {took:?} after the stop; /readyz: {ready}");

    server.restart().await;
    bridge.wait_ready(Duration::from_secs(20)).await;
    let r = post(&bridge.url("/hook"), &batch(&sent[20..]), Some(KEY)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    confirmed.extend_from_slice(&sent[20..]);

    let stored: Vec<Vec<u8>> = read_stream(&server.url(), &name)
        .await
        .into_iter()
        .map(|m| m.body)
        .collect();
    for c in &confirmed {
        assert!(
            stored.contains(&c.as_bytes().to_vec()),
            "a 200 was lost: {c}"
        );
    }
    // The 503 batch was never sent while the server was down (publishes fail fast): it is
    // not in the stream either.
    assert_eq!(stored.len(), 20, "only the confirmed batches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_reaches_nats_and_says_why_not() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("nats-check");
    let down = format!("nats://127.0.0.1:{}", free_port());
    let text = format!(
        "{}{}{}{}",
        webhook_toml("wh", KEY),
        nats_sink_toml("nats", &nats_url(), ""),
        nats_sink_toml("gone", &down, ""),
        route_to(&["nats"], &prefix)
    );
    let (_dir, path) = write_config(&text);
    let (code, out, err) = run(&["check", "--config", &path, "--connect"], None);
    assert_eq!(code, 1, "one sink fails: {out}{err}");
    let all = format!("{out}{err}");
    assert!(
        all.contains("nats: ok (nats-server ") && all.contains("JetStream, plaintext, no auth"),
        "{all}"
    );
    assert!(all.contains("gone: cannot connect"), "{all}");
}

/// With traces on, a NATS message carries the `traceparent` of its PRODUCER span: the caller's
/// trace id, a span id of its own, sampled. (The collector here is down: spans are dropped,
/// the messages still carry their context.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_batch_puts_its_trace_context_on_every_nats_message() {
    let _shared = SHARED_BROKERS.read().await;
    let prefix = unique("nats-traced");
    let stream = stream_for(&nats_url(), &prefix).await;
    let telemetry = format!(
        "[telemetry]\notlp_endpoint = \"http://127.0.0.1:{}\"\nprotocol = \"http/protobuf\"\n",
        free_port()
    );
    let bridge = Bridge::start(&format!(
        "{telemetry}{}",
        config(&nats_url(), "", &route_to(&["nats"], &prefix))
    ))
    .await;
    let (trace_id, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let body = batch(&ten_events()[..3]);
    let r = reqwest::Client::new()
        .post(bridge.url("/hook"))
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .header(
            "X-C360-Signature",
            c360_bridge::webhook::signature::sign(KEY.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = read_stream(&nats_url(), &stream).await;
    assert_eq!(got.len(), 3);
    let mut spans = std::collections::BTreeSet::new();
    for m in &got {
        let tp = m.headers.get("traceparent").expect("a traceparent header");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(
            (parts[0], parts[1], parts[3]),
            ("00", trace_id, "01"),
            "{tp}"
        );
        assert_ne!(parts[2], parent, "the message's own PRODUCER span");
        spans.insert(parts[2].to_owned());
    }
    assert_eq!(spans.len(), 3, "one PRODUCER span per message");
}
