"""
Tests of L{procession.client.client} against a real server: each test
starts C{twist procession} as a child process on free loopback ports,
against the test Redis in a namespace of its own, and uses the blocking
client the way an application would.  The helpers here (L{ServerProcess},
L{WorkerProcess}, L{RedisReader}) serve L{tests.test_worker} too, which
tests the worker runner.

The client blocks and the server is another process, so these are
synchronous tests; every wait has a deadline and every process a test
starts is killed in its cleanup.  Job states are read straight from Redis
(L{RedisReader}), the key layout being C{<namespace>:{<queue>}:job:<id>}.
"""

from __future__ import annotations

import atexit
import json
import os
from functools import partial
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from procession.core.errors import ERRORS
from procession.client import (
    Client,
    ConnectionFailed,
    InvalidJob,
    LeaseLost,
    ProcessionError,
    Unauthorized,
    error_from_body,
    make_job,
    resolve_address,
)
from tests.ledger import wait_for as _poll
from tests.redis import free_port, namespace, shared_redis
from tests.resp import encode_all, read_reply

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The ledger's poller, polling a little faster for these short waits.
wait_for = partial(_poll, interval=0.02)


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSION_")}
    env.update(extra)
    return env


def _tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


class RedisReader:
    """
    A minimal blocking RESP client, to look at the jobs the server stored.
    """

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.sock = socket.create_connection(
            ("127.0.0.1", shared_redis().port), timeout=5
        )
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def pipeline(self, *commands: tuple[Any, ...]) -> list[Any]:
        """
        Send the commands at once; their replies.
        """
        self.sock.sendall(encode_all(commands))
        return [read_reply(self.file) for _ in commands]

    def __call__(self, *command: Any) -> Any:
        return self.pipeline(command)[0]

    def key(self, queue: str, suffix: str) -> str:
        return f"{self.ns}:{{{queue}}}:{suffix}"

    def job(self, queue: str, job_id: str) -> dict[str, str]:
        """
        A job's hash ({} when there is none).
        """
        flat = self("HGETALL", self.key(queue, f"job:{job_id}"))
        return dict(zip(flat[::2], flat[1::2]))

    def states(self, queue: str, ids: list[str]) -> list[str | None]:
        """
        The state of each job.
        """
        return self.pipeline(
            *[("HGET", self.key(queue, f"job:{i}"), "state") for i in ids]
        )

    def errors(self, queue: str, job_id: str) -> list[dict[str, Any]]:
        """
        A job's recorded failures, newest first.
        """
        return [
            json.loads(e)
            for e in self("LRANGE", self.key(queue, f"errors:{job_id}"), 0, -1)
        ]

    def count(self, queue: str, state_set: str) -> int:
        return self("ZCARD", self.key(queue, state_set))


