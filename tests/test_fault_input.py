"""
Hostile and careless input found by a red-team pass (issue 12), each
against a real server on loopback over real sockets: what
docs/reliability.rst's "Bad input" table promises for each.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from procession.core.errors import StoreUnavailable
from procession.core.json_checks import MAX_NESTING
from tests.client import ServerFixture
from tests.http import HTTP
from tests.test_http_worker import raw_post

# A lone surrogate: json.dumps writes it as the escape \udfff.
LONE = "\udfffbad"


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


class SurrogateTests(TestCase):
    """
    Item 1: a string that is not valid Unicode anywhere in a frame or a
    body is refused as bad input naming the field, and never reaches the
    store.
    """

    async def setUp(self) -> None:
        self.server = await ServerFixture(self).start()
        self.http = HTTP(self.server.http_port)

    async def test_hello_refused(self) -> None:
        """
        C{HELLO} with a lone surrogate in the worker name is C{bad_frame}
        naming C{worker}; a healthy worker on the queue still gets its
        jobs, and the workers page answers.
        """
        client = await self.server.connect(worker=None)
        kind, body = await client.send("HELLO", {"worker": LONE})
        self.assertEqual(
            (kind, body["code"], body["field"]), ("ERR", "bad_frame", "worker")
        )
        kind, body = await client.send("READY", {"queues": ["q1"]})
        self.assertEqual(body["code"], "out_of_order")
        worker = await self.server.connect("healthy")
        await worker.ok("READY", {"queues": ["q1"], "credit": 1})
        await worker.ok("PUSH", {"type": "t", "queue": "q1"})
        job = await worker.next_job()
        self.assertEqual(job["queue"], "q1")
        page = await self.http.get("/workers")
        self.assertEqual(page.code, 200, page)

    async def test_push_fields(self) -> None:
        """
        C{PUSH} with a lone surrogate in args, meta, type or a key of args
        is C{bad_frame} naming where; C{ACK} and C{FAIL} bodies too.
        """
        client = await self.server.connect()
        cases = [
            ({"type": "t", "args": ["ok", "\ud800"]}, "args[1]"),
            ({"type": "t", "meta": {"k": {"deep": LONE}}}, "meta.k.deep"),
            ({"type": LONE}, "type"),
            ({"type": "t", "args": [{"\ud800": 1}]}, "args[0].?"),
        ]
        for job, field in cases:
            kind, body = await client.send("PUSH", job)
            self.assertEqual(kind, "ERR", body)
            self.assertEqual((body["code"], body["field"]), ("bad_frame", field))
        for verb in ("ACK", "FAIL", "EXTEND"):
            kind, body = await client.send(verb, {"id": "x", "result": LONE})
            self.assertEqual((body["code"], body["field"]), ("bad_frame", "result"))
        # A valid pair of surrogates is one character, and welcome.
        reply = await client.ok("PUSH", {"type": "t", "args": ["\U0001f600"]})
        self.assertTrue(reply["created"])
        self.assertEqual(await self.server.store.known_queues(), ["default"])

    async def test_http(self) -> None:
        """
        Over HTTP, a lone surrogate in a push, a batch or an ack is 400
        C{malformed_json} naming the field, never 500.
        """
        response = await self.http.post(
            "/api/v1/jobs", body={"type": "t", "args": {"a": "\ud800"}}
        )
        self.assertEqual(response.code, 400, response)
        self.assertEqual(response.json["error"]["code"], "malformed_json")
        self.assertEqual(response.json["error"]["field"], "args.a")
        response = await self.http.post(
            "/api/v1/jobs", body=[{"type": "t"}, {"type": "t", "id": LONE}]
        )
        self.assertEqual(response.code, 400, response)
        self.assertEqual(response.json["error"]["field"], "[1].id")
        response = await self.http.post(
            "/api/v1/jobs/x/ack", body={"lease": "l", "result": [LONE]}
        )
        self.assertEqual(response.code, 400, response)
        self.assertEqual(response.json["error"]["field"], "result[0]")


class BatchTests(TestCase):
    """
    Item 2: a batch over several queues is checked whole before anything
    is written, and a store failure after that says which jobs are stored.
    """

    async def setUp(self) -> None:
        self.server = await ServerFixture(self).start()

    async def test_bad_middle_job(self) -> None:
        """
        A 3-queue C{PUSHB} whose middle job is bad stores nothing.
        """
        client = await self.server.connect()
        for bad in ({"args": [LONE]}, {"args": nested(MAX_NESTING + 1)}):
            jobs = [
                {"type": "t", "queue": "qa", "id": "a"},
                {"type": "t", "queue": "qb", "id": "b", **bad},
                {"type": "t", "queue": "qc", "id": "c"},
            ]
            kind, body = await client.send("PUSHB", jobs)
            self.assertEqual(kind, "ERR", body)
            self.assertIn(body["code"], ("bad_frame", "invalid_job"))
            for queue in ("qa", "qb", "qc"):
                self.assertEqual(
                    await self.server.store.state_members(queue, "queued"), []
                )

    async def test_store_fails_for_one_queue(self) -> None:
        """
        When one queue's script fails after the others stored their jobs,
        the error lists which jobs are stored (null: unknown).
        """
        store = self.server.store
        run = store.run_replicated

        def failing(name: str, queue: str, *rest: Any) -> Any:
            if store.scripts[name].source == "push" and queue == "qb":
                return defer.fail(StoreUnavailable("Redis did not answer"))
            return run(name, queue, *rest)

        store.run_replicated = failing
        client = await self.server.connect()
        jobs = [{"type": "t", "queue": q, "id": q} for q in ("qa", "qb", "qc")]
        kind, body = await client.send("PUSHB", jobs)
        self.assertEqual(kind, "ERR", body)
        self.assertEqual(body["code"], "store_unavailable")
        self.assertEqual(body["ids"], ["qa", "qb", "qc"])
        self.assertEqual(body["created"], [True, None, True])
        self.assertEqual(await store.state_members("qa", "queued"), ["qa"])
        self.assertEqual(await store.state_members("qb", "queued"), [])


class NestingTests(TestCase):
    """
    Item 3: a documented nesting limit at push, and listings of jobs that
    are deeper (stored before the limit) still answer.
    """

    async def setUp(self) -> None:
        self.server = await ServerFixture(self).start()
        self.http = HTTP(self.server.http_port)

    async def test_limit_at_push(self) -> None:
        """
        args or meta deeper than L{MAX_NESTING} is C{invalid_job} naming
        the field; at the limit it is taken.  Results and errors too.
        """
        client = await self.server.connect()
        kind, body = await client.send(
            "PUSH", {"type": "t", "args": nested(MAX_NESTING + 1)}
        )
        self.assertEqual((body["code"], body["field"]), ("invalid_job", "args"))
        self.assertEqual(body["limit"], MAX_NESTING)
        kind, body = await client.send(
            "PUSH", {"type": "t", "meta": {"m": nested(MAX_NESTING)}}
        )
        self.assertEqual((body["code"], body["field"]), ("invalid_job", "meta"))
        response = await raw_post(
            self.http,
            "/api/v1/jobs",
            b'{"type":"t","args":' + b"[" * 100 + b"]" * 100 + b"}",
        )
        self.assertEqual(response.code, 400, response)
        self.assertEqual(response.json["error"]["code"], "invalid_job")
        # Deeper than any frame or body may nest: refused before decoding.
        response = await raw_post(
            self.http,
            "/api/v1/jobs",
            b'{"type":"t","args":' + b"[" * 960 + b"]" * 960 + b"}",
        )
        self.assertEqual(response.json["error"]["code"], "malformed_json")
        self.assertEqual(response.json["error"]["limit"], 512)
        kind, body = await client.send(
            "PUSH", raw=b'PUSH {"type":"t","args":' + b"[" * 960 + b"]" * 960 + b"}"
        )
        self.assertEqual((body["code"], body["limit"]), ("bad_frame", 512))
        await client.ok("PUSH", {"type": "t", "args": nested(MAX_NESTING), "id": "j"})
        await client.ok("READY", {"credit": 1})
        job = await client.next_job()
        kind, body = await client.send(
            "ACK", {"id": job["id"], "result": nested(MAX_NESTING + 1)}
        )
        self.assertEqual((body["code"], body["field"]), ("invalid_request", "result"))
        kind, body = await client.send(
            "FAIL", {"id": job["id"], "error": {"backtrace": nested(MAX_NESTING)}}
        )
        self.assertEqual((body["code"], body["field"]), ("invalid_request", "error"))
        listed = await self.http.get("/api/v1/jobs")
        self.assertEqual(listed.code, 200, listed)

    async def test_stored_deep_job_listed(self) -> None:
        """
        A job stored 960 levels deep (before the limit existed) is listed
        by the API, the UI and found by id, its args shown as JSON text,
        and can be deleted.
        """
        store = self.server.store
        await self.server.connect()  # the queue's first push registers it
        client = await self.server.connect()
        await client.ok("PUSH", {"type": "t", "id": "deep"})
        text = "[" * 960 + "]" * 960
        await store.command("HSET", store.keys.job("default", "deep"), "args", text)
        listed = await self.http.get("/api/v1/jobs")
        self.assertEqual(listed.code, 200, listed)
        self.assertEqual(listed.json["jobs"][0]["args"], text)
        one = await self.http.get("/api/v1/jobs/deep")
        self.assertEqual(one.code, 200, one)
        for page in ("/queued", "/jobs/deep"):
            response = await self.http.get(page)
            self.assertEqual(response.code, 200, response)
        deleted = await self.http.delete("/api/v1/jobs/deep")
        self.assertEqual(deleted.code, 200, deleted)


class UniqueIdTests(TestCase):
    """
    Item 9: a job's id is unique across queues.
    """

    async def setUp(self) -> None:
        self.server = await ServerFixture(self).start()
        self.http = HTTP(self.server.http_port)

    async def test_same_id_other_queue(self) -> None:
        """
        The same id pushed to qa then qb: the second push creates nothing
        and names qa, over TCP, in a batch and over HTTP; once the job is
        deleted the id may be used again.
        """
        client = await self.server.connect()
        first = await client.ok("PUSH", {"type": "t", "queue": "qa", "id": "dupid"})
        self.assertEqual(first, {"id": "dupid", "created": True})
        again = await client.ok("PUSH", {"type": "t", "queue": "qb", "id": "dupid"})
        self.assertEqual(again, {"id": "dupid", "created": False, "queue": "qa"})
        batch = await client.ok(
            "PUSHB",
            [
                {"type": "t", "queue": "qb", "id": "dupid"},
                {"type": "t", "queue": "qb", "id": "fresh"},
            ],
        )
        self.assertEqual(batch["created"], [False, True])
        self.assertEqual(batch["queues"], ["qa", "qb"])
        response = await self.http.post(
            "/api/v1/jobs", body={"type": "t", "queue": "qc", "id": "dupid"}
        )
        self.assertEqual(response.code, 200, response)
        self.assertEqual(response.json["queue"], "qa")
        self.assertEqual(
            await self.server.store.state_members("qb", "queued"), ["fresh"]
        )
        job = await self.http.get("/api/v1/jobs/dupid")
        self.assertEqual(job.json["queue"], "qa")
        await self.http.delete("/api/v1/jobs/dupid")
        moved = await client.ok("PUSH", {"type": "t", "queue": "qb", "id": "dupid"})
        self.assertEqual(moved, {"id": "dupid", "created": True})

    async def test_same_id_in_one_batch(self) -> None:
        """
        Two jobs of one batch with one id in two queues: one is created.
        """
        client = await self.server.connect()
        batch = await client.ok(
            "PUSHB",
            [
                {"type": "t", "queue": "qa", "id": "twin"},
                {"type": "t", "queue": "qb", "id": "twin"},
            ],
        )
        self.assertEqual(batch["created"], [True, False])
        self.assertEqual(batch["queues"], ["qa", "qa"])

    async def test_workflow_jobs_hold_their_ids(self) -> None:
        """
        A batch callback (workflow.lua creates it) and a job that ran after
        another hold their ids across queues like pushed jobs, are found by
        id alone, and free their ids when deleted.
        """
        client = await self.server.connect()
        await client.ok(
            "BATCH", {"id": "b1", "on_complete": {"type": "cb", "queue": "qc"}}
        )
        await client.ok(
            "PUSH", {"type": "t", "queue": "qa", "id": "parent", "batch": "b1"}
        )
        await client.ok("BATCH", {"action": "commit", "id": "b1"})
        await client.ok(
            "PUSH",
            {
                "type": "t",
                "queue": "qb",
                "id": "child",
                "after": ["parent"],
            },
        )
        worker = await self.server.connect()
        await worker.ok("READY", {"queues": ["qa"], "credit": 1})
        job = await worker.next_job()
        await worker.ok("ACK", {"id": job["id"]})
        for job_id, queue, state in [
            ("b1:complete", "qc", "queued"),
            ("child", "qb", "queued"),
        ]:
            found = await self.http.get(f"/api/v1/jobs/{job_id}")
            self.assertEqual((found.json["queue"], found.json["state"]), (queue, state))
            again = await client.ok("PUSH", {"type": "t", "queue": "qz", "id": job_id})
            self.assertEqual(again, {"id": job_id, "created": False, "queue": queue})
            await self.http.delete(f"/api/v1/jobs/{job_id}")
            moved = await client.ok("PUSH", {"type": "t", "queue": "qz", "id": job_id})
            self.assertEqual(moved, {"id": job_id, "created": True})


WORKER_TOKEN = "w0rker-s3cret"
ADMIN_TOKEN = "adm1n-s3cret"


def openapi_routes() -> list[tuple[str, str, str]]:
    """
    Every operation of procession/http/openapi.json: (method, path with its
    parameters filled in, kind): C{worker}, C{admin} or C{open}.
    """
    from procession.http.admin_api import openapi_document

    document = json.loads(openapi_document())
    routes = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            schemes = {
                name for entry in operation.get("security", [{}]) for name in entry
            }
            if operation.get("security") == []:
                kind = "open"
            elif "workerToken" in schemes:
                kind = "worker"
            else:
                kind = "admin"
            filled = path.replace("{id}", "nosuch").replace("{name}", "default")
            routes.append((method.upper(), filled, kind))
    return routes


class TokenRuleTests(TestCase):
    """
    Item 7: whatever secret is configured protects everything.  Every
    route of the OpenAPI description, under every configuration of tokens,
    with every token.
    """

    def allowed(self, kind: str, given: str | None, configured: dict[str, str]) -> int:
        """
        The status class the rule gives: 0 for let in, else 401 or 403.
        """
        worker, admin = configured.get("worker"), configured.get("admin")
        if kind == "open" or (worker is None and admin is None):
            return 0
        if given is not None and given == admin:
            return 0
        if given is not None and given == worker:
            return 0 if kind == "worker" or admin is None else 403
        return 401

    async def check(self, configured: dict[str, str], *args: str) -> None:
        server = await ServerFixture(self, *args).start()
        http = HTTP(server.http_port)
        await server.connect(token=configured.get("worker") or configured.get("admin"))
        for method, path, kind in openapi_routes():
            for given in (None, "wrong", WORKER_TOKEN, ADMIN_TOKEN):
                params = {"state": "dead", "wait": "0"}
                body = [] if path == "/api/v1/acks" else {}
                response = await http.request(
                    method,
                    path,
                    params=params,
                    body=body if method == "POST" else None,
                    token=given,
                )
                want = self.allowed(kind, given, configured)
                what = f"{method} {path} with {given} under {configured}: {response}"
                if want:
                    self.assertEqual(response.code, want, what)
                else:
                    self.assertNotIn(response.code, (401, 403), what)
                    self.assertLess(response.code, 500, what)

    async def test_worker_token_only(self) -> None:
        """
        With only a worker token, it is needed on management routes too.
        """
        await self.check({"worker": WORKER_TOKEN}, "--token", WORKER_TOKEN)

    async def test_admin_token_only(self) -> None:
        await self.check({"admin": ADMIN_TOKEN}, "--admin-token", ADMIN_TOKEN)

    async def test_both_tokens(self) -> None:
        await self.check(
            {"worker": WORKER_TOKEN, "admin": ADMIN_TOKEN},
            "--token",
            WORKER_TOKEN,
            "--admin-token",
            ADMIN_TOKEN,
        )

    async def test_no_token(self) -> None:
        await self.check({})

    async def test_metrics_and_ui_with_worker_token(self) -> None:
        """
        With only a worker token, C{--metrics-auth} metrics and the UI need
        it: the UI's login takes it.
        """
        server = await ServerFixture(
            self, "--token", WORKER_TOKEN, "--metrics-auth"
        ).start()
        http = HTTP(server.http_port)
        self.assertEqual((await http.get("/metrics", token=None)).code, 401)
        self.assertEqual((await http.get("/metrics", token=WORKER_TOKEN)).code, 200)
        from tests.test_ui import Browser

        browser = Browser(server.http_port)
        page = await browser.get("/queues")
        self.assertEqual((page.code, page.location.split("?")[0]), (303, "/login"))
        login = await browser.get("/login")
        self.assertIn("needs its worker token (<code>--token</code>)", login.text)
        refused = await browser.post("/login", {"token": "wrong"})
        self.assertEqual(refused.code, 401)
        self.assertIn("That is not the worker token.", refused.text)
        await browser.post("/login", {"token": WORKER_TOKEN})
        page = await browser.get("/queues")
        self.assertEqual(page.code, 200, page)


async def raw_http(port: int, head: bytes, body: bytes = b"") -> tuple[int, Any, bytes]:
    """
    Send a request's bytes on a bare connection and read until the server
    closes it (at most 5 s): the status, the JSON body, everything read.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    from tests.test_http_worker import RawClient

    client = RawClient()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    client.transport.write(head + body)
    closed = client.closed
    timer = reactor.callLater(5, client.transport.abortConnection)
    await closed
    if timer.active():
        timer.cancel()
    data = client.data
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    _, _, text = data.partition(b"\r\n\r\n")
    try:
        decoded = json.loads(text)
    except ValueError:
        decoded = None
    return status, decoded, data


