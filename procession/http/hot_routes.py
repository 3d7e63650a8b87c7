"""
The worker API's hot routes served without Klein: a push of one job or
a batch (C{POST /api/v1/jobs}), the long poll (C{GET /api/v1/jobs/next})
and the ack (C{POST /api/v1/jobs/{id}/ack}).

Klein's routing (werkzeug's URL map, its adapters, its Deferred and
coroutine layers around every handler and error handler) cost about a
fifth of an HTTP push's server time, for routes whose method and path a
comparison or two recognise.  L{HotRoutes} sits in front of the Klein
resource: it recognises those three, calls the very route functions Klein
would (L{procession.http.worker_api.WorkerRoutes}), and answers their
outcome, or their error through L{procession.http.web.failure_response},
as Klein's error handlers do; every other request goes to Klein as it is.
So the checks, bodies, statuses and headers are the routes' own either
way; the gate (L{procession.http.gate}) has checked the head before.

One difference: Klein cancels a route's Deferred when its client goes
away.  Here only the long poll is cancelled (its wait ends and what it
took goes back to the queue, as through Klein); a push or an ack that
was sent to Redis runs to its end (waking consumers, forgetting the
lease) and its answer is dropped.

This module knows the three routes' paths and nothing else of the API.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from procession.http.web import failure_response
from procession.http.worker_api import WorkerRoutes

log = Logger()

PUSH_PATH = b"/api/v1/jobs"
NEXT_PATH = b"/api/v1/jobs/next"
# An ack's path is /api/v1/jobs/<id>/ack: as segments (decoded, as
# twisted.web splits them into request.postpath), these around the id.
_JOBS_SEGMENTS = [b"api", b"v1", b"jobs"]
_ACK_SEGMENT = b"ack"


def ack_job_id(segments: list[bytes]) -> str | None:
    """
    The job id of an ack's path, from its decoded segments
    (C{request.postpath}), as Klein's route C{/api/v1/jobs/<path:id>/ack}
    matches it; L{None} for any other path, or an id this module leaves to
    Klein (empty, or beginning or ending with C{/}).
    """
    if (
        len(segments) < 5
        or segments[-1] != _ACK_SEGMENT
        or segments[:3] != _JOBS_SEGMENTS
    ):
        return None
    middle = segments[3:-1]
    if not middle[0] or not middle[-1]:
        return None
    raw = middle[0] if len(middle) == 1 else b"/".join(middle)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


class HotRoutes(Resource):
    """
    The HTTP listener's root resource: the hot routes of C{routes} (the
    server, L{procession.http.site.HTTPServer}) answered here, everything
    else by C{fallback} (its Klein resource).
    """

    isLeaf = True

    def __init__(self, routes: WorkerRoutes, fallback: IResource) -> None:
        super().__init__()
        self.routes = routes
        self.fallback = fallback

    def render(self, request: Any) -> Any:
        method = request.method
        if method == b"POST":
            path = request.path
            if path == PUSH_PATH:
                return self._serve(request, self.routes.worker_push)
            job_id = ack_job_id(request.postpath)
            if job_id is not None:
                return self._serve(request, self.routes.worker_ack, job_id)
        elif method == b"GET" and request.path == NEXT_PATH:
            return self._serve(request, self.routes.worker_next, waits=True)
        return self.fallback.render(request)

    def _serve(
        self,
        request: Any,
        route: Callable[..., defer.Deferred[bytes]],
        *args: Any,
        waits: bool = False,
    ) -> Any:
        try:
            d = route(request, *args)
        except Exception:
            _answer(failure_response(request, Failure()), request)
            return NOT_DONE_YET
        if waits:
            request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(
            _answer, _failed, callbackArgs=(request,), errbackArgs=(request,)
        )
        return NOT_DONE_YET


def _answer(body: bytes, request: Any) -> None:
    # A request whose client has gone has no channel (twisted.web's
    # Request.connectionLost): nothing to write.
    if request.channel is None:
        return
    request.write(body)
    request.finish()


def _failed(failure: Failure, request: Any) -> None:
    if request.channel is None:
        if not failure.check(defer.CancelledError):
            log.failure("Unhandled error in {path}", failure, path=request.path)
        return
    try:
        body = failure_response(request, failure)
    except Exception:
        log.failure("Could not answer the error of {path}", path=request.path)
        request.setResponseCode(500)
        body = b""
    _answer(body, request)
