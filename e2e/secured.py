"""herald against a secured broker: TLS and SASL, and every compression codec.

tansu 0.6's own TLS does not work here, so TLS is terminated in front of it
(an asyncio proxy with a test CA's certificate for `localhost`) and tansu
advertises the proxy's address: every connection after bootstrap goes
through TLS too. tansu then requires SASL (`--authentication`: it offers
SCRAM-SHA-256/512 and OAUTHBEARER) for a SCRAM user created first (with
`tansu user create`, while the broker runs without authentication).

Checks, printed as "ok"/"FAIL" lines:
  1. herald with security.protocol=SASL_SSL, sasl.mechanisms=SCRAM-SHA-512
     and the test CA becomes ready and delivers records a producer wrote
     with gzip, snappy, lz4 and zstd compression;
  2. a wrong password: herald exits at start naming the broker;
  3. herald without the test CA (the system store does not trust it)
     exits at start naming the broker.

Env: HERALD_BIN. Uses ports 19392 (tansu) and 19393 (TLS).
"""

import asyncio
import datetime
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from confluent_kafka import Producer

from harness import RESULTS, check, herald_ready, until

HERALD = os.environ["HERALD_BIN"]
PLAIN_PORT, TLS_PORT, NODE = 19392, 19393, 18098
TOPIC = "secured"


def certificates(d):
    """A test CA and a server certificate for localhost / 127.0.0.1."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "herald test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {}
    for name, data in [
        ("ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        ("cert.pem", cert.public_bytes(serialization.Encoding.PEM)),
        ("key.pem", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())),
    ]:
        paths[name] = os.path.join(d, name)
        with open(paths[name], "wb") as f:
            f.write(data)
    return paths


def tls_proxy(paths):
    """TLS on TLS_PORT, plain TCP to tansu on PLAIN_PORT."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(paths["cert.pem"], paths["key.pem"])

    async def pipe(r, w):
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            w.close()

    async def handle(cr, cw):
        try:
            br, bw = await asyncio.open_connection("127.0.0.1", PLAIN_PORT)
        except OSError:
            cw.close()
            return
        await asyncio.gather(pipe(cr, bw), pipe(br, cw))

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", TLS_PORT, ssl=ctx)
        async with server:
            await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()


def sasl_ssl(paths):
    return {"bootstrap.servers": f"localhost:{TLS_PORT}", "security.protocol": "SASL_SSL",
            "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "herald", "sasl.password": "s3cret-pass",
            "ssl.ca.location": paths["ca.pem"]}


def props(conf):
    return ";".join(f"{k}={v}" for k, v in conf.items() if k != "bootstrap.servers")


def refused(conf, cause):
    t0 = time.time()
    r = subprocess.run(
        [HERALD, "--listen", f"127.0.0.1:{NODE + 100}", "--kafka-brokers", f"localhost:{TLS_PORT}",
         "--kafka-topics", TOPIC],
        env={**os.environ, "HERALD_KAFKA_PROPERTY": props(conf), "NO_COLOR": "1"},
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr[-500:])
    assert f"localhost:{TLS_PORT}" in r.stderr and TOPIC in r.stderr, r.stderr[-500:]
    assert cause in r.stderr, (cause, r.stderr[-500:])
    assert time.time() - t0 < 30
    print("     " + r.stderr.strip().splitlines()[-1][:300], flush=True)


def main():
    d = tempfile.mkdtemp()
    paths = certificates(d)
    def broker(*extra):
        p = subprocess.Popen(
            ["tansu", "broker", "--listener-url", f"tcp://127.0.0.1:{PLAIN_PORT}",
             "--advertised-listener-url", f"tcp://localhost:{TLS_PORT}",
             "--storage-engine", "sqlite://tansu.db", *extra],
            cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until("tansu", lambda: socket.socket().connect_ex(("127.0.0.1", PLAIN_PORT)) == 0)
        return p

    # The user and the topic, before authentication is required.
    tansu = broker()
    plain = f"tcp://127.0.0.1:{PLAIN_PORT}"
    subprocess.run(["tansu", "user", "create", "herald", "s3cret-pass", "--broker", plain],
                   check=True, timeout=30, capture_output=True)
    subprocess.run(["tansu", "topic", "create", TOPIC, "--partitions", "2", "--broker", plain],
                   check=True, timeout=30, capture_output=True)
    tansu.kill()
    tansu.wait()
    tansu = broker("--authentication")
    tls_proxy(paths)
    herald = None
    try:

        def delivers():
            nonlocal herald
            herald = subprocess.Popen(
                [HERALD, "--listen", f"127.0.0.1:{NODE}", "--kafka-brokers", f"localhost:{TLS_PORT}",
                 "--kafka-topics", TOPIC, "--kafka-publish-transactions", "false", "--shutdown-drain", "100ms"],
                env={**os.environ, "HERALD_KAFKA_PROPERTY": props(sasl_ssl(paths)), "NO_COLOR": "1"},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            until("herald ready over SASL_SSL", lambda: herald_ready(NODE), 60)
            s = socket.create_connection(("127.0.0.1", NODE), timeout=30)
            s.sendall(b"GET /api/sse/subscribe/u1 HTTP/1.1\r\nHost: x\r\n\r\n")
            for codec in ["gzip", "snappy", "lz4", "zstd"]:
                p = Producer({**sasl_ssl(paths), "compression.type": codec, "linger.ms": 0})
                p.produce(TOPIC, key=b"u1", value=json.dumps({"codec": codec}).encode())
                assert p.flush(30) == 0, f"{codec} not acknowledged"
            seen = b""
            end = time.time() + 30
            while time.time() < end and seen.count(b'"codec"') < 4:
                seen += s.recv(65536)
            for codec in ["gzip", "snappy", "lz4", "zstd"]:
                assert f'{{"codec": "{codec}"}}'.encode() in seen, (codec, seen[-400:])

        check("SASL_SSL (SCRAM-SHA-512) through TLS: ready, and records written with gzip, snappy, lz4 and zstd "
              "delivered", delivers)
        check("a wrong SCRAM password: herald exits at start naming the broker",
              lambda: refused({**sasl_ssl(paths), "sasl.password": "wrong"}, "SASL"))
        check("an untrusted broker certificate: herald exits at start naming the broker",
              lambda: refused({k: v for k, v in sasl_ssl(paths).items() if k != "ssl.ca.location"},
                              "certificate verify failed"))
    finally:
        if herald:
            herald.terminate()
            herald.wait(timeout=15)
        tansu.kill()
        tansu.wait()
    print("RESULTS " + json.dumps(RESULTS), flush=True)
    return 0 if RESULTS["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
