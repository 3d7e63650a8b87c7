"""
The private parts of Twisted that procession relies on, all in this one
module, each where no public API does the same.

Twisted gives no public way to ask whether a TCP transport has bytes
waiting to be sent, to read back what a server endpoint was made with,
to keep an adopted UNIX port from shutting its shared socket down, to
stop C{twist} from re-raising the signal that stopped the reactor, to read
a request's first line before its head is complete, or to skip form
parsing of a request body.  So
these read or set attributes that Twisted does not promise to keep.
tests/test_internals.py checks each on a real object of the installed
Twisted, and fails, naming the attribute, if one is gone; setup.cfg bounds
Twisted's version to the ones checked.
"""

from __future__ import annotations

from types import MethodType
from typing import Any

#: The attributes of a L{twisted.internet.tcp.Connection} that
#: L{nothing_buffered} reads (from L{twisted.internet.abstract.FileDescriptor}).
CONNECTION_ATTRIBUTES = (
    "_writeDisconnected",
    "_tempDataLen",
    "offset",
    "dataBuffer",
    "writeSomeData",
)

#: The attributes of a TCP (or SSL) server endpoint that L{endpoint_address}
#: reads.
ENDPOINT_ATTRIBUTES = ("_interface", "_port", "_backlog")

#: What an C{HTTPChannel} has read of a request's first line, before its
#: request object learns it (L{request_line}).
CHANNEL_ATTRIBUTES = ("_command", "_path")

#: The flag of a C{twisted.web.http.Request} that L{parse_forms} sets.
REQUEST_ATTRIBUTE = "_parsePOSTFormSubmission"


def nothing_buffered(transport: Any) -> bool:
    """
    Whether a TCP transport has no bytes waiting to be sent (so a write may
    go to the socket at once and keep the order of bytes).
    """
    return bool(
        not transport._writeDisconnected
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    )


def endpoint_address(endpoint: Any) -> tuple[str, int, int]:
    """
    The interface, port and backlog a C{TCP4ServerEndpoint},
    C{TCP6ServerEndpoint} or C{SSL4ServerEndpoint} was made with.
    """
    return endpoint._interface, endpoint._port, endpoint._backlog


def endpoint_tls_context(endpoint: Any) -> Any:
    """
    The TLS context factory of an C{SSL4ServerEndpoint}, None for others.
    """
    return getattr(endpoint, "_sslContextFactory", None)


def keep_shared_unix_socket(port: Any) -> None:
    """
    Make an adopted UNIX listening port leave its socket alone when it
    stops listening: no C{shutdown} (which would stop every process sharing
    it) and no removal of its file (the parent's listener lives on).
    """
    from twisted.internet import tcp

    port._shouldShutdown = False
    port.connectionLost = lambda reason: tcp.Port.connectionLost(port, reason)


def forget_exit_signal(reactor: Any) -> None:
    """
    Keep C{twist} from re-raising the signal that stopped C{reactor} once
    it has returned, so that a clean stop on SIGTERM exits 0.
    """
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None


def plain_reads(transport: Any) -> None:
    """
    Read a connected unix socket with C{recv}, as a TCP one is read:
    Twisted's unix transport reads with C{recvmsg} (to receive file
    descriptors) and builds a message and its ancillary data per read,
    for peers (Redis) that never send descriptors.  It overrides the
    transport's C{doRead} with L{twisted.internet.tcp.Connection}'s.
    """
    from twisted.internet import tcp, unix

    if isinstance(transport, unix.Client) and hasattr(transport, "socket"):
        setattr(transport, "doRead", MethodType(tcp.Connection.doRead, transport))


def request_line(channel: Any) -> tuple[bytes, bytes]:
    """
    The method and path of the request an C{HTTPChannel} is reading, once
    its head is in but before the request object is told (when the HTTP
    gate checks the head, before the body arrives).
    """
    return channel._command, channel._path


def parse_forms(request: Any, parse: bool) -> None:
    """
    Whether a C{twisted.web} request parses a form body into its C{args}
    (the API's JSON bodies need none of that work).
    """
    request._parsePOSTFormSubmission = parse
