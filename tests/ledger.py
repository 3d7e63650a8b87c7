"""
The ledger harness of the fault tests: real processes on loopback, and a
record, kept by the test, of what the system promised and what it did.

- L{Procession} runs C{twist procession} as a child process (restartable on
  the same ports and data directory), with the embedded Redis or an
  external one.
- L{WorkerPool} runs C{python -m procession.client.worker tests.ledger_jobs}
  processes; each finished run appends C{<job id> <attempt> <pid>} to the
  ledger file (L{Ledger}).
- L{Producer} pushes jobs with ids it chose, in a thread, and notes the
  moment each push was acknowledged (its C{OK} arrived).
- L{audit} checks the end state against the ledger: every acknowledged push
  completed (its state in Redis), no attempt ran twice, a job ran again only
  after an interrupted attempt (whose reason the server recorded), and the
  server's counters (C{GET /api/v1/queues/<queue>}) agree.  It returns the
  figures that docs/reliability.rst reports; with C{PROCESSION_FAULT_FIGURES}
  set to a path, each test appends them there as one JSON line.

Everything blocks: the server is another process.  Every wait has a
deadline, and every process started here is killed in the test's cleanup.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from attrs import define, field
from twisted.trial.unittest import SkipTest

from procession.client import Client, ProcessionError
from procession.redis.embedded import LOCK_FILE, SOCKET_FILE
from tests.redis import RedisProcess, free_port
from tests.resp import encode_all, read_reply
from tests.waiting import wait_for
from tests.wire import WireClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `python -m twisted` is `twist`.
TWIST = [sys.executable, "-m", "twisted", "--log-format=text"]

#: Run the long tests (load held for a minute, the bigger fault runs):
#: .ci/run sets PROCESSION_LONG_TESTS=1.
LONG = os.environ.get("PROCESSION_LONG_TESTS") == "1"


def long_test() -> None:
    """
    Skip the calling test unless the long tests are on.
    """
    if not LONG:
        raise SkipTest("a long test: set PROCESSION_LONG_TESTS=1 to run it")


def environment(**extra: str) -> dict[str, str]:
    """
    A child's environment: no procession settings, and this checkout first
    on the path, so that children run the code under test.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSION_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p
    )
    env.update(extra)
    return env


def tail(path: str, lines: int = 60) -> str:
    """
    The end of a log file.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def alive(pid: int) -> bool:
    """
    Whether C{pid} is a live (not zombie) process.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def rss_kib(pid: int) -> int:
    """
    A process's resident set size, in KiB (VmRSS of /proc/<pid>/status).
    """
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    """
    How many file descriptors a process has open.
    """
    return len(os.listdir(f"/proc/{pid}/fd"))


class Resp:
    """
    A minimal blocking RESP client, to read what the server stored.

    @param address: C{(host, port)} or the path of a unix socket.
    """

    def __init__(self, address: tuple[str, int] | str, timeout: float = 10.0) -> None:
        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        else:
            self.sock = socket.create_connection(address, timeout=timeout)
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """
        Send the commands at once; their replies (errors as L{RuntimeError}
        values, not raised).
        """
        self.sock.sendall(encode_all(commands))
        return [read_reply(self.file, errors_as_values=True) for _ in commands]

    def __call__(self, *command: Any) -> Any:
        [reply] = self.pipeline([command])
        if isinstance(reply, RuntimeError):
            raise reply
        return reply