def head(
    method: str, path: str, port: int, *headers: str, host: str | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}"]
    lines += list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class BodyLimitTests(TestCase):
    """
    Item 5: bodies are refused from the request head, before they are
    read: 401 first without a token, 413 past the limit, and UI form
    routes have a small limit too.
    """

    async def test_unauthenticated_huge_body(self) -> None:
        """
        C{Content-Length: 1 GiB} to the push route without a token is
        answered 401 at once, though not a byte of the body is sent.
        """
        server = await ServerFixture(self, "--token", WORKER_TOKEN).start()
        port = server.http_port
        status, body, _ = await raw_http(
            port,
            head(
                "POST",
                "/api/v1/jobs",
                port,
                "Content-Type: application/json",
                f"Content-Length: {1 << 30}",
            ),
        )
        self.assertEqual(status, 401)
        self.assertEqual(body["error"]["code"], "unauthorized")
        # With the token, the same head is 413 from its length.
        status, body, _ = await raw_http(
            port,
            head(
                "POST",
                "/api/v1/jobs",
                port,
                "Content-Type: application/json",
                f"Authorization: Bearer {WORKER_TOKEN}",
                f"Content-Length: {1 << 30}",
                "Expect: 100-continue",
            ),
        )
        self.assertEqual(status, 413)
        self.assertEqual(body["error"]["code"], "frame_too_large")

    async def test_form_routes(self) -> None:
        """
        A 400 MB form to /login is 413 from its head; a chunked one is
        refused once it passes 64 KiB, and the server drops the rest.
        """
        server = await ServerFixture(self, "--admin-token", ADMIN_TOKEN).start()
        port = server.http_port
        status, body, _ = await raw_http(
            port,
            head(
                "POST",
                "/login",
                port,
                "Content-Type: application/x-www-form-urlencoded",
                f"Content-Length: {400 << 20}",
            ),
        )
        self.assertEqual((status, body["error"]["limit"]), (413, 64 * 1024))
        chunk = b"%x\r\n%s\r\n" % (16 * 1024, b"a" * 16 * 1024)
        status, body, _ = await raw_http(
            port,
            head(
                "POST",
                "/login",
                port,
                "Content-Type: application/x-www-form-urlencoded",
                "Transfer-Encoding: chunked",
            ),
            chunk * 8,
        )
        self.assertEqual(status, 413)
        # A form within the limit is served as before.
        status, _, data = await raw_http(
            port,
            head(
                "POST",
                "/login",
                port,
                "Content-Type: application/x-www-form-urlencoded",
                "Content-Length: 11",
                "Connection: close",
            ),
            b"token=wrong",
        )
        self.assertEqual(status, 401, data)


