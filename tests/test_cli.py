"""
Tests of L{procession.client.cli}: every command run as a child process
(C{python -m procession.client.cli}) against a real server in this process, its
output (tables and C{--json}) and exit status checked; and the formatting
helpers on their own.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
from typing import Any, NamedTuple

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from procession.client import cli
from tests.client import ServerFixture
from tests.redis import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Result(NamedTuple):
    out: str
    err: str
    code: int

    def json(self) -> Any:
        return json.loads(self.out)

    def lines(self) -> list[str]:
        return self.out.splitlines()


def environment(**extra: str) -> dict[str, str]:
    """
    This process's environment without any PROCESSION_ or proxy setting,
    plus C{extra}.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PROCESSION_") and not k.lower().endswith("_proxy")
    }
    env.update(extra)
    return env


async def run_cli(*args: str, env: dict[str, str]) -> Result:
    """
    Run C{procession ARGS} as a child process; let the reactor serve
    meanwhile.
    """
    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        ["-m", "procession.client.cli", *args],
        env=env,
        path=ROOT,
        reactor=reactor,
    )
    return Result(out.decode("utf-8"), err.decode("utf-8"), code)


def columns(line: str) -> list[str]:
    return line.split()


class CLITestCase(TestCase):
    """
    A server in this process and the CLI pointed at it.
    """

    timeout = 60
    server_args: tuple[str, ...] = ()

    async def setUp(self) -> None:
        self.server = await ServerFixture(self, *self.server_args).start()
        self.url = f"http://127.0.0.1:{self.server.http_port}"
        self.env = environment(PROCESSION_URL=self.url)

    async def cli(self, *args: str, **env: str) -> Result:
        return await run_cli(*args, env=dict(self.env, **env))

    async def ok(self, *args: str, **env: str) -> Result:
        """
        Run a command that must succeed, quietly.
        """
        result = await self.cli(*args, **env)
        self.assertEqual(result.code, 0, f"procession {' '.join(args)}: {result.err}")
        return result

    async def fails(self, code: int, *args: str, **env: str) -> Result:
        """
        Run a command that must fail with C{code}, saying so on stderr only.
        """
        result = await self.cli(*args, **env)
        self.assertEqual(result.code, code, f"procession {' '.join(args)}: {result}")
        self.assertEqual(result.out, "")
        self.assertTrue(result.err.strip())
        return result

    async def job(self, job_id: str, queue: str = "default") -> dict[str, Any]:
        return await self.server.store.get_job(queue, job_id)

    async def failed_job(self, job_id: str) -> None:
        """
        Push C{job_id} to queue C{images} and fail its first attempt
        through a TCP worker.
        """
        await self.ok(
            "push", "resize", "--args", "[1]", "--id", job_id, "--queue", "images"
        )
        worker = await self.server.connect("tcp-tester")
        await worker.ok("READY", {"queues": ["images"], "credit": 1})
        job = await worker.next_job()
        self.assertEqual(job["id"], job_id)
        await worker.ok(
            "FAIL",
            {
                "id": job_id,
                "error": {
                    "type": "ValueError",
                    "message": "no such image",
                    "backtrace": [
                        "Traceback (most recent call last):",
                        '  File "jobs.py", line 3',
                    ],
                },
            },
        )
        await worker.ok("READY", {"queues": ["images"], "credit": 0})


