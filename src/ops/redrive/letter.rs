//! A dead letter read back: its bytes and headers, and the jobs that publish it again where the
//! configuration's routes send it now, with its own event id and headers (the dead-letter ones
//! dropped).

use crate::app::App;
use crate::delivery::ingest;
use crate::delivery::ledger::Subject;
use crate::delivery::publish::Job;
use crate::webhook::envelope;
use crate::webhook::event_id::EventId;
use bytes::Bytes;
use c360_sinks::EventMeta;
use c360_sinks::cloudevents::{BatchAttributes, CloudEvent};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

/// One message of the dead-letter destination.
#[derive(Debug, Clone)]
pub struct Letter {
    pub body: Bytes,
    /// Its headers by name (values as text).
    pub headers: BTreeMap<String, String>,
    /// When the broker took it (Kafka: the record's timestamp), if known.
    pub time: Option<SystemTime>,
}

/// Why a letter is not published again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unfit {
    /// `c360-truncated: true`: the body is not the event any more.
    #[error("truncated: the dead letter holds only the first bytes of the event")]
    Truncated,
    /// Not a dead letter of this bridge (a header missing, a body that is no event).
    #[error("not a dead letter of c360-bridge: {0}")]
    Foreign(String),
    /// The routes give it no destination now.
    #[error("{0}")]
    Unroutable(String),
}

impl Letter {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The event id, for reports (`?` when the header is missing).
    pub fn id(&self) -> &str {
        self.header("c360-event-id").unwrap_or("?")
    }

    /// The jobs that publish this event where `app`'s routes send its class.
    pub fn jobs(&self, app: &App) -> Result<Vec<Job>, Unfit> {
        if self.header("c360-truncated") == Some("true") {
            return Err(Unfit::Truncated);
        }
        let need = |name: &str| {
            self.header(name)
                .ok_or_else(|| Unfit::Foreign(format!("no {name} header")))
        };
        let id: EventId = need("c360-event-id")?.parse().map_err(Unfit::Foreign)?;
        let webhook = need("c360-webhook")?;
        let wrapped = [b"{\"events\":[".as_slice(), &self.body, b"]}"].concat();
        let events = envelope::split(&wrapped, 1).map_err(|e| Unfit::Foreign(e.to_string()))?;
        let event = events
            .first()
            .ok_or_else(|| Unfit::Foreign("an empty body".into()))?;
        let route = app.routes.lookup(&event.event_class).ok_or_else(|| {
            Unfit::Unroutable(format!("no route for event_class {:?}", event.event_class))
        })?;
        let meta = Arc::new(EventMeta {
            id: id.to_string(),
            event_class: event.event_class.clone(),
            payload_class: event.payload_class.clone(),
            webhook: webhook.into(),
            cloudevent: Some(self.cloudevent(app, webhook, &event.event_class)),
            dead_letter: None,
        });
        let subject = Subject::Event(id);
        route
            .targets
            .iter()
            .map(|t| ingest::event_job(app, 0, event, subject, t, &meta, &self.body))
            .collect::<Result<_, _>>()
            .map_err(|e| Unfit::Unroutable(e.to_string()))
    }

    /// The CloudEvents attributes the letter carried (Kafka's `ce_` or AMQP's `ce-` names),
    /// else those the webhook gives its events now.
    fn cloudevent(&self, app: &App, webhook: &str, class: &str) -> CloudEvent {
        let ce = |attr: &str| {
            self.header(&format!("ce_{attr}"))
                .or_else(|| self.header(&format!("ce-{attr}")))
        };
        let configured = app.webhooks.iter().find(|w| &*w.name == webhook);
        let source = ce("source").map(Arc::from).unwrap_or_else(|| {
            configured.map_or_else(
                || crate::config::default_source(webhook).into(),
                |w| w.ce_source.clone(),
            )
        });
        let time = ce("time").map(Arc::from).unwrap_or_else(|| {
            humantime::format_rfc3339_millis(SystemTime::now())
                .to_string()
                .into()
        });
        CloudEvent {
            ty: ce("type").map_or_else(|| format!("com.catalog360.{class}"), str::to_owned),
            batch: Arc::new(BatchAttributes { source, time }),
        }
    }
}
