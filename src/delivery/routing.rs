//! Routing: `event_class` → [(sink, topic, key)], compiled once at start-up from `[[routes]]`.

use crate::config::{Config, ConfigError, RouteConfig, Unrouted, invalid};
use crate::webhook::envelope::{self, Event};
use c360_sinks::DestinationRules;
use globset::{Glob, GlobMatcher};
use serde_json::value::RawValue;
use std::path::Path;

/// The event classes catalog360 documents; `check` prints the route of each.
pub const KNOWN_EVENT_CLASSES: [&str; 11] = [
    "assetitem_created",
    "assetitem_split",
    "assetitem_updated",
    "purchaseorder_created",
    "purchaseorder_updated",
    "reportjob_updated",
    "shipment_created",
    "shipment_updated",
    "task_completed",
    "task_created",
    "task_updated",
];

/// All routes, in configuration order (first match wins).
#[derive(Debug)]
pub struct Routes {
    routes: Vec<Route>,
    pub unrouted: Unrouted,
}

#[derive(Debug)]
pub struct Route {
    pub pattern: String,
    matcher: GlobMatcher,
    pub targets: Vec<Target>,
}

/// One sink a matching event goes to, with its destination and key.
#[derive(Debug)]
pub struct Target {
    /// Index of the sink in the sorted `[sinks]` table.
    pub sink: usize,
    pub sink_name: String,
    pub topic: Template,
    pub key: Option<KeyPointer>,
}

impl Routes {
    /// Compiles `[[routes]]` against the sinks of `config`; errors name the offending key.
    pub fn compile(config: &Config, file: Option<&Path>) -> Result<Self, ConfigError> {
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, rc)| compile_route(config, rc, i).map_err(|(k, m)| invalid(file, k, m)))
            .collect::<Result<Vec<_>, _>>()?;
        let has_catch_all = config
            .routes
            .iter()
            .any(|r| r.pattern == "*" || r.pattern == "**");
        if !has_catch_all && config.unrouted == Unrouted::Error {
            return Err(invalid(
                file,
                "routes",
                "no route matches every event_class: add a last route with match = \"*\", or set unrouted = \"drop\"",
            ));
        }
        Ok(Self {
            routes,
            unrouted: config.unrouted,
        })
    }

    /// Every route, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// The first route whose glob matches `event_class`.
    pub fn lookup(&self, event_class: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.is_match(event_class))
    }
}

/// Compiles `[[routes]]` entry `i`; an error is (the key, the problem).
fn compile_route(config: &Config, rc: &RouteConfig, i: usize) -> Result<Route, (String, String)> {
    let at = |field: &str| format!("routes[{i}].{field}");
    let matcher = Glob::new(&rc.pattern)
        .map_err(|e| (at("match"), e.to_string()))?
        .compile_matcher();
    if rc.sinks.is_empty() {
        return Err((at("sinks"), "names no sink".into()));
    }
    let key = rc
        .key
        .as_deref()
        .map(KeyPointer::parse)
        .transpose()
        .map_err(|m| (at("key"), m))?;
    let targets = rc
        .sinks
        .iter()
        .map(|name| target(config, rc, name, key.clone(), &at))
        .collect::<Result<_, _>>()?;
    Ok(Route {
        pattern: rc.pattern.clone(),
        matcher,
        targets,
    })
}

/// The target of a route for sink `name`.
fn target(
    config: &Config,
    rc: &RouteConfig,
    name: &str,
    key: Option<KeyPointer>,
    at: &dyn Fn(&str) -> String,
) -> Result<Target, (String, String)> {
    let sink = config.sinks.keys().position(|n| n == name).ok_or_else(|| {
        let names: Vec<&String> = config.sinks.keys().collect();
        (
            at("sinks"),
            format!("unknown sink {name:?} (known: {names:?})"),
        )
    })?;
    let sink_cfg = &config.sinks[name];
    let text = rc.topic.as_deref().unwrap_or(sink_cfg.default_topic());
    let topic =
        Template::parse(text, sink_cfg.kind().destinations()).map_err(|m| (at("topic"), m))?;
    Ok(Target {
        sink,
        sink_name: name.to_owned(),
        topic,
        key,
    })
}

