"""
Tests for L{procession.store.jobs}: the Lua scripts against a real Redis.
"""

from __future__ import annotations

import json
import re

from hypothesis import given, strategies as st
from typing import Any

from twisted.internet import defer, reactor, tcp
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from procession.core.errors import (
    IllegalState,
    InvalidRequest,
    JobNotFound,
    StoreUnavailable,
)
from procession.redis.address import RedisAddress
from procession.redis.connection import _fast_connections, connect, send
from procession.redis.internals import CONNECTION_ATTRIBUTES, free_connection
from procession.store.jobs import Store
from tests.redis import shared_redis
from tests.support import FakeClock, connected_store, namespace, new_job


class StoreTests(TestCase):
    async def setUp(self) -> None:
        self.clock = FakeClock()
        self.store = await connected_store(self, self.clock)

    def job(self, **fields):
        return new_job(self.store.now_ms(), **fields)

    async def test_push_is_idempotent_on_id(self) -> None:
        created = await self.store.push([self.job(id="a", args=[1])])
        self.assertEqual(created, [True])
        again = await self.store.push([self.job(id="a", args=[2])])
        self.assertEqual(again, [False])
        job = await self.store.get_job("default", "a")
        self.assertEqual(job["args"], [1])
        sizes = await self.store.queue_sizes("default")
        self.assertEqual(sizes["sizes"]["queued"], 1)
        self.assertEqual(sizes["pushed"], 1)

    async def test_scripts_flushed(self) -> None:
        """
        A Redis that lost its scripts (restarted, failed over, SCRIPT
        FLUSH) is sent a script's text again: the call succeeds, and the
        next ones go by SHA again.
        """
        await self.store.push([self.job(id="a")])
        await self.store.redis.execute_command("SCRIPT", "FLUSH")
        self.assertEqual(await self.store.push([self.job(id="b")]), [True])
        sha = self.store.scripts["push_plain"].sha
        self.assertEqual(
            await self.store.redis.execute_command("SCRIPT", "EXISTS", sha), [1]
        )
        claimed = await self.store.claim("default", [("w", "l1"), ("w", "l2")])
        self.assertEqual(sorted(job.id for job in claimed), ["a", "b"])

    async def test_plain_push_refuses_workflow_values(self) -> None:
        """
        A push of a job with no batch and no parents runs push.lua's
        plain variant (no workflow hooks); handed a workflow value, that
        variant fails before it writes anything, and a job in a batch is
        pushed with the full script, which knows batches.
        """
        import txredisapi

        from procession.core.errors import BatchNotFound
        from procession.store.jobs import _job_args, _push_script

        plain = self.job(id="p")
        in_batch = self.job(id="b", batch="nope")
        now = self.store.now_ms()
        args = self.store._push_args("default", now) + _job_args(in_batch, now, {})
        self.assertEqual(_push_script([in_batch]), "push")
        self.assertEqual(_push_script([plain]), "push_plain")
        with self.assertRaises(txredisapi.ResponseError):
            await self.store.run("push_plain", "default", args, [self.store.keys.ids])
        self.assertEqual(
            await self.store.redis.execute_command(
                "EXISTS", self.store.keys.job("default", "b")
            ),
            0,
        )
        self.assertEqual(
            await self.store.redis.execute_command("HGET", self.store.keys.ids, "b"),
            None,
        )
        with self.assertRaises(BatchNotFound) as refused:
            await self.store.push([in_batch])
        self.assertIn("nope", str(refused.exception))
        self.assertEqual(await self.store.push([plain]), [True])

    async def test_claim_orders_by_priority_then_fifo(self) -> None:
        await self.store.push(
            [
                self.job(id="low1", priority=-1),
                self.job(id="mid1"),
                self.job(id="high", priority=5),
                self.job(id="mid2"),
                self.job(id="low2", priority=-1),
            ]
        )
        claimed = await self.store.claim("default", [("w", f"l{i}") for i in range(10)])
        self.assertEqual(
            [j.id for j in claimed], ["high", "mid1", "mid2", "low1", "low2"]
        )
        self.assertEqual([j.lease for j in claimed], [f"l{i}" for i in range(5)])
        payload = json.loads(claimed[0].payload)
        self.assertEqual(payload["attempt"], 1)
        self.assertEqual(payload["type"], "test")

    async def test_ack_needs_the_lease(self) -> None:
        await self.store.push([self.job(id="a")])
        [job] = await self.store.claim("default", [("w", "lease-1")])
        self.assertEqual(
            await self.store.ack("default", [("a", "other", "")]), ["lease_lost"]
        )
        self.assertEqual(
            await self.store.ack("default", [("a", "lease-1", '{"x":1}')]), ["ok"]
        )
        self.assertEqual(
            await self.store.ack("default", [("a", "lease-1", "")]), ["lease_lost"]
        )
        self.assertEqual(
            await self.store.ack("default", [("zz", "lease-1", "")]), ["not_found"]
        )
        stored = await self.store.get_job("default", "a")
        self.assertEqual(stored["state"], "completed")
        self.assertEqual(stored["result"], {"x": 1})

    async def test_fail_backs_off_then_dies(self) -> None:
        await self.store.push([self.job(id="a", max_attempts=2)])
        await self.store.claim("default", [("w", "l1")])
        [(status, run_at)] = await self.store.fail(
            "default", [("a", "l1", '{"type":"E","message":"m"}', None, True)]
        )
        self.assertEqual(status, "retrying")
        now = self.store.now_ms()
        # attempt 1: 1 + 15 + jitter * 2, jitter 0..30
        self.assertTrue(now + 16_000 <= run_at <= now + 76_000, run_at - now)
        self.clock.advance(100)
        self.assertEqual(
            await self.store.sweep("default", 100, 3600, 86400, 100), (1, 0, 0)
        )
        await self.store.claim("default", [("w", "l2")])
        [(status, _)] = await self.store.fail(
            "default", [("a", "l2", '{"type":"E","message":"m2"}', None, True)]
        )
        self.assertEqual(status, "dead")
        job = await self.store.get_job("default", "a")
        self.assertEqual(job["state"], "dead")
        self.assertEqual([e["message"] for e in job["errors"]], ["m2", "m"])

    async def test_expired_lease_is_reclaimed(self) -> None:
        await self.store.push([self.job(id="a", timeout=10)])
        await self.store.claim("default", [("w", "l1")])
        self.clock.advance(5)
        self.assertEqual(
            (await self.store.extend("default", [("a", "l1", 20)]))[0][0], "ok"
        )
        self.clock.advance(15)
        self.assertEqual(
            await self.store.sweep("default", 100, 3600, 86400, 100), (0, 0, 0)
        )
        self.clock.advance(6)
        self.assertEqual(
            await self.store.sweep("default", 100, 3600, 86400, 100), (0, 1, 0)
        )
        self.assertEqual(
            await self.store.ack("default", [("a", "l1", "")]), ["lease_lost"]
        )
        [again] = await self.store.claim("default", [("w2", "l2")])
        self.assertEqual(again.attempt, 2)

    async def test_release_uncounted(self) -> None:
        await self.store.push([self.job(id="a", max_attempts=1)])
        await self.store.claim("default", [("w", "l1")])
        self.assertEqual(
            await self.store.release("default", [("a", "l1")], "gone", delivered=False),
            ["queued"],
        )
        [job] = await self.store.claim("default", [("w", "l2")])
        self.assertEqual(job.attempt, 1)
        self.assertEqual(
            await self.store.release("default", [("a", "l2")], "gone"), ["dead"]
        )

    async def test_scheduled_job_waits(self) -> None:
        await self.store.push([self.job(id="a", delay=60)])
        self.assertEqual(await self.store.claim("default", [("w", "l")]), [])
        self.clock.advance(61)
        await self.store.sweep("default", 100, 3600, 86400, 100)
        self.assertEqual(len(await self.store.claim("default", [("w", "l")])), 1)

    async def test_pause(self) -> None:
        await self.store.push([self.job(id="a")])
        self.assertTrue(await self.store.set_paused("default", True))
        self.assertEqual(await self.store.claim("default", [("w", "l")]), [])
        self.assertTrue(await self.store.set_paused("default", False))
        self.assertEqual(len(await self.store.claim("default", [("w", "l")])), 1)

    async def test_cancel_running_refuses_ack(self) -> None:
        await self.store.push([self.job(id="a")])
        await self.store.claim("default", [("w", "l")])
        self.assertEqual(await self.store.cancel("default", "a"), "running")
        self.assertEqual(
            await self.store.ack("default", [("a", "l", "")]), ["cancelled"]
        )
        with self.assertRaises(IllegalState):
            await self.store.cancel("default", "a")
        with self.assertRaises(JobNotFound):
            await self.store.cancel("default", "nope")

    async def test_retention(self) -> None:
        await self.store.push([self.job(id="a"), self.job(id="b")])
        await self.store.claim("default", [("w", "l1"), ("w", "l2")])
        await self.store.ack("default", [("a", "l1", ""), ("b", "l2", "")])
        self.clock.advance(3601)
        self.assertEqual(
            await self.store.sweep("default", 100, 3600, 86400, 100), (0, 0, 2)
        )
        with self.assertRaises(JobNotFound):
            await self.store.get_job("default", "a")

    async def test_sweeps_of_many_servers_at_once(self) -> None:
        """
        Three servers sweeping the same queue at the same time, in small
        batches, promote each due job once, take back each expired lease
        once (one LeaseExpired error, one counted attempt) and remove each
        finished job once: together they do what one sweep would.
        """
        stores = [self.store] + [
            Store(
                self.store.redis,
                self.clock,
                reactor,
                namespace=self.store.namespace,
                server_id=f"srv-{n}",
            )
            for n in range(2)
        ]
        await self.store.push(
            [self.job(id=f"run{i}", timeout=5) for i in range(20)]
            + [self.job(id=f"done{i}") for i in range(20)]
        )
        claimed = await self.store.claim("default", [("w", f"l{i}") for i in range(40)])
        done = [(j.id, j.lease, "") for j in claimed if j.id.startswith("done")]
        self.assertEqual(len(done), 20)
        await self.store.ack("default", done)
        await self.store.push([self.job(id=f"later{i}", delay=60) for i in range(20)])
        self.clock.advance(3601)

        totals = [0, 0, 0]
        for _ in range(5):
            results = await defer.gatherResults(
                [
                    s.sweep("default", 3, 3600, 86400, 100)
                    for s in stores
                    for _ in range(3)
                ],
                consumeErrors=True,
            )
            for result in results:
                totals = [t + n for t, n in zip(totals, result)]
        self.assertEqual(totals, [20, 20, 20])
        sizes = await self.store.queue_sizes("default")
        self.assertEqual(sizes["sizes"]["queued"], 40)
        self.assertEqual(sizes["sizes"]["running"], 0)
        for i in range(20):
            job = await self.store.get_job("default", f"run{i}")
            self.assertEqual([e["type"] for e in job["errors"]], ["LeaseExpired"], job)
            self.assertEqual(job["attempt"], 1)
        again = await self.store.claim("default", [("w", f"m{i}") for i in range(40)])
        self.assertEqual(
            sorted(j.attempt for j in again if j.id.startswith("run")), [2] * 20
        )
        self.assertEqual(
            sorted(j.attempt for j in again if j.id.startswith("later")), [1] * 20
        )

    async def test_purge(self) -> None:
        await self.store.push([self.job(id=str(i)) for i in range(25)])
        self.assertEqual(await self.store.purge("default", "queued", batch=10), 25)
        sizes = await self.store.queue_sizes("default")
        self.assertEqual(sizes["sizes"]["queued"], 0)


