"""
Expiring jobs: C{expires_at} and C{expires_in} on a push.  The claim
script ends a job past its time as C{expired} instead of leasing it, so no
worker, TCP or HTTP, is ever given one.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from procession.core.errors import InvalidJob
from procession.core.job import parse_submission
from tests.client import ServerFixture
from tests.http import HTTP
from tests.support import FakeClock, connected_store, new_job


class ParseTests(SynchronousTestCase):
    def parse(self, **fields: Any) -> Any:
        fields.setdefault("type", "t")
        return parse_submission(fields, 1_000_000, 1 << 20)

    def test_fields(self) -> None:
        self.assertEqual(self.parse().expires_at, 0)
        self.assertEqual(self.parse(expires_in=1.5).expires_at, 1_001_500)
        self.assertEqual(
            self.parse(expires_at="2026-01-02T03:04:05.250Z").expires_at,
            1767323045250,
        )

    def test_refused(self) -> None:
        for fields, field in [
            ({"expires_in": 0}, "expires_in"),
            ({"expires_in": "5"}, "expires_in"),
            ({"expires_in": float("inf")}, "expires_in"),
            ({"expires_at": "tomorrow"}, "expires_at"),
            ({"expires_at": "2026-01-02T03:04:05"}, "expires_at"),
            ({"expires_at": 5}, "expires_at"),
            ({"expires_at": "2026-01-02T03:04:05Z", "expires_in": 5}, "expires_at"),
        ]:
            with self.assertRaises(InvalidJob) as caught:
                self.parse(**fields)
            self.assertEqual(caught.exception.details["field"], field, fields)


class StoreTests(TestCase):
    async def setUp(self) -> None:
        self.clock = FakeClock()
        self.store = await connected_store(self, self.clock)

    def job(self, **fields: Any) -> Any:
        return new_job(self.store.now_ms(), **fields)

    async def test_claim_skips_expired_jobs(self) -> None:
        await self.store.push(
            [
                self.job(id="old1", expires_in=5, priority=5),
                self.job(id="fresh", expires_in=60),
                self.job(id="old2", expires_in=5, unique_for=600),
                self.job(id="plain"),
            ]
        )
        self.clock.advance(10)
        claimed = await self.store.claim("default", [("w", "l1"), ("w", "l2")])
        # Two leases asked for, two expired jobs ahead of them: the claim
        # takes the next two instead.
        self.assertEqual([j.id for j in claimed], ["fresh", "plain"])
        for job_id in ("old1", "old2"):
            job = await self.store.get_job("default", job_id)
            self.assertEqual(
                (job["state"], job["finished_at"], job["attempt"]),
                ("expired", "2027-01-15T08:00:10.000Z", 0),
            )
        self.assertEqual(
            sorted(await self.store.state_members("default", "expired")),
            ["old1", "old2"],
        )
        summary = await self.store.summary("default")
        self.assertEqual((summary.expired, summary.sizes["queued"]), (2, 0))
        # The expired job's unique lock is free again.
        outcome = await self.store.push([self.job(id="new", unique_for=600)])
        self.assertIs(outcome[0], True)
        # Kept like completed jobs, then removed by retention.
        self.clock.advance(100)
        await self.store.sweep("default", 100, 50, 3600, 100)
        self.assertEqual(await self.store.state_members("default", "expired"), [])

    async def test_scheduled_job_expires_before_its_run(self) -> None:
        await self.store.push([self.job(id="late", delay=30, expires_in=20)])
        self.clock.advance(31)
        await self.store.sweep("default", 100, 3600, 3600, 100)
        self.assertEqual(await self.store.claim("default", [("w", "l")]), [])
        job = await self.store.get_job("default", "late")
        self.assertEqual(job["state"], "expired")

    async def test_not_expired_until_its_time(self) -> None:
        await self.store.push([self.job(id="a", expires_in=20)])
        self.clock.advance(19.999)
        [claimed] = await self.store.claim("default", [("w", "l")])
        self.assertEqual(claimed.id, "a")
        self.assertEqual(await self.store.ack("default", [("a", "l", "")]), ["ok"])


class DeliveryTests(TestCase):
    """
    Real servers: expired jobs never reach a TCP worker or an HTTP poller.
    """

    async def test_expired_jobs_reach_no_worker(self) -> None:
        a = await ServerFixture(self).start()
        b = await ServerFixture(self, ns=a.namespace).start()
        producer = await a.connect("producer")
        expiring = []
        for n in range(10):
            fields: dict[str, Any] = {"type": "t", "queue": "q", "id": f"x{n}"}
            if n % 2:
                fields["expires_in"] = 0.05
            else:
                fields["expires_at"] = "2020-01-01T00:00:00Z"
            await producer.ok("PUSH", fields)
            expiring.append(fields["id"])
        await deferLater(reactor, 0.1, lambda: None)
        # Behind them, jobs that do not expire: what the workers get.
        for n in range(4):
            await producer.ok(
                "PUSH", {"type": "t", "queue": "q", "id": f"ok{n}", "expires_in": 600}
            )

        delivered = []
        tcp = await b.connect("tcp-worker")
        await tcp.ok("READY", {"queues": ["q"], "credit": 2})
        held = [await tcp.next_job() for _ in range(2)]
        delivered += [job["id"] for job in held]
        http = HTTP(a.http_port)
        next_job = "/api/v1/jobs/next"
        params = {"queues": "q", "worker": "poller", "wait": "1"}
        while len(delivered) < 4:
            response = await http.get(next_job, params=params)
            self.assertEqual(response.code, 200, response)
            delivered.append(response.json["id"])
        self.assertEqual(sorted(delivered), ["ok0", "ok1", "ok2", "ok3"])
        # Nothing else is ever given out: the queue is empty.
        self.assertEqual((await http.get(next_job, params=params)).code, 204)
        for job in held:
            await tcp.ok("ACK", {"id": job["id"]})
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(len(tcp.jobs.pending), 0)
        for job_id in expiring:
            job = (await http.get(f"/api/v1/jobs/{job_id}")).json
            self.assertEqual((job["state"], job["attempt"]), ("expired", 0), job)
        stats = (await http.get("/api/v1/stats")).json
        self.assertEqual(stats["totals"]["expired"], 10)
