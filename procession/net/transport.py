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
pipelined requests, the replies of one group commit to many connections)
should still leave in one system call per connection: code that makes one
writes it L{corked}.  Those writes are held, per transport, and sent when
the outermost corked block ends, each transport's together, at once (as
L{write_now}): not left to the reactor's next turn, which would cost each
connection two C{epoll_ctl} calls and the turn's wait.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Callable

from twisted.internet import tcp

from procession.net.internals import nothing_buffered

# How many corked() blocks are open (the reactor runs in one thread), and
# the writes they hold, per transport, in order.
_corks = 0
_held: dict[Any, list[bytes]] = {}
_held_bytes: dict[Any, int] = {}

# The most a corked block holds for one transport: past it, what is held
# goes to the transport at once, so that a peer that does not read fills
# the transport's buffer and pauses its producer (the TCP protocol stops
# reading) instead of growing a held list without bound.
MAX_HELD = 64 * 1024


class _Cork:
    """
    What L{corked} returns: one object for every block, since the count of
    open blocks is this module's (a generator-based context manager cost a
    few microseconds a block, and every HTTP response opens two).
    """

    def __enter__(self) -> None:
        global _corks
        _corks += 1

    def __exit__(self, *exc_info: object) -> None:
        global _corks
        _corks -= 1
        if not _corks and _held:
            _flush()


_CORK = _Cork()


def corked() -> AbstractContextManager[None]:
    """
    Within this block, writes made with L{write_now} (or through
    L{immediate_writes}) are held, and each transport's leave together, at
    once, when the outermost block ends.
    """
    return _CORK


def _flush() -> None:
    """
    Send what corked blocks held: each transport's bytes in one write.
    """
    held = list(_held.items())
    _held.clear()
    _held_bytes.clear()
    for transport, parts in held:
        _send_held(transport, parts)


def _send_held(transport: Any, parts: list[bytes]) -> None:
    """
    Send the writes held for C{transport}: what the socket takes now, and
    the rest through Twisted's buffered C{write}.
    """
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    if _sendable(transport) and nothing_buffered(transport):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int) and sent > 0:
            data = data[sent:]
    if data:
        _buffered_write(transport, data)


def _buffered_write(transport: Any, data: bytes) -> None:
    """
    Twisted's own C{write} of C{transport}, also under L{immediate_writes}.
    """
    write = getattr(transport, "_procession_write", None)
    if write is not None:
        write(data)
    else:
        transport.write(data)


def _sendable(transport: Any) -> bool:
    """
    Whether C{transport} is a plain TCP or Unix socket that is up.
    """
    return bool(
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
    )


def _unsent(transport: Any, data: bytes) -> bytes:
    """
    Send what the socket under C{transport} takes of C{data} now, if it is
    a plain TCP or Unix socket with nothing buffered; return the rest.
    """
    if _corks:
        held = _held.get(transport)
        if held is not None:
            # behind what is held already, whatever the transport's state
            held.append(data)
            size = _held_bytes[transport] + len(data)
            if size > MAX_HELD:
                del _held[transport], _held_bytes[transport]
                _send_held(transport, held)
            else:
                _held_bytes[transport] = size
            return b""
        if _sendable(transport):
            _held[transport] = [data]
            _held_bytes[transport] = len(data)
            return b""
        return data
    if not _sendable(transport):
        return data
    if nothing_buffered(transport):
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


def immediate_writes(transport: Any, sequences: bool = False) -> None:
    """
    Make C{transport.write} behave like L{write_now}, for a protocol whose
    writes are made by code that is not ours (the Redis client's); with
    C{sequences}, C{transport.writeSequence} too (Twisted's HTTP server
    writes a response's head with it).
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
    setattr(transport, "_procession_write", write)
    if sequences:

        def write_sequence_at_once(parts: Any) -> None:
            write_at_once(b"".join(parts))

        setattr(transport, "writeSequence", write_sequence_at_once)