class ManagementReadTests(TestCase):
    """
    The created index, the paged listing, queue summaries and the bulk
    changes (list.lua, summary.lua, retry_bulk.lua, kill_bulk.lua).
    """

    async def setUp(self) -> None:
        self.clock = FakeClock()
        self.store = await connected_store(self, self.clock)

    def job(self, **fields):
        return new_job(self.store.now_ms(), **fields)

    async def index(self, queue: str = "default") -> list[str]:
        return await self.store.command("ZRANGE", self.store.keys.created(queue), 0, -1)

    async def test_index_follows_every_removal(self) -> None:
        now = self.store.now_ms()
        await self.store.push([self.job(id=i) for i in "abcdef"])
        self.assertEqual(await self.index(), [f"{now:015d}{i}" for i in "abcdef"])
        await self.store.delete("default", "a")
        self.assertEqual(await self.store.purge("default", "queued", batch=2), 5)
        self.assertEqual(await self.index(), [])
        await self.store.push([self.job(id="x"), self.job(id="y")])
        await self.store.claim("default", [("w", "l1"), ("w", "l2")])
        await self.store.ack("default", [("x", "l1", "")])
        await self.store.fail("default", [("y", "l2", "{}", None, False)])
        self.clock.advance(3601)
        self.assertEqual(
            await self.store.sweep("default", 100, 3600, 86400, 0), (0, 0, 2)
        )
        self.assertEqual(await self.index(), [])

    async def test_listing_by_creation_then_id(self) -> None:
        await self.store.push([self.job(id=i) for i in ("b", "a", "c")])
        self.clock.advance(0.001)
        await self.store.push([self.job(id="d", queue="other", type="odd")])
        jobs, position = await self.store.list_jobs(None, None, 3)
        self.assertEqual([j["id"] for j in jobs], ["d", "c", "b"])
        self.assertNotIn("errors", jobs[0])
        jobs, position = await self.store.list_jobs(None, position, 3)
        self.assertEqual(([j["id"] for j in jobs], position), (["a"], None))
        jobs, _ = await self.store.list_jobs(None, None, 10, job_type="odd")
        self.assertEqual([j["id"] for j in jobs], ["d"])
        jobs, _ = await self.store.list_jobs("default", None, 10, state="queued")
        self.assertEqual([j["id"] for j in jobs], ["c", "b", "a"])
        with self.assertRaises(InvalidRequest):
            await self.store.list_jobs(None, None, 10, state="nap")

    async def test_latency_sees_past_a_job_given_back(self) -> None:
        await self.store.push([self.job(id="a")])
        self.clock.advance(1)
        await self.store.push([self.job(id="b")])
        await self.store.claim("default", [("w", "l")])
        self.clock.advance(4)
        # "a" goes back to the head of the line, queued anew.
        await self.store.release("default", [("a", "l")], "gone")
        self.clock.advance(2)
        summary = await self.store.summary("default")
        self.assertEqual(summary.latency, 6.0)
        self.assertEqual(summary.sizes["queued"], 2)

    async def test_latency_over_priorities(self) -> None:
        await self.store.push([self.job(id="low", priority=-3)])
        self.clock.advance(10)
        await self.store.push([self.job(id="high", priority=3)])
        self.assertEqual((await self.store.summary("default")).latency, 10.0)
        await self.store.kill("default", "low")
        self.assertEqual((await self.store.summary("default")).latency, 0.0)

    async def test_throughput_window(self) -> None:
        # Start a minute on the dot.
        self.clock.now = 1_800_000_000 - 1_800_000_000 % 60
        await self.store.push([self.job(id=str(i)) for i in range(4)])
        claimed = await self.store.claim("default", [("w", f"l{i}") for i in range(4)])
        await self.store.ack("default", [(j.id, j.lease, "") for j in claimed])
        summary = await self.store.summary("default")
        self.assertEqual(summary.throughput.processed_minute, 4)
        self.clock.advance(60 + 15)
        summary = await self.store.summary("default")
        self.assertEqual(summary.throughput.processed_minute, 3)
        self.assertEqual(summary.throughput.processed_hour, 4 / 60)
        self.assertEqual(summary.processed, 4)

    async def test_bulk_retry_and_kill(self) -> None:
        await self.store.push([self.job(delay=60) for _ in range(5)])
        await self.store.push([self.job() for _ in range(3)])
        self.assertEqual(await self.store.kill_all("default", "scheduled", batch=2), 5)
        self.assertEqual(await self.store.kill_all("default", "queued", batch=2), 3)
        sizes = (await self.store.summary("default")).sizes
        self.assertEqual(
            (sizes["dead"], sizes["queued"], sizes["scheduled"]), (8, 0, 0)
        )
        self.assertEqual(await self.store.retry_all("default", "dead", batch=3), 8)
        sizes = (await self.store.summary("default")).sizes
        self.assertEqual((sizes["dead"], sizes["queued"]), (0, 8))
        self.assertEqual(await self.store.retry_all("default", "dead"), 0)
        with self.assertRaises(InvalidRequest):
            await self.store.retry_all("default", "queued")
        with self.assertRaises(InvalidRequest):
            await self.store.kill_all("default", "running")

    async def test_locate(self) -> None:
        await self.store.push(
            [self.job(id="a", queue="q1"), self.job(id="b", queue="q2")]
        )
        self.assertEqual(await self.store.locate("b"), "q2")
        with self.assertRaises(JobNotFound):
            await self.store.locate("c")


