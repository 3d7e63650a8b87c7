"""
Crash and restart tests: real processes, real signals, loopback only.

Each test runs a load of a few thousand jobs (a L{Producer} pushing with ids
it chose, a pool of worker runner processes recording every finished run in
a L{Ledger}), injects one fault, lets the system recover by itself, and
then L{audit}s the end state: every acknowledged push completed, no attempt
ran twice, a job ran again only after an interrupted attempt, and the
server's counters agree.  docs/reliability.rst reports the figures these
tests measure.

Jobs have a short timeout (2 s) and the server sweeps every 0.2 s, so the
leases of a killed server or a frozen worker come back within seconds.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from functools import partial
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from procession.client import Client
from procession.redis.embedded import LOCK_FILE, DataDirInUse, _lock_data_dir
from tests.ledger import (
    LONG,
    REPO,
    Figures,
    Ledger,
    Procession,
    Producer,
    WorkerPool,
    alive,
    audit,
    environment,
    long_test,
    read_jobs,
    report,
    tail,
    wait_drained,
    wait_for,
)
from tests.redis import RedisProcess, shared_redis
from tests.wire import WireClient

#: Jobs per run.
JOBS = 3000 if LONG else 2000


class LoadRun:
    """
    One run of the load: a ledger, a worker pool and a producer against
    C{server}.
    """

    def __init__(
        self,
        test: SynchronousTestCase,
        server: Procession,
        jobs: int = JOBS,
        workers: int = 4,
        rate: float | None = 1000.0,
        seconds: float = 0.01,
        **producer: Any,
    ) -> None:
        self.test = test
        self.server = server
        self.ledger = Ledger(test)
        self.pool = WorkerPool(test, server, self.ledger, count=workers)
        self.producer = Producer(
            server.port, jobs, rate=rate, seconds=seconds, **producer
        )
        self.started = time.monotonic()

    def start(self, warm_up: int = 300) -> LoadRun:
        """
        Start pushing, and wait until C{warm_up} jobs have run.
        """
        self.started = time.monotonic()
        self.producer.start()
        wait_for(
            lambda: self.ledger.count() >= warm_up,
            60,
            lambda: "the workers do not run jobs:\n" + self.pool.all_logs(),
        )
        return self

    def wait_runs(self, more: int, timeout: float = 60) -> None:
        """
        Wait until the workers have finished C{more} runs from now.
        """
        target = self.ledger.count() + more
        wait_for(lambda: self.ledger.count() >= target, timeout, self.pool.all_logs)

    def finish(self, fault: str, timeout: float = 120, **kwargs: Any) -> Figures:
        """
        Let the producer finish and the workers drain the queue; audit.
        """
        self.producer.finish(timeout)
        wait_drained(
            self.server,
            self.server.store(),
            self.producer.ids,
            timeout=timeout,
            describe=lambda: self.server.output()[-3000:] + self.pool.all_logs(),
        )
        figures = audit(
            self.test,
            self.server,
            self.producer,
            self.ledger,
            fault,
            started=self.started,
            **kwargs,
        )
        return figures


class WorkerFaultTests(SynchronousTestCase):
    """
    Workers that die or freeze while they hold jobs.
    """

    def setUp(self) -> None:
        self.server = Procession(
            self, redis=shared_redis(), namespace="f" + uuid.uuid4().hex[:10]
        ).serving()

    def test_workers_killed(self) -> None:
        """
        Four times during the run a worker is killed with SIGKILL while it
        holds jobs (and a new one started): its jobs go back at once, each
        as a new attempt; nothing is lost.
        """
        run = LoadRun(self, self.server).start()
        killed = []
        for _ in range(4):
            run.wait_runs(200)
            killed.append(run.pool.kill_one(signal.SIGKILL))
        figures = run.finish("worker SIGKILL x4")
        # every kill interrupted something: a killed worker always holds
        # its credit's worth of jobs under this load
        self.assertGreaterEqual(figures.interrupted, len(killed))
        for reason in figures.duplicate_reasons:
            self.assertIn("WorkerLost", reason)
        figures.extra["killed"] = len(killed)
        report(figures)

    def test_worker_frozen(self) -> None:
        """
        A worker frozen with SIGSTOP past its lease and then resumed: the
        job it held runs again elsewhere, and its late ACK is refused with
        lease_lost.  A raw-protocol worker, to see the refusal itself; and
        one worker runner of the pool frozen the same way, which logs it.
        """
        frozen = RawWorker(self, self.server.port)
        run = LoadRun(self, self.server)
        run.producer.start()
        held = frozen.line()
        os.kill(frozen.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        wait_for(lambda: run.ledger.count() >= 300, 60, run.pool.all_logs)
        runner = self.freeze_busy_runner(run.pool)
        runner_stopped_at = time.monotonic()
        # The job runs again elsewhere, as its second attempt.
        wait_for(
            lambda: (held["id"], 2) in {(i, a) for i, a, _ in run.ledger.runs()},
            20,
            lambda: self.server.output()[-2000:],
        )
        rerun_after = time.monotonic() - stopped_at
        # Both stay frozen 3 s: past their 2 s leases and a sweep.
        time.sleep(max(0.0, 3.0 - (time.monotonic() - stopped_at)))
        os.kill(frozen.pid, signal.SIGCONT)
        time.sleep(max(0.0, 3.0 - (time.monotonic() - runner_stopped_at)))
        runner.send_signal(signal.SIGCONT)
        reply = frozen.line()
        self.assertEqual(reply[0], "ERR", reply)
        self.assertEqual(reply[1]["code"], "lease_lost")
        wait_for(
            lambda: "lease_lost" in tail(run.pool.logs[runner.pid], 400),
            20,
            lambda: tail(run.pool.logs[runner.pid]),
        )
        figures = run.finish("worker SIGSTOP 3 s (lease 2 s), then SIGCONT")
        self.assertGreaterEqual(figures.interrupted, 2)
        figures.extra["rerun_after_s"] = round(rerun_after, 2)
        report(figures)

    def freeze_busy_runner(self, pool: WorkerPool) -> subprocess.Popen[bytes]:
        """
        SIGSTOP a worker runner of the pool that the server says holds
        jobs; the one frozen.
        """
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for runner in pool.live():
                runner.send_signal(signal.SIGSTOP)
                time.sleep(0.2)
                _, body = self.server.http("GET", "/api/v1/workers")
                mark = f":{runner.pid}#"
                held = [w["jobs"] for w in body["workers"] if mark in w["name"]]
                if held and held[0]:
                    return runner
                runner.send_signal(signal.SIGCONT)
        raise AssertionError("no worker runner holds jobs")


def dead(pid: int) -> bool:
    """
    Whether a process has ended.
    """
    return not alive(pid)


class RawWorker:
    """
    A raw-protocol worker in a child process: it takes one job, prints it,
    works on it for 1.5 s (within its 2 s lease), ACKs it and prints the
    reply.  Freeze it in between.
    """

    SCRIPT = (
        "import json, sys, time\n"
        "from tests.wire import WireClient\n"
        "c = WireClient('127.0.0.1', int(sys.argv[1]), timeout=60)\n"
        "c.hello('frozen')\n"
        "c.ready(credit=1)\n"
        "job = c.next_job(60)\n"
        "print(json.dumps(job), flush=True)\n"
        "time.sleep(1.5)\n"
        "print(json.dumps(c.request('ACK', {'id': job['id']})), flush=True)\n"
        "time.sleep(60)\n"
    )

    def __init__(self, test: SynchronousTestCase, port: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, str(port)],
            stdout=subprocess.PIPE,
            cwd=REPO,
            env=environment(),
        )
        test.addCleanup(self._stop)
        assert self.process.stdout is not None
        self.stdout = self.process.stdout
        self.buffer = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def line(self, timeout: float = 30) -> Any:
        """
        The next line the child printed, decoded from JSON.
        """
        deadline = time.monotonic() + timeout
        fd = self.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            readable, _, _ = select.select([fd], [], [], max(0.0, left))
            if not readable:
                raise AssertionError("the raw worker printed nothing in time")
            data = os.read(fd, 65536)
            if not data:
                raise AssertionError(f"the raw worker ended: {self.buffer!r}")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def _stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
        self.process.wait(10)
        self.stdout.close()


class ServerFaultTests(SynchronousTestCase):
    """
    The procession server killed with SIGKILL under load, and started again
    on the same ports (and data directory).
    """

    def kill_and_restart(
        self, server: Procession, fault: str, times: int = 1
    ) -> Figures:
        server.serving()
        run = LoadRun(self, server).start()
        outages = []
        orphans = []
        for _ in range(times):
            run.wait_runs(300)
            redis_pid = server.redis_pid
            server.kill(signal.SIGKILL)
            killed_at = time.monotonic()
            if redis_pid is not None:
                # The embedded redis-server stops when its server dies.
                wait_for(
                    partial(dead, redis_pid), 10, "redis-server outlived its server"
                )
                orphans.append(round(time.monotonic() - killed_at, 2))
            server.serving()
            # back when a worker has run a job again
            run.wait_runs(1)
            outages.append(round(time.monotonic() - killed_at, 2))
        figures = run.finish(fault)
        figures.extra["outages_s"] = outages
        if orphans:
            figures.extra["redis_exit_s"] = orphans
        # the kills interrupted the jobs the workers held (the audit checked
        # that the server recorded why for each)
        self.assertGreater(figures.interrupted, 0)
        report(figures)
        return figures

    def test_killed_external_redis(self) -> None:
        """
        With an external Redis: the leases the dead server gave out come
        back when they expire; the producer's resent pushes (same ids)
        create nothing twice; workers reconnect by themselves.
        """
        long_test()
        server = Procession(
            self, redis=shared_redis(), namespace="f" + uuid.uuid4().hex[:10]
        )
        self.kill_and_restart(server, "server SIGKILL, external Redis")

    def test_killed_embedded_redis(self) -> None:
        """
        With the embedded Redis (the default), restarted on the same data
        directory: the embedded redis-server the dead server leaves behind
        shuts down by itself, and the new server starts on its AOF.
        """
        server = Procession(self)
        self.kill_and_restart(server, "server SIGKILL, embedded Redis")
        self.assertEqual(server.starts, 2)


class RedisFaultTests(SynchronousTestCase):
    """
    The Redis under the server killed, restarted or frozen: a dedicated
    redis-server (AOF on) that the test controls.
    """

    def redis(self, appendfsync: str) -> RedisProcess:
        redis = RedisProcess(appendfsync=appendfsync)
        redis.start()
        self.addCleanup(redis.cleanup)
        return redis

    def kill_redis(self, appendfsync: str, down: float) -> tuple[Figures, list[str]]:
        """
        SIGKILL Redis mid-run and start it again on its AOF C{down} seconds
        later; the figures, and the acknowledged pushes it lost.
        """
        redis = self.redis(appendfsync)
        server = Procession(self, "--redis-timeout", "1", redis=redis).serving()
        run = LoadRun(self, server).start()
        wait_for(lambda: len(run.producer.acked) >= JOBS // 2, 60)
        redis.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        acked_then = dict(run.producer.acked)
        error_s = None
        if down >= 2:
            # Meanwhile a request fails fast, and clearly.
            probe = WireClient("127.0.0.1", server.port, timeout=10)
            self.addCleanup(probe.close)
            probe.hello("probe")
            time.sleep(down / 2)
            started = time.monotonic()
            verb, body = probe.request("PUSH", {"type": "work", "queue": "probe"})
            error_s = round(time.monotonic() - started, 2)
            self.assertEqual((verb, body["code"]), ("ERR", "store_unavailable"))
            self.assertLess(error_s, 2.0)
            probe.close()
        time.sleep(max(0.0, down - (time.monotonic() - killed_at)))
        redis.start()
        back_at = time.monotonic()
        # What did Redis keep?  Look before the producer resends anything.
        store = server.store()
        ids = sorted(acked_then)
        states = store.pipeline(
            [("EXISTS", server.key("default", f"job:{i}")) for i in ids]
        )
        lost = [i for i, exists in zip(ids, states) if not exists]
        window = [killed_at - acked_then[i] for i in lost]
        # It serves again by itself.
        producer = Client("127.0.0.1", server.port, timeout=5, retry_for=60)
        self.addCleanup(producer.close)
        producer.push("work", id="after-the-outage", queue="probe")
        recovered_s = round(time.monotonic() - back_at, 2)
        figures = run.finish(
            f"Redis SIGKILL, appendfsync {appendfsync}, down {down:g} s",
            lost_allowed=lost,
        )
        figures.extra.update(
            lost_at_restart=len(lost),
            lost_acked_within_s=round(max(window), 3) if window else 0,
            recovered_s=recovered_s,
        )
        if error_s is not None:
            figures.extra["error_s"] = error_s
        self.assertTrue(server.running(), "the server died with its Redis")
        return figures, lost

    def test_killed_fsync_always(self) -> None:
        """
        Redis killed and started again 10 s later.  With appendfsync always
        it writes and fsyncs every change before it answers: no
        acknowledged push is lost.  Meanwhile requests fail within the
        --redis-timeout with store_unavailable; afterwards the server
        reconnects by itself (txredisapi retries with a backoff of up to
        10 s).
        """
        figures, lost = self.kill_redis("always", down=10)
        self.assertEqual(lost, [])
        report(figures)

    def test_killed_fsync_everysec(self) -> None:
        """
        With appendfsync everysec (the default), an acknowledged push can
        only be lost if it was acknowledged in the last seconds before the
        kill (Redis fsyncs once a second, and postpones a write by up to
        2 s while an fsync is slow).  A killed process loses nothing the
        kernel already has, so a kill of redis-server alone measures 0;
        losing that last second takes a crash of the machine.
        """
        long_test()
        figures, _ = self.kill_redis("everysec", down=1)
        self.assertLessEqual(figures.extra["lost_acked_within_s"], 2.0)
        report(figures)

    def test_unreachable(self) -> None:
        """
        Redis frozen (SIGSTOP) for 10 s under load, with --redis-timeout 1:
        requests that need Redis fail within about a second with
        store_unavailable (ERR over TCP, 503 over HTTP); the server stays up
        and serves again by itself once Redis is back.
        """
        redis = self.redis("everysec")
        timeout = 1.0
        server = Procession(
            self, "--redis-timeout", str(timeout), redis=redis
        ).serving()
        run = LoadRun(self, server).start()
        wait_for(lambda: len(run.producer.acked) >= JOBS // 3, 60)
        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        self.addCleanup(redis.process.send_signal, signal.SIGCONT)
        answers: list[tuple[str, Any, Any, float]] = []
        try:
            probe = WireClient("127.0.0.1", server.port, timeout=10)
            probe.hello("probe")
            while time.monotonic() - stopped_at < 10:
                started = time.monotonic()
                verb, body = probe.request(
                    "PUSH", {"type": "work", "queue": "probe", "id": uuid.uuid4().hex}
                )
                took = time.monotonic() - started
                answers.append(("tcp", verb, body.get("code"), took))
                started = time.monotonic()
                status, body = server.http(
                    "POST",
                    "/api/v1/jobs",
                    {"type": "work", "queue": "probe", "id": uuid.uuid4().hex},
                )
                code = (
                    body.get("error", {}).get("code")
                    if isinstance(body, dict)
                    else body
                )
                answers.append(("http", status, code, time.monotonic() - started))
                started = time.monotonic()
                status, body = server.http("GET", "/readyz")
                answers.append(
                    ("readyz", status, body.get("status"), time.monotonic() - started)
                )
                status, _ = server.http("GET", "/healthz")
                answers.append(("healthz", status, None, 0.0))
            probe.close()
        finally:
            redis.process.send_signal(signal.SIGCONT)
        resumed_at = time.monotonic()
        self.assertTrue(server.running(), "the server died")
        for kind, status, code, took in answers:
            if kind == "tcp":
                self.assertEqual((status, code), ("ERR", "store_unavailable"))
            elif kind == "http":
                self.assertEqual((status, code), (503, "store_unavailable"))
            elif kind == "readyz":
                self.assertEqual((status, code), (503, "unavailable"))
            else:
                self.assertEqual(status, 200)
            self.assertLess(took, timeout + 1.0, (kind, status, code, took))
        # It recovers by itself: a push goes through again.
        producer = Client("127.0.0.1", server.port, timeout=5, retry_for=30)
        self.addCleanup(producer.close)
        producer.push("work", id="after-the-outage", queue="probe")
        recovered = time.monotonic() - resumed_at
        figures = run.finish("Redis frozen (SIGSTOP) for 10 s, --redis-timeout 1")
        slowest = max(took for kind, _, _, took in answers if kind in ("tcp", "http"))
        figures.extra.update(
            errors_answered=sum(1 for a in answers if a[0] in ("tcp", "http")),
            slowest_error_s=round(slowest, 2),
            recovered_s=round(recovered, 2),
        )
        report(figures)


class AckDuringOutageTests(SynchronousTestCase):
    """
    A job finished while Redis is frozen: its ACK is answered
    store_unavailable.  The connection keeps holding the job (and counting
    it against its credit), so the ACK can be sent again; the worker runner
    does so, with backoff, while the lease lasts, and the job runs once.
    """

    def setUp(self) -> None:
        self.redis = RedisProcess()
        self.redis.start()
        self.addCleanup(self.redis.cleanup)
        self.server = Procession(
            self, "--redis-timeout", "1", redis=self.redis
        ).serving()

    def freeze(self) -> None:
        assert self.redis.process is not None
        self.redis.process.send_signal(signal.SIGSTOP)
        self.addCleanup(self.thaw)

    def thaw(self) -> None:
        assert self.redis.process is not None
        self.redis.process.send_signal(signal.SIGCONT)

    def test_connection_keeps_the_job(self) -> None:
        """
        Over the wire: an ACK refused with store_unavailable leaves the job
        held by the connection, still taking its credit (a job pushed after
        the outage waits), and the same ACK sent again once Redis is back
        completes it.  FAIL likewise.
        """
        worker = WireClient("127.0.0.1", self.server.port, timeout=10)
        self.addCleanup(worker.close)
        worker.hello("raw")
        worker.ready(["outage"], credit=1)
        producer = WireClient("127.0.0.1", self.server.port, timeout=10)
        self.addCleanup(producer.close)
        producer.hello("producer")
        for verb, body in [
            ("ACK", {"result": 1}),
            ("FAIL", {"error": {"type": "E"}, "retry": False}),
        ]:
            first = producer.push(type="t", queue="outage", timeout=60)["id"]
            job = worker.next_job(10)
            self.assertEqual(job["id"], first)
            self.freeze()
            answer, error = worker.request(verb, {"id": first, **body}, timeout=10)
            self.assertEqual((answer, error["code"]), ("ERR", "store_unavailable"))
            self.thaw()
            second = Client(
                "127.0.0.1", self.server.port, timeout=5, retry_for=30
            ).push("t", queue="outage")
            # The connection still holds the first job: no room for another.
            self.assertTrue(worker.no_job(1.5))
            self.assertEqual(worker.ok(verb, {"id": first, **body})["id"], first)
            self.assertEqual(worker.next_job(10)["id"], second)
            self.assertEqual(worker.ok("ACK", {"id": second}), {"id": second})
        summary = self.server.queue_summary("outage")
        self.assertEqual(
            (summary["totals"]["processed"], summary["totals"]["failed"]), (3, 1)
        )
        self.assertEqual(
            (summary["sizes"]["running"], summary["sizes"]["dead"]), (0, 1)
        )

    def test_connection_stops_waiting(self) -> None:
        """
        A client that does not send its ACK again does not lose its credit
        for good: after the job's timeout the connection forgets the job
        (the sweep gives it back to its queue), and the ACK sent late is
        answered not_held.
        """
        worker = WireClient("127.0.0.1", self.server.port, timeout=10)
        self.addCleanup(worker.close)
        worker.hello("forgetful")
        worker.ready(["outage"], credit=1)
        pusher = Client("127.0.0.1", self.server.port, timeout=5, retry_for=30)
        self.addCleanup(pusher.close)
        first = pusher.push("t", queue="outage", timeout=3)
        self.assertEqual(worker.next_job(10)["id"], first)
        self.freeze()
        asked_at = time.monotonic()
        answer, error = worker.request("ACK", {"id": first}, timeout=10)
        self.assertEqual((answer, error["code"]), ("ERR", "store_unavailable"))
        self.thaw()
        second = pusher.push("t", queue="outage", timeout=60)
        # Held (and counted) until the job's timeout (3 s) has passed since
        # the refusal (which took the 1 s --redis-timeout); then the credit
        # is free, and the first job, back in its queue, comes again.
        job = worker.next_job(15)
        self.assertGreaterEqual(time.monotonic() - asked_at, 3.0)
        self.assertIn(job["id"], (first, second))
        answer, error = worker.request("ACK", {"id": first}, timeout=10)
        if job["id"] == first:
            # the same job, a new attempt: this connection holds it again
            self.assertEqual((answer, job["attempt"]), ("OK", 2))
        else:
            self.assertEqual((answer, error["code"]), ("ERR", "not_held"))

    def test_runner_sends_again(self) -> None:
        """
        Worker runners finish their jobs while Redis is frozen for 6 s (the
        jobs' leases are 30 s): they send each ACK again until it is
        stored, and every job runs exactly once.
        """
        ledger = Ledger(self)
        pool = WorkerPool(self, self.server, ledger, count=2, concurrency=4)
        client = Client("127.0.0.1", self.server.port, timeout=5)
        self.addCleanup(client.close)
        ids = [f"outage-{n}" for n in range(8)]
        for job_id in ids:
            client.push("work", {"seconds": 2}, id=job_id, timeout=30)
        wait_for(
            lambda: self.server.queue_summary()["sizes"]["running"] == len(ids),
            20,
            pool.all_logs,
        )
        self.freeze()
        frozen_at = time.monotonic()
        # The runs end during the outage; their ACKs cannot be stored.
        wait_for(lambda: ledger.count() == len(ids), 10, pool.all_logs)
        time.sleep(max(0.0, 6 - (time.monotonic() - frozen_at)))
        self.thaw()
        thawed_at = time.monotonic()
        wait_drained(
            self.server, self.server.store(), ids, timeout=20, describe=pool.all_logs
        )
        stored_s = time.monotonic() - thawed_at
        # Each job ran once, as its first attempt.
        self.assertEqual(
            sorted((i, a) for i, a, _ in ledger.runs()), [(i, 1) for i in sorted(ids)]
        )
        states = read_jobs(self.server.store(), self.server, ids)
        self.assertEqual(set(states.values()), {("completed", 1)})
        logs = "".join(tail(path, 400) for path in pool.logs.values())
        self.assertIn("could not store its ACK", logs)
        self.assertNotIn("may run again", logs)
        summary = self.server.queue_summary()
        self.assertEqual(summary["totals"]["processed"], len(ids))
        self.assertEqual(summary["sizes"]["running"], 0)
        # Well before the leases (30 s) could have run out.
        self.assertLess(stored_s, 10)
        # Settled at a later try: stored, or (a timed-out try stored late)
        # refused.
        tries = [
            int(n) for n in re.findall(r"its ACK (?:was stored )?at try (\d+)", logs)
        ]
        self.assertEqual(len(tries), len(ids), logs)
        report(
            Figures(
                test="test_runner_sends_again",
                fault="Redis frozen 6 s as 8 runs end (leases 30 s)",
                pushed=len(ids),
                acknowledged=len(ids),
                stored=len(ids),
                completed=len(ids),
                lost=0,
                runs=len(ledger.runs()),
                duplicates=len(ledger.runs()) - len(ids),
                seconds=time.monotonic() - frozen_at,
                extra={
                    "acks_sent_again": len(tries),
                    "most_tries": max(tries, default=1),
                    "all_stored_after_thaw_s": round(stored_s, 2),
                },
            )
        )


class ShutdownTests(SynchronousTestCase):
    """
    The server stopped gracefully (SIGTERM) under load.
    """

    def test_sigterm_under_load(self) -> None:
        """
        SIGTERM while workers run jobs and the producer pushes: workers are
        told QUIET, the jobs in hand finish within --shutdown-grace (or go
        back to their queue), pushes are refused with shutting_down (and
        resent by the client), the embedded Redis stops cleanly, and after
        a restart on the same data directory every job completes.
        """
        server = Procession(self, "--shutdown-grace", "3").serving()
        run = LoadRun(self, server).start(warm_up=500)
        status = server.kill(signal.SIGTERM)
        stopped_at = time.monotonic()
        self.assertEqual(status, 0, server.output())
        self.assertIn("procession stopped", server.output())
        quieted = sum(
            "QUIET" in tail(run.pool.logs[p.pid], 400) for p in run.pool.live()
        )
        time.sleep(0.5)
        server.serving()
        figures = run.finish("server SIGTERM under load, --shutdown-grace 3")
        figures.extra.update(
            quieted_workers=quieted,
            restarted_after_s=round(time.monotonic() - stopped_at, 1),
        )
        self.assertEqual(quieted, 4)
        report(figures)


class OrphanLockTests(SynchronousTestCase):
    """
    A server starting on a data directory whose last server died waits for
    that server's redis-server to let go of the lock (it is stopping: it got
    SIGTERM when its server died); a live server's lock is refused at once.
    """

    HOLDER = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
    )

    def hold(
        self, data_dir: str, owner: int, seconds: float
    ) -> subprocess.Popen[bytes]:
        """
        A child that holds the lock for C{seconds}, the lock file naming
        C{owner} as the server.
        """
        path = os.path.join(data_dir, LOCK_FILE)
        with open(path, "w", encoding="ascii") as f:
            f.write(f"server pid {owner}, redis-server pid 1\n")
        child = subprocess.Popen(
            [sys.executable, "-c", self.HOLDER, path, str(seconds)],
            stdout=subprocess.PIPE,
        )
        self.addCleanup(child.wait, 10)
        self.addCleanup(child.kill)
        assert child.stdout is not None
        self.assertEqual(child.stdout.readline(), b"locked\n")
        child.stdout.close()
        return child

    def test_dead_server(self) -> None:
        gone = subprocess.Popen([sys.executable, "-c", ""])
        gone.wait()
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        self.hold(data_dir, gone.pid, 1.0)
        started = time.monotonic()
        fd = _lock_data_dir(data_dir)
        os.close(fd)
        self.assertGreater(time.monotonic() - started, 0.5)

    def test_live_server(self) -> None:
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        self.hold(data_dir, os.getpid(), 30.0)
        started = time.monotonic()
        self.assertRaises(DataDirInUse, _lock_data_dir, data_dir)
        self.assertLess(time.monotonic() - started, 1.0)


class TransientRedisErrorTests(SynchronousTestCase):
    """
    Replies of a Redis that is up but cannot serve yet (replaying its AOF
    after a restart, a script running too long, a replica without master)
    are store_unavailable, which clients retry, not internal errors.
    """

    def test_transient_replies(self) -> None:
        import txredisapi
        from twisted.internet import defer
        from twisted.internet.task import Clock

        from procession.core.errors import StoreUnavailable
        from procession.store.jobs import Store

        class Busy:
            def __init__(self, reply: str) -> None:
                self.reply = reply

            def execute_command(self, *args: Any) -> defer.Deferred[Any]:
                return defer.fail(txredisapi.ResponseError(self.reply))

        for reply in (
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script.",
            "MASTERDOWN Link with MASTER is down",
            "TRYAGAIN Multiple keys request during rehashing of slot",
        ):
            clock = Clock()
            store = Store(Busy(reply), clock, clock)
            for d in (store.ping(), store.run("ack", "q", [0])):
                error = self.failureResultOf(d, StoreUnavailable).value
                self.assertIn(reply.split()[0], error.message)
        clock = Clock()
        store = Store(Busy("ERR wrong number of arguments"), clock, clock)
        self.failureResultOf(store.ping(), txredisapi.ResponseError)
