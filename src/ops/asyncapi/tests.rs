//! Unit tests of the AsyncAPI document: channels per destination, parameters, no credentials.

use super::*;

fn doc(toml: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let config = crate::config::load(Some(&path)).unwrap();
    let routes = Routes::compile(&config, Some(&path)).unwrap();
    let dead_letter = DeadLetter::compile(&config, Some(&path)).unwrap();
    document(&config, &routes, dead_letter.as_ref())
}

const FANOUT: &str = r#"
[[webhooks]]
name = "main"
path = "/h"
keys = ["k"]
[sinks.kafka]
type = "kafka"
bootstrap_servers = "b1:9092,b2:9092"
[sinks.rabbit]
type = "rabbitmq"
url = "amqp://user:s3cret@mq.example:5673/prod"
exchange = "events"
cloudevents = false
[[routes]]
match = "reportjob_*"
sinks = ["rabbit"]
[[routes]]
match = "*"
sinks = ["kafka", "rabbit"]
topic = "c360.{event_class}"
key = "/payload/new/id"
"#;

#[test]
fn one_channel_per_sink_and_template_with_the_classes_that_reach_it() {
    let d = doc(FANOUT);
    let channels = d["channels"].as_object().unwrap();
    let ids: Vec<&str> = channels.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        [
            "kafka_c360__event_class_",
            "rabbit__event_class_",
            "rabbit_c360__event_class_"
        ]
    );
    let report = &channels["rabbit__event_class_"];
    assert_eq!(report["address"], "{event_class}");
    assert_eq!(
        report["parameters"]["event_class"]["enum"],
        json!(["reportjob_updated"])
    );
    let all = &channels["kafka_c360__event_class_"]["parameters"]["event_class"]["enum"];
    assert_eq!(
        all.as_array().unwrap().len(),
        10,
        "every known class but reportjob_updated"
    );
    assert_eq!(report["bindings"]["amqp"]["exchange"]["name"], "events");
    assert_eq!(report["bindings"]["amqp"]["exchange"]["vhost"], "prod");
    assert_eq!(d["operations"].as_object().unwrap().len(), 3);
    let receive = &d["operations"]["receive_rabbit__event_class_"];
    assert_eq!(receive["action"], "receive");
    assert_eq!(receive["bindings"]["amqp"]["cc"], json!(["{event_class}"]));
}

#[test]
fn servers_carry_no_credentials_and_headers_follow_the_sink() {
    let d = doc(FANOUT);
    let text = d.to_string();
    assert!(
        !text.contains("s3cret") && !text.contains("user:"),
        "{text}"
    );
    assert_eq!(d["servers"]["rabbit"]["host"], "mq.example:5673");
    assert_eq!(d["servers"]["kafka"]["host"], "b1:9092");
    let kafka = &d["channels"]["kafka_c360__event_class_"]["messages"]["event"];
    assert!(kafka["headers"]["properties"]["ce_id"].is_object());
    assert!(
        kafka["bindings"]["kafka"]["key"]["description"]
            .as_str()
            .unwrap()
            .contains("/payload/new/id")
    );
    let rabbit = &d["channels"]["rabbit_c360__event_class_"]["messages"]["event"];
    let headers = rabbit["headers"]["properties"].as_object().unwrap();
    assert!(headers.contains_key("c360-event-id"));
    assert!(
        headers.keys().all(|h| !h.starts_with("ce-")),
        "cloudevents = false"
    );
}

#[test]
fn the_dead_letter_has_its_own_channel_with_the_headers_that_say_why() {
    let d = doc(&format!(
        "{FANOUT}\n[dead_letter]\nsink = \"rabbit\"\ntopic = \"dead.{{webhook}}\"\nmax_bytes = 1000\n"
    ));
    let ch = &d["channels"]["dead-letter"];
    assert_eq!(ch["address"], "dead.{webhook}");
    assert_eq!(ch["servers"][0]["$ref"], "#/servers/rabbit");
    assert_eq!(ch["parameters"]["webhook"]["enum"], json!(["main"]));
    assert_eq!(ch["bindings"]["amqp"]["exchange"]["name"], "events");
    let headers = &ch["messages"]["event"]["headers"];
    for h in [
        "c360-dead-letter-reason",
        "c360-original-sink",
        "c360-original-destination",
        "c360-truncated",
        "c360-original-bytes",
        "c360-event-id",
    ] {
        assert!(headers["properties"][h].is_object(), "{h} in {headers}");
    }
    assert!(
        headers["required"]
            .as_array()
            .unwrap()
            .contains(&json!("c360-dead-letter-reason"))
    );
    let payload = ch["messages"]["event"]["payload"]["description"]
        .as_str()
        .unwrap();
    assert!(payload.contains("1000"), "{payload}");
    let receive = &d["operations"]["receive_dead-letter"];
    assert_eq!(receive["channel"]["$ref"], "#/channels/dead-letter");
    assert_eq!(receive["bindings"]["amqp"]["cc"], json!(["dead.{webhook}"]));
    assert!(doc(FANOUT)["channels"].get("dead-letter").is_none());
}

#[test]
fn a_nats_sink_has_subject_channels_its_headers_and_no_credentials() {
    let d = doc(r#"
[[webhooks]]
name = "main"
path = "/h"
keys = ["k"]
[sinks.nats]
type = "nats"
url = "tls://bridge:s3cret@nats.example:4443, tls://nats2.example:4443"
create_stream = { name = "CATALOG360", subjects = ["catalog360.>"] }
[[routes]]
match = "*"
sinks = ["nats"]
key = "/payload/new/id"
[dead_letter]
sink = "nats"
topic = "catalog360.dead-letter"
"#);
    let text = d.to_string();
    assert!(!text.contains("s3cret"), "no password in the document");
    let server = &d["servers"]["nats"];
    assert_eq!(server["host"], "nats.example:4443");
    assert_eq!(server["protocol"], "nats");
    let ch = &d["channels"]["nats_catalog360__event_class_"];
    assert_eq!(ch["address"], "catalog360.{event_class}");
    assert!(ch["description"].as_str().unwrap().contains("NATS subject"));
    let headers = &ch["messages"]["event"]["headers"];
    for h in [
        "Nats-Msg-Id",
        "content-type",
        "ce-id",
        "ce-type",
        "c360-event-id",
    ] {
        assert!(headers["properties"].get(h).is_some(), "{h}: {headers}");
    }
    assert!(
        headers["required"]
            .as_array()
            .unwrap()
            .contains(&json!("Nats-Msg-Id"))
    );
    let op = &d["operations"]["receive_nats_catalog360__event_class_"];
    assert_eq!(op["bindings"]["nats"]["bindingVersion"], "0.1.0");
    assert_eq!(
        d["channels"]["dead-letter"]["address"],
        "catalog360.dead-letter"
    );
}
