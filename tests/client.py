"""
A Twisted client of the worker protocol for in-process end-to-end tests,
and a helper that runs a real L{ProcessionService} on loopback ports.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from procession.server.tap import Options, ProcessionService
from tests.redis import namespace, shared_redis


class LineClient(Protocol):
    """
    Speaks the worker protocol: replies come back in order through
    L{request}; C{JOB}, C{QUIET} and C{CANCEL} frames queue up in L{jobs},
    L{quiets} and L{cancels}.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.hi: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.waiting: list[defer.Deferred[tuple[str, Any]]] = []
        self.jobs: defer.DeferredQueue[dict[str, Any]] = defer.DeferredQueue()
        self.quiets: list[Any] = []
        self.cancels: defer.DeferredQueue[dict[str, Any]] = defer.DeferredQueue()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.frames: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.frames.append(line)
            verb, _, body = line.partition(b" ")
            value = json.loads(body) if body else None
            if verb == b"HI":
                self.hi.callback(value)
            elif verb == b"JOB":
                self.jobs.put(value)
            elif verb == b"QUIET":
                self.quiets.append(value)
            elif verb == b"CANCEL":
                self.cancels.put(value)
            else:
                self.waiting.pop(0).callback((verb.decode(), value))

    def connectionLost(self, reason: Any = None) -> None:
        for d in self.waiting:
            d.errback(ConnectionError("closed"))
        self.waiting = []
        self.closed.callback(None)

    def send(
        self, verb: str, body: Any = None, raw: bytes | None = None
    ) -> defer.Deferred[tuple[str, Any]]:
        """
        Send one frame and return the Deferred of its reply (verb, body).
        """
        if raw is None:
            raw = verb.encode() + (
                b"" if body is None else b" " + json.dumps(body).encode()
            )
        d: defer.Deferred[tuple[str, Any]] = defer.Deferred()
        self.waiting.append(d)
        self.transport.write(raw + b"\n")
        return d

    async def ok(self, verb: str, body: Any = None) -> Any:
        """
        Send a request that must succeed; return the reply's body.
        """
        kind, value = await self.send(verb, body)
        if kind != "OK":
            raise AssertionError(f"{verb} failed: {value}")
        return value

    async def next_job(self, timeout: float = 5.0) -> dict[str, Any]:
        """
        The next JOB frame, or a failure after C{timeout} seconds.
        """
        d = self.jobs.get()
        d.addTimeout(timeout, reactor)
        return await d


class ServerFixture:
    """
    A real procession server in this process, on loopback ports picked by
    the OS, against the test Redis in a namespace of its own.
    """

    def __init__(self, test: TestCase, *args: str, ns: str | None = None) -> None:
        self.test = test
        self.namespace = ns or namespace()
        self.args = list(args)
        self.service: ProcessionService | None = None

    async def start(self) -> "ServerFixture":
        options = Options()
        options.parseOptions(
            [
                "--tcp",
                "tcp:0:interface=127.0.0.1",
                "--http",
                "tcp:0:interface=127.0.0.1",
                "--redis",
                shared_redis().url,
                "--namespace",
                self.namespace,
                "--shutdown-grace",
                "0.5",
                "--sweep-interval",
                "0.2",
            ]
            + self.args
        )
        options["exit-on-failure"] = False
        self.service = ProcessionService(options, reactor)
        self.service.startService()
        self.test.addCleanup(self.stop)
        await self.service.started
        return self

    async def stop(self) -> None:
        if self.service is not None and self.service.running:
            await self.service.stopService()
            # txredisapi finishes parsing a reply that arrived in pieces in a
            # callLater(0): let it run, or trial sees a dirty reactor.
            from twisted.internet.task import deferLater

            await deferLater(reactor, 0.01, lambda: None)

    @property
    def store(self) -> Any:
        return self.service.store

    @property
    def tcp_port(self) -> int:
        return self.service.tcp_port.getHost().port

    @property
    def http_port(self) -> int:
        return self.service.http_port.getHost().port

    async def connect(
        self,
        worker: str | None = "tester",
        token: str | None = None,
        cancel: bool = True,
    ) -> LineClient:
        """
        A connected client, after HELLO unless C{worker} is None; with
        C{cancel}, its HELLO asks for CANCEL frames.
        """
        client = LineClient()
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.tcp_port), client
        )
        self.test.addCleanup(self._close, client)
        await client.hi
        if worker is not None:
            hello: dict[str, Any] = {"worker": worker}
            if cancel:
                hello["cancel"] = True
            if token is not None:
                hello["token"] = token
            await client.ok("HELLO", hello)
        return client

    @staticmethod
    async def _close(client: LineClient) -> None:
        if not client.closed.called:
            client.transport.abortConnection()
            await client.closed
