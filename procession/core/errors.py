"""
Domain errors.

Each error carries the stable C{code} that the wire protocol puts in its
C{ERR} frames and the HTTP API in its error bodies, so the mapping from a
failure to what a client sees lives here and nowhere else.
"""

from __future__ import annotations


class ProcessionError(Exception):
    """
    Base of every error a client may be told about.
    """

    code = "internal"
    http_status = 500

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

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
