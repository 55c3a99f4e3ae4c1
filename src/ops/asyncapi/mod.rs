//! `asyncapi`: an AsyncAPI 3.0 document of what consumers can subscribe to under a config,
//! built from the compiled routing table (one channel per sink and destination template).

mod dead_letter;
mod schemas;
mod yaml;

use crate::config::{Config, SinkConfig};
use crate::delivery::dead_letter::DeadLetter;
use crate::delivery::routing::{KNOWN_EVENT_CLASSES, Route, Routes, Target};
use schemas::Binding;
use serde_json::{Map, Value, json};

/// How the document is printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Yaml,
    Json,
}

/// The document as text in `format`.
pub fn render(
    config: &Config,
    routes: &Routes,
    dead_letter: Option<&DeadLetter>,
    format: Format,
) -> String {
    let doc = document(config, routes, dead_letter);
    match format {
        Format::Yaml => yaml::to_string(&doc),
        Format::Json => format!("{doc:#}\n"),
    }
}

/// Every route target that delivers to one (sink, destination template).
struct Destination<'a> {
    target: &'a Target,
    sink: &'a SinkConfig,
    /// Known event classes that reach it (first match wins), in order.
    classes: Vec<&'static str>,
    /// `match` globs of the routes that lead here.
    patterns: Vec<&'a str>,
    /// Kafka key pointers of those routes.
    keys: Vec<&'a str>,
}

/// The AsyncAPI document of `config` (whose routes compiled to `routes`, its `[dead_letter]`
/// to `dead_letter`).
pub fn document(config: &Config, routes: &Routes, dead_letter: Option<&DeadLetter>) -> Value {
    let ctx = Context::new(config);
    let mut channels = Map::new();
    let mut operations = Map::new();
    for (id, d) in ids(destinations(config, routes)) {
        operations.insert(format!("receive_{id}"), operation(&id, &d));
        channels.insert(id, ctx.channel(&d));
    }
    if let Some((ch, op)) = dead_letter.and_then(|dl| dead_letter::channel(&ctx, config, dl)) {
        let id = dead_letter::CHANNEL_ID;
        operations.insert(format!("receive_{id}"), op);
        channels.insert(id.into(), ch);
    }
    json!({
        "asyncapi": "3.0.0",
        "info": info(routes),
        "defaultContentType": c360_sinks::CONTENT_TYPE,
        "servers": servers(config),
        "channels": channels,
        "operations": operations,
        "components": {"schemas": {"Event": schemas::event(&KNOWN_EVENT_CLASSES)}},
    })
}

/// The destinations of every route, merged by (sink, template), in configuration order.
fn destinations<'a>(config: &'a Config, routes: &'a Routes) -> Vec<Destination<'a>> {
    let mut out: Vec<Destination> = Vec::new();
    for route in routes.iter() {
        let classes = classes_of(routes, route);
        for t in &route.targets {
            let at = out
                .iter()
                .position(|d| d.target.sink == t.sink && d.target.topic.text == t.topic.text);
            let d = match at {
                Some(i) => &mut out[i],
                None => {
                    out.push(Destination {
                        target: t,
                        sink: &config.sinks[&t.sink_name],
                        classes: Vec::new(),
                        patterns: Vec::new(),
                        keys: Vec::new(),
                    });
                    out.last_mut().expect("just pushed")
                }
            };
            d.classes.extend(&classes);
            d.patterns.push(&route.pattern);
            d.keys.extend(t.key.as_ref().map(|k| k.text.as_str()));
        }
    }
    out
}

/// The known event classes `route` receives (an earlier route may take some of its matches).
fn classes_of(routes: &Routes, route: &Route) -> Vec<&'static str> {
    KNOWN_EVENT_CLASSES
        .into_iter()
        .filter(|c| routes.lookup(c).is_some_and(|r| std::ptr::eq(r, route)))
        .collect()
}

/// Gives each destination a channel id (AsyncAPI allows letters, digits, `_` and `-`).
fn ids(destinations: Vec<Destination<'_>>) -> Vec<(String, Destination<'_>)> {
    let mut seen = std::collections::HashSet::new();
    destinations
        .into_iter()
        .map(|d| {
            let base = ident(&format!("{}_{}", d.target.sink_name, d.target.topic.text));
            let mut id = base.clone();
            let mut n = 1;
            while !seen.insert(id.clone()) {
                n += 1;
                id = format!("{base}_{n}");
            }
            (id, d)
        })
        .collect()
}

