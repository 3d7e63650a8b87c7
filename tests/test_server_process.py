"""
End-to-end tests of the real server: each test starts C{twist procession}
as a child process on free loopback ports and talks to it over sockets as
a worker would (L{tests.wire}).

The server is another process, so the tests block freely; every wait has a
deadline, and every process a test starts is killed in its cleanup.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from procession.redis.embedded import LOCK_FILE, SOCKET_FILE
from tests.redis import free_port, shared_redis
from tests.wire import WireClient, WireClosed, WireTimeout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# `python -m twisted` is `twist` (twisted/__main__.py); the package form
# `-m twisted.application.twist` is not runnable.
TWIST = [sys.executable, "-m", "twisted", "--log-format=text"]

OPTIONS = (
    "--tcp --http --redis --redis-server --data-dir --fsync --token "
    "--token-file --insecure --shutdown-grace --max-frame --max-job-size "
    "--max-connections --http-access-log"
).split()


def _alive(pid: int) -> bool:
    """
    Whether C{pid} is a live (not zombie) process.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _redis_pid(data_dir: str) -> int | None:
    """
    The embedded redis-server's pid, as the server wrote it in the lock file.
    """
    try:
        with open(os.path.join(data_dir, LOCK_FILE), encoding="ascii") as f:
            owner = f.read()
    except OSError:
        return None
    _, _, pid = owner.partition("redis-server pid ")
    pid = pid.strip()
    return int(pid) if pid.isdigit() else None