class Procession:
    """
    One C{twist procession} child process on loopback ports chosen once, so
    that it can be killed and started again where its clients expect it.

    @param redis: an external Redis (a L{RedisProcess}) or L{None} for the
        embedded one, which keeps its data in C{data_dir}.
    @param tcp: the TCP listener's description; C{{port}} is replaced by
        the port chosen.
    @param http: the same for the HTTP listener.
    @param tls: the client side of a TLS listener (C{ssl:} in C{tcp} and
        C{http}).
    @param test: the test that owns it, or L{None} for a process shared by
        many tests (whose owner calls L{cleanup}).
    @param preexec: run in the child before it starts the server (to
        lower its resource limits, say).
    """

    def __init__(
        self,
        test: Any,
        *args: str,
        redis: RedisProcess | None = None,
        namespace: str = "procession",
        tcp: str = "tcp:{port}:interface=127.0.0.1",
        http: str = "{port}",
        sweep_interval: float = 0.2,
        tls: ssl.SSLContext | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.test = test
        self.preexec = preexec
        self.redis = redis
        self.namespace = namespace
        self.tls = tls
        self.port = free_port()
        self.http_port = free_port()
        # short, so that the embedded Redis's socket fits in sun_path
        self.dir = tempfile.mkdtemp(prefix="pf-")
        self.data_dir = os.path.join(self.dir, "data")
        if test is None:
            self.log_path = os.path.join(self.dir, "server.log")
        else:
            self.log_path = os.path.abspath(test.mktemp() + "-server.log")
        self.args = [
            "--tcp", tcp.format(port=self.port),
            "--http", http.format(port=self.http_port),
            "--sweep-interval", str(sweep_interval),
            "--namespace", namespace,
            *args,
        ]  # fmt: skip
        if redis is None:
            self.args += ["--data-dir", self.data_dir]
        else:
            self.args += ["--redis", redis.url]
        self.process: subprocess.Popen[bytes] | None = None
        self.redis_pid: int | None = None
        self.starts = 0
        if test is not None:
            test.addCleanup(self.cleanup)

    # -- life cycle

    def start(self) -> Procession:
        """
        Start the process (without waiting for it to serve).
        """
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"---- start {self.starts}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [*TWIST, "procession", *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=environment(),
                preexec_fn=self.preexec,
            )
        return self

    def serving(self, timeout: float = 30) -> Procession:
        """
        Start (unless running) and wait until the TCP listener says HI.
        """
        if self.process is None or self.process.poll() is not None:
            self.start()
        wait_for(
            self._says_hi,
            timeout,
            lambda: "the server did not start:\n" + self.output(),
        )
        if self.redis is None:
            self.redis_pid = self._embedded_pid()
        return self

    def _says_hi(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"the server exited with {self.process.returncode}:\n" + self.output()
            )
        try:
            with self.connect(timeout=1) as s:
                return s.recv(3) == b"HI "
        except OSError:
            return False

    def connect(self, timeout: float = 5) -> socket.socket:
        """
        A socket to the TCP listener (with TLS if it has).
        """
        sock = socket.create_connection(("127.0.0.1", self.port), timeout)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname="127.0.0.1")
        return sock

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30) -> int | None:
        """
        Send a signal to the server (only it) and wait for it to end; its
        exit status.
        """
        if not self.running():
            return None
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the server outlived {sig!r}:\n{self.output()}"
            ) from None

    def _embedded_pid(self) -> int | None:
        try:
            with open(os.path.join(self.data_dir, LOCK_FILE), encoding="ascii") as f:
                owner = f.read()
        except OSError:
            return None
        _, _, pid = owner.partition("redis-server pid ")
        return int(pid.strip()) if pid.strip().isdigit() else None

    def embedded_is_ours(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return self.data_dir.encode() in f.read()
        except OSError:
            return False

    def cleanup(self) -> None:
        """
        Kill the server and an embedded redis-server it left behind; remove
        its files.
        """
        if self.running():
            self.kill()
        pid = self._embedded_pid() or self.redis_pid
        if pid is not None and alive(pid) and self.embedded_is_ours(pid):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def output(self, lines: int = 200) -> str:
        return tail(self.log_path, lines)

    def full_log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    # -- looking inside

    def store(self) -> Resp:
        """
        A RESP connection to the Redis the server uses, closed when the test
        ends.
        """
        if self.redis is None:
            resp = Resp(os.path.join(self.data_dir, SOCKET_FILE))
        else:
            resp = Resp(("127.0.0.1", self.redis.port))
        if self.test is not None:
            self.test.addCleanup(resp.close)
        return resp

    def key(self, queue: str, suffix: str) -> str:
        return f"{self.namespace}:{{{queue}}}:{suffix}"

    def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        timeout: float = 10,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """
        One HTTP request: (status, decoded JSON body or the raw bytes).
        """
        connection: http.client.HTTPConnection
        if self.tls is None:
            connection = http.client.HTTPConnection(
                "127.0.0.1", self.http_port, timeout=timeout
            )
        else:
            connection = http.client.HTTPSConnection(
                "127.0.0.1", self.http_port, timeout=timeout, context=self.tls
            )
        try:
            sent = dict(headers or {})
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                sent["Content-Type"] = "application/json"
            if token is not None:
                sent["Authorization"] = f"Bearer {token}"
            connection.request(method, path, data, sent)
            response = connection.getresponse()
            content = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(content)
        except ValueError:
            return response.status, content

    def queue_summary(self, queue: str = "default") -> dict[str, Any]:
        status, body = self.http("GET", f"/api/v1/queues/{queue}")
        if status != 200:
            raise AssertionError(f"GET /api/v1/queues/{queue}: {status} {body!r}")
        return body


class Canary(threading.Thread):
    """
    A well-behaved worker on its own connection: pushes a job to a queue of
    its own, takes it, acks it, again and again.
    """

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.queue = "canary-" + uuid.uuid4().hex[:8]
        self.rounds = 0
        self.slowest = 0.0
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            client = WireClient("127.0.0.1", self.port, timeout=10)
            client.hello("canary")
            client.ready([self.queue], credit=1)
            while not self.stopping.is_set():
                started = time.monotonic()
                pushed = client.push(queue=self.queue, args=[self.rounds])["id"]
                job = client.next_job(10)
                assert job["id"] == pushed, job
                assert client.ok("ACK", {"id": pushed}) == {"id": pushed}
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.rounds += 1
                time.sleep(0.01)
            client.close()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def stop(self) -> None:
        self.stopping.set()
        self.join(15)


class Ledger:
    """
    The file the workers' runs are recorded in, one C{<id> <attempt> <pid>}
    line per finished run.
    """

    def __init__(self, test: Any) -> None:
        self.path = os.path.abspath(test.mktemp() + "-ledger.txt")
        open(self.path, "wb").close()

    def runs(self) -> list[tuple[str, int, int]]:
        with open(self.path, encoding="ascii") as f:
            lines = f.read().splitlines()
        runs = []
        for line in lines:
            job_id, attempt, pid = line.split()
            runs.append((job_id, int(attempt), int(pid)))
        return runs

    def count(self) -> int:
        with open(self.path, "rb") as f:
            return f.read().count(b"\n")


class WorkerPool:
    """
    Worker runner processes (C{python -m procession.client.worker
    tests.ledger_jobs}) recording their runs in a L{Ledger}.  They reconnect
    by themselves, also after the server's C{QUIET}.
    """

    def __init__(
        self,
        test: Any,
        server: Procession,
        ledger: Ledger,
        count: int = 4,
        concurrency: int = 4,
        queues: str = "default",
    ) -> None:
        self.test = test
        self.server = server
        self.ledger = ledger
        self.concurrency = concurrency
        self.queues = queues
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, str] = {}
        self.killed: list[int] = []
        test.addCleanup(self.stop)
        for _ in range(count):
            self.add()

    def add(self) -> subprocess.Popen[bytes]:
        """
        Start one more worker.
        """
        log_path = os.path.abspath(self.test.mktemp() + "-worker.log")
        command = [
            sys.executable, "-m", "procession.client.worker", "tests.ledger_jobs",
            "--port", str(self.server.port),
            "--queues", self.queues,
            "--concurrency", str(self.concurrency),
            "--max-backoff", "0.3",
            "--on-quiet", "reconnect",
            "--log-level", "DEBUG",
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=environment(PROCESSION_LEDGER=self.ledger.path),
            )
        self.processes.append(process)
        self.logs[process.pid] = log_path
        return process

    def live(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.processes if p.poll() is None]

    def kill_one(self, sig: int = signal.SIGKILL) -> int:
        """
        Kill the oldest live worker and start another in its place; the
        pid killed.
        """
        victim = self.live()[0]
        victim.send_signal(sig)
        victim.wait(10)
        self.killed.append(victim.pid)
        self.add()
        return victim.pid

    def log(self, pid: int) -> str:
        return tail(self.logs[pid])

    def all_logs(self) -> str:
        return "\n".join(
            f"== worker {pid}\n{tail(path, 20)}" for pid, path in self.logs.items()
        )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                pass