class ServerRegistryTests(TestCase):
    """
    The held sets (claim.lua with a server, server_lost.lua, and every way
    out of 'running') and the server registry (servers.lua, descriptions).
    """

    async def setUp(self) -> None:
        self.clock = FakeClock()
        self.store = await connected_store(self, self.clock, server_id="srv-a")

    def job(self, **fields):
        return new_job(self.store.now_ms(), **fields)

    async def held(self, server: str = "srv-a", queue: str = "default") -> list[str]:
        return sorted(
            await self.store.command("SMEMBERS", self.store.keys.held(queue, server))
        )

    async def server_field(self, job_id: str) -> str | None:
        return await self.store.command(
            "HGET", self.store.keys.job("default", job_id), "server"
        )

    async def test_claim_records_the_holder(self) -> None:
        """
        A claim for connection-bound workers names the server in each job
        and puts it in the server's held set; other claims record nothing.
        """
        await self.store.push([self.job(id=i) for i in "abc"])
        await self.store.claim("default", [("w", "l1"), ("w", "l2")], held=True)
        self.assertEqual(await self.held(), ["a", "b"])
        self.assertEqual(await self.server_field("a"), "srv-a")
        await self.store.claim("default", [("poller", "l3")])
        self.assertEqual(await self.held(), ["a", "b"])
        self.assertIsNone(await self.server_field("c"))

    async def test_every_way_out_of_running_leaves_the_held_set(self) -> None:
        """
        ack, fail, release, an expired lease, cancel, kill and delete each
        take the job off its server's held set and out of the hash.
        """
        ids = ["ack", "fail", "release", "expire", "cancel", "kill", "delete"]
        await self.store.push(
            [self.job(id=i, timeout=1 if i == "expire" else 300) for i in ids]
        )
        claimed = await self.store.claim(
            "default", [("w", f"lease-{i}") for i in ids], held=True
        )
        self.assertEqual([j.id for j in claimed], ids)
        self.assertEqual(await self.held(), sorted(ids))
        self.assertEqual(
            await self.store.ack("default", [("ack", "lease-ack", "")]), ["ok"]
        )
        await self.store.fail("default", [("fail", "lease-fail", "{}", 10, True)])
        await self.store.release("default", [("release", "lease-release")], "gone")
        self.clock.advance(2)
        self.assertEqual(
            (await self.store.sweep("default", 100, 3600, 86400, 100))[1], 1
        )
        await self.store.cancel("default", "cancel")
        await self.store.kill("default", "kill")
        await self.store.delete("default", "delete")
        self.assertEqual(await self.held(), [])
        for i in ids[:-1]:
            self.assertIsNone(await self.server_field(i), i)

    async def test_server_lost_gives_back_what_it_held(self) -> None:
        """
        The jobs a lost server held go back to the queue, their attempt
        counted and a ServerLost error recorded; a job out of attempts is
        dead.  Done twice (two servers at once), the second finds nothing.
        """
        await self.store.push(
            [self.job(id="a"), self.job(id="b"), self.job(id="last", max_attempts=1)]
        )
        await self.store.claim(
            "default", [("w", "l1"), ("w", "l2"), ("w", "l3")], held=True
        )
        self.assertEqual(await self.store.ack("default", [("b", "l2", "")]), ["ok"])
        other = await connected_store(
            self, self.clock, server_id="srv-b", namespace=self.store.namespace
        )
        self.assertEqual(
            await other.server_lost("default", "srv-a", "gone", limit=1000), (2, 0)
        )
        self.assertEqual(
            await other.server_lost("default", "srv-a", "gone", limit=1000), (0, 0)
        )
        job = await self.store.get_job("default", "a")
        self.assertEqual((job["state"], job["attempt"]), ("queued", 1))
        self.assertEqual(job["errors"][0]["type"], "ServerLost")
        self.assertEqual(job["errors"][0]["message"], "gone")
        self.assertEqual((await self.store.get_job("default", "last"))["state"], "dead")
        self.assertEqual(
            (await self.store.get_job("default", "b"))["state"], "completed"
        )
        # The old lease is void.
        self.assertEqual(
            await self.store.ack("default", [("a", "l1", "")]), ["lease_lost"]
        )
        [again] = await self.store.claim("default", [("w", "l4")])
        self.assertEqual((again.id, again.attempt), ("a", 2))

    async def published(self) -> int:
        """
        How many PUBLISH commands the test Redis has run.
        """
        text = await self.store.command("INFO", "commandstats")
        found = re.search(r"cmdstat_publish:calls=(\d+)", text)
        return int(found.group(1)) if found else 0

    async def test_a_push_wakes_only_when_another_server_waits(self) -> None:
        """
        A push publishes its wake-up only while a server other than the
        pushing one may have consumers waiting on the queue: one whose last
        claim came back short (the queue ran dry), until one of its claims
        fills every slot or it is lost.  Each server has its own entry, so
        one leaving never stops the wake-ups of another.
        """
        other = await connected_store(
            self, self.clock, server_id="srv-b", namespace=self.store.namespace
        )

        async def wakes(store: Store, job_id: str) -> int:
            before = await self.published()
            await store.push([self.job(id=job_id)])
            return await self.published() - before

        self.assertEqual(await wakes(self.store, "1"), 0)
        # srv-b's claim finds one job of two: its consumers wait
        self.assertEqual(
            len(await other.claim("default", [("w", "l1"), ("w", "l2")])), 1
        )
        self.assertEqual(await wakes(self.store, "2"), 1)
        # srv-b wakes its own consumers itself
        self.assertEqual(await wakes(other, "3"), 0)
        # srv-a's claim runs dry too (a TCP worker's or an HTTP poll's alike)
        self.assertEqual(
            len(
                await self.store.claim(
                    "default", [("w", f"a{i}") for i in range(3)], held=True
                )
            ),
            2,
        )
        self.assertEqual(await wakes(other, "4"), 1)
        # srv-b fills every slot: it claims again unwoken; srv-a still waits
        self.assertEqual(len(await other.claim("default", [("w", "l3")])), 1)
        self.assertEqual(await wakes(self.store, "5"), 0)
        self.assertEqual(await wakes(other, "6"), 1)
        # srv-b runs dry again, then srv-a is lost: its entry goes, srv-b's stays
        await other.claim("default", [("w", f"b{i}") for i in range(4)])
        await other.server_lost("default", "srv-a", "gone", limit=1000)
        self.assertEqual(await wakes(self.store, "7"), 1)
        self.assertEqual(await wakes(other, "8"), 0)
        # jobs due later, or pushed to a paused queue, wake nobody
        before = await self.published()
        await self.store.push([self.job(id="later", delay=60)])
        self.assertEqual(await self.published() - before, 0)
        await self.store.set_paused("default", True)
        self.assertEqual(await wakes(self.store, "9"), 0)

    async def test_server_lost_leaves_jobs_of_other_servers(self) -> None:
        """
        A job that went from the lost server to another (a stale entry in
        the held set) is only dropped from the set; a limit bounds each
        call.
        """
        await self.store.push([self.job(id=str(i)) for i in range(5)])
        await self.store.claim("default", [("w", f"l{i}") for i in range(5)], held=True)
        # Job 0 changed hands behind the set's back.
        await self.store.command(
            "HSET", self.store.keys.job("default", "0"), "server", "srv-b"
        )
        given, left = await self.store.server_lost("default", "srv-a", "gone", limit=2)
        # Each call looks at two jobs of the set at most.
        self.assertEqual(left, 3)
        total = given
        while left:
            given, left = await self.store.server_lost(
                "default", "srv-a", "gone", limit=2
            )
            total += given
        self.assertEqual(total, 4)
        self.assertEqual((await self.store.get_job("default", "0"))["state"], "running")
        self.assertEqual(await self.held(), [])

    async def test_heartbeats_and_lost_servers(self) -> None:
        """
        A heartbeat puts the server in the registry with its description,
        which expires after its time to live; a server not heard of for
        longer than the timeout is lost, and forgetting it works only while
        it still is.
        """
        await self.store.registry.heartbeat(
            json.dumps({"workers": [{"name": "w#1"}]}), 0.3
        )
        [described] = await self.store.registry.live_servers()
        self.assertEqual(described, {"id": "srv-a", "workers": [{"name": "w#1"}]})
        self.assertEqual(await self.store.registry.lost_servers(5), [])
        await sleep(0.4)
        self.assertEqual(await self.store.registry.live_servers(), [])
        self.assertEqual(await self.store.registry.lost_servers(0.2), ["srv-a"])
        self.assertFalse(await self.store.registry.forget_server("srv-a", 5))
        self.assertTrue(await self.store.registry.forget_server("srv-a", 0.2))
        self.assertEqual(await self.store.registry.lost_servers(0), [])
        await self.store.registry.heartbeat("{}", 5)
        await self.store.registry.deregister()
        self.assertEqual(await self.store.registry.live_servers(), [])
        self.assertEqual(
            await self.store.command("ZRANGE", self.store.keys.servers, 0, -1), []
        )


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


