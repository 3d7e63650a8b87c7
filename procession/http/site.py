"""
The HTTP front end: one Klein app (L{procession.http.web.app}) serving the
health probes here, the worker API and the management API.

Routes speak only to the queue service: the dispatcher (the worker API)
and its management side, L{procession.service.admin.Admin}.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import IResource

from procession.http.admin_api import AdminRoutes
from procession.http.hot_routes import HotRoutes
from procession.http.periodic_api import PeriodicRoutes
from procession.http.ui.periodic import PeriodicUIRoutes
from procession.http.worker_api import WorkerRoutes
from procession.http.workflow_api import WorkflowRoutes
from procession.service.admin import Admin
from procession.service.dispatcher import Dispatcher
from procession.core.errors import ProcessionError
from procession.http.ui.routes import UIRoutes
from procession.http.web import app, json_response


class HTTPServer(
    WorkflowRoutes,
    WorkerRoutes,
    AdminRoutes,
    PeriodicRoutes,
    PeriodicUIRoutes,
    UIRoutes,
):
    """
    The HTTP server of one procession process.

    @param dispatcher: the queue service.
    @param worker_token: the token of worker routes (None: open).
    @param admin_token: the token of management routes (None: open).
    @param max_body: the largest request body, in bytes.
    @param poll_timeout: the longest a long-poll waits, in seconds.
    @param metrics_auth: whether C{/metrics} needs the admin token.
    @param admin: the queue service's management side (default: one over
        C{dispatcher} that knows no TCP workers).
    """

    app = app

    def __init__(
        self,
        dispatcher: Dispatcher,
        worker_token: str | None = None,
        admin_token: str | None = None,
        max_body: int = 1 << 20,
        poll_timeout: float = 15.0,
        metrics_auth: bool = False,
        admin: Admin | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        if admin is None and dispatcher is not None:
            admin = Admin(dispatcher)
        # None only for tests that render pages without a service.
        self.admin = admin
        self.worker_token = worker_token
        self.admin_token = admin_token
        self.max_body = max_body
        self.poll_timeout = poll_timeout
        self.metrics_auth = metrics_auth

    def resource(self) -> IResource:
        """
        The resource to serve: the worker API's hot routes
        (L{procession.http.hot_routes}) in front of the Klein app.
        """
        return HotRoutes(self, self.app.resource())

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: Any) -> bytes:
        """
        The process is alive and serving.
        """
        return json_response(request, {"status": "ok"})

    @app.route("/readyz", methods=["GET"])
    async def readyz(self, request: Any) -> bytes:
        """
        Redis answers: this server can take work.
        """
        if not self.dispatcher.accepting:
            return json_response(request, {"status": "shutting_down"}, 503)
        try:
            await self.admin.redis_round_trip()
        except ProcessionError as e:
            return json_response(
                request, {"status": "unavailable", "error": e.as_dict()}, 503
            )
        return json_response(request, {"status": "ok"})