class CrossSiteTests(TestCase):
    """
    Item 6: with no token (the loopback default), pages of other sites
    cannot change state, and requests naming a foreign Host are refused.
    """

    async def setUp(self) -> None:
        self.server = await ServerFixture(self).start()
        self.port = self.server.http_port
        self.http = HTTP(self.port)

    async def test_text_plain_push(self) -> None:
        """
        An C{enctype=text/plain} form's push is 415; nothing is stored.
        """
        # What an enctype=text/plain form sends: a valid job.
        body = b'{"type":"t","id":"csrf","meta":{"p":"="}}'
        status, reply, _ = await raw_http(
            self.port,
            head(
                "POST",
                "/api/v1/jobs",
                self.port,
                "Content-Type: text/plain",
                f"Content-Length: {len(body)}",
            ),
            body,
        )
        self.assertEqual(
            (status, reply["error"]["code"]), (415, "unsupported_media_type")
        )
        found = await self.http.get("/api/v1/jobs/csrf")
        self.assertEqual(found.code, 404)

    async def test_foreign_origin(self) -> None:
        """
        Body-less POSTs from another site's page (pause a queue, kill its
        jobs) are 403; from this server's own origin they work.
        """
        await self.http.post("/api/v1/jobs", body={"type": "t", "id": "victim"})
        for path in (
            "/api/v1/queues/default/pause",
            "/api/v1/queues/default/kill?state=queued",
        ):
            status, reply, _ = await raw_http(
                self.port,
                head("POST", path, self.port, "Origin: http://evil.example"),
            )
            self.assertEqual((status, reply["error"]["code"]), (403, "cross_origin"))
        status, reply, _ = await raw_http(
            self.port, head("POST", "/queues/default/pause", self.port, "Origin: null")
        )
        self.assertEqual(status, 403)
        queue = await self.http.get("/api/v1/queues/default")
        self.assertFalse(queue.json["paused"])
        self.assertEqual(queue.json["sizes"]["queued"], 1)
        status, reply, _ = await raw_http(
            self.port,
            head(
                "POST",
                "/api/v1/queues/default/pause",
                self.port,
                f"Origin: http://127.0.0.1:{self.port}",
                "Connection: close",
            ),
        )
        self.assertEqual(status, 200)

    async def test_host(self) -> None:
        """
        A loopback listener answers loopback Host names only (DNS
        rebinding), unless --allowed-hosts lists the name.
        """
        status, reply, _ = await raw_http(
            self.port,
            head("GET", "/api/v1/queues", self.port, host="evil.example"),
        )
        self.assertEqual((status, reply["error"]["code"]), (421, "host_not_allowed"))
        for host in (f"localhost:{self.port}", "127.0.0.1", f"[::1]:{self.port}"):
            status, _, data = await raw_http(
                self.port,
                head("GET", "/healthz", self.port, "Connection: close", host=host),
            )
            self.assertEqual(status, 200, data)
        # A listener on every interface checks no Host (unless
        # --allowed-hosts), even for a connection that came over loopback.
        wide = await ServerFixture(self, "--http", "tcp:0", "--insecure").start()
        status, _, data = await raw_http(
            wide.http_port,
            head("GET", "/healthz", wide.http_port, "Connection: close", host="myhost"),
        )
        self.assertEqual(status, 200, data)
        other = await ServerFixture(self, "--allowed-hosts", "jobs.example.com").start()
        for host, want in (("jobs.example.com", 200), ("evil.example", 421)):
            status, _, data = await raw_http(
                other.http_port,
                head(
                    "GET", "/healthz", other.http_port, "Connection: close", host=host
                ),
            )
            self.assertEqual(status, want, data)


