"""
Hostile and careless input found by a red-team pass (issue 12), each
against a real server on loopback over real sockets: what
docs/reliability.rst's "Bad input" table promises for each.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
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
            if name == "push" and queue == "qb":
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
