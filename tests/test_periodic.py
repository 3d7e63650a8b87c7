"""
Periodic jobs: entries and their ticks (procession.core.periodic), the
store's tick and definition scripts, the scheduler of every server, the
HTTP API, and a cluster of three servers running one schedule while one is
killed and another restarted.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timezone
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from procession.core.errors import InvalidRequest
from procession.core.job import format_time, parse_time
from procession.core.periodic import (
    GRACE_MS,
    MAX_CATCH_UP,
    PeriodicEntry,
    parse_entry,
    parse_file,
)
from procession.store.periodic import PeriodicStore
from tests.client import ServerFixture
from tests.test_cli import CLITestCase, columns
from tests.test_ui import UITestCase
from tests.http import HTTP
from tests.redis import shared_redis
from tests.support import FakeClock, connected_store
from tests.test_server_process import Server


def entry(cron: str = "* * * * * *", **fields: Any) -> PeriodicEntry:
    fields.setdefault("job", {"type": "report", "args": [1]})
    name = fields.pop("name", "report")
    made, _ = parse_entry(name, dict(fields, cron=cron))
    return made


def ms(text: str) -> int:
    return parse_time(text)


class EntryTests(SynchronousTestCase):
    """
    Checking entries, and computing their ticks.
    """

    def test_refused_naming_the_field(self) -> None:
        job = {"type": "t"}
        for body, field in [
            ({"cron": "* * *", "job": job}, "cron"),
            ({"cron": "61 * * * *", "job": job}, "cron"),
            ({"cron": "* * * * * * *", "job": job}, "cron"),
            ({"cron": "H * * * *", "job": job}, "cron"),
            ({"cron": "@reboot", "job": job}, "cron"),
            ({"cron": 5, "job": job}, "cron"),
            ({"cron": "* * * * *", "timezone": "Mars/Olympus", "job": job}, "timezone"),
            (
                {"cron": "* * * * *", "timezone": "../../etc/passwd", "job": job},
                "timezone",
            ),
            ({"cron": "* * * * *", "timezone": 1, "job": job}, "timezone"),
            ({"cron": "* * * * *", "missed": "some", "job": job}, "missed"),
            ({"cron": "* * * * *", "paused": "yes", "job": job}, "paused"),
            ({"cron": "* * * * *"}, "job"),
            ({"cron": "* * * * *", "job": {"type": ""}}, "job.type"),
            ({"cron": "* * * * *", "job": {"type": "t", "queue": "a b"}}, "job.queue"),
            ({"cron": "* * * * *", "job": {"type": "t", "id": "x"}}, "job.id"),
            ({"cron": "* * * * *", "job": {"type": "t", "delay": 5}}, "job.delay"),
            ({"cron": "* * * * *", "job": job, "every": 5}, "every"),
        ]:
            with self.assertRaises(InvalidRequest) as caught:
                parse_entry("r", body)
            self.assertEqual(caught.exception.details["field"], field, body)
        with self.assertRaises(InvalidRequest) as caught:
            parse_entry("a b", {"cron": "* * * * *", "job": job})
        self.assertEqual(caught.exception.details["field"], "name")

    def test_expressions(self) -> None:
        start = ms("2026-05-05T10:07:30Z")
        # Five fields: minute first; six: seconds first; shortcuts.
        self.assertEqual(
            entry("*/5 * * * *").next_tick(start), ms("2026-05-05T10:10:00Z")
        )
        self.assertEqual(
            entry("15 */5 * * * *").next_tick(start), ms("2026-05-05T10:10:15Z")
        )
        self.assertEqual(entry("@hourly").next_tick(start), ms("2026-05-05T11:00:00Z"))
        self.assertEqual(entry("@daily").next_tick(start), ms("2026-05-06T00:00:00Z"))
        self.assertEqual(entry("@daily").describe(), "At 00:00")
        self.assertEqual(entry("*/5 * * * *").describe(), "Every 5 minutes")
        berlin = entry("0 9 * * *", timezone="Europe/Berlin")
        self.assertEqual(berlin.next_tick(start), ms("2026-05-06T07:00:00Z"))

    def test_dst_like_cron(self) -> None:
        # 02:30 does not exist in Berlin on 2026-03-29: that day's tick
        # runs at 03:00 (as cron runs a job of the skipped hour), once.
        spring = entry("30 2 * * *", timezone="Europe/Berlin")
        ticks = []
        at = ms("2026-03-27T12:00:00Z")
        for _ in range(4):
            at = spring.next_tick(at)
            ticks.append(format_time(at))
        self.assertEqual(
            ticks,
            [
                "2026-03-28T01:30:00.000Z",
                "2026-03-29T01:00:00.000Z",
                "2026-03-30T00:30:00.000Z",
                "2026-03-31T00:30:00.000Z",
            ],
        )
        # 02:30 happens twice on 2026-10-25: the job runs once that day.
        autumn = entry("30 2 * * *", timezone="Europe/Berlin")
        at = ms("2026-10-24T12:00:00Z")
        days = []
        for _ in range(3):
            at = autumn.next_tick(at)
            days.append(datetime.fromtimestamp(at / 1000, timezone.utc).date())
        self.assertEqual(len(set(days)), 3, days)

    def test_due_late_ticks_each_run(self) -> None:
        e = entry()
        now = ms("2026-05-05T10:00:00.400Z")
        due = e.due(now - 3400, now)
        self.assertEqual(
            [format_time(t) for t in due.ticks],
            [
                "2026-05-05T09:59:58.000Z",
                "2026-05-05T09:59:59.000Z",
                "2026-05-05T10:00:00.000Z",
            ],
        )
        self.assertEqual(due.skipped, 0)
        self.assertEqual(e.due(now - 200, now).ticks, [])

    def test_due_missed_ticks(self) -> None:
        now = ms("2026-05-05T12:00:00Z")
        hourly = entry("0 * * * *")
        # Down for five hours: skip runs the latest missed tick once.
        due = hourly.due(now - 5 * 3600_000 - 1, now)
        self.assertEqual(due.ticks, [now])
        skip = entry("0 * * * *")
        due = skip.due(now - 5 * 3600_000 - 1, now + 5_000)
        self.assertEqual((due.ticks, due.skipped), ([now], 5))
        due = skip.due(now - 5 * 3600_000 - 1, now + GRACE_MS + 60_000)
        self.assertEqual((due.ticks, due.skipped), ([now], 5))
        # all runs each missed tick, the last MAX_CATCH_UP of them.
        every = entry("0 * * * *", missed="all")
        due = every.due(now - 5 * 3600_000 - 1, now + GRACE_MS + 60_000)
        self.assertEqual(len(due.ticks), 6)
        self.assertEqual(due.ticks[0], now - 5 * 3600_000)
        seconds = entry(missed="all")
        due = seconds.due(now - 3600_000, now)
        self.assertEqual(len(due.ticks), MAX_CATCH_UP + GRACE_MS // 1000)
        self.assertEqual(due.skipped, 3600 - len(due.ticks))
        self.assertEqual(due.ticks[-1], now)
        # Far too many to count: still the latest one, at once.
        due = entry().due(now - 30 * 86400_000, now)
        self.assertIn(now - GRACE_MS, due.ticks)

    def test_job_ids(self) -> None:
        e = entry(job={"type": "r", "queue": "reports", "expires_in": 30})
        tick = ms("2026-05-05T10:00:00Z")
        job = e.job_for(tick, tick + 5, 1 << 20)
        self.assertEqual(job.id, "report@2026-05-05T10:00:00.000Z")
        self.assertEqual((job.queue, job.expires_at), ("reports", tick + 5 + 30_000))
        self.assertTrue(e.job_for(None, tick, 1 << 20).id.startswith("report@now-"))

    def test_file(self) -> None:
        entries = parse_file(
            """
            [periodic.nightly]
            cron = "0 2 * * *"
            timezone = "Europe/Berlin"
            job = { type = "report", args = [1], queue = "reports" }

            [periodic.tick]
            cron = "*/10 * * * * *"
            missed = "all"
            [periodic.tick.job]
            type = "ping"
            """
        )
        self.assertEqual([e.name for e in entries], ["nightly", "tick"])
        self.assertEqual({e.source for e in entries}, {"file"})
        self.assertEqual(entries[0].queue, "reports")
        self.assertEqual((entries[1].missed, entries[1].timezone), ("all", "UTC"))
        for text, field in [
            ("[periodic.x]\ncron = 'nope'\njob = {type='t'}", "cron"),
            (
                "[periodic.x]\ncron = '* * * * *'\ntimezone='Nowhere'\njob = {type='t'}",
                "timezone",
            ),
            (
                "[periodic.x]\ncron = '* * * * *'\npaused = true\njob = {type='t'}",
                "paused",
            ),
            ("[other]\nx = 1", "other"),
        ]:
            with self.assertRaises(InvalidRequest) as caught:
                parse_file(text)
            self.assertEqual(caught.exception.details["field"], field, text)
            if field != "other":
                self.assertIn("entry 'x'", caught.exception.message)
        with self.assertRaises(InvalidRequest):
            parse_file("this is = = not toml")


class StoreTests(TestCase):
    """
    tick.lua and periodic.lua on the test Redis.
    """

    async def setUp(self) -> None:
        self.clock = FakeClock(ms("2026-05-05T10:00:00.500Z") / 1000)
        self.store = await connected_store(self, self.clock)
        self.periodic = PeriodicStore(self.store)

    def jobs(self, e: PeriodicEntry, *ticks: int) -> list[Any]:
        now = self.store.now_ms()
        return [(t, e.job_for(t, now, 1 << 20)) for t in ticks]

    async def test_a_tick_is_claimed_once(self) -> None:
        e = entry()
        t1, t2 = ms("2026-05-05T09:59:59Z"), ms("2026-05-05T10:00:00Z")
        self.assertEqual(
            await self.periodic.claim_ticks(e, self.jobs(e, t1, t2), 0), (t2, 2)
        )
        # Replayed (another server, a slow one): nothing more, and an older
        # tick alone is refused as well.
        self.assertEqual(
            await self.periodic.claim_ticks(e, self.jobs(e, t1, t2), 0), (t2, 0)
        )
        self.assertEqual(
            await self.periodic.claim_ticks(e, self.jobs(e, t1), 3), (t2, 0)
        )
        queued = await self.store.state_members("default", "queued")
        self.assertEqual(
            queued,
            ["report@2026-05-05T09:59:59.000Z", "report@2026-05-05T10:00:00.000Z"],
        )
        state = await self.periodic.tick_state(e)
        self.assertEqual(
            (state.tick, state.job, state.runs, state.skipped),
            (t2, queued[-1], 2, 0),
        )
        job = await self.store.get_job("default", queued[0])
        self.assertEqual((job["type"], job["args"]), ("report", [1]))
        # Run now pushes outside the schedule and leaves the ticks alone.
        now_job = e.job_for(None, self.store.now_ms(), 1 << 20)
        await self.periodic.claim_ticks(e, [(0, now_job)], 0, now=True)
        state = await self.periodic.tick_state(e)
        self.assertEqual((state.tick, state.job, state.runs), (t2, now_job.id, 2))

    async def test_a_move_to_another_queue_removes_the_old_ticks(self) -> None:
        """
        An entry put (or synced from the file) with a new job.queue leaves
        no tick state behind in its old queue: moved back, it starts afresh.
        """
        old = entry(name="a", job={"type": "report", "queue": "q1"})
        await self.periodic.put(old)
        tick = ms("2026-05-05T10:00:00Z")
        await self.periodic.claim_ticks(old, self.jobs(old, tick), 0)
        self.assertEqual((await self.periodic.tick_state(old)).runs, 1)
        moved = entry(name="a", job={"type": "report", "queue": "q2"})
        self.assertEqual(await self.periodic.put(moved), "updated")
        self.assertEqual(
            await self.store.command("EXISTS", self.periodic.state_key(old)), 0
        )
        await self.periodic.claim_ticks(moved, self.jobs(moved, tick), 0)
        (back,) = parse_file(
            "[periodic.a]\ncron='* * * * * *'\njob={type='report', queue='q1'}\n"
        )
        self.assertEqual(await self.periodic.sync_file([back]), (0, 1, 0))
        self.assertEqual(
            await self.store.command("EXISTS", self.periodic.state_key(moved)), 0
        )
        self.assertEqual((await self.periodic.tick_state(back)).runs, 0)

    async def test_a_tick_in_flight_during_a_move_pushes_nothing(self) -> None:
        """
        A server that read the definition before the move claims its tick
        in the old queue after it: nothing is pushed there and no tick
        state comes back.
        """
        old = entry(name="a", job={"type": "report", "queue": "q1"})
        await self.periodic.put(old)
        await self.periodic.put(entry(name="a", job={"type": "report", "queue": "q2"}))
        tick = ms("2026-05-05T10:00:00Z")
        self.assertEqual(
            await self.periodic.claim_ticks(old, self.jobs(old, tick), 0), (0, 0)
        )
        self.assertEqual(await self.store.state_members("q1", "queued"), [])
        self.assertEqual(
            await self.store.command("EXISTS", self.periodic.state_key(old)), 0
        )

    async def test_definitions(self) -> None:
        e = entry(name="a")
        self.assertEqual(await self.periodic.put(e), "created")
        [stored] = await self.periodic.entries()
        self.assertEqual((stored.entry, stored.paused), (e, False))
        since = stored.since
        self.clock.advance(5)
        self.assertEqual(await self.periodic.put(e), "unchanged")
        self.assertEqual((await self.periodic.get("a")).since, since)
        self.assertEqual(await self.periodic.put(entry("@hourly", name="a")), "updated")
        self.assertEqual((await self.periodic.get("a")).since, since + 5000)
        # Paused survives a redefinition; resuming moves the schedule on.
        self.assertTrue(await self.periodic.set_paused("a", True))
        await self.periodic.put(entry("@daily", name="a"))
        self.assertTrue((await self.periodic.get("a")).paused)
        self.clock.advance(60)
        self.assertTrue(await self.periodic.set_paused("a", False))
        resumed = await self.periodic.get("a")
        self.assertEqual((resumed.paused, resumed.since), (False, since + 65_000))
        self.assertFalse(await self.periodic.set_paused("nope", True))
        self.assertTrue(await self.periodic.delete("a"))
        self.assertFalse(await self.periodic.delete("a"))
        self.assertIsNone(await self.periodic.get("a"))

    async def test_sync_file(self) -> None:
        await self.periodic.put(entry(name="by-api"))
        one, two = parse_file(
            "[periodic.one]\ncron='@hourly'\njob={type='t'}\n"
            "[periodic.two]\ncron='@daily'\njob={type='t'}\n"
        )
        self.assertEqual(await self.periodic.sync_file([one, two]), (2, 0, 0))
        self.assertEqual(await self.periodic.sync_file([one, two]), (0, 0, 0))
        (changed,) = parse_file("[periodic.one]\ncron='@weekly'\njob={type='t'}\n")
        self.assertEqual(await self.periodic.sync_file([changed]), (0, 1, 1))
        listed = {s.entry.name: s.entry.source for s in await self.periodic.entries()}
        self.assertEqual(listed, {"by-api": "api", "one": "file"})


class ServiceTests(TestCase):
    """
    A real server: the HTTP API and the scheduler.
    """

    async def setUp(self) -> None:
        self.server = await ServerFixture(self).start()
        self.http = HTTP(self.server.http_port)

    async def put(self, name: str, body: Any) -> Any:
        return await self.http.request("PUT", f"/api/v1/periodic/{name}", body=body)

    async def test_every_second(self) -> None:
        response = await self.put(
            "beat", {"cron": "* * * * * *", "job": {"type": "beat", "queue": "beats"}}
        )
        self.assertEqual(response.code, 201, response)
        body = response.json
        self.assertEqual(
            (body["name"], body["source"], body["paused"], body["description"]),
            ("beat", "api", False, "Every second"),
        )
        self.assertIsNone(body["last_run"])
        created = parse_time(body["next_run"])

        async def ticks() -> list[str]:
            ids = await self.server.store.state_members("beats", "queued")
            return sorted(ids)

        deadline = reactor.seconds() + 10
        while len(await ticks()) < 3:
            self.assertLess(reactor.seconds(), deadline, await ticks())
            await deferLater(reactor, 0.1, lambda: None)
        ids = await ticks()
        times = [parse_time(i.partition("@")[2]) for i in ids]
        self.assertEqual(times[0], created)
        self.assertEqual(times, list(range(times[0], times[0] + 1000 * len(ids), 1000)))

        listing = (await self.http.get("/api/v1/periodic")).json["periodic"]
        [beat] = listing
        self.assertEqual(beat["last_job"]["state"], "queued")
        self.assertIn(beat["last_job"]["id"], ids)
        self.assertGreater(parse_time(beat["next_run"]), parse_time(beat["last_tick"]))
        self.assertIsNotNone(beat["last_run"])

        paused = (await self.http.post("/api/v1/periodic/beat/pause")).json
        self.assertEqual((paused["paused"], paused["next_run"]), (True, None))
        await deferLater(reactor, 0.3, lambda: None)
        frozen = await ticks()
        await deferLater(reactor, 1.5, lambda: None)
        self.assertEqual(await ticks(), frozen)
        run = await self.http.post("/api/v1/periodic/beat/run")
        self.assertEqual(run.code, 201, run)
        self.assertIn(run.json["id"], await ticks())
        resumed = (await self.http.post("/api/v1/periodic/beat/resume")).json
        self.assertFalse(resumed["paused"])
        deadline = reactor.seconds() + 10
        while len(await ticks()) < len(frozen) + 2:
            self.assertLess(reactor.seconds(), deadline)
            await deferLater(reactor, 0.1, lambda: None)

        # Resumed: from the next tick on, no catching up on the ticks that
        # passed while paused.
        def scheduled(ids: list[str]) -> set[int]:
            return {parse_time(i.partition("@")[2]) for i in ids if "@now-" not in i}

        before = scheduled(frozen)
        after = sorted(scheduled(await ticks()) - before)
        resumed_at = parse_time(resumed["next_run"])
        self.assertGreater(resumed_at, max(before) + 1000)
        self.assertEqual(after[0], resumed_at)
        self.assertEqual(
            after, list(range(after[0], after[0] + 1000 * len(after), 1000))
        )

        deleted = await self.http.delete("/api/v1/periodic/beat")
        self.assertEqual(deleted.json, {"name": "beat", "deleted": True})
        missing = await self.http.get("/api/v1/periodic/beat")
        self.assertEqual(
            (missing.code, missing.json["error"]["code"]), (404, "periodic_not_found")
        )

    async def test_metrics(self) -> None:
        """
        /metrics counts ticks run and skipped per entry, whether each is
        paused, and per queue the jobs expired and the unique collisions.
        """
        await self.put("beat", {"cron": "* * * * * *", "job": {"type": "b"}})
        await self.put(
            "daily", {"cron": "@daily", "job": {"type": "d"}, "paused": True}
        )
        worker = await self.server.connect("w")
        for n in range(3):
            await worker.ok("PUSH", {"type": "u", "args": [1], "unique_for": 60})
        await worker.ok("PUSH", {"type": "x", "queue": "q", "expires_in": 0.01})
        await deferLater(reactor, 0.05, lambda: None)
        await worker.ok("READY", {"queues": ["q"], "credit": 1})

        async def samples() -> dict[str, float]:
            text = (await self.http.get("/metrics")).content.decode()
            return {
                name: float(value)
                for name, value in (
                    line.rsplit(" ", 1)
                    for line in text.splitlines()
                    if line and not line.startswith("#")
                )
            }

        deadline = reactor.seconds() + 10
        while True:
            found = await samples()
            if (
                found.get('procession_periodic_ticks_total{entry="beat"}', 0) >= 1
                and found.get('procession_jobs_expired_total{queue="q"}') == 1
            ):
                break
            self.assertLess(reactor.seconds(), deadline, found)
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(
            found['procession_jobs_unique_collisions_total{queue="default"}'], 2
        )
        self.assertEqual(found['procession_periodic_ticks_total{entry="daily"}'], 0)
        self.assertEqual(
            found['procession_periodic_ticks_skipped_total{entry="beat"}'], 0
        )
        self.assertEqual(found['procession_periodic_paused{entry="daily"}'], 1)
        self.assertEqual(found['procession_periodic_paused{entry="beat"}'], 0)

    async def test_refused(self) -> None:
        for body, field in [
            ({"cron": "99 * * * *", "job": {"type": "t"}}, "cron"),
            (
                {"cron": "* * * * *", "timezone": "Nowhere/Land", "job": {"type": "t"}},
                "timezone",
            ),
            (
                {"cron": "* * * * *", "job": {"type": "t", "priority": "high"}},
                "job.priority",
            ),
            ([], None),
        ]:
            response = await self.put("bad", body)
            self.assertEqual(response.code, 400, response)
            self.assertEqual(response.json["error"].get("field"), field, response)
        response = await self.http.request("PUT", "/api/v1/periodic/bad", body=None)
        self.assertEqual(response.code, 400, response)
        self.assertEqual(
            (await self.http.get("/api/v1/periodic")).json, {"periodic": []}
        )
        for method, path in [
            ("POST", "/api/v1/periodic/none/pause"),
            ("POST", "/api/v1/periodic/none/resume"),
            ("POST", "/api/v1/periodic/none/run"),
            ("DELETE", "/api/v1/periodic/none"),
        ]:
            response = await self.http.request(method, path)
            self.assertEqual(response.code, 404, (method, path, response))

    async def test_replace(self) -> None:
        body = {"cron": "@daily", "timezone": "Asia/Tokyo", "job": {"type": "t"}}
        self.assertEqual((await self.put("d", body)).code, 201)
        again = await self.put("d", body)
        self.assertEqual(again.code, 200)
        body["paused"] = True
        replaced = await self.put("d", dict(body, cron="0 12 * * *"))
        self.assertEqual(
            (replaced.code, replaced.json["cron"], replaced.json["paused"]),
            (200, "0 12 * * *", True),
        )


def http_call(port: int, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


class ClusterTests(SynchronousTestCase):
    """
    Three servers on one Redis run one schedule: every second for 60 s,
    one server SIGKILLed at 20 s and another restarted at 40 s.  Every tick
    gets exactly one job, and none is missing (a server was up throughout).
    """

    def test_one_job_per_tick_through_a_kill_and_a_restart(self) -> None:
        namespace = "p" + uuid.uuid4().hex[:12]

        def server() -> Server:
            return Server(
                self,
                "/nonexistent-data-dir",
                "--redis", shared_redis().url,
                "--namespace", namespace,
                "--sweep-interval", "0.5",
                "--shutdown-grace", "0.5",
            ).start()  # fmt: skip

        servers = [s.serving() for s in [server(), server(), server()]]
        entry = http_call(
            servers[2].http_port,
            "PUT",
            "/api/v1/periodic/beat",
            {"cron": "* * * * * *", "job": {"type": "beat", "queue": "beats"}},
        )
        first = parse_time(entry["next_run"])
        started = time.monotonic()

        def at(seconds: float) -> None:
            time.sleep(max(0.0, started + seconds - time.monotonic()))

        at(20)
        assert servers[0].process is not None
        servers[0].process.send_signal(signal.SIGKILL)
        servers[0].process.wait(10)
        at(40)
        status, _ = servers[1].terminate()
        self.assertEqual(status, 0, servers[1].output())
        servers[1] = Server(
            self,
            "/nonexistent-data-dir",
            "--redis", shared_redis().url,
            "--namespace", namespace,
            "--sweep-interval", "0.5",
        ).serving()  # fmt: skip
        at(60)
        stopped = http_call(servers[2].http_port, "POST", "/api/v1/periodic/beat/pause")
        self.assertTrue(stopped["paused"])
        # Let a pass under way on any server finish.
        time.sleep(1.5)
        last = parse_time(stopped["last_tick"])

        port = servers[2].http_port
        ids: list[str] = []
        cursor = None
        while True:
            path = "/api/v1/jobs?queue=beats&limit=100"
            if cursor:
                path += "&cursor=" + urllib.parse.quote(cursor)
            page = http_call(port, "GET", path)
            ids += [j["id"] for j in page["jobs"]]
            cursor = page["cursor"]
            if not cursor:
                break
        ticks = sorted(parse_time(i.partition("@")[2]) for i in ids)
        self.assertEqual(len(ticks), len(set(ticks)))
        # One job per second, from the entry's first tick to its last, no
        # gap: a server was running the schedule throughout.
        self.assertEqual(ticks, list(range(first, last + 1000, 1000)))
        self.assertGreaterEqual(len(ticks), 58)
        beat = http_call(port, "GET", "/api/v1/periodic/beat")
        self.assertEqual((beat["runs"], beat["skipped"]), (len(ticks), 0))
        queue = http_call(port, "GET", "/api/v1/queues/beats")
        self.assertEqual(queue["totals"]["pushed"], len(ticks))
        for s in servers[1:]:
            self.assertNotIn("Traceback", s.output())


FILE = """
[periodic.nightly]
cron = "0 2 * * *"
timezone = "Europe/Berlin"
job = { type = "report", args = ["daily"], queue = "reports" }

