"""
Limits on what clients can make one server process hold: the HTTP
listener's connection limit (C{--max-http-connections}; the TCP listener's
C{--max-connections} lives in L{procession.tcp.protocol}), and the file
descriptors that every listener's limit together needs.

Nothing here knows about jobs or routes: it counts connections and
descriptors.
"""

from __future__ import annotations

import json
import resource
from typing import Any

from attrs import frozen
from twisted.internet import protocol
from twisted.logger import Logger
from twisted.protocols import policies

from procession.core.errors import TooManyConnections
from procession.net.transport import immediate_writes

log = Logger()

#: At most this many connections over the HTTP limit are kept open at once
#: to be answered C{503}; past it a new one is closed without an answer, so
#: that a flood of connections costs a bounded number of descriptors.
MAX_REFUSING = 64

#: How long a connection over the limit may take to send its request head
#: before it is closed (seconds).
REFUSAL_LINGER = 2.0

#: The most bytes of a refused connection's request that are read (and
#: thrown away) before it is closed.
REFUSAL_READ = 16 * 1024

#: Descriptors a server process holds besides its clients' connections:
#: listeners, Redis connections, log files, pipes to the embedded Redis and
#: to the children of C{--processes} (which has at most a few dozen).
OWN_DESCRIPTORS = 64


def _refusal_response(limit: int) -> bytes:
    body = json.dumps(
        {
            "error": TooManyConnections(
                "the server is at --max-http-connections", limit=limit
            ).as_dict()
        },
        separators=(",", ":"),
    ).encode("utf-8")
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("ascii")
    return head + body


class _Refusal(protocol.Protocol):
    """
    A connection over the limit: answered C{503 too_many_connections} at
    once, and closed once its request head has arrived (closing before it is
    read would make the kernel answer the request with a reset, which can
    destroy the 503 before the client reads it), or after
    L{REFUSAL_LINGER} seconds.
    """

    # Set before connectionMade, never None while connected (Twisted types
    # it Optional[ITransport], without abortConnection).
    transport: Any

    def __init__(self, limit: "HTTPConnectionLimit") -> None:
        self.limit = limit
        self.received = bytearray()
        self.timer: Any = None

    def connectionMade(self) -> None:
        self.limit.refusing.add(self)
        self.transport.write(self.limit.refusal)
        self.timer = self.limit.clock.callLater(REFUSAL_LINGER, self._close)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received or len(self.received) > REFUSAL_READ:
            self._close()

    def _close(self) -> None:
        self.received = bytearray()
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.limit.refusing.discard(self)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class _Drop(protocol.Protocol):
    """
    A connection over the limit while L{MAX_REFUSING} others are being
    refused: closed at once, unanswered.
    """

    transport: Any

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class _Connection(policies.ProtocolWrapper):
    """
    One HTTP connection within the limit: its socket sends at once (a
    response leaves in one write as Twisted's HTTP server makes it, see
    L{procession.http.web.Request.write}, rather than on the reactor's next
    turn), and its local address is asked of the kernel once.
    """

    _host: Any = None

    def makeConnection(self, transport: Any) -> None:
        immediate_writes(transport, sequences=True)
        super().makeConnection(transport)

    def getHost(self) -> Any:
        # twisted.web asks for every request (Request.__init__), and a TCP
        # transport asks the kernel (getsockname) each time; a connection's
        # own address never changes.
        host = self._host
        if host is None:
            transport: Any = self.transport
            host = self._host = transport.getHost()
        return host


class HTTPConnectionLimit(policies.WrappingFactory):
    """
    Wraps the HTTP listener's factory (a L{twisted.web.server.Site}) and
    holds it to C{limit} connections at once.  A connection over the limit
    is answered C{503} with code C{too_many_connections} and closed; the
    connections already open go on as before.

    @ivar refused: how many connections were turned away, ever.
    """

    noisy = False
    protocol = _Connection

    def __init__(self, wrapped: Any, limit: int, clock: Any) -> None:
        super().__init__(wrapped)
        self.limit = limit
        self.clock = clock
        self.refusal = _refusal_response(limit)
        self.refusing: set[_Refusal] = set()
        self.refused = 0

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.protocols) < self.limit:
            return super().buildProtocol(addr)
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warn(
                "The HTTP listener is at --max-http-connections ({limit}): "
                "{refused} connections turned away so far",
                limit=self.limit,
                refused=self.refused,
            )
        if len(self.refusing) >= MAX_REFUSING:
            return _Drop()
        return _Refusal(self)

    @property
    def open(self) -> int:
        """
        How many HTTP connections are open within the limit.
        """
        return len(self.protocols)


def descriptors_needed(max_connections: int, max_http_connections: int) -> int:
    """
    The file descriptors one server process needs to reach its connection
    limits: one per TCP and HTTP connection, the connections being refused,
    and its own.
    """
    return max_connections + max_http_connections + MAX_REFUSING + OWN_DESCRIPTORS


@frozen
class DescriptorLimit:
    """
    What L{raise_descriptor_limit} found and did (C{RLIMIT_NOFILE}).

    @ivar needed: the descriptors the limits need.
    @ivar before: the soft limit found.
    @ivar after: the soft limit now.
    @ivar hard: the hard limit (C{resource.RLIM_INFINITY} for none).
    @ivar error: why raising it failed, if it did.
    """

    needed: int
    before: int
    after: int
    hard: int
    error: str | None = None

    @property
    def enough(self) -> bool:
        return _at_least(self.after, self.needed)


def _at_least(limit: int, needed: int) -> bool:
    return limit == resource.RLIM_INFINITY or limit >= needed


def raise_descriptor_limit(needed: int) -> DescriptorLimit:
    """
    Raise this process's soft C{RLIMIT_NOFILE} to C{needed}, or as far
    toward it as the hard limit allows.  It is never lowered.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if _at_least(soft, needed):
        return DescriptorLimit(needed, soft, soft, hard)
    target = needed if _at_least(hard, needed) else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        return DescriptorLimit(needed, soft, soft, hard, str(e))
    return DescriptorLimit(needed, soft, target, hard)


def check_descriptor_limit(
    max_connections: int, max_http_connections: int
) -> DescriptorLimit:
    """
    At start-up: raise the descriptor limit to what the connection limits
    need, and log what was done; warn, naming the numbers, when it stays
    short.
    """
    needed = descriptors_needed(max_connections, max_http_connections)
    found = raise_descriptor_limit(needed)
    if found.after != found.before:
        log.info(
            "Raised the open-file limit (RLIMIT_NOFILE) from {before} to "
            "{after} for --max-connections {tcp} and --max-http-connections "
            "{http}",
            before=found.before,
            after=found.after,
            tcp=max_connections,
            http=max_http_connections,
        )
    if not found.enough:
        hard = "unlimited" if found.hard == resource.RLIM_INFINITY else found.hard
        reason = f" ({found.error})" if found.error else ""
        log.warn(
            "The open-file limit is {after} (hard limit {hard}){reason}, but "
            "--max-connections {tcp} and --max-http-connections {http} need "
            "about {needed}: past about {usable} connections, new ones will "
            "fail to be accepted. Raise the hard limit (ulimit -Hn, "
            "LimitNOFILE= with systemd) or lower the connection limits.",
            after=found.after,
            hard=hard,
            reason=reason,
            tcp=max_connections,
            http=max_http_connections,
            needed=needed,
            usable=max(0, found.after - OWN_DESCRIPTORS),
        )
    return found