/// A destination template with `{event_class}`, `{payload_class}` and `{webhook}` placeholders.
#[derive(Debug, Clone)]
pub struct Template {
    pub text: String,
    parts: Vec<Part>,
    /// What the sink's broker accepts as a destination.
    rules: DestinationRules,
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    EventClass,
    PayloadClass,
    Webhook,
}

/// What `{payload_class}` renders to for an event that has none.
pub const NO_PAYLOAD_CLASS: &str = "none";

impl Template {
    /// Parses `text`; its literal text must be allowed by the broker's `rules`.
    pub fn parse(text: &str, rules: DestinationRules) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed {{ in {text:?}"))?
                + open;
            parts.push(Part::Lit(rest[..open].to_owned()));
            parts.push(match &rest[open + 1..close] {
                "event_class" => Part::EventClass,
                "payload_class" => Part::PayloadClass,
                "webhook" => Part::Webhook,
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}} (use event_class, payload_class, webhook)"
                    ));
                }
            });
            rest = &rest[close + 1..];
        }
        parts.push(Part::Lit(rest.to_owned()));
        parts.retain(|p| !matches!(p, Part::Lit(s) if s.is_empty()));
        if parts.is_empty() {
            return Err("is empty".into());
        }
        for p in &parts {
            if let Part::Lit(s) = p {
                if s.contains('}') {
                    return Err(format!("stray }} in {text:?}"));
                }
                (rules.literal)(s).map_err(|why| format!("{text:?} {why}"))?;
            }
        }
        Ok(Self {
            text: text.to_owned(),
            parts,
            rules,
        })
    }

    /// The event's destination, or why its classes cannot make one under the broker's rules
    /// (a Kafka topic is 1-249 letters, digits, '.', '_', '-' and not "." or ".."; an AMQP
    /// routing key is at most 255 bytes; a NATS subject has no empty token, space or wildcard).
    pub fn destination(&self, event: &Event, webhook: &str) -> Result<String, String> {
        self.legal(self.render_parts(&event.event_class, event.payload_class.as_deref(), webhook))
    }

    /// `d`, a rendering of this template, if its broker allows it as a destination.
    pub fn legal(&self, d: String) -> Result<String, String> {
        match (self.rules.check)(&d) {
            Ok(()) => Ok(d),
            Err(why) => Err(format!("gives {why}")),
        }
    }

    /// The names of the template's placeholders, in order (`event_class`, ...).
    pub fn placeholders(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Lit(_) => None,
            Part::EventClass => Some("event_class"),
            Part::PayloadClass => Some("payload_class"),
            Part::Webhook => Some("webhook"),
        })
    }

    /// Renders for an event class (and payload class) without an event, for `check`.
    pub fn render_parts(
        &self,
        event_class: &str,
        payload_class: Option<&str>,
        webhook: &str,
    ) -> String {
        let mut out = String::with_capacity(self.text.len() + 32);
        for p in &self.parts {
            out.push_str(match p {
                Part::Lit(s) => s,
                Part::EventClass => event_class,
                Part::PayloadClass => payload_class.unwrap_or(NO_PAYLOAD_CLASS),
                Part::Webhook => webhook,
            });
        }
        out
    }
}

/// A JSON pointer to the message key; `/payload/new/...` falls back to `/payload/old/...`.
#[derive(Debug, Clone)]
pub struct KeyPointer {
    pub text: String,
    primary: Vec<String>,
    fallback: Option<Vec<String>>,
}

impl KeyPointer {
    pub fn parse(text: &str) -> Result<Self, String> {
        let body = text
            .strip_prefix('/')
            .ok_or_else(|| format!("{text:?} is not a JSON pointer (must start with /)"))?;
        let primary: Vec<String> = body
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        let fallback = match primary.as_slice() {
            [p, n, rest @ ..] if p == "payload" && n == "new" => Some(
                [p.clone(), "old".into()]
                    .into_iter()
                    .chain(rest.iter().cloned())
                    .collect(),
            ),
            _ => None,
        };
        Ok(Self {
            text: text.to_owned(),
            primary,
            fallback,
        })
    }

