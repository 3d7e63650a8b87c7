"""
Tests for L{procession.http.limits}: the HTTP connection limit (in memory here;
over real sockets in tests/test_fault_connections.py) and the descriptor
limit, raised in real processes whose limit the test lowers first.
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import uuid
from typing import Any, Callable

from twisted.internet import protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from procession.http.limits import (
    MAX_REFUSING,
    OWN_DESCRIPTORS,
    REFUSAL_LINGER,
    HTTPConnectionLimit,
    descriptors_needed,
)
from tests.ledger import REPO, Procession, environment
from tests.redis import shared_redis


def lowered(soft: int, hard: int | None = None) -> Callable[[], None]:
    """
    A C{preexec_fn} that lowers the child's C{RLIMIT_NOFILE}.
    """

    def lower() -> None:
        _, current_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (soft, current_hard if hard is None else hard)
        )

    return lower


def hard_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def soft_limit_of(pid: int) -> int:
    with open(f"/proc/{pid}/limits", encoding="ascii") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError(f"no open-file limit for {pid}")


class HTTPConnectionLimitTests(SynchronousTestCase):
    """
    L{HTTPConnectionLimit} in memory.
    """

    def connect(self, limit: HTTPConnectionLimit) -> tuple[Any, StringTransport]:
        transport = StringTransport()
        p = limit.buildProtocol(None)
        p.makeConnection(transport)
        return p, transport

    def setUp(self) -> None:
        self.clock = Clock()
        self.limit = HTTPConnectionLimit(
            protocol.Factory.forProtocol(protocol.Protocol), 2, self.clock
        )
        self.served = [self.connect(self.limit) for _ in range(2)]

    def test_under_the_limit(self) -> None:
        """
        Connections within the limit reach the wrapped factory's protocol
        and are answered nothing by the limit.
        """
        self.assertEqual(self.limit.open, 2)
        for _, transport in self.served:
            self.assertEqual(transport.value(), b"")
            self.assertFalse(transport.disconnecting)

    def test_refused_after_the_request_head(self) -> None:
        """
        Over the limit, a connection is answered 503 at once and closed
        once its request head has arrived.
        """
        _, transport = self.connect(self.limit)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), head)
        self.assertIn(b"\r\nConnection: close", head)
        self.assertIn(b"\r\nRetry-After: 1", head)
        self.assertIn(f"\r\nContent-Length: {len(body)}".encode(), head)
        self.assertEqual(json.loads(body)["error"]["code"], "too_many_connections")
        self.assertEqual(json.loads(body)["error"]["limit"], 2)
        refusal = self.limit.refusing.copy().pop()
        refusal.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        self.assertFalse(transport.disconnecting)
        refusal.dataReceived(b"\r\n")
        self.assertTrue(transport.disconnecting)
        refusal.connectionLost(None)
        self.assertEqual(self.limit.refusing, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.limit.refused, 1)

    def test_refused_when_silent(self) -> None:
        """
        A refused connection that sends nothing is closed after
        L{REFUSAL_LINGER} seconds.
        """
        _, transport = self.connect(self.limit)
        self.clock.advance(REFUSAL_LINGER - 0.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_refusing_is_bounded(self) -> None:
        """
        With L{MAX_REFUSING} connections being refused, another is closed
        at once, unanswered.
        """
        for _ in range(MAX_REFUSING):
            self.connect(self.limit)
        self.assertEqual(len(self.limit.refusing), MAX_REFUSING)
        transport = StringTransport()
        self.limit.buildProtocol(None).makeConnection(transport)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnected)

    def test_room_again(self) -> None:
        """
        When a connection within the limit closes, the next one is served.
        """
        served, _ = self.served[0]
        served.connectionLost(None)
        self.assertEqual(self.limit.open, 1)
        _, transport = self.connect(self.limit)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.limit.open, 2)


class DescriptorsNeededTests(SynchronousTestCase):
    def test_sum(self) -> None:
        """
        One descriptor per connection of each listener, the connections
        being refused, and the server's own.
        """
        self.assertEqual(
            descriptors_needed(10_000, 1024),
            10_000 + 1024 + MAX_REFUSING + OWN_DESCRIPTORS,
        )
        self.assertEqual(OWN_DESCRIPTORS + MAX_REFUSING, 128)


class RaiseDescriptorLimitTests(SynchronousTestCase):
    """
    L{procession.http.limits.raise_descriptor_limit} in a child process whose
    limit the test lowered first.
    """

    def raise_in_child(self, needed: int, soft: int, hard: int | None = None) -> Any:
        code = (
            "import json, resource\n"
            "from procession.http.limits import raise_descriptor_limit\n"
            f"found = raise_descriptor_limit({needed})\n"
            "print(json.dumps([found.before, found.after, found.hard, found.enough,"
            " resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=environment(),
            cwd=REPO,
            preexec_fn=lowered(soft, hard),
            capture_output=True,
            check=True,
            timeout=60,
        )
        return json.loads(out.stdout)

    def test_raised_to_what_is_needed(self) -> None:
        if hard_limit() < 2000:
            raise SkipTest(f"the hard limit ({hard_limit()}) is below 2000")
        before, after, _, enough, now = self.raise_in_child(2000, soft=256)
        self.assertEqual((before, after, enough, now), (256, 2000, True, 2000))

    def test_raised_to_the_hard_limit(self) -> None:
        """
        When the hard limit is below the need, the soft limit goes up to it,
        and the result says it is not enough.
        """
        before, after, hard, enough, now = self.raise_in_child(
            5000, soft=256, hard=1000
        )
        self.assertEqual(
            (before, after, hard, enough, now), (256, 1000, 1000, False, 1000)
        )

    def test_never_lowered(self) -> None:
        before, after, _, enough, now = self.raise_in_child(300, soft=900, hard=1000)
        self.assertEqual((before, after, enough, now), (900, 900, True, 900))


class ServerDescriptorLimitTests(SynchronousTestCase):
    """
    The real server, started with a low open-file limit.
    """

    def serve(self, soft: int, hard: int | None, *args: str) -> Procession:
        return Procession(
            self,
            *args,
            redis=shared_redis(),
            namespace="d" + uuid.uuid4().hex[:10],
            preexec=lowered(soft, hard),
        ).serving()

    def test_raised_at_start(self) -> None:
        """
        With the defaults (10,000 TCP and 1,024 HTTP connections) the
        server raises its soft limit from 256 to what they need, and says
        so.
        """
        needed = descriptors_needed(10_000, 1024)
        if hard_limit() < needed:
            raise SkipTest(f"the hard limit ({hard_limit()}) is below {needed}")
        server = self.serve(256, None)
        self.assertEqual(soft_limit_of(server.pid), needed)
        self.assertIn(
            f"Raised the open-file limit (RLIMIT_NOFILE) from 256 to {needed} "
            "for --max-connections 10000 and --max-http-connections 1024",
            server.full_log(),
        )
        self.assertNotIn("need about", server.full_log())

    def test_warns_when_short(self) -> None:
        """
        When the hard limit is too low, the server raises the soft limit to
        it, warns with the numbers, and serves all the same.
        """
        server = self.serve(256, 600, "--max-connections", "1000")
        self.assertEqual(soft_limit_of(server.pid), 600)
        needed = descriptors_needed(1000, 1024)
        log = re.sub(r"\s+", " ", server.full_log())
        self.assertIn(
            "The open-file limit is 600 (hard limit 600), but --max-connections "
            f"1000 and --max-http-connections 1024 need about {needed}: past "
            "about 536 connections, new ones will fail to be accepted.",
            log,
        )
        self.assertEqual(server.http("GET", "/healthz")[0], 200)

    def test_enough_already(self) -> None:
        """
        Limits that fit change nothing and log nothing.
        """
        server = self.serve(
            600, 600, "--max-connections", "300", "--max-http-connections", "100"
        )
        self.assertEqual(soft_limit_of(server.pid), 600)
        self.assertNotIn("open-file limit", server.full_log())
