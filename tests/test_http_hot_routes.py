"""
Tests of L{procession.http.hot_routes}: the worker API's push, long poll
and ack served without Klein answer exactly as the Klein routes do, and
everything else still goes through Klein.

Each answer of the hot routes is set beside the answer to the same request
on a second listener of the same server whose site has the Klein resource
alone (the HTTP listener as it was before the hot routes), over real
sockets.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import treq
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase

from procession.http.hot_routes import HotRoutes, ack_job_id
from procession.http.limits import HTTPConnectionLimit
from procession.http.web import Site, app
from tests.client import ServerFixture
from tests.http import HTTP, Response

TOKEN = "worker-secret"


def klein_match(segments: list[bytes]) -> tuple[str, dict[str, Any]] | None:
    """
    What Klein's URL map makes of a POST to the path of these (decoded)
    segments: the endpoint and its arguments, or L{None} for no route.
    """
    from werkzeug.exceptions import HTTPException

    path_info = b"/" + b"/".join(segments)
    try:
        text = path_info.decode("utf-8")
    except UnicodeDecodeError:
        return None
    adapter = app.url_map.bind("localhost", path_info=text, default_method="POST")
    try:
        endpoint, args = adapter.match(method="POST")
    except HTTPException:
        return None
    return endpoint, args


segment = st.one_of(
    st.sampled_from([b"", b"ack", b"jobs", b"next", b"retry", b"api", b"v1"]),
    st.text(min_size=0, max_size=8).map(lambda t: t.encode("utf-8")),
    st.binary(max_size=4),
)


class AckPathTests(SynchronousTestCase):
    """
    L{ack_job_id} recognises an ack's path as Klein's route does.
    """

    @given(st.lists(segment, max_size=4))
    def test_same_as_klein(self, middle: list[bytes]) -> None:
        segments = [b"api", b"v1", b"jobs", *middle, b"ack"]
        job_id = ack_job_id(segments)
        if job_id is None:
            return
        self.assertEqual(klein_match(segments), ("worker_ack", {"id": job_id}))

    @given(st.lists(segment, max_size=7))
    def test_only_acks(self, segments: list[bytes]) -> None:
        job_id = ack_job_id(segments)
        if job_id is not None:
            self.assertEqual(klein_match(segments), ("worker_ack", {"id": job_id}))

    def test_examples(self) -> None:
        for segments, expected in (
            ([b"api", b"v1", b"jobs", b"j1", b"ack"], "j1"),
            ([b"api", b"v1", b"jobs", b"a", b"b", b"ack"], "a/b"),
            ([b"api", b"v1", b"jobs", "é".encode(), b"ack"], "é"),
            ([b"api", b"v1", b"jobs", b"ack"], None),
            ([b"api", b"v1", b"jobs", b"", b"ack"], None),
            ([b"api", b"v1", b"jobs", b"j1", b"fail"], None),
            ([b"api", b"v2", b"jobs", b"j1", b"ack"], None),
        ):
            self.assertEqual(ack_job_id(segments), expected, segments)


async def send(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[bytes, list[bytes]] | None = None,
) -> Response:
    """
    One request as it is, on a connection of its own.
    """
    http = HTTP(port)
    response = await http.client.request(
        method, http.base + path, data=body, headers=headers or {}
    )
    return Response(response.code, response.headers, await treq.content(response))


def answer(response: Response) -> tuple[int, dict[bytes, list[bytes]], Any]:
    """
    A response as it can be compared: status, headers but the date, body
    (decoded when JSON, less what differs between two requests: ids and
    leases).
    """
    headers = {
        name.lower(): values
        for name, values in response.headers.getAllRawHeaders()
        if name.lower() != b"date"
    }
    body: Any = response.content
    if response.content_type == "application/json" and body:
        body = json.loads(body)
    return response.code, headers, body


class HotRoutesTests(TestCase):
    """
    A server with a worker token and a 2,000-byte job limit, and a second
    listener serving its Klein resource alone.
    """

    async def setUp(self) -> None:
        self.server = await ServerFixture(
            self,
            "--token",
            TOKEN,
            "--max-job-size",
            "2000",
            "--poll-timeout",
            "1",
        ).start()
        service = self.server.service
        site = service.http_limit.wrappedFactory
        self.hot = site.resource
        self.assertIsInstance(self.hot, HotRoutes)
        self.fallbacks: list[bytes] = []
        fallback = self.hot.fallback

        class Counting:
            def render(inner, request: Any) -> Any:
                self.fallbacks.append(request.path)
                return fallback.render(request)

        self.hot.fallback = Counting()
        klein_site = Site(
            service.http_server.app.resource(), gate=site.gate, clock=reactor
        )
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            HTTPConnectionLimit(klein_site, 100, reactor)
        )
        self.addCleanup(port.stopListening)
        self.ports = {"hot": self.server.http_port, "klein": port.getHost().port}

    async def both(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        token: str | None = TOKEN,
        content_type: bytes | None = b"application/json",
    ) -> dict[str, Response]:
        """
        The same request to the hot routes and to Klein alone.
        """
        headers: dict[bytes, list[bytes]] = {}
        if token is not None:
            headers[b"Authorization"] = [b"Bearer " + token.encode()]
        if content_type is not None:
            headers[b"Content-Type"] = [content_type]
        return {
            name: await send(port, method, path, body, headers)
            for name, port in self.ports.items()
        }

    def assertSame(self, responses: dict[str, Response], code: int | None) -> Any:
        """
        The two answers are the same, with status C{code} (unless None);
        return the body.
        """
        hot, klein = answer(responses["hot"]), answer(responses["klein"])
        self.assertEqual(hot, klein)
        if code is not None:
            self.assertEqual(hot[0], code, responses["hot"])
        return hot[2]

    async def test_push(self) -> None:
        job = json.dumps({"type": "t", "id": "j1"}).encode()
        responses = await self.both("POST", "/api/v1/jobs", job)
        hot, klein = answer(responses["hot"]), answer(responses["klein"])
        self.assertEqual(hot[1], klein[1])
        self.assertEqual(hot[1][b"content-type"], [b"application/json"])
        # The hot route pushed the job first; Klein's found it there.
        self.assertEqual((hot[0], hot[2]), (201, {"id": "j1", "created": True}))
        self.assertEqual((klein[0], klein[2]), (200, {"id": "j1", "created": False}))
        self.assertEqual(self.fallbacks, [])

    async def test_push_refused(self) -> None:
        big = json.dumps({"type": "t", "args": "x" * 3000}).encode()
        for body, token, content_type, code, error in (
            (b'{"type": "t"}', "wrong", b"application/json", 401, "unauthorized"),
            (b"", None, b"application/json", 401, "unauthorized"),
            (b"", "wrong", b"application/json", 401, "unauthorized"),
            (b'{"type": "t"}', TOKEN, b"text/plain", 415, "unsupported_media_type"),
            (big, TOKEN, b"application/json", 413, "frame_too_large"),
            (b"{not json", TOKEN, b"application/json", 400, "malformed_json"),
            (b"[" * 200, TOKEN, b"application/json", 400, "malformed_json"),
            (b'{"type": ""}', TOKEN, b"application/json", 400, "invalid_job"),
            (b"5", TOKEN, b"application/json", 400, "invalid_job"),
            (b"[]", TOKEN, b"application/json", 400, "invalid_request"),
        ):
            responses = await self.both(
                "POST", "/api/v1/jobs", body, token=token, content_type=content_type
            )
            got = self.assertSame(responses, code)
            self.assertEqual(got["error"]["code"], error, body)
        self.assertEqual(self.fallbacks, [])

    async def test_push_batch(self) -> None:
        batch = json.dumps([{"type": "t", "id": "b1"}, {"type": "t"}]).encode()
        responses = await self.both("POST", "/api/v1/jobs", batch)
        self.assertEqual(answer(responses["hot"])[0], 201)
        self.assertEqual(responses["klein"].json["created"], [False, True])
        self.assertEqual(self.fallbacks, [])

    async def test_long_poll(self) -> None:
        # Nothing queued: both wait, then answer 204.
        responses = await self.both("GET", "/api/v1/jobs/next?wait=0.2", token=TOKEN)
        self.assertSame(responses, 204)
        for query, code, error in (
            ("?wait=0.2", 401, "unauthorized"),
            ("?count=0", 400, "invalid_request"),
            ("?wait=-1", 400, "invalid_request"),
            ("?queues=a%20b", 400, "invalid_request"),
        ):
            token = "wrong" if code == 401 else TOKEN
            responses = await self.both(
                "GET", "/api/v1/jobs/next" + query, token=token, content_type=None
            )
            got = self.assertSame(responses, code)
            self.assertEqual(got["error"]["code"], error, query)
        self.assertEqual(self.fallbacks, [])

    async def test_long_poll_and_ack(self) -> None:
        http = HTTP(self.server.http_port, TOKEN)
        for n in range(2):
            await http.post("/api/v1/jobs", body={"type": "t", "id": f"p{n}"})
        responses = await self.both("GET", "/api/v1/jobs/next?worker=w", token=TOKEN)
        hot, klein = answer(responses["hot"]), answer(responses["klein"])
        self.assertEqual((hot[0], hot[1]), (klein[0], klein[1]))
        self.assertEqual(hot[0], 200)
        jobs = {"hot": hot[2], "klein": klein[2]}
        self.assertEqual(sorted(j["id"] for j in jobs.values()), ["p0", "p1"])
        for key in ("lease", "id", "created_at", "enqueued_at", "started_at"):
            for job in jobs.values():
                job.pop(key, None)
        self.assertEqual(jobs["hot"], jobs["klein"])

        acks = {}
        for name, port in self.ports.items():
            job = responses[name].json
            body = json.dumps({"lease": job["lease"], "result": {"n": 1}}).encode()
            acks[name] = await send(
                port,
                "POST",
                "/api/v1/jobs/" + quote(job["id"], safe="") + "/ack",
                body,
                {
                    b"Authorization": [b"Bearer " + TOKEN.encode()],
                    b"Content-Type": [b"application/json"],
                },
            )
        hot, klein = answer(acks["hot"]), answer(acks["klein"])
        self.assertEqual((hot[0], hot[1]), (klein[0], klein[1]))
        self.assertEqual(hot[0], 200)
        self.assertEqual(
            {hot[2]["id"], klein[2]["id"]}, {j.json["id"] for j in responses.values()}
        )
        for job in responses.values():
            stored = await self.server.store.get_job("default", job.json["id"])
            self.assertEqual(stored["state"], "completed")
        self.assertEqual(self.fallbacks, [])

    async def test_ack_refused(self) -> None:
        http = HTTP(self.server.http_port, TOKEN)
        await http.post("/api/v1/jobs", body={"type": "t", "id": "a/b"})
        job = (await http.get("/api/v1/jobs/next")).json
        lease = job["lease"]
        other = lease.rpartition("@")[0] + "@elsewhere"
        for job_id, body, token, code, error in (
            ("a/b", {"lease": lease}, "wrong", 401, "unauthorized"),
            ("a/b", {}, TOKEN, 400, "invalid_request"),
            ("a/b", [1], TOKEN, 400, "invalid_request"),
            ("a/b", {"lease": "nonsense"}, TOKEN, 409, "lease_lost"),
            ("a/b", {"lease": other}, TOKEN, 409, "lease_lost"),
            ("none", {"lease": lease}, TOKEN, 404, "not_found"),
        ):
            responses = await self.both(
                "POST",
                "/api/v1/jobs/" + quote(job_id, safe="") + "/ack",
                json.dumps(body).encode(),
                token=token,
            )
            got = self.assertSame(responses, code)
            self.assertEqual(got["error"]["code"], error, (job_id, body))
        responses = await self.both("POST", "/api/v1/jobs/a%2Fb/ack", b"{not json")
        self.assertEqual(
            self.assertSame(responses, 400)["error"]["code"], "malformed_json"
        )
        self.assertEqual(self.fallbacks, [])

    async def test_other_routes_go_to_klein(self) -> None:
        http = HTTP(self.server.http_port, TOKEN)
        await http.post("/api/v1/jobs", body={"type": "t", "id": "k"})
        cases: tuple[tuple[str, str, int | None], ...] = (
            ("GET", "/api/v1/jobs/k", 200),
            ("HEAD", "/api/v1/jobs/next", 405),
            ("POST", "/api/v1/jobs/next", 405),
            ("POST", "/api/v1/jobs/k/extend", 400),
            ("POST", "/api/v1/jobs//ack", None),
            ("GET", "/api/v1/nothing", 404),
            ("GET", "/healthz", 200),
        )
        for method, path, code in cases:
            responses = await self.both(
                method, path, b"{}" if method == "POST" else None
            )
            if method == "HEAD":
                self.assertEqual(
                    (responses["hot"].code, responses["klein"].code), (code, code)
                )
            else:
                self.assertSame(responses, code)
        self.assertEqual(
            self.fallbacks,
            [
                b"/api/v1/jobs/k",
                b"/api/v1/jobs/next",
                b"/api/v1/jobs/next",
                b"/api/v1/jobs/k/extend",
                b"/api/v1/jobs//ack",
                b"/api/v1/nothing",
                b"/healthz",
            ],
        )
