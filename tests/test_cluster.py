"""
Several procession servers on one Redis acting as one (docs/scaling.rst):
pushes on any server wake workers on every server, the workers listing and
the statistics of any server show the whole cluster, the jobs a dead
server's workers held come back within the server timeout, and a run over
three servers, one of them killed, completes every job, none twice except
interrupted attempts.

The first tests run servers in this process (L{ServerFixture}); the others
run C{twist procession} child processes, which a test can SIGKILL, and
block freely.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.client import ServerFixture
from tests.http import HTTP
from tests.redis import shared_redis
from tests.test_server_process import Server
from tests.wire import WireClient, WireClosed, WireError, WireTimeout


async def until(predicate: Any, timeout: float = 5.0) -> Any:
    """
    Wait until the coroutine function C{predicate} returns something true;
    that value.
    """
    deadline = reactor.seconds() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        await deferLater(reactor, 0.05, lambda: None)


class InProcessClusterTests(TestCase):
    """
    Two servers in this process, sharing one namespace of the test Redis.
    """

    async def test_workers_and_stats_span_the_cluster(self) -> None:
        """
        Each server lists the TCP workers and HTTP pollers of both, each
        with its server's id, and counts them in its statistics; a server
        that stops leaves the listing at once.
        """
        a = await ServerFixture(self).start()
        b = await ServerFixture(self, ns=a.namespace).start()
        ids = {a.store.server_id: "a", b.store.server_id: "b"}
        self.assertEqual(len(ids), 2)
        alpha = await a.connect("alpha")
        await alpha.ok("READY", {"queues": ["default"], "credit": 2})
        http_b = HTTP(b.http_port)
        poll = defer.ensureDeferred(
            http_b.get(
                "/api/v1/jobs/next",
                params={"queues": "other", "wait": "10", "worker": "beta"},
            )
        )

        def where(listing: dict[str, Any]) -> dict[str, tuple[str, str]]:
            return {
                w["name"].partition("#")[0]: (w["kind"], ids.get(w["server"], "?"))
                for w in listing["workers"]
            }

        want = {"alpha": ("tcp", "a"), "beta": ("http", "b")}
        for server in (a, b):
            http = HTTP(server.http_port)

            async def listed() -> bool:
                response = await http.get("/api/v1/workers")
                self.assertEqual(response.code, 200, response)
                return where(response.json) == want

            await until(listed)
            stats = (await http.get("/api/v1/stats")).json
            self.assertEqual(stats["workers"], {"tcp": 1, "http": 1, "total": 2})

        await b.stop()
        # A stopping server ends its polls: 503 shutting_down.
        self.assertEqual((await poll).code, 503)
        listing = (await HTTP(a.http_port).get("/api/v1/workers")).json
        self.assertEqual(where(listing), {"alpha": ("tcp", "a")})

    async def test_a_push_wakes_workers_on_every_server(self) -> None:
        """
        A push on one server reaches a waiting TCP worker of another, and an
        HTTP poll of another, at once: by Redis pub/sub, not by the sweep
        (which runs once a minute here).
        """
        slow = ("--sweep-interval", "60")
        a = await ServerFixture(self, *slow).start()
        b = await ServerFixture(self, *slow, ns=a.namespace).start()
        worker = await b.connect("waiting")
        await worker.ok("READY", {"queues": ["default"], "credit": 1})
        await deferLater(reactor, 0.1, lambda: None)
        producer = await a.connect("producer")
        started = reactor.seconds()
        await producer.ok("PUSH", {"type": "t", "id": "over-tcp"})
        job = await worker.next_job(timeout=2)
        self.assertEqual(job["id"], "over-tcp")
        self.assertLess(reactor.seconds() - started, 1.0)

        poll = defer.ensureDeferred(
            HTTP(a.http_port).get(
                "/api/v1/jobs/next",
                params={"queues": "polled", "wait": "5", "worker": "p"},
            )
        )
        await deferLater(reactor, 0.2, lambda: None)
        other = await b.connect("producer")
        started = reactor.seconds()
        await other.ok("PUSH", {"type": "t", "id": "over-http", "queue": "polled"})
        response = await poll
        self.assertEqual((response.code, response.json["id"]), (200, "over-http"))
        self.assertLess(reactor.seconds() - started, 1.0)


def http_json(port: int, path: str) -> Any:
    """
    GET a route of a server in another process.
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


