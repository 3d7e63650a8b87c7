"""
A small HTTP client for tests against a live server: treq over a pool that
keeps no connections, so nothing is left open when a test ends.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool


class Response:
    """
    A finished response: status, headers and body (decoded as JSON when it
    says so).
    """

    def __init__(self, code: int, headers: Any, content: bytes) -> None:
        self.code = code
        self.headers = headers
        self.content = content

    @property
    def content_type(self) -> str:
        values = self.headers.getRawHeaders(b"content-type") or [b""]
        return values[0].decode("ascii")

    @property
    def json(self) -> Any:
        return json.loads(self.content)

    def __repr__(self) -> str:
        return f"<Response {self.code} {self.content[:300]!r}>"


class HTTP:
    """
    Requests to one server, with a bearer token unless told otherwise.
    """

    def __init__(self, port: int, token: str | None = None) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = HTTPClient(Agent(reactor, pool=pool))

    async def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        token: Any = "default",
    ) -> Response:
        """
        One request; C{token=None} sends none.
        """
        if token == "default":
            token = self.token
        headers = {}
        if token is not None:
            headers[b"Authorization"] = [b"Bearer " + token.encode()]
        kwargs: dict[str, Any] = {"headers": headers}
        if params:
            kwargs["params"] = params
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            headers[b"Content-Type"] = [b"application/json"]
        response = await self.client.request(method, self.base + path, **kwargs)
        content = await treq.content(response)
        return Response(response.code, response.headers, content)

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Response:
        return await self.request("POST", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Response:
        return await self.request("DELETE", path, **kwargs)
