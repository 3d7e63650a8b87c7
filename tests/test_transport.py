"""
Tests of L{procession.net.transport}: writing at once, over real loopback
sockets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.trial.unittest import TestCase

from procession.net.transport import corked, immediate_writes, write_now


class Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.waiting: list[tuple[int, defer.Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for n, d in list(self.waiting):
            if len(self.data) >= n:
                self.waiting.remove((n, d))
                d.callback(None)

    def received(self, n: int) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.waiting.append((n, d))
        self.dataReceived(b"")
        return d.addTimeout(10, reactor)


def buffered(transport: Any) -> int:
    return int(transport._tempDataLen + len(transport.dataBuffer) - transport.offset)


class WriteNowTests(TestCase):
    async def setUp(self) -> None:
        self.receiver = Collect()
        factory = protocol.Factory.forProtocol(lambda: self.receiver)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            factory
        )
        self.addCleanup(port.stopListening)
        self.sender = protocol.Protocol()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            protocol.Factory.forProtocol(lambda: self.sender)
        )
        self.transport = self.sender.transport
        self.addCleanup(self.transport.abortConnection)

    async def test_sent_at_once(self) -> None:
        write_now(self.transport, b"hello\n")
        self.assertEqual(buffered(self.transport), 0)
        await self.receiver.received(6)
        self.assertEqual(bytes(self.receiver.data), b"hello\n")

    async def test_corked_writes_leave_together(self) -> None:
        """
        Writes made in a corked block are held, and leave together at once
        when the outermost block ends: nothing is left to the reactor.
        """
        sends: list[bytes] = []
        send = self.transport.writeSomeData

        def counted(data: bytes) -> Any:
            sends.append(bytes(data))
            return send(data)

        self.transport.writeSomeData = counted
        with corked():
            write_now(self.transport, b"a")
            with corked():
                write_now(self.transport, b"b")
            self.assertEqual(sends, [])
            write_now(self.transport, b"c")
        self.assertEqual(sends, [b"abc"])
        self.assertEqual(buffered(self.transport), 0)
        await self.receiver.received(3)
        self.assertEqual(bytes(self.receiver.data), b"abc")

    async def test_corked_then_closed(self) -> None:
        """
        A connection closed within a corked block still sends what was
        held, then what was written after, in order, before it closes.
        """
        with corked():
            write_now(self.transport, b"reply ")
            self.transport.loseConnection()
            write_now(self.transport, b"last")
        await self.receiver.received(10)
        self.assertEqual(bytes(self.receiver.data), b"reply last")

    async def test_behind_buffered_bytes(self) -> None:
        """
        Behind bytes Twisted has buffered, a write is buffered too: order
        is kept.
        """
        self.transport.write(b"a")
        write_now(self.transport, b"b")
        self.assertEqual(buffered(self.transport), 2)
        with corked():
            write_now(self.transport, b"c")
        self.assertEqual(buffered(self.transport), 3)
        await self.receiver.received(3)
        self.assertEqual(bytes(self.receiver.data), b"abc")

    async def test_more_than_the_socket_takes(self) -> None:
        big = bytes(range(256)) * (64 * 1024)  # 16 MiB
        write_now(self.transport, big)
        self.assertGreater(buffered(self.transport), 0)
        write_now(self.transport, b"end")
        await self.receiver.received(len(big) + 3)
        self.assertEqual(bytes(self.receiver.data), big + b"end")

    async def test_immediate_writes(self) -> None:
        immediate_writes(self.transport)
        self.transport.write(b"x" * 10)
        self.assertEqual(buffered(self.transport), 0)
        with corked():
            self.transport.write(b"y")
            self.transport.write(b"z")
        self.assertEqual(buffered(self.transport), 0)
        await self.receiver.received(12)
        self.assertEqual(bytes(self.receiver.data), b"x" * 10 + b"yz")

    async def test_closing_transport(self) -> None:
        """
        Once the connection is closing, writes take Twisted's own path
        (which still sends them before closing).
        """
        self.transport.loseConnection()
        write_now(self.transport, b"late")
        self.assertEqual(buffered(self.transport), 4)
        await self.receiver.received(4)
        self.assertEqual(bytes(self.receiver.data), b"late")

    def test_other_transports_get_write(self) -> None:
        written: list[bytes] = []

        class Other:
            def write(self, data: bytes) -> None:
                written.append(data)

        write_now(Other(), b"x")
        self.assertEqual(written, [b"x"])
