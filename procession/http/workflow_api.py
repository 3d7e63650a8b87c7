"""
The workflow routes of the HTTP API: a job's result (a long poll until it
finishes), progress reports from the worker holding a job, and batches
(docs/http-api.rst, "Workflows"; docs/workflows.rst).

Like every front end, these routes speak only to the queue service
(C{dispatcher.workflows}).
"""

from __future__ import annotations

import math
from typing import Any

from procession.core.errors import BatchNotFound, InvalidRequest, JobNotFound
from procession.core.job import BATCH_ID, JOB_ID, parse_batch_spec
from procession.core.listing import parse_limit
from procession.http.web import ADMIN, WORKER, app, authorize, json_response, query
from procession.http.worker_api import lease_elsewhere, lease_of, request_object
from procession.service.dispatcher import Dispatcher
from procession.service.workflows import parse_await_wait, parse_progress


def _wait_param(text: str | None, cap: float) -> float:
    """
    The C{wait} parameter of a result request: seconds (default 0: answer
    at once), at most C{cap}.
    """
    if text is None:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    return parse_await_wait(value, cap)


def _batch_id(batch_id: str) -> str:
    if not BATCH_ID.match(batch_id):
        raise BatchNotFound(f"no batch {batch_id!r}", id=batch_id)
    return batch_id


class WorkflowRoutes:
    """
    The workflow routes of L{procession.http.site.HTTPServer}: C{self} is
    that server.
    """

    dispatcher: Dispatcher
    worker_token: str | None
    admin_token: str | None
    max_body: int
    poll_timeout: float
    admin: Any

    def _flow_auth(self, request: Any, kind: str = WORKER) -> None:
        authorize(request, kind, self.worker_token, self.admin_token)

    @app.route("/api/v1/jobs/<path:id>/result", methods=["GET"])
    async def flow_result(self, request: Any, id: str) -> bytes:
        """
        A job's state and result or last error; with C{wait}, a long poll
        that answers as soon as the job finishes.
        """
        self._flow_auth(request)
        if not JOB_ID.match(id):
            raise JobNotFound(f"no job {id!r}", id=id)
        wait = _wait_param(query(request, "wait"), self.poll_timeout)
        outcome = await self.dispatcher.workflows.await_job(id, wait)
        return json_response(request, outcome)

    @app.route("/api/v1/jobs/<path:id>/progress", methods=["POST"])
    async def flow_progress(self, request: Any, id: str) -> bytes:
        """
        The worker holding a job says how far it has got: C{{"lease",
        "progress", "message"}}.
        """
        self._flow_auth(request)
        body = request_object(request, self.max_body)
        lease, queue = lease_of(body, id)
        percent, message = parse_progress(body)
        try:
            await self.dispatcher.workflows.progress(queue, id, lease, percent, message)
        except JobNotFound as e:
            await lease_elsewhere(self.admin, e, id, queue)
            raise
        return json_response(request, {"id": id})

    @app.route("/api/v1/batches", methods=["POST"])
    async def flow_new_batch(self, request: Any) -> bytes:
        """
        Create an open batch: C{{"id"?, "description", "on_success",
        "on_complete"}}.
        """
        self._flow_auth(request)
        body = request_object(request, self.max_body)
        if "action" in body:
            raise InvalidRequest("unknown field 'action'", field="action")
        spec = parse_batch_spec(body, self.dispatcher.now_ms(), self.max_body)
        batch = await self.dispatcher.workflows.create_batch(spec)
        return json_response(request, batch, 201)

    @app.route("/api/v1/batches", methods=["GET"])
    async def flow_list_batches(self, request: Any) -> bytes:
        """
        The newest batches, newest first.
        """
        self._flow_auth(request, ADMIN)
        limit = parse_limit(query(request, "limit"))
        batches = await self.dispatcher.workflows.list_batches(limit)
        return json_response(request, {"batches": batches})

    @app.route("/api/v1/batches/<id>", methods=["GET"])
    async def flow_get_batch(self, request: Any, id: str) -> bytes:
        """
        A batch's state, counts and callbacks.
        """
        self._flow_auth(request)
        batch = await self.dispatcher.workflows.get_batch(_batch_id(id))
        return json_response(request, batch)

    @app.route("/api/v1/batches/<id>/jobs", methods=["GET"])
    async def flow_batch_jobs(self, request: Any, id: str) -> bytes:
        """
        The jobs of a batch (the first C{limit} by id).
        """
        self._flow_auth(request, ADMIN)
        limit = parse_limit(query(request, "limit"))
        jobs = await self.dispatcher.workflows.batch_jobs(_batch_id(id), limit)
        return json_response(request, {"jobs": jobs})

    @app.route("/api/v1/batches/<id>/commit", methods=["POST"])
    async def flow_commit_batch(self, request: Any, id: str) -> bytes:
        """
        Commit a batch: its callbacks fire once every job has finished.
        """
        self._flow_auth(request)
        batch = await self.dispatcher.workflows.commit_batch(_batch_id(id))
        return json_response(request, batch)

    @app.route("/api/v1/batches/<id>/open", methods=["POST"])
    async def flow_open_batch(self, request: Any, id: str) -> bytes:
        """
        Reopen a committed batch that is not done (from one of its jobs),
        to add jobs to it; commit it again after.
        """
        self._flow_auth(request)
        batch = await self.dispatcher.workflows.open_batch(_batch_id(id))
        return json_response(request, batch)