class FailFastTests(SynchronousTestCase):
    """
    With C{fail_fast} (a Sentinel URL), a request made while no connection
    to Redis is up fails at once with store_unavailable instead of waiting
    for the timeout; without it, it is sent and waits.
    """

    class Pool:
        """
        A txredisapi pool that has no connection up and never answers.
        """

        def __init__(self) -> None:
            self._factory = self
            self.size = 0
            self.sent: list[tuple[Any, ...]] = []
            self.suspected = 0

        def execute_command(self, *args: Any) -> defer.Deferred[Any]:
            self.sent.append(args)
            return defer.Deferred()

        def pipeline(self) -> defer.Deferred[Any]:
            self.sent.append(("pipeline",))
            return defer.Deferred()

        def suspect(self) -> None:
            self.suspected += 1

    def store(self, **kwargs: Any) -> tuple[Store, Pool, Clock]:
        pool = self.Pool()
        clock = Clock()
        return Store(pool, clock, clock, timeout=5, **kwargs), pool, clock

    def test_fails_fast_while_disconnected(self) -> None:
        store, pool, _ = self.store(fail_fast=True)
        for d in (
            store.ping(),
            store.run("ack", "q", [0]),
            store.push([new_job(0, id="a")]),
        ):
            self.failureResultOf(d, StoreUnavailable)
        replicated, pool, _ = self.store(fail_fast=True, replicas_ack=1)
        self.failureResultOf(replicated.push([new_job(0, id="a")]), StoreUnavailable)
        self.assertEqual(pool.sent, [])

    def test_sent_once_connected(self) -> None:
        """
        Sent when a connection is up; a timeout makes the pool suspect its
        connections (a Sentinel pool then checks that they go to the
        master), a cancelled request does not.
        """
        store, pool, clock = self.store(fail_fast=True)
        pool.size = 1
        d = store.ping()
        self.assertNoResult(d)
        self.assertEqual(pool.sent, [("PING",)])
        clock.advance(5)
        self.failureResultOf(d, StoreUnavailable)
        self.assertEqual(pool.suspected, 1)
        d = store.ping()
        d.cancel()
        self.failureResultOf(d, StoreUnavailable)
        self.assertEqual(pool.suspected, 1)

    def test_waits_without_fail_fast(self) -> None:
        store, pool, clock = self.store()
        d = store.ping()
        self.assertNoResult(d)
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.failureResultOf(d, StoreUnavailable)


