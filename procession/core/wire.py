"""
The native protocol's constants and limits (docs/protocol.rst), shared by
the server's TCP front end and the client so that neither copies them.
"""

from __future__ import annotations

#: The protocol version the server announces in C{HI} and the client needs.
PROTOCOL_VERSION = 1

#: The worker protocol's default port.
DEFAULT_PORT = 7000

#: The default largest frame (C{--max-frame}); the real one comes in C{HI}.
DEFAULT_MAX_FRAME = 1 << 20

#: The most jobs one batch push (C{PUSHB}, C{POST /api/v1/jobs/batch}) holds.
MAX_BATCH = 10_000

#: The longest worker name (C{HELLO}'s C{worker}).
WORKER_NAME_LIMIT = 128

#: The most queues one worker may take jobs from.
MAX_QUEUES = 100

#: The most credit (jobs in hand at once) one connection may grant.
MAX_CREDIT = 10_000
