"""
Domain errors: one hierarchy for the server and the client.

Each error carries the stable C{code} that the wire protocol puts in its
C{ERR} frames and the HTTP API in its error bodies, so the mapping from a
failure to what a client sees lives here and nowhere else.  The server
raises them; the client (L{procession.client}) turns an C{ERR} body back
into the same class (L{error_from_body}).
"""

from __future__ import annotations

from typing import Any, Mapping


class ProcessionError(Exception):
    """
    Base of every error a client may be told about.

    @ivar code: the protocol's error code, e.g. C{"invalid_job"}.
    @ivar message: the human-readable message.
    @ivar details: the other fields of the error's body (C{field},
        C{index}, C{id}, C{limit}...).
    """

    code = "internal"
    http_status = 500

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
        **more: Any,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details: dict[str, Any] = {**(details or {}), **more}

    def __str__(self) -> str:
        # The code first, as a client reading a log needs it.
        return f"{self.code}: {self.message}" if self.message else self.code

    @property
    def field(self) -> str | None:
        """
        The offending field, when one is named.
        """
        return self.details.get("field")

    @property
    def index(self) -> int | None:
        """
        The offending job's position in a batch, when it is one.
        """
        return self.details.get("index")

    def as_dict(self) -> dict[str, object]:
        """
        The error as the JSON object both front ends send.
        """
        body: dict[str, object] = {"code": self.code, "message": self.message}
        body.update(self.details)
        return body


class InvalidJob(ProcessionError):
    """
    A submitted job breaks the job schema; C{field} names the culprit.
    """

    code = "invalid_job"
    http_status = 400


class InvalidRequest(ProcessionError):
    """
    A request is well-framed but its content is wrong.
    """

    code = "invalid_request"
    http_status = 400


class BadFrame(ProcessionError):
    """
    A protocol frame that cannot be parsed (bad UTF-8, bad JSON).
    """

    code = "bad_frame"
    http_status = 400


class UnknownVerb(ProcessionError):
    """
    A frame whose verb the protocol does not know.
    """

    code = "unknown_verb"
    http_status = 400


class FrameTooLarge(ProcessionError):
    """
    A frame or body over the configured limit.
    """

    code = "frame_too_large"
    http_status = 413


class JobTooLarge(ProcessionError):
    """
    A job whose encoded size is over C{--max-job-size}.
    """

    code = "job_too_large"
    http_status = 413


class NotAuthenticated(ProcessionError):
    """
    A request without valid credentials.
    """

    code = "unauthorized"
    http_status = 401


class OutOfOrder(ProcessionError):
    """
    A verb sent before the state it needs (before HELLO, ACK before READY...).
    """

    code = "out_of_order"
    http_status = 400


class JobNotFound(ProcessionError):
    """
    No job has this id (or it has been removed by retention).
    """

    code = "not_found"
    http_status = 404


class NotHeld(ProcessionError):
    """
    A worker acks, fails or extends a job that this connection does not hold.
    """

    code = "not_held"
    http_status = 409


class LeaseLost(ProcessionError):
    """
    The lease on a job expired or was revoked and may belong to another
    worker now; the late holder's ack, fail or extend is refused.
    """

    code = "lease_lost"
    http_status = 409


class IllegalState(ProcessionError):
    """
    The change asked for does not apply to the job's current state.
    """

    code = "illegal_state"
    http_status = 409


class StoreUnavailable(ProcessionError):
    """
    Redis did not answer in time; the request may be retried.
    """

    code = "store_unavailable"
    http_status = 503


class TooManyConnections(ProcessionError):
    """
    A listener is at its connection limit; the connection is closed.
    """

    code = "too_many_connections"
    http_status = 503


class ShuttingDown(ProcessionError):
    """
    The server is stopping and takes no new work.
    """

    code = "shutting_down"
    http_status = 503


class Forbidden(ProcessionError):
    """
    Valid credentials of the wrong kind (a worker token on an admin route).
    """

    code = "forbidden"
    http_status = 403


class MalformedJSON(ProcessionError):
    """
    A request body that is not valid JSON.
    """

    code = "malformed_json"
    http_status = 400