class _Silent(Protocol):
    """
    A client that writes and never reads: its transport stops reading at
    once, so the server's replies pile up on the server's side.
    """

    def __init__(self) -> None:
        self.received = 0
        self.lines = 0
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        import socket

        self.transport.pauseProducing()
        # A small receive buffer: the kernel takes little of what the
        # server writes, so what it holds back shows on its side.
        self.transport.getHandle().setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024
        )

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.lines += data.count(b"\n")

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


def unsent(transport: Any) -> int:
    """
    The bytes a server-side TCP transport holds, written and not sent.
    """
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class OutputBoundTests(TestCase):
    """
    Item 4: a client that sends short bad frames and never reads the
    replies stops being read once the server holds a bounded amount of
    unsent output (before HELLO, on a server with a token).
    """

    async def test_unread_replies(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.task import deferLater

        server = await ServerFixture(self, "--token", WORKER_TOKEN).start()
        client = _Silent()
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", server.tcp_port), client
        )
        self.addCleanup(lambda: client.closed)
        self.addCleanup(client.transport.abortConnection)
        frames = 200_000
        # Each 2-byte frame earns a reply of about 60 bytes: 12 MB unread,
        # well past what the kernel's socket buffers take (SO_SNDBUF grows
        # to 4 MB on loopback).
        client.transport.write(b"X\n" * frames)
        [connection] = server.service.worker_factory.connections
        for _ in range(20):
            await deferLater(reactor, 0.05, lambda: None)
        held = unsent(connection.transport)
        self.assertLess(held, 256 * 1024)
        self.assertIn("output", connection._pauses)
        # Once the client reads, every frame is answered, in order.
        client.transport.resumeProducing()
        client.transport.write(b"PING\n")
        deadline = reactor.seconds() + 30
        while client.lines < frames + 2 and reactor.seconds() < deadline:
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(client.lines, frames + 2)  # HI, the errors, PING's OK


