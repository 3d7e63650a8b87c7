"""
Tests for L{procession.net.internals}, L{procession.http.internals} and
L{procession.redis.internals}:
the private attributes of Twisted, werkzeug and txredisapi that procession uses are
still there in the installed versions.  A failure here names the one that
went: read the new version's source and change the one function that uses
it (and setup.cfg's version bounds).
"""

from __future__ import annotations

import socket

import txredisapi
from twisted.internet import defer, endpoints, protocol, reactor, tcp
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from procession.http import internals as http_internals
from procession.net import internals as net
from procession.redis import internals as redis


class TwistedInternalsTests(TestCase):
    async def test_connection_attributes(self) -> None:
        """
        A real TCP connection has what L{net.nothing_buffered} reads, and
        says nothing is buffered before anything is written.
        """
        accepted: defer.Deferred[tcp.Connection] = defer.Deferred()

        class Server(protocol.Protocol):
            def connectionMade(self) -> None:
                accepted.callback(self.transport)

        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, protocol.Factory.forProtocol(Server), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        transport = await accepted
        self.addCleanup(transport.loseConnection)
        self.assertIsInstance(transport, tcp.Connection)
        for name in net.CONNECTION_ATTRIBUTES:
            self.assertTrue(hasattr(transport, name), name)
        self.assertTrue(net.nothing_buffered(transport))
        transport.loseConnection()
        # Let the reactor close it before the cleanups run.
        await deferLater(reactor, 0, lambda: None)

    def test_endpoint_attributes(self) -> None:
        """
        TCP server endpoints keep what they were made with where
        L{net.endpoint_address} reads it.
        """
        for text in ("tcp:7123:interface=127.0.0.1:backlog=9", "tcp6:7123:backlog=9"):
            endpoint = endpoints.serverFromString(reactor, text)
            for name in net.ENDPOINT_ATTRIBUTES:
                self.assertTrue(hasattr(endpoint, name), (text, name))
            interface, port, backlog = net.endpoint_address(endpoint)
            self.assertEqual((port, backlog), (7123, 9))
        context = object()
        ssl = endpoints.SSL4ServerEndpoint(reactor, 7123, context)  # type: ignore[arg-type]
        self.assertIs(net.endpoint_tls_context(ssl), context)

    def test_port_and_reactor_attributes(self) -> None:
        """
        A listening port has C{_shouldShutdown}; the reactor has
        C{_exitSignal}, which L{net.forget_exit_signal} clears.
        """
        self.assertTrue(hasattr(tcp.Port, "_shouldShutdown"))
        self.assertTrue(hasattr(reactor, "_exitSignal"))

        class Reactor:
            _exitSignal: int | None = 15

        fake = Reactor()
        net.forget_exit_signal(fake)
        self.assertIsNone(fake._exitSignal)

    def test_http_attributes(self) -> None:
        """
        An HTTP channel keeps the request line where L{net.request_line}
        reads it, and a request has the flag L{net.parse_forms} sets.
        """
        from twisted.test.proto_helpers import StringTransport
        from twisted.web import http

        channel = http.HTTPChannel()
        channel.makeConnection(StringTransport())
        seen = []

        class Request(http.Request):
            def gotLength(self, length: int | None) -> None:
                seen.append(net.request_line(self.channel))
                super().gotLength(length)

        channel.requestFactory = Request  # type: ignore[assignment]
        channel.dataReceived(b"POST /api/v1/jobs HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(seen, [(b"POST", b"/api/v1/jobs")])
        request = http.Request(channel)
        self.assertTrue(hasattr(request, net.REQUEST_ATTRIBUTE))
        net.parse_forms(request, False)
        self.assertFalse(getattr(request, net.REQUEST_ATTRIBUTE))
        channel.connectionLost(None)  # type: ignore[arg-type]


class WerkzeugInternalsTests(TestCase):
    def test_map_matcher(self) -> None:
        """
        A werkzeug C{Map}, made before L{http_internals.keep_slashes} runs
        (as Klein makes it), has the matcher whose flag it sets; then a
        path with repeated slashes is matched as it is (here: not found)
        rather than redirected to the path with its slashes merged.
        """
        from werkzeug.exceptions import NotFound
        from werkzeug.routing import Map, RequestRedirect, Rule

        merged = Map([Rule("/queues/<name>", endpoint="queue")])
        self.assertRaises(RequestRedirect, merged.bind("localhost").match, "/queues//a")

        url_map = Map()
        matcher = getattr(url_map, http_internals.MAP_ATTRIBUTE, None)
        self.assertIsNotNone(
            matcher, f"werkzeug's Map has no {http_internals.MAP_ATTRIBUTE}"
        )
        self.assertTrue(
            hasattr(matcher, "merge_slashes"),
            f"werkzeug's Map.{http_internals.MAP_ATTRIBUTE} has no merge_slashes",
        )
        http_internals.keep_slashes(url_map)
        self.assertIs(matcher.merge_slashes, False)
        url_map.add(Rule("/queues/<name>", endpoint="queue"))
        self.assertRaises(NotFound, url_map.bind("localhost").match, "/queues//a")
        self.assertEqual(
            url_map.bind("localhost").match("/queues/a"), ("queue", {"name": "a"})
        )


class TxredisapiInternalsTests(TestCase):
    async def test_pool_factory(self) -> None:
        """
        A lazy txredisapi pool has a factory with what procession uses.
        """
        pool = txredisapi.lazyUnixConnectionPool(
            "/nonexistent/redis.sock", reconnect=False
        )
        self.addCleanup(pool.disconnect)
        factory = redis.pool_factory(pool)
        self.assertIsNotNone(factory)
        for name in redis.FACTORY_ATTRIBUTES:
            self.assertTrue(hasattr(factory, name), name)
        self.assertIsNone(redis.pool_factory(object()))
        # not connected: no free connection to send on
        self.assertIsNone(redis.free_connection(pool))
        self.assertIsNone(redis.free_connection(object()))

    def test_protocol_and_sentinel_endpoint(self) -> None:
        """
        The protocol methods L{procession.redis.connection} overrides and
        the Sentinel endpoint class exist.
        """
        for name in redis.PROTOCOL_METHODS:
            self.assertTrue(callable(getattr(txredisapi.RedisProtocol, name)), name)
        self.assertTrue(callable(txredisapi._SentinelEndpoint))
