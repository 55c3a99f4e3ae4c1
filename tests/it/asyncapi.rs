//! `c360-bridge asyncapi` (the built binary): its channels are exactly `check`'s routing table
//! and dead letter,
//! for every file in config/ and for a config with every placeholder, a merge and dropped classes.

use crate::harness::*;
use c360_bridge::ops::sample::payload_class;
use serde_json::Value;

/// A row of `check`'s routing table.
#[derive(Debug)]
struct Row {
    class: String,
    sink: String,
    topic: String,
    key: String,
}

/// `check`'s routing table (rows after the header, up to the dead-letter line; dropped classes
/// have no row).
fn check_rows(stdout: &str) -> Vec<Row> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("event_class"))
        .skip(1)
        // The table ends where `check` goes on to say what the dead letter is.
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("dead letter:"))
        .filter(|l| !l.contains("(dropped"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 4, "row {l:?}");
            Row {
                class: f[0].into(),
                sink: f[1].into(),
                topic: f[2].into(),
                key: f[3].into(),
            }
        })
        .collect()
}

/// The sink and topic of `check`'s `dead letter:` line, when a dead letter is configured.
fn dead_letter_line(stdout: &str) -> Option<(String, String)> {
    let rest = stdout
        .lines()
        .find_map(|l| l.strip_prefix("dead letter: sink "))?;
    let (sink, rest) = rest.split_once(", topic ")?;
    let (topic, _) = rest.split_once(", max_bytes")?;
    Some((sink.to_owned(), topic.to_owned()))
}

/// The channel's address with the placeholders of `row` filled in, if `row` is in its enums.
fn renders(channel: &Value, row: &Row, webhook: &str) -> Option<String> {
    let mut address = channel["address"].as_str().unwrap().to_owned();
    let values = [
        ("event_class", row.class.as_str()),
        ("payload_class", payload_class(&row.class)),
        ("webhook", webhook),
    ];
    for (name, value) in values {
        let Some(param) = channel["parameters"].get(name) else {
            continue;
        };
        let allowed = param["enum"].as_array().unwrap();
        if !allowed.iter().any(|v| v == value) {
            return None;
        }
        address = address.replace(&format!("{{{name}}}"), value);
    }
    Some(address)
}

/// Runs `check` and `asyncapi` on `file` and compares them; returns the number of channels.
fn compare(file: &str, env: &[(&str, &str)]) -> usize {
    let (code, table, err) = run_with_env(&["check", "--config", file], None, env);
    assert_eq!(code, 0, "{file}: check failed: {err}");
    let (code, json, err) = run_with_env(
        &["asyncapi", "--config", file, "--format", "json"],
        None,
        env,
    );
    assert_eq!(code, 0, "{file}: asyncapi failed: {err}");
    let doc: Value = serde_json::from_str(&json).expect("asyncapi --format json prints JSON");
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert!(
        !json.contains("guest") && !json.contains("amqp://"),
        "{file}: credentials or URL in the document"
    );
    let webhook = table
        .lines()
        .find_map(|l| l.strip_prefix("webhook "))
        .and_then(|l| l.split_whitespace().next())
        .expect("check names a webhook");
    let channels = doc["channels"].as_object().unwrap();
    let mut used = std::collections::BTreeSet::new();
    for row in check_rows(&table) {
        let server = format!("#/servers/{}", row.sink);
        let matching: Vec<&String> = channels
            .iter()
            .filter(|(_, c)| c["servers"][0]["$ref"] == server.as_str())
            .filter(|(_, c)| renders(c, &row, webhook).as_deref() == Some(row.topic.as_str()))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "{file}: {row:?} is in channels {matching:?} of {json}"
        );
        let channel = &channels[matching[0]];
        if let Some(key) = channel["messages"]["event"]["bindings"]
            .get("kafka")
            .map(|k| &k["key"])
        {
            let described = key["description"].as_str().unwrap_or("");
            assert_eq!(
                row.key != "-",
                described.contains(&row.key),
                "{file}: {row:?} key binding {key}"
            );
        }
        used.insert(matching[0].clone());
    }
    if let Some((sink, topic)) = dead_letter_line(&table) {
        let dl = &channels["dead-letter"];
        assert_eq!(dl["address"], topic.as_str(), "{file}: dead-letter channel");
        assert_eq!(
            dl["servers"][0]["$ref"],
            format!("#/servers/{sink}").as_str()
        );
        used.insert("dead-letter".to_owned());
    }
    let unused: Vec<_> = channels.keys().filter(|id| !used.contains(*id)).collect();
    assert!(
        unused.is_empty(),
        "{file}: channels no known class reaches: {unused:?}"
    );
    let operations = doc["operations"].as_object().unwrap();
    assert_eq!(
        operations.len(),
        channels.len(),
        "{file}: one operation per channel"
    );
    assert!(operations.values().all(|o| o["action"] == "receive"));
    channels.len()
}

#[test]
fn every_config_file_documents_exactly_its_routing_table() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    files.sort();
    assert!(files.len() >= 5, "config/ has its example files: {files:?}");
    for f in &files {
        let n = compare(&f.display().to_string(), &[("C360_WEBHOOK_KEYS", "x")]);
        println!(
            "{}: {n} channel(s), each matching check's routing table",
            f.display()
        );
    }
}

#[test]
fn placeholders_merged_routes_and_dropped_classes() {
    let toml = format!(
        "unrouted = \"drop\"\n[[webhooks]]\nname = \"acme\"\npath = \"/a\"\nkeys = [\"k\"]\nsource = \"urn:acme\"\n{}{}\
         [[routes]]\nmatch = \"task_*\"\nsinks = [\"kafka\"]\ntopic = \"c360.{{webhook}}.{{payload_class}}\"\nkey = \"/payload/new/id\"\n\
         [[routes]]\nmatch = \"shipment_*\"\nsinks = [\"kafka\", \"rabbit\"]\ntopic = \"c360.{{webhook}}.{{payload_class}}\"\n\
         [[routes]]\nmatch = \"assetitem_*\"\nsinks = [\"rabbit\"]\ntopic = \"assets\"\n",
        kafka_sink_toml("kafka", "127.0.0.1:9092"),
        rabbit_sink_toml("rabbit", "ex"),
    );
    let (_dir, file) = write_config(&toml);
    assert_eq!(
        compare(&file, &[]),
        3,
        "kafka c360.{{webhook}}.{{payload_class}}, rabbit twice"
    );
    let (_, json, _) = run(&["asyncapi", "--config", &file, "--format", "json"], None);
    let doc: Value = serde_json::from_str(&json).unwrap();
    let merged = &doc["channels"]["kafka_c360__webhook___payload_class_"];
    assert_eq!(
        merged["parameters"]["webhook"]["enum"],
        serde_json::json!(["acme"])
    );
    let headers = &merged["messages"]["event"]["headers"]["properties"];
    assert_eq!(
        headers["ce_source"]["enum"],
        serde_json::json!(["urn:acme"])
    );
    let (code, yaml, _) = run(&["asyncapi", "--config", &file], None);
    assert_eq!(code, 0);
    assert!(
        yaml.starts_with("asyncapi: \"3.0.0\"\n"),
        "YAML by default: {yaml}"
    );
}
