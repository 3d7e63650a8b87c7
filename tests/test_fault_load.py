"""
Load held: many TCP worker connections and HTTP long-polls held open on one
server while jobs flow through them; the server's memory stays bounded and
no job, connection or poll is dropped.

The full test (1,000 TCP workers and 200 long-polls for a minute) runs with
C{PROCESSION_LONG_TESTS=1}, as .ci/run sets; a small one always runs.  The
server needs a file descriptor per connection: it raises its own soft limit
(C{ulimit -n}) to what its connection limits need (procession/http/limits.py);
the test raises its own for its side of the connections.
"""

from __future__ import annotations

import http.client
import json
import resource
import selectors
import socket
import threading
import time
from collections import Counter

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from procession.client import Client
from tests.ledger import (
    Figures,
    Procession,
    long_test,
    open_fds,
    report,
    rss_kib,
    wait_for,
)


class Fleet(threading.Thread):
    """
    C{count} worker connections driven by one thread with a selector: each
    says HELLO and READY (credit 1) and acks every job at once.
    """

    def __init__(self, port: int, count: int, queue: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.count = count
        self.queue = queue
        self.selector = selectors.DefaultSelector()
        self.buffers: dict[socket.socket, bytes] = {}
        self.jobs: list[str] = []
        self.acked = 0
        self.errors: list[str] = []
        self.closed = 0
        self.connected = 0
        self.ready = 0
        self.stopping = threading.Event()

    def connect_all(self) -> None:
        hello = b'HELLO {"worker":"fleet"}\nREADY {"queues":["%s"],"credit":1}\n'
        for _ in range(self.count):
            sock = socket.create_connection(("127.0.0.1", self.port), 10)
            sock.sendall(hello % self.queue.encode())
            sock.setblocking(False)
            self.buffers[sock] = b""
            self.selector.register(sock, selectors.EVENT_READ)
            self.connected += 1

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                for key, _ in self.selector.select(0.2):
                    self._read(key.fileobj)  # type: ignore[arg-type]
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(e))

    def _read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            data = b""
            self.errors.append(repr(e))
        if not data:
            self.selector.unregister(sock)
            self.closed += 1
            return
        buffer = self.buffers[sock] + data
        *lines, self.buffers[sock] = buffer.split(b"\n")
        out = []
        for line in lines:
            verb, _, body = line.partition(b" ")
            if verb == b"JOB":
                job_id = json.loads(body)["id"]
                self.jobs.append(job_id)
                out.append(b'ACK {"id":%s}\n' % json.dumps(job_id).encode())
            elif verb == b"OK":
                if body.startswith(b'{"id"'):
                    self.acked += 1
                elif body.startswith(b'{"queues"'):
                    self.ready += 1
            elif verb == b"ERR":
                self.errors.append(body.decode())
        if out:
            sock.setblocking(True)
            sock.sendall(b"".join(out))
            sock.setblocking(False)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        for sock in self.buffers:
            sock.close()


class Poller(threading.Thread):
    """
    One HTTP worker: long-polls, acks what it gets, polls again.
    """

    def __init__(self, port: int, queue: str, name: str, wait: float) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.path = f"/api/v1/jobs/next?queues={queue}&wait={wait:g}&worker={name}"
        self.wait = wait
        self.jobs: list[str] = []
        self.polls = 0
        self.empty = 0
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=self.wait + 30
        )
        try:
            while not self.stopping.is_set():
                connection.request("GET", self.path)
                response = connection.getresponse()
                body = response.read()
                self.polls += 1
                if response.status == 204:
                    self.empty += 1
                    continue
                if response.status != 200:
                    self.errors.append(f"{response.status} {body[:200]!r}")
                    time.sleep(0.5)
                    continue
                job = json.loads(body)
                connection.request(
                    "POST",
                    f"/api/v1/jobs/{job['id']}/ack",
                    json.dumps({"lease": job["lease"]}),
                    {"Content-Type": "application/json"},
                )
                response = connection.getresponse()
                text = response.read()
                if response.status != 200:
                    self.errors.append(f"ack {response.status} {text[:200]!r}")
                else:
                    self.jobs.append(job["id"])
        except BaseException as e:  # noqa: BLE001 - reported by the test
            if not self.stopping.is_set():
                self.errors.append(repr(e))
        finally:
            connection.close()