class RouteNotFound(ProcessionError):
    """
    No route has this path.
    """

    code = "no_route"
    http_status = 404


class MethodNotAllowed(ProcessionError):
    """
    The route exists but not with this method.
    """

    code = "method_not_allowed"
    http_status = 405


class QueueNotFound(ProcessionError):
    """
    No queue has this name (it never held a job and was never paused).
    """

    code = "queue_not_found"
    http_status = 404


class PeriodicNotFound(ProcessionError):
    """
    No periodic entry has this name.
    """

    code = "periodic_not_found"
    http_status = 404


class WorkerNotFound(ProcessionError):
    """
    No worker connected to this server has this name.
    """

    code = "worker_not_found"
    http_status = 404


class JobCancelled(LeaseLost):
    """
    The job was cancelled while a worker held it: the worker should stop
    (its ack, fail, extend or progress is refused with this).
    """

    code = "cancelled"
    http_status = 409


class BatchNotFound(ProcessionError):
    """
    No batch has that id (or it has expired).
    """

    code = "batch_not_found"
    http_status = 404


class BatchNotOpen(ProcessionError):
    """
    The batch takes no jobs now: it is committed (reopen it from one of its
    jobs) or done.
    """

    code = "batch_not_open"
    http_status = 409


class BatchExists(ProcessionError):
    """
    A batch with that id exists already.
    """

    code = "batch_exists"
    http_status = 409


class CrossOrigin(ProcessionError):
    """
    A request that would change state, sent by a page of another site (its
    C{Origin} is not this server's).
    """

    code = "cross_origin"
    http_status = 403


class HostNotAllowed(ProcessionError):
    """
    A request naming a C{Host} this server does not answer for (DNS
    rebinding), see C{--allowed-hosts}.
    """

    code = "host_not_allowed"
    http_status = 421


class UnsupportedMediaType(ProcessionError):
    """
    An API write whose body is not declared C{application/json}.
    """

    code = "unsupported_media_type"
    http_status = 415


class ConnectionFailed(ProcessionError, ConnectionError):
    """
    The client could not reach the server, or had no answer, within the
    time allowed (C{retry_for}); C{__cause__} holds the last network error.
    Never sent by the server.
    """

    code = "connection_failed"


class ProtocolViolation(ProcessionError):
    """
    The client got something the protocol does not allow (not a
    procession server, or a newer protocol).  Never sent by the server.
    """

    code = "protocol_violation"


class JobFailed(ProcessionError):
    """
    The client's C{Pushed.wait}: the job finished without completing
    (C{state} is C{dead} or C{cancelled}); C{error} is its last error, if
    any.  Never sent by the server.
    """

    code = "job_failed"

    @property
    def state(self) -> str | None:
        """
        The state the job finished in.
        """
        return self.details.get("state")

    @property
    def error(self) -> Any:
        """
        The job's last error, if any.
        """
        return self.details.get("error")


class WaitTimeout(ProcessionError, TimeoutError):
    """
    The client's C{Pushed.wait}: the job had not finished when the time ran
    out.  Never sent by the server.
    """

    code = "wait_timeout"


def _codes() -> dict[str, type[ProcessionError]]:
    table: dict[str, type[ProcessionError]] = {}
    todo = list(ProcessionError.__subclasses__())
    while todo:
        cls = todo.pop(0)
        table.setdefault(cls.code, cls)
        todo.extend(cls.__subclasses__())
    return table


#: The error class of each code.
ERRORS: dict[str, type[ProcessionError]] = _codes()


def error_from_body(body: Any) -> ProcessionError:
    """
    The exception for the decoded body of an C{ERR} frame or an HTTP error
    (C{{"code": ..., "message": ..., more details}}): the class of its
    code, else L{ProcessionError} with that code.
    """
    if not isinstance(body, dict):
        return ProcessionError(str(body))
    code = str(body.get("code", "internal"))
    details = {k: v for k, v in body.items() if k not in ("code", "message")}
    cls = ERRORS.get(code, ProcessionError)
    return cls(str(body.get("message", "")), code=code, details=details)