class ClusterProcessTests(SynchronousTestCase):
    """
    Servers as child processes on the shared test Redis, in one namespace.
    """

    def servers(self, n: int, *args: str) -> list[Server]:
        namespace = "c" + uuid.uuid4().hex[:12]
        started = [
            Server(
                self,
                "/nonexistent-data-dir",
                "--redis", shared_redis().url,
                "--namespace", namespace,
                "--sweep-interval", "0.2",
                *args,
            ).start()
            for _ in range(n)
        ]  # fmt: skip
        return [s.serving() for s in started]

    def test_a_dead_servers_jobs_come_back(self) -> None:
        """
        A server is SIGKILLed while its worker holds jobs with the default
        300 s timeout: another server gives them back (attempt counted,
        error ServerLost) once the server timeout has passed, and drops
        the dead server's workers from its listing.
        """
        victim, survivor = self.servers(2, "--server-timeout", "2")
        holder = victim.client("holder")
        holder.ready(credit=5)
        producer = survivor.client("producer")
        pushed = {producer.push(args=[n])["id"] for n in range(5)}
        held = {holder.next_job(5)["id"] for _ in range(5)}
        self.assertEqual(held, pushed)

        def names() -> set[str]:
            listing = http_json(survivor.http_port, "/api/v1/workers")
            return {w["name"].partition("#")[0] for w in listing["workers"]}

        deadline = time.monotonic() + 5
        while "holder" not in names():
            self.assertLess(time.monotonic(), deadline, "the holder was never listed")
            time.sleep(0.05)
        waiting = survivor.client("survivor")
        waiting.ready(credit=5)
        self.assertTrue(waiting.no_job(0.3))

        assert victim.process is not None
        victim.process.kill()
        victim.process.wait(10)
        killed = time.monotonic()
        jobs = [waiting.next_job(10) for _ in range(5)]
        took = time.monotonic() - killed
        self.assertEqual({j["id"] for j in jobs}, pushed)
        self.assertEqual({j["attempt"] for j in jobs}, {2})
        # Not before the timeout; well before the 300 s leases (the margin
        # is for a busy machine: a sweep interval and a round trip would do).
        self.assertGreater(took, 1.5)
        self.assertLess(took, 2 + 6)
        job = http_json(survivor.http_port, f"/api/v1/jobs/{jobs[0]['id']}")
        self.assertEqual(job["errors"][0]["type"], "ServerLost")
        self.assertEqual(names(), {"producer", "survivor"})
        for j in jobs:
            waiting.ok("ACK", {"id": j["id"]})

    def test_three_servers_one_killed_mid_run(self) -> None:
        """
        Three servers, two workers on each, pushes spread over them; one
        server is SIGKILLed mid-run.  Its workers move to the others, its
        producer too.  Every job completes exactly once; a job ran again
        only after an attempt interrupted by the kill (the ledger).
        """
        servers = self.servers(3, "--server-timeout", "2")
        total = 600
        ledger: list[tuple[str, int, int, str]] = []  # id, attempt, server, outcome
        lock = threading.Lock()
        stop = threading.Event()
        alive = [True, True, True]
        errors: list[BaseException] = []

        def connect(home: int, name: str) -> tuple[int, WireClient]:
            for k in range(3):
                index = (home + k) % 3
                if not alive[index]:
                    continue
                try:
                    client = WireClient("127.0.0.1", servers[index].port, timeout=5)
                    client.hello(name)
                    return index, client
                except (OSError, WireClosed, WireTimeout):
                    continue
            raise AssertionError("no server left")

        def work(home: int, name: str) -> None:
            try:
                index, client = connect(home, name)
                client.ready(credit=4)
                while not stop.is_set():
                    try:
                        job = client.next_job(0.2)
                    except WireTimeout:
                        continue
                    except (WireClosed, OSError):
                        client.close()
                        index, client = connect(home + 1, name)
                        client.ready(credit=4)
                        continue
                    with lock:
                        ledger.append((job["id"], job["attempt"], index, "ran"))
                    time.sleep(0.005)
                    try:
                        client.ok("ACK", {"id": job["id"]})
                        outcome = "acked"
                    except WireError as e:
                        outcome = e.body["code"]
                    except (WireClosed, WireTimeout, OSError):
                        outcome = "interrupted"
                    with lock:
                        ledger.append((job["id"], job["attempt"], index, outcome))
            except BaseException as e:  # reported by the test thread
                errors.append(e)

        def produce() -> None:
            try:
                home = 0
                index, client = connect(home, "producer")
                for start in range(0, total, 20):
                    batch = [
                        {"type": "t", "id": f"job-{n}", "args": [n]}
                        for n in range(start, start + 20)
                    ]
                    while True:
                        try:
                            client.ok("PUSHB", batch)
                            break
                        except (WireClosed, WireTimeout, OSError):
                            # Resent with the same ids: nothing twice.
                            client.close()
                            home += 1
                            index, client = connect(home, "producer")
                    # Spread the pushes over the servers, and over time.
                    client.close()
                    home += 1
                    index, client = connect(home, "producer")
                    time.sleep(0.02)
                client.close()
            except BaseException as e:
                errors.append(e)

        threads = [
            threading.Thread(target=work, args=(n % 3, f"worker{n}"), daemon=True)
            for n in range(6)
        ]
        threads.append(threading.Thread(target=produce, daemon=True))
        for t in threads:
            t.start()
        self.addCleanup(stop.set)

        def acked() -> set[str]:
            with lock:
                return {e[0] for e in ledger if e[3] == "acked"}

        deadline = time.monotonic() + 20
        while len(acked()) < total // 3:
            self.assertLess(time.monotonic(), deadline, f"too slow: {errors}")
            time.sleep(0.01)
        victim = servers[1]
        assert victim.process is not None
        alive[1] = False
        victim.process.kill()
        victim.process.wait(10)
        with lock:
            done_at_kill = len({e[0] for e in ledger if e[3] == "acked"})

        # Done when Redis says so: an ack may complete its job and lose its
        # reply to the kill.
        def queue() -> dict[str, Any]:
            return http_json(servers[0].http_port, "/api/v1/queues/default")

        deadline = time.monotonic() + 40
        while queue()["totals"]["processed"] < total:
            self.assertFalse(errors, errors)
            self.assertLess(time.monotonic(), deadline, f"stuck: {queue()}")
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(10)
        self.assertFalse(errors, errors)
        self.assertLess(done_at_kill, total, "the kill came after the run")

        runs: dict[str, list[tuple[int, int]]] = defaultdict(list)
        outcomes: dict[tuple[str, int], str] = {}
        for job_id, attempt, index, what in ledger:
            if what == "ran":
                runs[job_id].append((attempt, index))
            else:
                outcomes[(job_id, attempt)] = what
        self.assertEqual(set(runs), {f"job-{n}" for n in range(total)})
        acks = Counter(j for (j, _), what in outcomes.items() if what == "acked")
        self.assertEqual(set(acks.values()), {1})
        # Acks that never came back (the server died with them) completed
        # their job or lost it to the give-back: either way, no other ack.
        self.assertGreaterEqual(len(acks), total - 16)
        again = 0
        for job_id, attempts in runs.items():
            numbers = sorted(a for a, _ in attempts)
            # No attempt ran twice.  (An attempt may be missing: the killed
            # server claimed it and died before its JOB frame went out.)
            self.assertEqual(len(set(numbers)), len(numbers), job_id)
            again += numbers[-1] - len(numbers)
            for attempt, index in sorted(attempts)[:-1]:
                # Every attempt but the last was interrupted: it ran on the
                # killed server and its ack never came through.
                self.assertEqual(index, 1, (job_id, attempts))
                self.assertNotEqual(outcomes.get((job_id, attempt)), "acked")
                again += 1
        # At most what the killed server's workers held (2 workers, credit 4
        # each, and the jobs reconnecting workers took there).
        self.assertLessEqual(again, 16)
        # Each job completed once: an ack completes only a running job.
        final = queue()
        self.assertEqual(
            final["totals"],
            {
                "pushed": total,
                "processed": total,
                "failed": 0,
                "expired": 0,
                "unique_collisions": 0,
            },
        )
        self.assertEqual(
            final["sizes"],
            {"queued": 0, "scheduled": 0, "retrying": 0, "running": 0, "dead": 0},
        )
