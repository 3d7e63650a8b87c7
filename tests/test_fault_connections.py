"""
Connection abuse: idle connections, slow senders and floods of connections
against the TCP listener, and the limits that keep the server serving its
real workers (C{--handshake-timeout}, C{--max-connections}, the frame
limits).

The policy (docs/reliability.rst, docs/protocol.rst):

- a connection has C{--handshake-timeout} seconds to say C{HELLO}; bytes
  that dribble in meanwhile do not extend that time;
- before C{HELLO}, frames are limited to 16 KiB (after it, C{--max-frame}),
  so connections that have shown no token cannot make the server hold much;
- after C{HELLO} there is no idle timeout (a worker waits for jobs as long
  as it likes; TCP keepalive finds dead peers), and a frame may arrive as
  slowly as the client likes: it costs the server time in proportion to its
  size (never more), memory up to C{--max-frame}, and nothing to the other
  connections;
- past C{--max-connections}, a new connection gets C{ERR
  too_many_connections} and is closed; the others go on;
- past C{--max-http-connections}, a new HTTP connection is answered C{503
  too_many_connections} and closed (at most 64 at once are answered; more
  are closed unanswered); the HTTP clients already connected go on.

The first tests drive the protocol in memory (a fake clock and transport);
the others run the real server as a child process.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from procession.http.limits import MAX_REFUSING
from procession.tcp.protocol import HANDSHAKE_MAX_FRAME, WorkerFactory
from tests.ledger import Canary, Procession, open_fds, wait_for
from tests.redis import shared_redis
from tests.wire import WireClient


class IdleDispatcher:
    """
    Just enough of a dispatcher for connections that do not take jobs.
    """

    accepting = True

    class workflows:
        """
        Nobody cancels a job here.
        """

        on_revoked: list[Any] = []

    def remove_consumer(self, consumer: Any) -> None:
        pass

    def release(self, *args: Any, **kwargs: Any) -> defer.Deferred[list[str]]:
        return defer.succeed([])


class FramingTests(SynchronousTestCase):
    """
    The framing limits, in memory.
    """

    def connect(self, **kwargs: Any) -> tuple[Any, StringTransport, Clock]:
        clock = Clock()
        factory = WorkerFactory(IdleDispatcher(), clock, **kwargs)  # type: ignore[arg-type]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"HI "))
        transport.clear()
        return protocol, transport, clock

    def replies(self, transport: StringTransport) -> list[tuple[str, Any]]:
        frames = []
        for line in transport.value().splitlines():
            verb, _, body = line.decode().partition(" ")
            frames.append((verb, json.loads(body) if body else None))
        transport.clear()
        return frames

    def test_dribbled_frame(self) -> None:
        """
        A 1 MiB frame that arrives 16 bytes at a time costs time in
        proportion to its size: the pieces are not copied again for every
        new one (that would be about 30 GB of copying).
        """
        protocol, transport, _ = self.connect()
        protocol.dataReceived(b'HELLO {"worker":"slow"}\n')
        frame = b'PING "' + b"x" * 1_000_000 + b'"'
        started = time.perf_counter()
        for i in range(0, len(frame), 16):
            protocol.dataReceived(frame[i : i + 16])
        protocol.dataReceived(b"\n")
        took = time.perf_counter() - started
        self.assertEqual([verb for verb, _ in self.replies(transport)], ["OK", "OK"])
        self.assertLess(took, 3.0)

    def test_dribbled_frame_over_the_limit(self) -> None:
        """
        A frame over --max-frame is refused as soon as the bytes held pass
        the limit, without waiting for its end.
        """
        protocol, transport, _ = self.connect(max_frame=1000)
        protocol.dataReceived(b'HELLO {"worker":"slow"}\n')
        for _ in range(100):
            protocol.dataReceived(b"x" * 10)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"x")
        [_, (verb, body)] = self.replies(transport)
        self.assertEqual(
            (verb, body["code"], body["limit"]), ("ERR", "frame_too_large", 1000)
        )
        self.assertTrue(transport.disconnecting)

    def test_frame_limit_before_hello(self) -> None:
        """
        Before HELLO a frame may be 16 KiB at most; after it, --max-frame.
        """
        protocol, transport, _ = self.connect()
        protocol.dataReceived(b"PING " + b" " * HANDSHAKE_MAX_FRAME + b"\n")
        [(verb, body)] = self.replies(transport)
        self.assertEqual(
            (verb, body["code"], body["limit"]),
            ("ERR", "frame_too_large", HANDSHAKE_MAX_FRAME),
        )
        self.assertTrue(transport.disconnecting)

        protocol, transport, _ = self.connect()
        # HELLO and a big frame in one read: the big one is after HELLO.
        protocol.dataReceived(b'HELLO {"worker":"w"}\nPING "' + b"x" * 100_000 + b'"\n')
        self.assertEqual([v for v, _ in self.replies(transport)], ["OK", "OK"])
        self.assertFalse(transport.disconnecting)

    def test_one_error_then_nothing(self) -> None:
        """
        A refused HELLO with a big piece of frame behind it in the same read
        gets one ERR: what follows is not read.
        """
        protocol, transport, _ = self.connect(token="s3cret")
        protocol.dataReceived(
            b'HELLO {"worker":"w","token":"nope"}\nPUSH "' + b"x" * 50_000
        )
        [(verb, body)] = self.replies(transport)
        self.assertEqual((verb, body["code"]), ("ERR", "unauthorized"))
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(b"x" * 50_000 + b"\nPING\n")
        self.assertEqual(transport.value(), b"")

    def test_handshake_timeout_not_extended(self) -> None:
        """
        A HELLO dribbled a byte at a time is cut off at the handshake
        timeout all the same.
        """
        protocol, transport, clock = self.connect(handshake_timeout=10)
        for byte in b'HELLO {"worker":"slowpoke"}':
            protocol.dataReceived(bytes([byte]))
            clock.advance(0.5)
            if transport.disconnecting:
                break
        self.assertTrue(transport.disconnecting)
        self.assertEqual(clock.seconds(), 10.0)
        [(verb, body)] = self.replies(transport)
        self.assertEqual((verb, body["code"]), ("ERR", "out_of_order"))


class ConnectionAbuseTests(SynchronousTestCase):
    """
    The real server under idle, slow and surplus connections, with a
    well-behaved worker (L{Canary}) alongside.
    """

    def serve(self, *args: str) -> Procession:
        server = Procession(
            self, *args, redis=shared_redis(), namespace="c" + uuid.uuid4().hex[:10]
        ).serving()
        canary = Canary(server.port)
        canary.start()
        self.addCleanup(canary.stop)
        wait_for(lambda: canary.rounds > 0 or canary.error, 20)
        self.canary = canary
        return server

    def check_canary(self) -> None:
        rounds = self.canary.rounds
        wait_for(
            lambda: self.canary.rounds > rounds + 3 or self.canary.error,
            20,
            "the canary stalled",
        )
        self.assertIsNone(self.canary.error)
        self.assertLess(self.canary.slowest, 2.0)

    def test_idle_connections(self) -> None:
        """
        200 connections that never say HELLO, and 20 that dribble one a
        byte every 0.2 s, are all closed at --handshake-timeout with ERR
        out_of_order; the canary never notices.
        """
        server = self.serve("--handshake-timeout", "2")
        opened = time.monotonic()
        idle = [Raw(server.port) for _ in range(200)]
        slow = [Raw(server.port) for _ in range(20)]
        hello = b'HELLO {"worker":"slowpoke"}\n'
        closed_at: dict[int, float] = {}
        sockets = idle + slow
        for step in range(150):
            for s in slow:
                if step < len(hello):
                    try:
                        s.sendall(hello[step : step + 1])
                    except OSError:
                        pass
            time.sleep(0.1)
            for n, s in enumerate(sockets):
                if n not in closed_at and s.ended():
                    closed_at[n] = time.monotonic() - opened
            if len(closed_at) == len(sockets):
                break
        self.assertEqual(len(closed_at), len(sockets))
        # Closed by the handshake timeout, not before it; the upper bound is
        # loose because a loaded 2-core machine may lag the reactor.
        self.assertGreaterEqual(min(closed_at.values()), 1.9)
        self.assertLess(max(closed_at.values()), 15)
        for s in sockets:
            last = s.got.splitlines()[-1]
            verb, _, body = last.partition(b" ")
            self.assertEqual((verb, json.loads(body)["code"]), (b"ERR", "out_of_order"))
            s.close()
        self.check_canary()

    def test_max_connections(self) -> None:
        """
        At --max-connections a new connection is answered ERR
        too_many_connections and closed, while the workers already
        connected keep being served; once idle ones time out, new
        connections are welcome again.
        """
        server = self.serve("--max-connections", "30", "--handshake-timeout", "3")
        workers = [WireClient("127.0.0.1", server.port) for _ in range(4)]
        for n, worker in enumerate(workers):
            self.addCleanup(worker.close)
            worker.hello(f"worker{n}")
            worker.ready(["busy"], credit=1)
        # The canary and the 4 workers hold 5 of the 30.
        idle = []
        refused = None
        for _ in range(40):
            s = Raw(server.port)
            first = s.recv(4096)
            if first.startswith(b"HI "):
                idle.append(s)
                continue
            refused = s
            break
        self.assertEqual(len(idle), 25)
        assert refused is not None
        verb, _, body = first.partition(b" ")
        self.assertEqual(
            (verb, json.loads(body)["code"]), (b"ERR", "too_many_connections")
        )
        self.assertTrue(refused.ended(2))
        # the workers are served meanwhile
        for n, worker in enumerate(workers):
            pushed = worker.push(queue="busy", args=[n])["id"]
            owner, _ = next_job_for(workers, pushed)
            self.assertEqual(owner.ok("ACK", {"id": pushed}), {"id": pushed})
        self.check_canary()
        # the idle ones are closed at the handshake timeout; room again
        wait_for(lambda: all(s.ended(0.05) for s in idle), 10)
        again = WireClient("127.0.0.1", server.port)
        self.addCleanup(again.close)
        again.hello("late")
        self.assertEqual(again.ok("PING"), None)
        for s in [*idle, refused]:
            s.close()

    def test_slow_sender(self) -> None:
        """
        After HELLO, a 256 KiB PUSH sent 16 bytes at a time over a few
        seconds is served like any other, and the other connections do not
        wait for it.
        """
        server = self.serve()
        s = Raw(server.port)
        self.addCleanup(s.close)
        s.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b'HELLO {"worker":"dribbler"}\n')
        body = json.dumps({"type": "t", "queue": "slow", "args": "x" * (256 * 1024)})
        frame = b"PUSH " + body.encode() + b"\n"
        for i in range(0, len(frame), 16):
            s.sendall(frame[i : i + 16])
            if i % 4096 == 0:
                time.sleep(0.005)
        s.sock.settimeout(10)
        got = b""
        while got.count(b"\n") < 3:
            got += s.recv(4096)
        lines = got.splitlines()
        self.assertTrue(lines[1].startswith(b"OK "), lines)
        self.assertTrue(lines[2].startswith(b'OK {"id"'), lines)
        self.check_canary()

    def test_max_http_connections(self) -> None:
        """
        At --max-http-connections, a new HTTP connection is answered 503
        too_many_connections and closed, while the HTTP clients already
        connected (a keep-alive client and a long-polling worker) and the
        TCP workers keep being served; once idle connections go, new ones
        are served again.  Past the limit, at most MAX_REFUSING connections
        are kept to be answered: the server's descriptors stay bounded.
        """
        limit = 20
        server = self.serve("--max-http-connections", str(limit))
        # The real clients connect first: keep-alive connections.
        client = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
        poller = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
        self.addCleanup(client.close)
        self.addCleanup(poller.close)
        self.assertEqual(get(client, "/healthz")[0], 200)
        self.assertEqual(get(poller, "/healthz")[0], 200)
        # Idle connections fill the rest; the surplus is refused at once.
        idle = [Raw(server.http_port) for _ in range(limit - 2 + 10)]
        self.addCleanup(lambda: [s.close() for s in idle])
        wait_for(lambda: sum(s.ended(0.01) for s in idle) >= 10, 10)
        time.sleep(0.5)
        ended = [s.ended(0.01) for s in idle]
        self.assertEqual(ended, [False] * (limit - 2) + [True] * 10)
        for s in idle[limit - 2 :]:
            status, body = parse_response(s.got)
            self.assertEqual(status, 503)
            self.assertEqual(
                body["error"], {
                    "code": "too_many_connections",
                    "message": "the server is at --max-http-connections",
                    "limit": limit,
                },
            )  # fmt: skip
        # A real client that connects now gets the 503, cleanly, each time.
        for _ in range(10):
            late = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
            status, body = get(late, "/healthz")
            late.close()
            self.assertEqual(
                (status, body["error"]["code"]), (503, "too_many_connections")
            )
        # The clients already connected are served: a long poll gets the job
        # a TCP worker pushes, and acks it; the keep-alive client reads.
        pusher = WireClient("127.0.0.1", server.port)
        self.addCleanup(pusher.close)
        pusher.hello("pusher")
        for n in range(3):
            pushed = pusher.push(type="t", queue="http-limit", args=[n])["id"]
            status, job = get(poller, "/api/v1/jobs/next?queues=http-limit&wait=10")
            self.assertEqual((status, job["id"]), (200, pushed))
            status, _ = request(
                poller, "POST", f"/api/v1/jobs/{pushed}/ack", {"lease": job["lease"]}
            )
            self.assertEqual(status, 200)
            status, summary = get(client, "/api/v1/queues/http-limit")
            self.assertEqual((status, summary["totals"]["processed"]), (200, n + 1))
        self.check_canary()
        # A flood over the limit costs a bounded number of descriptors:
        # past MAX_REFUSING being answered at once, connections are closed
        # unanswered.
        before = open_fds(server.pid)
        flood = []
        reset = 0
        for _ in range(2 * MAX_REFUSING + 40):
            try:
                flood.append(Raw(server.http_port))
            except ConnectionResetError:
                # closed unanswered before connect() returned
                reset += 1
        self.addCleanup(lambda: [s.close() for s in flood])
        # The flood is connected, its refusals not yet over (they last 2 s):
        # the server holds at most MAX_REFUSING of it.
        time.sleep(0.3)
        held = open_fds(server.pid) - before
        wait_for(lambda: all(s.ended(0.01) for s in flood), 15)
        answered = sum(1 for s in flood if s.got.startswith(b"HTTP/1.1 503 "))
        self.assertEqual(
            sum(1 for s in flood if s.got and not s.got.startswith(b"HTTP/1.1 503 ")), 0
        )
        # (Refusals end after 2 s, making room for more: on a slow machine
        # somewhat more than MAX_REFUSING of the flood may be answered.)
        self.assertGreater(answered, 0)
        self.assertLess(answered, len(flood) + reset)
        self.assertLessEqual(held, MAX_REFUSING)
        # Idle connections gone, a new client is served again.
        for s in idle:
            s.close()

        def served() -> bool:
            fresh = http.client.HTTPConnection(
                "127.0.0.1", server.http_port, timeout=10
            )
            try:
                return get(fresh, "/healthz")[0] == 200
            finally:
                fresh.close()

        wait_for(served, 10)
        self.assertEqual(get(client, "/healthz")[0], 200)
        self.check_canary()


def request(
    connection: http.client.HTTPConnection, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """
    One request on a (keep-alive) connection: the status and JSON body.
    """
    headers = {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    connection.request(method, path, data, headers)
    response = connection.getresponse()
    content = response.read()
    return response.status, json.loads(content) if content else None


def get(connection: http.client.HTTPConnection, path: str) -> tuple[int, Any]:
    return request(connection, "GET", path)


def parse_response(data: bytes) -> tuple[int, Any]:
    """
    The status and JSON body of a raw HTTP response.
    """
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


class Raw:
    """
    A plain socket to the server, keeping what it reads in C{got}.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 5)
        self.got = b""

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, size: int) -> bytes:
        return self.sock.recv(size)

    def close(self) -> None:
        self.sock.close()

    def ended(self, wait: float = 0.0) -> bool:
        """
        Whether the server has closed the connection (reading what it sent
        meanwhile).
        """
        self.sock.settimeout(wait or 0.001)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.got += data
        except (TimeoutError, BlockingIOError):
            return False
        except ConnectionResetError:
            return True


def next_job_for(workers: list[WireClient], job_id: str) -> tuple[WireClient, Any]:
    """
    The worker the job went to, and the job.
    """
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for worker in workers:
            if not worker.no_job(0.05):
                job = worker.next_job(1)
                if job["id"] == job_id:
                    return worker, job
                raise AssertionError(f"unexpected job {job!r}")
    raise AssertionError(f"job {job_id} went nowhere")
