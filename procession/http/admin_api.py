"""
The management and statistics half of the HTTP API: queues, jobs and
workers as JSON, Prometheus metrics and the OpenAPI description.

Routes register on the one Klein app of L{procession.http.web}; L{AdminRoutes}
is a base of L{procession.http.site.HTTPServer}, whose C{dispatcher} and tokens
the routes use.  Like every front end, they speak to the queue service and
its store only: every state change is one of the store's scripts.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from procession.core.errors import (
    InvalidRequest,
    JobNotFound,
    QueueNotFound,
    WorkerNotFound,
)
from procession.core.job import JOB_ID, QUEUE_NAME, format_time
from procession.core.listing import decode_cursor, encode_cursor, parse_limit
from procession.http.metrics import CONTENT_TYPE, Metrics, Snapshot
from procession.tcp.protocol import WorkerProtocol
from procession.core.stats import Totals
from procession.core.states import KILLABLE, PURGEABLE, RETRYABLE
from procession.http.web import ADMIN, app, authorize, json_response, query

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

    @ivar worker_factory: the TCP listener's factory, when start-up wiring
        gives it: its connections include workers that take no jobs at the
        moment (quieted ones, producers), which the dispatcher does not list.
    """

    dispatcher: Any
    worker_token: str | None
    admin_token: str | None
    worker_factory: Any = None
    _metrics: Metrics | None = None

    def _admin(self, request: Any) -> None:
        authorize(request, ADMIN, self.worker_token, self.admin_token)

    # -- workers on this server

    def _tcp_workers(self) -> list[Any]:
        found = {
            c for c in self.dispatcher.consumers() if isinstance(c, WorkerProtocol)
        }
        if self.worker_factory is not None:
            found.update(
                c for c in self.worker_factory.connections if c.hello and not c.closing
            )
        return sorted(found, key=lambda c: c.number)

    def _pollers(self) -> list[dict[str, Any]]:
        # Dispatcher.recent_pollers() comes with the worker API.
        recent = getattr(self.dispatcher, "recent_pollers", None)
        if recent is None:
            return []
        return [{"kind": "http", **p} for p in recent()]

    # -- statistics

    @app.route("/api/v1/stats", methods=["GET"])
    async def admin_stats(self, request: Any) -> bytes:
        """
        Totals over every queue, throughput and connected workers.
        """
        self._admin(request)
        summaries = await self.dispatcher.store.summaries()
        workers = await self.dispatcher.cluster.workers(self.local_workers())
        tcp = sum(1 for w in workers if w.get("kind") == "tcp")
        # An HTTP worker behind a load balancer polls several servers: count
        # it once.
        http = len({w.get("name") for w in workers if w.get("kind") == "http"})
        totals = Totals.of(summaries, tcp, http)
        return json_response(request, totals.as_json())

    @app.route("/api/v1/queues", methods=["GET"])
    async def admin_queues(self, request: Any) -> bytes:
        """
        Every queue's summary.
        """
        self._admin(request)
        summaries = await self.dispatcher.store.summaries()
        return json_response(request, {"queues": [s.as_json() for s in summaries]})

    async def _known(self, name: str) -> str:
        queue_name(name)
        if name not in await self.dispatcher.store.known_queues():
            raise QueueNotFound(f"no queue {name!r}", queue=name)
        return name

    @app.route("/api/v1/queues/<name>", methods=["GET"])
    async def admin_queue(self, request: Any, name: str) -> bytes:
        """
        One queue's summary.
        """
        self._admin(request)
        await self._known(name)
        summary = await self.dispatcher.store.summary(name)
        return json_response(request, summary.as_json())

    # -- queue actions

    async def _pause(self, request: Any, name: str, paused: bool) -> bytes:
        self._admin(request)
        queue_name(name)
        changed = await self.dispatcher.store.set_paused(name, paused)
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

    @app.route("/api/v1/queues/<name>/jobs", methods=["DELETE"])
    async def admin_purge_queue(self, request: Any, name: str) -> bytes:
        """
        Delete every job of one state from a queue.
        """
        self._admin(request)
        state = required_state(request, PURGEABLE)
        await self._known(name)
        count = await self.dispatcher.store.purge(name, state)
        return json_response(request, {"count": count})

    @app.route("/api/v1/queues/<name>/retry", methods=["POST"])
    async def admin_retry_queue(self, request: Any, name: str) -> bytes:
        """
        Run every scheduled, retrying or dead job of a queue now.
        """
        self._admin(request)
        state = required_state(request, RETRYABLE)
        await self._known(name)
        count = await self.dispatcher.store.retry_all(name, state)
        return json_response(request, {"count": count})

    @app.route("/api/v1/queues/<name>/kill", methods=["POST"])
    async def admin_kill_queue(self, request: Any, name: str) -> bytes:
        """
        Send every queued, scheduled or retrying job of a queue to dead.
        """
        self._admin(request)
        state = required_state(request, KILLABLE)
        await self._known(name)
        count = await self.dispatcher.store.kill_all(name, state)
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
        jobs, position = await self.dispatcher.store.list_jobs(
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
        if not JOB_ID.match(id):
            raise JobNotFound(f"no job {id!r}", id=id)
        store = self.dispatcher.store
        return json_response(request, await store.get_job(await store.locate(id), id))

    async def _job_action(
        self, request: Any, job_id: str, action: str
    ) -> dict[str, Any]:
        self._admin(request)
        if not JOB_ID.match(job_id):
            raise JobNotFound(f"no job {job_id!r}", id=job_id)
        store = self.dispatcher.store
        queue = await store.locate(job_id)
        change = {
            "retry": store.retry_now,
            "kill": store.kill,
            "cancel": store.cancel,
            "delete": store.delete,
        }[action]
        previous = await change(queue, job_id)
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
        workers = await self.dispatcher.cluster.workers(self.local_workers())
        return json_response(request, {"workers": workers})

    def local_workers(self) -> list[dict[str, Any]]:
        """
        The TCP workers connected to this server and its recent HTTP
        pollers, as the workers listing shows them (and this server's
        heartbeat describes them to the others).
        """
        workers: list[dict[str, Any]] = []
        for c in self._tcp_workers():
            workers.append(
                {
                    "kind": "tcp",
                    "name": c.name,
                    "queues": list(c.queues),
                    "credit": c.credit,
                    "jobs": [
                        {"id": job_id, "queue": held.queue}
                        for job_id, held in sorted(c.held.items())
                    ],
                    "connected_at": format_time(int(c.connected_at * 1000)),
                    "quiet": bool(c.quieted),
                }
            )
        workers.extend(self._pollers())
        return workers

    @app.route("/api/v1/workers/<path:name>/quiet", methods=["POST"])
    def admin_quiet_worker(self, request: Any, name: str) -> bytes:
        """
        Send C{QUIET} to a TCP worker: its connection (C{name#N}, as listed)
        or every connection of that worker name.
        """
        self._admin(request)
        workers = self._tcp_workers()
        chosen = [c for c in workers if c.name == name]
        if not chosen:
            chosen = [c for c in workers if c.worker == name]
        if not chosen:
            raise WorkerNotFound(f"no TCP worker {name!r} on this server", name=name)
        for c in chosen:
            c.quiet()
        return json_response(request, {"quieted": [c.name for c in chosen]})

    # -- open routes

    @app.route("/metrics", methods=["GET"])
    async def admin_metrics(self, request: Any) -> bytes:
        """
        Prometheus metrics: open unless C{--metrics-auth} asks for the
        admin token.
        """
        if self.metrics_auth:
            authorize(request, ADMIN, self.worker_token, self.admin_token)
        store = self.dispatcher.store
        clock = store.reactor
        started = clock.seconds()
        await store.ping()
        rtt = clock.seconds() - started
        summaries = await store.summaries()
        snapshot = Snapshot(
            queues=summaries,
            tcp_workers=len(self._tcp_workers()),
            http_workers=len(self._pollers()),
            redis_rtt=rtt,
        )
        if self._metrics is None:
            self._metrics = Metrics()
        body = self._metrics.render(snapshot)
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return body

    @app.route("/api/v1/openapi.json", methods=["GET"])
    def admin_openapi(self, request: Any) -> bytes:
        """
        The OpenAPI 3.1 description of this API (open: no token).
        """
        request.setHeader(b"Content-Type", b"application/json")
        return openapi_document()
