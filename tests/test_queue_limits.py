"""
Tests for queue limits (docs/limits.rst): L{procession.core.queue_limits}
(the JSON form and its checks) and the claim script's enforcement of them
against the real Redis (L{procession.store.jobs.Store}), on a settable
clock.  tests/test_limits_cluster.py drives them through several servers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from procession.core.errors import InvalidRequest
from procession.core.queue_limits import QueueLimits, Rate, parse_limits
from tests.client import ServerFixture
from tests.test_cli import CLITestCase
from tests.test_ui import UITestCase
from tests.http import HTTP
from tests.support import FakeClock, connected_store, new_job


class ParseLimitsTests(SynchronousTestCase):
    def test_valid(self) -> None:
        self.assertEqual(parse_limits({}), QueueLimits())
        self.assertEqual(
            parse_limits(
                {"concurrency": 5, "rate": {"limit": 10, "per": 0.5}, "per_key": True}
            ),
            QueueLimits(5, Rate(10, 0.5), True),
        )
        self.assertEqual(parse_limits({"rate": {"limit": 3}}).rate, Rate(3, 1.0))
        self.assertEqual(
            parse_limits({"concurrency": None, "rate": None}), QueueLimits()
        )

    def test_invalid(self) -> None:
        for body, field in [
            ([], None),
            ({"concurency": 1}, "concurency"),
            ({"concurrency": 0}, "concurrency"),
            ({"concurrency": 1.5}, "concurrency"),
            ({"concurrency": True}, "concurrency"),
            ({"concurrency": 10**7}, "concurrency"),
            ({"rate": 10}, "rate"),
            ({"rate": {"limit": 0}}, "rate.limit"),
            ({"rate": {"limit": 10**6}}, "rate.limit"),
            ({"rate": {"limit": 1, "per": 0}}, "rate.per"),
            ({"rate": {"limit": 1, "per": float("inf")}}, "rate.per"),
            ({"rate": {"limit": 1, "per": "1"}}, "rate.per"),
            ({"rate": {"limit": 1, "every": 1}}, "rate.every"),
            ({"per_key": 1}, "per_key"),
        ]:
            with self.assertRaises(InvalidRequest, msg=repr(body)) as caught:
                parse_limits(body)
            self.assertEqual(caught.exception.details["field"], field, body)


class StoreLimitTests(TestCase):
    async def setUp(self) -> None:
        self.clock = FakeClock()
        self.store = await connected_store(self, self.clock)
        self.leases = 0

    async def push(self, count: int, **fields: Any) -> None:
        await self.store.push(
            [new_job(self.store.now_ms(), **fields) for _ in range(count)]
        )

    async def claim(self, wanted: int, queue: str = "default") -> Any:
        slots = []
        for _ in range(wanted):
            self.leases += 1
            slots.append(("w", f"l{self.leases}@{queue}"))
        return await self.store.claim(queue, slots)

    async def test_concurrency(self) -> None:
        """
        A claim leases only up to the free slots; an ack, a fail or a
        release frees one; with no job left to wait for, nothing holds the
        claim back.
        """
        await self.store.set_limits("default", QueueLimits(concurrency=3))
        await self.push(10)
        first = await self.claim(5)
        self.assertEqual((len(first), first.wait), (3, 0))
        self.assertEqual((len(await self.claim(5)), (await self.claim(1)).wait), (0, 0))
        await self.store.ack("default", [(first[0].id, first[0].lease, "")])
        await self.store.fail("default", [(first[1].id, first[1].lease, "{}", 5, True)])
        await self.store.release("default", [(first[2].id, first[2].lease)], "gone")
        second = await self.claim(5)
        self.assertEqual(len(second), 3)
        status = await self.store.limit_status("default")
        self.assertEqual((status.running, status.throttled), (3, True))
        # Raising the limit lets more run at once.
        await self.store.set_limits("default", QueueLimits(concurrency=100))
        third = await self.claim(50)
        self.assertEqual((len(third), third.wait), (5, None))
        status = await self.store.limit_status("default")
        self.assertEqual((status.running, status.throttled), (8, False))

    async def test_rate(self) -> None:
        """
        At most N starts in any window of the rate's length: the claim that
        the window holds back says when it opens again.
        """
        await self.store.set_limits("default", QueueLimits(rate=Rate(4, 1.0)))
        await self.push(20)
        starts = []
        for step in range(40):
            claimed = await self.claim(3)
            starts += [self.store.now_ms()] * len(claimed)
            if claimed.wait:
                self.assertLessEqual(claimed.wait, 1.0)
            self.clock.advance(0.1)
        self.assertEqual(len(starts), 16)
        for i in range(len(starts) - 4):
            self.assertGreaterEqual(starts[i + 4] - starts[i], 1000)
        status = await self.store.limit_status("default")
        self.assertEqual(status.limits, QueueLimits(rate=Rate(4, 1.0)))

    async def test_rate_next_slot(self) -> None:
        await self.store.set_limits("default", QueueLimits(rate=Rate(2, 10.0)))
        await self.push(5)
        self.assertEqual(len(await self.claim(1)), 1)
        self.clock.advance(3)
        claimed = await self.claim(5)
        self.assertEqual((len(claimed), claimed.wait), (1, 7.0))
        status = await self.store.limit_status("default")
        self.assertEqual(status.next_slot, self.store.now_ms() + 7000)
        self.assertTrue(status.throttled)

    async def test_a_lowered_rate_waits_for_enough_starts_to_leave(self) -> None:
        await self.store.set_limits("default", QueueLimits(rate=Rate(3, 10.0)))
        await self.push(6)
        for _ in range(3):
            self.assertEqual(len(await self.claim(1)), 1)
            self.clock.advance(1)
        await self.store.set_limits("default", QueueLimits(rate=Rate(2, 10.0)))
        self.clock.advance(2)
        held = await self.claim(1)
        # Starts at 0, 1 and 2 s; two must leave: at 11 s, 6 s from now.
        self.assertEqual((len(held), held.wait), (0, 6.0))

    async def test_paused_stays_paused(self) -> None:
        await self.store.set_limits("default", QueueLimits(concurrency=2))
        await self.push(3)
        await self.store.set_paused("default", True)
        self.assertEqual(len(await self.claim(3)), 0)
        await self.store.set_paused("default", False)
        self.assertEqual(len(await self.claim(3)), 2)

    async def test_priority_order_within_limits(self) -> None:
        await self.store.set_limits("default", QueueLimits(concurrency=2))
        await self.store.push(
            [
                new_job(self.store.now_ms(), id="low", priority=-1),
                new_job(self.store.now_ms(), id="a"),
                new_job(self.store.now_ms(), id="high", priority=3),
                new_job(self.store.now_ms(), id="b"),
            ]
        )
        first = await self.claim(4)
        self.assertEqual([j.id for j in first], ["high", "a"])
        await self.store.ack("default", [(j.id, j.lease, "") for j in first])
        self.assertEqual([j.id for j in await self.claim(4)], ["b", "low"])


class FreedSlotWakeTests(TestCase):
    """
    Every way a running job leaves a queue held back by its concurrency
    limit (ack, fail, release, delete, kill, cancel, lease expiry in the
    sweep, the loss of the server that held it) publishes the queue's wake-up at once,
    heard here as every server hears it: no server has to poll.
    """

    async def setUp(self) -> None:
        from procession.redis.address import RedisAddress
        from procession.redis.wake import WakeListener
        from tests.redis import shared_redis

        self.clock = FakeClock()
        self.store = await connected_store(self, self.clock)
        self.heard: list[str] = []
        connected: defer.Deferred[None] = defer.Deferred()
        listener = WakeListener(
            RedisAddress.from_url(shared_redis().url),
            self.store.channel,
            self.heard.append,
            lambda: connected.called or connected.callback(None),
        )
        listener.start()
        self.addCleanup(listener.stop)
        await connected

    async def claim(self, held: bool = False) -> Any:
        self.leases = getattr(self, "leases", 0) + 1
        return await self.store.claim(
            "default", [("w", f"l{self.leases}@default")], held=held
        )

    async def hears(self, count: int) -> None:
        for _ in range(200):
            if len(self.heard) >= count:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(self.heard[:count], ["default"] * count)

    async def test_every_way_out_of_running_wakes(self) -> None:
        await self.store.set_limits("default", QueueLimits(concurrency=1))
        await self.hears(1)  # setting limits wakes the consumers too
        await self.store.push(
            [new_job(self.store.now_ms(), timeout=5) for _ in range(10)]
        )
        heard = len(self.heard)
        ways = [
            lambda job: self.store.ack("default", [(job.id, job.lease, "")]),
            lambda job: self.store.fail(
                "default", [(job.id, job.lease, "{}", 60, True)]
            ),
            lambda job: self.store.release("default", [(job.id, job.lease)], "gone"),
            lambda job: self.store.delete("default", job.id),
            lambda job: self.store.kill("default", job.id),
            lambda job: self.store.cancel("default", job.id),
        ]
        for way in ways:
            [job] = await self.claim()
            self.assertEqual(len(await self.claim()), 0)
            await way(job)
            heard += 1
            await self.hears(heard)
        # A lease that expires, taken back by the sweep.
        [job] = await self.claim()
        self.clock.advance(6)
        await self.store.sweep("default", 100, 3600, 3600, 100)
        heard += 1
        await self.hears(heard)
        # The jobs of a server that is lost.
        [job] = await self.claim(held=True)
        self.assertEqual(len(await self.claim()), 0)
        await self.store.server_lost("default", self.store.server_id, "lost")
        heard += 1
        await self.hears(heard)
        # Given back in its place, it runs again: the slot is free.
        [again] = await self.claim()
        self.assertEqual(again.id, job.id)


class PerKeyStoreTests(TestCase):
    """
    per_key limits in the claim script: each limit key within its own
    limits, keys served in turn, nothing left behind by idle keys.
    """

    async def setUp(self) -> None:
        self.clock = FakeClock()
        self.store = await connected_store(self, self.clock)
        self.leases = 0

    async def push(self, keys: list[str | None]) -> list[str]:
        jobs = []
        for i, key in enumerate(keys):
            fields: dict[str, Any] = {"id": f"{key}-{i}"}
            if key is not None:
                fields["limit_key"] = key
            jobs.append(new_job(self.store.now_ms(), **fields))
        await self.store.push(jobs)
        return [j.id for j in jobs]

    async def claim(self, wanted: int) -> Any:
        slots = []
        for _ in range(wanted):
            self.leases += 1
            slots.append(("w", f"l{self.leases}@default"))
        return await self.store.claim("default", slots)

    async def redis(self, *args: Any) -> Any:
        return await self.store.command(*args)

    async def test_round_robin_within_each_keys_concurrency(self) -> None:
        await self.store.set_limits("default", QueueLimits(concurrency=2, per_key=True))
        await self.push(["a"] * 4 + ["b"] * 2 + ["c"] + [None])
        first = await self.claim(10)
        self.assertEqual(
            [j.id for j in first], ["a-0", "b-4", "c-6", "None-7", "a-1", "b-5"]
        )
        self.assertEqual(first.wait, 0)
        self.assertEqual(len(await self.claim(5)), 0)
        # Finishing one of a's frees a slot of a's only.
        await self.store.ack("default", [(first[0].id, first[0].lease, "")])
        again = await self.claim(5)
        self.assertEqual([j.id for j in again], ["a-2"])
        status = await self.store.limit_status("default")
        self.assertEqual((status.keys, status.running, status.throttled), (1, 6, True))
        # A job's JOB frame and record carry its key.
        self.assertIn('"limit_key":"a"', again[0].payload)
        job = await self.store.get_job("default", "a-2")
        self.assertEqual(job["limit_key"], "a")

    async def test_rate_per_key(self) -> None:
        await self.store.set_limits(
            "default", QueueLimits(rate=Rate(1, 1.0), per_key=True)
        )
        await self.push(["a", "a", "b", "b"])
        first = await self.claim(4)
        self.assertEqual([j.id for j in first], ["a-0", "b-2"])
        held = await self.claim(4)
        self.assertEqual((len(held), held.wait), (0, 1.0))
        status = await self.store.limit_status("default")
        self.assertEqual(status.keys_waiting, 2)
        self.clock.advance(1.0)
        self.assertEqual([j.id for j in await self.claim(4)], ["a-1", "b-3"])

    async def test_a_keys_window_opens_with_its_oldest_start(self) -> None:
        """
        A key held back by its rate by a claim that also started one of its
        jobs is served again when its window's oldest start leaves it, not
        a whole window after that claim.
        """
        await self.store.set_limits(
            "default", QueueLimits(rate=Rate(2, 10.0), per_key=True)
        )
        await self.push(["a", "a", "a", "a"])
        self.assertEqual(len(await self.claim(1)), 1)
        self.clock.advance(3)
        second = await self.claim(3)
        self.assertEqual((len(second), second.wait), (1, 7.0))
        self.clock.advance(7.5)
        self.assertEqual(len(await self.claim(3)), 1)

    async def test_a_keys_window_never_counts_time_back(self) -> None:
        """
        A claim that reaches Redis after another that read a later clock
        (two servers) counts its start no earlier than the key's newest
        one, so the key's starts stay in order and its window exact.
        """
        await self.store.set_limits(
            "default", QueueLimits(rate=Rate(2, 1.0), per_key=True)
        )
        await self.push(["a"] * 4)
        self.assertEqual(len(await self.claim(1)), 1)
        self.clock.advance(-0.9)  # a server whose clock is behind
        self.assertEqual(len(await self.claim(1)), 1)
        self.clock.advance(1.4)  # 0.5 s after the first start
        held = await self.claim(1)
        self.assertEqual((len(held), held.wait), (0, 0.5))
        window = await self.redis(
            "ZRANGE", self.store.keys.prefix("default") + "kwin:a", 0, -1, "WITHSCORES"
        )
        self.assertEqual(window[1], window[3])

    async def test_a_job_released_from_another_queue_joins_its_key(self) -> None:
        """
        A job that waited for a job of another queue (docs/workflows.rst)
        is queued by the script that finished its parent, on the parent's
        queue: it is indexed under its key by its own queue's limits.
        """
        await self.store.set_limits("limited", QueueLimits(concurrency=1, per_key=True))
        now = self.store.now_ms()
        await self.store.push([new_job(now, id="parent")])
        await self.store.push(
            [new_job(now, id="child", queue="limited", limit_key="t", after=["parent"])]
        )
        [parent] = await self.claim(1)
        await self.store.ack("default", [(parent.id, parent.lease, "")])
        claimed = await self.store.claim("limited", [("w", "lc@limited")])
        self.assertEqual([j.id for j in claimed], ["child"])

    async def test_idle_keys_leave_nothing_behind(self) -> None:
        """
        Keys whose jobs have all run leave the rotation: a claim never
        looks at them, and their running sets go with their last job.
        """
        await self.store.set_limits("default", QueueLimits(concurrency=1, per_key=True))
        await self.push([f"k{i}" for i in range(300)])
        claimed = await self.claim(1000)
        self.assertEqual(len(claimed), 300)
        self.assertIsNone(claimed.wait)
        await self.store.ack("default", [(j.id, j.lease, "") for j in claimed])
        keys = self.store.keys.prefix("default")
        self.assertEqual(int(await self.redis("HLEN", keys + "lkeys")), 0)
        self.assertEqual(int(await self.redis("LLEN", keys + "lready")), 0)
        left = await self.redis("SCAN", 0, "MATCH", keys + "kq:*", "COUNT", 10000)
        self.assertEqual(left[1], [])
        left = await self.redis("SCAN", 0, "MATCH", keys + "krun:*", "COUNT", 10000)
        self.assertEqual(left[1], [])

    async def test_switching_per_key_indexes_the_queued_jobs(self) -> None:
        await self.push(["a", "a", "a", "b"])
        await self.store.set_limits("default", QueueLimits(concurrency=1, per_key=True))
        self.assertEqual([j.id for j in await self.claim(4)], ["a-0", "b-3"])
        # Off again: the queue-wide limit counts every running job.
        await self.store.set_limits("default", QueueLimits(concurrency=3))
        self.assertEqual([j.id for j in await self.claim(4)], ["a-1"])

    async def test_purged_jobs_are_skipped(self) -> None:
        await self.store.set_limits("default", QueueLimits(per_key=True))
        await self.push(["a", "a", "b"])
        await self.store.purge("default", "queued")
        await self.push(["c"])
        self.assertEqual([j.id for j in await self.claim(4)], ["c-0"])

    async def test_given_back_jobs_keep_their_key(self) -> None:
        await self.store.set_limits("default", QueueLimits(concurrency=1, per_key=True))
        await self.push(["a", "a"])
        [job] = await self.claim(2)
        await self.store.release("default", [(job.id, job.lease)], "gone")
        [again] = await self.claim(2)
        self.assertEqual(again.id, "a-0")


class HTTPLimitTests(TestCase):
    """
    C{GET} and C{PUT /api/v1/queues/{name}/limits} over a real socket.
    """

    async def test_put_and_get(self) -> None:
        server = await ServerFixture(self).start()
        http = HTTP(server.http_port)
        empty = await http.get("/api/v1/queues/reports/limits")
        self.assertEqual(empty.code, 200, empty)
        self.assertEqual(
            {k: empty.json[k] for k in ("queue", "concurrency", "rate", "per_key")},
            {"queue": "reports", "concurrency": None, "rate": None, "per_key": False},
        )
        body = {"concurrency": 5, "rate": {"limit": 10, "per": 2.5}}
        put = await http.request("PUT", "/api/v1/queues/reports/limits", body=body)
        self.assertEqual(put.code, 200, put)
        got = (await http.get("/api/v1/queues/reports/limits")).json
        self.assertEqual(
            (got["concurrency"], got["rate"], got["status"]["running"]),
            (5, {"limit": 10, "per": 2.5}, 0),
        )
        self.assertFalse(got["status"]["throttled"])
        # What a PUT leaves out is not limited.
        put = await http.request(
            "PUT", "/api/v1/queues/reports/limits", body={"rate": {"limit": 3}}
        )
        self.assertEqual(
            (put.json["concurrency"], put.json["rate"]),
            (None, {"limit": 3, "per": 1.0}),
        )

    async def test_metrics_and_status_while_held_back(self) -> None:
        """
        A worker with room for two on a queue limited to one running job
        gets one: the status and /metrics say the queue is held back, and
        count the time.
        """
        server = await ServerFixture(self).start()
        await server.service.admin.set_limits("one", QueueLimits(concurrency=1))
        dispatcher = server.service.dispatcher
        await dispatcher.push(
            [new_job(dispatcher.now_ms(), queue="one") for _ in range(2)]
        )
        worker = await server.connect("w")
        await worker.ok("READY", {"queues": ["one"], "credit": 2})
        job = await worker.next_job()
        http = HTTP(server.http_port)
        status = (await http.get("/api/v1/queues/one/limits")).json["status"]
        self.assertEqual((status["running"], status["throttled"]), (1, True))
        self.assertIsNotNone(status["throttled_since"])
        await deferLater(reactor, 0.05, lambda: None)
        text = (await http.get("/metrics")).content.decode()
        samples = dict(
            line.rsplit(" ", 1)
            for line in text.splitlines()
            if line and not line.startswith("#")
        )
        self.assertEqual(float(samples['procession_queue_throttled{queue="one"}']), 1)
        self.assertEqual(
            float(samples['procession_queue_limit_concurrency{queue="one"}']), 1
        )
        self.assertGreater(
            float(samples['procession_queue_throttled_seconds_total{queue="one"}']), 0
        )
        # The ack frees the slot and the second job comes at once.
        await worker.ok("ACK", {"id": job["id"]})
        second = await worker.next_job()
        self.assertNotEqual(second["id"], job["id"])

    async def test_the_documented_answers(self) -> None:
        """
        The answers docs/limits.rst and docs/http-api.rst show are the
        server's, byte for byte where nothing varies (the held-back
        example's times and counts do: its shape is checked).
        """
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

        def answers(name: str, start: str) -> list[Any]:
            with open(os.path.join(root, "docs", name), encoding="utf-8") as f:
                lines = [line.strip() for line in f]
            return [json.loads(line) for line in lines if line.startswith(start)]

        def keys(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: keys(v) for k, v in value.items()}
            return None

        server = await ServerFixture(self).start()
        http = HTTP(server.http_port)
        put, held = answers("limits.rst", '{"queue":"partner"')
        response = await http.request(
            "PUT",
            "/api/v1/queues/partner/limits",
            body={"concurrency": 4, "rate": {"limit": 10, "per": 1}},
        )
        self.assertEqual(response.json, put)
        self.assertEqual(keys(response.json), keys(held))
        put, refused = answers("http-api.rst", '{"queue":"reports"') + answers(
            "http-api.rst", '{"error":{"code":"invalid_request","message":"concurrency'
        )
        response = await http.request(
            "PUT",
            "/api/v1/queues/reports/limits",
            body={"concurrency": 5, "rate": {"limit": 50, "per": 1}},
        )
        self.assertEqual(response.json, put)
        response = await http.request(
            "PUT", "/api/v1/queues/reports/limits", body={"concurrency": 0}
        )
        self.assertEqual((response.code, response.json), (400, refused))

    async def test_limits_survive_a_restart(self) -> None:
        """
        Limits live in Redis: a server started after the one that set
        them (on the same namespace) enforces them.
        """
        first = await ServerFixture(self).start()
        await HTTP(first.http_port).request(
            "PUT", "/api/v1/queues/kept/limits", body={"concurrency": 1}
        )
        await first.stop()
        second = await ServerFixture(self, ns=first.namespace).start()
        got = (await HTTP(second.http_port).get("/api/v1/queues/kept/limits")).json
        self.assertEqual(got["concurrency"], 1)
        dispatcher = second.service.dispatcher
        await dispatcher.push(
            [new_job(dispatcher.now_ms(), queue="kept") for _ in range(2)]
        )
        worker = await second.connect("w")
        await worker.ok("READY", {"queues": ["kept"], "credit": 2})
        await worker.next_job()
        status = (await HTTP(second.http_port).get("/api/v1/queues/kept/limits")).json
        self.assertEqual(
            (status["status"]["running"], status["status"]["throttled"]), (1, True)
        )

    async def test_bad_requests(self) -> None:
        server = await ServerFixture(self).start()
        http = HTTP(server.http_port)
        for path, raw, code, error in [
            ("/api/v1/queues/q/limits", b'{"concurrency": -1}', 400, "invalid_request"),
            ("/api/v1/queues/q/limits", b'{"rate": {"limit": 1, "per": 0}}', 400,
             "invalid_request"),
            ("/api/v1/queues/q/limits", b"[1]", 400, "invalid_request"),
            ("/api/v1/queues/q/limits", b"{nope", 400, "malformed_json"),
            ("/api/v1/queues/b%20d/limits", b"{}", 400, "invalid_request"),
        ]:  # fmt: skip
            response = await http.client.request(
                "PUT",
                http.base + path,
                data=raw,
                headers={b"Content-Type": [b"application/json"]},
            )
            content = await treq.json_content(response)
            self.assertEqual(
                (response.code, content["error"]["code"]), (code, error), raw
            )

    async def test_per_key_switch_refused_over_the_reindex_limit(self) -> None:
        """
        Switching per_key indexes the queued jobs: refused with 409 while
        too many are queued, changing nothing.
        """
        from procession.core import queue_limits

        server = await ServerFixture(self).start()
        self.patch(queue_limits, "MAX_REINDEX", 2)
        from procession.store import jobs

        self.patch(jobs, "MAX_REINDEX", 2)
        dispatcher = server.service.dispatcher
        await dispatcher.push([new_job(dispatcher.now_ms()) for _ in range(3)])
        http = HTTP(server.http_port)
        response = await http.request(
            "PUT", "/api/v1/queues/default/limits", body={"per_key": True}
        )
        self.assertEqual((response.code, response.json["error"]["code"]),
                         (409, "illegal_state"))  # fmt: skip
        got = (await http.get("/api/v1/queues/default/limits")).json
        self.assertFalse(got["per_key"])


class RateTimerTests(SynchronousTestCase):
    """
    The dispatcher's side of a rate limit, on a fake store and a
    L{task.Clock}: a claim held back by the rate sets one timer per
    queue, which claims again when it fires, while the consumers take work
    from their other queues meanwhile.
    """

    def test_one_timer_per_queue(self) -> None:
        from procession.core.job import ClaimedJobs
        from procession.service.dispatcher import Dispatcher
        from tests.test_dispatch import Consumer, FakeStore

        clock = Clock()
        store = FakeStore()
        dispatcher = Dispatcher(store, clock)  # type: ignore[arg-type]
        first = Consumer("a", ["limited", "other"], 1, True)
        dispatcher.add_consumer(first)
        clock.advance(0)
        self.assertEqual(store.claims, [("limited", 1, True)])
        held = ClaimedJobs()
        held.wait = 0.4
        store.claim_results[0].callback(held)
        clock.advance(0)
        # The consumer went on to its other queue.
        self.assertEqual(store.claims[-1], ("other", 1, True))
        store.claim_results[-1].callback(ClaimedJobs())
        clock.advance(0)
        # A consumer that waits on the held queue alone claims nothing:
        # the timer serves it.
        dispatcher.add_consumer(Consumer("b", ["limited"], 1, True))
        clock.advance(0)
        count = len(store.claims)
        clock.advance(0.39)
        self.assertEqual(len(store.claims), count)
        clock.advance(0.02)
        self.assertEqual(store.claims[-1], ("limited", 2, True))
        self.assertEqual(len(store.claims), count + 1)
        # Held back again, then woken by a push and held back with an
        # earlier slot: still one timer, the earlier one.
        later = ClaimedJobs()
        later.wait = 0.9
        store.claim_results[-1].callback(later)
        dispatcher.wake("limited")
        clock.advance(0)
        sooner = ClaimedJobs()
        sooner.wait = 0.5
        store.claim_results[-1].callback(sooner)
        clock.advance(0)
        timers = [c for c in clock.getDelayedCalls() if c.active()]
        self.assertEqual(len(timers), 1)
        self.assertAlmostEqual(timers[0].getTime(), clock.seconds() + 0.5)
        dispatcher.quiet()
        self.assertEqual([c for c in clock.getDelayedCalls() if c.active()], [])


class ClusterLimitTests(TestCase):
    """
    Limits hold across several servers on one Redis, driven over real
    sockets as workers drive them.
    """

    async def test_concurrency_across_four_servers(self) -> None:
        """
        Concurrency 5 on a queue, 4 servers with 30 TCP workers each: the
        number running, sampled from Redis under load, never exceeds 5, and
        reaches it: while jobs wait, most samples show all 5 slots in use
        (a finished job wakes the waiting workers of every server at once,
        through pub/sub; a job takes 50 ms, the time to fill its slot
        again a few).  Every job completes once.
        """
        servers = [await ServerFixture(self).start()]
        for _ in range(3):
            servers.append(await ServerFixture(self, ns=servers[0].namespace).start())
        store = servers[0].store
        queue = "limited"
        status = await servers[0].service.admin.set_limits(
            queue, QueueLimits(concurrency=5)
        )
        self.assertEqual(status.limits.concurrency, 5)
        total = 200
        done: list[str] = []
        stopped: list[bool] = []

        async def finish(running: Any) -> None:
            stopped.append(True)
            await running

        async def work(client: Any) -> None:
            await client.ok("READY", {"queues": [queue], "credit": 1})
            while len(done) < total and not stopped:
                try:
                    job = await client.next_job(timeout=0.5)
                except defer.TimeoutError:
                    continue
                await deferLater(reactor, 0.05, lambda: None)
                await client.ok("ACK", {"id": job["id"]})
                done.append(job["id"])

        workers = []
        for server in servers:
            for i in range(30):
                workers.append(await server.connect(f"w{i}"))
        running = defer.gatherResults([defer.ensureDeferred(work(w)) for w in workers])
        self.addCleanup(finish, running)
        dispatcher = servers[1].service.dispatcher
        await dispatcher.push(
            [new_job(dispatcher.now_ms(), queue=queue) for _ in range(total)]
        )
        prefix = store.keys.prefix(queue)
        samples = []
        while len(done) < total:
            in_use, waiting = await defer.gatherResults(
                [
                    store.command("ZCARD", prefix + "running"),
                    store.command("ZCARD", prefix + "queued"),
                ]
            )
            samples.append((int(in_use), int(waiting)))
            await deferLater(reactor, 0.005, lambda: None)
        await running
        self.assertEqual(sorted(done), sorted(set(done)))
        self.assertEqual(len(done), total)
        self.assertLessEqual(max(n for n, _ in samples), 5)
        loaded = [n for n, waiting in samples if waiting > 0]
        self.assertGreater(len(loaded), 20)
        self.assertGreaterEqual(loaded.count(5) / len(loaded), 0.6, samples)

    async def test_rate_with_tcp_and_http_workers(self) -> None:
        """
        Rate 50 a second for 10 s, on two servers, with TCP workers on one
        and HTTP long-polls on the other: between 490 and 510 jobs start
        in the 10 s from the first start, and none early (any 51 starts in
        a row span at least the window, by the servers' recorded start
        times).  Meanwhile the TCP workers' other queue keeps flowing: its
        jobs all finish while the limited queue still has a backlog.
        """
        a = await ServerFixture(self).start()
        b = await ServerFixture(self, ns=a.namespace).start()
        queue = "partner"
        await a.service.admin.set_limits(queue, QueueLimits(rate=Rate(50, 1.0)))
        stopped: list[bool] = []
        taken: list[tuple[str, str]] = []

        async def tcp_worker(client: Any) -> None:
            await client.ok("READY", {"queues": [queue, "free"], "credit": 2})
            while not stopped:
                try:
                    job = await client.next_job(timeout=0.5)
                except defer.TimeoutError:
                    continue
                await client.ok("ACK", {"id": job["id"]})
                taken.append((job["queue"], "tcp"))

        http = HTTP(b.http_port)

        async def http_worker(name: str) -> None:
            while not stopped:
                response = await http.get(
                    "/api/v1/jobs/next",
                    params={"queues": queue, "wait": "0.5", "worker": name},
                )
                if response.code == 204:
                    continue
                self.assertEqual(response.code, 200, response)
                job = response.json
                acked = await http.post(
                    f"/api/v1/jobs/{job['id']}/ack", body={"lease": job["lease"]}
                )
                self.assertEqual(acked.code, 200, acked)
                taken.append((job["queue"], "http"))

        workers = [tcp_worker(await a.connect(f"t{i}")) for i in range(3)]
        workers += [http_worker(f"h{i}") for i in range(3)]
        running = defer.gatherResults([defer.ensureDeferred(w) for w in workers])

        async def finish() -> None:
            stopped.append(True)
            await running

        self.addCleanup(finish)
        jobs = [new_job(a.service.admin.now_ms(), queue=queue) for _ in range(650)]
        await a.service.dispatcher.push(jobs)
        await deferLater(reactor, 2, lambda: None)
        free = [new_job(b.service.admin.now_ms(), queue="free") for _ in range(100)]
        await b.service.dispatcher.push(free)
        while sum(1 for q, _ in taken if q == "free") < len(free):
            await deferLater(reactor, 0.05, lambda: None)
        backlog = await a.store.command(
            "ZCARD", a.store.keys.state_set(queue, "queued")
        )
        self.assertGreater(int(backlog), 0)
        await deferLater(reactor, 9.5, lambda: None)
        await finish()

        starts = []
        for job in jobs:
            at = await a.store.command(
                "HGET", a.store.keys.job(queue, job.id), "started_at"
            )
            if at is not None:
                starts.append(int(at))
        starts.sort()
        first = starts[0]
        in_ten = [s for s in starts if s < first + 10_000]
        self.assertTrue(490 <= len(in_ten) <= 510, len(in_ten))
        for i in range(len(starts) - 50):
            self.assertGreaterEqual(starts[i + 50] - starts[i], 1000, i)
        kinds = {kind for q, kind in taken if q == queue}
        self.assertEqual(kinds, {"tcp", "http"})

    async def test_small_keys_are_not_starved(self) -> None:
        """
        One limit key with 10,000 queued jobs and 20 keys with 10 each,
        pushed after them, on a per_key queue (2 running per key) served
        by TCP workers: keys take turns, so the 200 jobs of the small keys
        all finish within the first tenth of the completions.
        """
        server = await ServerFixture(self).start()
        queue = "tenants"
        await server.service.admin.set_limits(
            queue, QueueLimits(concurrency=2, per_key=True)
        )
        dispatcher = server.service.dispatcher
        now = dispatcher.now_ms()
        for start in range(0, 10_000, 2_000):
            await dispatcher.push(
                [
                    new_job(now, queue=queue, limit_key="big", id=f"big-{i}")
                    for i in range(start, start + 2_000)
                ]
            )
        small = [
            new_job(now, queue=queue, limit_key=f"small-{k}", id=f"small-{k}-{i}")
            for k in range(20)
            for i in range(10)
        ]
        await dispatcher.push(small)
        finished: list[str] = []
        stopped: list[bool] = []

        async def work(client: Any) -> None:
            await client.ok("READY", {"queues": [queue], "credit": 4})
            while not stopped:
                try:
                    job = await client.next_job(timeout=0.5)
                except defer.TimeoutError:
                    continue
                await client.ok("ACK", {"id": job["id"]})
                finished.append(job["id"])

        workers = [work(await server.connect(f"w{i}")) for i in range(10)]
        running = defer.gatherResults([defer.ensureDeferred(w) for w in workers])

        async def finish() -> None:
            stopped.append(True)
            await running

        self.addCleanup(finish)
        wanted = {job.id for job in small}
        while not wanted <= set(finished):
            await deferLater(reactor, 0.02, lambda: None)
        await finish()
        last = max(finished.index(i) for i in wanted)
        self.assertLess(last, 10_200 // 10, last)
        self.assertEqual(len(finished), len(set(finished)))


class CLILimitTests(CLITestCase):
    """
    C{procession limits}, run as a child process against a live server.
    """

    async def test_show_set_and_lift(self) -> None:
        shown = await self.ok("limits", "partner")
        self.assertIn("concurrency        -", shown.out)
        set_ = await self.ok(
            "limits", "partner", "--concurrency", "4", "--rate", "100/60", "--json"
        )
        answer = json.loads(set_.out)
        self.assertEqual(
            (answer["concurrency"], answer["rate"], answer["per_key"]),
            (4, {"limit": 100, "per": 60.0}, False),
        )
        shown = await self.ok("limits", "partner")
        self.assertIn("rate               100 per 1m00s", shown.out)
        await self.ok("limits", "partner", "--per-key", "--rate", "5")
        shown = await self.ok("limits", "partner", "--json")
        self.assertEqual(
            {k: json.loads(shown.out)[k] for k in ("concurrency", "rate", "per_key")},
            {"concurrency": None, "rate": {"limit": 5, "per": 1.0}, "per_key": True},
        )
        lifted = json.loads(
            (await self.ok("limits", "partner", "--none", "--json")).out
        )
        self.assertEqual((lifted["rate"], lifted["per_key"]), (None, False))

    async def test_bad_options(self) -> None:
        refused = await self.fails(1, "limits", "partner", "--concurrency", "0")
        self.assertIn("concurrency", refused.err)
        await self.fails(2, "limits", "partner", "--rate", "ten")
        await self.fails(2, "limits", "partner", "--none", "--rate", "1")


class UILimitTests(UITestCase):
    """
    The UI's queue page shows the queue's limits and how they stand.
    """

    async def test_queue_page(self) -> None:
        await self.push({"type": "t"})
        page = await self.browser.get("/queues/default")
        self.assertPage(page)
        self.assertIn('id="limits-none"', page.text)
        await self.server.service.admin.set_limits(
            "default", QueueLimits(concurrency=1, rate=Rate(10, 60.0))
        )
        await self.push({"type": "t"}, {"type": "t"})
        worker = await self.worker(credit=3)
        await worker.next_job()
        page = await self.browser.get("/queues/default")
        self.assertPage(page)
        self.assertIn('<dd id="limit-concurrency">1 running of 1</dd>', page.text)
        self.assertIn("at most 10 started per 1 min", page.text)
        self.assertIn("1 in the current window", page.text)
        self.assertRegex(page.text, r'<dd id="limit-throttled">yes, since <time')
        self.assertIn("when a running job finishes", page.text)


class BenchLimitsTests(SynchronousTestCase):
    """
    A smoke run of C{python -m bench.limits} with small sizes: its JSON's
    shape, never its timings.
    """

    def test_small_run(self) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        process = subprocess.run(
            [sys.executable, "-m", "bench.limits", "--jobs", "500", "--keys", "200"]
            + ["--calls", "5", "--rounds", "1"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.assertEqual(process.returncode, 0, process.stderr)
        report = json.loads(process.stdout)
        figures = report["figures"]
        for case in ("off", "on", "keys", "cycle.few", "cycle.crowd"):
            self.assertGreater(figures[case], 0, case)
        self.assertEqual(figures["crowd_keys_held_back"], 200)
