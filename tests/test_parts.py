"""
Tests for L{procession.server.parts} and the order in which
L{procession.server.tap.ProcessionService} runs them: start in order,
each once the one before is up; on stop, quiet in reverse, then every
drain at once, then close in reverse; a start that fails half-way stops
what began.  Synchronous, with parts that record what is asked of them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from procession.server.parts import HTTPListener, Part, TCPListener, parts_for
from procession.server.tap import Options, ProcessionService


class Recording(Part):
    def __init__(self, server: Any, name: str, log: list[str]) -> None:
        super().__init__(server)
        self.label = name
        self.log = log
        self.gate: defer.Deferred[None] | None = None
        self.fail = False

    async def start(self) -> None:
        self.log.append(f"start {self.label}")
        if self.gate is not None:
            await self.gate
        if self.fail:
            raise RuntimeError(f"{self.label} failed")

    async def quiet(self) -> None:
        self.log.append(f"quiet {self.label}")

    async def drain(self) -> None:
        self.log.append(f"drain {self.label}")
        if self.gate is not None and not self.gate.called:
            await self.gate

    async def close(self) -> None:
        self.log.append(f"close {self.label}")


def options(*args: str) -> Options:
    parsed = Options()
    parsed.parseOptions(["--redis", "redis://127.0.0.1:1/0", *args])
    parsed["exit-on-failure"] = False
    return parsed


class PartsTests(SynchronousTestCase):
    def service(self, names: list[str]) -> tuple[ProcessionService, list[Any]]:
        server = ProcessionService(options(), task.Clock())
        for part in list(server):
            server.removeService(part)
        self.log: list[str] = []
        parts = [Recording(server, name, self.log) for name in names]
        for part in parts:
            part.setServiceParent(server)
        server.store = type("Store", (), {"server_id": "me"})()
        return server, parts

    def test_default_parts(self) -> None:
        """
        Without --faktory or --processes a server has its core parts, the
        TCP listener before the HTTP one.
        """
        server = ProcessionService(options(), task.Clock())
        kinds = [type(p).__name__ for p in parts_for(server)]
        self.assertEqual(
            kinds,
            [
                "EmbeddedRedis",
                "StoreConnection",
                "QueueService",
                "Upkeep",
                "PeriodicScheduler",
                "TCPListener",
                "HTTPListener",
            ],
        )
        self.assertLess(
            kinds.index(TCPListener.__name__), kinds.index(HTTPListener.__name__)
        )
        with_more = parts_for(
            ProcessionService(options("--processes", "2"), task.Clock())
        )
        self.assertEqual(type(with_more[-1]).__name__, "OtherProcesses")

    def test_order(self) -> None:
        """
        Parts start one after the other; stopping quiets them in reverse,
        drains them all at once, and closes them in reverse.
        """
        server, parts = self.service(["a", "b", "c"])
        parts[1].gate = defer.Deferred()
        server.startService()
        self.assertEqual(self.log, ["start a", "start b"])
        parts[1].gate.callback(None)
        self.successResultOf(server.started)
        self.assertEqual(self.log, ["start a", "start b", "start c"])
        del self.log[:]
        waiting: defer.Deferred[None] = defer.Deferred()
        parts[0].gate = waiting
        stopped = server.stopService()
        # Every drain began while the first is still waiting.
        self.assertEqual(
            self.log,
            ["quiet c", "quiet b", "quiet a", "drain c", "drain b", "drain a"],
        )
        self.assertNoResult(stopped)
        waiting.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(self.log[-3:], ["close c", "close b", "close a"])

    def test_failed_start(self) -> None:
        """
        A part whose start fails stops start-up; stopping then takes down
        the parts that began, the failed one included, and no others.
        """
        server, parts = self.service(["a", "b", "c"])
        parts[1].fail = True
        server.startService()
        self.failureResultOf(server.started, RuntimeError)
        del self.log[:]
        self.successResultOf(server.stopService())
        self.assertEqual(
            self.log,
            ["quiet b", "quiet a", "drain b", "drain a", "close b", "close a"],
        )
