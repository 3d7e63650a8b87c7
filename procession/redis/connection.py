"""
Connections to Redis: txredisapi pools whose connections write at once
and encode commands and decode replies with less work per value.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from hiredis import pack_command
from twisted.internet import defer

from procession.redis.address import RedisAddress
from procession.redis.sentinel import SentinelPool


from procession.net.internals import plain_reads
from procession.net.transport import immediate_writes
from procession.redis.internals import free_connection, pool_factory


def connect(address: RedisAddress, poolsize: int = 1) -> Any:
    """
    A lazy txredisapi connection pool: it returns at once and connects (and
    reconnects) in the background.
    """
    import txredisapi

    common = dict(
        dbid=address.db,
        poolsize=poolsize,
        reconnect=True,
        password=address.password,
        convertNumbers=False,
    )
    if address.username:
        common["username"] = address.username
    if address.sentinels:
        return SentinelPool(address, poolsize)
    if address.path:
        pool = txredisapi.lazyUnixConnectionPool(address.path, **common)
    else:
        pool = txredisapi.lazyConnectionPool(
            address.host,
            address.port,
            ssl_context_factory=address.tls,
            connectTimeout=5,
            **common,
        )
    _fast_connections(pool_factory(pool))
    return pool


def _fast_connections(factory: Any) -> None:
    """
    Make the connections C{factory} builds cheaper per command: they send
    each command at once rather than on the reactor's next turn (see
    L{procession.net.transport}), and encode commands and decode replies with
    less work per value than txredisapi's general code (a claim's reply or
    an ack's command has thousands of values).  Same bytes, same values.
    """

    class Connection(factory.protocol):
        # Per command sent and not answered yet, in order: the Deferred of
        # a command sent by L{fast_command}, or None for one sent by
        # txredisapi's own path (its reply goes to its replyQueue).
        _expect: deque[defer.Deferred[Any] | None]

        def connectionMade(self) -> Any:
            immediate_writes(self.transport)
            plain_reads(self.transport)
            self._expect = deque()
            return super().connectionMade()

        def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            d = super().execute_command(*args, **kwargs)
            self._expect.append(None)
            return d

        def fast_command(self, *args: Any) -> defer.Deferred[Any]:
            """
            Send one command now and return the Deferred of its reply,
            without txredisapi's per-command machinery (a generator that
            looks for a connection, a queue of replies, two more
            Deferreds): the server's hot path.  Only for a connection that
            no one holds exclusively (no pipeline, transaction or blocking
            command in progress).
            """
            try:
                command = self._build_command(*args)
            except Exception:
                return defer.fail()
            d: defer.Deferred[Any] = defer.Deferred()
            self._expect.append(d)
            self.transport.write(command)
            return d

        def replyReceived(self, reply: Any) -> None:
            expect = self._expect
            if expect:
                d = expect.popleft()
                if d is not None:
                    if isinstance(reply, Exception):
                        d.errback(reply)
                    else:
                        d.callback(reply)
                    return
            super().replyReceived(reply)

        def connectionLost(self, why: Any) -> None:
            super().connectionLost(why)
            # txredisapi fails the replies its own path waits for; fail the
            # others (in order, whatever their kind, so none is left).
            expect, self._expect = self._expect, deque()
            for d in expect:
                if d is not None:
                    d.errback(txredisapi_connection_error("Lost connection"))

        def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
            charset, errors = self.charset, self.errors
            if charset is None:
                return super()._build_command(*args, **kwargs)
            if (
                charset == "utf-8"
                and errors == "strict"
                and float not in map(type, args)
            ):
                # hiredis packs in C what the loop below does (a third of
                # the time for a push's two dozen values).  Floats are
                # left to txredisapi's format ('%f'), which hiredis does
                # not use; what hiredis refuses (bools, surrogates) goes
                # the long way too, to fail or pass exactly as before.
                try:
                    return pack_command(args)
                except (TypeError, UnicodeEncodeError):
                    pass
            parts = [b"*%d\r\n" % len(args)]
            for arg in args:
                kind = type(arg)
                if kind is str:
                    try:
                        value = arg.encode(charset, errors)
                    except UnicodeEncodeError:
                        # txredisapi's way: InvalidData, with the value.
                        return super()._build_command(*args, **kwargs)
                elif kind is bytes:
                    value = arg
                elif kind is int:
                    value = b"%d" % arg
                else:
                    value = self._encode_value(arg)
                parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
            return b"".join(parts)

        def tryConvertData(self, data: Any) -> Any:
            charset = self.charset
            if self.convertNumbers or charset is None:
                return super().tryConvertData(data)
            kind = type(data)
            if kind is bytes:
                try:
                    return data.decode(charset)
                except UnicodeDecodeError:
                    return data
            if kind is list:
                convert = self.tryConvertData
                return [convert(value) for value in data]
            return data

    factory.protocol = Connection


def txredisapi_connection_error(message: str) -> Exception:
    import txredisapi

    return txredisapi.ConnectionError(message)


def send(pool: Any, *args: Any) -> defer.Deferred[Any]:
    """
    Send one command on C{pool} (from L{connect}): at once on a connection
    that is up and free (L{_fast_connections}' fast path), else through
    txredisapi, which waits for a connection.
    """
    conn = free_connection(pool)
    fast = getattr(conn, "fast_command", None)
    if fast is not None:
        return fast(*args)
    return defer.maybeDeferred(pool.execute_command, *args)


# How long a look-up of the master may take before it fails and is tried
# again (txredisapi waits 10 s by default: too long during a failover).
