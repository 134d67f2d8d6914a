"""Topics not written for herald, end to end, with real serializers.

A minimal schema registry (the Confluent REST endpoints the serializers and
herald call: register, get by id, get a subject's version; no real registry
installs on these machines), three topics on the broker written by
confluent-kafka's own AvroSerializer, ProtobufSerializer and JSONSerializer
(they register their schemas over HTTP; the records' wire format is theirs),
and a herald node with a mapping file that routes each by customer (a field
of the value; a header for the JSON topic) and drops the card number.

Checks (each bounded in time), printed as "ok"/"FAIL" lines:
  1. each format reaches the customer's SSE stream as JSON, card dropped;
  2. an unknown schema id and a corrupt datum go to the dead-letter topic
     with source topic, partition, offset and reason, and the partition
     keeps flowing;
  3. produce -> stream latency for Avro records (a figure).
With a controller on stdin/stdout (the browser e2e), it prints
"ready <port>" once herald is up and waits for "go" before producing, so
the seed page in Chromium is already listening.

Env: HERALD_BIN, BROKER (host:port of a running broker), and TANSU=1 to
create topics with `tansu topic create`.
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from harness import RESULTS, check, herald_ready, until

HERALD = os.environ["HERALD_BIN"]
BROKER = os.environ.get("BROKER", "127.0.0.1:19092")
PORT = int(os.environ.get("SCHEMA_NODE_PORT", "18099"))
DEAD = "dead-letters"
TOPICS = {"avro": "orders-avro", "proto": "orders-proto", "json": "orders-json"}


# --- a minimal schema registry -------------------------------------------

class Registry:
    def __init__(self):
        self.by_id = {}        # id -> {"schema", "schemaType", "references"}
        self.subjects = {}     # subject -> [id, ...]
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def register(self, subject, body):
        with self.lock:
            entry = {
                "schema": body["schema"],
                "schemaType": body.get("schemaType", "AVRO"),
                "references": body.get("references", []),
            }
            for i, e in self.by_id.items():
                if e == entry:
                    break
            else:
                i = len(self.by_id) + 1
                self.by_id[i] = entry
            versions = self.subjects.setdefault(subject, [])
            if i not in versions:
                versions.append(i)
            return i, versions.index(i) + 1

    def handler(self):
        reg = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("content-type", "application/vnd.schemaregistry.v1+json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                path = self.path.split("?")[0]
                m = re.fullmatch(r"/subjects/([^/]+)/versions", path)
                if m:
                    i, v = reg.register(unquote(m.group(1)), body)
                    return self.reply(200, {"id": i, "version": v, **reg.by_id[i]})
                m = re.fullmatch(r"/subjects/([^/]+)", path)
                if m:  # lookup
                    i, v = reg.register(unquote(m.group(1)), body)
                    return self.reply(200, {"subject": unquote(m.group(1)), "id": i, "version": v, **reg.by_id[i]})
                self.reply(404, {"error_code": 404, "message": "not found"})

            def do_GET(self):
                path = self.path.split("?")[0]
                m = re.fullmatch(r"/schemas/ids/(\d+)", path)
                if m and int(m.group(1)) in reg.by_id:
                    return self.reply(200, reg.by_id[int(m.group(1))])
                m = re.fullmatch(r"/subjects/([^/]+)/versions/(\w+)", path)
                if m and unquote(m.group(1)) in reg.subjects:
                    versions = reg.subjects[unquote(m.group(1))]
                    v = len(versions) if m.group(2) == "latest" else int(m.group(2))
                    i = versions[v - 1]
                    return self.reply(200, {"subject": unquote(m.group(1)), "version": v, "id": i, **reg.by_id[i]})
                self.reply(404, {"error_code": 40403, "message": "Schema not found"})

        return H


# --- the writers' schemas -----------------------------------------------

AVRO = json.dumps({
    "type": "record", "name": "Order", "namespace": "shop",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "customerId", "type": "string"},
        {"name": "card", "type": "string"},
        {"name": "total", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
        {"name": "placedAt", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "seq", "type": "long"},
    ],
})

JSON_SCHEMA = json.dumps({
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Order", "type": "object",
    "properties": {"id": {"type": "string"}, "card": {"type": "string"}, "total": {"type": "number"}},
    "required": ["id"],
})


def proto_order_class():
    """shop.Order built from a FileDescriptorProto (no protoc here)."""
    f = descriptor_pb2.FileDescriptorProto(name="shop/order.proto", package="shop", syntax="proto3")
    m = f.message_type.add(name="Order")
    T = descriptor_pb2.FieldDescriptorProto
    for n, (name, typ) in enumerate([("id", T.TYPE_STRING), ("customer_id", T.TYPE_STRING),
                                     ("card", T.TYPE_STRING), ("total_cents", T.TYPE_INT64)], 1):
        m.field.add(name=name, number=n, type=typ, label=T.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.Order"))


# --- helpers -------------------------------------------------------------

class Sse:
    """A raw SSE reader on herald's stream for one user."""

    def __init__(self, port, user):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(f"GET /api/sse/subscribe/{user} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self.buf = b""
        self.events = []
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            self.buf += chunk
            while b"\n\n" in self.buf:
                block, self.buf = self.buf.split(b"\n\n", 1)
                ev = {"event": "message", "data": [], "at": time.time()}
                for line in block.decode().splitlines():
                    if line.startswith("data: "):
                        ev["data"].append(line[6:])
                    elif line.startswith("event: "):
                        ev["event"] = line[7:]
                if ev["data"]:
                    # Chunked transfer: strip the chunk-size lines if any.
                    ev["data"] = "\n".join(ev["data"])
                    self.events.append(ev)


def create_topics():
    for t in list(TOPICS.values()) + [DEAD]:
        subprocess.run(["tansu", "topic", "create", t, "--partitions", "2", "--broker", f"tcp://{BROKER}"],
                       check=True, timeout=30, capture_output=True)


def main():
    controlled = "--controlled" in sys.argv
    registry = Registry()
    create_topics()
    mapping = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    mapping.write(f"""
# Avro: keyed by order id; the customer is a field of the value.
[[topics]]
topic = "{TOPICS['avro']}"
value = "avro"
user = "field:/customerId"
drop = ["/card"]

# Protobuf: the same, by the proto3 JSON name of customer_id.
[[topics]]
topic = "{TOPICS['proto']}"
value = "protobuf"
user = "field:/customerId"
drop = ["/card"]

# JSON Schema: the customer in a header.
[[topics]]
topic = "{TOPICS['json']}"
value = "json-schema"
user = "header:customer"
drop = ["/card"]
""")
    mapping.close()
    herald = subprocess.Popen(
        [HERALD, "--listen", f"127.0.0.1:{PORT}", "--kafka-brokers", BROKER,
         "--kafka-mapping", mapping.name, "--schema-registry-url", registry.url,
         "--kafka-dead-letter-topic", DEAD, "--kafka-metadata-interval", "1s",
         "--kafka-publish-transactions", "false", "--shutdown-drain", "200ms"],
        stdout=subprocess.DEVNULL, stderr=sys.stderr, env={**os.environ, "NO_COLOR": "1"})
    try:
        until("herald ready", lambda: herald_ready(PORT), 60)
        stream = Sse(PORT, "c-42")
        if controlled:
            print(f"ready {PORT}", flush=True)
            sys.stdin.readline()
        run_checks(registry, stream)
    finally:
        herald.terminate()
        herald.wait(timeout=15)
    print("RESULTS " + json.dumps(RESULTS), flush=True)
    return 0 if RESULTS["failed"] == 0 else 1


def run_checks(registry, stream):
    client = SchemaRegistryClient({"url": registry.url})
    avro = AvroSerializer(client, AVRO)
    Order = proto_order_class()
    proto = ProtobufSerializer(Order, client, {"use.deprecated.format": False})
    js = JSONSerializer(JSON_SCHEMA, client)
    producer = Producer({"bootstrap.servers": BROKER, "linger.ms": 0})

    def send(topic, key, value, headers=None, partition=0):
        producer.produce(topic, key=key, value=value, headers=headers or [], partition=partition)
        producer.flush(30)

    def avro_order(i):
        return {"id": f"o-{i}", "customerId": "c-42", "card": "4111111111111111",
                "total": Decimal("12.30"), "seq": i, "note": None,
                "placedAt": datetime(2026, 12, 1, 10, 0, 0, 123000, tzinfo=timezone.utc)}

    def got(pred, what):
        return until(what, lambda: next((e for e in stream.events if pred(json.loads(e["data"]))), None), 30)

    def formats():
        ctx = lambda t: SerializationContext(t, MessageField.VALUE)  # noqa: E731
        send(TOPICS["avro"], b"o-1", avro(avro_order(1), ctx(TOPICS["avro"])))
        send(TOPICS["proto"], b"o-2", proto(Order(id="o-2", customer_id="c-42", card="4111", total_cents=1230),
                                            ctx(TOPICS["proto"])))
        send(TOPICS["json"], b"o-3", js({"id": "o-3", "card": "4111", "total": 12.3}, ctx(TOPICS["json"])),
             headers=[("customer", b"c-42")])
        a = json.loads(got(lambda d: d.get("id") == "o-1", "avro event")["data"])
        want = {"id": "o-1", "customerId": "c-42", "total": "12.30", "seq": 1, "note": None,
                "placedAt": "2026-12-01T10:00:00.123Z"}
        assert a == want, a
        p = json.loads(got(lambda d: d.get("id") == "o-2", "protobuf event")["data"])
        assert p == {"id": "o-2", "customerId": "c-42", "totalCents": "1230"}, p
        j = json.loads(got(lambda d: d.get("id") == "o-3", "json-schema event")["data"])
        assert j == {"id": "o-3", "total": 12.3}, j

    check("Avro, Protobuf and JSON Schema records from real serializers reach the customer's stream, card dropped", formats)

    def dead_letters():
        avro_id = registry.subjects[f"{TOPICS['avro']}-value"][0]
        unknown = b"\x00" + (999).to_bytes(4, "big") + b"\x02"
        corrupt = b"\x00" + avro_id.to_bytes(4, "big") + b"\x08o-"
        send(TOPICS["avro"], b"o-bad-1", unknown, partition=1)
        send(TOPICS["avro"], b"o-bad-2", corrupt, partition=1)
        ctx = SerializationContext(TOPICS["avro"], MessageField.VALUE)
        send(TOPICS["avro"], b"o-4", avro(avro_order(4), ctx), partition=1)
        got(lambda d: d.get("id") == "o-4", "the record after the bad ones")
        c = Consumer({"bootstrap.servers": BROKER, "group.id": f"dl-{time.time()}",
                      "auto.offset.reset": "earliest"})
        c.subscribe([DEAD])
        letters = []
        end = time.time() + 30
        while len(letters) < 2 and time.time() < end:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            h = {k: v.decode() for k, v in (m.headers() or [])}
            letters.append((m.key(), h.get("herald-source-topic"), h.get("herald-source-partition"),
                            h.get("herald-error"), "herald-source-offset" in h, m.value()))
        c.close()
        letters.sort()
        assert letters == [
            (b"o-bad-1", TOPICS["avro"], "1", "unknown_schema", True, unknown),
            (b"o-bad-2", TOPICS["avro"], "1", "decode", True, corrupt),
        ], letters

    check("an unknown schema id and a corrupt record go to the dead-letter topic; the partition keeps flowing",
          dead_letters)

    def latency():
        ctx = SerializationContext(TOPICS["avro"], MessageField.VALUE)
        lat = []
        for i in range(100, 120):
            t0 = time.time()
            send(TOPICS["avro"], f"o-{i}".encode(), avro(avro_order(i), ctx))
            ev = got(lambda d, i=i: d.get("seq") == i, f"seq {i}")
            lat.append((ev["at"] - t0) * 1000)
        lat.sort()
        RESULTS["figures"]["avro_produce_to_stream_ms"] = {
            "p50": round(lat[len(lat) // 2], 1), "max": round(lat[-1], 1), "n": len(lat)}

    check("produce -> stream latency for Avro records (figure)", latency)


if __name__ == "__main__":
    sys.exit(main())
