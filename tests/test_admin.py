"""
Tests for L{procession.service.admin}: the operator's side of the queue
service, against a store on the test Redis (the HTTP API's and the UI's
own tests drive it through their routes).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from procession.core.errors import (
    InvalidRequest,
    JobNotFound,
    QueueNotFound,
    WorkerNotFound,
)
from procession.service.admin import Admin, worker_counts
from procession.service.dispatcher import Dispatcher
from tests.support import connected_store, new_job


class Source:
    """
    A front end with one connected worker.
    """

    def __init__(self) -> None:
        self.quieted: list[str] = []

    def describe_workers(self) -> list[dict[str, Any]]:
        return [{"kind": "tcp", "name": "w#1", "jobs": []}]

    def quiet_workers(self, name: str) -> list[str]:
        if name in ("w", "w#1"):
            self.quieted.append(name)
            return ["w#1"]
        return []


class AdminTests(TestCase):
    async def setUp(self) -> None:
        self.store = await connected_store(self)
        self.admin = Admin(Dispatcher(self.store, reactor))

    async def test_queues_and_jobs(self) -> None:
        """
        Queues and jobs are found through the admin side; what is not
        there, or is not an action, is a clear error.
        """
        job = new_job(self.store.now_ms(), id="j1", queue="q")
        await self.store.push([job])
        self.assertEqual(await self.admin.known_queue("q"), "q")
        with self.assertRaises(QueueNotFound):
            await self.admin.known_queue("nope")
        self.assertEqual((await self.admin.get_job("j1"))["queue"], "q")
        with self.assertRaises(JobNotFound):
            await self.admin.get_job("no such id")
        with self.assertRaises(InvalidRequest):
            await self.admin.job_action("explode", "j1")
        with self.assertRaises(InvalidRequest):
            await self.admin.bulk("explode", "q", "queued")
        self.assertEqual(await self.admin.job_action("kill", "j1"), ("q", "queued"))
        self.assertEqual(await self.admin.bulk("retry", "q", "dead"), 1)
        self.assertEqual((await self.admin.get_job("j1", "q"))["state"], "queued")

    async def test_workers(self) -> None:
        """
        This server's workers come from the front ends registered with
        it; QUIET goes to the one that holds the connection.
        """
        self.assertEqual(self.admin.local_workers(), [])
        with self.assertRaises(WorkerNotFound):
            self.admin.quiet_worker("w")
        source = Source()
        self.admin.add_worker_source(source)
        self.assertEqual([w["name"] for w in self.admin.local_workers()], ["w#1"])
        self.assertEqual(self.admin.quiet_worker("w"), ["w#1"])
        self.assertEqual(source.quieted, ["w"])


class CountTests(SynchronousTestCase):
    def test_worker_counts(self) -> None:
        """
        TCP workers count by connection; an HTTP worker seen by several
        servers counts once.
        """
        workers = [
            {"kind": "tcp", "name": "a#1"},
            {"kind": "tcp", "name": "a#2"},
            {"kind": "http", "name": "h", "server": "s1"},
            {"kind": "http", "name": "h", "server": "s2"},
        ]
        self.assertEqual(worker_counts(workers), (2, 1))
