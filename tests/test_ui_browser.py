"""
The operator UI in a real browser: headless Chromium (Debian's
C{/usr/bin/chromium}, or C{$PROCESSION_CHROMIUM}) driven by Playwright's
synchronous API, against a live C{twist procession} child process with an
admin token, while workers on the TCP protocol (L{tests.wire}) push, take,
finish and fail jobs.

Each test is one thing an operator does: log in, watch the dashboard move,
find a pushed job in its queue, see a running job and who holds it, read
why a job died and retry it, pause and resume a queue.  Screenshots of
every page, on a laptop and a phone, go to C{build/screenshots/}.

The server and the browser are started once for the module (they take a
few seconds) and stopped when the test process exits; each test has a
browser context (cookies) of its own.  The tests skip when Chromium or
Playwright is missing.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.redis import free_port, namespace, shared_redis
from tests.wire import WireClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = os.environ.get("PROCESSION_CHROMIUM", "/usr/bin/chromium")
SHOTS = os.path.join(REPO, "build", "screenshots")
ADMIN = "browser-adm1n-token"
WORKER = "browser-w0rker-token"
# Without the network flags Chromium tries to reach Google's hosts, which
# this machine's closed network refuses (slowly).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


class LiveServer:
    """
    A C{twist procession} child on loopback ports, against the test Redis
    in a namespace of its own; this checkout's code first on its path.
    With C{tokens} false it has none (the loopback default).
    """

    def __init__(self, tokens: bool = True) -> None:
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.dir = tempfile.mkdtemp(prefix="procession-ui-browser-")
        self.log_path = os.path.join(self.dir, "server.log")
        env = dict(os.environ)
        for name in ("PROCESSION_REDIS", "PROCESSION_TOKEN", "PROCESSION_ADMIN_TOKEN"):
            env.pop(name, None)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (REPO, env.get("PYTHONPATH")) if p
        )
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "twisted", "--log-format=text", "procession",
                    "--redis", shared_redis().url,
                    "--namespace", namespace(),
                    "--tcp", str(self.tcp_port),
                    "--http", str(self.http_port),
                    "--sweep-interval", "0.2",
                    "--shutdown-grace", "0.5",
                ]
                + (["--token", WORKER, "--admin-token", ADMIN] if tokens else []),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=env,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not start:\n{self.output()}")

    def output(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()[-5000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self, name: str) -> WireClient:
        """
        A worker connection, introduced.
        """
        client = WireClient("127.0.0.1", self.tcp_port)
        client.hello(name, token=WORKER)
        return client


class Fixture:
    """
    What the module's tests share: the server and the browser.
    """

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self.server = LiveServer()
        try:
            self.playwright = sync_playwright().start()
            self.browser = self.playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS
            )
        except BaseException:
            self.server.stop()
            raise
        atexit.register(self.stop)
        self.session = self._log_in()

    def _log_in(self) -> str:
        """
        A session cookie from the login form, posted without a browser: the
        tests that are not about logging in start logged in.
        """

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any) -> None:
                return None

        opener = urllib.request.build_opener(NoRedirect)
        body = urllib.parse.urlencode({"token": ADMIN}).encode("ascii")
        try:
            opener.open(self.server.base + "/login", body, timeout=10)
        except urllib.error.HTTPError as e:
            if e.code != 303:
                raise
            cookie = e.headers["Set-Cookie"]
        else:
            raise AssertionError("the login did not redirect")
        name, _, rest = cookie.partition("=")
        assert name == "procession_session", cookie
        return rest.split(";")[0]

    def stop(self) -> None:
        try:
            self.browser.close()
            self.playwright.stop()
        finally:
            self.server.stop()


_fixture: Fixture | BaseException | None = None


def fixture() -> Fixture:
    """
    The shared server and browser, started on first use (a failure to
    start is remembered, not tried again by every test); skip when there is
    no browser to drive.
    """
    global _fixture
    if not os.path.exists(CHROMIUM):
        raise SkipTest(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise SkipTest("Playwright is not installed (pip install '.[test]')") from None
    if _fixture is None:
        try:
            _fixture = Fixture()
        except Exception as e:
            _fixture = e
    if isinstance(_fixture, BaseException):
        raise RuntimeError(
            "the browser tests' server or browser did not start"
        ) from _fixture
    return _fixture


class BrowserTestCase(SynchronousTestCase):
    """
    A fresh browser context (no cookies) per test, and the worker
    connections it opens closed after it.
    """

    def setUp(self) -> None:
        self.fixture = fixture()
        self.server = self.fixture.server
        self.context = self.fixture.browser.new_context(viewport=LAPTOP)
        self.context.set_default_timeout(8000)
        self.addCleanup(self.context.close)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        # Script errors and Content-Security-Policy violations ("Refused to
        # ..."); a 401 page (a wrong login) is no error.
        self.page.on(
            "console",
            lambda m: (
                self.errors.append(m.text)
                if m.type == "error" and "Refused to" in m.text
                else None
            ),
        )
        os.makedirs(SHOTS, exist_ok=True)

    def tearDown(self) -> None:
        # No script error and no Content-Security-Policy violation on any
        # page the test saw.
        self.assertEqual(self.errors, [])

    def url(self, path: str) -> str:
        return self.server.base + path

    def client(self, name: str) -> WireClient:
        client = self.server.client(name)
        self.addCleanup(client.close)
        return client

    def login(self, path: str | None = "/") -> None:
        """
        Start logged in (L{LoginTests} uses the form), on C{path}.
        """
        self.context.add_cookies(
            [
                {
                    "name": "procession_session",
                    "value": self.fixture.session,
                    "url": self.server.base,
                    "httpOnly": True,
                    "sameSite": "Strict",
                }
            ]
        )
        if path is not None:
            self.page.goto(self.url(path))

    def shot(self, name: str, page: Any = None) -> None:
        (page or self.page).screenshot(
            path=os.path.join(SHOTS, f"{name}-laptop.png"), full_page=True
        )

    def expect(self, locator: Any) -> Any:
        from playwright.sync_api import expect

        return expect(locator)


class LoginTests(BrowserTestCase):
    def test_log_in_and_out(self) -> None:
        self.page.goto(self.url("/dead"))
        self.page.wait_for_url(re.compile(r".*/login\?next=%2Fdead$"))
        self.shot("login")
        self.page.fill("#token", "not the token")
        self.page.click("button[type=submit]")
        self.expect(self.page.locator("[role=alert]")).to_have_text(
            "That is not the admin token."
        )
        self.page.fill("#token", ADMIN)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(self.url("/dead"))
        self.expect(self.page.locator("h1")).to_have_text("Dead")
        (cookie,) = self.context.cookies()
        self.assertEqual(cookie["name"], "procession_session")
        self.assertTrue(cookie["httpOnly"])
        self.assertEqual(cookie["sameSite"], "Strict")
        self.assertNotIn(ADMIN, cookie["value"])
        # Scripts on the page cannot read it.
        self.assertEqual(self.page.evaluate("document.cookie"), "")
        self.page.click("text=Log out")
        self.page.wait_for_url(re.compile(r".*/login\?notice=loggedout$"))
        self.expect(self.page.locator(".notice")).to_have_text("You are logged out.")
        self.page.goto(self.url("/"))
        self.page.wait_for_url(re.compile(r".*/login\?next=%2F$"))


class DashboardTests(BrowserTestCase):
    def test_it_refreshes_itself(self) -> None:
        self.login()
        self.expect(self.page.locator("h1")).to_have_text("Dashboard")
        processed = self.page.locator('[data-live="processed"]')
        before = int(processed.inner_text().replace(",", ""))
        # Mark the document: a full reload would lose the mark.
        self.page.evaluate("window.notReloaded = true")
        producer = self.client("producer")
        worker = self.client("dash-worker")
        for _ in range(3):
            producer.push(type="dash", queue="dash")
        worker.ready(["dash"], credit=3)
        for _ in range(3):
            worker.ok("ACK", {"id": worker.next_job()["id"]})
        self.expect(processed).to_have_text(f"{before + 3:,}", timeout=8000)
        self.assertTrue(self.page.evaluate("window.notReloaded === true"))
        # The chart's last point rose off the baseline.
        points = self.page.get_attribute('[data-points="hour-processed"]', "points")
        assert points is not None
        self.assertNotEqual(points.split()[-1].split(",")[1], "120")
        self.expect(self.page.locator('[data-live="redis-version"]')).to_have_text(
            re.compile(r"\d+\.\d+")
        )
        self.shot("dashboard")


class QueueTests(BrowserTestCase):
    def test_a_pushed_job_appears_in_its_queue(self) -> None:
        self.login("/queues")
        self.assertEqual(self.page.locator("a", has_text="arrivals").count(), 0)
        job = self.client("producer").push(
            type="greet", queue="arrivals", args=["hello"]
        )
        self.page.reload()
        self.page.click("a:text-is('arrivals')")
        self.page.wait_for_url(self.url("/queues/arrivals"))
        self.expect(self.page.locator('[data-state="queued"]')).to_have_text("1")
        # The queued jobs of the queue, and the job's own page.
        self.page.click("a.card:has-text('Queued')")
        self.page.wait_for_url(self.url("/queued?queue=arrivals"))
        self.page.click(f"a[title='{job['id']}']")
        self.page.wait_for_url(self.url("/jobs/" + job["id"]))
        self.expect(self.page.locator(".badge.state-queued")).to_have_text("queued")
        self.expect(self.page.locator("#args")).to_contain_text('"hello"')
        self.page.goto(self.url("/queues"))
        self.shot("queues")

    def test_pause_and_resume(self) -> None:
        self.client("producer").push(type="t", queue="pausable")
        self.login("/queues/pausable")
        self.page.click("button:text-is('Pause')")
        self.expect(self.page.locator("#queue-state")).to_have_text("paused")
        self.expect(self.page.locator(".notice")).to_contain_text("The queue is paused")
        self.shot("queue-paused")
        # A worker gets nothing from a paused queue...
        worker = self.client("pause-worker")
        worker.ready(["pausable"])
        self.assertTrue(worker.no_job(0.5))
        # ...until it is resumed.
        self.page.click("button:text-is('Resume')")
        self.expect(self.page.locator("#queue-state")).to_have_text("active")
        self.assertEqual(worker.next_job()["queue"], "pausable")

    def test_purge_asks_first(self) -> None:
        self.client("producer").push(type="t", queue="purgeable", delay=600)
        self.login("/queues/purgeable")
        self.page.select_option("#purge-state", "scheduled")
        self.page.click("button:text-is('Purge…')")
        self.expect(self.page.locator("h1")).to_have_text(
            "Delete every scheduled job of queue purgeable?"
        )
        self.shot("purge-confirm")
        self.page.click("text=Cancel")
        self.expect(self.page.locator('[data-state="scheduled"]')).to_have_text("1")
        self.page.select_option("#purge-state", "scheduled")
        self.page.click("button:text-is('Purge…')")
        self.page.click("button:text-is('Delete every scheduled job')")
        self.expect(self.page.locator(".notice")).to_have_text("Deleted 1 job.")
        self.expect(self.page.locator('[data-state="scheduled"]')).to_have_text("0")


class RunningTests(BrowserTestCase):
    def test_watch_a_running_job_and_who_holds_it(self) -> None:
        job_id = self.client("producer").push(type="slow.report", queue="slow")["id"]
        worker = self.client("stuck-worker")
        worker.ready(["slow"])
        self.assertEqual(worker.next_job()["id"], job_id)
        self.login("/running")
        row = self.page.locator("tr", has=self.page.locator(f"a[title='{job_id}']"))
        self.expect(row).to_contain_text("slow.report")
        self.expect(row).to_contain_text("stuck-worker#")
        # The page refreshes by itself: the time running goes up.
        first = row.locator("td").nth(5).inner_text()
        self.expect(row.locator("td").nth(5)).not_to_have_text(first, timeout=8000)
        self.shot("running")
        # Which worker holds it: one click away.
        row.locator("a", has_text="stuck-worker#").click()
        self.page.wait_for_url(re.compile(r".*/workers#worker-stuck-worker%23\d+$"))
        worker_row = self.page.locator("tr:target")
        self.expect(worker_row).to_contain_text(job_id[:10])
        self.expect(worker_row).to_contain_text("slow")
        self.shot("workers")
        # Quiet it from there: it finishes the job it holds and gets no
        # more.
        worker_row.locator("button:text-is('Quiet')").click()
        self.expect(self.page.locator(".notice")).to_contain_text("Sent QUIET to 1")
        worker.wait_quiet()
        worker.ok("ACK", {"id": job_id})
        self.page.goto(self.url("/running"))
        self.expect(self.page.locator(f"a[title='{job_id}']")).to_have_count(0)


class DeadJobTests(BrowserTestCase):
    def test_find_why_a_job_failed_and_retry_it(self) -> None:
        self.login()
        producer = self.client("producer")
        job_id = producer.push(
            type="invoice.send",
            queue="billing",
            args={
                "customer": "<script>window.pwned = 1</script>",
                "html": '<img src=x onerror="window.pwned = 2">',
            },
        )["id"]
        worker = self.client("billing-worker")
        worker.ready(["billing"])
        self.assertEqual(worker.next_job()["id"], job_id)
        worker.ok(
            "FAIL",
            {
                "id": job_id,
                "error": {
                    "type": "SMTPError",
                    "message": "550 mailbox unavailable",
                    "backtrace": [
                        'File "billing.py", line 42, in send',
                        "  smtp.sendmail(to, body)",
                    ],
                },
                "retry": False,
            },
        )
        worker.close()
        # From the dashboard to the dead job.
        self.page.click("a.card:has-text('Dead')")
        self.page.wait_for_url(self.url("/dead"))
        self.page.select_option("#filter-queue", "billing")
        self.page.click("button:text-is('Filter')")
        self.page.wait_for_url(self.url("/dead?queue=billing&type="))
        self.shot("dead")
        # Select every job on the page at once.
        self.page.check("input[data-select-all]")
        self.assertTrue(self.page.is_checked(f"input[value='billing/{job_id}']"))
        self.page.click(f"a[title='{job_id}']")
        self.page.wait_for_url(self.url("/jobs/" + job_id))
        self.expect(self.page.locator(".error h3")).to_have_text(
            "SMTPError: 550 mailbox unavailable"
        )
        self.expect(self.page.locator(".backtrace")).to_contain_text(
            'File "billing.py", line 42, in send'
        )
        # Args are shown as text, never run.
        self.expect(self.page.locator("#args")).to_contain_text(
            "<script>window.pwned = 1</script>"
        )
        self.assertIsNone(self.page.evaluate("window.pwned"))
        self.assertEqual(self.page.locator("#args img").count(), 0)
        # The exact time is on hover.
        title = self.page.get_attribute(".error time", "title")
        self.assertRegex(title or "", r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC$")
        self.shot("job-dead")
        self.page.click("button:text-is('Retry now')")
        self.expect(self.page.locator(".notice")).to_have_text(
            "Queued 1 job to run now."
        )
        self.expect(self.page.locator(".heading .badge")).to_have_text("queued")
        again = self.client("billing-worker-2")
        again.ready(["billing"])
        job = again.next_job()
        self.assertEqual((job["id"], job["attempt"]), (job_id, 2))
        again.ok("ACK", {"id": job_id, "result": {"sent": True}})
        self.page.reload()
        self.expect(self.page.locator(".heading .badge")).to_have_text("completed")


class PhoneTests(BrowserTestCase):
    def test_pages_on_a_phone(self) -> None:
        """
        Every page fits a phone's width: nothing wider than the screen but
        the tables, which scroll inside their own box.
        """
        self.login(None)
        producer = self.client("producer")
        job_id = producer.push(
            type="phone.check", queue="phone", args={"n": 1}, delay=600
        )["id"]
        phone = self.fixture.browser.new_context(
            viewport=PHONE, is_mobile=True, has_touch=True
        )
        self.addCleanup(phone.close)
        phone.add_cookies(self.context.cookies())
        page = phone.new_page()
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        for name, path in [
            ("dashboard", "/"),
            ("queues", "/queues"),
            ("queue", "/queues/phone"),
            ("running", "/running"),
            ("scheduled", "/scheduled"),
            ("dead", "/dead"),
            ("job", "/jobs/" + job_id),
            ("workers", "/workers"),
        ]:
            page.goto(self.url(path))
            page.wait_for_load_state("load")
            width = page.evaluate("document.documentElement.scrollWidth")
            self.assertLessEqual(width, PHONE["width"], path)
            page.screenshot(
                path=os.path.join(SHOTS, f"{name}-phone.png"), full_page=True
            )
        self.page.goto(self.url("/queues/phone"))
        self.shot("queue")
        self.page.goto(self.url("/jobs/" + job_id))
        self.shot("job-scheduled")


def serve_page(test: SynchronousTestCase, body: bytes) -> str:
    """
    Serve C{body} as an HTML page from a thread on a loopback port of its
    own, until the test ends; its URL, under the name C{localhost}.
    """
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    test.addCleanup(httpd.server_close)
    test.addCleanup(httpd.shutdown)
    return f"http://localhost:{httpd.server_address[1]}/"


class CrossSiteTests(SynchronousTestCase):
    """
    Issue 12, item 6, in a real browser: a server with no token at all
    (the loopback default), and a page of another site (another origin,
    served from loopback too, so that Chromium's own guard for local
    networks, which stops a public site's fetches but not its forms,
    leaves the server's rules to be tested) that auto-submits
    an C{enctype=text/plain} form pushing a job and sends body-less POSTs
    that would pause a queue and kill its jobs.  Nothing changes.
    """

    def test_another_sites_page_changes_nothing(self) -> None:
        browser = fixture().browser  # skips without Chromium or Playwright

        server = LiveServer(tokens=False)
        self.addCleanup(server.stop)
        producer = WireClient("127.0.0.1", server.tcp_port)
        self.addCleanup(producer.close)
        producer.hello("producer")
        producer.push(type="t", id="victim")
        target = server.base
        evil = f"""<!doctype html><html><body>
<form id="f" method="POST" action="{target}/api/v1/jobs" enctype="text/plain">
<input name='{{"type":"evil","id":"csrf-job","meta":{{"p":"' value='"}}}}'>
</form>
<script>
const post = (path) => fetch("{target}" + path, {{method: "POST", mode: "no-cors"}});
const submit = () => document.getElementById("f").submit();
post("/api/v1/queues/default/pause")
  .then(() => post("/api/v1/queues/default/kill?state=queued"))
  .then(submit, submit);
</script></body></html>"""
        evil_site = serve_page(self, evil.encode("utf-8"))
        context = browser.new_context()
        try:
            page = context.new_page()
            answers: list[int] = []
            page.on(
                "response",
                lambda r: (
                    answers.append(r.status) if r.url.startswith(target) else None
                ),
            )
            with page.expect_navigation(url=f"{target}/api/v1/jobs"):
                page.goto(evil_site)
            # The form's answer is the page now: refused.
            self.assertIn("cross_origin", page.content())
        finally:
            context.close()
        # The two fetches and the form, each refused as cross-site.
        self.assertEqual(answers, [403, 403, 403])
        with urllib.request.urlopen(target + "/api/v1/queues/default") as r:
            queue = json.loads(r.read())
        self.assertFalse(queue["paused"])
        self.assertEqual(queue["sizes"]["queued"], 1)
        try:
            urllib.request.urlopen(target + "/api/v1/jobs/csrf-job")
        except urllib.error.HTTPError as e:
            self.assertEqual(e.code, 404)
        else:
            self.fail("the cross-site form created a job")