class ReplicasAckTests(TestCase):
    """
    With C{replicas_ack}, pushes, acks and fails wait for that many
    replicas (the test Redis has none, so they fall short): each is
    answered store_unavailable after half the timeout, its script having
    run on the primary all the same; claims and the rest do not wait.
    (tests/test_sentinel.py has a real replica.)
    """

    async def setUp(self) -> None:
        self.clock = FakeClock()
        self.plain = await connected_store(self, self.clock)
        self.store = Store(
            self.plain.redis,
            self.clock,
            reactor,
            namespace=self.plain.namespace,
            timeout=0.4,
            replicas_ack=1,
        )

    async def test_writes_wait_for_replicas(self) -> None:
        job = new_job(self.store.now_ms(), id="a", max_attempts=3)
        with self.assertRaises(StoreUnavailable) as short:
            await self.store.push([job])
        self.assertIn("the push reached 0 of the 1 replicas", short.exception.message)
        self.assertEqual((await self.plain.get_job("default", "a"))["state"], "queued")

        [claimed] = await self.store.claim("default", [("w", "l1")])
        with self.assertRaises(StoreUnavailable) as short:
            await self.store.fail("default", [("a", "l1", "{}", 1, True)])
        self.assertIn("the fail reached 0", short.exception.message)
        self.assertEqual(
            (await self.plain.get_job("default", "a"))["state"], "retrying"
        )

        self.clock.advance(2)
        await self.store.sweep("default", 100, 3600, 86400, 100)
        [claimed] = await self.store.claim("default", [("w", "l2")])
        with self.assertRaises(StoreUnavailable) as short:
            await self.store.ack("default", [("a", "l2", "")])
        self.assertIn("the ack reached 0", short.exception.message)
        self.assertEqual(
            (await self.plain.get_job("default", "a"))["state"], "completed"
        )


