#!/usr/bin/env python3
"""A consumer of the bridge's topics and queues built on the CloudEvents Python SDK.

Reads every message of a Kafka topic (confluent-kafka, from offset 0 until each partition's
end) or of a RabbitMQ queue (pika, basic_get until empty), decodes each with the SDK's own
protocol binding (cloudevents.core.bindings.kafka / .rabbitmq, binary content mode) and prints
one JSON array: per message the event as the SDK decoded it, plus the raw c360-event-id header.

    ce_consume.py kafka --bootstrap 127.0.0.1:9092 --topic T --partitions 3
    ce_consume.py rabbitmq --url amqp://guest:guest@127.0.0.1:5672/%2f --queue Q
    ce_consume.py nats < messages.json

NATS: the SDK has no NATS binding, and the test reads the stream itself; it hands this script
the messages it read (a JSON array of {"headers": {...}, "body_b64": "..."}). The CloudEvents
NATS binding's binary mode is HTTP's (attributes as `ce-` headers, `content-type` header), so
they are decoded with the SDK's HTTP binding.

Exits non-zero (with the reason on stderr) if a message does not decode.
"""
import argparse
import base64
import json
import sys
import time

from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
from cloudevents.core.formats.json import JSONFormat


def as_json(event, raw_id, body):
    """What the test compares: the SDK's view of the event, and the exact body bytes."""
    when = event.get_time()
    return {
        "specversion": event.get_specversion(),
        "id": event.get_id(),
        "type": event.get_type(),
        "source": event.get_source(),
        "subject": event.get_subject(),
        "time": when.isoformat() if when else None,
        "time_epoch_us": round(when.timestamp() * 1_000_000) if when else None,
        "datacontenttype": event.get_datacontenttype(),
        "data": event.get_data(),
        "partitionkey": event.get_attributes().get("partitionkey"),
        "c360_event_id": raw_id,
        "body_b64": base64.b64encode(body).decode(),
    }


def read_kafka(bootstrap, topic, partitions, timeout):
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"ce-consume-{time.time_ns()}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, at_end, until = [], set(), time.monotonic() + timeout
    while len(at_end) < partitions:
        if time.monotonic() > until:
            sys.exit(f"{topic}: partitions {sorted(at_end)} of {partitions} reached their end")
        m = consumer.poll(0.2)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                at_end.add(m.partition())
            continue
        headers = {k: v for k, v in (m.headers() or [])}
        message = ce_kafka.KafkaMessage(headers=headers, key=m.key(), value=m.value())
        event = ce_kafka.from_binary(message, JSONFormat())
        out.append(as_json(event, headers.get("c360-event-id", b"").decode(), m.value()))
    consumer.close()
    return out


def read_rabbitmq(url, queue):
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    out = []
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in (props.headers or {}).items()}
        message = ce_rabbitmq.RabbitMQMessage(
            headers=headers, content_type=props.content_type, body=body
        )
        event = ce_rabbitmq.from_binary(message, JSONFormat())
        out.append(as_json(event, headers.get("c360-event-id", ""), body))
    connection.close()
    return out


def read_nats(messages):
    out = []
    for m in messages:
        body = base64.b64decode(m["body_b64"])
        message = ce_http.HTTPMessage(headers=m["headers"], body=body)
        event = ce_http.from_binary(message, JSONFormat())
        out.append(as_json(event, m["headers"].get("c360-event-id", ""), body))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="broker", required=True)
    k = sub.add_parser("kafka")
    k.add_argument("--bootstrap", required=True)
    k.add_argument("--topic", required=True)
    k.add_argument("--partitions", type=int, default=1)
    k.add_argument("--timeout", type=float, default=30)
    r = sub.add_parser("rabbitmq")
    r.add_argument("--url", required=True)
    r.add_argument("--queue", required=True)
    sub.add_parser("nats")
    a = p.parse_args()
    if a.broker == "nats":
        events = read_nats(json.load(sys.stdin))
    elif a.broker == "kafka":
        events = read_kafka(a.bootstrap, a.topic, a.partitions, a.timeout)
    else:
        events = read_rabbitmq(a.url, a.queue)
    json.dump(events, sys.stdout)


if __name__ == "__main__":
    main()