def _environment() -> dict[str, str]:
    """
    The children's environment: no procession settings, and this checkout
    first on the path, so that the server runs the code under test (a
    strict editable install links only the modules that existed when it
    was made).
    """
    env = dict(os.environ)
    for name in ("PROCESSION_REDIS", "PROCESSION_TOKEN"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return env


class Server:
    """
    One C{twist procession} child process, its output in a file.
    """

    def __init__(
        self,
        test: SynchronousTestCase,
        data_dir: str,
        *args: str,
        interface: str = "127.0.0.1",
    ) -> None:
        self.test = test
        self.data_dir = data_dir
        self.port = free_port()
        self.http_port = free_port()
        self.args = [
            "--tcp", f"tcp:{self.port}:interface={interface}",
            "--http", str(self.http_port),
            "--data-dir", data_dir,
            *args,
        ]  # fmt: skip
        self.log_path = os.path.abspath(test.mktemp() + ".log")
        self.process: subprocess.Popen[bytes] | None = None
        self.redis_pid: int | None = None

    def start(self) -> "Server":
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*TWIST, "procession", *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=os.path.dirname(os.path.abspath(self.log_path)),
                env=_environment(),
            )
        self.test.addCleanup(self.kill)
        return self

    def run(self, timeout: float = 20) -> int:
        """
        Start and wait for the process to end by itself; its exit status.
        """
        self.start()
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.test.fail(f"the server did not exit:\n{self.output()}")

    def serving(self, timeout: float = 20) -> "Server":
        """
        Start (unless started) and wait until the TCP listener says HI.
        """
        if self.process is None:
            self.start()
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self.test.fail(
                    f"the server exited with {self.process.returncode}:\n"
                    + self.output()
                )
            try:
                client = WireClient("127.0.0.1", self.port, timeout=2)
            except (OSError, WireClosed, WireTimeout):
                if time.monotonic() > deadline:
                    self.test.fail(f"the server never listened:\n{self.output()}")
                time.sleep(0.05)
                continue
            client.close()
            self.redis_pid = _redis_pid(self.data_dir)
            return self

    def client(self, worker: str | None = "test", **kwargs: Any) -> WireClient:
        """
        A new connection, closed when the test ends; says HELLO as
        C{worker} unless that is L{None}.
        """
        client = WireClient("127.0.0.1", self.port, timeout=5)
        self.test.addCleanup(client.close)
        if worker is not None:
            client.hello(worker, **kwargs)
        return client

    def terminate(self, timeout: float = 15) -> tuple[int, float]:
        """
        SIGTERM the server (only it, not its process group) and wait for it:
        (exit status, seconds it took).
        """
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.test.fail(f"the server ignored SIGTERM:\n{self.output()}")
        return status, time.monotonic() - started

    def output(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def kill(self) -> None:
        """
        SIGKILL the server if it still runs, and its embedded redis-server,
        which a killed server leaves behind.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        pid = self.redis_pid
        if pid is not None and _alive(pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    ours = self.data_dir.encode() in f.read()
            except OSError:
                ours = False
            if ours:
                os.kill(pid, signal.SIGKILL)


class ServerProcessTests(SynchronousTestCase):
    """
    The real server, started with C{twist procession}.
    """

    def data_dir(self) -> str:
        # Short, so that the embedded Redis's socket fits in sun_path.
        path = tempfile.mkdtemp(prefix="procession-e2e-")
        self.addCleanup(shutil.rmtree, path, True)
        return os.path.join(path, "data")

    def test_help(self) -> None:
        """
        C{twist procession --help} exits 0 and documents every option.
        """
        result = subprocess.run(
            [*TWIST, "procession", "--help"],
            capture_output=True,
            timeout=30,
            env=_environment(),
            cwd=REPO,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        text = result.stdout.decode()
        for option in OPTIONS:
            self.assertRegex(text, rf"(?m)^\s*{option}[=\s]")

    def test_restart_keeps_jobs(self) -> None:
        """
        Stopping the server (SIGTERM) and starting it again on the same
        data directory loses no submitted job: the embedded Redis is
        stopped cleanly with the server and its AOF brings every job back.
        """
        data_dir = self.data_dir()
        server = Server(self, data_dir).serving()
        self.assertIsNotNone(server.redis_pid)
        self.assertTrue(_alive(server.redis_pid))
        producer = server.client("producer")
        queued, scheduled = set(), set()
        for n in range(50):
            if n % 5 == 0:
                reply = producer.push(args=[n], delay=3600)
                scheduled.add(reply["id"])
            else:
                reply = producer.push(args=[n])
                queued.add(reply["id"])
            self.assertTrue(reply["created"])
        producer.close()

        status, took = server.terminate()
        self.assertEqual(status, 0, server.output())
        self.assertLess(took, 5)
        self.assertFalse(_alive(server.redis_pid), "redis-server outlived the server")
        self.assertFalse(os.path.exists(os.path.join(data_dir, SOCKET_FILE)))
        self.assertIn("procession stopped", server.output())

        again = Server(self, data_dir).serving()
        self.assertNotEqual(again.redis_pid, server.redis_pid)
        worker = again.client("worker")
        worker.ready(credit=100)
        seen = []
        for _ in queued:
            job = worker.next_job(5)
            self.assertEqual(job["attempt"], 1)
            seen.append(job["id"])
            self.assertEqual(worker.ok("ACK", {"id": job["id"]}), {"id": job["id"]})
        self.assertEqual(sorted(seen), sorted(queued))
        self.assertTrue(worker.no_job(0.3))
        # The scheduled jobs are there too: pushing their ids again creates
        # nothing.
        for job_id in scheduled:
            reply = worker.push(id=job_id)
            self.assertEqual(reply, {"id": job_id, "created": False})
        status, _ = again.terminate()
        self.assertEqual(status, 0, again.output())

    def test_worker_killed_mid_job(self) -> None:
        """
        When a worker process dies holding a job, the job goes at once to a
        waiting worker, as its second attempt.
        """
        server = Server(self, self.data_dir()).serving()
        script = (
            "import json, time\n"
            "from tests.wire import WireClient\n"
            f"c = WireClient('127.0.0.1', {server.port})\n"
            "c.hello('doomed')\n"
            "c.ready(credit=1)\n"
            "print('ready', flush=True)\n"
            "print(json.dumps(c.next_job(10)), flush=True)\n"
            "time.sleep(60)\n"
        )
        worker_a = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            cwd=REPO,
            env=_environment(),
        )
        self.addCleanup(worker_a.wait, 10)
        self.addCleanup(worker_a.kill)
        assert worker_a.stdout is not None
        lines = _Lines(worker_a.stdout.fileno())
        self.assertEqual(lines.next(10), "ready")
        # Only A waits, so A gets it.
        pushed = server.client("producer").push(args=["work"])["id"]
        held = json.loads(lines.next(5))
        self.assertEqual((held["id"], held["attempt"]), (pushed, 1))

        worker_b = server.client("survivor")
        worker_b.ready(credit=1)
        self.assertTrue(worker_b.no_job(0.2))
        worker_a.send_signal(signal.SIGKILL)
        started = time.monotonic()
        job = worker_b.next_job(1.0)
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual((job["id"], job["attempt"]), (pushed, 2))
        self.assertEqual(worker_b.ok("ACK", {"id": pushed}), {"id": pushed})

    def test_graceful_shutdown_waits_for_ack(self) -> None:
        """
        On SIGTERM the server tells workers to stop (C{QUIET}), takes the
        acks of jobs in hand within the grace period and exits 0 as soon as
        none is left.
        """
        data_dir = self.data_dir()
        server = Server(self, data_dir, "--shutdown-grace", "5").serving()
        worker = server.client("worker")
        pushed = worker.push(args=[1])["id"]
        worker.ready(credit=1)
        job = worker.next_job(5)
        self.assertEqual(job["id"], pushed)

        assert server.process is not None
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        worker.wait_quiet(5)
        self.assertEqual(worker.ok("ACK", {"id": pushed}), {"id": pushed})
        status = server.process.wait(10)
        self.assertEqual(status, 0, server.output())
        # It did not sit out the grace period once the job was done.
        self.assertLess(time.monotonic() - started, 4)
        self.assertTrue(worker.wait_closed(2))

        # The ack stuck: after a restart nothing is offered.
        again = Server(self, data_dir).serving()
        worker = again.client("worker")
        worker.ready(credit=1)
        self.assertTrue(worker.no_job(0.5))
        self.assertEqual(again.terminate()[0], 0)

    def test_graceful_shutdown_gives_back(self) -> None:
        """
        A job not finished within the grace period goes back to its queue
        (its attempt counted) and the server still exits 0.
        """
        data_dir = self.data_dir()
        server = Server(self, data_dir, "--shutdown-grace", "1").serving()
        worker = server.client("worker")
        pushed = worker.push(args=[1])["id"]
        worker.ready(credit=1)
        self.assertEqual(worker.next_job(5)["attempt"], 1)

        status, took = server.terminate()
        self.assertEqual(status, 0, server.output())
        self.assertGreaterEqual(took, 0.9)
        self.assertLess(took, 5)
        worker.wait_quiet(1)
        self.assertTrue(worker.wait_closed(1))
        self.assertFalse(_alive(server.redis_pid))

        again = Server(self, data_dir).serving()
        worker = again.client("worker")
        worker.ready(credit=1)
        job = worker.next_job(3)
        self.assertEqual((job["id"], job["attempt"]), (pushed, 2))
        worker.ok("ACK", {"id": pushed})
        self.assertEqual(again.terminate()[0], 0)

    def test_exposed_listener_needs_token(self) -> None:
        """
        A listener reachable beyond loopback needs a token: without one the
        server refuses to start; with --token-file it starts, and HELLO
        without the right token is refused and the connection closed.  The
        token never reaches the log.
        """
        refused = Server(self, self.data_dir(), interface="0.0.0.0")
        self.assertNotEqual(refused.run(), 0)
        output = refused.output()
        self.assertIn("reachable beyond loopback", output)
        self.assertIn("--token-file", output)
        self.assertFalse(os.path.exists(refused.data_dir))

        token = "tok-" + uuid.uuid4().hex
        token_file = os.path.abspath(self.mktemp())
        with open(token_file, "w", encoding="utf-8") as f:
            f.write(token + "\n")
        server = Server(
            self, self.data_dir(), "--token-file", token_file, interface="0.0.0.0"
        ).serving()

        for wrong in (None, "not-" + token):
            client = server.client(None)
            self.assertTrue(client.hi["auth"])
            body = {"worker": "intruder"}
            if wrong is not None:
                body["token"] = wrong
            verb, reply = client.request("HELLO", body)
            self.assertEqual(verb, "ERR")
            self.assertEqual(reply["code"], "unauthorized")
            self.assertTrue(client.wait_closed(2))

        client = server.client("friend", token=token)
        self.assertTrue(client.push(args=[1])["created"])
        self.assertEqual(server.terminate()[0], 0)
        self.assertNotIn(token, server.output())
        self.assertNotIn(token[4:], server.output())

    def test_external_redis(self) -> None:
        """
        With --redis the server uses that Redis under its --namespace and
        runs no Redis of its own.
        """
        redis = shared_redis()
        namespace = "e2e" + uuid.uuid4().hex[:10]
        server = Server(
            self, self.data_dir(), "--redis", redis.url, "--namespace", namespace
        ).serving()
        self.assertIsNone(server.redis_pid)
        self.assertFalse(os.path.exists(server.data_dir))
        worker = server.client("worker")
        pushed = worker.push(args=[1])["id"]
        worker.ready(credit=1)
        self.assertEqual(worker.next_job(5)["id"], pushed)
        worker.ok("ACK", {"id": pushed})
        keys = _redis_command(redis.port, "KEYS", namespace + ":*")
        self.assertTrue(keys, "nothing was written under the namespace")
        self.assertEqual(server.terminate()[0], 0)
        output = server.output()
        self.assertNotIn("Embedded Redis", output)
        self.assertNotIn(server.data_dir, output)
        self.assertIn(f"127.0.0.1:{redis.port}", output)

    def test_http_access_log_is_asked_for(self) -> None:
        """
        A line per HTTP request in the log with --http-access-log; none
        without.
        """
        redis = shared_redis()
        for args, logged in (((), False), (("--http-access-log",), True)):
            namespace = "log" + uuid.uuid4().hex[:10]
            server = Server(
                self,
                self.data_dir(),
                "--redis",
                redis.url,
                "--namespace",
                namespace,
                *args,
            ).serving()
            with urllib.request.urlopen(
                f"http://127.0.0.1:{server.http_port}/healthz?probe=1", timeout=5
            ) as response:
                self.assertEqual(response.status, 200)
            self.assertEqual(server.terminate()[0], 0)
            self.assertEqual(
                '"GET /healthz?probe=1 HTTP/1.1" 200' in server.output(), logged, args
            )

    def test_missing_redis_server_binary(self) -> None:
        """
        --redis-server naming no binary fails at once, saying so.
        """
        server = Server(self, self.data_dir(), "--redis-server", "/nonexistent")
        started = time.monotonic()
        self.assertNotEqual(server.run(), 0)
        self.assertLess(time.monotonic() - started, 10)
        self.assertIn("'/nonexistent'", server.output())
        self.assertIn("does not exist", server.output())

    def test_duplicate_push_and_lost_lease(self) -> None:
        """
        A second PUSH of an id creates nothing; an ack after the lease
        expired (and the job went to another worker) is refused.
        """
        server = Server(self, self.data_dir(), "--sweep-interval", "0.2").serving()
        producer = server.client("producer")
        self.assertEqual(
            producer.push(id="once", args=[1]), {"id": "once", "created": True}
        )
        self.assertEqual(
            producer.push(id="once", args=[2]), {"id": "once", "created": False}
        )
        worker = server.client("worker")
        worker.ready(credit=5)
        job = worker.next_job(5)
        self.assertEqual((job["id"], job["args"]), ("once", [1]))
        self.assertTrue(worker.no_job(0.3))
        worker.ok("ACK", {"id": "once"})
        worker.ok("READY", {"queues": ["default"], "credit": 0})

        pushed = producer.push(args=["slow"], timeout=1)["id"]
        slow = server.client("slow")
        slow.ready(credit=1)
        held = slow.next_job(5)
        self.assertEqual((held["id"], held["attempt"]), (pushed, 1))
        other = server.client("other")
        other.ready(credit=1)
        started = time.monotonic()
        job = other.next_job(5)
        self.assertGreater(time.monotonic() - started, 0.5)
        self.assertEqual((job["id"], job["attempt"]), (pushed, 2))
        verb, reply = slow.request("ACK", {"id": pushed})
        self.assertEqual(verb, "ERR")
        self.assertEqual(reply["code"], "lease_lost")
        self.assertEqual(other.ok("ACK", {"id": pushed}), {"id": pushed})
        self.assertEqual(server.terminate()[0], 0)


def _redis_command(port: int, *words: str) -> list[str]:
    """
    Run one Redis command whose reply is an array of bulk strings.
    """
    request = f"*{len(words)}\r\n" + "".join(
        f"${len(w.encode())}\r\n{w}\r\n" for w in words
    )
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(request.encode())
        s.settimeout(5)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            lines = data.split(b"\r\n")
            if lines[0].startswith(b"*"):
                count = int(lines[0][1:])
                if len(lines) >= 1 + 2 * max(count, 0) + 1:
                    return [lines[2 + 2 * i].decode() for i in range(max(count, 0))]
    raise AssertionError(f"bad Redis reply {data!r}")


class _Lines:
    """
    Lines from a child's pipe, each read with a deadline.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def next(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            readable, _, _ = select.select([self.fd], [], [], max(0.0, left))
            if not readable:
                raise AssertionError("the child printed no line in time")
            data = os.read(self.fd, 65536)
            if not data:
                raise AssertionError(f"the child ended; it printed {self.buffer!r}")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()