class FastConnectionTests(SynchronousTestCase):
    """
    The Redis connections' own command encoding and reply decoding
    (L{procession.store.jobs._fast_connections}) give what txredisapi's give.
    """

    def setUp(self) -> None:
        import txredisapi

        class Factory:
            protocol = txredisapi.RedisProtocol

        _fast_connections(Factory)
        self.fast = Factory.protocol.__new__(Factory.protocol)
        self.plain = txredisapi.RedisProtocol.__new__(txredisapi.RedisProtocol)
        for connection in (self.fast, self.plain):
            connection.charset = "utf-8"
            connection.errors = "strict"
            connection.convertNumbers = False

    @given(
        st.lists(
            st.one_of(
                st.text(),
                st.binary(),
                st.integers(),
                st.floats(allow_nan=False, allow_infinity=False),
                st.booleans(),
            ),
            max_size=20,
        )
    )
    def test_commands(self, values: list[Any]) -> None:
        try:
            expected = self.plain._build_command(*values)
        except Exception as e:
            self.assertRaises(type(e), self.fast._build_command, *values)
            return
        self.assertEqual(self.fast._build_command(*values), expected)

    @given(
        st.recursive(
            st.none() | st.integers() | st.binary(),
            lambda children: st.lists(children, max_size=5),
            max_leaves=20,
        )
    )
    def test_replies(self, reply: Any) -> None:
        self.assertEqual(
            self.fast.tryConvertData(reply), self.plain.tryConvertData(reply)
        )


