"""
The HTTP front end: a Klein app.

For now it serves the health and readiness probes; the HTTP API and the
operator UI build on it.
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein

from procession.dispatch import Dispatcher
from procession.errors import ProcessionError


def _json(request: Any, body: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body).encode("utf-8")


class HTTPServer:
    """
    The Klein application of one procession server.
    """

    app = Klein()

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: Any) -> bytes:
        """
        The process is alive and serving.
        """
        return _json(request, {"status": "ok"})

    @app.route("/readyz", methods=["GET"])
    async def readyz(self, request: Any) -> bytes:
        """
        Redis answers: this server can take work.
        """
        if not self.dispatcher.accepting:
            return _json(request, {"status": "shutting_down"}, 503)
        try:
            await self.dispatcher.store.ping()
        except ProcessionError as e:
            return _json(
                request, {"status": "unavailable", "error": e.as_dict()}, 503
            )
        return _json(request, {"status": "ok"})
