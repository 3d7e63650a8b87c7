"""
The application side of procession: L{Client} (a blocking client of the TCP
protocol), the worker runner (C{python -m procession.client.worker}) and the
operator's command line (C{procession}).

Standard library and L{procession.core} only: no Twisted, nothing of the
server, so an application imports it cheaply.
"""

from procession.client.client import (
    BadFrame,
    Client,
    ConnectionClosed,
    ConnectionFailed,
    FrameTooLarge,
    InvalidJob,
    InvalidRequest,
    JobTooLarge,
    LeaseLost,
    NotFound,
    NotHeld,
    OutOfOrder,
    Pipeline,
    ProcessionError,
    ProtocolViolation,
    ShuttingDown,
    StoreUnavailable,
    TooManyConnections,
    Unauthorized,
    UnknownVerb,
    Connection,
    error_from_body,
    make_job,
    resolve_address,
)

__all__ = [
    "BadFrame",
    "Client",
    "Connection",
    "ConnectionClosed",
    "ConnectionFailed",
    "FrameTooLarge",
    "InvalidJob",
    "InvalidRequest",
    "JobTooLarge",
    "LeaseLost",
    "NotFound",
    "NotHeld",
    "OutOfOrder",
    "Pipeline",
    "ProcessionError",
    "ProtocolViolation",
    "ShuttingDown",
    "StoreUnavailable",
    "TooManyConnections",
    "Unauthorized",
    "UnknownVerb",
    "error_from_body",
    "make_job",
    "resolve_address",
]