class FastPathTests(TestCase):
    """
    Commands sent by the connections' fast path (L{send}, the server's hot
    path) and by txredisapi's own path share one connection: every reply
    goes to its own command, in order, and a lost connection fails them all.
    """

    async def setUp(self) -> None:
        import txredisapi

        self.pool = connect(RedisAddress.from_url("unix://" + shared_redis().socket))
        self.addCleanup(self.pool.disconnect)
        await self.pool.ping()
        self.key = "fast-path-" + namespace()
        self.addCleanup(lambda: self.pool.delete(self.key))
        self.txredisapi = txredisapi

    async def test_replies_in_order(self) -> None:
        """
        Fast and plain commands interleaved, errors among them, each get
        their own reply; a pipeline (which holds the connection) goes the
        plain way.
        """
        sent = []
        for i in range(20):
            if i % 3 == 0:
                sent.append(self.pool.execute_command("INCR", self.key))
            elif i % 7 == 0:
                sent.append(send(self.pool, "HGET", self.key, "x"))
            else:
                sent.append(send(self.pool, "INCR", self.key))
        results = await defer.DeferredList(sent, consumeErrors=True)
        values = []
        for i, (ok, value) in enumerate(results):
            if i % 7 == 0 and i % 3 != 0:
                # HGET of a string key: WRONGTYPE, for that command only
                self.assertFalse(ok)
                self.assertTrue(value.check(self.txredisapi.ResponseError))
            else:
                self.assertTrue(ok, value)
                values.append(int(value))
        self.assertEqual(values, list(range(1, len(values) + 1)))
        pipe = await self.pool.pipeline()
        pipe.incr(self.key)
        during = send(self.pool, "INCR", self.key)
        pipe.incr(self.key)
        replies = await pipe.execute_pipeline()
        self.assertEqual([int(r) for r in replies], [len(values) + 1, len(values) + 2])
        self.assertEqual(int(await during), len(values) + 3)

    async def test_connection_lost(self) -> None:
        """
        Commands waiting for replies when the connection goes fail with
        txredisapi's ConnectionError (which the store reports as
        store_unavailable), fast and plain alike.
        """
        await send(self.pool, "SET", self.key, "1")
        conn = free_connection(self.pool)
        for name in CONNECTION_ATTRIBUTES:
            self.assertTrue(hasattr(conn, name), name)
        # the unix socket is read with recv (procession.net.internals)
        self.assertEqual(conn.transport.doRead.__func__, tcp.Connection.doRead)
        # BLPOP of an empty list: no reply until the connection goes
        waiting = [
            send(self.pool, "BLPOP", self.key + ":list", 0),
            send(self.pool, "GET", self.key),
            self.pool.execute_command("GET", self.key),
        ]
        conn.transport.abortConnection()
        results = await defer.DeferredList(waiting, consumeErrors=True)
        for ok, value in results:
            self.assertFalse(ok)
            self.assertTrue(value.check(self.txredisapi.ConnectionError), value)
