"""
The Faktory listener (procession/tcp/faktory.py) against the published
Faktory clients themselves: the npm package C{faktory-worker} and the PyPI
packages C{faktory} and C{pyfaktory}.  Each test starts C{twist procession
--faktory} as a child process on the test run's Redis and runs the
clients (scripts in tests/faktory_clients/) against it, then checks what
the server did through its HTTP API, its UI and the native protocol.

The Node.js tests skip when node or npm is missing; the test set-up
installs C{faktory-worker} with npm into tests/faktory_clients/ once.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from procession.tcp.faktory import password_hash
from tests.redis import free_port, namespace, shared_redis
from tests.test_server_process import REPO, Server, _environment

CLIENTS = os.path.join(REPO, "tests", "faktory_clients")
TOKEN = "faktory-test-token"


def node_client() -> str:
    """
    The path of node, with faktory-worker installed beside the scenario
    script (npm install, once); skips the test without node or npm.
    """
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        raise SkipTest(
            "Node.js (node and npm) is not installed: the tests with the npm "
            "Faktory client faktory-worker are skipped"
        )
    installed = os.path.join(CLIENTS, "node_modules", "faktory-worker", "package.json")
    if not os.path.exists(installed):
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent"],
            cwd=CLIENTS,
            capture_output=True,
            timeout=300,
        )
        if done.returncode != 0 or not os.path.exists(installed):
            raise AssertionError(
                "npm install faktory-worker failed:\n"
                + done.stderr.decode("utf-8", "replace")
            )
    return node


class Lines:
    """
    A child process whose stdout is JSON lines, read with deadlines.
    """

    def __init__(self, test: SynchronousTestCase, args: list[str], env: dict[str, str]):
        self.process = subprocess.Popen(
            args,
            cwd=CLIENTS,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.seen: list[Any] = []
        self._buffer = b""
        test.addCleanup(self.kill)

    def next(self, match: Callable[[Any], bool], timeout: float = 30) -> Any:
        """
        The first line (decoded) from now on for which C{match} is true.
        """
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()  # type: ignore[union-attr]
        while True:
            while b"\n" in self._buffer:
                line, _, self._buffer = self._buffer.partition(b"\n")
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                self.seen.append(value)
                if isinstance(value, dict) and "error" in value:
                    raise AssertionError(f"the client failed: {value['error']}")
                if match(value):
                    return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no such line from the client; it said {self.seen!r}; "
                    f"stderr: {self.stderr()}"
                )
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                data = os.read(fd, 65536)
                if not data:
                    if not self._buffer:
                        raise AssertionError(
                            f"the client ended; it said {self.seen!r}; "
                            f"stderr: {self.stderr()}"
                        )
                self._buffer += data

    def stderr(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        return self.process.stderr.read().decode("utf-8", "replace")[-3000:]  # type: ignore[union-attr]

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


class FaktoryServer(Server):
    """
    C{twist procession --faktory} on the test run's Redis, in a namespace
    of its own.
    """

    def __init__(
        self,
        test: SynchronousTestCase,
        *args: str,
        ns: str | None = None,
        tls: tuple[str, str] | None = None,
    ):
        self.faktory_port = free_port()
        self.namespace = ns or namespace()
        self.tls = tls
        listener = f"tcp:{self.faktory_port}:interface=127.0.0.1"
        if tls is not None:
            listener = (
                f"ssl:{self.faktory_port}:privateKey={tls[0]}:certKey={tls[1]}"
                ":interface=127.0.0.1"
            )
        super().__init__(
            test,
            os.path.abspath(test.mktemp()),
            "--faktory", listener,
            "--redis", shared_redis().url,
            "--namespace", self.namespace,
            "--faktory-worker-timeout", "2",
            "--server-timeout", "1",
            "--sweep-interval", "0.2",
            *args,
        )  # fmt: skip
        self.token = args[args.index("--token") + 1] if "--token" in args else None

    def serving(self, timeout: float = 20) -> "FaktoryServer":
        """
        Start and wait until the Faktory listener says HI too.
        """
        super().serving(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(
                    ("127.0.0.1", self.faktory_port), 2
                ) as plain:
                    s = plain
                    if self.tls is not None:
                        context = ssl.create_default_context(cafile=self.tls[1])
                        s = context.wrap_socket(plain, server_hostname="localhost")
                    if s.makefile("rb").readline().startswith(b"+HI "):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.test.fail(f"no Faktory listener:\n{self.output()}")
            time.sleep(0.05)

    def url(self, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        scheme = "tcp+tls" if self.tls is not None else "tcp"
        return f"{scheme}://{auth}127.0.0.1:{self.faktory_port}"

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """
        One HTTP API request: (status, decoded JSON or None).
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                content = response.read()
                status = response.status
        except urllib.error.HTTPError as e:
            content = e.read()
            status = e.code
        return status, (json.loads(content) if content else None)

    def job(self, jid: str) -> dict[str, Any]:
        status, body = self.api("GET", f"/api/v1/jobs/{urllib.parse.quote(jid)}")
        self.test.assertEqual(status, 200, body)
        return body

    def job_becomes(
        self, jid: str, check: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict[str, Any]:
        """
        The job, once C{check} holds for it (fails the test after C{timeout}).
        """
        deadline = time.monotonic() + timeout
        while True:
            status, job = self.api("GET", f"/api/v1/jobs/{urllib.parse.quote(jid)}")
            if status == 200 and check(job):
                return job
            if time.monotonic() > deadline:
                self.test.fail(f"job {jid} never got there: {job!r}")
            time.sleep(0.05)

    def environment(self, **more: str) -> dict[str, str]:
        env = _environment()
        env["FAKTORY_URL"] = self.url(more.pop("password", None))
        if self.tls is not None:
            env["FAKTORY_CA"] = self.tls[1]
        env.update(more)
        return env


class FaktoryTestCase(SynchronousTestCase):
    def server(self, *args: str) -> FaktoryServer:
        return FaktoryServer(self, *args).serving()

    def node(self, server: FaktoryServer, scenario: str, **env: str) -> Lines:
        node = node_client()
        return Lines(
            self,
            [node, os.path.join(CLIENTS, "node_scenario.js"), scenario],
            server.environment(**env),
        )

    def python_client(self, server: FaktoryServer, script: str, **env: str) -> Lines:
        return Lines(
            self,
            [sys.executable, os.path.join(CLIENTS, script)],
            server.environment(**env),
        )


class NodeClientTests(FaktoryTestCase):
    """
    The npm client faktory-worker, unchanged but for its URL.
    """

    def test_push_work_fail_info_mutate(self) -> None:
        """
        PUSH, PUSHB, FETCH, ACK, FAIL, BEAT, INFO and MUTATE from the
        Node.js client: the jobs run, the failure is recorded with the
        job, INFO has Faktory's shape, MUTATE kills the retrying job.
        """
        server = self.server()
        client = self.node(server, "basic")
        result = client.next(lambda v: "ran" in v)
        self.assertEqual(result["ran"], [3, 7, 11])
        self.assertEqual(result["rejected"], {})
        info = result["info"]
        self.assertEqual(sorted(info), ["faktory", "now", "server", "server_utc_time"])
        self.assertEqual(info["faktory"]["total_processed"], 3)
        self.assertEqual(info["faktory"]["sets"]["retries"], 1)
        self.assertEqual(info["faktory"]["queues"], {"default": 0})
        self.assertEqual(info["server"]["description"], "procession")

        one = server.job(result["jids"]["one"])
        self.assertEqual(one["state"], "completed")
        self.assertEqual(one["type"], "add")
        self.assertEqual(one["args"], [1, 2])
        self.assertEqual(one["meta"]["tenant"], "acme")
        self.assertEqual(one["max_attempts"], 26)
        for jid in result["jids"]["bulk"]:
            self.assertEqual(server.job(jid)["state"], "completed")

        client.next(lambda v: "killed" in v)
        self.assertEqual(client.wait(), 0)
        failing = server.job(result["jids"]["failing"])
        self.assertEqual(failing["state"], "dead")
        self.assertEqual(failing["max_attempts"], 4)
        self.assertEqual(failing["errors"][0]["message"], "it blew up")
        # faktory-worker sends errtype `${e.code}`: "undefined" for an Error.
        self.assertEqual(failing["errors"][0]["type"], "undefined")

    def test_password(self) -> None:
        """
        The Node.js client hashes the worker token Faktory's way (the
        server's rounds and salt) and gets in with it, and not without.
        """
        server = self.server("--token", TOKEN)
        out = self.node(server, "hello", password=TOKEN).next(lambda v: "pushed" in v)
        self.assertEqual(server.job(out["pushed"])["type"], "hello")
        refused = self.node(server, "hello", password="not-the-token")
        self.assertNotEqual(refused.wait(), 0)
        self.assertIn("Invalid password", refused.process.stdout.read().decode())

    def test_native_push_to_faktory_worker(self) -> None:
        """
        A job pushed over the native protocol is fetched by a Faktory
        worker, in Faktory's shape, and its ACK completes it.
        """
        server = self.server()
        native = server.client("producer")
        pushed = native.ok(
            "PUSH",
            {
                "type": "native",
                "queue": "cross",
                "args": [1, "two", {"three": 3}],
                "meta": {"trace": "abc"},
                "max_attempts": 3,
                "timeout": 60,
                "priority": 7,
            },
        )
        worker = self.node(server, "work", QUEUE="cross", WID="node-cross")
        got = worker.next(lambda v: "job" in v)["job"]
        self.assertEqual(got["jid"], pushed["id"])
        self.assertEqual(got["jobtype"], "native")
        self.assertEqual(got["queue"], "cross")
        self.assertEqual(got["args"], [1, "two", {"three": 3}])
        self.assertEqual(got["custom"], {"trace": "abc"})
        self.assertEqual(got["retry"], 2)
        self.assertEqual(got["reserve_for"], 60)
        self.assertEqual(got["priority"], 7)
        worker.next(lambda v: "done" in v)
        server.job_becomes(pushed["id"], lambda j: j["state"] == "completed")

    def test_killed_worker_gives_jobs_back(self) -> None:
        """
        A Faktory worker killed mid-job: with no connection and no BEAT
        for the worker timeout (2 s here, not the job's 30 minute
        reservation), its job goes back to its queue, and a native worker
        takes it.
        """
        server = self.server()
        import faktory

        jid = uuid.uuid4().hex
        with faktory.connection(server.url()) as producer:
            producer.queue("hold", args=[1], queue="default", jid=jid)
        worker = self.node(server, "hold", WID="node-doomed")
        worker.next(lambda v: "holding" in v)
        running = server.job_becomes(jid, lambda j: j["state"] == "running")
        self.assertEqual(running["worker"], "node-doomed")
        self.assertEqual(running["timeout"], 1800)
        worker.process.kill()
        back = server.job_becomes(jid, lambda j: j["state"] == "queued")
        self.assertEqual(back["errors"][0]["type"], "WorkerLost")
        self.assertIn("node-doomed", back["errors"][0]["message"])
        native = server.client("native")
        native.ready(["default"])
        job = native.next_job()
        self.assertEqual(job["id"], jid)
        self.assertEqual(job["attempt"], 2)
        native.ok("ACK", {"id": jid})
        server.job_becomes(jid, lambda j: j["state"] == "completed")

    def test_quiet_from_the_api_reaches_the_worker(self) -> None:
        """
        An operator's quiet (HTTP API) is answered to the worker's next
        BEAT, and the worker quiets; the workers listing shows it.
        """
        server = self.server()
        worker = self.node(server, "quiet", WID="node-quiet")
        worker.next(lambda v: "started" in v)
        status, body = server.api("GET", "/api/v1/workers")
        self.assertEqual(status, 200)
        mine = [w for w in body["workers"] if w["name"] == "node-quiet"]
        self.assertEqual(len(mine), 1)
        self.assertEqual(mine[0]["kind"], "faktory")
        self.assertFalse(mine[0]["quiet"])
        status, body = server.api("POST", "/api/v1/workers/node-quiet/quiet")
        self.assertEqual((status, body), (200, {"quieted": ["node-quiet"]}))
        worker.next(lambda v: "quieted" in v)
        self.assertEqual(worker.wait(), 0)

    def test_shutdown_terminates_workers(self) -> None:
        """
        A server shutdown answers the workers' BEAT with terminate, and
        they stop.
        """
        # A grace long enough for a loaded machine: the drain ends as soon
        # as every worker was told, so it costs nothing when all goes well.
        server = self.server("--shutdown-grace", "10")
        worker = self.node(server, "terminate", WID="node-term")
        worker.next(lambda v: "started" in v)
        assert server.process is not None
        server.process.terminate()
        worker.next(lambda v: "terminated" in v)
        self.assertEqual(server.process.wait(20), 0)


class UITests(FaktoryTestCase):
    """
    Faktory workers and their jobs in the operator UI.
    """

    def browser(self, server: FaktoryServer) -> Any:
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        base = f"http://127.0.0.1:{server.http_port}"

        def get(path: str) -> str:
            with opener.open(base + path, timeout=10) as response:
                return response.read().decode("utf-8")

        def post(path: str, form: dict[str, str], page_path: str) -> str:
            page = get(page_path)
            csrf = re.search(r'name="csrf" value="([^"]*)"', page)
            assert csrf is not None, page
            data = urllib.parse.urlencode({**form, "csrf": csrf.group(1)}).encode()
            with opener.open(base + path, data=data, timeout=10) as response:
                return response.read().decode("utf-8")

        return get, post

    def test_running_page_quiet_and_retry(self) -> None:
        """
        A Faktory worker's job shows on the running page; the worker
        quiets from the workers page; a dead Faktory job retries from
        its page and a Faktory worker runs it.
        """
        server = self.server()
        get, post = self.browser(server)
        import faktory

        held = uuid.uuid4().hex
        with faktory.connection(server.url()) as producer:
            producer.queue("hold", args=[], queue="default", jid=held)
        worker = self.node(server, "hold", WID="node-ui")
        worker.next(lambda v: "holding" in v)
        server.job_becomes(held, lambda j: j["state"] == "running")
        self.assertIn(held, get("/running"))
        self.assertIn("node-ui", get("/workers"))
        post("/workers/node-ui/quiet", {}, "/workers")
        status, body = server.api("GET", "/api/v1/workers")
        mine = [w for w in body["workers"] if w["name"] == "node-ui"]
        self.assertTrue(mine[0]["quiet"])
        self.assertEqual(mine[0]["jobs"], [{"id": held, "queue": "default"}])
        worker.kill()

        # retry -1: straight to dead on its first failure.
        dead = uuid.uuid4().hex
        with faktory.connection(server.url()) as producer:
            producer.queue("explode", args=["z"], queue="ui", jid=dead, retry=-1)
        failer = self.python_client(server, "pypi_faktory.py", QUEUES="ui")
        server.job_becomes(dead, lambda j: j["state"] == "dead")
        failer.kill()
        self.assertIn(dead, get("/dead"))
        post(f"/jobs/{dead}", {"action": "retry"}, f"/jobs/{dead}")
        again = server.job_becomes(dead, lambda j: j["state"] == "queued")
        self.assertEqual(again["errors"][0]["type"], "ValueError")
        runner = self.node(server, "work", QUEUE="ui", WID="node-ui-2")
        got = runner.next(lambda v: "job" in v)["job"]
        self.assertEqual(got["jid"], dead)
        self.assertEqual(got["retry"], -1)
        self.assertEqual(got["failure"]["errtype"], "ValueError")
        self.assertEqual(got["failure"]["message"], "it blew up on z")


class PythonClientTests(FaktoryTestCase):
    """
    The PyPI clients faktory and pyfaktory, unchanged but for their URL.
    """

    def _push_work_fail(self, script: str, server: FaktoryServer, total: int) -> None:
        client = self.python_client(server, script)
        ids = client.next(lambda v: "good" in v)
        client.next(lambda v: v.get("ran") == total)
        good = server.job_becomes(ids["good"], lambda j: j["state"] == "completed")
        self.assertEqual(good["type"], "add")
        bad = server.job_becomes(ids["bad"], lambda j: j["state"] == "retrying")
        self.assertEqual(bad["errors"][0]["type"], "ValueError")
        self.assertIn("it blew up on", bad["errors"][0]["message"])

    def test_faktory(self) -> None:
        """
        PyPI faktory: push, a worker runs a job, a failure is retried.
        """
        self._push_work_fail("pypi_faktory.py", self.server(), 42)

    def test_pyfaktory(self) -> None:
        """
        PyPI pyfaktory: push, a consumer runs a job, a failure is retried.
        """
        self._push_work_fail("pypi_pyfaktory.py", self.server(), 42)

    def test_retry_zero_discards(self) -> None:
        """
        A job pushed with retry 0 is deleted when it fails (Faktory's
        ephemeral jobs); a native job with one attempt, failed by a Faktory
        worker, goes to dead as natively; retry -1 goes to dead.
        """
        server = self.server()
        import faktory

        ephemeral = uuid.uuid4().hex
        morgue = uuid.uuid4().hex
        with faktory.connection(server.url()) as producer:
            producer.queue(
                "explode", args=["e"], queue="default", jid=ephemeral, retry=0
            )
            producer.queue("explode", args=["m"], queue="default", jid=morgue, retry=-1)
        native = server.client("producer").ok(
            "PUSH", {"type": "explode", "args": ["n"], "max_attempts": 1}
        )
        worker = self.python_client(server, "pypi_faktory.py")
        server.job_becomes(native["id"], lambda j: j["state"] == "dead")
        server.job_becomes(morgue, lambda j: j["state"] == "dead")
        deadline = time.monotonic() + 20
        while server.api("GET", f"/api/v1/jobs/{ephemeral}")[0] != 404:
            self.assertLess(time.monotonic(), deadline, server.job(ephemeral))
            time.sleep(0.05)
        worker.kill()

    def test_password_is_the_worker_token(self) -> None:
        """
        With a worker token, clients give it as their password: pyfaktory
        hashes it Faktory's way (the server's iterations), PyPI faktory
        sends no protocol version and hashes once, and both get in; a
        wrong hash is answered -ERR Invalid password and closed.
        """
        server = self.server("--token", TOKEN)
        self._push_work_fail_password(server)
        with socket.create_connection(("127.0.0.1", server.faktory_port), 5) as s:
            hi = s.makefile("rb").readline()
            self.assertTrue(hi.startswith(b'+HI {"v":2,"i":'), hi)
            greeting = json.loads(hi[4:])
            right = password_hash(TOKEN, greeting["s"], greeting["i"])
            wrong = password_hash("not-it", greeting["s"], greeting["i"])
            self.assertNotEqual(right, wrong)
            s.sendall(b'HELLO {"v":2,"pwdhash":"' + wrong.encode() + b'"}\r\n')
            reader = s.makefile("rb")
            self.assertEqual(reader.readline(), b"-ERR Invalid password\r\n")
            self.assertEqual(reader.read(), b"")

    def _push_work_fail_password(self, server: FaktoryServer) -> None:
        for script in ("pypi_pyfaktory.py", "pypi_faktory.py"):
            client = self.python_client(server, script, password=TOKEN)
            ids = client.next(lambda v: "good" in v)
            server.job_becomes(ids["good"], lambda j: j["state"] == "completed")
            client.kill()
        with self.assertRaises(Exception):
            import faktory

            with faktory.connection(server.url("wrong")) as producer:
                producer.queue("add", args=[1, 1])

    def test_faktory_push_to_native_and_http_workers(self) -> None:
        """
        Jobs pushed by a Faktory client are taken by a native TCP worker
        and by an HTTP long-poll worker, with every field mapped.
        """
        server = self.server()
        import faktory

        tcp_jid = uuid.uuid4().hex
        http_jid = uuid.uuid4().hex
        with faktory.connection(server.url()) as producer:
            producer.queue(
                "tcp.job",
                args=[1, {"a": [2]}],
                queue="native",
                jid=tcp_jid,
                retry=4,
                reserve_for=120,
                custom={"who": "go"},
            )
            producer.queue("http.job", args=["h"], queue="viahttp", jid=http_jid)
        native = server.client("native")
        native.ready(["native"])
        job = native.next_job()
        self.assertEqual(job["id"], tcp_jid)
        self.assertEqual(job["type"], "tcp.job")
        self.assertEqual(job["args"], [1, {"a": [2]}])
        self.assertEqual(job["max_attempts"], 5)
        self.assertEqual(job["timeout"], 120)
        self.assertEqual(job["meta"], {"who": "go"})
        native.ok("ACK", {"id": tcp_jid})
        server.job_becomes(tcp_jid, lambda j: j["state"] == "completed")

        status, taken = server.api("GET", "/api/v1/jobs/next?queues=viahttp&wait=5")
        self.assertEqual(status, 200, taken)
        self.assertEqual(taken["id"], http_jid)
        self.assertEqual(taken["timeout"], 1800)
        # The PyPI client's default is retry 5: 6 attempts.
        self.assertEqual(taken["max_attempts"], 6)
        status, _ = server.api(
            "POST", f"/api/v1/jobs/{http_jid}/ack", {"lease": taken["lease"]}
        )
        self.assertEqual(status, 200)
        server.job_becomes(http_jid, lambda j: j["state"] == "completed")


class ManagementTests(FaktoryTestCase):
    """
    PUSHB's rejections, MUTATE, FLUSH and QUEUE from the published clients.
    """

    def test_pushb_mutate_and_flush_refused(self) -> None:
        """
        PUSHB answers the map of rejected jids (a duplicate, a short jid)
        and takes the rest; MUTATE requeues one scheduled job and discards
        the others of a type; FLUSH is refused without
        --faktory-allow-flush.
        """
        server = self.server()
        out = self.node(server, "manage").next(lambda v: "rejected" in v)
        jids = out["jids"]
        # faktory-worker turns the map into {jid: {reason, payload}}.
        reasons = {jid: r["reason"] for jid, r in out["rejected"].items()}
        self.assertEqual(
            reasons,
            {
                jids["first"]: "NOTUNIQUE Job not unique",
                "short": "jobs must have a reasonable jid parameter",
            },
        )
        self.assertEqual(server.job(jids["fresh"])["state"], "queued")
        self.assertEqual(server.job(jids["first"])["args"], [1])
        self.assertEqual(server.job(jids["later"])["state"], "queued")
        status, _ = server.api("GET", f"/api/v1/jobs/{jids['gone']}")
        self.assertEqual(status, 404)
        self.assertIn("--faktory-allow-flush", out["flush"])
        self.assertEqual(server.job(jids["first"])["state"], "queued")

    def test_flush_allowed(self) -> None:
        """
        With --faktory-allow-flush, FLUSH wipes the waiting jobs.
        """
        server = self.server("--faktory-allow-flush")
        out = self.node(server, "manage").next(lambda v: "rejected" in v)
        self.assertEqual(out["flush"], "OK")
        for name in ("first", "fresh", "later"):
            status, _ = server.api("GET", f"/api/v1/jobs/{out['jids'][name]}")
            self.assertEqual(status, 404, name)

    def test_queue_pause_resume_remove(self) -> None:
        """
        QUEUE PAUSE, RESUME and REMOVE from pyfaktory reach the queues
        (as the HTTP API shows them).
        """
        server = self.server()
        import faktory

        with faktory.connection(server.url()) as producer:
            for n in range(3):
                producer.queue("q", args=[n], queue="held-up")

        def queue() -> dict[str, Any]:
            status, body = server.api("GET", "/api/v1/queues/held-up")
            self.assertEqual(status, 200, body)
            return body

        def run(command: str) -> None:
            done = Lines(
                self,
                [
                    sys.executable,
                    os.path.join(CLIENTS, "pypi_pyfaktory_queues.py"),
                    command,
                    "held-up",
                ],
                server.environment(),
            )
            done.next(lambda v: v.get("done") == command)

        self.assertFalse(queue()["paused"])
        run("pause")
        self.assertTrue(queue()["paused"])
        run("resume")
        self.assertFalse(queue()["paused"])
        self.assertEqual(queue()["sizes"]["queued"], 3)
        run("remove")
        self.assertEqual(queue()["sizes"]["queued"], 0)


class RawSession:
    """
    A Faktory connection spoken by hand, for what no client can do: fetch
    through one server and acknowledge through another.
    """

    def __init__(self, port: int, hello: dict[str, Any]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 10)
        self.reader = self.sock.makefile("rb")
        assert self.reader.readline().startswith(b"+HI ")
        self.request("HELLO " + json.dumps(hello))

    def request(self, line: str) -> Any:
        self.sock.sendall(line.encode() + b"\r\n")
        reply = self.reader.readline()
        if reply.startswith(b"$"):
            size = int(reply[1:])
            if size < 0:
                return None
            body = self.reader.read(size + 2)
            return json.loads(body[:-2])
        return reply.rstrip(b"\r\n").decode()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class ClusterTests(FaktoryTestCase):
    """
    Faktory workers across several servers on one Redis.
    """

    def test_fetch_on_one_server_ack_on_another(self) -> None:
        """
        A job fetched through one server is acknowledged through another
        (the worker's pool may hold connections to both).
        """
        first = self.server()
        second = FaktoryServer(self, ns=first.namespace).serving()
        import faktory

        jid = uuid.uuid4().hex
        with faktory.connection(first.url()) as producer:
            producer.queue("split", args=[1], queue="default", jid=jid)
        fetcher = RawSession(first.faktory_port, {"wid": "split-worker", "v": 2})
        self.addCleanup(fetcher.close)
        job = fetcher.request("FETCH default")
        self.assertEqual(job["jid"], jid)
        _, body = first.api("GET", "/api/v1/workers")
        held = [w["jobs"] for w in body["workers"] if w["name"] == "split-worker"]
        self.assertEqual(held, [[{"id": jid, "queue": "default"}]])
        acker = RawSession(second.faktory_port, {"wid": "split-worker", "v": 2})
        self.addCleanup(acker.close)
        self.assertEqual(acker.request("ACK " + json.dumps({"jid": jid})), "+OK")
        second.job_becomes(jid, lambda j: j["state"] == "completed")
        # The first server learns that the job left the worker's hands.
        deadline = time.monotonic() + 20
        while True:
            _, body = first.api("GET", "/api/v1/workers")
            mine = [w for w in body["workers"] if w["name"] == "split-worker"]
            if mine and all(w["jobs"] == [] for w in mine):
                break
            self.assertLess(time.monotonic(), deadline, f"still listed: {mine}")
            time.sleep(0.2)

    def test_another_server_gives_back_a_lost_workers_jobs(self) -> None:
        """
        A worker killed mid-job together with the server it fetched
        through: another server on the same Redis gives its job back after
        the worker timeout.
        """
        first = self.server()
        second = FaktoryServer(self, ns=first.namespace).serving()
        import faktory

        jid = uuid.uuid4().hex
        with faktory.connection(first.url()) as producer:
            producer.queue("hold", args=[], queue="default", jid=jid)
        worker = self.node(first, "hold", WID="node-lost-both")
        worker.next(lambda v: "holding" in v)
        first.job_becomes(jid, lambda j: j["state"] == "running")
        worker.process.kill()
        first.kill()
        back = second.job_becomes(jid, lambda j: j["state"] == "queued", timeout=30)
        self.assertEqual(back["errors"][0]["type"], "WorkerLost")

    def test_processes_share_the_faktory_listener(self) -> None:
        """
        With --processes 2 both processes accept Faktory connections on
        the one port; the Node.js client's pool spreads over them, and its
        jobs run and fail as with one process (a job fetched through one
        process may be acknowledged through the other).
        """
        server = self.server("--processes", "2")
        for _ in range(2):
            client = self.node(server, "basic")
            result = client.next(lambda v: "ran" in v)
            self.assertEqual(result["ran"], [3, 7, 11])
            client.next(lambda v: "killed" in v)
            self.assertEqual(client.wait(), 0)
            failing = server.job(result["jids"]["failing"])
            self.assertEqual(failing["state"], "dead")
        output = server.output()
        self.assertEqual(output.count("Serving Faktory clients on"), 2, output)


class TLSTests(FaktoryTestCase):
    """
    A Faktory listener behind TLS (--faktory ssl:...), as the clients'
    tcp+tls:// URLs (or TLS options) reach it.
    """

    def test_clients_over_tls(self) -> None:
        """
        pyfaktory (tcp+tls://) and the Node.js client (its TLS options)
        push and work through a TLS listener.
        """
        from tests.test_fault_security import make_certificate

        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        server = FaktoryServer(self, tls=make_certificate(folder)).serving()
        client = self.python_client(server, "pypi_pyfaktory.py")
        ids = client.next(lambda v: "good" in v)
        server.job_becomes(ids["good"], lambda j: j["state"] == "completed")
        client.kill()
        out = self.node(server, "hello").next(lambda v: "pushed" in v)
        self.assertEqual(server.job(out["pushed"])["state"], "queued")


class CrossServerQuietTests(FaktoryTestCase):
    def test_quiet_reaches_a_beat_through_another_server(self) -> None:
        """
        A worker process connected to two servers (or processes) is quieted
        through one; its BEAT through the other is answered quiet.
        """
        first = self.server()
        second = FaktoryServer(self, ns=first.namespace).serving()
        here = RawSession(first.faktory_port, {"wid": "two-homed", "v": 2})
        self.addCleanup(here.close)
        there = RawSession(second.faktory_port, {"wid": "two-homed", "v": 2})
        self.addCleanup(there.close)
        beat = "BEAT " + json.dumps({"wid": "two-homed"})
        self.assertEqual(there.request(beat), "+OK")
        status, body = first.api("POST", "/api/v1/workers/two-homed/quiet")
        self.assertEqual((status, body), (200, {"quieted": ["two-homed"]}))
        self.assertEqual(there.request(beat), {"state": "quiet"})
        self.assertEqual(here.request(beat), {"state": "quiet"})
