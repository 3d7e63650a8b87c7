"""
Tests of the HTTP worker API (L{procession.http.worker_api}): a real server in
this process on loopback ports, spoken to over HTTP as a worker would, plus
the shell worker of examples/shell and the curl session of
docs/http-api.rst run against it.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from typing import Any, Callable

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from procession.http.worker_api import Poll, lease_of, parse_wait
from procession.service.dispatcher import lease_queue, new_lease
from procession.core.errors import InvalidRequest, LeaseLost
from procession.core.job import ClaimedJob
from tests.client import ServerFixture
from tests.docs import examples, run, same_line, section_text
from tests.http import HTTP, Response

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NEXT = "/api/v1/jobs/next"


def sleep(seconds: float) -> defer.Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def until(predicate: Callable[[], Any], timeout: float = 3.0) -> None:
    """
    Wait until C{predicate()} (or what it returns, when it returns a
    coroutine) is true, failing after C{timeout} seconds.
    """
    deadline = reactor.seconds() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        await sleep(0.01)


def start(coroutine: Any) -> defer.Deferred[Any]:
    """
    Start a request now, to await it later.
    """
    return defer.ensureDeferred(coroutine)


async def raw_post(http: HTTP, path: str, data: bytes) -> Response:
    """
    POST bytes as they are (not JSON-encoded).
    """
    import treq

    headers = {b"Content-Type": [b"application/json"]}
    if http.token:
        headers[b"Authorization"] = [b"Bearer " + http.token.encode()]
    response = await http.client.request(
        "POST", http.base + path, data=data, headers=headers
    )
    return Response(response.code, response.headers, await treq.content(response))


class RawClient(Protocol):
    """
    A bare TCP connection, to send a request and vanish.
    """

    def __init__(self) -> None:
        self.data = b""
        self.closed: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


class WorkerAPITestCase(TestCase):
    """
    A server with a 1 second poll cap, and helpers.
    """

    server_args: tuple[str, ...] = ("--poll-timeout", "1")

    async def setUp(self) -> None:
        self.server = await ServerFixture(self, *self.server_args).start()
        self.dispatcher = self.server.service.dispatcher
        self.http = HTTP(self.server.http_port)

    async def push(self, job: Any) -> Response:
        response = await self.http.post("/api/v1/jobs", body=job)
        self.assertIn(response.code, (200, 201), response)
        return response

    async def next_job(self, **params: str) -> dict[str, Any]:
        params.setdefault("wait", "1")
        response = await self.http.get(NEXT, params=params)
        self.assertEqual(response.code, 200, response)
        return response.json

    async def state_is(self, queue: str, job_id: str, state: str) -> bool:
        return (await self.server.store.get_job(queue, job_id))["state"] == state

    def pollers(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.dispatcher.recent_pollers()}

    def polls(self) -> list[Poll]:
        return [c for c in self.dispatcher.consumers() if isinstance(c, Poll)]

    async def raw_get(self, query: str) -> RawClient:
        """
        Send a long poll on a bare connection.
        """
        client = RawClient()
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.http_port), client
        )
        self.addCleanup(self._abort, client)
        client.transport.write(
            f"GET {NEXT}?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        )
        return client

    async def raw_poll(self, query: str) -> RawClient:
        """
        Open a long poll on a bare connection and wait until it waits.
        """
        client = await self.raw_get(query)
        await until(lambda: len(self.polls()) == 1)
        return client

    @staticmethod
    async def _abort(client: RawClient) -> None:
        if not client.closed.called:
            client.transport.abortConnection()
            await client.closed


class PushTests(WorkerAPITestCase):
    server_args = ("--poll-timeout", "1", "--max-job-size", "2000")

    async def test_push_one(self) -> None:
        response = await self.http.post(
            "/api/v1/jobs", body={"type": "email", "args": {"to": "a@b"}, "id": "j1"}
        )
        self.assertEqual(response.code, 201)
        self.assertEqual(response.content_type, "application/json")
        self.assertEqual(response.json, {"id": "j1", "created": True})
        stored = await self.server.store.get_job("default", "j1")
        self.assertEqual((stored["state"], stored["args"]), ("queued", {"to": "a@b"}))

    async def test_push_generates_an_id(self) -> None:
        response = await self.http.post(
            "/api/v1/jobs", body={"type": "t", "queue": "q"}
        )
        self.assertEqual(response.code, 201)
        stored = await self.server.store.get_job("q", response.json["id"])
        self.assertEqual(stored["type"], "t")

    async def test_push_is_idempotent(self) -> None:
        await self.push({"type": "t", "id": "same"})
        response = await self.http.post(
            "/api/v1/jobs", body={"type": "other", "id": "same"}
        )
        self.assertEqual(
            (response.code, response.json), (200, {"id": "same", "created": False})
        )
        stored = await self.server.store.get_job("default", "same")
        self.assertEqual(stored["type"], "t")
        self.assertEqual(
            (await self.server.store.queue_sizes("default"))["sizes"]["queued"], 1
        )

    async def test_batch(self) -> None:
        await self.push({"type": "t", "id": "old"})
        response = await self.http.post(
            "/api/v1/jobs",
            body=[
                {"type": "a", "id": "old"},
                {"type": "b", "id": "new", "queue": "other"},
                {"type": "c"},
            ],
        )
        self.assertEqual(response.code, 201)
        self.assertEqual(response.json["ids"][:2], ["old", "new"])
        self.assertEqual(response.json["created"], [False, True, True])
        await self.server.store.get_job("other", "new")
        again = await self.http.post("/api/v1/jobs", body=[{"type": "a", "id": "old"}])
        self.assertEqual(
            (again.code, again.json), (200, {"ids": ["old"], "created": [False]})
        )

    async def test_batch_all_or_nothing(self) -> None:
        response = await self.http.post(
            "/api/v1/jobs", body=[{"type": "a"}, {"type": "b", "colour": 1}]
        )
        self.assertEqual(response.code, 400)
        error = response.json["error"]
        self.assertEqual(
            (error["code"], error["index"], error["field"]),
            ("invalid_job", 1, "colour"),
        )
        self.assertEqual((await self.server.store.queue_sizes("default"))["pushed"], 0)

    async def test_empty_batch(self) -> None:
        response = await self.http.post("/api/v1/jobs", body=[])
        self.assertEqual(
            (response.code, response.json["error"]["code"]), (400, "invalid_request")
        )

    async def test_invalid_jobs(self) -> None:
        for body, field in (
            ({"type": ""}, "type"),
            ({"type": "t", "queue": "a b"}, "queue"),
            ({"type": "t", "delay": -1}, "delay"),
        ):
            response = await self.http.post("/api/v1/jobs", body=body)
            self.assertEqual(response.code, 400, response)
            self.assertEqual(response.json["error"]["code"], "invalid_job")
            self.assertEqual(response.json["error"]["field"], field)
        for body in (b"5", b"null", b'"job"', b""):
            response = await raw_post(self.http, "/api/v1/jobs", body)
            self.assertEqual(
                (response.code, response.json["error"]["code"]),
                (400, "invalid_job"),
                body,
            )

    async def test_malformed_json(self) -> None:
        for body in (b"{not json", b'{"type": "t"', b"\xff\xfe"):
            response = await raw_post(self.http, "/api/v1/jobs", body)
            self.assertEqual(response.code, 400, body)
            self.assertEqual(response.content_type, "application/json")
            self.assertEqual(response.json["error"]["code"], "malformed_json")

    async def test_too_large(self) -> None:
        response = await self.http.post(
            "/api/v1/jobs", body={"type": "t", "args": "x" * 3000}
        )
        self.assertEqual(
            (response.code, response.json["error"]["code"]), (413, "frame_too_large")
        )
        batch = [{"type": "t", "args": "x" * 500} for _ in range(5)]
        response = await self.http.post("/api/v1/jobs", body=batch)
        self.assertEqual(response.code, 413)
        self.assertEqual((await self.server.store.queue_sizes("default"))["pushed"], 0)


class LongPollTests(WorkerAPITestCase):
    async def test_queued_job_at_once(self) -> None:
        await self.push({"type": "email", "args": [1], "meta": {"k": 1}, "id": "j"})
        started = reactor.seconds()
        response = await self.http.get(NEXT, params={"worker": "w1"})
        self.assertLess(reactor.seconds() - started, 0.5)
        self.assertEqual(
            (response.code, response.content_type), (200, "application/json")
        )
        job = response.json
        self.assertEqual(
            (
                job["id"],
                job["type"],
                job["queue"],
                job["args"],
                job["meta"],
                job["attempt"],
            ),
            ("j", "email", "default", [1], {"k": 1}, 1),
        )
        self.assertTrue(job["lease"].endswith("@default"), job["lease"])
        stored = await self.server.store.get_job("default", "j")
        self.assertEqual((stored["state"], stored["worker"]), ("running", "w1"))

    async def test_204_at_the_cap(self) -> None:
        started = reactor.seconds()
        response = await self.http.get(NEXT, params={"wait": "30"})
        elapsed = reactor.seconds() - started
        self.assertEqual((response.code, response.content), (204, b""))
        self.assertTrue(0.9 <= elapsed < 2.0, elapsed)
        self.assertEqual(self.polls(), [])

    async def test_204_after_wait(self) -> None:
        started = reactor.seconds()
        response = await self.http.get(NEXT, params={"wait": "0.3"})
        elapsed = reactor.seconds() - started
        self.assertEqual(response.code, 204)
        self.assertTrue(0.25 <= elapsed < 0.9, elapsed)

    async def test_woken_by_a_tcp_push(self) -> None:
        poll = start(self.http.get(NEXT, params={"wait": "30", "worker": "waiter"}))
        await until(lambda: self.pollers().get("waiter", {}).get("waiting") == 1)
        # Let the poll's first claim find the queue empty: from now on only a
        # push can wake it.
        await sleep(0.1)
        self.assertFalse(poll.called)
        producer = await self.server.connect("producer")
        pushed_at = reactor.seconds()
        pushed = await producer.ok("PUSH", {"type": "t"})
        response = await poll
        elapsed = reactor.seconds() - pushed_at
        self.assertEqual((response.code, response.json["id"]), (200, pushed["id"]))
        self.assertLess(elapsed, 0.2)

    async def test_woken_by_an_http_push(self) -> None:
        poll = start(self.http.get(NEXT, params={"wait": "30", "queues": "mail"}))
        await until(lambda: len(self.polls()) == 1)
        await sleep(0.1)
        pushed_at = reactor.seconds()
        await self.push({"type": "t", "queue": "mail", "id": "m"})
        response = await poll
        self.assertEqual(response.json["id"], "m")
        self.assertLess(reactor.seconds() - pushed_at, 0.2)

    async def test_queue_preference(self) -> None:
        await self.push(
            [{"type": "t", "id": "d1"}, {"type": "t", "id": "h1", "queue": "high"}]
        )
        first = await self.next_job(queues="high,default")
        second = await self.next_job(queues="high,default")
        self.assertEqual([first["id"], second["id"]], ["h1", "d1"])

    async def test_one_job_per_poll(self) -> None:
        await self.push([{"type": "t", "id": str(i)} for i in range(3)])
        polls = [start(self.http.get(NEXT)) for _ in range(3)]
        responses = await defer.gatherResults(polls)
        self.assertEqual(sorted(r.json["id"] for r in responses), ["0", "1", "2"])
        self.assertEqual(self.polls(), [])

    async def test_bad_parameters(self) -> None:
        for params, field in (
            ({"wait": "soon"}, "wait"),
            ({"wait": "-1"}, "wait"),
            ({"wait": "nan"}, "wait"),
            ({"queues": "a b"}, "queues"),
            ({"queues": "a,,b"}, "queues"),
            ({"queues": "a,a"}, "queues"),
            ({"worker": "w" * 129}, "worker"),
        ):
            response = await self.http.get(NEXT, params=params)
            self.assertEqual(response.code, 400, (params, response))
            self.assertEqual(response.json["error"]["field"], field)
        self.assertEqual(self.polls(), [])

    async def test_head_takes_no_job(self) -> None:
        await self.push({"type": "t", "id": "h"})
        response = await self.http.request("HEAD", NEXT)
        self.assertEqual(response.code, 405)
        stored = await self.server.store.get_job("default", "h")
        self.assertEqual(stored["state"], "queued")

    async def test_recent_pollers(self) -> None:
        poll = start(
            self.http.get(
                NEXT, params={"wait": "30", "worker": "rp", "queues": "q1,q2"}
            )
        )
        await until(lambda: "rp" in self.pollers())
        waiting = self.pollers()["rp"]
        self.assertEqual(
            set(waiting),
            {
                "kind",
                "name",
                "queues",
                "since",
                "last_seen",
                "waiting",
                "jobs_in_hand",
                "jobs",
            },
        )
        self.assertEqual(
            (
                waiting["kind"],
                waiting["queues"],
                waiting["waiting"],
                waiting["jobs_in_hand"],
                waiting["jobs"],
            ),
            ("http", ["q1", "q2"], 1, 0, []),
        )
        self.assertRegex(waiting["since"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        await self.push({"type": "t", "queue": "q2", "id": "x"})
        job = (await poll).json
        holding = self.pollers()["rp"]
        self.assertEqual(
            (holding["waiting"], holding["jobs_in_hand"], holding["jobs"]),
            (0, 1, [{"id": "x", "queue": "q2"}]),
        )
        response = await self.http.post(
            "/api/v1/jobs/x/ack", body={"lease": job["lease"]}
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(self.pollers()["rp"]["jobs_in_hand"], 0)

    async def test_quiet_ends_polls(self) -> None:
        poll = start(self.http.get(NEXT, params={"wait": "30"}))
        await until(lambda: len(self.polls()) == 1)
        self.dispatcher.quiet()
        response = await poll
        self.assertEqual(
            (response.code, response.json["error"]["code"]), (503, "shutting_down")
        )
        response = await self.http.get(NEXT)
        self.assertEqual(response.code, 503)


class BatchTests(WorkerAPITestCase):
    """
    Taking many jobs with one poll (count) and acking many with one
    request (POST /api/v1/acks).
    """

    async def test_count_takes_what_is_queued(self) -> None:
        await self.push([{"type": "t", "id": f"b{i}"} for i in range(5)])
        response = await self.http.get(NEXT, params={"count": "3", "worker": "batcher"})
        self.assertEqual(response.code, 200, response)
        self.assertEqual([j["id"] for j in response.json], ["b0", "b1", "b2"])
        self.assertEqual(len({j["lease"] for j in response.json}), 3)
        response = await self.http.get(NEXT, params={"count": "10"})
        self.assertEqual([j["id"] for j in response.json], ["b3", "b4"])
        for i in range(5):
            self.assertTrue(await self.state_is("default", f"b{i}", "running"))
        self.assertEqual(len(self.pollers()["batcher"]["jobs"]), 3)
        self.assertEqual(self.polls(), [])

    async def test_count_answers_with_the_first_jobs_pushed(self) -> None:
        poll = start(self.http.get(NEXT, params={"count": "50", "wait": "30"}))
        await until(lambda: len(self.polls()) == 1)
        await sleep(0.1)
        await self.push({"type": "t", "id": "alone"})
        response = await poll
        self.assertEqual([j["id"] for j in response.json], ["alone"])

    async def test_count_times_out_empty(self) -> None:
        response = await self.http.get(NEXT, params={"count": "5", "wait": "0.2"})
        self.assertEqual((response.code, response.content), (204, b""))

    async def test_bad_count(self) -> None:
        for count in ("0", "-1", "1001", "two", "1.5"):
            response = await self.http.get(NEXT, params={"count": count})
            self.assertEqual(response.code, 400, (count, response))
            self.assertEqual(response.json["error"]["field"], "count")
        self.assertEqual(self.polls(), [])

    async def test_acks(self) -> None:
        await self.push([{"type": "t", "id": f"a{i}"} for i in range(3)])
        jobs = (await self.http.get(NEXT, params={"count": "3"})).json
        response = await self.http.post(
            "/api/v1/acks",
            body=[
                {"id": jobs[0]["id"], "lease": jobs[0]["lease"], "result": [1]},
                {"id": jobs[1]["id"], "lease": "not-a-lease"},
                {"id": jobs[2]["id"], "lease": jobs[2]["lease"]},
                {"id": jobs[0]["id"], "lease": jobs[0]["lease"]},
            ],
        )
        self.assertEqual(response.code, 200, response)
        results = response.json["results"]
        self.assertEqual(results[0], {"id": "a0"})
        self.assertEqual(results[1]["error"]["code"], "lease_lost")
        self.assertEqual(results[2], {"id": "a2"})
        # The same job twice in one batch: one of the two acks wins.
        self.assertEqual(
            sorted(
                [
                    results[0].get("error", {}).get("code"),
                    results[3].get("error", {}).get("code"),
                ],
                key=str,
            ),
            sorted([None, "lease_lost"], key=str),
        )
        stored = await self.server.store.get_job("default", "a0")
        self.assertEqual((stored["state"], stored["result"]), ("completed", [1]))
        self.assertTrue(await self.state_is("default", "a1", "running"))
        self.assertTrue(await self.state_is("default", "a2", "completed"))

    async def test_bad_acks(self) -> None:
        for body, field in (
            ({"id": "x"}, None),
            ([], None),
            ([{"id": "x"}], "lease"),
            ([{"lease": "l@default"}], "id"),
            ([{"id": "x", "lease": "l@default"}, 5], None),
            ([{"id": "x", "lease": "l@default"}] * 1001, None),
        ):
            response = await self.http.post("/api/v1/acks", body=body)
            self.assertEqual(response.code, 400, (body, response))
            self.assertEqual(response.json["error"].get("field"), field, body)


class VanishingPollerTests(WorkerAPITestCase):
    """
    A poller that goes away loses no job and leaves none stuck.
    """

    async def test_killed_mid_wait(self) -> None:
        client = await self.raw_poll("wait=30&worker=doomed")
        await sleep(0.1)
        client.transport.abortConnection()
        await client.closed
        await until(lambda: self.polls() == [])
        self.assertEqual(self.pollers()["doomed"]["waiting"], 0)
        await self.push({"type": "t", "id": "after"})
        started = reactor.seconds()
        job = await self.next_job(worker="survivor")
        self.assertEqual((job["id"], job["attempt"]), ("after", 1))
        self.assertLess(reactor.seconds() - started, 0.5)

    def hold_next_claim(self) -> list[tuple[defer.Deferred[Any], defer.Deferred[Any]]]:
        """
        Make the store's next claim take effect in Redis at once but reach
        the dispatcher only when the test says: a list that receives the
        pair (the claim is done, let the dispatcher have it).
        """
        store = self.server.store
        claim = store.claim
        held: list[tuple[defer.Deferred[Any], defer.Deferred[Any]]] = []

        def held_claim(queue: str, slots: Any) -> defer.Deferred[Any]:
            del store.claim
            done = claim(queue, slots)
            gate: defer.Deferred[Any] = defer.Deferred()
            held.append((done, gate))
            return gate.addCallback(lambda _: done)

        def cleanup() -> None:
            store.__dict__.pop("claim", None)
            for _, gate in held:
                if not gate.called:
                    gate.callback(None)

        store.claim = held_claim
        # Runs before the server stops: a claim still held would stall it.
        self.addCleanup(cleanup)
        return held

    async def test_job_claimed_as_the_poller_vanishes(self) -> None:
        await self.push({"type": "t", "id": "race"})
        held = self.hold_next_claim()
        client = await self.raw_poll("wait=30&worker=racer")
        await until(lambda: held and held[0][0].called)
        stored = await self.server.store.get_job("default", "race")
        self.assertEqual((stored["state"], stored["worker"]), ("running", "racer"))
        # The client goes while its job is on its way from Redis.
        client.transport.abortConnection()
        await client.closed
        await until(lambda: self.polls() == [])
        held[0][1].callback(None)
        await until(lambda: self.state_is("default", "race", "queued"))
        stored = await self.server.store.get_job("default", "race")
        self.assertEqual((stored["attempt"], stored["errors"]), (0, []))
        worker = await self.server.connect("worker")
        await worker.ok("READY", {"queues": ["default"], "credit": 1})
        job = await worker.next_job(timeout=1)
        self.assertEqual((job["id"], job["attempt"]), ("race", 1))
        self.assertEqual(client.data, b"")

    async def test_job_claimed_as_the_wait_runs_out(self) -> None:
        await self.push({"type": "t", "id": "late"})
        held = self.hold_next_claim()
        poll = start(self.http.get(NEXT, params={"wait": "0.2"}))
        await until(lambda: held and held[0][0].called)
        response = await poll
        self.assertEqual(response.code, 204)
        held[0][1].callback(None)
        await until(lambda: self.state_is("default", "late", "queued"))
        job = await self.next_job()
        self.assertEqual((job["id"], job["attempt"]), ("late", 1))

    async def test_poller_gone_after_its_job_was_sent(self) -> None:
        # Delivered, then never acked: it comes back when its lease expires.
        await self.push({"type": "t", "id": "lost", "timeout": 0.3})
        client = await self.raw_get("wait=5&worker=reader")
        await until(lambda: b"lost" in client.data)
        client.transport.abortConnection()
        job = await self.next_job(wait="1")
        self.assertEqual((job["id"], job["attempt"]), ("lost", 2))


class FinishTests(WorkerAPITestCase):
    """
    Ack, fail and extend by lease.
    """

    async def take(self, **job: Any) -> dict[str, Any]:
        job.setdefault("type", "t")
        await self.push(job)
        return await self.next_job(
            worker="finisher", queues=job.get("queue", "default")
        )

    async def test_ack(self) -> None:
        job = await self.take(id="a")
        response = await self.http.post(
            "/api/v1/jobs/a/ack", body={"lease": job["lease"], "result": {"n": [42]}}
        )
        self.assertEqual((response.code, response.json), (200, {"id": "a"}))
        self.assertEqual(response.content_type, "application/json")
        stored = await self.server.store.get_job("default", "a")
        self.assertEqual(
            (stored["state"], stored["result"]), ("completed", {"n": [42]})
        )
        again = await self.http.post("/api/v1/jobs/a/ack", body={"lease": job["lease"]})
        self.assertEqual(again.code, 409)
        self.assertEqual(
            again.json["error"],
            {
                "code": "lease_lost",
                "message": "the lease on job 'a' expired or was revoked",
                "id": "a",
            },
        )

    async def test_ack_without_result(self) -> None:
        job = await self.take(id="a", queue="other")
        response = await raw_post(
            self.http,
            "/api/v1/jobs/a/ack",
            json.dumps({"lease": job["lease"]}).encode(),
        )
        self.assertEqual(response.code, 200)
        stored = await self.server.store.get_job("other", "a")
        self.assertEqual((stored["state"], stored["result"]), ("completed", None))

    async def test_id_with_a_slash(self) -> None:
        job = await self.take(id="user/42")
        response = await self.http.post(
            "/api/v1/jobs/user%2F42/extend", body={"lease": job["lease"], "seconds": 10}
        )
        self.assertEqual((response.code, response.json["id"]), (200, "user/42"))
        response = await self.http.post(
            "/api/v1/jobs/user/42/ack", body={"lease": job["lease"]}
        )
        self.assertEqual((response.code, response.json), (200, {"id": "user/42"}))

    async def test_bad_leases(self) -> None:
        job = await self.take(id="b")
        for body in ({}, {"lease": 5}, {"lease": ""}, {"result": 1}):
            response = await self.http.post("/api/v1/jobs/b/ack", body=body)
            self.assertEqual(response.code, 400, body)
            self.assertEqual(
                (response.json["error"]["code"], response.json["error"]["field"]),
                ("invalid_request", "lease"),
            )
        for lease in (
            "nonsense",
            "abc@",
            "@default",
            "abc@bad queue",
            "x" + job["lease"],
        ):
            response = await self.http.post("/api/v1/jobs/b/ack", body={"lease": lease})
            self.assertEqual(
                (response.code, response.json["error"]["code"]),
                (409, "lease_lost"),
                lease,
            )
        # A lease naming another queue than the job's cannot be its lease.
        other = job["lease"].replace("@default", "@other")
        for route, body in (
            ("ack", {"lease": other}),
            ("extend", {"lease": other, "seconds": 10}),
            ("progress", {"lease": other, "progress": 10}),
        ):
            response = await self.http.post(f"/api/v1/jobs/b/{route}", body=body)
            self.assertEqual(
                (response.code, response.json["error"]["code"]), (409, "lease_lost")
            )
        for body in (b"[1]", b"5", b"{nope"):
            response = await raw_post(self.http, "/api/v1/jobs/b/ack", body)
            self.assertEqual(response.code, 400, body)
        # None of that touched the job.
        response = await self.http.post(
            "/api/v1/jobs/b/ack", body={"lease": job["lease"]}
        )
        self.assertEqual(response.code, 200)

    async def test_unknown_job(self) -> None:
        job = await self.take(id="c")
        for action, body in (("ack", {}), ("fail", {}), ("extend", {"seconds": 5})):
            response = await self.http.post(
                f"/api/v1/jobs/nope/{action}", body={"lease": job["lease"], **body}
            )
            self.assertEqual(
                (response.code, response.json["error"]["code"]),
                (404, "not_found"),
                action,
            )

    async def test_fail_then_retry_then_dead(self) -> None:
        job = await self.take(id="f", max_attempts=2)
        response = await self.http.post(
            "/api/v1/jobs/f/fail",
            body={
                "lease": job["lease"],
                "error": {"type": "Boom", "message": "no", "backtrace": ["x.py:1"]},
                "retry_in": 0,
            },
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(
            (response.json["id"], response.json["state"]), ("f", "retrying")
        )
        self.assertRegex(response.json["run_at"], r"^\d{4}-\d\d-\d\dT")
        job = await self.next_job(wait="1", worker="finisher")
        self.assertEqual((job["id"], job["attempt"]), ("f", 2))
        response = await self.http.post(
            "/api/v1/jobs/f/fail",
            body={"lease": job["lease"], "error": {"message": "again"}},
        )
        self.assertEqual(
            (response.code, response.json), (200, {"id": "f", "state": "dead"})
        )
        stored = await self.server.store.get_job("default", "f")
        self.assertEqual(stored["state"], "dead")
        errors = stored["errors"]
        self.assertEqual([e["message"] for e in errors], ["again", "no"])
        self.assertEqual(
            (errors[1]["type"], errors[1]["backtrace"], errors[1]["worker"]),
            ("Boom", ["x.py:1"], "finisher"),
        )

    async def test_fail_without_retry(self) -> None:
        job = await self.take(id="g")
        response = await self.http.post(
            "/api/v1/jobs/g/fail", body={"lease": job["lease"], "retry": False}
        )
        self.assertEqual(
            (response.code, response.json), (200, {"id": "g", "state": "dead"})
        )

    async def test_fail_checks_its_fields(self) -> None:
        job = await self.take(id="h")
        for body, field in (
            ({"error": "boom"}, "error"),
            ({"retry_in": -1}, "retry_in"),
            ({"retry_in": "soon"}, "retry_in"),
            ({"retry_in": True}, "retry_in"),
            ({"retry": "no"}, "retry"),
        ):
            response = await self.http.post(
                "/api/v1/jobs/h/fail", body={"lease": job["lease"], **body}
            )
            self.assertEqual(response.code, 400, body)
            self.assertEqual(
                (response.json["error"]["code"], response.json["error"]["field"]),
                ("invalid_request", field),
            )
        stored = await self.server.store.get_job("default", "h")
        self.assertEqual(stored["state"], "running")

    async def test_extend(self) -> None:
        job = await self.take(id="e", timeout=0.5)
        response = await self.http.post(
            "/api/v1/jobs/e/extend", body={"lease": job["lease"], "seconds": 30}
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(set(response.json), {"id", "expires_at"})
        for seconds in (0, -1, "5", None, 7 * 86400 + 1):
            bad = await self.http.post(
                "/api/v1/jobs/e/extend",
                body={"lease": job["lease"], "seconds": seconds},
            )
            self.assertEqual(
                (bad.code, bad.json["error"]["field"]), (400, "seconds"), seconds
            )
        await sleep(1.0)
        response = await self.http.post(
            "/api/v1/jobs/e/ack", body={"lease": job["lease"]}
        )
        self.assertEqual(response.code, 200)

    async def test_expired_lease_is_lost(self) -> None:
        job = await self.take(id="x", timeout=0.3)
        # The sweep (every 0.2 s) takes the job back once its lease expires.
        await until(lambda: self.state_is("default", "x", "queued"))
        for action, body in (("extend", {"seconds": 5}), ("fail", {}), ("ack", {})):
            response = await self.http.post(
                f"/api/v1/jobs/x/{action}", body={"lease": job["lease"], **body}
            )
            self.assertEqual(
                (response.code, response.json["error"]["code"]),
                (409, "lease_lost"),
                action,
            )
        stored = await self.server.store.get_job("default", "x")
        self.assertEqual(
            (stored["state"], stored["errors"][0]["type"]), ("queued", "LeaseExpired")
        )
        self.assertEqual(self.pollers()["finisher"]["jobs_in_hand"], 0)

    async def test_unacked_job_comes_back(self) -> None:
        first = await self.take(id="u", timeout=0.3)
        started = reactor.seconds()
        second = await self.next_job(wait="1", worker="second")
        self.assertLess(reactor.seconds() - started, 1.0)
        self.assertEqual((second["id"], second["attempt"]), ("u", 2))
        self.assertNotEqual(second["lease"], first["lease"])
        late = await self.http.post(
            "/api/v1/jobs/u/ack", body={"lease": first["lease"]}
        )
        self.assertEqual(late.code, 409)
        response = await self.http.post(
            "/api/v1/jobs/u/ack", body={"lease": second["lease"], "result": 1}
        )
        self.assertEqual(response.code, 200)


class AuthTests(TestCase):
    async def setUp(self) -> None:
        self.server = await ServerFixture(
            self, "--token", "w", "--admin-token", "a", "--poll-timeout", "1"
        ).start()
        self.port = self.server.http_port

    async def test_tokens(self) -> None:
        for token, code in ((None, 401), ("wrong", 401), ("w", 201), ("a", 201)):
            response = await HTTP(self.port, token).post(
                "/api/v1/jobs", body={"type": "t", "id": f"job-{token}"}
            )
            self.assertEqual(response.code, code, token)
            if code == 401:
                self.assertEqual(response.json["error"]["code"], "unauthorized")
        for token, code in ((None, 401), ("wrong", 401), ("w", 200), ("a", 200)):
            response = await HTTP(self.port, token).get(NEXT, params={"wait": "0.2"})
            self.assertEqual(response.code, code, token)
            if code == 200:
                job = response.json
                for bad in (None, "wrong"):
                    refused = await HTTP(self.port, bad).post(
                        f"/api/v1/jobs/{job['id']}/ack", body={"lease": job["lease"]}
                    )
                    self.assertEqual(refused.code, 401)
                acked = await HTTP(self.port, token).post(
                    f"/api/v1/jobs/{job['id']}/ack", body={"lease": job["lease"]}
                )
                self.assertEqual(acked.code, 200)
        self.assertEqual(self.server.service.dispatcher.consumers(), [])

    async def test_bearer_scheme_only(self) -> None:
        http = HTTP(self.port)
        response = await http.client.get(
            http.base + NEXT, headers={b"Authorization": [b"Basic dzp3"]}
        )
        self.assertEqual(response.code, 401)
        import treq

        await treq.content(response)


class ShellWorkerTests(TestCase):
    """
    examples/shell/worker.sh, run as it is against a live server.
    """

    async def run_worker(self, server: ServerFixture, **settings: str) -> str:
        """
        Run the shell worker until it exits; return what it logged.
        """
        env = {
            # python3 first from this interpreter's folder: quicker than a
            # version manager's shim, and surely there.
            "PATH": os.path.dirname(sys.executable)
            + os.pathsep
            + os.environ.get("PATH", ""),
            "PROCESSION_URL": f"http://127.0.0.1:{server.http_port}",
            "WAIT": "1",
            **settings,
        }
        script = os.path.join(ROOT, "examples", "shell", "worker.sh")
        d = getProcessOutputAndValue("bash", [script], env=env, reactor=reactor)
        d.addTimeout(60, reactor)
        out, err, code = await d
        self.assertEqual(code, 0, err)
        return err.decode()

    async def test_three_jobs(self) -> None:
        server = await ServerFixture(
            self, "--token", "w", "--poll-timeout", "1"
        ).start()
        jobs = [
            {"type": "greet", "args": ["world"], "id": "s1"},
            {"type": "resize", "args": {"w": 3, "h": "it's"}, "id": "odd/id?#%"},
            {"type": "greet", "args": [], "id": "s3"},
        ]
        http = HTTP(server.http_port, "w")
        response = await http.post("/api/v1/jobs", body=jobs[:2])
        self.assertEqual(response.code, 201)
        worker = start(
            self.run_worker(server, PROCESSION_TOKEN="w", MAX_JOBS="3", WORKER="shell")
        )
        # The last job comes after at least one poll has answered 204.
        await sleep(1.5)
        self.assertFalse(worker.called)
        response = await http.post("/api/v1/jobs", body=jobs[2])
        self.assertEqual(response.code, 201)
        log = await worker
        for job in jobs:
            stored = await server.store.get_job("default", job["id"])
            self.assertEqual(
                (stored["state"], stored["worker"]), ("completed", "shell"), log
            )
            self.assertEqual(
                stored["result"], f"{job['type']} {json.dumps(job['args'])}"
            )

    async def test_failing_handler(self) -> None:
        server = await ServerFixture(self, "--poll-timeout", "1").start()
        await HTTP(server.http_port).post(
            "/api/v1/jobs", body={"type": "t", "id": "bad"}
        )
        await self.run_worker(server, MAX_JOBS="1", HANDLER="false")
        stored = await server.store.get_job("default", "bad")
        self.assertEqual(
            (stored["state"], stored["errors"][0]["type"]),
            ("retrying", "HandlerFailed"),
        )


class DocsTests(TestCase):
    """
    The curl session of docs/http-api.rst's "Worker API", run as written
    against a live server (L{tests.docs}).
    """

    async def test_worker_api_session(self) -> None:
        with open(os.path.join(ROOT, "docs", "http-api.rst"), encoding="utf-8") as f:
            text = section_text(f.read(), ["Worker API"])
        session = [e for e in examples(text) if not e.command.startswith("export ")]
        self.assertGreater(len(session), 10)
        server = await ServerFixture(
            self, "--token", "s3cret", "--poll-timeout", "1"
        ).start()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PROCESSION_URL": f"http://127.0.0.1:{server.http_port}",
            "PROCESSION_TOKEN": "s3cret",
        }
        seen: dict[str, str] = {}
        for example in session:
            self.assertTrue(example.command.startswith("curl "), example.command)
            actual = await run(example, env, seen)
            self.assertEqual(
                len(actual), len(example.output), (example.command, actual)
            )
            for documented, line in zip(example.output, actual):
                self.assertTrue(
                    same_line(documented, line, seen),
                    f"{example.command}\ndocumented: {documented}\nactual:     {line}",
                )


class FakeDispatcher:
    def __init__(self) -> None:
        self.consumers: list[Any] = []
        self.reactor = Clock()

    def add_consumer(self, consumer: Any) -> None:
        self.consumers.append(consumer)

    def remove_consumer(self, consumer: Any) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)


def claimed(lease: str = "l@default") -> ClaimedJob:
    return ClaimedJob("j", "default", lease, 1, "{}", 300.0)


class PollTests(SynchronousTestCase):
    """
    L{Poll}, the long-poll's dispatcher consumer.
    """

    def setUp(self) -> None:
        self.dispatcher = FakeDispatcher()
        self.poll = Poll(self.dispatcher, "w", ("default",))  # type: ignore[arg-type]
        self.poll.start()

    def test_takes_one_job(self) -> None:
        self.assertEqual(self.poll.room(), 1)
        job = claimed()
        self.assertTrue(self.poll.deliver(job))
        self.assertEqual(self.successResultOf(self.poll.result), [job])
        self.assertEqual((self.poll.room(), self.dispatcher.consumers), (0, []))
        self.assertFalse(self.poll.deliver(claimed("other@default")))

    def test_takes_a_claims_worth(self) -> None:
        """
        With room for several, a poll answers after the turn that brought
        its first job, with every job that turn brought.
        """
        poll = Poll(self.dispatcher, "w", ("default",), 3)  # type: ignore[arg-type]
        poll.start()
        first, second = claimed("a@default"), claimed("b@default")
        self.assertTrue(poll.deliver(first))
        self.assertTrue(poll.deliver(second))
        self.assertEqual(poll.room(), 1)
        self.assertNoResult(poll.result)
        self.dispatcher.reactor.advance(0)
        self.assertEqual(self.successResultOf(poll.result), [first, second])
        self.assertEqual(poll.room(), 0)
        self.assertFalse(poll.deliver(claimed("c@default")))

    def test_full_answers_at_once(self) -> None:
        poll = Poll(self.dispatcher, "w", ("default",), 2)  # type: ignore[arg-type]
        poll.start()
        jobs = [claimed("a@default"), claimed("b@default")]
        for job in jobs:
            self.assertTrue(poll.deliver(job))
        self.assertEqual(self.successResultOf(poll.result), jobs)

    def test_cancelled_with_jobs_taken(self) -> None:
        """
        A poll whose wait runs out between its first job and its answer
        still answers with what it took: those jobs are leased to it.
        """
        poll = Poll(self.dispatcher, "w", ("default",), 5)  # type: ignore[arg-type]
        poll.start()
        job = claimed()
        poll.deliver(job)
        poll.result.cancel()
        self.assertEqual(self.successResultOf(poll.result), [job])
        self.assertNotIn(poll, self.dispatcher.consumers)
        self.dispatcher.reactor.advance(0)

    def test_cancelled(self) -> None:
        self.poll.result.cancel()
        self.failureResultOf(self.poll.result, defer.CancelledError)
        self.assertEqual((self.poll.room(), self.dispatcher.consumers), (0, []))
        # A job claimed for it meanwhile is refused: the dispatcher gives it back.
        self.assertFalse(self.poll.deliver(claimed()))

    def test_quiet(self) -> None:
        self.poll.quiet()
        self.assertIsNone(self.successResultOf(self.poll.result))
        self.assertTrue(self.poll.quieted)
        self.assertEqual(self.dispatcher.consumers, [])
        self.assertFalse(self.poll.deliver(claimed()))


class LeaseTests(SynchronousTestCase):
    def test_lease_names_its_queue(self) -> None:
        for queue in ("default", "a.b:c-d_e", "x" * 128):
            lease = new_lease(queue)
            self.assertEqual(lease_queue(lease), queue)
            self.assertNotEqual(lease, new_lease(queue))
            self.assertEqual(lease_of({"lease": lease}, "j"), (lease, queue))

    def test_not_a_lease(self) -> None:
        for text in ("", "abc", "abc@", "@default", "a@b c", "a@" + "x" * 129):
            self.assertIsNone(lease_queue(text), text)
        self.assertRaises(LeaseLost, lease_of, {"lease": "abc"}, "j")
        for body in ({}, {"lease": None}, {"lease": 1}, {"lease": ""}):
            self.assertRaises(InvalidRequest, lease_of, body, "j")

    def test_wait(self) -> None:
        self.assertEqual(parse_wait(None, 15.0), 15.0)
        self.assertEqual(parse_wait("2.5", 15.0), 2.5)
        self.assertEqual(parse_wait("100", 15.0), 15.0)
        self.assertEqual(parse_wait("inf", 15.0), 15.0)
        self.assertEqual(parse_wait("0", 15.0), 0.1)
        for text in ("-1", "nan", "soon", ""):
            self.assertRaises(InvalidRequest, parse_wait, text, 15.0)
