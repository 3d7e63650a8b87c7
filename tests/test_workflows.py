"""
Workflows end to end (docs/workflows.rst): awaiting a job's result on any
server, batches and their callbacks, dependencies between jobs, progress
reports and cancels that reach the worker, over the real wire protocol and
HTTP API, several servers on the test Redis.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.client import ServerFixture
from tests.docs import examples, run, same_line, section_text
from tests.http import HTTP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sleep(seconds: float) -> defer.Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def until(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = reactor.seconds() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        await sleep(0.02)


class AwaitTests(TestCase):
    """
    AWAIT on TCP and GET /api/v1/jobs/{id}/result, on one server and
    across two.
    """

    async def setUp(self) -> None:
        self.a = await ServerFixture(self).start()

    async def test_await_answers_when_the_job_completes(self) -> None:
        producer = await self.a.connect("producer")
        worker = await self.a.connect("worker")
        await producer.ok("PUSH", {"type": "t", "id": "w1"})
        waiting = defer.ensureDeferred(producer.ok("AWAIT", {"id": "w1", "wait": 5}))
        await worker.ok("READY", {"queues": ["default"], "credit": 1})
        job = await worker.next_job()
        await sleep(0.05)
        self.assertFalse(waiting.called)
        await worker.ok("ACK", {"id": job["id"], "result": {"n": 42}})
        outcome = await waiting
        self.assertEqual(
            (outcome["state"], outcome["finished"], outcome["result"]),
            ("completed", True, {"n": 42}),
        )
        # A finished job answers at once, as often as asked.
        again = await producer.ok("AWAIT", {"id": "w1"})
        self.assertEqual(again["result"], {"n": 42})

    async def test_await_a_dead_job_gives_its_last_error(self) -> None:
        producer = await self.a.connect("producer")
        worker = await self.a.connect("worker")
        await producer.ok("PUSH", {"type": "t", "id": "d1", "max_attempts": 1})
        waiting = defer.ensureDeferred(producer.ok("AWAIT", {"id": "d1"}))
        await worker.ok("READY", {"queues": ["default"], "credit": 1})
        job = await worker.next_job()
        await worker.ok(
            "FAIL", {"id": job["id"], "error": {"type": "Boom", "message": "no"}}
        )
        outcome = await waiting
        self.assertEqual((outcome["state"], outcome["finished"]), ("dead", True))
        self.assertEqual(outcome["error"]["type"], "Boom")
        self.assertIsNone(outcome["result"])

    async def test_await_an_expired_job_answers_it_finished(self) -> None:
        """
        Expired is a finish (docs/protocol.rst): the waiter hears of it, and
        awaiting an expired job answers at once.
        """
        producer = await self.a.connect("producer")
        worker = await self.a.connect("worker")
        await producer.ok("PUSH", {"type": "t", "id": "e1", "expires_in": 0.05})
        waiting = defer.ensureDeferred(producer.ok("AWAIT", {"id": "e1", "wait": 30}))
        await sleep(0.1)
        # A claim ends the job expired instead of handing it out.
        await worker.ok("READY", {"queues": ["default"], "credit": 1})
        outcome = await waiting
        self.assertEqual((outcome["state"], outcome["finished"]), ("expired", True))
        again = await producer.ok("AWAIT", {"id": "e1", "wait": 30})
        self.assertEqual((again["state"], again["finished"]), ("expired", True))
        self.assertEqual(len(worker.jobs.pending), 0)

    async def test_await_times_out_with_the_state_and_checks_input(self) -> None:
        producer = await self.a.connect("producer")
        await producer.ok("PUSH", {"type": "t", "id": "slow"})
        outcome = await producer.ok("AWAIT", {"id": "slow", "wait": 0.1})
        self.assertEqual((outcome["state"], outcome["finished"]), ("queued", False))
        kind, body = await producer.send("AWAIT", {"id": "nope", "wait": 0})
        self.assertEqual((kind, body["code"]), ("ERR", "not_found"))
        kind, body = await producer.send("AWAIT", {"id": "slow", "wait": -1})
        self.assertEqual(
            (kind, body["code"], body["field"]), ("ERR", "invalid_request", "wait")
        )
        kind, body = await producer.send("AWAIT", {})
        self.assertEqual((kind, body["field"]), ("ERR", "id"))
        http = HTTP(self.a.http_port)
        response = await http.get("/api/v1/jobs/slow/result", params={"wait": "x"})
        self.assertEqual(
            (response.code, response.json["error"]["field"]), (400, "wait")
        )
        response = await http.get("/api/v1/jobs/nope/result")
        self.assertEqual(response.code, 404)

    async def test_waiter_on_one_server_hears_an_ack_on_another_within_50ms(
        self,
    ) -> None:
        """
        A caller awaiting on server A gets the outcome within 50 ms of the
        ack on server B: the median of several rounds, measured from the
        ACK's sending to the AWAIT's answer (so a busy machine's one slow
        turn does not decide), and an HTTP long poll the same way.
        """
        b = await ServerFixture(self, ns=self.a.namespace).start()
        producer = await self.a.connect("producer")
        worker = await b.connect("worker")
        await worker.ok("READY", {"queues": ["timed"], "credit": 1})
        http = HTTP(self.a.http_port)
        delays = []
        for n in range(7):
            job_id = f"timed-{n}"
            await producer.ok("PUSH", {"type": "t", "id": job_id, "queue": "timed"})
            job = await worker.next_job()
            if n % 2:
                waiting = defer.ensureDeferred(
                    http.get(f"/api/v1/jobs/{job_id}/result", params={"wait": "10"})
                )
            else:
                waiting = defer.ensureDeferred(
                    producer.ok("AWAIT", {"id": job_id, "wait": 10})
                )
            # The waiter is registered (a round trip of its own) before the ack.
            await sleep(0.1)
            self.assertFalse(waiting.called)
            answered: list[float] = []
            waiting.addCallback(lambda r: answered.append(reactor.seconds()) or r)
            started = reactor.seconds()
            await worker.ok("ACK", {"id": job["id"], "result": n})
            outcome = await waiting
            if n % 2:
                self.assertEqual(outcome.code, 200)
                outcome = outcome.json
            self.assertEqual((outcome["state"], outcome["result"]), ("completed", n))
            delays.append(answered[0] - started)
        self.assertLess(statistics.median(delays), 0.050, delays)


class BatchTests(TestCase):
    """
    Batches: counts kept by the scripts that ack and fail, callbacks pushed
    exactly once.
    """

    async def make_batch(self, http: HTTP, **body: Any) -> dict[str, Any]:
        response = await http.post("/api/v1/batches", body=body)
        self.assertEqual(response.code, 201, response)
        return response.json

    async def test_thousand_jobs_three_servers_workers_killed(self) -> None:
        """
        1,000 jobs pushed in two pushes on one server, committed on another,
        worked on by workers of three servers that are killed mid-run (the
        jobs they held go back): on_success and on_complete fire exactly
        once, after the last job completed.
        """
        await self.thousand_jobs(dead=None)

    async def test_thousand_jobs_one_dead_fires_on_complete_only(self) -> None:
        """
        The same run with one job dead (failed without retry): on_complete
        fires exactly once, after the last job finished, and on_success
        never.
        """
        await self.thousand_jobs(dead="img-517")

    async def thousand_jobs(self, dead: str | None) -> None:
        a = await ServerFixture(self).start()
        b = await ServerFixture(self, ns=a.namespace).start()
        c = await ServerFixture(self, ns=a.namespace).start()
        http = HTTP(a.http_port)
        batch = await self.make_batch(
            http,
            description="resize 1,000 images",
            on_success={"type": "zip", "queue": "callbacks", "args": ["all"]},
            on_complete={"type": "report", "queue": "callbacks"},
        )
        bid = batch["id"]
        self.assertEqual(batch["state"], "open")
        producer = await b.connect("producer")
        for start in (0, 600):
            jobs = [
                {"type": "resize", "id": f"img-{n}", "batch": bid, "queue": "images"}
                for n in range(start, min(start + 600, 1000))
            ]
            await producer.ok("PUSHB", jobs)
        committer = await c.connect("committer")
        committed = await committer.ok("BATCH", {"action": "commit", "id": bid})
        self.assertEqual((committed["state"], committed["total"]), ("committed", 1000))

        callbacks: list[tuple[str, float]] = []
        last_ack = [0.0]
        watcher = await a.connect("callbacks")
        await watcher.ok("READY", {"queues": ["callbacks"], "credit": 5})

        watched: list[bool] = []

        async def watch() -> None:
            while not watched:
                try:
                    job = await watcher.next_job(timeout=0.2)
                except defer.TimeoutError:
                    continue
                callbacks.append((job["id"], reactor.seconds()))
                await watcher.ok("ACK", {"id": job["id"]})

        watching = defer.ensureDeferred(watch())

        acked: set[str] = set()
        retried: set[str] = set()

        async def work(server: ServerFixture, name: str, kill_after: int) -> None:
            """
            Ack jobs; after kill_after acks, drop the connection while it
            holds jobs, then carry on with a new one.
            """
            while len(acked) < 1000:
                worker = await server.connect(name)
                await worker.ok("READY", {"queues": ["images"], "credit": 20})
                done = 0
                while len(acked) < 1000:
                    try:
                        job = await worker.next_job(timeout=0.5)
                    except defer.TimeoutError:
                        continue
                    if job["attempt"] > 1:
                        retried.add(job["id"])
                    if kill_after and done == kill_after:
                        worker.transport.abortConnection()
                        await worker.closed
                        kill_after = 0
                        break
                    if job["id"] == dead:
                        await worker.ok("FAIL", {"id": dead, "retry": False})
                    else:
                        await worker.ok("ACK", {"id": job["id"]})
                    acked.add(job["id"])
                    last_ack[0] = reactor.seconds()
                    done += 1
                else:
                    worker.transport.loseConnection()

        await defer.gatherResults(
            [
                defer.ensureDeferred(work(a, "wa", 150)),
                defer.ensureDeferred(work(b, "wb", 90)),
                defer.ensureDeferred(work(c, "wc", 0)),
                defer.ensureDeferred(work(c, "wc2", 200)),
            ]
        )
        self.assertEqual(len(acked), 1000)
        # The killed workers' jobs ran again: the batch saw interrupted
        # attempts, not only clean ones.
        self.assertGreater(len(retried), 0)

        expected = (
            [f"{bid}:complete"] if dead else [f"{bid}:complete", f"{bid}:success"]
        )

        async def fired() -> bool:
            return len(callbacks) >= len(expected)

        await until(fired)
        # Long enough for a second push, had there been one.
        await sleep(0.5)
        self.assertEqual(sorted(job_id for job_id, _ in callbacks), expected)
        self.assertTrue(all(at >= last_ack[0] for _, at in callbacks))
        status = (await http.get(f"/api/v1/batches/{bid}")).json
        self.assertEqual(
            (
                status["state"],
                status["total"],
                status["pending"],
                status["completed"],
                status["dead"],
            ),
            ("done", 1000, 0, 999 if dead else 1000, 1 if dead else 0),
        )
        self.assertIsNotNone(status["on_complete"]["pushed_at"])
        if dead:
            self.assertIsNone(status["on_success"]["pushed_at"])
            response = await http.get(f"/api/v1/jobs/{bid}:success")
            self.assertEqual(response.code, 404)
        summary = (await http.get("/api/v1/queues/callbacks")).json
        self.assertEqual(summary["totals"]["pushed"], len(expected), summary)
        watched.append(True)
        await watching

    async def test_a_dead_job_fires_on_complete_once_and_on_success_never(
        self,
    ) -> None:
        a = await ServerFixture(self).start()
        http = HTTP(a.http_port)
        batch = await self.make_batch(
            http,
            on_success={"type": "zip", "queue": "cb"},
            on_complete={"type": "report", "queue": "cb"},
        )
        bid = batch["id"]
        producer = await a.connect("producer")
        jobs = [
            {
                "type": "t",
                "id": f"j{n}",
                "batch": bid,
                "queue": "work",
                "max_attempts": 2,
            }
            for n in range(20)
        ]
        await producer.ok("PUSHB", jobs)
        await producer.ok("BATCH", {"action": "commit", "id": bid})
        worker = await a.connect("worker")
        await worker.ok("READY", {"queues": ["work"], "credit": 5})
        for _ in range(21):
            job = await worker.next_job()
            if job["id"] == "j7":
                # fails twice: out of attempts, dead
                await worker.ok("FAIL", {"id": "j7", "retry_in": 0})
            else:
                await worker.ok("ACK", {"id": job["id"]})
        watcher = await a.connect("cb")
        await watcher.ok("READY", {"queues": ["cb"], "credit": 5})
        callback = await watcher.next_job()
        self.assertEqual(callback["id"], f"{bid}:complete")
        await watcher.ok("ACK", {"id": callback["id"]})
        with self.assertRaises(defer.TimeoutError):
            await watcher.next_job(timeout=0.5)
        status = (await http.get(f"/api/v1/batches/{bid}")).json
        self.assertEqual(
            (status["pending"], status["completed"], status["dead"]), (0, 19, 1)
        )
        self.assertIsNone(status["on_success"]["pushed_at"])
        response = await http.get(f"/api/v1/jobs/{bid}:success")
        self.assertEqual(response.code, 404)

        # Retrying the dead job: it is pending again; once it completes the
        # batch has succeeded after all, and on_complete stays fired once.
        retried = await http.post("/api/v1/jobs/j7/retry", body={})
        self.assertEqual(retried.code, 200)
        job = await worker.next_job()
        await worker.ok("ACK", {"id": job["id"]})
        callback = await watcher.next_job()
        self.assertEqual(callback["id"], f"{bid}:success")
        with self.assertRaises(defer.TimeoutError):
            await watcher.next_job(timeout=0.3)

    async def test_a_done_batch_expires_after_the_retention(self) -> None:
        a = await ServerFixture(self, "--keep-completed", "0.5").start()
        http = HTTP(a.http_port)
        producer = await a.connect("producer")
        await producer.ok("BATCH", {"id": "brief"})
        await producer.ok("PUSH", {"type": "t", "id": "only", "batch": "brief"})
        await producer.ok("BATCH", {"action": "commit", "id": "brief"})
        worker = await a.connect("worker")
        await worker.ok("READY", {"queues": ["default"], "credit": 1})
        await worker.next_job()
        await worker.ok("ACK", {"id": "only"})
        status = await producer.ok("BATCH", {"action": "status", "id": "brief"})
        self.assertEqual(status["state"], "done")

        async def gone() -> bool:
            response = await http.get("/api/v1/batches/brief")
            return response.code == 404

        await until(gone, timeout=10)
        self.assertEqual((await http.get("/api/v1/batches")).json["batches"], [])

    async def test_open_commit_reopen_and_refusals(self) -> None:
        a = await ServerFixture(self).start()
        http = HTTP(a.http_port)
        producer = await a.connect("producer")
        batch = await producer.ok(
            "BATCH", {"id": "b-1", "description": "parent and children"}
        )
        self.assertEqual(
            (batch["id"], batch["state"], batch["total"]), ("b-1", "open", 0)
        )
        kind, body = await producer.send("BATCH", {"id": "b-1"})
        self.assertEqual((kind, body["code"]), ("ERR", "batch_exists"))
        await producer.ok("PUSH", {"type": "parent", "id": "p", "batch": "b-1"})
        await producer.ok("BATCH", {"action": "commit", "id": "b-1"})
        # Committed: no more jobs, unless a job of the batch reopens it.
        kind, body = await producer.send("PUSH", {"type": "t", "batch": "b-1"})
        self.assertEqual((kind, body["code"]), ("ERR", "batch_not_open"))
        kind, body = await producer.send("PUSH", {"type": "t", "batch": "nope"})
        self.assertEqual((kind, body["code"]), ("ERR", "batch_not_found"))
        worker = await a.connect("worker")
        await worker.ok("READY", {"queues": ["default"], "credit": 1})
        parent = await worker.next_job()
        self.assertEqual(parent["batch"], "b-1")
        reopened = await worker.ok("BATCH", {"action": "open", "id": "b-1"})
        self.assertEqual(reopened["state"], "open")
        await worker.ok("PUSH", {"type": "child", "id": "c", "batch": "b-1"})
        await worker.ok("BATCH", {"action": "commit", "id": "b-1"})
        await worker.ok("ACK", {"id": "p"})
        status = await worker.ok("BATCH", {"action": "status", "id": "b-1"})
        self.assertEqual(
            (status["state"], status["pending"], status["total"]), ("committed", 1, 2)
        )
        child = await worker.next_job()
        await worker.ok("ACK", {"id": child["id"]})
        status = (await http.get("/api/v1/batches/b-1")).json
        self.assertEqual((status["state"], status["completed"]), ("done", 2))
        kind, body = await worker.send("BATCH", {"action": "open", "id": "b-1"})
        self.assertEqual((kind, body["code"]), ("ERR", "illegal_state"))
        listed = (await http.get("/api/v1/batches")).json["batches"]
        self.assertEqual([b["id"] for b in listed], ["b-1"])
        jobs = (await http.get("/api/v1/batches/b-1/jobs")).json["jobs"]
        self.assertEqual(sorted(j["id"] for j in jobs), ["c", "p"])
        response = await http.post(
            "/api/v1/batches", body={"on_success": {"type": "x", "id": "mine"}}
        )
        self.assertEqual(
            (response.code, response.json["error"]["field"]), (400, "on_success")
        )
        response = await http.post("/api/v1/batches/none/commit", body={})
        self.assertEqual(
            (response.code, response.json["error"]["code"]), (404, "batch_not_found")
        )


class DependencyTests(TestCase):
    """
    Jobs that run after others: waiting, then queued; a dead parent
    cancels its children.
    """

    async def test_three_level_chains_run_in_order_under_concurrent_workers(
        self,
    ) -> None:
        a = await ServerFixture(self).start()
        b = await ServerFixture(self, ns=a.namespace).start()
        producer = await a.connect("producer")
        chains = 8
        for n in range(chains):
            await producer.ok("PUSH", {"type": "t", "id": f"a{n}", "queue": "q1"})
            # levels in other queues: dependencies cross queues
            await producer.ok(
                "PUSH", {"type": "t", "id": f"b{n}", "queue": "q2", "after": [f"a{n}"]}
            )
            await producer.ok(
                "PUSH",
                {
                    "type": "t",
                    "id": f"c{n}",
                    "after": [f"b{n}", f"a{n}"],
                    "queue": "q1",
                },
            )
        http = HTTP(a.http_port)
        job = (await http.get("/api/v1/jobs/c0")).json
        self.assertEqual((job["state"], job["after"]), ("waiting", ["b0", "a0"]))
        events: list[tuple[str, str]] = []
        finished: set[str] = set()

        async def work(server: ServerFixture, name: str) -> None:
            worker = await server.connect(name)
            await worker.ok("READY", {"queues": ["q1", "q2"], "credit": 3})
            while len(finished) < 3 * chains:
                try:
                    job = await worker.next_job(timeout=0.3)
                except defer.TimeoutError:
                    continue
                events.append(("start", job["id"]))
                await sleep(0.01)
                # Logged as the ACK leaves: the children may reach another
                # worker before this one reads the ACK's reply.
                events.append(("done", job["id"]))
                await worker.ok("ACK", {"id": job["id"]})
                finished.add(job["id"])
            worker.transport.loseConnection()

        await defer.gatherResults(
            [defer.ensureDeferred(work(s, f"w{i}")) for i, s in enumerate([a, b, a, b])]
        )
        for n in range(chains):
            order = [events.index(("done", f"a{n}")), events.index(("start", f"b{n}"))]
            order += [events.index(("done", f"b{n}")), events.index(("start", f"c{n}"))]
            self.assertEqual(order, sorted(order), events)
        self.assertEqual(len([e for e in events if e[0] == "start"]), 3 * chains)

    async def test_a_dead_parent_cancels_its_children(self) -> None:
        a = await ServerFixture(self).start()
        producer = await a.connect("producer")
        http = HTTP(a.http_port)
        await producer.ok("PUSH", {"type": "t", "id": "p", "max_attempts": 1})
        await producer.ok("PUSH", {"type": "t", "id": "c", "after": ["p"]})
        await producer.ok("PUSH", {"type": "t", "id": "g", "after": ["c"]})
        await producer.ok(
            "PUSH", {"type": "t", "id": "r", "after": ["p"], "on_parent_dead": "run"}
        )
        waiting = defer.ensureDeferred(producer.ok("AWAIT", {"id": "g"}))
        worker = await a.connect("worker")
        await worker.ok("READY", {"queues": ["default"], "credit": 1})
        job = await worker.next_job()
        self.assertEqual(job["id"], "p")
        await worker.ok("FAIL", {"id": "p", "retry": False})
        self.assertEqual((await waiting)["state"], "cancelled")
        for job_id in ("c", "g"):
            self.assertEqual(
                (await http.get(f"/api/v1/jobs/{job_id}")).json["state"], "cancelled"
            )
        job = await worker.next_job()
        self.assertEqual(job["id"], "r")
        await worker.ok("ACK", {"id": "r"})
        # A child of a job that is dead already is cancelled at once.
        await producer.ok("PUSH", {"type": "t", "id": "late", "after": ["p"]})
        self.assertEqual(
            (await http.get("/api/v1/jobs/late")).json["state"], "cancelled"
        )
        # Parents must exist.
        kind, body = await producer.send("PUSH", {"type": "t", "after": ["nope"]})
        self.assertEqual(
            (kind, body["code"], body["field"]), ("ERR", "invalid_job", "after")
        )
        kind, body = await producer.send(
            "PUSH", {"type": "t", "id": "x", "after": ["x"]}
        )
        self.assertEqual((kind, body["field"]), ("ERR", "after"))
        kind, body = await producer.send(
            "PUSH", {"type": "t", "after": ["p"], "on_parent_dead": "maybe"}
        )
        self.assertEqual((kind, body["field"]), ("ERR", "on_parent_dead"))


class FanOutTests(TestCase):
    async def test_at_most_ten_thousand_jobs_wait_for_one(self) -> None:
        a = await ServerFixture(self).start()
        producer = await a.connect("producer")
        await producer.ok("PUSH", {"type": "t", "id": "root"})
        children = [{"type": "t", "after": ["root"]} for _ in range(9_999)]
        await producer.ok("PUSHB", children)
        # One more fits; two more in one push do not (nothing is stored).
        kind, body = await producer.send(
            "PUSHB",
            [{"type": "t", "after": ["root"]}, {"type": "t", "after": ["root"]}],
        )
        self.assertEqual((kind, body["field"], body["limit"]), ("ERR", "after", 10_000))
        await producer.ok("PUSH", {"type": "t", "id": "last", "after": ["root"]})
        kind, body = await producer.send("PUSH", {"type": "t", "after": ["root"]})
        self.assertEqual((kind, body["code"]), ("ERR", "invalid_job"))
        # Their parent's ack releases all 10,000 in one script call.
        worker = await a.connect("worker")
        await worker.ok("READY", {"queues": ["default"], "credit": 1})
        await worker.next_job()
        await worker.ok("ACK", {"id": "root"})
        summary = (await HTTP(a.http_port).get("/api/v1/queues/default")).json
        self.assertEqual(
            summary["sizes"]["queued"] + summary["sizes"]["running"], 10_000
        )


class ProgressAndCancelTests(TestCase):
    """
    PROGRESS from the worker holding a job; a cancel reaches the worker.
    """

    async def test_progress_and_cancel_over_tcp(self) -> None:
        a = await ServerFixture(self).start()
        http = HTTP(a.http_port)
        producer = await a.connect("producer")
        worker = await a.connect("worker")
        await producer.ok("PUSH", {"type": "t", "id": "long"})
        await worker.ok("READY", {"queues": ["default"], "credit": 1})
        await worker.next_job()
        await worker.ok(
            "PROGRESS", {"id": "long", "progress": 40, "message": "halfway-ish"}
        )
        job = (await http.get("/api/v1/jobs/long")).json
        self.assertEqual(
            (job["progress"]["percent"], job["progress"]["message"]),
            (40.0, "halfway-ish"),
        )
        kind, body = await worker.send("PROGRESS", {"id": "long", "progress": 140})
        self.assertEqual((kind, body["field"]), ("ERR", "progress"))
        kind, body = await producer.send("PROGRESS", {"id": "long", "progress": 1})
        self.assertEqual((kind, body["code"]), ("ERR", "not_held"))
        # Cancelled through another server: the pub/sub reaches this one.
        b = await ServerFixture(self, ns=a.namespace).start()
        cancelled = await HTTP(b.http_port).post("/api/v1/jobs/long/cancel", body={})
        self.assertEqual(cancelled.code, 200)
        told = await worker.cancels.get().addTimeout(5, reactor)
        self.assertEqual(told, {"id": "long"})
        kind, body = await worker.send("ACK", {"id": "long"})
        self.assertEqual((kind, body["code"]), ("ERR", "cancelled"))
        # Its credit is free again: the next job comes.
        await producer.ok("PUSH", {"type": "t", "id": "next"})
        self.assertEqual((await worker.next_job())["id"], "next")

    async def test_a_job_put_back_has_no_progress(self) -> None:
        """
        Progress belongs to an attempt: a job failed for a retry, or given
        back when its worker's connection is lost, shows none on GET
        /api/v1/jobs/{id} or its job page until its next attempt reports.
        """
        a = await ServerFixture(self).start()
        http = HTTP(a.http_port)
        producer = await a.connect("producer")
        await producer.ok("PUSH", {"type": "t", "id": "again", "max_attempts": 5})

        async def shown() -> tuple[Any, bool]:
            job = (await http.get("/api/v1/jobs/again")).json
            page = (await http.get("/jobs/again")).content.decode()
            return (job["state"], job.get("progress")), "<dt>Progress</dt>" in page

        worker = await a.connect("worker")
        await worker.ok("READY", {"queues": ["default"], "credit": 1})
        await worker.next_job()
        await worker.ok("PROGRESS", {"id": "again", "progress": 40, "message": "m"})
        self.assertEqual((await shown())[1], True)
        await worker.ok(
            "FAIL", {"id": "again", "error": {"message": "e"}, "retry_in": 60}
        )
        self.assertEqual(await shown(), (("retrying", None), False))
        await http.post("/api/v1/jobs/again/retry", body={})
        self.assertEqual((await worker.next_job())["id"], "again")
        await worker.ok("PROGRESS", {"id": "again", "progress": 70, "message": "m"})
        worker.transport.abortConnection()
        await worker.closed

        async def queued() -> bool:
            return (await shown())[0][0] == "queued"

        await until(queued)
        self.assertEqual(await shown(), (("queued", None), False))

    async def test_a_client_that_did_not_ask_gets_no_cancel_frame(self) -> None:
        """
        CANCEL goes only to clients whose HELLO asked for it; another keeps
        the job until its ACK, answered cancelled.
        """
        a = await ServerFixture(self).start()
        producer = await a.connect("producer")
        old = await a.connect("old-client", cancel=False)
        await producer.ok("PUSH", {"type": "t", "id": "o1"})
        await old.ok("READY", {"queues": ["default"], "credit": 1})
        await old.next_job()
        await HTTP(a.http_port).post("/api/v1/jobs/o1/cancel")
        await sleep(0.2)
        self.assertEqual(old.cancels.pending, [])
        self.assertFalse(any(f.startswith(b"CANCEL") for f in old.frames))
        kind, body = await old.send("ACK", {"id": "o1"})
        self.assertEqual((kind, body["code"]), ("ERR", "cancelled"))
        await producer.ok("PUSH", {"type": "t", "id": "o2"})
        self.assertEqual((await old.next_job())["id"], "o2")

    async def test_http_worker_hears_cancelled_on_extend_and_progress(self) -> None:
        a = await ServerFixture(self).start()
        b = await ServerFixture(self, ns=a.namespace).start()
        http = HTTP(a.http_port)
        await http.post("/api/v1/jobs", body={"type": "t", "id": "h1"})
        job = (await http.get("/api/v1/jobs/next", params={"wait": "5"})).json
        lease = job["lease"]
        response = await http.post(
            "/api/v1/jobs/h1/progress",
            body={"lease": lease, "progress": 10, "message": "m"},
        )
        self.assertEqual(response.code, 200, response)
        await HTTP(b.http_port).post("/api/v1/jobs/h1/cancel", body={})
        for route, body in (
            ("extend", {"lease": lease, "seconds": 30}),
            ("progress", {"lease": lease, "progress": 20}),
            ("ack", {"lease": lease}),
        ):
            response = await http.post(f"/api/v1/jobs/h1/{route}", body=body)
            self.assertEqual(
                (response.code, response.json["error"]["code"]), (409, "cancelled")
            )


class DocsTests(TestCase):
    """
    docs/workflows.rst's examples, run as written against a live server:
    the curl session, and the worked example in Python.
    """

    def text(self) -> str:
        with open(os.path.join(ROOT, "docs", "workflows.rst"), encoding="utf-8") as f:
            return f.read()

    async def test_curl_session(self) -> None:
        text = section_text(self.text(), ["Results", "Batches", "Dependencies"])
        session = examples(text)
        self.assertGreater(len(session), 12)
        server = await ServerFixture(self, "--token", "s3cret").start()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PROCESSION_URL": f"http://127.0.0.1:{server.http_port}",
            "PROCESSION_TOKEN": "s3cret",
        }
        seen: dict[str, str] = {}
        for example in session:
            self.assertTrue(example.command.startswith("curl "), example.command)
            actual = await run(example, env, seen)
            self.assertEqual(
                len(actual), len(example.output), (example.command, actual)
            )
            for documented, line in zip(example.output, actual):
                self.assertTrue(
                    same_line(documented, line, seen),
                    f"{example.command}\ndocumented: {documented}\nactual:     {line}",
                )

    async def test_python_example(self) -> None:
        section = section_text(self.text(), ["A worked example in Python"])
        code = re.search(
            r"code-block:: python\n\n(.*?)\nIt prints::\n\n(.*?)\n\n", section, re.S
        )
        assert code is not None
        source = "\n".join(line[4:] for line in code.group(1).splitlines())
        printed = [line.strip() for line in code.group(2).splitlines()]
        server = await ServerFixture(self).start()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": ROOT,
            "PROCESSION_HOST": "127.0.0.1",
            "PROCESSION_PORT": str(server.tcp_port),
        }
        out, err, code_ = await getProcessOutputAndValue(
            sys.executable, ["-c", source], env=env, reactor=reactor
        )
        self.assertEqual(code_, 0, err.decode("utf-8", "replace"))
        self.assertEqual(out.decode("utf-8").splitlines(), printed)


class UITests(TestCase):
    """
    The operator UI's Batches pages, and progress and dependencies on the
    job and running pages.
    """

    async def test_batches_job_and_running_pages(self) -> None:
        a = await ServerFixture(self).start()
        http = HTTP(a.http_port)
        producer = await a.connect("producer")
        await producer.ok(
            "BATCH",
            {"id": "ui-b", "description": "ui <batch>", "on_success": {"type": "zip"}},
        )
        await producer.ok(
            "PUSHB", [{"type": "t", "id": f"u{n}", "batch": "ui-b"} for n in range(3)]
        )
        await producer.ok("BATCH", {"action": "commit", "id": "ui-b"})
        await producer.ok("PUSH", {"type": "t", "id": "after-u0", "after": ["u0"]})
        worker = await a.connect("worker")
        await worker.ok("READY", {"queues": ["default"], "credit": 1})
        job = await worker.next_job()
        self.assertEqual(job["id"], "u0")
        await worker.ok("PROGRESS", {"id": "u0", "progress": 30, "message": "a third"})

        listing = (await http.get("/batches")).content.decode()
        self.assertIn('href="/batches/ui-b"', listing)
        self.assertIn("ui &lt;batch&gt;", listing)
        self.assertIn('<progress max="3" value="0">', listing)
        running = (await http.get("/running")).content.decode()
        self.assertIn('<progress max="100" value="30.0">', running)
        self.assertIn("a third", running)
        page = (await http.get("/jobs/after-u0")).content.decode()
        self.assertIn("Runs after", page)
        self.assertIn("/jobs/u0", page)
        self.assertIn("state-running", page)
        page = (await http.get("/jobs/u0")).content.decode()
        self.assertIn('href="/batches/ui-b"', page)

        await worker.ok("ACK", {"id": "u0"})
        for _ in range(2):
            job = await worker.next_job()
            await worker.ok("ACK", {"id": job["id"]})
        detail = (await http.get("/batches/ui-b")).content.decode()
        self.assertIn('<progress max="3" value="3">', detail)
        self.assertIn("/jobs/ui-b%3Asuccess", detail)
        for n in range(3):
            self.assertIn(f"/jobs/u{n}", detail)
        missing = await http.get("/batches/none")
        self.assertEqual(missing.code, 404)


class PythonClientTests(TestCase):
    """
    The Python side: the worker runner tells a handler its job was
    cancelled and sends its progress; Pushed.wait raises for a dead job.
    """

    async def test_runner_exposes_cancel_and_progress(self) -> None:
        import threading

        from twisted.internet.threads import deferToThread

        from procession.client import Client, JobFailed, WaitTimeout
        from procession.client.worker import Worker, cancelled, progress

        a = await ServerFixture(self).start()
        http = HTTP(a.http_port)
        started = threading.Event()
        saw_cancel = threading.Event()

        def long(n: int) -> str:
            progress(25, "a quarter")
            started.set()
            for _ in range(1000):
                if cancelled():
                    saw_cancel.set()
                    return "stopped early"
                threading.Event().wait(0.01)
            return "ran to the end"

        def broken() -> None:
            raise ValueError("no good")

        worker = Worker(
            {"long": long, "broken": broken},
            host="127.0.0.1",
            port=a.tcp_port,
            concurrency=2,
            shutdown_timeout=2,
        )
        running = deferToThread(worker.run, install_signals=False)
        client = Client("127.0.0.1", a.tcp_port, retry_for=2)
        self.addCleanup(client.close)
        pushed = await deferToThread(client.push, "long", [1], id="long-1")
        self.assertEqual(pushed, "long-1")
        await deferToThread(started.wait, 10)

        async def reported() -> Any:
            job = (await http.get("/api/v1/jobs/long-1")).json
            return job.get("progress")

        shown = await until(reported)
        self.assertEqual((shown["percent"], shown["message"]), (25.0, "a quarter"))
        self.assertEqual((await http.post("/api/v1/jobs/long-1/cancel")).code, 200)
        self.assertTrue(await deferToThread(saw_cancel.wait, 10))
        with self.assertRaises(JobFailed) as failed:
            await deferToThread(pushed.wait, 5)
        self.assertEqual(failed.exception.state, "cancelled")

        dead = await deferToThread(client.push, "broken", max_attempts=1)
        with self.assertRaises(JobFailed) as failed:
            await deferToThread(dead.wait, 10)
        self.assertEqual(failed.exception.state, "dead")
        self.assertIn("no good", failed.exception.error["message"])
        never = await deferToThread(client.push, "nobody-handles", queue="elsewhere")
        with self.assertRaises(WaitTimeout):
            await deferToThread(never.wait, 0.3)
        worker.stop()
        await running


class AwaitCleanupTests(TestCase):
    async def test_a_dropped_connection_leaves_no_waiter(self) -> None:
        """
        AWAITs of a connection that goes away stop waiting at once: no
        waiter (and no timer) is left behind.
        """
        a = await ServerFixture(self).start()
        client = await a.connect("waiter")
        for n in range(5):
            await client.ok("PUSH", {"type": "t", "id": f"w{n}"})
        # (Replies keep their order: nothing sent after these is answered.)
        for n in range(5):
            client.send("AWAIT", {"id": f"w{n}", "wait": 3600}).addErrback(
                lambda _: None
            )
        workflows = a.service.dispatcher.workflows

        async def waiting() -> bool:
            return workflows.waiting() == 5

        await until(waiting)
        client.transport.abortConnection()
        await client.closed

        async def none() -> bool:
            return workflows.waiting() == 0

        await until(none, timeout=2)


class FaktoryBatchTests(TestCase):
    """
    Faktory Enterprise's batch commands, through the published client
    pyfaktory (unchanged), on procession's batches.
    """

    async def test_pyfaktory_batch(self) -> None:
        try:
            from pyfaktory import Batch, Client, Job, Producer, TargetJob
        except ImportError:
            raise SkipTest("pyfaktory is not installed (pip install '.[test]')")
        from twisted.internet.threads import deferToThread

        a = await ServerFixture(self, "--faktory", "tcp:0:interface=127.0.0.1").start()

        def bulk(reply: str) -> str:
            size, _, data = reply.partition("\r\n")
            self.assertTrue(size.startswith("$"), reply)
            return data

        url = f"tcp://127.0.0.1:{a.service.faktory_port.getHost().port}"

        def produce() -> tuple[str, list[str], str]:
            with Client(faktory_url=url, role="producer") as client:
                producer = Producer(client=client)
                # pyfaktory hands back the reply as it came, a RESP bulk
                # string ("$<length>", then the new batch's id), as with
                # Faktory's own server.
                reply = producer.batch_new(
                    Batch(
                        parent_bid=None,
                        description="three from Faktory",
                        success=TargetJob(jobtype="zip", args=["all"], queue="fk-cb"),
                        complete=None,
                    )
                )
                bid = bulk(reply)
                jobs = [
                    Job(jobtype="t", args=[n], queue="fk", custom={"bid": bid})
                    for n in range(3)
                ]
                for job in jobs:
                    producer.push(job)
                producer.batch_commit(bid)
                return bid, [j.jid for j in jobs], bulk(client._batch_status(bid))

        bid, jids, status = await deferToThread(produce)
        self.assertEqual(
            {k: v for k, v in json.loads(status).items() if k != "created_at"},
            {
                "bid": bid,
                "parent_bid": "",
                "description": "three from Faktory",
                "total": 3,
                "pending": 3,
                "failed": 0,
                "complete_st": "",
                "success_st": "",
            },
        )
        worker = await a.connect("native")
        await worker.ok("READY", {"queues": ["fk", "fk-cb"], "credit": 1})
        for _ in range(3):
            job = await worker.next_job()
            self.assertIn(job["id"], jids)
            self.assertEqual((job["batch"], job["meta"]["bid"]), (bid, bid))
            await worker.ok("ACK", {"id": job["id"]})
        callback = await worker.next_job()
        self.assertEqual((callback["id"], callback["type"]), (f"{bid}:success", "zip"))

        def status_now() -> str:
            with Client(faktory_url=url, role="producer") as client:
                return bulk(client._batch_status(bid))

        done = json.loads(await deferToThread(status_now))
        self.assertEqual((done["pending"], done["success_st"]), (0, "1"))


class PushedTests(SynchronousTestCase):
    def test_pushed_is_the_id_everywhere(self) -> None:
        """
        What push returns compares, serializes, pickles and copies as the
        plain id.
        """
        import copy
        import pickle

        from procession.client import Pushed

        pushed = Pushed("job-1", client=None)  # type: ignore[arg-type]
        self.assertEqual(pushed, "job-1")
        self.assertEqual(json.dumps({"id": pushed}), '{"id": "job-1"}')
        for twin in (pickle.loads(pickle.dumps(pushed)), copy.deepcopy(pushed)):
            self.assertEqual((twin, type(twin)), ("job-1", str))
