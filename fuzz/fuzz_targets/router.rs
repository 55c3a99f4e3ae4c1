//! Fuzz target: the whole router with an in-memory sink. Never a panic; a 200 only with a
//! valid signature; what was published is at most max_events events, each a byte-exact slice
//! of the body that parses again; nothing is published on any other answer or for the test key.
#![no_main]

use bytes::Bytes;
use c360_bridge::http::router;
use c360_bridge::webhook::signature::sign;
use c360_bridge::{App, config};
use c360_sinks::memory::MemorySink;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

const KEY: &str = "fuzz-key";
const MAX_EVENTS: usize = 5;

struct World {
    rt: tokio::runtime::Runtime,
    app: Arc<App>,
    sink: Arc<MemorySink>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = std::env::temp_dir().join(format!("c360-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bridge.toml");
        let toml = format!(
            "[[webhooks]]\nname = \"f\"\npath = \"/hook\"\nkeys = [\"{KEY}\"]\nmax_events = {MAX_EVENTS}\n\
             [sinks.mem]\ntype = \"kafka\"\nbootstrap_servers = \"127.0.0.1:1\"\n\
             [[routes]]\nmatch = \"*\"\nsinks = [\"mem\"]\ntopic = \"{{event_class}}\"\n"
        );
        std::fs::write(&path, toml).unwrap();
        let sink = Arc::new(MemorySink::new("mem"));
        let app = rt.block_on(async {
            let cfg = config::load(Some(&path)).unwrap();
            App::with_sinks(cfg, Some(&path), vec![sink.clone()]).unwrap()
        });
        World { rt, app: Arc::new(app), sink }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let w = world();
    let signature = match mode % 4 {
        0 => Some(sign(KEY.as_bytes(), body)),
        1 => Some(sign(b"test-webhook", body)),
        2 => Some(String::from_utf8_lossy(&body[..body.len().min(44)]).into_owned()),
        _ => None,
    };
    let mut req = http::Request::post("/hook").header("content-type", "application/json");
    if let Some(s) = &signature {
        match http::HeaderValue::from_str(s) {
            Ok(v) => req = req.header("x-c360-signature", v),
            Err(_) => return,
        }
    }
    let req = req.body(axum::body::Body::from(Bytes::copy_from_slice(body))).unwrap();
    w.sink.take();
    let resp = w.rt.block_on(router(Arc::new(c360_bridge::live::Live::new(w.app.clone())), true).oneshot(req)).unwrap();
    let status = resp.status().as_u16();
    let new = &w.sink.take()[..];
    assert!(matches!(status, 200 | 400 | 401 | 413), "status {status}");
    if status == 200 {
        assert!(mode % 4 <= 1 || sign(KEY.as_bytes(), body) == signature.clone().unwrap_or_default(),
            "200 without a valid signature");
    } else {
        assert!(new.is_empty(), "published on {status}");
    }
    if mode % 4 == 1 {
        assert!(new.is_empty(), "the test key never publishes");
    }
    assert!(new.len() <= MAX_EVENTS);
    for m in new {
        let b: &[u8] = &m.body;
        assert!(body.windows(b.len()).any(|win| win == b), "an event is a slice of the body");
        serde_json::from_slice::<serde_json::Value>(b).expect("a published event parses");
    }
});
