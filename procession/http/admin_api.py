"""
The management and statistics half of the HTTP API: queues, jobs and
workers as JSON, Prometheus metrics and the OpenAPI description.

Routes register on the one Klein app of L{procession.http.web}; L{AdminRoutes}
is a base of L{procession.http.site.HTTPServer}, whose C{admin} (the queue
service's management side, L{procession.service.admin}) and tokens the
routes use.  Like every front end, they speak to the queue service only.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from procession.core.errors import InvalidRequest
from procession.core.job import QUEUE_NAME
from procession.core.listing import decode_cursor, encode_cursor, parse_limit
from procession.core.states import KILLABLE, PURGEABLE, RETRYABLE
from procession.http.metrics import CONTENT_TYPE, Metrics, Snapshot
from procession.core.queue_limits import parse_limits
from procession.service.admin import Admin
from procession.http.web import (
    ADMIN,
    app,
    authorize,
    json_response,
    query,
    read_json,
)

#: The largest body C{PUT /api/v1/queues/{name}/limits} reads.
MAX_LIMITS_BODY = 4096

_OPENAPI: bytes | None = None


def openapi_document() -> bytes:
    """
    The OpenAPI description shipped with the package (procession/http/openapi.json).
    """
    global _OPENAPI
    if _OPENAPI is None:
        _OPENAPI = files("procession.http").joinpath("openapi.json").read_bytes()
    return _OPENAPI


def queue_name(name: str) -> str:
    """
    Check a queue name from a path or query.
    """
    if not QUEUE_NAME.match(name):
        raise InvalidRequest(
            "a queue name must match [A-Za-z0-9_.:-]{1,128}", field="queue"
        )
    return name


def required_state(request: Any, allowed: tuple[str, ...]) -> str:
    """
    The C{state} query parameter, which must be one of C{allowed}.
    """
    state = query(request, "state")
    if state not in allowed:
        raise InvalidRequest(
            f"state must be one of {', '.join(allowed)}", field="state"
        )
    return state


class AdminRoutes:
    """
    Management, statistics and metrics routes of L{procession.http.site.HTTPServer}.
    """

    admin: Admin
    worker_token: str | None
    admin_token: str | None
    metrics_auth: bool
    _metrics: Metrics | None = None

    def _admin(self, request: Any) -> None:
        authorize(request, ADMIN, self.worker_token, self.admin_token)

    # -- statistics

    @app.route("/api/v1/stats", methods=["GET"])
    async def admin_stats(self, request: Any) -> bytes:
        """
        Totals over every queue, throughput and connected workers.
        """
        self._admin(request)
        _, totals = await self.admin.totals()
        return json_response(request, totals.as_json())

    @app.route("/api/v1/queues", methods=["GET"])
    async def admin_queues(self, request: Any) -> bytes:
        """
        Every queue's summary.
        """
        self._admin(request)
        summaries = await self.admin.summaries()
        return json_response(request, {"queues": [s.as_json() for s in summaries]})

    async def _known(self, name: str) -> str:
        return await self.admin.known_queue(queue_name(name))

    @app.route("/api/v1/queues/<name>", methods=["GET"])
    async def admin_queue(self, request: Any, name: str) -> bytes:
        """
        One queue's summary.
        """
        self._admin(request)
        await self._known(name)
        summary = await self.admin.summary(name)
        return json_response(request, summary.as_json())

    # -- queue actions

    async def _pause(self, request: Any, name: str, paused: bool) -> bytes:
        self._admin(request)
        queue_name(name)
        changed = await self.admin.set_paused(name, paused)
        return json_response(
            request, {"name": name, "paused": paused, "changed": changed}
        )

    @app.route("/api/v1/queues/<name>/pause", methods=["POST"])
    async def admin_pause_queue(self, request: Any, name: str) -> bytes:
        """
        Pause a queue: it takes pushes but hands out no jobs.  A queue that
        has no jobs yet may be paused ahead of them.
        """
        return await self._pause(request, name, True)

    @app.route("/api/v1/queues/<name>/resume", methods=["POST"])
    async def admin_resume_queue(self, request: Any, name: str) -> bytes:
        """
        Resume a paused queue.
        """
        return await self._pause(request, name, False)

    @app.route("/api/v1/queues/<name>/limits", methods=["GET"])
    async def admin_queue_limits(self, request: Any, name: str) -> bytes:
        """
        A queue's limits and how they stand now (docs/limits.rst).  A queue
        without jobs yet has limits too (none, or those set ahead of them).
        """
        self._admin(request)
        queue_name(name)
        status = await self.admin.limit_status(name)
        return json_response(request, status.as_json())

    @app.route("/api/v1/queues/<name>/limits", methods=["PUT"])
    async def admin_set_queue_limits(self, request: Any, name: str) -> bytes:
        """
        Replace a queue's limits: what the body leaves out is not limited.
        """
        self._admin(request)
        queue_name(name)
        limits = parse_limits(read_json(request, MAX_LIMITS_BODY, {}))
        status = await self.admin.set_limits(name, limits)
        return json_response(request, status.as_json())

    @app.route("/api/v1/queues/<name>/jobs", methods=["DELETE"])
    async def admin_purge_queue(self, request: Any, name: str) -> bytes:
        """
        Delete every job of one state from a queue.
        """
        self._admin(request)
        state = required_state(request, PURGEABLE)
        await self._known(name)
        count = await self.admin.bulk("delete", name, state)
        return json_response(request, {"count": count})

    @app.route("/api/v1/queues/<name>/retry", methods=["POST"])
    async def admin_retry_queue(self, request: Any, name: str) -> bytes:
        """
        Run every scheduled, retrying or dead job of a queue now.
        """
        self._admin(request)
        state = required_state(request, RETRYABLE)
        await self._known(name)
        count = await self.admin.bulk("retry", name, state)
        return json_response(request, {"count": count})

    @app.route("/api/v1/queues/<name>/kill", methods=["POST"])
    async def admin_kill_queue(self, request: Any, name: str) -> bytes:
        """
        Send every queued, scheduled or retrying job of a queue to dead.
        """
        self._admin(request)
        state = required_state(request, KILLABLE)
        await self._known(name)
        count = await self.admin.bulk("kill", name, state)
        return json_response(request, {"count": count})

    # -- jobs

    @app.route("/api/v1/jobs", methods=["GET"])
    async def admin_list_jobs(self, request: Any) -> bytes:
        """
        A page of jobs, newest first, and the cursor of the next page.
        """
        self._admin(request)
        queue = query(request, "queue")
        if queue is not None:
            queue_name(queue)
        cursor = query(request, "cursor")
        limit = parse_limit(query(request, "limit"))
        jobs, position = await self.admin.list_jobs(
            queue,
            decode_cursor(cursor) if cursor is not None else None,
            limit,
            state=query(request, "state"),
            job_type=query(request, "type"),
        )
        return json_response(
            request,
            {
                "jobs": jobs,
                "cursor": encode_cursor(position) if position is not None else None,
            },
        )

    @app.route("/api/v1/jobs/<path:id>", methods=["GET"])
    async def admin_get_job(self, request: Any, id: str) -> bytes:
        """
        Everything about a job, with its error history.
        """
        self._admin(request)
        return json_response(request, await self.admin.get_job(id))

    async def _job_action(
        self, request: Any, job_id: str, action: str
    ) -> dict[str, Any]:
        self._admin(request)
        queue, previous = await self.admin.job_action(action, job_id)
        return {"id": job_id, "queue": queue, "previous_state": previous}

    @app.route("/api/v1/jobs/<path:id>/retry", methods=["POST"])
    async def admin_retry_job(self, request: Any, id: str) -> bytes:
        """
        Run a scheduled, retrying or dead job now.
        """
        reply = await self._job_action(request, id, "retry")
        return json_response(request, {**reply, "state": "queued"})

    @app.route("/api/v1/jobs/<path:id>/kill", methods=["POST"])
    async def admin_kill_job(self, request: Any, id: str) -> bytes:
        """
        Send an unfinished job to dead.
        """
        reply = await self._job_action(request, id, "kill")
        return json_response(request, {**reply, "state": "dead"})

    @app.route("/api/v1/jobs/<path:id>/cancel", methods=["POST"])
    async def admin_cancel_job(self, request: Any, id: str) -> bytes:
        """
        Cancel an unfinished job; a running job's worker will see its ack
        refused.
        """
        reply = await self._job_action(request, id, "cancel")
        return json_response(request, {**reply, "state": "cancelled"})

    @app.route("/api/v1/jobs/<path:id>", methods=["DELETE"])
    async def admin_delete_job(self, request: Any, id: str) -> bytes:
        """
        Remove a job and its history, whatever its state.
        """
        reply = await self._job_action(request, id, "delete")
        return json_response(request, {**reply, "deleted": True})

    # -- workers

    @app.route("/api/v1/workers", methods=["GET"])
    async def admin_workers(self, request: Any) -> bytes:
        """
        The TCP workers connected to every live server of the cluster and
        their recent HTTP pollers, each with its C{server}.
        """
        self._admin(request)
        workers = await self.admin.cluster_workers()
        return json_response(request, {"workers": workers})

    @app.route("/api/v1/workers/<path:name>/quiet", methods=["POST"])
    def admin_quiet_worker(self, request: Any, name: str) -> bytes:
        """
        Send C{QUIET} to a TCP worker: its connection (C{name#N}, as listed)
        or every connection of that worker name.
        """
        self._admin(request)
        return json_response(request, {"quieted": self.admin.quiet_worker(name)})

    # -- open routes

    @app.route("/metrics", methods=["GET"])
    async def admin_metrics(self, request: Any) -> bytes:
        """
        Prometheus metrics: open unless C{--metrics-auth} asks for the
        admin token.
        """
        if self.metrics_auth:
            authorize(request, ADMIN, self.worker_token, self.admin_token)
        rtt = await self.admin.redis_round_trip()
        summaries = await self.admin.summaries()
        snapshot = Snapshot(
            queues=summaries,
            tcp_workers=len(self.admin.tcp_workers()),
            http_workers=len(self.admin.http_workers()),
            redis_rtt=rtt,
            limits=await self.admin.limit_statuses([q.name for q in summaries]),
            periodic=await self._periodic_entries(),
        )
        if self._metrics is None:
            self._metrics = Metrics()
        body = self._metrics.render(snapshot)
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return body

    async def _periodic_entries(self) -> list[dict[str, Any]]:
        # The periodic service, which start-up wiring gives the HTTP server
        # (procession.http.periodic_api.PeriodicRoutes).
        periodic = getattr(self, "periodic", None)
        if periodic is None:
            return []
        entries: list[dict[str, Any]] = await periodic.list()
        return entries

    @app.route("/api/v1/openapi.json", methods=["GET"])
    def admin_openapi(self, request: Any) -> bytes:
        """
        The OpenAPI 3.1 description of this API (open: no token).
        """
        request.setHeader(b"Content-Type", b"application/json")
        return openapi_document()
