"""
End-to-end tests of the management and statistics API
(L{procession.http.admin_api}): a real server in this process, real sockets, a
real Redis; jobs are pushed and worked on by TCP clients, as in production.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from procession.core.listing import encode_cursor
from procession.http.web import app
from tests.client import LineClient, ServerFixture
from tests.http import HTTP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every management route, with a path that exists once a job "j1" does.
ADMIN_ROUTES = [
    ("GET", "/api/v1/stats"),
    ("GET", "/api/v1/queues"),
    ("GET", "/api/v1/queues/default"),
    ("POST", "/api/v1/queues/default/pause"),
    ("POST", "/api/v1/queues/default/resume"),
    ("DELETE", "/api/v1/queues/default/jobs?state=dead"),
    ("POST", "/api/v1/queues/default/retry?state=dead"),
    ("POST", "/api/v1/queues/default/kill?state=scheduled"),
    ("GET", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs/j1"),
    ("POST", "/api/v1/jobs/j1/kill"),
    ("POST", "/api/v1/jobs/j1/retry"),
    ("POST", "/api/v1/jobs/j1/cancel"),
    ("DELETE", "/api/v1/jobs/j1"),
    ("GET", "/api/v1/workers"),
    ("POST", "/api/v1/workers/nobody/quiet"),
]


def sleep(seconds: float) -> defer.Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class AdminTestCase(TestCase):
    """
    A server with a worker token C{w} and an admin token C{a}, an HTTP
    client with the admin token and a TCP producer.
    """

    async def setUp(self) -> None:
        self.server = await ServerFixture(
            self, "--token", "w", "--admin-token", "a"
        ).start()
        self.http = HTTP(self.server.http_port, token="a")
        self.producer = await self.server.connect("producer", token="w")

    async def push(self, *jobs: dict) -> list[str]:
        reply = await self.producer.ok("PUSHB", list(jobs))
        return reply["ids"]

    async def worker(
        self, queues: list[str] = ["default"], credit: int = 1, name: str = "worker"
    ) -> LineClient:
        client = await self.server.connect(name, token="w")
        await client.ok("READY", {"queues": queues, "credit": credit})
        return client

    async def ok(self, method: str, path: str, **kwargs) -> dict:
        response = await self.http.request(method, path, **kwargs)
        self.assertEqual(response.code, 200, response)
        self.assertEqual(response.content_type, "application/json")
        return response.json

    async def error(
        self, status: int, code: str, method: str, path: str, **kwargs
    ) -> dict:
        response = await self.http.request(method, path, **kwargs)
        self.assertEqual(
            (response.code, response.json["error"]["code"]), (status, code), response
        )
        return response.json["error"]


class AuthTests(AdminTestCase):
    async def test_admin_routes_need_the_admin_token(self) -> None:
        await self.push({"id": "j1", "type": "t"})
        for method, path in ADMIN_ROUTES:
            response = await self.http.request(method, path, token=None)
            self.assertEqual(response.code, 401, (method, path, response))
            self.assertEqual(response.json["error"]["code"], "unauthorized")
            response = await self.http.request(method, path, token="w")
            self.assertEqual(response.code, 403, (method, path, response))
            self.assertEqual(response.json["error"]["code"], "forbidden")
            response = await self.http.request(method, path, token="nope")
            self.assertEqual(response.code, 401, (method, path, response))
            response = await self.http.request(method, path)
            self.assertNotIn(response.code, (401, 403, 500), (method, path, response))

    async def test_open_routes(self) -> None:
        for path in ("/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"):
            response = await self.http.get(path, token=None)
            self.assertEqual(response.code, 200, (path, response))


class QueueTests(AdminTestCase):
    async def test_numbers_follow_the_work(self) -> None:
        await self.push(*[{"type": "t", "id": f"j{i}"} for i in range(5)])
        await self.push({"type": "t", "delay": 600}, {"type": "t", "queue": "other"})
        worker = await self.worker(credit=3)
        jobs = [await worker.next_job() for _ in range(3)]
        await worker.ok("ACK", {"id": jobs[0]["id"]})
        await worker.ok("ACK", {"id": jobs[1]["id"]})
        await worker.ok(
            "FAIL", {"id": jobs[2]["id"], "error": {"message": "no"}, "retry": False}
        )
        await sleep(0.05)

        queue = await self.ok("GET", "/api/v1/queues/default")
        # The worker has room again and holds the next two jobs.
        self.assertEqual(
            queue["sizes"],
            {"queued": 0, "scheduled": 1, "retrying": 0, "running": 2, "dead": 1},
        )
        self.assertEqual(
            queue["totals"],
            {
                "pushed": 6,
                "processed": 2,
                "failed": 1,
                "expired": 0,
                "unique_collisions": 0,
            },
        )
        self.assertEqual(queue["throughput"]["processed"]["last_minute"], 2)
        self.assertEqual(queue["throughput"]["failed"]["last_minute"], 1)
        self.assertAlmostEqual(queue["throughput"]["processed"]["last_hour"], 2 / 60, 3)
        self.assertFalse(queue["paused"])
        self.assertEqual(queue["latency"], 0)
        self.assertIsNone(queue["oldest_enqueued_at"])

        stats = await self.ok("GET", "/api/v1/stats")
        self.assertEqual(
            stats["totals"],
            {
                "pushed": 7,
                "processed": 2,
                "failed": 1,
                "expired": 0,
                "unique_collisions": 0,
                "queued": 1,
                "scheduled": 1,
                "retrying": 0,
                "running": 2,
                "dead": 1,
            },
        )
        self.assertEqual(stats["queues"], 2)
        self.assertEqual(stats["workers"], {"tcp": 2, "http": 0, "total": 2})
        self.assertEqual(stats["throughput"]["processed"]["last_minute"], 2)

        queues = await self.ok("GET", "/api/v1/queues")
        self.assertEqual([q["name"] for q in queues["queues"]], ["default", "other"])
        self.assertEqual(queues["queues"][1]["sizes"]["queued"], 1)

    async def test_latency_is_the_oldest_queued_job(self) -> None:
        await self.push({"type": "t", "id": "old", "priority": -5})
        await sleep(0.3)
        await self.push({"type": "t", "id": "new", "priority": 5})
        queue = await self.ok("GET", "/api/v1/queues/default")
        # "new" runs first, but "old" has waited longest.
        self.assertGreaterEqual(queue["latency"], 0.3)
        self.assertLess(queue["latency"], 5)
        old = await self.ok("GET", "/api/v1/jobs/old")
        self.assertEqual(queue["oldest_enqueued_at"], old["enqueued_at"])
        stats = await self.ok("GET", "/api/v1/stats")
        self.assertGreaterEqual(stats["latency"], 0.3)

    async def test_unknown_and_invalid_queue(self) -> None:
        await self.error(404, "queue_not_found", "GET", "/api/v1/queues/nope")
        await self.error(400, "invalid_request", "GET", "/api/v1/queues/b%20ad")
        await self.error(
            404, "queue_not_found", "POST", "/api/v1/queues/nope/retry?state=dead"
        )

    async def test_pause_and_resume(self) -> None:
        reply = await self.ok("POST", "/api/v1/queues/default/pause")
        self.assertEqual(reply, {"name": "default", "paused": True, "changed": True})
        reply = await self.ok("POST", "/api/v1/queues/default/pause")
        self.assertFalse(reply["changed"])
        self.assertTrue((await self.ok("GET", "/api/v1/queues/default"))["paused"])
        await self.push({"type": "t", "id": "p1"})
        worker = await self.worker()
        await sleep(0.2)
        self.assertEqual(worker.jobs.pending, [])
        reply = await self.ok("POST", "/api/v1/queues/default/resume")
        self.assertEqual(reply, {"name": "default", "paused": False, "changed": True})
        self.assertEqual((await worker.next_job())["id"], "p1")

    async def test_purge(self) -> None:
        await self.push(*[{"type": "t"} for _ in range(5)])
        await self.push(*[{"type": "t", "delay": 600} for _ in range(2)])
        reply = await self.ok(
            "DELETE", "/api/v1/queues/default/jobs", params={"state": "scheduled"}
        )
        self.assertEqual(reply, {"count": 2})
        reply = await self.ok(
            "DELETE", "/api/v1/queues/default/jobs", params={"state": "queued"}
        )
        self.assertEqual(reply, {"count": 5})
        queue = await self.ok("GET", "/api/v1/queues/default")
        self.assertEqual(sum(queue["sizes"].values()), 0)
        listing = await self.ok("GET", "/api/v1/jobs")
        self.assertEqual(listing, {"jobs": [], "cursor": None})
        await self.error(
            400,
            "invalid_request",
            "DELETE",
            "/api/v1/queues/default/jobs",
            params={"state": "running"},
        )
        await self.error(
            400, "invalid_request", "DELETE", "/api/v1/queues/default/jobs"
        )
        await self.error(
            404,
            "queue_not_found",
            "DELETE",
            "/api/v1/queues/nope/jobs",
            params={"state": "dead"},
        )

    async def test_bulk_kill_and_retry(self) -> None:
        await self.push(*[{"type": "t", "delay": 600} for _ in range(4)])
        await self.push(*[{"type": "t"} for _ in range(3)])
        reply = await self.ok(
            "POST", "/api/v1/queues/default/kill", params={"state": "scheduled"}
        )
        self.assertEqual(reply, {"count": 4})
        sizes = (await self.ok("GET", "/api/v1/queues/default"))["sizes"]
        self.assertEqual(
            (sizes["scheduled"], sizes["dead"], sizes["queued"]), (0, 4, 3)
        )
        reply = await self.ok(
            "POST", "/api/v1/queues/default/kill", params={"state": "queued"}
        )
        self.assertEqual(reply, {"count": 3})
        reply = await self.ok(
            "POST", "/api/v1/queues/default/retry", params={"state": "dead"}
        )
        self.assertEqual(reply, {"count": 7})
        sizes = (await self.ok("GET", "/api/v1/queues/default"))["sizes"]
        self.assertEqual((sizes["dead"], sizes["queued"]), (0, 7))
        # Retried jobs are worked on again.
        worker = await self.worker(credit=10)
        for _ in range(7):
            await worker.next_job()
        await self.error(
            400,
            "invalid_request",
            "POST",
            "/api/v1/queues/default/retry",
            params={"state": "queued"},
        )
        await self.error(
            400,
            "invalid_request",
            "POST",
            "/api/v1/queues/default/kill",
            params={"state": "dead"},
        )

    async def test_bulk_retry_of_retrying_jobs(self) -> None:
        await self.push({"type": "t", "id": "r1"}, {"type": "t", "id": "r2"})
        worker = await self.worker(credit=2)
        for _ in range(2):
            job = await worker.next_job()
            await worker.ok("FAIL", {"id": job["id"], "retry_in": 600})
        reply = await self.ok(
            "POST", "/api/v1/queues/default/retry", params={"state": "retrying"}
        )
        self.assertEqual(reply, {"count": 2})
        ids = {(await worker.next_job())["id"] for _ in range(2)}
        self.assertEqual(ids, {"r1", "r2"})


class JobTests(AdminTestCase):
    async def test_get_job_with_errors(self) -> None:
        await self.push(
            {"type": "mail", "id": "j1", "args": {"to": "x"}, "meta": {"m": 1}}
        )
        worker = await self.worker()
        await worker.next_job()
        await worker.ok(
            "FAIL",
            {"id": "j1", "error": {"type": "E", "message": "boom"}, "retry_in": 600},
        )
        job = await self.ok("GET", "/api/v1/jobs/j1")
        self.assertEqual(job["state"], "retrying")
        self.assertEqual(job["args"], {"to": "x"})
        self.assertEqual(job["meta"], {"m": 1})
        self.assertEqual(job["attempt"], 1)
        self.assertEqual([e["message"] for e in job["errors"]], ["boom"])
        await self.error(404, "not_found", "GET", "/api/v1/jobs/nope")

    async def test_actions(self) -> None:
        await self.push(
            {"type": "t", "id": "j1"}, {"type": "t", "id": "j2", "queue": "q2"}
        )
        await self.error(409, "illegal_state", "POST", "/api/v1/jobs/j1/retry")
        reply = await self.ok("POST", "/api/v1/jobs/j1/kill")
        self.assertEqual(
            reply,
            {
                "id": "j1",
                "queue": "default",
                "previous_state": "queued",
                "state": "dead",
            },
        )
        await self.error(409, "illegal_state", "POST", "/api/v1/jobs/j1/kill")
        await self.error(409, "illegal_state", "POST", "/api/v1/jobs/j1/cancel")
        reply = await self.ok("POST", "/api/v1/jobs/j1/retry")
        self.assertEqual(reply["previous_state"], "dead")
        self.assertEqual(reply["state"], "queued")
        self.assertEqual((await self.ok("GET", "/api/v1/jobs/j1"))["state"], "queued")
        reply = await self.ok("POST", "/api/v1/jobs/j2/cancel")
        self.assertEqual(
            reply,
            {
                "id": "j2",
                "queue": "q2",
                "previous_state": "queued",
                "state": "cancelled",
            },
        )
        reply = await self.ok("DELETE", "/api/v1/jobs/j2")
        self.assertEqual(
            reply,
            {"id": "j2", "queue": "q2", "previous_state": "cancelled", "deleted": True},
        )
        await self.error(404, "not_found", "GET", "/api/v1/jobs/j2")
        for method, action in [
            ("POST", "/retry"),
            ("POST", "/kill"),
            ("POST", "/cancel"),
            ("DELETE", ""),
        ]:
            await self.error(404, "not_found", method, "/api/v1/jobs/j2" + action)

    async def test_ids_with_slashes(self) -> None:
        await self.push({"type": "t", "id": "reports/2026/q1"})
        job = await self.ok("GET", "/api/v1/jobs/reports/2026/q1")
        self.assertEqual(job["id"], "reports/2026/q1")
        reply = await self.ok("POST", "/api/v1/jobs/reports%2F2026%2Fq1/kill")
        self.assertEqual(reply["id"], "reports/2026/q1")

    async def test_cancel_running_refuses_the_ack(self) -> None:
        await self.push({"type": "t", "id": "j1"})
        worker = await self.worker()
        await worker.next_job()
        reply = await self.ok("POST", "/api/v1/jobs/j1/cancel")
        self.assertEqual(reply["previous_state"], "running")
        # The worker is told (CANCEL), and its ack refused.
        self.assertEqual(await worker.cancels.get(), {"id": "j1"})
        kind, body = await worker.send("ACK", {"id": "j1"})
        self.assertEqual((kind, body["code"]), ("ERR", "cancelled"))
        self.assertEqual(
            (await self.ok("GET", "/api/v1/jobs/j1"))["state"], "cancelled"
        )

    async def test_kill_running(self) -> None:
        await self.push({"type": "t", "id": "j1"})
        worker = await self.worker()
        await worker.next_job()
        reply = await self.ok("POST", "/api/v1/jobs/j1/kill")
        self.assertEqual(reply["previous_state"], "running")
        # Its worker is told to stop, as for a cancel.
        self.assertEqual(await worker.cancels.get(), {"id": "j1"})
        kind, body = await worker.send("ACK", {"id": "j1"})
        self.assertEqual(body["code"], "cancelled")


class ListingTests(AdminTestCase):
    async def page_through(self, params: dict, during=None) -> list[dict]:
        jobs: list[dict] = []
        cursor = None
        for _ in range(1000):
            query = dict(params)
            if cursor is not None:
                query["cursor"] = cursor
            page = await self.ok("GET", "/api/v1/jobs", params=query)
            jobs.extend(page["jobs"])
            cursor = page["cursor"]
            if cursor is None:
                return jobs
            if during is not None:
                await during()
        self.fail("the listing does not end")

    async def test_newest_first(self) -> None:
        ids = []
        for i in range(5):
            ids += await self.push({"type": "t", "id": f"j{i}"})
            await sleep(0.002)
        listing = await self.ok("GET", "/api/v1/jobs")
        self.assertEqual([j["id"] for j in listing["jobs"]], ids[::-1])
        self.assertIsNone(listing["cursor"])
        self.assertNotIn("errors", listing["jobs"][0])
        self.assertEqual(listing["jobs"][0]["state"], "queued")

    async def test_pages_are_stable_under_change(self) -> None:
        # One batch shares one created_at: pages must split it exactly.
        originals = await self.push(*[{"type": "t", "args": [i]} for i in range(40)])
        for i in range(3):
            originals += await self.push({"type": "t", "queue": f"q{i}"})
        pushed_later: list[str] = []
        deleted: list[str] = []

        async def meddle() -> None:
            pushed_later.extend(
                await self.push({"type": "t"}, {"type": "t", "queue": "q1"})
            )
            victim = originals[len(deleted) * 7]
            deleted.append(victim)
            await self.ok("DELETE", f"/api/v1/jobs/{victim}")

        jobs = await self.page_through({"limit": "6"}, during=meddle)
        seen = [j["id"] for j in jobs]
        self.assertEqual(len(seen), len(set(seen)), "a job was listed twice")
        kept = set(originals) - set(deleted)
        self.assertEqual(kept - set(seen), set(), "a job was skipped")
        self.assertEqual(set(seen) & set(pushed_later), set())
        positions = [(j["created_at"], j["id"]) for j in jobs]
        self.assertEqual(positions, sorted(positions, reverse=True))

    async def test_one_queue(self) -> None:
        await self.push(*[{"type": "t", "queue": "a"} for _ in range(7)])
        b = await self.push(*[{"type": "t", "queue": "b"} for _ in range(5)])
        jobs = await self.page_through({"queue": "b", "limit": "2"})
        self.assertEqual(sorted(j["id"] for j in jobs), sorted(b))
        self.assertEqual({j["queue"] for j in jobs}, {"b"})
        listing = await self.ok("GET", "/api/v1/jobs", params={"queue": "nope"})
        self.assertEqual(listing, {"jobs": [], "cursor": None})

    async def test_filters(self) -> None:
        await self.push(*[{"type": "mail"} for _ in range(6)])
        scheduled = await self.push(
            *[{"type": "report", "delay": 600} for _ in range(4)]
        )
        await self.push(*[{"type": "mail", "delay": 600} for _ in range(3)])
        jobs = await self.page_through(
            {"state": "scheduled", "type": "report", "limit": "3"}
        )
        self.assertEqual(sorted(j["id"] for j in jobs), sorted(scheduled))
        jobs = await self.page_through({"type": "mail"})
        self.assertEqual(len(jobs), 9)
        jobs = await self.page_through({"state": "queued"})
        self.assertEqual(len(jobs), 6)
        self.assertEqual(await self.page_through({"state": "dead"}), [])

    async def test_bounded_scan(self) -> None:
        rare = await self.push({"type": "rare"})
        # Newer by a clock tick at least: jobs of one millisecond list in
        # the order of their ids, which are random.
        await sleep(0.01)
        await self.push(*[{"type": "common"} for _ in range(30)])
        store = self.server.store
        jobs, position = await store.list_jobs(
            None, None, 5, job_type="rare", budget=10
        )
        self.assertEqual(jobs, [])
        self.assertIsNotNone(position)
        found = []
        while position is not None:
            jobs, position = await store.list_jobs(
                None, position, 5, job_type="rare", budget=10
            )
            found += jobs
        self.assertEqual([j["id"] for j in found], rare)

    async def test_bad_parameters(self) -> None:
        for params in [
            {"state": "sleeping"},
            {"limit": "0"},
            {"limit": "501"},
            {"limit": "ten"},
            {"cursor": "not a cursor"},
            {"cursor": encode_cursor("123")},
            {"queue": "no spaces"},
        ]:
            await self.error(
                400, "invalid_request", "GET", "/api/v1/jobs", params=params
            )
        listing = await self.ok("GET", "/api/v1/jobs", params={"limit": "500"})
        self.assertEqual(listing["jobs"], [])


class WorkerTests(AdminTestCase):
    async def test_list_and_quiet(self) -> None:
        await self.push({"type": "t", "id": "j1"})
        worker = await self.worker(queues=["default", "low"], credit=2, name="busy")
        await worker.next_job()
        listing = await self.ok("GET", "/api/v1/workers")
        workers = {w["name"]: w for w in listing["workers"]}
        busy = [w for name, w in workers.items() if name.startswith("busy#")]
        self.assertEqual(len(busy), 1)
        [entry] = busy
        self.assertEqual(entry["kind"], "tcp")
        self.assertEqual(entry["queues"], ["default", "low"])
        self.assertEqual(entry["credit"], 2)
        self.assertEqual(entry["jobs"], [{"id": "j1", "queue": "default"}])
        self.assertFalse(entry["quiet"])
        self.assertTrue(entry["connected_at"].endswith("Z"))
        # The producer said HELLO but takes no work: it is listed too.
        self.assertTrue(any(n.startswith("producer#") for n in workers))

        from urllib.parse import quote

        reply = await self.ok(
            "POST", f"/api/v1/workers/{quote(entry['name'], safe='')}/quiet"
        )
        self.assertEqual(reply, {"quieted": [entry["name"]]})
        await sleep(0.05)
        self.assertEqual(worker.quiets, [{"reason": "operator"}])
        # Quieted, it still holds its job and is still listed.
        listing = await self.ok("GET", "/api/v1/workers")
        [entry] = [w for w in listing["workers"] if w["name"] == entry["name"]]
        self.assertTrue(entry["quiet"])
        self.assertEqual(len(entry["jobs"]), 1)
        await worker.ok("ACK", {"id": "j1"})

        # By worker name: every connection of it.
        other = await self.worker(name="busy")
        reply = await self.ok("POST", "/api/v1/workers/busy/quiet")
        self.assertEqual(len(reply["quieted"]), 2)
        await sleep(0.05)
        self.assertEqual(len(other.quiets), 1)
        await self.error(
            404, "worker_not_found", "POST", "/api/v1/workers/nobody/quiet"
        )


class MetricsTests(AdminTestCase):
    async def test_metrics(self) -> None:
        await self.push(*[{"type": "t"} for _ in range(3)])
        worker = await self.worker()
        job = await worker.next_job()
        await worker.ok("ACK", {"id": job["id"]})
        await sleep(0.05)
        response = await self.http.get("/metrics", token=None)
        self.assertEqual(response.code, 200)
        self.assertTrue(response.content_type.startswith("text/plain; version=0.0.4"))
        text = response.content.decode()
        samples = dict(
            line.rsplit(" ", 1)
            for line in text.splitlines()
            if line and not line.startswith("#")
        )
        self.assertEqual(
            float(samples['procession_jobs_pushed_total{queue="default"}']), 3
        )
        self.assertEqual(
            float(samples['procession_jobs_processed_total{queue="default"}']), 1
        )
        self.assertEqual(
            float(samples['procession_jobs_failed_total{queue="default"}']), 0
        )
        self.assertEqual(
            float(samples['procession_queue_jobs{queue="default",state="queued"}']), 1
        )
        self.assertEqual(
            float(samples['procession_queue_jobs{queue="default",state="running"}']), 1
        )
        self.assertGreaterEqual(
            float(samples['procession_queue_latency_seconds{queue="default"}']), 0
        )
        self.assertEqual(float(samples['procession_queue_paused{queue="default"}']), 0)
        self.assertEqual(float(samples['procession_workers_connected{kind="tcp"}']), 2)
        self.assertEqual(float(samples['procession_workers_connected{kind="http"}']), 0)
        rtt = float(samples["procession_redis_rtt_seconds"])
        self.assertTrue(0 <= rtt < 5, rtt)
        # Nothing of the process-global registry leaks in.
        self.assertNotIn("python_gc", text)


def openapi_document() -> dict:
    with open(
        os.path.join(ROOT, "procession", "http", "openapi.json"), encoding="utf-8"
    ) as f:
        return json.load(f)


def app_routes() -> set[tuple[str, str]]:
    """
    Every (method, OpenAPI path) the Klein app serves.
    """
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("ui_"):
            continue  # the operator UI's HTML pages (procession.http.ui.routes): not API
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((method, path))
    return routes


class OpenAPITests(SynchronousTestCase):
    def test_every_route_is_documented_and_exists(self) -> None:
        import procession.http.site  # noqa: F401  (registers every route)

        document = openapi_document()
        self.assertEqual(document["openapi"], "3.1.0")
        documented = {
            (method.upper(), path)
            for path, item in document["paths"].items()
            for method in item
            if method in ("get", "post", "put", "patch", "delete")
        }
        served = app_routes()
        self.assertEqual(
            sorted(served - documented), [], "routes missing from openapi.json"
        )
        self.assertEqual(
            sorted(documented - served), [], "documented routes the app lacks"
        )

    def test_operations_are_described(self) -> None:
        document = openapi_document()
        ids = []
        for path, item in document["paths"].items():
            for method, operation in item.items():
                ids.append(operation["operationId"])
                self.assertIn("security", operation, (method, path))
                self.assertTrue(operation["summary"], (method, path))
                for name in re.findall(r"{(\w+)}", path):
                    self.assertIn(
                        name,
                        [
                            p["name"]
                            for p in operation.get("parameters", [])
                            if p["in"] == "path"
                        ],
                        (method, path),
                    )
        self.assertEqual(len(ids), len(set(ids)))


class OpenAPIServedTests(TestCase):
    async def test_served_document_is_the_file(self) -> None:
        server = await ServerFixture(self, "--admin-token", "a").start()
        response = await HTTP(server.http_port).get("/api/v1/openapi.json")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.content_type, "application/json")
        self.assertEqual(response.json, openapi_document())


class FuzzTests(TestCase):
    """
    schemathesis generates requests from the OpenAPI document (valid and
    invalid ones, and, through tests/schemathesis_hooks.py, bodies with lone
    surrogates and deep nesting) against a live server: none may get a 5xx
    or the code internal.
    """

    timeout = 180

    async def test_no_server_errors(self) -> None:
        try:
            import schemathesis  # noqa: F401
        except ImportError:
            raise SkipTest("schemathesis is not installed (pip install '.[test]')")
        server = await ServerFixture(
            self, "--token", "w", "--admin-token", "a", "--poll-timeout", "1"
        ).start()
        producer = await server.connect("producer", token="w")
        await producer.ok("PUSHB", [{"type": "t", "id": f"job{i}"} for i in range(5)])
        base = f"http://127.0.0.1:{server.http_port}"
        workdir = tempfile.mkdtemp(prefix="procession-fuzz-")
        self.addCleanup(shutil.rmtree, workdir, True)
        # The hooks add bodies with lone surrogates and deep nesting, and
        # fail on any answer with code internal.
        env = dict(
            os.environ,
            NO_COLOR="1",
            SCHEMATHESIS_HOOKS="tests.schemathesis_hooks",
            PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [
                "-m",
                "schemathesis.cli",
                "run",
                f"{base}/api/v1/openapi.json",
                "--url",
                base,
                "--checks",
                "not_a_server_error",
                "--header",
                "Authorization: Bearer a",
                "--max-examples",
                "8",
                "--phases",
                "examples,coverage,fuzzing",
                "--seed",
                "1",
                "--generation-database",
                "none",
                "--request-timeout",
                "5",
                "--workers",
                "1",
                "--no-color",
            ],
            env=env,
            path=workdir,
            reactor=reactor,
        )
        report = (out + err).decode("utf-8", "replace")
        # Let the wake-ups of the fuzzer's last pushes arrive before the
        # server stops.
        await sleep(0.3)
        if os.environ.get("PROCESSION_FUZZ_REPORT"):
            print(report)
        self.assertEqual(code, 0, report[-6000:])


class DocsTests(TestCase):
    """
    The curl session of docs/http-api.rst's "Management", "Statistics",
    "Metrics" and "Periodic jobs" sections, run against a live server
    (L{tests.docs}).
    """

    async def test_session(self) -> None:
        from tests.docs import examples, run, same_line, section_text

        with open(os.path.join(ROOT, "docs", "http-api.rst"), encoding="utf-8") as f:
            text = section_text(
                f.read(), ["Management", "Statistics", "Metrics", "Periodic jobs"]
            )
        session = [e for e in examples(text) if not e.command.startswith("export ")]
        self.assertGreater(len(session), 20)
        server = await ServerFixture(
            self, "--token", "s3cret", "--admin-token", "adm1n"
        ).start()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PROCESSION_URL": f"http://127.0.0.1:{server.http_port}",
            "PROCESSION_TOKEN": "s3cret",
            "PROCESSION_ADMIN_TOKEN": "adm1n",
        }
        seen: dict[str, str] = {}
        for example in session:
            self.assertIn("curl", example.command)
            actual = await run(example, env, seen)
            self.assertEqual(
                len(actual), len(example.output), (example.command, actual)
            )
            for documented, line in zip(example.output, actual):
                self.assertTrue(
                    same_line(documented, line, seen),
                    f"{example.command}\ndocumented: {documented}\nactual:     {line}",
                )


class MetricsAuthTests(TestCase):
    async def test_metrics_auth_needs_admin_token(self) -> None:
        server = await ServerFixture(
            self, "--token", "w", "--admin-token", "a", "--metrics-auth"
        ).start()
        http = HTTP(server.http_port, token=None)
        self.assertEqual((await http.get("/metrics")).code, 401)
        self.assertEqual((await http.get("/metrics", token="w")).code, 403)
        self.assertEqual((await http.get("/metrics", token="a")).code, 200)
        self.assertEqual((await http.get("/healthz")).code, 200)
