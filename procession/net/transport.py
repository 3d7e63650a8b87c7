"""
Writing to a socket at once.

Twisted's socket transports never send in C{write}: they buffer the data,
ask the reactor to watch the socket for writability (an C{epoll_ctl}), send
on the reactor's next turn and stop watching (another C{epoll_ctl}).  For a
job server whose every request is one small write to Redis and one small
reply, that is two system calls and a reactor turn per write, a good part
of the cost of a lone push.  L{write_now} sends at once when the transport
has nothing buffered (so the order of bytes is kept) and hands whatever the
socket did not take to C{write}, which buffers it as usual.  Any other
transport (TLS, a test's) just gets C{write}.

A burst of writes (the jobs of one claim, the replies to a batch of
pipelined requests) should still leave in one system call: code that
makes one writes it L{corked}, and those writes are buffered as Twisted
always does, to go together on the next turn.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from twisted.internet import tcp

from procession.net.internals import nothing_buffered

# How many corked() blocks are open (the reactor runs in one thread).
_corks = 0


@contextmanager
def corked() -> Iterator[None]:
    """
    Within this block, writes are buffered and leave together on the
    reactor's next turn, as with a plain C{transport.write}.
    """
    global _corks
    _corks += 1
    try:
        yield
    finally:
        _corks -= 1


def _unsent(transport: Any, data: bytes) -> bytes:
    """
    Send what the socket under C{transport} takes of C{data} now, if it is
    a plain TCP or Unix socket with nothing buffered; return the rest.
    """
    if (
        not _corks
        and isinstance(transport, tcp.Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and nothing_buffered(transport)
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int) and sent > 0:
            return data[sent:]
        # Nothing taken, or the connection is lost: write() buffers, and
        # the reactor finds out and closes it as usual.
    return data


def write_now(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it at once if nothing is waiting
    to be sent before it.
    """
    data = _unsent(transport, data)
    if data:
        transport.write(data)


def immediate_writes(transport: Any) -> None:
    """
    Make C{transport.write} behave like L{write_now}, for a protocol whose
    writes are made by code that is not ours (the Redis client's).
    """
    if not isinstance(transport, tcp.Connection):
        return
    write: Callable[[bytes], None] = transport.write

    def write_at_once(data: bytes) -> None:
        data = _unsent(transport, data)
        if data:
            write(data)

    # An instance attribute over the method: the Redis client calls
    # transport.write, and must get the write-now path.
    transport.write = write_at_once  # type: ignore[method-assign]
