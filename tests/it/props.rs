//! The router fuzz target's invariants (fuzz/fuzz_targets/router.rs) as a property test over
//! real HTTP, with an in-memory sink: never a 5xx, a 200 only with a valid signature, nothing
//! published for the test key or on any other answer, at most max_events events, each a
//! byte-exact slice of the body that parses again with serde_json.

use crate::harness::*;
use c360_bridge::webhook::signature::sign;
use c360_bridge::{App, config};
use c360_sinks::memory::MemorySink;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::Arc;

const KEY: &str = "prop-key";
const MAX_EVENTS: usize = 3;

const SEED: &str = r#"{"events":[{"event_class":"task_created","payload_class":"task","payload":{"new":{"id":"a\"b","n":[1.5e3,-2,true,null,{"d":[[[]]]}]}}},{"event_class":"e2","payload":{"old":{"id":"\ud83d\ude00"}}}],"extra":{"x":[1]}}"#;

/// A batch body: the seed with a few bytes replaced, inserted or removed.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 0..5).prop_map(
        |edits| {
            let mut b = SEED.as_bytes().to_vec();
            for (at, byte, kind) in edits {
                let i = at.index(b.len() + 1);
                match kind {
                    0 if i < b.len() => b[i] = byte,
                    1 => b.insert(i, byte),
                    _ if i < b.len() => {
                        b.remove(i);
                    }
                    _ => {}
                }
            }
            b
        },
    )
}

fn app(sink: Arc<MemorySink>) -> App {
    let toml = format!(
        "[[webhooks]]\nname = \"p\"\npath = \"/hook\"\nkeys = [\"{KEY}\"]\nmax_events = {MAX_EVENTS}\n[sinks.mem]\ntype = \"kafka\"\nbootstrap_servers = \"127.0.0.1:1\"\n{}",
        route_all_toml(&["mem"], "topic = \"{event_class}\"\n")
    );
    let (_dir, path) = write_config(&toml);
    let path = std::path::Path::new(&path);
    let cfg = config::load(Some(path)).unwrap();
    App::with_sinks(cfg, Some(path), vec![sink]).unwrap()
}

/// Checks one request's answer and what it published against the invariants.
fn holds(mode: u8, body: &[u8], status: u16, published: &[c360_sinks::Message]) {
    assert!(matches!(status, 200 | 400 | 401), "status {status}");
    if status != 200 || mode == 1 {
        assert!(published.is_empty(), "published on {status} / test key");
    }
    if status == 200 {
        assert!(mode <= 1, "200 without a valid signature");
    }
    assert!(published.len() <= MAX_EVENTS);
    for m in published {
        let b: &[u8] = &m.body;
        assert!(
            body.windows(b.len()).any(|w| w == b),
            "an event is a slice of the body"
        );
        serde_json::from_slice::<serde_json::Value>(b).expect("a published event parses");
    }
}

#[test]
fn the_router_keeps_its_invariants_for_mutated_and_badly_signed_batches() {
    let rt = c360_bridge::runtime(2).unwrap();
    let sink = Arc::new(MemorySink::new("mem"));
    let bridge = rt.block_on(Bridge::from_app(app(sink.clone())));
    let url = bridge.url("/hook");
    let mut runner = TestRunner::new(Config::with_cases(400));
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&(0..4u8, body()), |(mode, body)| {
            let sig = match mode {
                0 => Some(sign(KEY.as_bytes(), &body)),
                1 => Some(sign(b"test-webhook", &body)),
                2 => Some(sign(b"another-key", &body)),
                _ => None,
            };
            let before = sink.published().len();
            let reply = rt.block_on(async {
                let mut req = reqwest::Client::new().post(&url).body(body.clone());
                if let Some(s) = &sig {
                    req = req.header("x-c360-signature", s);
                }
                req.send().await.unwrap().status().as_u16()
            });
            let published = sink.published();
            holds(mode, &body, reply, &published[before..]);
            accepted.fetch_add(
                usize::from(reply == 200),
                std::sync::atomic::Ordering::Relaxed,
            );
            Ok(())
        })
        .unwrap();
    let accepted = accepted.into_inner();
    println!("router property: 400 cases, {accepted} answered 200");
    assert!(
        accepted > 0,
        "some cases must be accepted to check anything"
    );
    drop(bridge);
}
