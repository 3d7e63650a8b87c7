"""
The periodic entries in the HTTP API: list, read, create or replace,
delete, pause, resume and run now (docs/http-api.rst, "Periodic jobs").

L{PeriodicRoutes} is a base of L{procession.http.site.HTTPServer}; its
routes speak to the periodic service (L{procession.service.periodic}) only.
"""

from __future__ import annotations

from typing import Any

from procession.core.errors import StoreUnavailable
from procession.http.web import ADMIN, app, authorize, json_response, read_json


class PeriodicRoutes:
    """
    The C{/api/v1/periodic} routes.

    @ivar periodic: the periodic service, which start-up wiring sets.
    """

    periodic: Any = None
    worker_token: str | None
    admin_token: str | None
    max_body: int

    def _service(self, request: Any) -> Any:
        authorize(request, ADMIN, self.worker_token, self.admin_token)
        if self.periodic is None:
            raise StoreUnavailable("this server runs no periodic service")
        return self.periodic

    @app.route("/api/v1/periodic", methods=["GET"])
    async def periodic_list(self, request: Any) -> bytes:
        """
        Every periodic entry, with its next and last runs.
        """
        entries = await self._service(request).list()
        return json_response(request, {"periodic": entries})

    @app.route("/api/v1/periodic/<name>", methods=["GET"])
    async def periodic_get(self, request: Any, name: str) -> bytes:
        """
        One periodic entry.
        """
        return json_response(request, await self._service(request).get(name))

    @app.route("/api/v1/periodic/<name>", methods=["PUT"])
    async def periodic_put(self, request: Any, name: str) -> bytes:
        """
        Create (201) or replace (200) a periodic entry.
        """
        service = self._service(request)
        body = read_json(request, self.max_body)
        outcome, entry = await service.put(name, body)
        return json_response(request, entry, 201 if outcome == "created" else 200)

    @app.route("/api/v1/periodic/<name>", methods=["DELETE"])
    async def periodic_delete(self, request: Any, name: str) -> bytes:
        """
        Remove a periodic entry (jobs it pushed stay).
        """
        await self._service(request).delete(name)
        return json_response(request, {"name": name, "deleted": True})

    @app.route("/api/v1/periodic/<name>/pause", methods=["POST"])
    async def periodic_pause(self, request: Any, name: str) -> bytes:
        """
        Pause a periodic entry: its ticks pass without jobs.
        """
        return json_response(
            request, await self._service(request).set_paused(name, True)
        )

    @app.route("/api/v1/periodic/<name>/resume", methods=["POST"])
    async def periodic_resume(self, request: Any, name: str) -> bytes:
        """
        Resume a paused periodic entry from its next tick.
        """
        return json_response(
            request, await self._service(request).set_paused(name, False)
        )

    @app.route("/api/v1/periodic/<name>/run", methods=["POST"])
    async def periodic_run(self, request: Any, name: str) -> bytes:
        """
        Push the entry's job now, outside its schedule.
        """
        reply = await self._service(request).run_now(name)
        return json_response(request, reply, 201)
