"""
Security: tokens on the TCP and HTTP listeners (refused when wrong or
missing, compared in constant time, never logged) and TLS listeners with a
certificate the test makes, used by the Python client and the worker
runner.
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import uuid
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from procession.http import web
from procession.tcp import protocol
from procession.client import Client, Unauthorized
from procession.tcp.protocol import WorkerFactory
from tests.ledger import REPO, Ledger, Procession, environment, tail, wait_for
from tests.redis import shared_redis
from tests.test_fault_connections import IdleDispatcher
from tests.wire import WireClient


def make_certificate(folder: str) -> tuple[str, str]:
    """
    A self-signed certificate for 127.0.0.1 and localhost: the paths of
    its key and certificate (PEM).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "procession test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path = os.path.join(folder, "key.pem")
    cert_path = os.path.join(folder, "cert.pem")
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(cert_path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class TokenTests(SynchronousTestCase):
    """
    Worker and admin tokens, on a server whose listeners need them.
    """

    def setUp(self) -> None:
        self.token = "tok-" + uuid.uuid4().hex
        self.admin = "adm-" + uuid.uuid4().hex
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        token_file = os.path.join(folder, "token")
        admin_file = os.path.join(folder, "admin")
        for path, value in ((token_file, self.token), (admin_file, self.admin)):
            with open(path, "w", encoding="utf-8") as f:
                f.write(value + "\n")
        self.server = Procession(
            self,
            "--token-file", token_file,
            "--admin-token-file", admin_file,
            redis=shared_redis(),
            namespace="s" + uuid.uuid4().hex[:10],
        ).serving()  # fmt: skip

    def test_tcp(self) -> None:
        """
        HELLO without the token, with a wrong one, with one that is the
        token's prefix or has it as a prefix, or of the wrong type: ERR
        unauthorized, and the connection is closed.  The right one works.
        """
        wrong: list[Any] = [
            None,
            "",
            "nope",
            self.token[:-1],
            self.token + "x",
            self.token.upper(),
            42,
            [self.token],
            self.admin,
        ]
        for token in wrong:
            client = WireClient("127.0.0.1", self.server.port)
            self.addCleanup(client.close)
            self.assertTrue(client.hi["auth"])
            body: dict[str, Any] = {"worker": "intruder"}
            if token is not None:
                body["token"] = token
            # a request pipelined behind the HELLO is not served
            client.send("HELLO", body)
            client.send("PUSH", {"type": "t"})
            verb, reply = client.reply()
            self.assertEqual((verb, reply["code"]), ("ERR", "unauthorized"), token)
            self.assertTrue(client.wait_closed(2), token)
        # the Python client says so
        refused = Client("127.0.0.1", self.server.port, token="nope", retry_for=0)
        self.addCleanup(refused.close)
        self.assertRaises(Unauthorized, refused.push, "t")
        client = WireClient("127.0.0.1", self.server.port)
        self.addCleanup(client.close)
        client.hello("friend", token=self.token)
        self.assertTrue(client.push(args=[1])["created"])
        self.assertNotIn(self.token, self.server.full_log())
        self.assertNotIn(self.token[4:], self.server.full_log())

    def test_http(self) -> None:
        """
        Worker routes need the worker (or admin) token, admin routes the
        admin token: 401 without or with a wrong one, 403 with the worker
        token on an admin route.  No token reaches the log.
        """
        job = {"type": "t", "queue": "http"}
        cases = [
            ("POST", "/api/v1/jobs", None, 401),
            ("POST", "/api/v1/jobs", "nope", 401),
            ("POST", "/api/v1/jobs", self.token[:-1], 401),
            ("POST", "/api/v1/jobs", self.token, 201),
            ("POST", "/api/v1/jobs", self.admin, 201),
            ("GET", "/api/v1/queues", None, 401),
            ("GET", "/api/v1/queues", self.token, 403),
            ("GET", "/api/v1/queues", self.admin + "x", 401),
            ("GET", "/api/v1/queues", self.admin, 200),
            ("GET", "/api/v1/jobs/next?queues=none&wait=1", None, 401),
            ("GET", "/api/v1/jobs/next?queues=none&wait=1", self.token, 204),
        ]
        for method, path, token, status in cases:
            got, body = self.server.http(
                method, path, job if method == "POST" else None, token=token
            )
            self.assertEqual(got, status, (method, path, token, body))
            if status in (401, 403):
                self.assertIn(body["error"]["code"], ("unauthorized", "forbidden"))
        # a malformed Authorization header
        got, _ = self.server.http(
            "GET", "/api/v1/queues", headers={"Authorization": "Basic " + self.admin}
        )
        self.assertEqual(got, 401)
        log = self.server.full_log()
        for secret in (self.token, self.admin, self.token[4:], self.admin[4:]):
            self.assertNotIn(secret, log)

    def test_constant_time(self) -> None:
        """
        Both front ends compare tokens with hmac.compare_digest.
        """
        calls: list[tuple[bytes, bytes]] = []
        compare = hmac.compare_digest

        def spy(a: Any, b: Any) -> bool:
            calls.append((a, b))
            return compare(a, b)

        self.patch(protocol.hmac, "compare_digest", spy)
        factory = WorkerFactory(IdleDispatcher(), Clock(), token="s3cret")  # type: ignore[arg-type]
        connection = factory.buildProtocol(None)
        connection.makeConnection(StringTransport())
        connection.dataReceived(b'HELLO {"worker":"w","token":"guess"}\n')
        self.assertEqual(calls, [(b"guess", b"s3cret")])

        calls.clear()
        self.patch(web.hmac, "compare_digest", spy)
        self.assertFalse(web._same("guess", "s3cret"))
        self.assertEqual(calls, [(b"guess", b"s3cret")])


class TLSTests(SynchronousTestCase):
    """
    TLS listeners with a certificate made by the test.
    """

    def test_tls(self) -> None:
        """
        Over TLS a client pushes and a worker (raw, and the worker runner)
        takes and acks jobs; HTTPS serves the API; a plain-text client gets
        nothing it can read.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        key, cert = make_certificate(folder)
        context = ssl.create_default_context(cafile=cert)
        listener = f"ssl:{{port}}:privateKey={key}:certKey={cert}:interface=127.0.0.1"
        server = Procession(
            self,
            tcp=listener,
            http=listener,
            tls=context,
            redis=shared_redis(),
            namespace="s" + uuid.uuid4().hex[:10],
        ).serving()

        # push with the Python client
        client = Client(url=f"tls://127.0.0.1:{server.port}", tls=context, retry_for=5)
        self.addCleanup(client.close)
        pushed = client.push("t", [1], queue="tls")
        ids = client.push_many([{"type": "work", "args": [0.0]} for _ in range(50)])

        # take it with a raw TLS worker
        sock = server.connect()
        self.addCleanup(sock.close)
        self.assertIsInstance(sock, ssl.SSLSocket)
        reader = sock.makefile("rb")
        self.assertTrue(reader.readline().startswith(b"HI "))
        sock.sendall(b'HELLO {"worker":"tls"}\nREADY {"queues":["tls"],"credit":1}\n')
        frames = [reader.readline() for _ in range(3)]
        jobs = [json.loads(f[4:]) for f in frames if f.startswith(b"JOB ")]
        self.assertEqual([j["id"] for j in jobs], [pushed])
        sock.sendall(b'ACK {"id":"%s"}\n' % pushed.encode())
        self.assertEqual(reader.readline(), b'OK {"id":"%s"}\n' % pushed.encode())

        # the worker runner, trusting the test's certificate
        ledger = Ledger(self)
        log_path = os.path.abspath(self.mktemp() + "-worker.log")
        command = [
            sys.executable, "-m", "procession.client.worker", "tests.ledger_jobs",
            "--url", f"tls://127.0.0.1:{server.port}",
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            runner = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=environment(PROCESSION_LEDGER=ledger.path, SSL_CERT_FILE=cert),
            )
        self.addCleanup(runner.wait, 10)
        self.addCleanup(runner.kill)
        wait_for(lambda: ledger.count() == 50, 30, lambda: tail(log_path))
        self.assertEqual(sorted(i for i, _, _ in ledger.runs()), sorted(ids))

        # HTTPS
        status, body = server.http("GET", f"/api/v1/jobs/{pushed}")
        self.assertEqual((status, body["state"]), (200, "completed"))
        status, _ = server.http("GET", "/healthz")
        self.assertEqual(status, 200)

        # plain text on the TLS port: no HI, the server hangs up
        plain = socket.create_connection(("127.0.0.1", server.port), 5)
        self.addCleanup(plain.close)
        plain.sendall(b'HELLO {"worker":"plain"}\n')
        plain.settimeout(5)
        try:
            data = plain.recv(4096)
        except ConnectionResetError:
            data = b""
        self.assertFalse(data.startswith(b"HI "), data)
        self.assertNotIn(b"OK", data)
        # and a client that does not trust the certificate is refused
        untrusting = Client(url=f"tls://127.0.0.1:{server.port}", tls=True, retry_for=0)
        self.addCleanup(untrusting.close)
        self.assertRaises(ssl.SSLCertVerificationError, untrusting.push, "t")