class Producer(threading.Thread):
    """
    Pushes C{count} jobs with ids it sets (C{<prefix>-<n>}), in pipelined
    groups of C{group}, through a L{Client} that resends after network
    errors and C{store_unavailable}; notes when each push was acknowledged.

    @ivar acked: id -> C{time.monotonic()} when its C{OK} was read.
    @ivar refused: (group's first id, error) for groups given up on; their
        jobs may or may not be stored.
    """

    def __init__(
        self,
        port: int,
        count: int,
        prefix: str = "job",
        group: int = 10,
        rate: float | None = None,
        seconds: float = 0.01,
        timeout: float = 2.0,
        retry_for: float = 60.0,
        queue: str | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.ids = [f"{prefix}-{n:06d}" for n in range(count)]
        self.group = group
        self.rate = rate
        self.seconds = seconds
        self.job_timeout = timeout
        self.retry_for = retry_for
        self.queue = queue
        self.acked: dict[str, float] = {}
        self.refused: list[tuple[str, BaseException]] = []
        self.crashed: BaseException | None = None
        self.started_at = 0.0
        self.pause = threading.Event()
        self.pause.set()

    def run(self) -> None:
        self.started_at = time.monotonic()
        client = Client("127.0.0.1", self.port, timeout=3, retry_for=self.retry_for)
        try:
            for start in range(0, len(self.ids), self.group):
                self.pause.wait()
                if self.rate:
                    due = self.started_at + start / self.rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                group = self.ids[start : start + self.group]
                try:
                    with client.pipeline() as p:
                        for job_id in group:
                            p.push(
                                "work",
                                [self.seconds],
                                id=job_id,
                                timeout=self.job_timeout,
                                queue=self.queue,
                            )
                except (ProcessionError, OSError) as e:
                    results = getattr(p, "results", [])
                    now = time.monotonic()
                    for job_id, result in zip(group, results):
                        if not isinstance(result, BaseException):
                            self.acked[job_id] = now
                    self.refused.append((group[0], e))
                    continue
                now = time.monotonic()
                for job_id in group:
                    self.acked[job_id] = now
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.crashed = e
        finally:
            client.close()

    def wait_acked(self, count: int, timeout: float = 60) -> None:
        """
        Wait until at least C{count} pushes were acknowledged.
        """
        wait_for(lambda: len(self.acked) >= count or not self.is_alive(), timeout)

    def finish(self, timeout: float = 120) -> None:
        self.join(timeout)
        if self.is_alive():
            raise AssertionError("the producer is stuck")
        if self.crashed is not None:
            raise AssertionError(f"the producer crashed: {self.crashed!r}")


def read_jobs(
    store: Resp, server: Procession, ids: Sequence[str], queue: str = "default"
) -> dict[str, tuple[str | None, int]]:
    """
    Each job's (state, attempt) as Redis holds it; (None, 0) when absent.
    """
    found: dict[str, tuple[str | None, int]] = {}
    for start in range(0, len(ids), 2000):
        chunk = ids[start : start + 2000]
        replies = store.pipeline(
            [
                ("HMGET", server.key(queue, f"job:{i}"), "state", "attempt")
                for i in chunk
            ]
        )
        for job_id, (state, attempt) in zip(chunk, replies):
            found[job_id] = (state, int(attempt or 0))
    return found


def wait_drained(
    server: Procession,
    store: Resp,
    ids: Sequence[str],
    timeout: float = 90,
    queue: str = "default",
    describe: Callable[[], str] | None = None,
) -> None:
    """
    Wait until every job among C{ids} that exists is finished and nothing
    is queued, running or waiting for a retry.
    """

    def done() -> bool:
        states = Counter(s for s, _ in read_jobs(store, server, ids, queue).values())
        pending = sum(
            n for s, n in states.items() if s not in (None, "completed", "dead")
        )
        return pending == 0

    def why() -> str:
        states = Counter(s for s, _ in read_jobs(store, server, ids, queue).values())
        text = f"job states: {dict(states)}"
        return text + ("\n" + describe() if describe else "")

    wait_for(done, timeout, why, interval=0.2)


@define
class Figures:
    """
    What one fault run measured, for docs/reliability.rst.
    """

    test: str
    fault: str
    pushed: int  # pushes attempted
    acknowledged: int  # their OK arrived
    stored: int  # jobs that exist
    completed: int
    lost: int  # acknowledged, not completed
    runs: int  # ledger lines
    duplicates: int  # runs beyond one per job
    duplicate_reasons: dict[str, int] = field(factory=dict)
    interrupted: int = 0  # attempts that ended without an ack
    seconds: float = 0.0
    extra: dict[str, Any] = field(factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "fault": self.fault,
            "pushed": self.pushed,
            "acknowledged": self.acknowledged,
            "stored": self.stored,
            "completed": self.completed,
            "lost": self.lost,
            "runs": self.runs,
            "duplicates": self.duplicates,
            "duplicate_reasons": self.duplicate_reasons,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 1),
            **self.extra,
        }