class ServerProcess:
    """
    A C{twist procession} child process on loopback ports, its output in a
    file.  It can be killed and started again on the same ports.
    """

    def __init__(self, test: SynchronousTestCase | None, *args: str) -> None:
        self.ns = namespace()
        self.port = free_port()
        self.http_port = free_port()
        self.args = list(args)
        if test is None:
            self.log_path = os.path.join(
                tempfile.mkdtemp(prefix="procession-test-"), "server.log"
            )
        else:
            self.log_path = os.path.abspath(test.mktemp() + "-server.log")
            test.addCleanup(self.kill)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "ServerProcess":
        """
        Start the server and wait until it says HI.
        """
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "twisted",
                    "--log-format=text",
                    "procession",
                    "--tcp",
                    str(self.port),
                    "--http",
                    str(self.http_port),
                    "--redis",
                    shared_redis().url,
                    "--namespace",
                    self.ns,
                    "--sweep-interval",
                    "0.2",
                    *self.args,
                ],  # fmt: skip
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=os.path.dirname(self.log_path),
                env=_environment(),
            )
        wait_for(
            self._says_hi,
            20,
            lambda: "the server did not start:\n" + _tail(self.log_path),
        )
        return self

    def _says_hi(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError("the server exited:\n" + _tail(self.log_path))
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(3) == b"HI "
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """
        Send a signal (SIGKILL by default) and wait for the process to end.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(15)


def client_of(
    test: SynchronousTestCase, server: ServerProcess, **kwargs: Any
) -> Client:
    """
    A client of a server, closed when the test ends.
    """
    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("retry_for", 5.0)
    c = Client("127.0.0.1", server.port, **kwargs)
    test.addCleanup(c.close)
    return c


_shared: ServerProcess | None = None


def shared_server() -> ServerProcess:
    """
    One server for the tests that only push (started on first use, killed
    when the test run exits), to save a server start per test.
    """
    global _shared
    if _shared is None or _shared.process is None or _shared.process.poll() is not None:
        _shared = ServerProcess(None)
        # atexit runs the last registered first: kill, then remove the log
        atexit.register(shutil.rmtree, os.path.dirname(_shared.log_path), True)
        atexit.register(_shared.kill)
        _shared.start()
    return _shared


class WorkerProcess:
    """
    C{python -m procession.client.worker tests.worker_jobs} as a child process,
    recording what its handlers do in a file.
    """

    def __init__(
        self, test: SynchronousTestCase, server: ServerProcess, *args: str
    ) -> None:
        base = os.path.abspath(test.mktemp())
        self.record_path = base + "-record.txt"
        self.log_path = base + "-worker.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "procession.client.worker",
                    "tests.worker_jobs",
                    "--port",
                    str(server.port),
                    "--max-backoff",
                    "0.3",
                    "--log-level",
                    "DEBUG",
                    *args,
                ],  # fmt: skip
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=_environment(PROCESSION_TEST_RECORD=self.record_path),
            )
        test.addCleanup(self.kill)

    def records(self, event: str | None = None) -> list[tuple[str, str, int]]:
        """
        The handlers' events so far: (event, job id, attempt).
        """
        try:
            with open(self.record_path, encoding="ascii") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        rows = [(e, i, int(a)) for e, i, a in (line.split() for line in lines)]
        return [row for row in rows if event is None or row[0] == event]

    def log(self) -> str:
        return _tail(self.log_path)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def wait(self, timeout: float) -> int:
        """
        Wait for the worker to exit by itself; its status.
        """
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker did not exit:\n{self.log()}") from None


class DropFirstReply:
    """
    A TCP proxy in front of a server that forwards everything, except that
    on its first connection it closes both sides instead of forwarding the
    first reply to a push: the push is stored, but its client never hears.
    """

    def __init__(self, test: SynchronousTestCase, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.dropped = 0
        self.running = True
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        test.addCleanup(self.close)

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        for s in [self.listener, *self.sockets]:
            s.close()

    def _accept(self) -> None:
        while self.running:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                continue
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            self.sockets += [downstream, upstream]
            drop = self.connections == 1
            threading.Thread(
                target=self._pump, args=(downstream, upstream, False), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, downstream, drop), daemon=True
            ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, drop: bool) -> None:
        buffer = b""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if not drop:
                    sink.sendall(data)
                    continue
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.startswith(b'OK {"id"'):
                        self.dropped += 1
                        raise OSError("dropped")
                    sink.sendall(line + b"\n")
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class AddressTests(SynchronousTestCase):
    """
    Where a client connects, and the jobs and errors it builds, without a
    server.
    """

    def setUp(self) -> None:
        saved = dict(os.environ)

        def restore() -> None:
            os.environ.clear()
            os.environ.update(saved)

        self.addCleanup(restore)
        for name in ("PROCESSION_HOST", "PROCESSION_PORT", "PROCESSION_TOKEN"):
            os.environ.pop(name, None)

    def test_defaults(self) -> None:
        self.assertEqual(resolve_address()[:3], ("127.0.0.1", 7000, None))

    def test_environment(self) -> None:
        os.environ.update(
            PROCESSION_HOST="jobs.internal",
            PROCESSION_PORT="7100",
            PROCESSION_TOKEN="s3",
        )
        c = Client()
        self.assertEqual((c.host, c.port, c.token), ("jobs.internal", 7100, "s3"))
        # arguments win over the environment
        self.assertEqual(resolve_address("h", 1, token="t")[:3], ("h", 1, "t"))

    def test_url(self) -> None:
        host, port, _, tls = resolve_address(url="tcp://10.0.0.5:7200")
        self.assertEqual((host, port, tls), ("10.0.0.5", 7200, None))
        host, port, _, tls = resolve_address(url="tls://jobs.example.com:7443")
        self.assertEqual((host, port), ("jobs.example.com", 7443))
        self.assertIsNotNone(tls)
        self.assertEqual(resolve_address(url="[::1]:7300")[:2], ("::1", 7300))
        self.assertRaises(ValueError, resolve_address, url="http://h:1")
        self.assertRaises(ValueError, resolve_address, port="seven")

    def test_make_job(self) -> None:
        job = make_job("send", ("a", 1), queue="mail", meta={"k": 1})
        self.assertRegex(job["id"], r"\A[0-9a-f]{24}\Z")
        self.assertEqual(
            {k: v for k, v in job.items() if k != "id"},
            {"type": "send", "args": ["a", 1], "queue": "mail", "meta": {"k": 1}},
        )
        self.assertNotEqual(make_job("send")["id"], make_job("send")["id"])
        when = datetime(
            2030, 1, 2, 4, 4, 5, 678000, tzinfo=timezone(timedelta(hours=1))
        )
        self.assertEqual(
            make_job("t", run_at=when)["run_at"], "2030-01-02T03:04:05.678Z"
        )
        self.assertEqual(make_job("t", delay=timedelta(minutes=2))["delay"], 120.0)
        self.assertRaises(ValueError, make_job, "t", run_at=datetime(2030, 1, 1))

    def test_errors(self) -> None:
        error = error_from_body(
            {"code": "lease_lost", "message": "the lease is lost", "id": "j1"}
        )
        self.assertIsInstance(error, LeaseLost)
        self.assertIsInstance(error, ProcessionError)
        self.assertEqual(
            (error.code, error.message, error.details),
            ("lease_lost", "the lease is lost", {"id": "j1"}),
        )
        unknown = error_from_body({"code": "brand_new", "message": "?"})
        self.assertIs(type(unknown), ProcessionError)
        self.assertEqual(unknown.code, "brand_new")
        # every code of docs/protocol.rst has its class
        with open(os.path.join(REPO, "docs", "protocol.rst"), encoding="utf-8") as f:
            table = f.read().split("=\n``bad_frame``", 1)[1].split("\n=", 1)[0]
        documented = {"bad_frame"} | {
            line.split("``")[1] for line in table.splitlines() if line.startswith("``")
        }
        self.assertIn("lease_lost", documented)
        self.assertEqual(documented - set(ERRORS), set())

    def test_no_server(self) -> None:
        """
        With nothing listening, a push gives up after C{retry_for}.
        """
        c = Client("127.0.0.1", free_port(), retry_for=0.3, timeout=1)
        start = time.monotonic()
        error = self.assertRaises(ConnectionFailed, c.push, "t")
        self.assertLess(time.monotonic() - start, 3)
        self.assertIsInstance(error, ConnectionError)
        self.assertIsInstance(error.__cause__, OSError)


class ClientTests(SynchronousTestCase):
    """
    Pushing jobs with L{Client}.
    """

    def setUp(self) -> None:
        self.server = shared_server()
        self.redis = RedisReader(self.server.ns)
        self.addCleanup(self.redis.close)
        # the server is shared: each test has queues of its own
        self.q = "q" + uuid.uuid4().hex[:12]

    def client(self, **kwargs: Any) -> Client:
        """
        A client of the shared server, closed when the test ends.
        """
        return client_of(self, self.server, **kwargs)

    def test_push(self) -> None:
        c = self.client()
        job_id = c.push(
            "send_email",
            {"to": "a@example.com"},
            queue=self.q,
            priority=5,
            max_attempts=3,
            meta={"by": "test"},
        )
        job = self.redis.job(self.q, job_id)
        self.assertEqual(job["state"], "queued")
        self.assertEqual(job["type"], "send_email")
        self.assertEqual(json.loads(job["args"]), {"to": "a@example.com"})
        self.assertEqual((job["priority"], job["max_attempts"]), ("5", "3"))
        later = c.push("t", delay=timedelta(hours=1), queue=self.q)
        self.assertEqual(self.redis.job(self.q, later)["state"], "scheduled")
        self.assertGreater(c.ping(), 0)

    def test_same_id_twice(self) -> None:
        """
        Pushing an id that exists stores nothing more and returns the id.
        """
        c = self.client()
        self.assertEqual(c.push("t", [1], id="order-1", queue=self.q), "order-1")
        self.assertEqual(c.push("t", [2], id="order-1", queue=self.q), "order-1")
        self.assertEqual(self.redis.count(self.q, "queued"), 1)
        self.assertEqual(json.loads(self.redis.job(self.q, "order-1")["args"]), [1])

    def test_resend_after_lost_reply(self) -> None:
        """
        When the connection breaks between the push and its reply, the
        client reconnects and sends the push again, with the same id: the
        job is stored once and the caller gets its id.
        """
        proxy = DropFirstReply(self, self.server.port)
        c = Client("127.0.0.1", proxy.port, timeout=5, retry_for=5)
        self.addCleanup(c.close)
        job_id = c.push("t", ["once"], queue=self.q)
        self.assertEqual((proxy.dropped, proxy.connections), (1, 2))
        self.assertEqual(self.redis.count(self.q, "queued"), 1)
        self.assertEqual(self.redis.job(self.q, job_id)["state"], "queued")
        self.assertEqual(
            self.redis("HGET", self.redis.key(self.q, "stats"), "pushed"), "1"
        )

    def test_push_many(self) -> None:
        """
        C{push_many} sends batches of at most C{batch_size} jobs, and each
        batch under the server's frame limit.
        """
        c = self.client(batch_size=1000)
        jobs = [{"type": "t", "args": [i], "queue": self.q} for i in range(2500)]
        ids = c.push_many(jobs)
        self.assertEqual(len(set(ids)), 2500)
        self.assertEqual(self.redis.count(self.q, "queued"), 2500)
        self.assertEqual(json.loads(self.redis.job(self.q, ids[1234])["args"]), [1234])
        frames, starts = c._batches([make_job("t", ["x" * 300]) for _ in range(5000)])
        self.assertEqual(starts[:2], [0, 1000])
        self.assertTrue(all(len(f) <= c._max_frame() for f in frames))
        # ids given are kept
        self.assertEqual(
            c.push_many([{"type": "t", "id": "mine", "queue": self.q}]), ["mine"]
        )
        self.assertEqual(c.push_many([]), [])

    def test_push_many_frame_limit(self) -> None:
        """
        Against a server with a small frame limit, batches get smaller.
        """
        server = ServerProcess(self, "--max-frame", "20000").start()
        redis = RedisReader(server.ns)
        self.addCleanup(redis.close)
        c = client_of(self, server)
        ids = c.push_many([{"type": "t", "args": ["x" * 400]} for _ in range(200)])
        self.assertEqual(redis.count("default", "queued"), len(ids))

    def test_push_many_refused(self) -> None:
        """
        A refused job is named by its index in the whole list; batches
        other than its own are stored.
        """
        c = self.client(batch_size=10)
        jobs = [{"type": "t", "args": [i], "queue": self.q} for i in range(30)]
        jobs[23]["priority"] = "high"
        error = self.assertRaises(InvalidJob, c.push_many, jobs)
        self.assertEqual((error.index, error.field), (23, "priority"))
        self.assertIn("job 23:", str(error))
        self.assertEqual(self.redis.count(self.q, "queued"), 20)
        error = self.assertRaises(
            InvalidJob, c.push_many, [{"type": "t"}, {"type": "t", "colour": 1}]
        )
        self.assertEqual((error.index, error.field), (1, "colour"))

    def test_pipeline(self) -> None:
        c = self.client()
        with c.pipeline() as p:
            ids = [p.push("t", [i], queue=self.q) for i in range(300)]
            batch = p.push_many([{"type": "t", "queue": self.q}] * 5)
            self.assertEqual(len(p), 301)
        self.assertEqual(p.results, [*ids, batch])
        self.assertEqual(self.redis.count(self.q, "queued"), 305)
        # a refusal is raised after every reply is read; the rest is stored
        p = c.pipeline()
        p.push("t", queue=self.q + "b")
        p.push("t", queue="bad queue")
        p.push("t", queue=self.q + "b")
        error = self.assertRaises(InvalidJob, p.execute)
        self.assertEqual(error.field, "queue")
        self.assertIsInstance(p.results[1], InvalidJob)
        self.assertEqual(self.redis.count(self.q + "b", "queued"), 2)
        # the connection is still in step
        after = c.push("t", id="after", queue=self.q)
        self.assertEqual(self.redis.job(self.q, after)["state"], "queued")

    def test_errors(self) -> None:
        c = self.client()
        error = self.assertRaises(InvalidJob, c.push, "t", max_attempts=0)
        self.assertEqual((error.code, error.field), ("invalid_job", "max_attempts"))
        self.assertIsInstance(error, ProcessionError)
        # the connection is still usable
        self.assertTrue(c.push("t"))

    def test_token(self) -> None:
        server = ServerProcess(self, "--token", "s3cret").start()
        for token in (None, "wrong"):
            c = client_of(self, server, token=token)
            error = self.assertRaises(Unauthorized, c.push, "t")
            self.assertEqual(error.code, "unauthorized")
        self.assertTrue(client_of(self, server, token="s3cret").push("t"))

    def test_threads(self) -> None:
        """
        Threads may share a client.
        """
        c = self.client()
        ids: list[str] = []

        def push() -> None:
            for i in range(40):
                ids.append(c.push("t", [i], queue=self.q))

        threads = [threading.Thread(target=push) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(len(set(ids)), 240)
        self.assertEqual(self.redis.count(self.q, "queued"), 240)
