//! `check --connect`: what the configured Kafka clusters say of a configuration (reachable, and
//! which topics its routes name for the known event classes are missing), publishing nothing.

use crate::config::{Config, SinkConfig};
use crate::routing::{KNOWN_EVENT_CLASSES, Routes};
use crate::sample;
use c360_sinks::kafka::KafkaSink;
use std::collections::BTreeSet;
use std::time::Duration;

/// How long each cluster may take to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// One sink's line of the report.
#[derive(Debug, PartialEq, Eq)]
pub struct SinkReport {
    pub sink: String,
    /// `None` when the cluster answered; else why not.
    pub failure: Option<String>,
    /// Topics the routes name for the known classes that the cluster does not have.
    pub missing: Vec<String>,
}

/// Connects to every Kafka sink of `config` (blocking) and reports on each.
pub fn kafka_sinks(config: &Config, routes: &Routes) -> Vec<SinkReport> {
    config
        .sinks
        .iter()
        .filter_map(|(name, sink)| match sink {
            SinkConfig::Kafka(k) => Some(kafka_sink(config, routes, name, k)),
            SinkConfig::Rabbitmq(_) => None,
        })
        .collect()
}

fn kafka_sink(
    config: &Config,
    routes: &Routes,
    name: &str,
    cfg: &c360_sinks::kafka::KafkaConfig,
) -> SinkReport {
    let report = |failure: Option<String>, missing| SinkReport {
        sink: name.to_owned(),
        failure,
        missing,
    };
    let sink = match KafkaSink::new(name, cfg, ANSWER_WITHIN) {
        Ok(s) => s,
        Err(e) => return report(Some(e.to_string()), Vec::new()),
    };
    if !sink.probe_now(ANSWER_WITHIN) {
        return report(Some("no Kafka broker answered".into()), Vec::new());
    }
    let missing = topics_of(config, routes, name)
        .into_iter()
        .filter(|t| sink.knows_topic(t, ANSWER_WITHIN) == Some(false))
        .collect();
    report(None, missing)
}

/// The topics routes give the known event classes on sink `name`, for every webhook.
fn topics_of(config: &Config, routes: &Routes, name: &str) -> BTreeSet<String> {
    let mut topics = BTreeSet::new();
    for class in KNOWN_EVENT_CLASSES {
        let Some(route) = routes.lookup(class) else {
            continue;
        };
        for t in route.targets.iter().filter(|t| t.sink_name == name) {
            for wh in &config.webhooks {
                let payload = Some(sample::payload_class(class));
                topics.insert(t.topic.render_parts(class, payload, &wh.name));
            }
        }
    }
    topics
}
