"""
Connections to Redis: txredisapi pools whose connections write at once
and encode commands and decode replies with less work per value.
"""

from __future__ import annotations

from typing import Any
from procession.redis.address import RedisAddress
from procession.redis.sentinel import SentinelPool


from procession.net.transport import immediate_writes
from procession.redis.internals import pool_factory


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
        def connectionMade(self) -> Any:
            immediate_writes(self.transport)
            return super().connectionMade()

        def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
            charset, errors = self.charset, self.errors
            if charset is None:
                return super()._build_command(*args, **kwargs)
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


# How long a look-up of the master may take before it fails and is tried
# again (txredisapi waits 10 s by default: too long during a failover).