    /// The key bytes of `raw`, or `None` when neither path leads to a non-null value.
    pub fn extract(&self, raw: &RawValue) -> Option<Vec<u8>> {
        envelope::pointer(raw, &self.primary)
            .and_then(envelope::key_bytes)
            .or_else(|| {
                self.fallback
                    .as_ref()
                    .and_then(|f| envelope::pointer(raw, f))
                    .and_then(envelope::key_bytes)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use c360_sinks::kafka::TOPICS as KAFKA;
    use c360_sinks::nats::SUBJECTS as NATS;
    use c360_sinks::rabbitmq::ROUTING_KEYS as AMQP;

    #[test]
    fn destinations_must_be_legal_for_their_broker() {
        let long = "x".repeat(300);
        let body = format!(
            r#"{{"events":[{{"event_class":"task_created"}},{{"event_class":"aufgabe/geprüft"}},{{"event_class":".."}},{{"event_class":"{long}"}}]}}"#
        );
        let ev = crate::webhook::envelope::split(body.as_bytes(), 100).unwrap();
        let kafka = Template::parse("catalog360.{event_class}", KAFKA).unwrap();
        let bare = Template::parse("{event_class}", KAFKA).unwrap();
        let amqp = Template::parse("{event_class}", AMQP).unwrap();
        assert_eq!(
            kafka.destination(&ev[0], "w").unwrap(),
            "catalog360.task_created"
        );
        assert!(kafka.destination(&ev[1], "w").is_err());
        assert_eq!(amqp.destination(&ev[1], "w").unwrap(), "aufgabe/geprüft");
        assert_eq!(kafka.destination(&ev[2], "w").unwrap(), "catalog360...");
        assert!(bare.destination(&ev[2], "w").is_err());
        assert!(kafka.destination(&ev[3], "w").is_err());
        assert!(amqp.destination(&ev[3], "w").is_err());
        let nats = Template::parse("catalog360.{event_class}", NATS).unwrap();
        assert_eq!(
            nats.destination(&ev[1], "w").unwrap(),
            "catalog360.aufgabe/geprüft"
        );
        assert!(nats.destination(&ev[2], "w").is_err(), "empty tokens");
        assert!(Template::parse("a b.{event_class}", NATS).is_err());
        assert!(Template::parse("a.>", NATS).is_err());
    }

    #[test]
    fn templates_render_and_reject() {
        let t = Template::parse("c360.{webhook}.{event_class}.{payload_class}", KAFKA).unwrap();
        assert_eq!(
            t.render_parts("task_created", Some("task"), "main"),
            "c360.main.task_created.task"
        );
        assert_eq!(t.render_parts("x", None, "w"), "c360.w.x.none");
        assert!(Template::parse("{nope}", KAFKA).is_err());
        assert!(Template::parse("a{event_class", KAFKA).is_err());
        assert!(Template::parse("a}b", AMQP).is_err());
        assert!(Template::parse("bad topic/{event_class}", KAFKA).is_err());
        assert!(Template::parse("events.#.{event_class}", AMQP).is_ok());
        assert!(Template::parse("", AMQP).is_err());
    }

    #[test]
    fn key_falls_back_from_new_to_old() {
        let k = KeyPointer::parse("/payload/new/id").unwrap();
        let created: &RawValue =
            serde_json::from_str(r#"{"payload":{"new":{"id":"n1"}}}"#).unwrap();
        let deleted: &RawValue = serde_json::from_str(r#"{"payload":{"old":{"id":42}}}"#).unwrap();
        let none: &RawValue = serde_json::from_str(r#"{"payload":{}}"#).unwrap();
        assert_eq!(k.extract(created).unwrap(), b"n1");
        assert_eq!(k.extract(deleted).unwrap(), b"42");
        assert_eq!(k.extract(none), None);
        assert!(KeyPointer::parse("payload/id").is_err());
    }
}