class PushTests(CLITestCase):
    async def test_push(self) -> None:
        result = await self.ok("push", "resize", "--args", '[1, "x"]', "--id", "img-1")
        self.assertEqual(result.out, "pushed img-1\n")
        job = await self.job("img-1")
        self.assertEqual(
            (job["type"], job["args"], job["state"]), ("resize", [1, "x"], "queued")
        )

        again = await self.ok("push", "resize", "--args", "[1]", "--id", "img-1")
        self.assertEqual(again.out, "img-1 exists already: nothing pushed\n")
        self.assertEqual((await self.job("img-1"))["args"], [1, "x"])

    async def test_push_fields(self) -> None:
        await self.ok(
            "push", "report", "--queue", "reports", "--id", "r-1", "--priority", "5",
            "--delay", "3600", "--max-attempts", "3", "--timeout", "60",
            "--meta", '{"by": "ops"}',
        )  # fmt: skip
        job = await self.job("r-1", "reports")
        self.assertEqual(
            (
                job["queue"],
                job["state"],
                job["priority"],
                job["max_attempts"],
                job["timeout"],
                job["meta"],
            ),
            ("reports", "scheduled", 5, 3, 60.0, {"by": "ops"}),
        )
        self.assertEqual(job["args"], [])
        self.assertIsNotNone(job["run_at"])

        await self.ok(
            "push", "report", "--id", "r-2", "--run-at", "2099-01-02T03:04:05Z"
        )
        self.assertEqual((await self.job("r-2"))["run_at"], "2099-01-02T03:04:05.000Z")

    async def test_push_json(self) -> None:
        result = await self.ok("push", "echo", "--json")
        answer = result.json()
        self.assertEqual(answer["created"], True)
        self.assertEqual((await self.job(answer["id"]))["type"], "echo")
        again = await self.ok("--json", "push", "echo", "--id", answer["id"])
        self.assertEqual(again.json(), {"id": answer["id"], "created": False})

    async def test_push_refused(self) -> None:
        """
        A job the server refuses: exit 1 with its message and code.
        """
        result = await self.fails(1, "push", "x", "--max-attempts", "0")
        self.assertIn("(invalid_job, HTTP 400)", result.err)
        self.assertIn("max_attempts", result.err)

    async def test_push_bad_json(self) -> None:
        result = await self.fails(2, "push", "x", "--args", "[1,")
        self.assertIn("--args is not valid JSON", result.err)
        await self.fails(2, "push", "x", "--meta", "{")
        await self.fails(2, "push")


class StatsAndQueuesTests(CLITestCase):
    async def setUp(self) -> None:
        await super().setUp()
        for n in range(3):
            await self.ok("push", "resize", "--args", f"[{n}]", "--id", f"img-{n}")
        await self.ok("push", "report", "--queue", "reports", "--delay", "600")

    async def test_stats(self) -> None:
        result = await self.ok("stats")
        rows = dict(line.split(None, 1) for line in result.lines())
        self.assertEqual(rows["queues"], "2")
        self.assertEqual(rows["pushed"], "4")
        self.assertEqual(rows["queued"], "3")
        self.assertEqual(rows["scheduled"], "1")
        self.assertEqual(rows["workers"], "0 (0 tcp, 0 http)")
        self.assertIn("last minute", result.out)

        answer = (await self.ok("stats", "--json")).json()
        self.assertEqual(answer["totals"]["pushed"], 4)
        self.assertEqual(answer["queues"], 2)

    async def test_queues(self) -> None:
        result = await self.ok("queues")
        header, *rows = result.lines()
        self.assertEqual(
            columns(header),
            [
                "QUEUE",
                "STATE",
                "QUEUED",
                "SCHEDULED",
                "RETRYING",
                "RUNNING",
                "DEAD",
                "LATENCY",
                "PROCESSED",
                "FAILED",
            ],
        )
        # The columns line up: every row as long as the header.
        self.assertEqual({len(line) for line in result.lines()}, {len(header)})
        by_name = {columns(r)[0]: columns(r) for r in rows}
        self.assertEqual(by_name["default"][1:7], ["active", "3", "0", "0", "0", "0"])
        self.assertEqual(by_name["reports"][1:7], ["active", "0", "1", "0", "0", "0"])

        answer = (await self.ok("queues", "--json")).json()
        self.assertEqual(
            {q["name"]: q["sizes"]["queued"] for q in answer["queues"]},
            {"default": 3, "reports": 0},
        )

    async def test_one_queue(self) -> None:
        result = await self.ok("queues", "default")
        rows = dict(
            line.split(None, 1)
            for line in result.lines()
            if not line.startswith("oldest")
        )
        self.assertEqual(
            (rows["queue"], rows["state"], rows["queued"]), ("default", "active", "3")
        )
        self.assertEqual(
            (await self.ok("queues", "reports", "--json")).json()["sizes"]["scheduled"],
            1,
        )

        missing = await self.fails(1, "queues", "nowhere")
        self.assertIn("(queue_not_found, HTTP 404)", missing.err)

    async def test_empty(self) -> None:
        other = await ServerFixture(self).start()
        result = await self.ok("queues", "--url", f"http://127.0.0.1:{other.http_port}")
        self.assertEqual(result.out, "no queues\n")
        listing = await self.ok("jobs", "--url", f"http://127.0.0.1:{other.http_port}")
        self.assertEqual(listing.out, "no jobs\n")