def raise_fd_limit(needed: int) -> int:
    """
    Raise this process's soft file descriptor limit to at least C{needed}
    (children inherit it); the limit now.

    @raise SkipTest: when the hard limit is lower.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SkipTest(f"this test needs ulimit -n {needed}; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


class LoadHeldTests(SynchronousTestCase):
    """
    Connections and polls held while jobs flow.
    """

    def hold(
        self, connections: int, polls: int, seconds: float, rate: float
    ) -> Figures:
        # the server: a socket per connection and poll, its Redis, spare;
        # this process: the same again
        raise_fd_limit(2 * (connections + polls) + 1024)
        queue = "load"
        server = Procession(self, "--poll-timeout", "30").serving()
        fleet = Fleet(server.port, connections, queue)
        fleet.connect_all()
        fleet.start()
        self.addCleanup(fleet.stop)
        pollers = [
            Poller(server.http_port, queue, f"http{n}", wait=10) for n in range(polls)
        ]
        for poller in pollers:
            poller.start()
        for poller in pollers:
            self.addCleanup(poller.stopping.set)
        wait_for(lambda: fleet.ready == connections, 60, lambda: f"{fleet.ready} ready")
        wait_for(lambda: _http_pollers(server) >= polls, 60)

        producer = Client("127.0.0.1", server.port, timeout=10, retry_for=30)
        self.addCleanup(producer.close)
        ids: list[str] = []
        samples: list[tuple[float, int, int]] = []
        started = time.monotonic()
        next_sample = started
        n = 0
        while time.monotonic() - started < seconds:
            due = int((time.monotonic() - started) * rate)
            if due > n:
                batch = [
                    {"type": "t", "queue": queue, "id": f"load-{i:07d}"}
                    for i in range(n, due)
                ]
                ids += producer.push_many(batch)
                n = due
            if time.monotonic() >= next_sample:
                samples.append(
                    (
                        time.monotonic() - started,
                        rss_kib(server.pid),
                        open_fds(server.pid),
                    )
                )
                next_sample += 1.0
            time.sleep(0.02)

        def taken() -> int:
            return len(fleet.jobs) + sum(len(p.jobs) for p in pollers)

        wait_for(
            lambda: taken() >= len(ids), 60, lambda: f"{taken()} of {len(ids)} taken"
        )
        wait_for(lambda: fleet.acked >= len(fleet.jobs), 30)
        samples.append(
            (time.monotonic() - started, rss_kib(server.pid), open_fds(server.pid))
        )
        summary = server.queue_summary(queue)

        # nothing dropped: every connection and poller is still there
        self.assertEqual(fleet.errors, [])
        self.assertEqual(fleet.closed, 0)
        self.assertEqual([e for p in pollers for e in p.errors], [])
        self.assertTrue(all(p.is_alive() for p in pollers))
        # every job taken exactly once, and completed
        delivered = Counter(fleet.jobs + [j for p in pollers for j in p.jobs])
        self.assertEqual(set(delivered), set(ids))
        self.assertEqual([i for i, c in delivered.items() if c > 1], [])
        self.assertEqual(summary["totals"]["processed"], len(ids))
        self.assertEqual(summary["sizes"]["running"], 0)
        by_http = sum(len(p.jobs) for p in pollers)
        self.assertGreater(by_http, 0)
        self.assertGreater(len(set(fleet.jobs)), 0)

        # memory: no growth once the connections are up
        half = len(samples) // 2
        first = max(r for _, r, _ in samples[:half])
        second = max(r for _, r, _ in samples[half:])
        self.assertLess(second, first * 1.25 + 8 * 1024, samples)
        figures = Figures(
            test=self.id().rpartition(".")[2],
            fault=f"{connections} TCP workers + {polls} HTTP long-polls held {seconds:g} s",
            pushed=len(ids),
            acknowledged=len(ids),
            stored=summary["totals"]["pushed"],
            completed=summary["totals"]["processed"],
            lost=0,
            runs=sum(delivered.values()),
            duplicates=0,
            seconds=time.monotonic() - started,
            extra={
                "by_tcp": len(fleet.jobs),
                "by_http": by_http,
                "http_polls": sum(p.polls for p in pollers),
                "rss_mib_first_half_max": round(first / 1024, 1),
                "rss_mib_second_half_max": round(second / 1024, 1),
                "rss_mib_start": round(samples[0][1] / 1024, 1),
                "server_fds_max": max(f for _, _, f in samples),
            },
        )
        report(figures)
        for poller in pollers:
            poller.stopping.set()
        return figures

    def test_load_held_short(self) -> None:
        """
        100 TCP workers and 20 long-polls for 8 s.
        """
        self.hold(connections=100, polls=20, seconds=8, rate=100)

    def test_load_held(self) -> None:
        """
        1,000 TCP workers and 200 long-polls for a minute, 200 jobs/s.
        """
        long_test()
        self.hold(connections=1000, polls=200, seconds=60, rate=200)


def _http_pollers(server: Procession) -> int:
    """
    How many HTTP pollers the server knows.
    """
    _, body = server.http("GET", "/api/v1/workers")
    return sum(1 for w in body["workers"] if w["kind"] == "http")