class SlashIdTests(TestCase):
    """
    Item 8: job ids that begin with "/" (which a push accepts) are handled
    by every HTTP route, never with a 500.
    """

    async def test_leading_slash(self) -> None:
        from urllib.parse import quote

        server = await ServerFixture(self).start()
        http = HTTP(server.http_port)
        for job_id in ("/w1", "//w2", "a//b", "/"):
            pushed = await http.post("/api/v1/jobs", body={"type": "t", "id": job_id})
            self.assertEqual(pushed.code, 201, pushed)
            for encoded in (job_id, quote(job_id, safe="")):
                got = await http.get("/api/v1/jobs/" + encoded)
                self.assertEqual((got.code, got.json["id"]), (200, job_id))
            job = await http.get("/api/v1/jobs/next", params={"wait": "1"})
            self.assertEqual(job.json["id"], job_id)
            acked = await http.post(
                "/api/v1/jobs/" + job_id + "/ack", body={"lease": job.json["lease"]}
            )
            self.assertEqual(acked.code, 200, acked)
            for method, path in (
                ("POST", "/retry"),
                ("POST", "/kill"),
                ("DELETE", ""),
            ):
                response = await http.request(
                    method,
                    "/api/v1/jobs/" + job_id + path,
                    body={} if method == "POST" else None,
                )
                self.assertLess(response.code, 500, response)
            missing = await http.get("/api/v1/jobs/" + job_id)
            self.assertEqual(missing.code, 404, missing)
        # A path that is not UTF-8 (an encoded lone surrogate) is a JSON 400.
        status, body, _ = await raw_http(
            server.http_port,
            head("GET", "/api/v1/jobs/%ED%A0%80", server.http_port),
        )
        self.assertEqual((status, body["error"]["field"]), (400, "path"))