class JobsTests(CLITestCase):
    async def setUp(self) -> None:
        await super().setUp()
        # Pushed one at a time, so "newest first" is this order reversed.
        for n in range(5):
            await self.ok("push", "resize", "--args", f"[{n}]", "--id", f"img-{n}")
        await self.ok(
            "push", "report", "--queue", "reports", "--id", "rep-1", "--delay", "600"
        )
        await self.ok("kill", "img-1")

    async def test_list(self) -> None:
        result = await self.ok("jobs")
        header, *rows = result.lines()
        self.assertEqual(
            columns(header),
            ["ID", "QUEUE", "TYPE", "STATE", "ATTEMPT", "CREATED", "ARGS"],
        )
        self.assertEqual(
            {columns(r)[0] for r in rows},
            {"rep-1", "img-0", "img-1", "img-2", "img-3", "img-4"},
        )
        row = {columns(r)[0]: columns(r) for r in rows}
        self.assertEqual(row["img-1"][1:5], ["default", "resize", "dead", "0/25"])
        self.assertEqual(row["img-3"][-1], "[3]")
        self.assertEqual(row["rep-1"][1:4], ["reports", "report", "scheduled"])
        self.assertEqual(result.err, "")

    async def test_filters(self) -> None:
        dead = await self.ok("jobs", "--state", "dead", "--queue", "default")
        self.assertEqual([columns(r)[0] for r in dead.lines()[1:]], ["img-1"])
        reports = await self.ok("jobs", "--queue", "reports", "--json")
        self.assertEqual([j["id"] for j in reports.json()["jobs"]], ["rep-1"])
        by_type = await self.ok("jobs", "--type", "report", "--json")
        self.assertEqual(
            by_type.json(), {"jobs": by_type.json()["jobs"], "cursor": None}
        )
        self.assertEqual([j["id"] for j in by_type.json()["jobs"]], ["rep-1"])
        none = await self.ok("jobs", "--state", "completed")
        self.assertEqual(none.out, "no jobs\n")
        await self.fails(2, "jobs", "--state", "finished")
        await self.fails(2, "jobs", "--limit", "0")

    async def test_pages(self) -> None:
        """
        --limit and --cursor page through the listing; the cursor to go on
        with is a hint on stderr, and in the JSON.
        """
        first = await self.ok("jobs", "--limit", "2", "--queue", "default")
        ids = [columns(r)[0] for r in first.lines()[1:]]
        self.assertEqual(len(ids), 2)
        self.assertIn("more jobs: add --cursor ", first.err)
        cursor = first.err.split("--cursor ")[1].split()[0]

        rest = await self.ok("jobs", "--queue", "default", "--cursor", cursor, "--json")
        self.assertIsNone(rest.json()["cursor"])
        ids += [j["id"] for j in rest.json()["jobs"]]
        self.assertEqual(sorted(ids), [f"img-{n}" for n in range(5)])

        page = await self.ok("jobs", "--limit", "3", "--json")
        self.assertEqual(len(page.json()["jobs"]), 3)
        self.assertIsNotNone(page.json()["cursor"])
        everything = await self.ok("jobs", "--all", "--json")
        self.assertEqual(len(everything.json()["jobs"]), 6)
        self.assertIsNone(everything.json()["cursor"])

        bad = await self.fails(1, "jobs", "--cursor", "not-a-cursor")
        self.assertIn("HTTP 400", bad.err)

    async def test_job(self) -> None:
        await self.failed_job("img-9")
        result = await self.ok("job", "img-9")
        lines = result.lines()
        rows = dict(
            line.split(None, 1)
            for line in lines
            if not line.startswith(" ") and "errors" not in line
        )
        self.assertEqual(
            (
                rows["id"],
                rows["type"],
                rows["queue"],
                rows["state"],
                rows["args"],
                rows["attempt"],
            ),
            ("img-9", "resize", "images", "retrying", "[1]", "1"),
        )
        self.assertEqual(rows["worker"], "tcp-tester#1")
        self.assertIn("errors (1, newest first):", lines)
        error_line = lines[lines.index("errors (1, newest first):") + 1]
        self.assertIn("ValueError: no such image", error_line)
        self.assertIn("tcp-tester", error_line)
        self.assertIn('        File "jobs.py", line 3', lines)

        answer = (await self.ok("job", "img-9", "--json")).json()
        self.assertEqual(answer["errors"][0]["message"], "no such image")
        self.assertEqual(answer["id"], "img-9")

    async def test_job_odd_ids(self) -> None:
        await self.ok("push", "x", "--id", "a/b#c%d")
        self.assertEqual(
            (await self.ok("job", "a/b#c%d", "--json")).json()["id"], "a/b#c%d"
        )
        missing = await self.fails(1, "job", "nothing-here")
        self.assertEqual(
            missing.err, "procession: no job 'nothing-here' (not_found, HTTP 404)\n"
        )
        # Ids that begin with "/" (issue 12, item 8): no internal error.
        for odd in ("/lead", "//two", "a//b"):
            await self.ok("push", "x", "--id", odd)
            self.assertEqual((await self.ok("job", odd, "--json")).json()["id"], odd)
            await self.ok("cancel", odd)
            await self.ok("delete", odd)
        for odd in (".", ".."):
            await self.ok("push", "x", "--id", odd)
            self.assertEqual((await self.ok("job", odd, "--json")).json()["id"], odd)
            await self.ok("cancel", odd)
        # An empty id would name another route.
        await self.fails(2, "job", "")
        await self.fails(2, "delete", "")
        await self.fails(2, "pause", "")
        # GET /api/v1/jobs/next is the long poll: it must not be asked.
        nxt = await self.fails(2, "job", "next")
        self.assertIn("'next'", nxt.err)
        self.assertEqual((await self.job("img-0"))["state"], "queued")


