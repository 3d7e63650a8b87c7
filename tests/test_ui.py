"""
Tests of the operator UI (L{procession.http.ui.routes}): every page and action against
a real server in this process (real sockets, a real Redis, workers on the
TCP protocol), logins, CSRF refusals and escaping; and the UI's pure parts
(charts, the history cache, Redis status, packaging of the templates).

The browser tests are in L{tests.test_ui_browser}.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote

import treq
from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from procession.http.ui import routes as ui
from procession.http.ui.session import Signer
from tests.client import LineClient, ServerFixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN = "adm1n-s3cret-token"

SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def sleep(seconds: float) -> defer.Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class Page:
    """
    A finished response, its body as text.
    """

    def __init__(self, code: int, headers: Any, text: str) -> None:
        self.code = code
        self.headers = headers
        self.text = text

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return values[0].decode("utf-8") if values else None

    def set_cookies(self) -> list[str]:
        return [
            v.decode("utf-8") for v in self.headers.getRawHeaders(b"set-cookie") or []
        ]

    @property
    def location(self) -> str | None:
        return self.header("location")

    def csrf(self) -> str:
        match = re.search(r'name="csrf" value="([^"]*)"', self.text)
        assert match, self.text[:2000]
        return match.group(1)

    def __repr__(self) -> str:
        return f"<Page {self.code} {self.location or self.text[:1500]!r}>"


class Browser:
    """
    A client that keeps cookies like a browser and does not follow
    redirects; C{token} is sent as a bearer token.
    """

    def __init__(self, port: int, token: str | None = None) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token
        self.cookies: dict[str, str] = {}
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = HTTPClient(Agent(reactor, pool=pool))

    async def request(self, method: str, path: str, form: Any = None) -> Page:
        headers: dict[bytes, list[bytes]] = {}
        if self.cookies:
            headers[b"Cookie"] = [
                "; ".join(f"{k}={v}" for k, v in self.cookies.items()).encode()
            ]
        if self.token is not None:
            headers[b"Authorization"] = [b"Bearer " + self.token.encode()]
        kwargs: dict[str, Any] = {"headers": headers, "allow_redirects": False}
        if form is not None:
            kwargs["data"] = form
        response = await self.client.request(method, self.base + path, **kwargs)
        content = await treq.content(response)
        page = Page(response.code, response.headers, content.decode("utf-8"))
        for cookie in page.set_cookies():
            name, _, rest = cookie.partition("=")
            value = rest.split(";")[0]
            if "Max-Age=0" in cookie:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return page

    async def get(self, path: str) -> Page:
        return await self.request("GET", path)

    async def post(self, path: str, form: Any = None) -> Page:
        return await self.request("POST", path, form if form is not None else {})

    async def submit(self, page_path: str, action: str, fields: Any = ()) -> Page:
        """
        Load a page and post a form to C{action} with the page's CSRF token,
        as a browser does.
        """
        page = await self.get(page_path)
        assert page.code == 200, page
        return await self.post(
            action,
            [
                ("csrf", page.csrf()),
                *list(fields.items() if isinstance(fields, dict) else fields),
            ],
        )


class UITestCase(TestCase):
    """
    A server (no tokens unless C{args} says), a browser and a producer.
    """

    args: tuple[str, ...] = ()

    async def setUp(self) -> None:
        self.server = await ServerFixture(self, *self.args).start()
        self.browser = Browser(self.server.http_port)
        token = "w" if "--token" in self.args else None
        self.producer = await self.server.connect("producer", token=token)

    async def push(self, *jobs: dict[str, Any]) -> list[str]:
        reply = await self.producer.ok("PUSHB", list(jobs))
        return reply["ids"]

    async def worker(
        self, queues: list[str] = ["default"], credit: int = 1, name: str = "worker"
    ) -> LineClient:
        token = "w" if "--token" in self.args else None
        client = await self.server.connect(name, token=token)
        await client.ok("READY", {"queues": queues, "credit": credit})
        return client

    async def dead_job(self, **fields: Any) -> str:
        """
        A job that failed once and went to dead, with an error history.
        """
        fields.setdefault("type", "t")
        queue = fields.get("queue", "default")
        (job_id,) = await self.push(fields)
        worker = await self.worker([queue], name="failer")
        job = await worker.next_job()
        self.assertEqual(job["id"], job_id)
        await worker.ok(
            "FAIL",
            {
                "id": job_id,
                "error": {
                    "type": "ValueError",
                    "message": "bad input " + SCRIPT,
                    "backtrace": [
                        'File "app.py", line 3, in handle',
                        "  raise ValueError()",
                    ],
                },
                "retry": False,
            },
        )
        await worker.ok("BYE")
        return job_id

    async def state(self, job_id: str) -> str:
        store = self.server.store
        return (await store.get_job(await store.locate(job_id), job_id))["state"]

    def assertPage(self, page: Page, code: int = 200) -> None:
        self.assertEqual(page.code, code, page)
        self.assertEqual(page.header("content-type"), "text/html; charset=utf-8", page)
        self.assertSecure(page)

    def assertSecure(self, page: Page) -> None:
        self.assertEqual(page.header("x-frame-options"), "DENY")
        csp = page.header("content-security-policy") or ""
        self.assertIn("script-src 'self'", csp)
        self.assertIn("frame-ancestors 'none'", csp)
        self.assertNotIn("unsafe-inline", csp)
        self.assertEqual(page.header("x-content-type-options"), "nosniff")

    def assertRedirect(self, page: Page, location: str) -> None:
        self.assertEqual(page.code, 303, page)
        self.assertEqual(page.location, location)


# -- every page


class PagesTests(UITestCase):
    async def test_every_page_renders(self) -> None:
        dead = await self.dead_job()
        await self.push({"type": "t", "delay": 600}, {"type": "t", "queue": "other"})
        await self.worker(["other"])
        await sleep(0.05)
        paths = [
            "/",
            "/queues",
            "/queues/default",
            "/queues/default/purge?state=dead",
            "/running",
            "/queued",
            "/scheduled",
            "/retrying",
            "/dead",
            "/dead?queue=default&type=t",
            "/workers",
            ui.job_url(dead),
        ]
        for path in paths:
            page = await self.browser.get(path)
            self.assertPage(page)
            self.assertIn("<main", page.text, path)
            # No inline script, style or handler: the CSP would block them.
            self.assertIsNone(re.search(r"<script(?![^>]*\bsrc=)", page.text), path)
            self.assertIsNone(re.search(r"\sstyle=", page.text), path)
            self.assertIsNone(re.search(r"\son[a-z]+=", page.text), path)

    async def test_the_session_cookie(self) -> None:
        page = await self.browser.get("/")
        (cookie,) = page.set_cookies()
        self.assertTrue(cookie.startswith("procession_session="), cookie)
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=strict", cookie)
        self.assertIn("Path=/", cookie)
        # Served over plain HTTP: a Secure cookie would never come back.
        self.assertNotIn("Secure", cookie)
        # A browser with a session keeps it.
        page = await self.browser.get("/queues")
        self.assertEqual(page.set_cookies(), [])

    async def test_static_files(self) -> None:
        for name, kind in [("ui.css", "text/css"), ("ui.js", "text/javascript")]:
            page = await self.browser.get(f"/static/{name}")
            self.assertEqual(page.code, 200)
            self.assertTrue(page.header("content-type").startswith(kind))
            self.assertEqual(page.header("x-content-type-options"), "nosniff")
        self.assertEqual((await self.browser.get("/static/base.html")).code, 404)
        self.assertEqual((await self.browser.get("/static/..%2Fbase.html")).code, 404)

    async def test_not_found(self) -> None:
        for path in ["/jobs/nope", "/queues/nope", "/queues/bad%20name"]:
            page = await self.browser.get(path)
            self.assertIn(page.code, (400, 404), (path, page))
            self.assertPage(page, page.code)

    async def test_get_never_changes_state(self) -> None:
        dead = await self.dead_job()
        for path in [
            "/queues/default/pause",
            "/queues/default/resume",
            "/logout",
            "/workers/worker/quiet",
        ]:
            page = await self.browser.get(path)
            self.assertEqual(page.code, 405, (path, page))
        # The purge's confirmation page purges nothing.
        page = await self.browser.get("/queues/default/purge?state=dead")
        self.assertPage(page)
        self.assertIn("1 job is dead now", page.text)
        self.assertEqual(await self.state(dead), "dead")
        summary = await self.server.store.summary("default")
        self.assertFalse(summary.paused)


class CSRFTests(UITestCase):
    async def test_refused_without_the_token(self) -> None:
        await self.push({"type": "t"})
        page = await self.browser.get("/queues/default")
        token = page.csrf()
        for form in [{}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": token[:-1]}]:
            page = await self.browser.post("/queues/default/pause", form)
            self.assertPage(page, 403)
            self.assertIn("CSRF", page.text)
        self.assertFalse((await self.server.store.summary("default")).paused)
        page = await self.browser.post("/queues/default/pause", {"csrf": token})
        self.assertRedirect(page, "/queues/default?notice=paused")
        self.assertTrue((await self.server.store.summary("default")).paused)

    async def test_another_sessions_token_is_refused(self) -> None:
        await self.push({"type": "t"})
        other = Browser(self.server.http_port)
        token = (await other.get("/queues/default")).csrf()
        await self.browser.get("/queues/default")
        page = await self.browser.post("/queues/default/pause", {"csrf": token})
        self.assertPage(page, 403)

    async def test_a_forged_form_without_the_cookie_is_refused(self) -> None:
        # A page on another site can post a form, but the browser sends no
        # SameSite=Strict cookie with it, and the page cannot know a token.
        await self.push({"type": "t"})
        token = (await self.browser.get("/queues/default")).csrf()
        stranger = Browser(self.server.http_port)
        page = await stranger.post("/queues/default/pause", {"csrf": token})
        self.assertEqual(page.code, 401, page)
        self.assertFalse((await self.server.store.summary("default")).paused)

    async def test_every_action_needs_the_token(self) -> None:
        dead = await self.dead_job()
        await self.browser.get("/")
        actions = [
            ("/queues/default/pause", {}),
            ("/queues/default/resume", {}),
            ("/queues/default/purge", {"state": "dead", "confirmed": "yes"}),
            ("/jobs", {"state": "dead", "action": "delete", "job": f"default/{dead}"}),
            ("/jobs", {"state": "dead", "action": "delete_all", "confirmed": "yes"}),
            (ui.job_url(dead), {"action": "delete"}),
            ("/workers/producer/quiet", {}),
            ("/logout", {}),
        ]
        for path, form in actions:
            page = await self.browser.post(path, form)
            self.assertPage(page, 403)
        self.assertEqual(await self.state(dead), "dead")
        self.assertEqual(self.producer.quiets, [])


# -- logging in


class LoginTests(UITestCase):
    args = ("--token", "w", "--admin-token", ADMIN)

    async def test_pages_need_a_login(self) -> None:
        for path in ["/", "/queues", "/dead?queue=default", "/jobs/x"]:
            page = await self.browser.get(path)
            self.assertRedirect(page, "/login?next=" + quote(path, safe=""))
            self.assertSecure(page)
        page = await self.browser.get("/dashboard.json")
        self.assertEqual(page.code, 401)
        page = await self.browser.post("/queues/default/pause", {"csrf": "x"})
        self.assertPage(page, 401)
        # No session is handed out without a login.
        self.assertEqual(self.browser.cookies, {})

    async def test_login_and_logout(self) -> None:
        page = await self.browser.get("/login?next=%2Fqueues")
        self.assertPage(page)
        self.assertIn('type="password"', page.text)
        page = await self.browser.post("/login", {"token": "wrong", "next": "/queues"})
        self.assertPage(page, 401)
        self.assertIn("not the admin token", page.text)
        self.assertEqual(page.set_cookies(), [])
        page = await self.browser.post("/login", {"token": ADMIN, "next": "/queues"})
        self.assertRedirect(page, "/queues")
        (cookie,) = page.set_cookies()
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=strict", cookie)
        self.assertNotIn(ADMIN, cookie)
        session = self.browser.cookies["procession_session"]
        self.assertTrue(
            Signer.for_token(ADMIN).session_valid(session, reactor.seconds())
        )

        page = await self.browser.get("/queues")
        self.assertPage(page)
        self.assertIn("Log out", page.text)
        self.assertEqual((await self.browser.get("/dashboard.json")).code, 200)
        self.assertRedirect(await self.browser.get("/login"), "/")

        page = await self.browser.submit("/queues", "/logout")
        self.assertRedirect(page, "/login?notice=loggedout")
        self.assertNotIn("procession_session", self.browser.cookies)
        self.assertRedirect(await self.browser.get("/"), "/login?next=%2F")

    async def test_the_worker_token_does_not_log_in(self) -> None:
        page = await self.browser.post("/login", {"token": "w"})
        self.assertPage(page, 401)
        worker = Browser(self.server.http_port, token="w")
        self.assertEqual((await worker.get("/")).code, 303)
        self.assertEqual((await worker.post("/queues/default/pause")).code, 401)

    async def test_the_admin_token_as_a_bearer(self) -> None:
        await self.push({"type": "t"})
        client = Browser(self.server.http_port, token=ADMIN)
        self.assertPage(await client.get("/"))
        # No CSRF token needed: browsers never send this header by themselves.
        page = await client.post("/queues/default/pause")
        self.assertRedirect(page, "/queues/default?notice=paused")
        self.assertTrue((await self.server.store.summary("default")).paused)

    async def test_forged_sessions(self) -> None:
        now = reactor.seconds()
        for value in [
            "1.2.3",
            Signer.for_token("another token").new_session(now),
            Signer.for_token(ADMIN).new_session(now - 13 * 3600),
            ADMIN,
        ]:
            self.browser.cookies = {"procession_session": value}
            self.assertRedirect(await self.browser.get("/"), "/login?next=%2F")

    async def test_login_goes_only_to_this_server(self) -> None:
        for target in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "javascript:alert(1)",
        ]:
            page = await self.browser.post("/login", {"token": ADMIN, "next": target})
            self.assertRedirect(page, "/")

    async def test_session_json(self) -> None:
        page = await self.browser.get("/session.json")
        self.assertEqual(page.text, '{"valid": false}')
        await self.browser.post("/login", {"token": ADMIN})
        page = await self.browser.get("/session.json")
        self.assertEqual(page.text, '{"valid": true}')


class OpenLoginTests(UITestCase):
    async def test_no_login_without_an_admin_token(self) -> None:
        self.assertRedirect(await self.browser.get("/login?next=%2Fdead"), "/dead")
        page = await self.browser.get("/")
        self.assertNotIn("Log out", page.text)


class SecureCookieTests(SynchronousTestCase):
    def test_secure_over_tls(self) -> None:
        from twisted.web.http import Request
        from twisted.web.test.requesthelper import DummyChannel

        from procession.http.site import HTTPServer

        server = HTTPServer(dispatcher=None, admin_token=ADMIN)  # type: ignore[arg-type]
        for secure in (True, False):
            request = Request(DummyChannel())
            request.isSecure = lambda secure=secure: secure  # type: ignore[method-assign]
            server._set_session(request, "1.2.3")
            (cookie,) = request.cookies
            self.assertEqual(b"; Secure" in cookie, secure, cookie)
            self.assertIn(b"HttpOnly", cookie)
            self.assertIn(b"SameSite=strict", cookie)


# -- what the pages show and do


class DashboardTests(UITestCase):
    async def test_numbers_and_charts(self) -> None:
        await self.push(*[{"type": "t"} for _ in range(3)], {"type": "t", "delay": 600})
        worker = await self.worker(credit=1)
        for _ in range(2):
            job = await worker.next_job()
            await worker.ok("ACK", {"id": job["id"]})
        job = await worker.next_job()
        await worker.ok("FAIL", {"id": job["id"], "retry": False})
        await sleep(0.05)
        page = await self.browser.get("/")
        self.assertPage(page)
        self.assertRegex(page.text, r'data-live="processed">2<')
        self.assertRegex(page.text, r'data-live="failed">1<')
        self.assertRegex(page.text, r'data-live="dead">1<')
        self.assertRegex(page.text, r'data-live="scheduled">1<')
        self.assertRegex(page.text, r'data-live="hour-processed-total">2<')
        self.assertRegex(page.text, r'data-live="redis-version">\d+\.\d+')
        self.assertIn('data-live-url="/dashboard.json"', page.text)

        live = await self.browser.get("/dashboard.json")
        self.assertEqual(live.header("content-type"), "application/json")
        import json

        data = json.loads(live.text)
        self.assertEqual(data["text"]["processed"], "2")
        self.assertEqual(data["text"]["failed"], "1")
        self.assertEqual(data["text"]["day-processed-total"], "2")
        self.assertEqual(data["text"]["workers"], "2")
        self.assertIn("AOF", data["text"]["redis-persistence"])
        self.assertEqual(
            set(data["points"]),
            {
                f"{c}-{s}"
                for c in ("hour", "day")
                for s in ("processed", "processed-area", "failed")
            },
        )
        # The last minute's point sits above the baseline.
        last = data["points"]["hour-processed"].split()[-1]
        self.assertNotEqual(last.split(",")[1], "120")


class QueueTests(UITestCase):
    async def test_a_pushed_job_shows_in_its_queue(self) -> None:
        (job_id,) = await self.push({"type": "t", "queue": "emails"})
        page = await self.browser.get("/queues")
        self.assertIn('href="/queues/emails"', page.text)
        page = await self.browser.get("/queues/emails")
        self.assertRegex(page.text, r'data-state="queued">1<')
        self.assertIn(">active<", page.text)
        self.assertIn('href="/queued?queue=emails"', page.text)
        page = await self.browser.get("/queued?queue=emails")
        self.assertEqual(
            re.findall(r'name="job" value="([^"]+)"', page.text), [f"emails/{job_id}"]
        )

    async def test_pause_and_resume(self) -> None:
        await self.push({"type": "t"})
        page = await self.browser.submit("/queues/default", "/queues/default/pause")
        self.assertRedirect(page, "/queues/default?notice=paused")
        page = await self.browser.get(page.location)
        self.assertIn(">paused<", page.text)
        self.assertIn("The queue is paused", page.text)
        self.assertIn(">Resume<", page.text)
        self.assertTrue((await self.server.store.summary("default")).paused)
        page = await self.browser.submit("/queues/default", "/queues/default/resume")
        self.assertRedirect(page, "/queues/default?notice=resumed")
        self.assertFalse((await self.server.store.summary("default")).paused)

    async def test_purge_asks_first(self) -> None:
        first = await self.dead_job()
        second = await self.dead_job()
        page = await self.browser.get("/queues/default/purge?state=dead")
        self.assertIn("Delete every dead job of queue default?", page.text)
        self.assertIn("2 jobs are dead now", page.text)
        form = {"state": "dead", "csrf": page.csrf()}
        page = await self.browser.post("/queues/default/purge", form)
        self.assertPage(page, 400)
        self.assertEqual(await self.state(first), "dead")
        page = await self.browser.post(
            "/queues/default/purge", {**form, "confirmed": "yes"}
        )
        self.assertRedirect(page, "/queues/default?notice=purged&n=2")
        self.assertIn("Deleted 2 jobs.", (await self.browser.get(page.location)).text)
        for job_id in (first, second):
            self.assertEqual((await self.browser.get(ui.job_url(job_id))).code, 404)

    async def test_purge_needs_a_purgeable_state(self) -> None:
        await self.push({"type": "t"})
        page = await self.browser.get("/queues/default/purge?state=running")
        self.assertPage(page, 400)


class RunningTests(UITestCase):
    async def test_longest_running_first(self) -> None:
        first, second = await self.push(
            {"type": "slow", "id": "first"}, {"type": "slow", "id": "second"}
        )
        one = await self.worker(name="one")
        self.assertEqual((await one.next_job())["id"], "first")
        await sleep(0.05)
        two = await self.worker(name="two")
        self.assertEqual((await two.next_job())["id"], "second")
        page = await self.browser.get("/running")
        self.assertPage(page)
        self.assertIn('data-refresh="3"', page.text)
        self.assertLess(page.text.index("/jobs/first"), page.text.index("/jobs/second"))
        self.assertRegex(page.text, r"one#\d+")
        self.assertRegex(page.text, r"two#\d+")
        self.assertIn("1 of 25", page.text)
        self.assertIn("2 jobs, the longest-running first", page.text)
        await one.ok("ACK", {"id": "first"})
        page = await self.browser.get("/running")
        self.assertIn("1 job, the longest-running first", page.text)

    async def test_none(self) -> None:
        page = await self.browser.get("/running")
        self.assertIn("No job is running.", page.text)


class ListTests(UITestCase):
    async def test_filters_and_pages(self) -> None:
        await self.push(
            *[
                {"type": "t1", "queue": "q1", "delay": 600, "id": f"a{i:02d}"}
                for i in range(55)
            ],
            *[
                {"type": "t2", "queue": "q2", "delay": 600, "id": f"b{i}"}
                for i in range(3)
            ],
        )
        page = await self.browser.get("/scheduled")
        self.assertPage(page)
        rows = re.findall(r'name="job" value="([^"]+)"', page.text)
        self.assertEqual(len(rows), ui.PAGE_SIZE)
        older = re.search(r'href="([^"]+)" rel="next"', page.text)
        assert older is not None
        page = await self.browser.get(older.group(1).replace("&amp;", "&"))
        more = re.findall(r'name="job" value="([^"]+)"', page.text)
        self.assertEqual(len(more), 58 - ui.PAGE_SIZE)
        self.assertEqual(
            set(rows) | set(more),
            {f"q1/a{i:02d}" for i in range(55)} | {f"q2/b{i}" for i in range(3)},
        )

        for path in [
            "/scheduled?queue=q2",
            "/scheduled?type=t2",
            "/scheduled?queue=q2&type=t2",
        ]:
            page = await self.browser.get(path)
            self.assertEqual(
                sorted(re.findall(r'name="job" value="([^"]+)"', page.text)),
                ["q2/b0", "q2/b1", "q2/b2"],
                path,
            )
        page = await self.browser.get("/scheduled?type=nothing")
        self.assertIn("No scheduled job of type nothing.", page.text)
        self.assertEqual((await self.browser.get("/scheduled?cursor=bogus")).code, 400)

    async def test_bulk_on_selected_jobs(self) -> None:
        ids = await self.push(*[{"type": "t", "delay": 600} for _ in range(3)])
        page = await self.browser.get("/scheduled")
        form = [
            ("csrf", page.csrf()),
            ("state", "scheduled"),
            ("queue", ""),
            ("type", ""),
            ("action", "kill"),
        ]
        form += [("job", f"default/{i}") for i in ids[:2]]
        page = await self.browser.post("/jobs", form)
        self.assertRedirect(page, "/scheduled?notice=killed&n=2&skipped=0")
        self.assertEqual(
            [await self.state(i) for i in ids], ["dead", "dead", "scheduled"]
        )
        # Retry them from the dead list; one of them has moved on already.
        await self.server.store.retry_now("default", ids[0])
        page = await self.browser.get("/dead")
        form = [("csrf", page.csrf()), ("state", "dead"), ("action", "retry")]
        form += [("job", f"default/{i}") for i in ids[:2]]
        page = await self.browser.post("/jobs", form)
        self.assertRedirect(page, "/dead?notice=retried&n=1&skipped=1")
        page = await self.browser.get(page.location)
        self.assertIn("Queued 1 job to run now. Skipped 1 job", page.text)
        self.assertEqual(
            [await self.state(i) for i in ids], ["queued", "queued", "scheduled"]
        )
        page = await self.browser.get("/scheduled")
        page = await self.browser.post(
            "/jobs",
            [
                ("csrf", page.csrf()),
                ("state", "scheduled"),
                ("action", "delete"),
                ("job", f"default/{ids[2]}"),
            ],
        )
        self.assertRedirect(page, "/scheduled?notice=deleted&n=1&skipped=0")
        self.assertEqual((await self.browser.get(ui.job_url(ids[2]))).code, 404)

    async def test_bulk_on_every_job_asks_first(self) -> None:
        ids = [await self.dead_job(type="a") for _ in range(2)]
        other = await self.dead_job(type="b")
        page = await self.browser.get("/dead")
        form = {
            "csrf": page.csrf(),
            "state": "dead",
            "action": "retry_all",
            "queue": "default",
            "type": "a",
        }
        page = await self.browser.post("/jobs", form)
        self.assertPage(page)
        self.assertIn("Run now every dead job of type a of queue default?", page.text)
        self.assertIn("3 jobs are dead of queue default now", page.text)
        self.assertEqual(await self.state(ids[0]), "dead")
        page = await self.browser.post(
            "/jobs", {**form, "csrf": page.csrf(), "confirmed": "yes"}
        )
        self.assertRedirect(
            page, "/dead?queue=default&type=a&notice=retried&n=2&skipped=0"
        )
        self.assertEqual(
            [await self.state(i) for i in ids + [other]], ["queued", "queued", "dead"]
        )
        # Without a type: the store's bulk script over every queue.
        form = {
            "csrf": form["csrf"],
            "state": "dead",
            "action": "delete_all",
            "confirmed": "yes",
        }
        page = await self.browser.post("/jobs", form)
        self.assertRedirect(page, "/dead?notice=deleted&n=1&skipped=0")
        self.assertEqual((await self.browser.get(ui.job_url(other))).code, 404)

    async def test_kill_every_queued_job_of_a_queue(self) -> None:
        ids = await self.push({"type": "t", "queue": "q"}, {"type": "t", "queue": "q"})
        (other,) = await self.push({"type": "t"})
        page = await self.browser.get("/queued?queue=q")
        self.assertEqual(
            re.findall(r'name="action" value="(\w+)"', page.text),
            ["kill", "delete", "kill_all", "delete_all"],
        )
        form = {"csrf": page.csrf(), "state": "queued", "queue": "q", "type": ""}
        page = await self.browser.post("/jobs", {**form, "action": "kill_all"})
        self.assertIn("2 jobs are queued of queue q now", page.text)
        page = await self.browser.post(
            "/jobs", {**form, "action": "kill_all", "confirmed": "yes"}
        )
        self.assertRedirect(page, "/queued?queue=q&notice=killed&n=2&skipped=0")
        states = [await self.state(i) for i in [*ids, other]]
        self.assertEqual(states, ["dead", "dead", "queued"])

    async def test_bulk_actions_must_fit_the_list(self) -> None:
        page = await self.browser.get("/dead")
        for form in [
            {"state": "dead", "action": "kill", "job": "default/x"},
            {"state": "running", "action": "delete", "job": "default/x"},
            {"state": "dead", "action": "explode"},
            {"state": "dead", "action": "retry"},
        ]:
            response = await self.browser.post("/jobs", {**form, "csrf": page.csrf()})
            self.assertPage(response, 400)


class JobTests(UITestCase):
    async def test_everything_about_a_job(self) -> None:
        (job_id,) = await self.push(
            {
                "type": "report.build",
                "args": {"month": 11, "rows": [1, 2]},
                "meta": {"by": "cron"},
                "priority": 5,
                "max_attempts": 3,
            }
        )
        worker = await self.worker()
        await worker.next_job()
        await worker.ok(
            "FAIL",
            {
                "id": job_id,
                "error": {
                    "type": "Timeout",
                    "message": "db slow",
                    "backtrace": ["line one", "line two"],
                },
                "retry_in": 0,
            },
        )
        await worker.next_job()
        await worker.ok("ACK", {"id": job_id, "result": {"rows": 42}})
        page = await self.browser.get(ui.job_url(job_id))
        self.assertPage(page)
        for text in [
            job_id,
            "report.build",
            ">completed<",
            "2 of 3",
            "<dd>5</dd>",
            "&#34;month&#34;: 11,\n  &#34;rows&#34;: [\n    1,",
            "&#34;by&#34;: &#34;cron&#34;",
            "&#34;rows&#34;: 42",
            "Timeout",
            "db slow",
            "line one\nline two",
            "worker#",
            "<time datetime=",
            ' UTC">',
        ]:
            self.assertIn(text, page.text)
        # A finished job can only be deleted.
        self.assertEqual(
            re.findall(r'name="action" value="(\w+)"', page.text), ["delete"]
        )

    async def test_args_are_shown_as_text(self) -> None:
        (job_id,) = await self.push(
            {
                "type": "<img src=x onerror=alert(1)>",
                "args": [SCRIPT, {"k": '"><svg onload=alert(2)>'}],
                "delay": 600,
            }
        )
        pages = [ui.job_url(job_id), "/scheduled", "/queues/default"]
        for path in pages:
            page = await self.browser.get(path)
            self.assertPage(page)
            self.assertNotIn(SCRIPT, page.text, path)
            self.assertNotIn("<img src=x", page.text, path)
            self.assertNotIn("<svg onload", page.text, path)
        page = await self.browser.get(ui.job_url(job_id))
        self.assertIn(ESCAPED, page.text)
        self.assertIn("&lt;img src=x onerror=alert(1)&gt;", page.text)
        self.assertIn("&#34;&gt;&lt;svg onload=alert(2)&gt;", page.text)

    async def test_an_error_message_is_shown_as_text(self) -> None:
        job_id = await self.dead_job()
        page = await self.browser.get(ui.job_url(job_id))
        self.assertNotIn(SCRIPT, page.text)
        self.assertIn("bad input " + ESCAPED, page.text)

    async def test_retry_a_dead_job(self) -> None:
        job_id = await self.dead_job()
        page = await self.browser.get(ui.job_url(job_id))
        self.assertEqual(
            re.findall(r'name="action" value="(\w+)"', page.text), ["retry", "delete"]
        )
        self.assertIn("Last error", page.text)
        page = await self.browser.post(
            ui.job_url(job_id), {"csrf": page.csrf(), "action": "retry"}
        )
        self.assertRedirect(page, ui.job_url(job_id) + "?notice=retried&n=1")
        self.assertEqual(await self.state(job_id), "queued")
        page = await self.browser.get(page.location)
        self.assertIn(">queued<", page.text)
        self.assertEqual(
            re.findall(r'name="action" value="(\w+)"', page.text),
            ["kill", "cancel", "delete"],
        )

    async def test_cancel_kill_delete(self) -> None:
        a, b, c = await self.push({"type": "t"}, {"type": "t"}, {"type": "t"})
        for job_id, verb, state in [(a, "cancel", "cancelled"), (b, "kill", "dead")]:
            page = await self.browser.submit(
                ui.job_url(job_id), ui.job_url(job_id), {"action": verb}
            )
            self.assertEqual(page.code, 303, page)
            self.assertEqual(await self.state(job_id), state)
        page = await self.browser.submit(
            ui.job_url(c), ui.job_url(c), {"action": "delete"}
        )
        self.assertRedirect(page, "/queues/default?notice=deleted&n=1")
        self.assertEqual((await self.browser.get(ui.job_url(c))).code, 404)

    async def test_an_action_its_state_does_not_allow(self) -> None:
        (job_id,) = await self.push({"type": "t"})
        page = await self.browser.submit(
            ui.job_url(job_id), ui.job_url(job_id), {"action": "retry"}
        )
        self.assertPage(page, 409)
        self.assertIn("no longer in a state that allows retry", page.text)
        page = await self.browser.submit(
            ui.job_url(job_id), ui.job_url(job_id), {"action": "explode"}
        )
        self.assertPage(page, 400)

    async def test_ids_that_need_quoting(self) -> None:
        job_id = "a/b?c%d#e&f"
        await self.push({"type": "t", "id": job_id})
        page = await self.browser.get("/jobs/" + quote(job_id, safe=""))
        self.assertPage(page)
        self.assertIn("a/b?c%d#e&amp;f", page.text)
        page = await self.browser.post(
            ui.job_url(job_id), {"csrf": page.csrf(), "action": "kill"}
        )
        self.assertRedirect(page, ui.job_url(job_id) + "?notice=killed&n=1")
        self.assertEqual(await self.state(job_id), "dead")


class WorkerTests(UITestCase):
    async def test_workers_and_their_jobs(self) -> None:
        (job_id,) = await self.push({"type": "t", "queue": "emails"})
        worker = await self.worker(["emails", "default"], credit=3, name="mailer")
        await worker.next_job()
        page = await self.browser.get("/workers")
        self.assertPage(page)
        self.assertRegex(page.text, r"mailer#\d+")
        self.assertIn('href="/queues/emails"', page.text)
        self.assertIn(ui.job_url(job_id), page.text)
        self.assertIn('<td class="num wide">3</td>', page.text)

    async def test_a_job_whose_lease_ran_out_is_not_in_hand(self) -> None:
        """
        Once a silent worker's lease runs out and the sweep gives its job
        back, the Workers page and GET /api/v1/workers no longer list the
        job in its connection's hands; a job whose lease it extended stays.
        """
        await self.push(
            {"type": "t", "id": "lost", "timeout": 1},
            {"type": "t", "id": "kept", "timeout": 1},
        )
        worker = await self.worker(credit=2, name="silent")
        await worker.next_job()
        await worker.next_job()
        await worker.ok("EXTEND", {"id": "kept", "seconds": 60})
        listed = (await self.browser.get("/api/v1/workers")).text
        self.assertIn('"lost"', listed)
        for _ in range(200):
            if await self.state("lost") == "queued":
                break
            await sleep(0.05)
        self.assertEqual(await self.state("lost"), "queued")
        self.assertEqual(await self.state("kept"), "running")
        page = await self.browser.get("/workers")
        self.assertRegex(page.text, r"silent#\d+")
        self.assertNotIn(ui.job_url("lost"), page.text)
        self.assertIn(ui.job_url("kept"), page.text)
        listed = (await self.browser.get("/api/v1/workers")).text
        self.assertNotIn('"lost"', listed)
        self.assertIn('"kept"', listed)

    async def test_workers_of_other_servers(self) -> None:
        other = await ServerFixture(self, ns=self.server.namespace).start()
        client = await other.connect("elsewhere")
        await client.ok("READY", {"queues": ["default"], "credit": 1})
        await sleep(0.6)  # a heartbeat or two
        page = await self.browser.get("/workers")
        self.assertRegex(page.text, r"elsewhere#\d+")
        self.assertIn(other.store.server_id, page.text)
        self.assertIn("on another server", page.text)
        self.assertIn("to 2 servers", page.text)
        # Only the local workers can be quieted from here.
        self.assertEqual(page.text.count(">Quiet</button>"), 1)
        page = await self.browser.get("/")
        self.assertRegex(page.text, r'data-live="workers">2<')

    async def test_quiet_a_worker(self) -> None:
        worker = await self.worker(name="mailer")
        page = await self.browser.get("/workers")
        name = re.search(r"(mailer#\d+)", page.text).group(1)  # type: ignore[union-attr]
        page = await self.browser.post(
            f"/workers/{quote(name, safe='')}/quiet", {"csrf": page.csrf()}
        )
        self.assertRedirect(page, "/workers?notice=quieted&n=1")
        await sleep(0.05)
        self.assertEqual(worker.quiets, [{"reason": "operator"}])
        page = await self.browser.get(page.location)
        self.assertIn(">quiet<", page.text)
        self.assertIn("Sent QUIET to 1 worker connection.", page.text)
        page = await self.browser.post("/workers/nobody/quiet", {"csrf": page.csrf()})
        self.assertPage(page, 404)


# -- the pure parts


class HistoryTests(TestCase):
    """
    The charts' numbers: the store's per-minute counters (history.lua),
    per minute and per clock hour, summed over queues.
    """

    async def test_minutes_and_hours(self) -> None:
        from procession.core.job import encode_result
        from tests.support import FakeClock, connected_store, new_job

        # 30 s into a clock hour: that hour holds one minute so far.
        base = 1_800_000_000.0 + 30
        clock = FakeClock(base)
        store = await connected_store(self, clock)

        async def finish(queue: str, at: float, ok: bool = True) -> None:
            clock.now = at
            job = new_job(store.now_ms(), queue=queue)
            await store.push([job])
            (claimed,) = await store.claim(queue, [("w", f"lease-{job.id}@{queue}")])
            if ok:
                await store.ack(
                    queue, [(claimed.id, claimed.lease, encode_result(None))]
                )
            else:
                await store.fail(
                    queue, [(claimed.id, claimed.lease, "{}", None, False)]
                )

        await finish("a", base - 2 * 3600)  # two hours back
        await finish("b", base - 3600, ok=False)  # the hour before, 60 minutes back
        await finish("a", base - 60)  # the minute before
        await finish("a", base)
        await finish("b", base)
        await finish("b", base, ok=False)
        now_ms = int(base * 1000)

        minutes = await ui.minute_chart(store, ["a", "b"], now_ms)
        self.assertEqual(len(minutes.processed), 60)
        self.assertEqual(minutes.processed[-2:], [1, 2])
        self.assertEqual(minutes.failed[-2:], [0, 1])
        self.assertEqual((sum(minutes.processed), sum(minutes.failed)), (3, 1))
        self.assertEqual(minutes.per, "min")

        hours = await ui.hour_chart(store, ["a", "b"], now_ms)
        self.assertEqual(len(hours.processed), 24)
        self.assertEqual(hours.processed[-3:], [1, 1, 2])
        self.assertEqual(hours.failed[-3:], [0, 1, 1])
        self.assertEqual((sum(hours.processed), sum(hours.failed)), (4, 2))

        only_a = await ui.minute_chart(store, ["a"], now_ms)
        self.assertEqual(only_a.processed[-2:], [1, 1])
        self.assertEqual(sum((await ui.hour_chart(store, [], now_ms)).processed), 0)


class HelperTests(SynchronousTestCase):
    def test_safe_next(self) -> None:
        for value, expected in [
            (None, "/"),
            ("/dead?queue=a", "/dead?queue=a"),
            ("//evil.example", "/"),
            ("/\\evil.example", "/"),
            ("https://evil.example/", "/"),
            ("/ok\nSet-Cookie: x", "/"),
        ]:
            self.assertEqual(ui.safe_next(value), expected, value)