class FaktorySurrogateTests(TestCase):
    """
    Item 1 on the Faktory front end: a lone surrogate in a PUSH is an
    C{-ERR}, and nothing is stored.
    """

    async def test_push(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        from tests.redis import free_port
        from tests.test_http_worker import RawClient

        port = free_port()
        server = await ServerFixture(
            self, "--faktory", f"tcp:{port}:interface=127.0.0.1"
        ).start()
        client = RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        self.addCleanup(client.transport.abortConnection)
        client.transport.write(
            b'HELLO {"wid":"w","v":2}\r\n'
            + b'PUSH {"jid":"s1","jobtype":"t","args":["\\ud800"]}\r\n'
            + b'PUSH {"jid":"s2","jobtype":"t","args":['
            + b"[" * 600
            + b"]" * 600
            + b"]}\r\n"
            + b'PUSH {"jid":"dup-jid-00001","jobtype":"t","args":[],"queue":"qa"}\r\n'
            + b'PUSH {"jid":"dup-jid-00001","jobtype":"t","args":[],"queue":"qb"}\r\n'
            + b"END\r\n"
        )
        from twisted.internet.task import deferLater

        for _ in range(100):
            if client.data.count(b"\r\n") >= 6:
                break
            await deferLater(reactor, 0.02, lambda: None)
        lines = client.data.split(b"\r\n")
        self.assertEqual(lines[1], b"+OK", client.data)
        self.assertTrue(lines[2].startswith(b"-ERR invalid JSON: args[0]"), lines)
        self.assertTrue(lines[3].startswith(b"-ERR invalid JSON: nested"), lines)
        # Ids are unique across queues here too.
        self.assertEqual(lines[4:6], [b"+OK", b"-NOTUNIQUE Job not unique"])
        self.assertEqual(await server.store.state_members("qb", "queued"), [])


class StatePageTests(TestCase):
    """
    Item 10: the UI's state pages find their jobs in time proportional to
    the page, whatever else the queues hold: a dead job older than 5,000
    others is on the first page of /dead, and paging walks every job once.
    """

    async def setUp(self) -> None:
        self.server = await ServerFixture(self).start()
        self.http = HTTP(self.server.http_port)

    async def page_ids(self, path: str) -> tuple[list[str], str | None]:
        import html
        import re

        page = await self.http.get(path)
        self.assertEqual(page.code, 200, page)
        text = page.content.decode("utf-8")
        ids = re.findall(r'name="job" value="[^"/]*/([^"]*)"', text)
        following = re.search(r'<a href="([^"]*)" rel="next">', text)
        return [html.unescape(i) for i in ids], (
            html.unescape(following.group(1)) if following else None
        )

    async def test_old_dead_job(self) -> None:
        client = await self.server.connect()
        await client.ok("PUSH", {"type": "t", "id": "oldest"})
        killed = await self.http.post("/api/v1/jobs/oldest/kill", body={})
        self.assertEqual(killed.code, 200, killed)
        for start in range(0, 5100, 1000):
            await client.ok(
                "PUSHB",
                [{"type": "t", "id": f"j{i}"} for i in range(start, start + 1000)],
            )
        ids, _ = await self.page_ids("/dead")
        self.assertEqual(ids, ["oldest"])
        queued, following = await self.page_ids("/queued")
        self.assertEqual(queued, [f"j{i}" for i in range(50)])
        self.assertIsNotNone(following)

    async def test_paging(self) -> None:
        """
        120 dead jobs in two queues, and jobs leaving the state between
        pages: every job that stays is listed once, most recent death
        first.
        """
        client = await self.server.connect()
        store = self.server.store
        expected = []
        for i in range(120):
            queue = "qa" if i % 2 else "qb"
            await client.ok("PUSH", {"type": "t", "id": f"d{i}", "queue": queue})
            await self.http.post(f"/api/v1/jobs/d{i}/kill", body={})
            expected.append(f"d{i}")
        seen: list[str] = []
        path: str | None = "/dead"
        pages = 0
        while path is not None:
            ids, path = await self.page_ids(path)
            seen += ids
            pages += 1
            if pages == 1:
                # The last job of the page leaves the state meanwhile.
                await self.http.post(f"/api/v1/jobs/{ids[-1]}/retry", body={})
                expected.remove(ids[-1])
        self.assertEqual(pages, 3)
        dead_order = [
            j
            for j in await store.state_members("qa", "dead")
            + await store.state_members("qb", "dead")
        ]
        self.assertEqual(sorted(set(seen) - {seen[49]}), sorted(expected))
        self.assertEqual(len(seen), len(set(seen)))
        self.assertEqual(len(dead_order), 119)


class SmallerTests(TestCase):
    """
    Item 11: the smaller findings.
    """

    async def setUp(self) -> None:
        self.server = await ServerFixture(self).start()
        self.http = HTTP(self.server.http_port)

    async def test_run_at_past_9999(self) -> None:
        """
        9999-12-31 with a negative offset is year 10000 in UTC: refused.
        """
        client = await self.server.connect()
        kind, body = await client.send(
            "PUSH", {"type": "t", "run_at": "9999-12-31T23:00:00-05:00"}
        )
        self.assertEqual((body["code"], body["field"]), ("invalid_job", "run_at"))
        reply = await client.ok(
            "PUSH", {"type": "t", "run_at": "9999-12-31T23:59:59.999Z", "id": "late"}
        )
        self.assertTrue(reply["created"])
        job = await self.http.get("/api/v1/jobs/late")
        self.assertEqual(job.json["run_at"], "9999-12-31T23:59:59.999Z")

    async def test_dot_queues(self) -> None:
        """
        Queue names C{.} and C{..} are refused, by push, READY and the API.
        """
        client = await self.server.connect()
        for name in (".", ".."):
            kind, body = await client.send("PUSH", {"type": "t", "queue": name})
            self.assertEqual((body["code"], body["field"]), ("invalid_job", "queue"))
            kind, body = await client.send("READY", {"queues": [name]})
            self.assertEqual(body["code"], "invalid_request")
        await client.ok("PUSH", {"type": "t", "queue": "..."})
        self.assertEqual(await self.server.store.known_queues(), ["..."])

    async def test_lease_of_another_queue(self) -> None:
        """
        An ack, fail or extend whose lease names another queue than the
        job's is 409 lease_lost, as documented; a job that exists nowhere
        is 404.
        """
        await self.http.post(
            "/api/v1/jobs", body={"type": "t", "id": "j", "queue": "qa"}
        )
        job = await self.http.get(
            "/api/v1/jobs/next", params={"queues": "qa", "wait": "1"}
        )
        forged = job.json["lease"].split("@")[0] + "@qb"
        for action, body in (
            ("ack", {"lease": forged}),
            ("fail", {"lease": forged}),
            ("extend", {"lease": forged, "seconds": 10}),
        ):
            response = await self.http.post(f"/api/v1/jobs/j/{action}", body=body)
            self.assertEqual(response.code, 409, response)
            self.assertEqual(response.json["error"]["code"], "lease_lost")
        response = await self.http.post(
            "/api/v1/jobs/nosuch/ack", body={"lease": forged}
        )
        self.assertEqual(response.code, 404, response)

    async def test_compact_err_before_close(self) -> None:
        """
        ERR frames sent just before the server closes are compact JSON,
        like every other frame.
        """
        server = await ServerFixture(self, "--token", WORKER_TOKEN).start()
        client = await server.connect(worker=None)
        await client.send("HELLO", {"worker": "w", "token": "wrong"})
        await client.closed
        self.assertTrue(client.frames[-1].startswith(b'ERR {"code":"unauthorized",'))
        self.assertNotIn(b'": ', client.frames[-1])

    async def test_csrf_from_the_query(self) -> None:
        """
        The UI takes its CSRF token from the form's body only.
        """
        from tests.test_ui import Browser

        browser = Browser(self.server.http_port)
        await self.http.post("/api/v1/jobs", body={"type": "t"})
        page = await browser.get("/queues/default")
        token = page.csrf()
        refused = await browser.post(f"/queues/default/pause?csrf={token}", {})
        self.assertEqual(refused.code, 403, refused)
        both = await browser.post(
            f"/queues/default/pause?csrf={token}", {"csrf": token}
        )
        self.assertEqual(both.code, 403, both)
        queue = await self.http.get("/api/v1/queues/default")
        self.assertFalse(queue.json["paused"])
        done = await browser.post("/queues/default/pause", {"csrf": token})
        self.assertEqual(done.code, 303, done)

    async def test_worker_names(self) -> None:
        """
        Worker names with a newline, a NUL or another control character
        are refused, over TCP and HTTP.
        """
        for name in ("two\nlines", "nul\x00", "bell\x07"):
            client = await self.server.connect(worker=None)
            kind, body = await client.send("HELLO", {"worker": name})
            self.assertEqual((kind, body["field"]), ("ERR", "worker"))
        response = await self.http.get(
            "/api/v1/jobs/next", params={"worker": "a\nb", "wait": "0"}
        )
        self.assertEqual(response.code, 400, response)
        client = await self.server.connect(worker=None)
        reply = await client.ok("HELLO", {"worker": "ok é"})
        self.assertTrue(reply["worker"].startswith("ok é#"))


class UnreadJobsTests(TestCase):
    """
    Item 4 for C{JOB} frames: a worker with a large credit that never reads
    gets no new claims while the server holds its unread output; the jobs
    wait in the queue, and once it reads, it gets them all.
    """

    async def test_unread_jobs(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.task import deferLater

        server = await ServerFixture(self).start()
        client = _Silent()
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", server.tcp_port), client
        )
        self.addCleanup(lambda: client.closed)
        self.addCleanup(client.transport.abortConnection)
        client.transport.write(
            b'HELLO {"worker":"hoarder"}\nREADY {"queues":["big"],"credit":1000}\n'
        )
        producer = await server.connect("producer")
        args = "y" * 100_000
        for start in range(0, 200, 8):
            await producer.ok(
                "PUSHB",
                [{"type": "t", "queue": "big", "args": [args]} for _ in range(8)],
            )
            await deferLater(reactor, 0.05, lambda: None)
        for _ in range(20):
            await deferLater(reactor, 0.05, lambda: None)
        [connection] = [
            c
            for c in server.service.worker_factory.connections
            if c.worker == "hoarder"
        ]
        # 200 jobs of 100 KB would be 20 MB: the server holds at most a
        # claim's worth (8 jobs) more than its buffer, and claims no more.
        self.assertLess(unsent(connection.transport), 4 << 20)
        self.assertGreater(len(await server.store.state_members("big", "queued")), 0)
        client.transport.resumeProducing()
        deadline = reactor.seconds() + 20
        while client.lines < 203 and reactor.seconds() < deadline:
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(client.lines, 203)  # HI, HELLO's and READY's OK, 200 JOBs