class ChangeTests(CLITestCase):
    async def setUp(self) -> None:
        await super().setUp()
        for n in range(4):
            await self.ok("push", "resize", "--args", f"[{n}]", "--id", f"img-{n}")

    async def test_kill_retry(self) -> None:
        self.assertEqual(
            (await self.ok("kill", "img-0")).out,
            "img-0: queued -> dead (queue default)\n",
        )
        self.assertEqual((await self.job("img-0"))["state"], "dead")
        self.assertEqual(
            (await self.ok("retry", "img-0")).out,
            "img-0: dead -> queued (queue default)\n",
        )
        self.assertEqual((await self.job("img-0"))["state"], "queued")
        again = await self.fails(1, "retry", "img-0")
        self.assertEqual(
            again.err,
            "procession: job 'img-0' is not in a state that allows this (illegal_state, HTTP 409)\n",
        )
        answer = (await self.ok("kill", "img-0", "--json")).json()
        self.assertEqual(
            answer,
            {
                "id": "img-0",
                "queue": "default",
                "previous_state": "queued",
                "state": "dead",
            },
        )
        await self.fails(1, "kill", "nothing-here")

    async def test_retry_failed(self) -> None:
        await self.failed_job("img-9")
        self.assertEqual((await self.job("img-9", "images"))["state"], "retrying")
        result = await self.ok("retry", "img-9")
        self.assertEqual(result.out, "img-9: retrying -> queued (queue images)\n")
        self.assertEqual((await self.job("img-9", "images"))["state"], "queued")

    async def test_cancel_delete(self) -> None:
        self.assertEqual(
            (await self.ok("cancel", "img-1")).out,
            "img-1: queued -> cancelled (queue default)\n",
        )
        self.assertEqual((await self.job("img-1"))["state"], "cancelled")
        await self.fails(1, "cancel", "img-1")
        deleted = await self.ok("delete", "img-1")
        self.assertEqual(
            deleted.out, "img-1: deleted (it was cancelled, in queue default)\n"
        )
        await self.fails(1, "job", "img-1")
        answer = (await self.ok("delete", "img-2", "--json")).json()
        self.assertEqual(
            answer,
            {
                "id": "img-2",
                "queue": "default",
                "previous_state": "queued",
                "deleted": True,
            },
        )
        gone = await self.fails(1, "delete", "img-2")
        self.assertIn("(not_found, HTTP 404)", gone.err)

    async def test_bulk(self) -> None:
        killed = await self.ok("kill", "--queue", "default", "--state", "queued")
        self.assertEqual(killed.out, "killed 4 queued jobs of queue default\n")
        retried = await self.ok(
            "retry", "--queue", "default", "--state", "dead", "--json"
        )
        self.assertEqual(retried.json(), {"count": 4})
        self.assertEqual((await self.job("img-3"))["state"], "queued")
        await self.fails(1, "retry", "--queue", "nowhere", "--state", "dead")

    async def test_usage(self) -> None:
        for args in (
            ["retry"],
            ["retry", "img-0", "--queue", "default", "--state", "dead"],
            ["retry", "--queue", "default"],
            ["retry", "img-0", "--state", "dead"],
            ["kill", "--queue", "default", "--state", "dead"],
            ["cancel"],
            ["delete", "--queue", "default"],
        ):
            await self.fails(2, *args)
        self.assertEqual((await self.job("img-0"))["state"], "queued")

    async def test_pause_resume(self) -> None:
        self.assertEqual(
            (await self.ok("pause", "default")).out, "queue default paused\n"
        )
        self.assertEqual(
            (await self.ok("pause", "default")).out,
            "queue default was paused already\n",
        )
        self.assertEqual(
            columns((await self.ok("queues")).lines()[1])[:2], ["default", "paused"]
        )
        # A paused queue hands out nothing.
        worker = await self.server.connect()
        await worker.ok("READY", {"queues": ["default"], "credit": 1})
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(worker.jobs.pending, [])

        self.assertEqual(
            (await self.ok("resume", "default", "--json")).json(),
            {"name": "default", "paused": False, "changed": True},
        )
        job = await worker.next_job()
        self.assertEqual(job["id"], "img-0")
        self.assertEqual(
            (await self.ok("resume", "default")).out,
            "queue default was not paused already\n",
        )
        # A queue may be paused before it has jobs.
        self.assertEqual((await self.ok("pause", "later")).out, "queue later paused\n")
        await self.fails(1, "pause", "bad/name")

    async def test_purge(self) -> None:
        await self.ok("kill", "img-0")
        await self.ok("kill", "img-1")
        result = await self.ok("purge", "default", "--state", "dead")
        self.assertEqual(result.out, "deleted 2 dead jobs of queue default\n")
        await self.fails(1, "job", "img-0")
        self.assertEqual(
            (await self.ok("purge", "default", "--state", "queued", "--json")).json(),
            {"count": 2},
        )
        self.assertEqual(
            (await self.ok("purge", "default", "--state", "queued")).out,
            "deleted 0 queued jobs of queue default\n",
        )
        await self.fails(2, "purge", "default")
        await self.fails(2, "purge", "default", "--state", "completed")
        await self.fails(1, "purge", "nowhere", "--state", "dead")