/// `s` with every character outside `[A-Za-z0-9_-]` replaced by `_`.
pub fn ident(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn info(routes: &Routes) -> Value {
    let unrouted = match routes.unrouted {
        crate::config::Unrouted::Drop => {
            " Events no route matches are dropped (unrouted = \"drop\")."
        }
        crate::config::Unrouted::Error => "",
    };
    json!({
        "title": "c360-bridge: catalog360 events",
        "version": env!("CARGO_PKG_VERSION"),
        "description": format!("What consumers can subscribe to under this configuration of c360-bridge. One message per catalog360 event; the body is the event's JSON exactly as catalog360 sent it. Every message carries the c360-* headers and, unless its sink sets cloudevents = false, the CloudEvents 1.0 attributes in binary content mode (Kafka: ce_* headers; RabbitMQ and NATS: ce-* headers). Dedupe on c360-event-id (= CloudEvents id): a batch catalog360 resends yields the same ids.{unrouted}"),
    })
}

/// One server per sink, without credentials.
fn servers(config: &Config) -> Value {
    let mut out = Map::new();
    for (name, sink) in &config.sinks {
        out.insert(ident(name), server(name, sink));
    }
    Value::Object(out)
}

fn server(name: &str, sink: &SinkConfig) -> Value {
    match sink {
        SinkConfig::Kafka(k) => {
            let secure = k
                .librdkafka
                .get("security.protocol")
                .is_some_and(|p| p.to_ascii_uppercase().contains("SSL"));
            let first = k
                .bootstrap_servers
                .split(',')
                .next()
                .unwrap_or_default()
                .trim();
            json!({
                "host": first,
                "protocol": if secure { "kafka-secure" } else { "kafka" },
                "description": format!("Kafka sink `{name}`, bootstrap servers {}.", k.bootstrap_servers),
            })
        }
        SinkConfig::Rabbitmq(r) => amqp_server(name, &r.url),
        SinkConfig::Nats(n) => nats_server(name, n),
    }
}

/// A NATS server from the sink's first URL: host and port, never a user or password.
fn nats_server(name: &str, n: &c360_sinks::nats::NatsConfig) -> Value {
    let tls = n.tls_wanted();
    let stream = match &n.create_stream {
        Some(s) => format!(
            " The bridge creates stream {} ({:?}) when missing.",
            s.name, s.subjects
        ),
        None => String::new(),
    };
    let description = format!(
        "NATS JetStream sink `{name}`{}: messages are stored by the stream whose subjects capture theirs.{stream}",
        if tls { " over TLS" } else { "" }
    );
    json!({
        "host": n.first_server().unwrap_or_else(|| "unknown".into()),
        "protocol": "nats",
        "description": description,
    })
}

/// An AMQP server from the sink's URL: scheme, host, port and vhost, never the user or password.
fn amqp_server(name: &str, url: &str) -> Value {
    use lapin::uri::{AMQPScheme, AMQPUri};
    use std::str::FromStr;
    match AMQPUri::from_str(url) {
        Ok(u) => json!({
            "host": format!("{}:{}", u.authority.host, u.authority.port),
            "protocol": if u.scheme == AMQPScheme::AMQPS { "amqps" } else { "amqp" },
            "protocolVersion": "0.9.1",
            "description": format!("RabbitMQ sink `{name}`, virtual host {:?}.", u.vhost),
        }),
        // `check` refuses such a URL; keep the document whole without echoing it.
        Err(_) => {
            json!({"host": "unknown", "protocol": "amqp", "description": format!("RabbitMQ sink `{name}`")})
        }
    }
}

/// A `receive` operation on `channel`; for RabbitMQ the routing key template (`cc`) and how
/// the messages were published as the AMQP binding.
fn operation(channel: &str, d: &Destination) -> Value {
    let mut op = json!({
        "action": "receive",
        "channel": {"$ref": format!("#/channels/{channel}")},
        "summary": "Consume the events published here.",
        "messages": [{"$ref": format!("#/channels/{channel}/messages/event")}],
    });
    match d.sink {
        SinkConfig::Rabbitmq(_) => {
            op["bindings"] = json!({"amqp": {
                "cc": [d.target.topic.text],
                "deliveryMode": 2,
                "mandatory": true,
                "bindingVersion": "0.3.0",
            }});
        }
        // The NATS binding defines only `queue` (a queue group), the consumer's to choose.
        SinkConfig::Nats(_) => op["bindings"] = json!({"nats": {"bindingVersion": "0.1.0"}}),
        SinkConfig::Kafka(_) => {}
    }
    op
}

/// What every channel needs to know about the configuration.
struct Context {
    webhooks: Vec<String>,
    sources: Vec<String>,
}

impl Context {
    fn new(config: &Config) -> Self {
        let webhooks = config.webhooks.iter().map(|w| w.name.clone()).collect();
        let sources = config.webhooks.iter().map(|w| w.ce_source()).collect();
        Self { webhooks, sources }
    }

    fn channel(&self, d: &Destination) -> Value {
        let (kind, what) = match d.sink {
            SinkConfig::Kafka(_) => ("Kafka topic", "topic"),
            SinkConfig::Rabbitmq(_) => ("AMQP routing key", "routing key"),
            SinkConfig::Nats(_) => ("NATS subject", "subject"),
        };
        let mut ch = json!({
            "address": d.target.topic.text,
            "title": format!("{} on {}", d.target.topic.text, d.target.sink_name),
            "description": format!("{kind} of sink `{}` for the events of route(s) matching {:?}; the address is the {what} template.", d.target.sink_name, d.patterns),
            "servers": [{"$ref": format!("#/servers/{}", ident(&d.target.sink_name))}],
            "messages": {"event": self.message(d)},
        });
        let params = self.parameters(d);
        if !params.is_empty() {
            ch["parameters"] = Value::Object(params);
        }
        if let SinkConfig::Rabbitmq(r) = d.sink {
            ch["bindings"] = json!({"amqp": exchange_binding(r)});
        }
        ch
    }

    /// One parameter per placeholder of the destination template.
    fn parameters(&self, d: &Destination) -> Map<String, Value> {
        let mut out = Map::new();
        for name in d.target.topic.placeholders() {
            let (values, note): (Vec<String>, &str) = match name {
                "event_class" => (
                    d.classes.iter().map(|c| c.to_string()).collect(),
                    "The event's event_class. The enum lists the known classes this route receives; unknown classes the route's glob matches pass too.",
                ),
                "payload_class" => (
                    schemas::KNOWN_PAYLOAD_CLASSES
                        .iter()
                        .chain(&[crate::delivery::routing::NO_PAYLOAD_CLASS])
                        .map(|c| c.to_string())
                        .collect(),
                    "The event's payload_class (`none` when it has none). The enum lists the known classes; unknown ones pass too.",
                ),
                _ => (
                    self.webhooks.clone(),
                    "The name of the webhook that received the event.",
                ),
            };
            let mut p = json!({"description": note});
            if !values.is_empty() {
                p["enum"] = json!(values);
            }
            out.insert(name.to_owned(), p);
        }
        out
    }

    fn message(&self, d: &Destination) -> Value {
        let (binding, cloudevents) = match d.sink {
            SinkConfig::Kafka(k) => (Binding::Kafka, k.cloudevents),
            SinkConfig::Rabbitmq(r) => (Binding::Amqp, r.cloudevents),
            SinkConfig::Nats(n) => (Binding::Nats, n.cloudevents),
        };
        let mut msg = json!({
            "name": "event",
            "title": "catalog360 event",
            "summary": "One catalog360 event, its JSON exactly as received.",
            "contentType": c360_sinks::CONTENT_TYPE,
            "headers": schemas::headers(binding, cloudevents, &self.webhooks, &self.sources),
            "payload": {"$ref": "#/components/schemas/Event"},
            "correlationId": {
                "description": "The event id: the same when catalog360 resends the batch; dedupe on it.",
                "location": "$message.header#/c360-event-id",
            },
        });
        msg["bindings"] = match binding {
            Binding::Kafka => json!({"kafka": kafka_key(&d.keys)}),
            Binding::Amqp => {
                json!({"amqp": {"messageType": "com.catalog360.{event_class}", "bindingVersion": "0.3.0"}})
            }
            // AsyncAPI's NATS binding has no message fields; the headers say it all.
            Binding::Nats => return msg,
        };
        msg
    }
}

/// The Kafka message binding: the key, when the route names one.
fn kafka_key(keys: &[&str]) -> Value {
    let mut b = json!({"bindingVersion": "0.5.0"});
    if !keys.is_empty() {
        let fallback = " (a /payload/new/... pointer falls back to /payload/old/...; a string gives its text, other values their JSON; no key when absent)";
        b["key"] = json!({
            "type": "string",
            "description": format!("The value at JSON pointer {}{fallback}. Events of one batch that share a key keep their order.", keys.join(" or ")),
        });
    }
    b
}

/// The AMQP channel binding: the channel's address is a routing key on the sink's exchange.
fn exchange_binding(r: &c360_sinks::rabbitmq::RabbitConfig) -> Value {
    use lapin::uri::AMQPUri;
    use std::str::FromStr;
    let vhost = AMQPUri::from_str(&r.url)
        .map(|u| u.vhost)
        .unwrap_or_else(|_| "/".into());
    json!({
        "is": "routingKey",
        "exchange": {
            "name": r.exchange,
            "type": r.exchange_type,
            "durable": true,
            "autoDelete": false,
            "vhost": vhost,
        },
        "bindingVersion": "0.3.0",
    })
}

#[cfg(test)]
mod tests;