[periodic.fast]
cron = "* * * * * *"
[periodic.fast.job]
type = "ping"
queue = "pings"
"""

CHANGED = """
[periodic.nightly]
cron = "0 3 * * *"
timezone = "Europe/Berlin"
job = { type = "report", args = ["daily"], queue = "reports" }

[periodic.weekly]
cron = "@weekly"
job = { type = "report", args = ["weekly"] }
"""


class FileAndClientTests(SynchronousTestCase):
    """
    A server started with C{--periodic FILE}: its entries, a reload on
    SIGHUP, a bad file; and the Python client's periodic, unique and
    expiring calls against it.
    """

    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp() + ".toml")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def server(self, path: str) -> Server:
        return Server(
            self,
            "/nonexistent-data-dir",
            "--redis", shared_redis().url,
            "--namespace", "f" + uuid.uuid4().hex[:12],
            "--periodic", path,
        )  # fmt: skip

    def until(self, predicate: Any, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            self.assertLess(time.monotonic(), deadline, "timed out")
            time.sleep(0.1)

    def test_a_bad_file_stops_the_start(self) -> None:
        path = self.write(FILE.replace('"0 2 * * *"', '"0 25 * * *"'))
        server = self.server(path)
        self.assertEqual(server.run(), 1)
        output = server.output()
        self.assertIn("entry 'nightly'", output)
        self.assertIn("cron", output)

    def test_file_reload_and_client(self) -> None:
        from procession.client import (
            Client,
            InvalidRequest as ClientInvalidRequest,
            PeriodicNotFound,
        )

        path = self.write(FILE)
        server = self.server(path).serving()
        client = Client("127.0.0.1", server.port, retry_for=5)
        self.addCleanup(client.close)

        def names() -> dict[str, tuple[str, str]]:
            return {e["name"]: (e["source"], e["cron"]) for e in client.periodic()}

        self.assertEqual(
            names(),
            {"fast": ("file", "* * * * * *"), "nightly": ("file", "0 2 * * *")},
        )
        nightly = client.periodic("nightly")
        self.assertEqual(
            (nightly["timezone"], nightly["description"], nightly["job"]["queue"]),
            ("Europe/Berlin", "At 02:00", "reports"),
        )
        made = client.periodic("by-api", "*/5 * * * *", job={"type": "t"})
        self.assertEqual((made["source"], made["paused"]), ("api", False))
        # The file's every-second entry runs on its own.
        fast = self.until(lambda: client.periodic("fast")["last_job"])
        self.assertTrue(fast["id"].startswith("fast@"), fast)

        # SIGHUP: the file's entries become the new file's; others stay.
        with open(path, "w", encoding="utf-8") as f:
            f.write(CHANGED)
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        want = {
            "by-api": ("api", "*/5 * * * *"),
            "nightly": ("file", "0 3 * * *"),
            "weekly": ("file", "@weekly"),
        }
        self.until(lambda: names() == want)
        # A bad file on SIGHUP is logged and changes nothing.
        with open(path, "w", encoding="utf-8") as f:
            f.write("[periodic.x]\ncron = 'nope'\njob = {type = 't'}\n")
        server.process.send_signal(signal.SIGHUP)
        self.until(lambda: "was not reloaded" in server.output())
        self.assertEqual(names(), want)

        # Management through the client.
        paused = client.pause_periodic("weekly")
        self.assertEqual((paused["paused"], paused["next_run"]), (True, None))
        self.assertFalse(client.resume_periodic("weekly")["paused"])
        run = client.run_periodic("weekly")
        self.assertTrue(run.startswith("weekly@now-"), run)
        self.assertEqual(client.result(run)["state"], "queued")
        client.delete_periodic("by-api")
        with self.assertRaises(PeriodicNotFound):
            client.periodic("by-api")
        with self.assertRaises(ClientInvalidRequest) as caught:
            client.periodic("bad", "* * * * * * *", job={"type": "t"})
        self.assertEqual(caught.exception.details["field"], "cron")
        with self.assertRaises(ClientInvalidRequest) as caught:
            client.periodic("bad", "* * * * *", job={"type": "t", "retries": 3})
        self.assertEqual(caught.exception.details["field"], "job.retries")

        # Unique and expiring jobs through the client.
        first = client.push("mail", [7], unique_for=60, queue="mails")
        again = client.push("mail", [7], unique_for=60, queue="mails")
        self.assertTrue(first.created)
        self.assertEqual((str(again), again.created), (str(first), False))
        ids = client.push_many(
            [
                {"type": "mail", "args": [7], "unique_for": 60, "queue": "mails"},
                {"type": "mail", "args": [8], "unique_for": 60, "queue": "mails"},
            ]
        )
        self.assertEqual(ids[0], str(first))
        self.assertNotEqual(ids[1], str(first))
        gone = client.push("mail", [9], queue="mails", expires_in=0.05)
        time.sleep(0.1)
        worker = server.client("w")
        worker.ready(["mails"], credit=5)
        delivered = {worker.next_job(5)["id"] for _ in range(2)}
        self.assertEqual(delivered, {str(first), ids[1]})
        self.assertTrue(worker.no_job(0.3))
        self.assertEqual(client.result(gone)["state"], "expired")


class CLITests(CLITestCase):
    """
    C{procession periodic ...} and the push options of unique and
    expiring jobs, against a server in this process.
    """

    async def test_periodic_commands(self) -> None:
        self.assertEqual((await self.ok("periodic")).out, "no periodic entries\n")
        defined = await self.ok(
            "periodic",
            "nightly",
            "--cron",
            "0 2 * * *",
            "--timezone",
            "Europe/Berlin",
            "--job",
            '{"type":"report","args":[1]}',
        )
        self.assertIn("in words      At 02:00", defined.out)
        listing = (await self.ok("periodic")).lines()
        self.assertEqual(
            columns(listing[0]),
            [
                "NAME",
                "CRON",
                "ZONE",
                "NEXT",
                "RUN",
                "LAST",
                "RUN",
                "LAST",
                "JOB",
                "STATUS",
            ],
        )
        self.assertTrue(listing[1].startswith("nightly  0 2 * * *  Europe/Berlin"))
        self.assertTrue(listing[1].endswith("active"), listing[1])
        shown = await self.ok("periodic", "nightly", "--json")
        self.assertEqual(shown.json()["cron"], "0 2 * * *")
        paused = await self.ok("periodic", "nightly", "--pause")
        self.assertIn("paused        yes", paused.out)
        resumed = await self.ok("periodic", "nightly", "--resume", "--json")
        self.assertFalse(resumed.json()["paused"])
        run = await self.ok("periodic", "nightly", "--run")
        self.assertTrue(run.out.startswith("pushed nightly@now-"), run.out)
        deleted = await self.ok("periodic", "nightly", "--delete")
        self.assertEqual(deleted.out, "periodic entry nightly deleted\n")
        refused = await self.fails(
            1, "periodic", "bad", "--cron", "0 2 * *", "--job", '{"type":"t"}'
        )
        self.assertIn("cron must have 5 fields", refused.err)
        await self.fails(2, "periodic", "nightly", "--cron", "0 2 * * *")
        await self.fails(2, "periodic", "nightly", "--pause", "--run")
        await self.fails(2, "periodic", "--pause")
        missing = await self.fails(1, "periodic", "nightly")
        self.assertIn("periodic_not_found", missing.err)

    async def test_push_unique_and_expiring(self) -> None:
        first = await self.ok("push", "mail", "--args", "[1]", "--unique-for", "60")
        holder = first.out.split()[1]
        again = await self.ok("push", "mail", "--args", "[1]", "--unique-for", "60")
        self.assertEqual(again.out, f"{holder} holds the unique lock: nothing pushed\n")
        await self.ok(
            "push", "mail", "--args", "[2]", "--id", "soon", "--expires-in", "0.01"
        )
        await deferLater(reactor, 0.05, lambda: None)
        worker = await self.server.connect("w")
        await worker.ok("READY", {"queues": ["default"], "credit": 2})
        job = await worker.next_job()
        self.assertEqual(job["id"], holder)
        await deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(len(worker.jobs.pending), 0)
        self.assertEqual((await self.job("soon"))["state"], "expired")


class UITests(UITestCase):
    """
    The operator UI's Periodic page and its actions, behind the login and
    the CSRF protection.
    """

    args = ("--token", "w", "--admin-token", "adm")

    async def setUp(self) -> None:
        await super().setUp()
        self.http = HTTP(self.server.http_port, token="adm")
        put = await self.http.request(
            "PUT",
            "/api/v1/periodic/report",
            body={
                "cron": "*/5 * * * *",
                "timezone": "Europe/Berlin",
                "job": {"type": "report"},
            },
        )
        self.assertEqual(put.code, 201, put)
        page = await self.browser.post("/login", {"token": "adm", "next": "/periodic"})
        self.assertEqual(page.code, 303, page)

    async def test_page_and_actions(self) -> None:
        page = await self.browser.get("/periodic")
        self.assertEqual(page.code, 200, page)
        for text in ("report", "Every 5 minutes", "*/5 * * * *", "Europe/Berlin"):
            self.assertIn(text, page.text)
        self.assertIn('aria-current="page">Periodic', page.text)
        self.assertIn('<span class="badge active">active</span>', page.text)

        # Run now: its job is the entry's last job, shown with its state.
        page = await self.browser.submit(
            "/periodic", "/periodic/report", {"action": "run"}
        )
        self.assertEqual(page.code, 303, page)
        self.assertEqual(page.location, "/periodic?done=run#entry-report")
        page = await self.browser.get("/periodic?done=run")
        self.assertIn("Pushed the entry&#39;s job now.", page.text)
        self.assertIn("badge state-queued", page.text)
        self.assertIn('href="/jobs/report%40now-', page.text)

        await self.browser.submit("/periodic", "/periodic/report", {"action": "pause"})
        entry = (await self.http.get("/api/v1/periodic/report")).json
        self.assertTrue(entry["paused"])
        page = await self.browser.get("/periodic")
        self.assertIn('<span class="badge paused">paused</span>', page.text)
        self.assertIn(">Resume</button>", page.text)
        await self.browser.submit("/periodic", "/periodic/report", {"action": "resume"})
        self.assertFalse(
            (await self.http.get("/api/v1/periodic/report")).json["paused"]
        )

        # Without the page's CSRF token, nothing changes.
        refused = await self.browser.post("/periodic/report", {"action": "pause"})
        self.assertEqual(refused.code, 403, refused)
        refused = await self.browser.post(
            "/periodic/report", [("csrf", "forged"), ("action", "pause")]
        )
        self.assertEqual(refused.code, 403, refused)
        self.assertFalse(
            (await self.http.get("/api/v1/periodic/report")).json["paused"]
        )

        # Delete asks first, then needs the confirmation.
        confirm = await self.browser.get("/periodic/report/delete")
        self.assertIn("Delete periodic entry report?", confirm.text)
        unconfirmed = await self.browser.submit(
            "/periodic", "/periodic/report", {"action": "delete"}
        )
        self.assertEqual(unconfirmed.code, 400, unconfirmed)
        deleted = await self.browser.submit(
            "/periodic/report/delete",
            "/periodic/report",
            {"action": "delete", "confirmed": "yes"},
        )
        self.assertEqual(deleted.location, "/periodic?done=delete")
        self.assertEqual((await self.http.get("/api/v1/periodic/report")).code, 404)
        page = await self.browser.get("/periodic")
        self.assertIn("No periodic entry yet", page.text)
        missing = await self.browser.get("/periodic/nope/delete")
        self.assertEqual(missing.code, 404, missing)

    async def test_expired_jobs_show(self) -> None:
        (job_id,) = await self.push({"type": "t", "expires_in": 0.01})
        await deferLater(reactor, 0.05, lambda: None)
        worker = await self.worker()
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(len(worker.jobs.pending), 0)
        page = await self.browser.get(f"/jobs/{job_id}")
        self.assertEqual(page.code, 200, page)
        self.assertIn("badge state-expired", page.text)


class SchedulerTests(TestCase):
    """
    The periodic service's pass over the entries (L{Periodic.run_due}) on a
    clock the test moves: late ticks, missed ticks after downtime, and two
    schedulers (servers) running one entry.
    """

    async def setUp(self) -> None:
        from procession.service.periodic import Periodic

        self.clock = FakeClock(ms("2026-05-05T10:00:00.500Z") / 1000)
        self.store = await connected_store(self, self.clock)
        self.one = Periodic(self.store, reactor)
        self.two = Periodic(self.store, reactor)

    async def jobs(self, queue: str = "default") -> list[str]:
        return sorted(await self.store.state_members(queue, "queued"))

    async def test_missed_ticks_skip(self) -> None:
        await self.one.put("hourly", {"cron": "0 * * * *", "job": {"type": "h"}})
        # Down for five hours and a bit: one job, for the latest tick.
        self.clock.advance(5 * 3600 + 60)
        await self.one.run_due()
        self.assertEqual(await self.jobs(), ["hourly@2026-05-05T15:00:00.000Z"])
        entry = await self.one.get("hourly")
        self.assertEqual((entry["runs"], entry["skipped"]), (1, 4))
        # Another server's pass finds nothing left to do.
        await self.two.run_due()
        self.assertEqual(len(await self.jobs()), 1)

    async def test_missed_ticks_all(self) -> None:
        await self.one.put(
            "hourly", {"cron": "0 * * * *", "missed": "all", "job": {"type": "h"}}
        )
        self.clock.advance(3 * 3600)
        await defer.gatherResults(
            [
                defer.ensureDeferred(self.one.run_due()),
                defer.ensureDeferred(self.two.run_due()),
            ]
        )
        self.assertEqual(
            await self.jobs(),
            [
                "hourly@2026-05-05T11:00:00.000Z",
                "hourly@2026-05-05T12:00:00.000Z",
                "hourly@2026-05-05T13:00:00.000Z",
            ],
        )
        entry = await self.one.get("hourly")
        self.assertEqual((entry["runs"], entry["skipped"]), (3, 0))

    async def test_two_schedulers_one_job_per_tick(self) -> None:
        await self.one.put(
            "beat", {"cron": "* * * * * *", "job": {"type": "b", "queue": "beats"}}
        )
        for step in range(20):
            self.clock.advance(0.25 if step % 3 else 1.5)
            order = [self.one, self.two] if step % 2 else [self.two, self.one]
            await defer.gatherResults(
                [defer.ensureDeferred(s.run_due()) for s in order]
            )
        ticks = [parse_time(i.partition("@")[2]) for i in await self.jobs("beats")]
        first = ms("2026-05-05T10:00:01Z")
        self.assertEqual(ticks, list(range(first, first + 1000 * len(ticks), 1000)))
        self.assertGreaterEqual(len(ticks), 10)
        entry = await self.one.get("beat")
        self.assertEqual(entry["runs"], len(ticks))

    async def test_a_bad_entry_does_not_stop_the_others(self) -> None:
        await self.one.put("good", {"cron": "* * * * * *", "job": {"type": "g"}})
        # An entry stored by hand with a template the scheduler cannot push
        # (a definition that went wrong some other way).
        spec = json.dumps(
            {
                "cron": "* * * * * *",
                "timezone": "UTC",
                "missed": "skip",
                "job": {"type": ""},
            }
        )
        await self.store.command(
            "HSET",
            self.store.keys.periodic,
            "broken",
            json.dumps({"spec": spec, "source": "api", "paused": 0, "since": 0}),
        )
        for _ in range(3):
            self.clock.advance(1)
            await self.one.run_due()
        # Logged once, not at every pass.
        self.assertEqual(len(self.flushLoggedErrors()), 1)
        jobs = await self.jobs()
        self.assertTrue(jobs and all(j.startswith("good@") for j in jobs), jobs)