class WorkersTests(CLITestCase):
    async def test_workers(self) -> None:
        self.assertEqual((await self.ok("workers")).out, "no workers\n")
        await self.ok("push", "resize", "--id", "img-0")
        worker = await self.server.connect("resizer")
        await worker.ok("READY", {"queues": ["default", "low"], "credit": 2})
        await worker.next_job()

        result = await self.ok("workers")
        header, row = result.lines()
        self.assertEqual(
            columns(header), ["KIND", "NAME", "QUEUES", "JOBS", "SINCE", "STATUS"]
        )
        self.assertEqual(columns(row)[:4], ["tcp", "resizer#1", "default,low", "1"])
        self.assertTrue(row.endswith("credit 2"), row)
        answer = (await self.ok("workers", "--json")).json()
        self.assertEqual(
            answer["workers"][0]["jobs"], [{"id": "img-0", "queue": "default"}]
        )

        stats = dict(line.split(None, 1) for line in (await self.ok("stats")).lines())
        self.assertEqual(stats["workers"], "1 (1 tcp, 0 http)")

        quieted = await self.ok("quiet", "resizer")
        self.assertEqual(quieted.out, "quieted resizer#1\n")
        for _ in range(50):
            if worker.quiets:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(worker.quiets), 1)
        self.assertTrue(
            (await self.ok("workers")).lines()[1].endswith("credit 2, quiet")
        )
        missing = await self.fails(1, "quiet", "nobody")
        self.assertIn("(worker_not_found, HTTP 404)", missing.err)


