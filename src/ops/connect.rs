//! `check --connect`: every sink and the Redis ledger reached with the real credentials, what
//! each says (or why it failed), and the Kafka topics the routes name that are missing;
//! nothing is published.

use crate::config::{Config, LedgerBackend, SinkConfig};
use crate::delivery::routing::{KNOWN_EVENT_CLASSES, Routes};
use crate::ops::sample;
use c360_sinks::kafka::{KafkaConfig, KafkaSink};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long each sink may take to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// One line of the report: a sink, or the ledger.
#[derive(Debug, PartialEq, Eq)]
pub struct Report {
    /// The sink's name, or `ledger`.
    pub name: String,
    /// What answered (`3 brokers, TLS, SCRAM-SHA-512`), or why nothing did.
    pub outcome: Result<String, String>,
    /// Topics the routes name for the known classes that the Kafka cluster does not have.
    pub missing: Vec<String>,
}

/// Connects to every sink and the Redis ledger of `config` (blocking) and reports on each.
pub fn everything(config: &Config, routes: &Routes) -> Vec<Report> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let mut reports: Vec<Report> = config
        .sinks
        .iter()
        .map(|(name, sink)| match (sink, &runtime) {
            // Kafka also lists the topics the routes name that the cluster lacks.
            (SinkConfig::Kafka(k), _) => kafka_sink(config, routes, name, k),
            (other, Ok(rt)) => report(name, rt.block_on(other.kind().probe(name, ANSWER_WITHIN))),
            (_, Err(e)) => report(name, Err(format!("no runtime: {e}"))),
        })
        .collect();
    if config.ledger.backend == LedgerBackend::Redis {
        let outcome = match &runtime {
            Ok(rt) => rt.block_on(crate::delivery::ledger::redis::probe(
                &config.ledger,
                ANSWER_WITHIN,
            )),
            Err(e) => Err(format!("no runtime: {e}")),
        };
        reports.push(report("ledger", outcome));
    }
    reports
}

fn report(name: &str, outcome: Result<String, String>) -> Report {
    Report {
        name: name.to_owned(),
        outcome,
        missing: Vec::new(),
    }
}

fn kafka_sink(config: &Config, routes: &Routes, name: &str, cfg: &KafkaConfig) -> Report {
    let sink = match KafkaSink::new(name, cfg, ANSWER_WITHIN) {
        Ok(s) => s,
        Err(e) => return report(name, Err(e.to_string())),
    };
    let brokers = match sink.probe_now(ANSWER_WITHIN) {
        Ok(n) => n,
        Err(why) => return report(name, Err(why)),
    };
    let missing = topics_of(config, routes, name)
        .into_iter()
        .filter(|t| sink.knows_topic(t, ANSWER_WITHIN) == Some(false))
        .collect();
    let plural = if brokers == 1 { "" } else { "s" };
    Report {
        name: name.to_owned(),
        outcome: Ok(format!(
            "{brokers} broker{plural}, {}",
            cfg.describe_security()
        )),
        missing,
    }
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
