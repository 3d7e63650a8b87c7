"""
The examples in examples/ run against a live server.
"""

from __future__ import annotations

import os
import shutil

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.client import ServerFixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = shutil.which("node")


class NodeExampleTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        if NODE is None:
            raise SkipTest("node is not installed")
        self.server = await ServerFixture(self).start()
        self.env = dict(os.environ, PROCESSION_PORT=str(self.server.tcp_port))

    def node(self, script: str, *args: str, **env: str):
        return getProcessOutputAndValue(
            NODE,
            [os.path.join(ROOT, "examples", "node", script), *args],
            env=dict(self.env, **env),
            reactor=reactor,
        )

    async def test_push_then_work(self) -> None:
        out, err, code = await self.node("push.js", "add", "[1,2,3]", "--count", "4")
        self.assertEqual(code, 0, err)
        ids = out.decode().split()
        self.assertEqual(len(ids), 4)
        out, err, code = await self.node("push.js", "fail", "--queue", "default")
        self.assertEqual(code, 0, err)
        failing = out.decode().strip()

        out, err, code = await self.node("worker.js", "--concurrency", "2", MAX_JOBS="5")
        self.assertEqual(code, 0, err)
        for job_id in ids:
            job = await self.server.store.get_job("default", job_id)
            self.assertEqual((job["state"], job["result"]), ("completed", 6))
        job = await self.server.store.get_job("default", failing)
        self.assertEqual(job["state"], "retrying")
        self.assertEqual(job["errors"][0]["message"], "this job always fails")
        self.assertEqual(job["errors"][0]["type"], "Error")