class AuthTests(CLITestCase):
    server_args = ("--admin-token", "a", "--token", "w")

    async def test_tokens(self) -> None:
        none = await self.fails(1, "stats")
        self.assertEqual(
            none.err,
            "procession: this route needs an Authorization: Bearer token (unauthorized, HTTP 401)\n",
        )
        wrong = await self.fails(1, "stats", "--token", "nope")
        self.assertEqual(
            wrong.err, "procession: the token is not valid (unauthorized, HTTP 401)\n"
        )
        wrong_env = await self.fails(1, "queues", PROCESSION_ADMIN_TOKEN="nope")
        self.assertIn("(unauthorized, HTTP 401)", wrong_env.err)
        worker = await self.fails(1, "stats", "--token", "w")
        self.assertIn("(forbidden, HTTP 403)", worker.err)

        await self.ok("stats", "--token", "a")
        await self.ok("stats", PROCESSION_ADMIN_TOKEN="a")
        # PROCESSION_ADMIN_TOKEN first, then PROCESSION_TOKEN; --token over both.
        await self.ok("stats", PROCESSION_TOKEN="a")
        await self.ok("stats", PROCESSION_ADMIN_TOKEN="a", PROCESSION_TOKEN="w")
        await self.ok("stats", "--token", "a", PROCESSION_ADMIN_TOKEN="nope")
        # The worker token may push.
        await self.ok("push", "x", PROCESSION_TOKEN="w")

        path = os.path.abspath(self.mktemp())
        FilePath(path).setContent(b"a\n")
        await self.ok("--token-file", path, "stats")
        await self.fails(2, "--token-file", path + ".missing", "stats")
        await self.fails(2, "--token-file", path, "--token", "a", "stats")