def audit(
    test: Any,
    server: Procession,
    producer: Producer,
    ledger: Ledger,
    fault: str,
    queue: str = "default",
    lost_allowed: Iterable[str] = (),
    started: float | None = None,
) -> Figures:
    """
    Check the end state of a run against the ledger and the server's
    counters; the run's figures.

    @param lost_allowed: acknowledged ids that may be missing (a Redis that
        lost its last writes); any other loss fails the test.
    """
    # The client resends after network errors and store_unavailable: every
    # push is acknowledged in the end, none refused.
    test.assertEqual(
        [f"{first}: {error!r}" for first, error in producer.refused],
        [],
        "pushes refused",
    )
    store = server.store()
    ids = producer.ids
    jobs = read_jobs(store, server, ids, queue)
    acked = set(producer.acked)
    stored = {i for i, (s, _) in jobs.items() if s is not None}
    completed = {i for i, (s, _) in jobs.items() if s == "completed"}
    lost = sorted(acked - completed)
    unexpected = [i for i in lost if i not in set(lost_allowed)]
    test.assertEqual(unexpected, [], f"acknowledged pushes lost: {unexpected[:20]}")
    dead = [i for i, (s, _) in jobs.items() if s == "dead"]
    test.assertEqual(dead, [], "jobs died")

    runs = ledger.runs()
    by_job: dict[str, list[tuple[int, int]]] = {}
    for job_id, attempt, pid in runs:
        by_job.setdefault(job_id, []).append((attempt, pid))
    test.assertEqual(set(by_job) - set(ids), set(), "runs of jobs nobody pushed")
    # No attempt ran twice: the same lease was never handed out twice.
    pairs = Counter((job_id, attempt) for job_id, attempt, _ in runs)
    twice = [pair for pair, n in pairs.items() if n > 1]
    test.assertEqual(twice, [], "attempts that ran twice")

    # Every completed job: its completing run is in the ledger, no run came
    # after it, and each earlier run was an attempt interrupted (the server
    # recorded why).
    errors = _errors(store, server, queue, [i for i in completed if jobs[i][1] > 1])
    reasons: Counter[str] = Counter()
    interrupted = 0
    for job_id in sorted(completed):
        final = jobs[job_id][1]
        attempts = sorted(a for a, _ in by_job.get(job_id, []))
        test.assertIn(
            final, attempts, f"{job_id}: completed on attempt {final} with no run"
        )
        test.assertLessEqual(attempts[-1], final, f"{job_id}: a run after it completed")
        history = list(reversed(errors.get(job_id, [])))
        interrupted += final - 1
        if len(history) == final - 1:
            for attempt in attempts[:-1]:
                reason = history[attempt - 1]
                reasons[f"{reason.get('type')}: {reason.get('message')}"] += 1
        else:
            test.assertEqual(
                len(history),
                10,
                f"{job_id}: {final - 1} attempts interrupted, {history!r}",
            )
            reasons["(history trimmed)"] += len(attempts) - 1

    # The server's counters agree with the jobs.
    summary = server.queue_summary(queue)
    totals = summary["totals"]
    test.assertEqual(totals["processed"], len(completed), summary)
    test.assertEqual(totals["pushed"], len(stored), summary)
    test.assertEqual(totals["failed"], 0, summary)
    for state in ("queued", "running", "retrying", "scheduled"):
        test.assertEqual(summary["sizes"][state], 0, summary)

    figures = Figures(
        test=test.id().rpartition(".")[2],
        fault=fault,
        pushed=len(ids),
        acknowledged=len(acked),
        stored=len(stored),
        completed=len(completed),
        lost=len(lost),
        runs=len(runs),
        duplicates=len(runs) - len(by_job),
        duplicate_reasons=dict(reasons),
        interrupted=interrupted,
        seconds=time.monotonic() - (started or producer.started_at),
    )
    test.assertEqual(figures.duplicates, sum(reasons.values()))
    return figures


def _errors(
    store: Resp, server: Procession, queue: str, ids: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    ids = list(ids)
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        replies = store.pipeline(
            [("LRANGE", server.key(queue, f"errors:{i}"), 0, -1) for i in chunk]
        )
        for job_id, entries in zip(chunk, replies):
            found[job_id] = [json.loads(e) for e in entries]
    return found


def report(figures: Figures) -> None:
    """
    Keep a run's figures: one JSON line in C{$PROCESSION_FAULT_FIGURES}
    when it is set.
    """
    path = os.environ.get("PROCESSION_FAULT_FIGURES")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(figures.as_dict(), sort_keys=True) + "\n")
