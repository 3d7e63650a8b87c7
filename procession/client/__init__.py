"""
The application side of procession: L{Client} (a blocking client of the TCP
protocol), the worker runner (C{python -m procession.client.worker}) and the
operator's command line (C{procession}).

Standard library and L{procession.core} only: no Twisted, nothing of the
server, so an application imports it cheaply.  Its errors are the
server's own (L{procession.core.errors}); C{Unauthorized} and C{NotFound}
are the client's names for C{NotAuthenticated} and C{JobNotFound}.
"""

from procession.client.client import (
    Batch,
    Pushed,
    Client,
    Connection,
    ConnectionClosed,
    NotFound,
    Pipeline,
    Unauthorized,
    make_job,
    resolve_address,
)
from procession.core.errors import (
    BadFrame,
    BatchExists,
    BatchNotFound,
    BatchNotOpen,
    ConnectionFailed,
    IllegalState,
    JobCancelled,
    JobFailed,
    PeriodicNotFound,
    WaitTimeout,
    FrameTooLarge,
    InvalidJob,
    InvalidRequest,
    JobTooLarge,
    LeaseLost,
    NotHeld,
    OutOfOrder,
    ProcessionError,
    ProtocolViolation,
    ShuttingDown,
    StoreUnavailable,
    TooManyConnections,
    UnknownVerb,
    error_from_body,
)

__all__ = [
    "BadFrame",
    "Batch",
    "BatchExists",
    "BatchNotFound",
    "BatchNotOpen",
    "IllegalState",
    "JobCancelled",
    "JobFailed",
    "Pushed",
    "WaitTimeout",
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
    "PeriodicNotFound",
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