class ConnectionTests(CLITestCase):
    async def test_unreachable(self) -> None:
        url = f"http://127.0.0.1:{free_port()}"
        result = await self.fails(3, "stats", "--url", url)
        self.assertEqual(
            result.err,
            f"procession: cannot reach procession at {url}: connection refused\n",
        )
        from_env = await self.fails(3, "jobs", PROCESSION_URL=url)
        self.assertIn(f"cannot reach procession at {url}", from_env.err)

    async def test_no_answer(self) -> None:
        """
        A server that accepts connections but never answers: exit 3 after
        --request-timeout.
        """
        silent = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(silent.close)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = await self.fails(3, "stats", "--url", url, "--request-timeout", "0.5")
        self.assertEqual(
            result.err,
            f"procession: cannot reach procession at {url}: no answer in time\n",
        )

    async def test_not_procession(self) -> None:
        """
        Something else answers: exit 1, saying so.
        """

        class Page(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                if request.path.endswith(b"/stats"):
                    return b"<html>hello</html>"
                request.setResponseCode(502, b"Bad Gateway")
                return b"<html>oops</html>"

        port = reactor.listenTCP(0, Site(Page()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}"
        result = await self.fails(1, "stats", "--url", url)
        self.assertIn("the answer is not JSON", result.err)
        result = await self.fails(1, "queues", "--url", url)
        self.assertEqual(result.err, "procession: Bad Gateway (HTTP 502)\n")

    async def test_url(self) -> None:
        # --url before or after the command; the environment otherwise.
        await self.ok("--url", self.url, "stats", PROCESSION_URL="http://127.0.0.1:1")
        await self.ok(
            "stats", "--url", self.url + "/", PROCESSION_URL="http://127.0.0.1:1"
        )
        await self.fails(2, "stats", "--request-timeout", "0")
        for url in ("127.0.0.1:8080", "ftp://x", "http://"):
            await self.fails(2, "stats", "--url", url)

    async def test_no_route(self) -> None:
        """
        A URL with a path that is not the server's root: the API's 404.
        """
        result = await self.fails(1, "stats", "--url", self.url + "/elsewhere")
        self.assertIn("(no_route, HTTP 404)", result.err)

    async def test_usage(self) -> None:
        await self.fails(2)
        await self.fails(2, "frobnicate")
        help = await self.ok("--help")
        self.assertIn("Exit status", help.out)

    async def test_no_twisted(self) -> None:
        """
        The CLI imports no Twisted, so it starts fast.
        """
        code = "import sys, procession.client.cli; print(sorted(m for m in sys.modules if m.startswith('twisted')))"
        out, err, status = await getProcessOutputAndValue(
            sys.executable, ["-c", code], env=self.env, path=ROOT, reactor=reactor
        )
        self.assertEqual((out.strip(), status), (b"[]", 0), err)


class FormattingTests(SynchronousTestCase):
    """
    The helpers that turn answers into text.
    """

    def test_table(self) -> None:
        self.assertEqual(
            cli.table(["A", "NUMBER"], [["long value", "1"], ["x", "100"]], right=[1]),
            "A           NUMBER\nlong value       1\nx              100",
        )

    def test_cell(self) -> None:
        self.assertEqual(cli.cell(None), "-")
        self.assertEqual(cli.cell(True), "yes")
        self.assertEqual(cli.cell({"a": [1]}), '{"a":[1]}')
        self.assertEqual(cli.cell("two\nlines\t"), "two\\nlines\\t")
        self.assertEqual(cli.cell("café"), "café")

    def test_duration(self) -> None:
        self.assertEqual(
            [cli.duration(s) for s in (0, 0.25, 4.24, 185, 7800, 3 * 86400 + 4 * 3600)],
            ["0s", "250ms", "4.2s", "3m05s", "2h10m", "3d04h"],
        )

    def test_moment(self) -> None:
        self.assertEqual(cli.moment("2026-11-27T12:00:00.123Z"), "2026-11-27T12:00:00Z")
        self.assertEqual(cli.moment(86400123), "1970-01-02T00:00:00Z")
        self.assertEqual(cli.moment(None), "-")

    def test_error_from_answer(self) -> None:
        error = cli.error_from_answer(
            409, "Conflict", b'{"error":{"code":"lease_lost","message":"gone"}}'
        )
        self.assertEqual(str(error), "gone (lease_lost, HTTP 409)")
        proxy = cli.error_from_answer(502, "Bad Gateway", b"<html>")
        self.assertEqual(str(proxy), "Bad Gateway (HTTP 502)")

    def test_main_usage_error(self) -> None:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["--url", "nonsense", "stats"], out, err, {})
        self.assertEqual((code, out.getvalue()), (2, ""))
        self.assertIn("the URL must look like http://host:port", err.getvalue())
