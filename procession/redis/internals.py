"""
The private parts of txredisapi that procession relies on, all in this
one module, each where txredisapi has no public API for it.

txredisapi gives no public way to reach a pool's factory (its connections
and how many are up), to connect a factory through Sentinel without its
own pool class, or to encode commands and decode replies faster.  So these
use names txredisapi does not promise to keep.  tests/test_internals.py
checks each against the installed txredisapi and fails, naming it, if one
is gone; setup.cfg bounds txredisapi's version to the ones checked.
"""

from __future__ import annotations

from typing import Any

#: The attributes of a pool's factory (L{pool_factory}) procession uses.
FACTORY_ATTRIBUTES = (
    "pool",
    "size",
    "protocol",
    "maxDelay",
    "initialDelay",
    "connectionQueue",
)

#: The methods of C{txredisapi.RedisProtocol} that
#: L{procession.redis.connection} overrides or calls.
PROTOCOL_METHODS = (
    "_build_command",
    "_encode_value",
    "tryConvertData",
    "execute_command",
    "replyReceived",
    "connectionMade",
    "connectionLost",
)

#: The attributes of a txredisapi connection (its protocol instance) that
#: L{free_connection} reads.
CONNECTION_ATTRIBUTES = ("connected", "pipelining", "inTransaction", "transport")


def pool_factory(handler: Any) -> Any:
    """
    The factory behind a txredisapi connection pool (its C{ConnectionHandler},
    or L{procession.redis.sentinel.SentinelPool}, which passes its own on),
    or None for something else.
    """
    return getattr(handler, "_factory", None)


def free_connection(handler: Any) -> Any:
    """
    A connection of the pool C{handler} that is up and that no caller holds
    for itself (a pipeline, a transaction, a blocking command take one out
    of the pool's queue of free connections), or None.
    """
    queue = getattr(pool_factory(handler), "connectionQueue", None)
    if queue is None:
        return None
    for conn in queue.pending:
        if conn.connected and not conn.pipelining and not conn.inTransaction:
            return conn
        return None
    return None


def sentinel_endpoint(factory: Any) -> Any:
    """
    The endpoint that connects C{factory} to the master its
    C{sentinel_manager} names, as txredisapi's Sentinel pools use.
    """
    import txredisapi

    return txredisapi._SentinelEndpoint(factory)
