//! `c360-bridge dev`: an embedded mock Kafka cluster, a demo webhook, and how to try them.

use crate::App;
use crate::config::{
    Config, LedgerConfig, LogConfig, RouteConfig, ServerConfig, SinkConfig, Unrouted, WebhookConfig,
};
use crate::delivery::routing::KNOWN_EVENT_CLASSES;
use c360_sinks::kafka::KafkaConfig;
use rdkafka::mocking::MockCluster;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The path of the demo webhook.
pub const DEMO_PATH: &str = "/webhooks/catalog360";

/// The configuration `dev` serves: one webhook with `key`, every event to `bootstrap`.
pub fn demo_config(listen: &str, bootstrap: &str, key: &str) -> Config {
    let kafka = KafkaConfig {
        bootstrap_servers: bootstrap.to_owned(),
        librdkafka: BTreeMap::new(),
        cloudevents: true,
        create_topics: None,
    };
    Config {
        server: ServerConfig {
            listen: listen.to_owned(),
            ..ServerConfig::default()
        },
        log: LogConfig::default(),
        ledger: LedgerConfig::default(),
        webhooks: vec![WebhookConfig {
            name: "demo".into(),
            path: DEMO_PATH.into(),
            keys: vec![SecretString::from(key.to_owned())],
            keys_env: None,
            keys_file: None,
            env_keys: Vec::new(),
            file_keys: Vec::new(),
            accept_test_ping: true,
            max_events: 100,
            source: None,
            max_depth: crate::webhook::envelope::DEFAULT_MAX_DEPTH,
            allow_from: None,
        }],
        sinks: BTreeMap::from([("kafka".to_owned(), SinkConfig::Kafka(kafka))]),
        routes: vec![RouteConfig {
            pattern: "*".into(),
            sinks: vec!["kafka".into()],
            topic: None,
            key: Some("/payload/new/id".into()),
        }],
        unrouted: Unrouted::Error,
        dead_letter: None,
        telemetry: Default::default(),
        effective: serde_json::Value::Null,
    }
}

/// Why `dev` could not run.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("the embedded Kafka cluster: {0}")]
    Cluster(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Build(#[from] crate::app::BuildError),
}

/// Runs the demo until Ctrl-C. The mock cluster lives on this thread (it is not `Send`).
pub fn run(listen: &str, worker_threads: usize) -> Result<(), DevError> {
    let cluster = MockCluster::new(1)?;
    for class in KNOWN_EVENT_CLASSES {
        cluster.create_topic(&format!("catalog360.{class}"), 3, 1)?;
    }
    let bootstrap = cluster.bootstrap_servers();
    let key = uuid::Uuid::new_v4().simple().to_string();
    let mut config = demo_config(listen, &bootstrap, &key);
    config.server.worker_threads = worker_threads;
    let rt = crate::runtime(worker_threads)?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let url = format!("http://{}{DEMO_PATH}", listener.local_addr()?);
        let app = Arc::new(App::build(config, None)?);
        print_banner(&bootstrap, &url, &key);
        crate::serve(app, listener, None, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        Ok::<_, DevError>(())
    })?;
    // The producer goes first, so it does not log the cluster's disappearance as an error.
    drop(rt);
    drop(cluster);
    Ok(())
}

fn print_banner(bootstrap: &str, url: &str, key: &str) {
    println!(
        "\nc360-bridge dev — an in-memory Kafka cluster; it keeps NOTHING: every message is gone when this stops.\n\n\
         Kafka bootstrap : {bootstrap}\n\
         Webhook URL     : {url}\n\
         Demo key        : {key}\n\
         Topics          : catalog360.<event_class> (11 known classes, 3 partitions each)\n\n\
         Send a signed sample batch (one event of every known class), in another terminal:\n  \
           cargo run --release -- send --url {url} --key {key}\n\n\
         Or by hand with curl and openssl:\n  \
           BODY='{{\"events\":[{{\"event_class\":\"task_created\",\"payload_class\":\"task\",\"payload\":{{\"new\":{{\"id\":\"t-1\"}}}}}}]}}'\n  \
           SIG=$(printf '%s' \"$BODY\" | openssl dgst -sha256 -hmac '{key}' -binary | base64)\n  \
           curl -i -H 'content-type: application/json' -H \"X-C360-Signature: $SIG\" --data-binary \"$BODY\" {url}\n\n\
         Watch a topic (Debian: apt-get install kcat):\n  \
           kcat -b {bootstrap} -C -t catalog360.task_created -o beginning -f '%k %h %s\\n'\n\n\
         Health: curl {base}/readyz   Metrics: curl {base}/metrics   Stop: Ctrl-C\n",
        base = url.trim_end_matches(DEMO_PATH)
    );
}
