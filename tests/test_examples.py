"""
The examples in examples/ run against a live server.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.client import ServerFixture
from tests.http import HTTP
from tests.waiting import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = shutil.which("node")


class Child(ProcessProtocol):
    """
    A child process whose output is kept, and that can be killed and waited
    for.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[Any] = defer.Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.running = False
        self.ended.callback(reason.value)

    async def kill(self) -> None:
        if self.running:
            self.transport.signalProcess("KILL")
        await self.ended


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

        out, err, code = await self.node(
            "worker.js", "--concurrency", "2", MAX_JOBS="5"
        )
        self.assertEqual(code, 0, err)
        for job_id in ids:
            job = await self.server.store.get_job("default", job_id)
            self.assertEqual((job["state"], job["result"]), ("completed", 6))
        job = await self.server.store.get_job("default", failing)
        self.assertEqual(job["state"], "retrying")
        self.assertEqual(job["errors"][0]["message"], "this job always fails")
        self.assertEqual(job["errors"][0]["type"], "Error")

    def spawn(self, executable: str, args: list[str], env: dict[str, str]) -> Child:
        """
        Start a child process in the repository, killed when the test ends.
        """
        child = Child()
        reactor.spawnProcess(child, executable, [executable, *args], env=env, path=ROOT)
        self.addCleanup(child.kill)
        return child

    async def test_node_and_python_workers_share_a_queue(self) -> None:
        """
        A Node.js worker and a Python worker take jobs from the same queue at
        the same time, and every job runs exactly once, on one of them.
        """
        env = {k: v for k, v in self.env.items() if not k.startswith("PROCESSION_")}
        env["PROCESSION_PORT"] = str(self.server.tcp_port)
        record = os.path.abspath(self.mktemp() + "-record.txt")
        node = self.spawn(
            NODE,
            [os.path.join(ROOT, "examples", "node", "worker.js"), "--concurrency", "4"],
            env,
        )
        python = self.spawn(
            sys.executable,
            [
                "-m",
                "procession.client.worker",
                "tests.worker_jobs",
                "--concurrency",
                "4",
                "--name",
                "python-worker",
            ],
            dict(env, PROCESSION_TEST_RECORD=record),
        )

        def outputs() -> str:
            return f"node:\n{node.output.decode()[-2000:]}\npython:\n{python.output.decode()[-2000:]}"

        # Both ready before the first push, so that both are offered work.
        http = HTTP(self.server.http_port)

        async def both_ready() -> bool:
            workers = (await http.get("/api/v1/workers")).json["workers"]
            names = [
                w["name"] for w in workers if w["kind"] == "tcp" and w["credit"] > 0
            ]
            return any(n.startswith("node-") for n in names) and any(
                n.startswith("python-worker") for n in names
            )

        await wait_until(both_ready, 60, outputs)

        # Jobs that take a moment, so neither worker can drain the queue alone
        # before the other asks; each runtime returns its own result.
        ids = [f"shared-{n}" for n in range(200)]
        pusher = await self.server.connect("pusher")
        await pusher.ok(
            "PUSHB", [{"type": "sleep", "args": [0.05], "id": i} for i in ids]
        )

        async def drained() -> bool:
            summary = await self.server.store.summary("default")
            return summary.processed == len(ids) and not any(summary.sizes.values())

        await wait_until(drained, 90, outputs)

        def node_acked() -> list[str]:
            return [
                line.split()[1]
                for line in node.output.decode().splitlines()
                if line.startswith("acked ")
            ]

        def python_done() -> list[str]:
            try:
                with open(record, encoding="ascii") as f:
                    return [
                        line.split()[1]
                        for line in f.read().splitlines()
                        if line.startswith("done ")
                    ]
            except FileNotFoundError:
                return []

        # Node logs a job after the server's OK to its ack: let the lines in.
        async def all_reported() -> bool:
            return len(node_acked()) + len(python_done()) >= len(ids)

        await wait_until(all_reported, 10, outputs)
        by_node, by_python = node_acked(), python_done()
        self.assertGreater(len(by_node), 0, outputs())
        self.assertGreater(len(by_python), 0, outputs())
        self.assertEqual(sorted(by_node + by_python), sorted(ids))

        summary = await self.server.store.summary("default")
        self.assertEqual((summary.processed, summary.failed), (len(ids), 0))
        for job_id in ids:
            job = await self.server.store.get_job("default", job_id)
            self.assertEqual(
                (job["state"], job["attempt"], job["errors"]), ("completed", 1, []), job
            )
            if job_id in by_node:
                self.assertTrue(job["worker"].startswith("node-"), job)
                self.assertEqual(job["result"], "slept")
            else:
                self.assertTrue(job["worker"].startswith("python-worker"), job)
                self.assertEqual(job["result"], 0.05)

    test_node_and_python_workers_share_a_queue.timeout = 180  # type: ignore[attr-defined]
