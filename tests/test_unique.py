"""
Unique jobs: C{unique_for}, C{unique_key} and C{unique_until} on a push
(push.lua takes the lock; claim, ack, fail, cancel and retention free it).

The store tests drive the scripts on the test Redis; the cluster test
pushes from 8 concurrent producers on two real servers over TCP and HTTP.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from procession.core.errors import InvalidJob
from procession.core.job import UniqueHeld, parse_submission, unique_lock_name
from tests.client import ServerFixture
from tests.http import HTTP
from tests.support import FakeClock, connected_store, new_job


class ParseTests(SynchronousTestCase):
    """
    The unique fields of a submission.
    """

    def parse(self, **fields: Any) -> Any:
        fields.setdefault("type", "t")
        return parse_submission(fields, 1000, 1 << 20)

    def test_defaults(self) -> None:
        job = self.parse(args=[1, {"b": 2, "a": 1}], unique_for=60)
        self.assertEqual((job.unique_for, job.unique_until), (60_000, "success"))
        # The default key is type, queue and the arguments' canonical JSON:
        # the same arguments written in another order take the same lock.
        other = self.parse(args=[1, {"a": 1, "b": 2}], unique_for=5)
        self.assertEqual(job.unique_lock, other.unique_lock)
        self.assertNotEqual(
            job.unique_lock, self.parse(args=[2], unique_for=60).unique_lock
        )
        self.assertNotEqual(
            job.unique_lock,
            self.parse(
                args=[1, {"a": 1, "b": 2}], queue="q", unique_for=60
            ).unique_lock,
        )
        self.assertEqual(self.parse().unique_lock, "")

    def test_explicit_key(self) -> None:
        a = self.parse(args=[1], unique_for=1, unique_key="k", unique_until="start")
        b = self.parse(args=[2], unique_for=1, unique_key="k")
        self.assertEqual(a.unique_lock, b.unique_lock)
        self.assertEqual(a.unique_lock, unique_lock_name("k", "x", "y", None))
        self.assertEqual(a.unique_until, "start")

    def test_refused(self) -> None:
        for fields, field in [
            ({"unique_for": 0}, "unique_for"),
            ({"unique_for": -1}, "unique_for"),
            ({"unique_for": "60"}, "unique_for"),
            ({"unique_for": 10**9}, "unique_for"),
            ({"unique_for": True}, "unique_for"),
            ({"unique_for": 5, "unique_key": ""}, "unique_key"),
            ({"unique_for": 5, "unique_key": 7}, "unique_key"),
            ({"unique_for": 5, "unique_until": "end"}, "unique_until"),
            ({"unique_key": "k"}, "unique_key"),
            ({"unique_until": "start"}, "unique_until"),
        ]:
            with self.assertRaises(InvalidJob) as caught:
                self.parse(**fields)
            self.assertEqual(caught.exception.details["field"], field, fields)


class StoreTests(TestCase):
    """
    The lock as the scripts keep it.
    """

    async def setUp(self) -> None:
        self.clock = FakeClock()
        self.store = await connected_store(self, self.clock)

    def job(self, **fields: Any) -> Any:
        return new_job(self.store.now_ms(), **fields)

    async def lock_holder(self, job: Any) -> Any:
        return await self.store.command(
            "GET", self.store.keys.unique(job.queue, job.unique_lock)
        )

    async def test_collision_answers_the_holder(self) -> None:
        first = self.job(id="a", args=[1], unique_for=60)
        self.assertEqual(await self.store.push([first]), [True])
        # Another id, the same key: refused, naming the holder; an id that
        # exists is still answered as itself.
        self.assertEqual(
            await self.store.push([self.job(id="b", args=[1], unique_for=60)]),
            [UniqueHeld("a")],
        )
        self.assertEqual(
            await self.store.push([self.job(id="a", args=[1], unique_for=60)]),
            [False],
        )
        # Within one batch too; other keys are not affected.
        outcomes = await self.store.push(
            [
                self.job(id="c", args=[2], unique_for=60),
                self.job(id="d", args=[2], unique_for=60),
                self.job(id="e", args=[1]),
            ]
        )
        self.assertEqual(outcomes, [True, UniqueHeld("c"), True])
        self.assertEqual(
            await self.store.state_members("default", "queued"), ["a", "c", "e"]
        )
        summary = await self.store.summary("default")
        self.assertEqual((summary.pushed, summary.unique_collisions), (3, 2))

    async def test_refused_id_stays_free(self) -> None:
        """
        A push refused for a held lock leaves its id free: nothing of it
        is stored, not even in the index of ids, so the id can be pushed
        to another queue.
        """
        await self.store.push([self.job(id="a", args=[1], unique_for=60)])
        refused = self.job(id="b", args=[1], unique_for=60)
        self.assertEqual(await self.store.push([refused]), [UniqueHeld("a")])
        self.assertIsNone(await self.store.command("HGET", self.store.keys.ids, "b"))
        self.assertEqual(
            await self.store.push([self.job(id="b", queue="other")]), [True]
        )
        self.assertEqual(await self.store.locate("b"), "other")

    async def test_until_success(self) -> None:
        job = self.job(id="a", unique_for=60)
        await self.store.push([job])
        [claimed] = await self.store.claim("default", [("w", "l1")])
        # Running: still locked.
        self.assertEqual(await self.lock_holder(job), "a")
        again = self.job(id="b", unique_for=60)
        self.assertEqual(await self.store.push([again]), [UniqueHeld("a")])
        # A failure that retries keeps it; the completion frees it.
        await self.store.fail("default", [("a", "l1", "{}", 0, True)])
        self.assertEqual(await self.lock_holder(job), "a")
        await self.store.sweep("default", 100, 3600, 3600, 100)
        await self.store.claim("default", [("w", "l2")])
        self.assertEqual(await self.store.ack("default", [("a", "l2", "")]), ["ok"])
        self.assertIsNone(await self.lock_holder(job))
        self.assertEqual(await self.store.push([again]), [True])

    async def test_until_start(self) -> None:
        job = self.job(id="a", unique_for=60, unique_until="start")
        await self.store.push([job])
        self.assertEqual(await self.lock_holder(job), "a")
        await self.store.claim("default", [("w", "l1")])
        self.assertIsNone(await self.lock_holder(job))
        second = self.job(id="b", unique_for=60, unique_until="start")
        self.assertEqual(await self.store.push([second]), [True])
        # The first's ack does not free the second's lock.
        await self.store.ack("default", [("a", "l1", "")])
        self.assertEqual(await self.lock_holder(second), "b")

    async def test_dead_cancelled_and_deleted_free_it(self) -> None:
        a = self.job(id="a", args=["a"], unique_for=60, max_attempts=1)
        b = self.job(id="b", args=["b"], unique_for=60)
        c = self.job(id="c", args=["c"], unique_for=60)
        await self.store.push([a, b, c])
        [claimed] = await self.store.claim("default", [("w", "l")])
        self.assertEqual(claimed.id, "a")
        await self.store.fail("default", [("a", "l", "{}", None, True)])
        self.assertEqual(await self.store.cancel("default", "b"), "queued")
        self.assertEqual(await self.store.delete("default", "c"), "queued")
        for job in (a, b, c):
            self.assertIsNone(await self.lock_holder(job))

    async def test_lock_never_outlives_unique_for(self) -> None:
        job = self.job(id="a", unique_for=0.2)
        await self.store.push([job])
        ttl = int(
            await self.store.command(
                "PTTL", self.store.keys.unique("default", job.unique_lock)
            )
        )
        self.assertTrue(0 < ttl <= 200, ttl)
        # The job is lost for good (never acked): the key frees all the same.
        await self.store.claim("default", [("w", "l")])
        await deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(
            await self.store.push([self.job(id="b", unique_for=0.2)]),
            [True],
        )
        # The lost job's completion does not free its successor's lock.
        await self.store.ack("default", [("a", "l", "")])
        self.assertEqual(await self.lock_holder(job), "b")


class ClusterTests(TestCase):
    """
    Two servers on one Redis, 8 concurrent producers (TCP and HTTP, 4 on
    each server), every producer pushing every key: exactly one job per key
    per window, and every refused push names that job.
    """

    async def test_one_job_per_key_per_window(self) -> None:
        a = await ServerFixture(self).start()
        b = await ServerFixture(self, ns=a.namespace).start()
        keys = [f"key{k}" for k in range(6)]
        producers: list[Any] = []
        for server in (a, b):
            for n in range(2):
                producers.append(await server.connect(f"tcp{n}"))
                producers.append(HTTP(server.http_port))

        async def push(producer: Any, key: str, window: int, n: int) -> dict[str, Any]:
            job = {
                "type": "report",
                "args": [key],
                "unique_for": 60,
                "id": f"{key}-w{window}-p{n}",
            }
            if isinstance(producer, HTTP):
                response = await producer.post("/api/v1/jobs", body=job)
                self.assertIn(response.code, (200, 201), response)
                return response.json
            return await producer.ok("PUSH", job)

        async def window(number: int) -> dict[str, str]:
            # Every producer pushes every key at once, interleaved.
            replies = await defer.gatherResults(
                [
                    defer.ensureDeferred(push(p, key, number, n))
                    for key in keys
                    for n, p in enumerate(producers)
                ]
            )
            winners: dict[str, str] = {}
            for reply in replies:
                if reply["created"]:
                    key = reply["id"].partition("-")[0]
                    self.assertNotIn(key, winners, "two jobs created for one key")
                    winners[key] = reply["id"]
            self.assertEqual(sorted(winners), keys)
            for i, reply in enumerate(replies):
                key = keys[i // len(producers)]
                self.assertEqual(reply["id"], winners[key], reply)
            return winners

        first = await window(1)
        self.assertEqual(len(first), len(keys))
        queued = await a.store.state_members("default", "queued")
        self.assertEqual(sorted(queued), sorted(first.values()))

        # The jobs complete, the locks free: the next window again makes
        # exactly one job per key.
        worker = await b.connect("worker")
        await worker.ok("READY", {"queues": ["default"], "credit": len(keys)})
        for _ in keys:
            job = await worker.next_job()
            await worker.ok("ACK", {"id": job["id"]})
        second = await window(2)
        self.assertEqual(set(second.values()) & set(first.values()), set())
        for job_id in second.values():
            await b.store.get_job("default", job_id)
        summary = await b.store.summary("default")
        self.assertEqual(summary.pushed, 2 * len(keys))
        stats = (await HTTP(a.http_port).get("/api/v1/stats")).json
        refused = 2 * len(keys) * (len(producers) - 1)
        self.assertEqual(stats["totals"]["unique_collisions"], refused)


class FaktoryTests(SynchronousTestCase):
    """
    Faktory Enterprise's unique and expiring jobs name their fields in
    C{custom}: over the Faktory listener, a second push of a held key
    answers NOTUNIQUE, and an expired job is never fetched.
    """

    def test_mapping(self) -> None:
        from procession.tcp.faktory_job import to_submission

        submission = to_submission(
            {
                "jid": "unique-job-1",
                "jobtype": "t",
                "args": [1],
                "custom": {"unique_for": 60, "unique_until": "start", "expires_in": 30},
            }
        )
        job = parse_submission(submission, 1000, 1 << 20)
        self.assertEqual((job.unique_for, job.unique_until), (60_000, "start"))
        self.assertEqual(job.expires_at, 31_000)

    def test_notunique_and_expired(self) -> None:
        from tests.test_faktory import FaktoryServer, RawSession

        server = FaktoryServer(self).serving()
        session = RawSession(server.faktory_port, {"wid": "w1", "v": 2})
        self.addCleanup(session.close)

        def push(jid: str, **custom: Any) -> Any:
            job = {"jid": jid, "jobtype": "t", "args": [1], "queue": "fq"}
            job["custom"] = custom
            return session.request("PUSH " + json.dumps(job))

        self.assertEqual(push("unique-a", unique_for=60), "+OK")
        self.assertEqual(push("unique-b", unique_for=60), "-NOTUNIQUE Job not unique")
        self.assertEqual(push("expired-c", expires_at="2020-01-01T00:00:00Z"), "+OK")
        fetched = session.request("FETCH fq")
        self.assertEqual(fetched["jid"], "unique-a")
        self.assertIsNone(session.request("FETCH fq"))
