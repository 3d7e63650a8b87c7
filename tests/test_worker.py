"""
Tests for L{procession.client.worker}: its pure parts (the handler
registry, how a handler is called, the C{ACK} and C{FAIL} frames it sends,
the job as it arrives) synchronously, and the runner,
C{python -m procession.client.worker tests.worker_jobs}, as a child process
against a real server (L{WorkerTests}).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from procession.client import Client
from procession.client.client import decode_body
from procession.client.worker import (
    MAX_MESSAGE,
    MIN_EXTEND_INTERVAL,
    Job,
    JobError,
    Registry,
    _extend_interval,
    ack_frame,
    call_handler,
    check_cancelled,
    cancelled,
    current_job,
    fail_frame,
    load_handlers,
    progress,
)
from tests.test_client import (
    RedisReader,
    ServerProcess,
    WorkerProcess,
    client_of,
    wait_for,
)


def _job(**fields: Any) -> Job:
    body = {"id": "j1", "type": "t", "queue": "q", "attempt": 2, **fields}
    return Job.from_wire(body)


def _body(frame: bytes) -> tuple[str, Any]:
    verb, _, rest = frame.rstrip(b"\n").partition(b" ")
    return verb.decode("ascii"), decode_body(rest)


class RegistryTests(SynchronousTestCase):
    def test_add_and_decorate(self) -> None:
        """
        Handlers are registered by name or by decorator, bare or named,
        and listed sorted.
        """
        registry = Registry()

        @registry.handler
        def resize() -> None:
            pass

        @registry.handler("mail.send")
        def send() -> None:
            pass

        registry.add("other", print)
        self.assertEqual(registry.types(), ["mail.send", "other", "resize"])
        self.assertIs(registry.get("resize"), resize)
        self.assertIs(registry.get("mail.send"), send)
        self.assertIsNone(registry.get("nothing"))
        self.assertIn("other", registry)
        self.assertEqual(len(registry), 3)

    def test_refusals(self) -> None:
        """
        A type handled twice by different functions, an empty type and a
        handler that cannot be called are refused.
        """
        registry = Registry({"t": print})
        self.assertRaises(ValueError, registry.add, "t", repr)
        # The same function again is fine.
        registry.add("t", print)
        self.assertRaises(ValueError, registry.add, "", print)
        self.assertRaises(TypeError, registry.add, "u", "not callable")

    def test_load_handlers(self) -> None:
        """
        Loading a module gathers its decorated handlers and its HANDLERS.
        """
        found = load_handlers(["tests.worker_jobs"])
        self.assertIn("echo", found)
        self.assertIn("add", found)


class CallTests(SynchronousTestCase):
    def test_args(self) -> None:
        """
        A list is passed as positional arguments, an object as keyword
        arguments, null as nothing, anything else as the one argument.
        """

        def f(*args: Any, **kwargs: Any) -> Any:
            return args, kwargs

        self.assertEqual(call_handler(f, [1, 2]), ((1, 2), {}))
        self.assertEqual(call_handler(f, {"a": 1}), ((), {"a": 1}))
        self.assertEqual(call_handler(f, None), ((), {}))
        self.assertEqual(call_handler(f, "x"), (("x",), {}))

    def test_job_from_wire(self) -> None:
        """
        A C{JOB} body becomes a L{Job}, with defaults for what it leaves out.
        """
        job = _job(args=[1], timeout=10, meta={"m": 1})
        self.assertEqual(
            (job.id, job.type, job.queue, job.args, job.attempt, job.timeout),
            ("j1", "t", "q", [1], 2, 10.0),
        )
        self.assertEqual((job.max_attempts, job.priority, job.meta), (25, 0, {"m": 1}))
        self.assertFalse(job.cancelled)
        self.assertEqual(_extend_interval(job), 5.0)
        self.assertEqual(_extend_interval(_job(timeout=0.01)), MIN_EXTEND_INTERVAL)

    def test_outside_a_handler(self) -> None:
        """
        Outside a handler there is no current job, nothing is cancelled,
        and progress reports go nowhere.
        """
        self.assertIsNone(current_job())
        self.assertFalse(cancelled())
        check_cancelled()
        progress(50, "half")


class FrameTests(SynchronousTestCase):
    def test_ack(self) -> None:
        """
        An C{ACK} carries a JSON result that fits, and leaves out one that
        is not JSON or is over the frame limit.
        """
        job = _job()
        self.assertEqual(
            _body(ack_frame(job, {"n": 1}, 1 << 20)),
            ("ACK", {"id": "j1", "result": {"n": 1}}),
        )
        self.assertEqual(_body(ack_frame(job, None, 1 << 20)), ("ACK", {"id": "j1"}))
        self.assertEqual(
            _body(ack_frame(job, object(), 1 << 20)), ("ACK", {"id": "j1"})
        )
        self.assertEqual(_body(ack_frame(job, "x" * 500, 100)), ("ACK", {"id": "j1"}))

    def test_fail(self) -> None:
        """
        A C{FAIL} names the exception, its message and traceback, and a
        L{JobError}'s C{retry} and C{retry_in}.
        """
        try:
            raise JobError("no luck", retry=False, retry_in=3)
        except JobError as e:
            error = e
        verb, body = _body(fail_frame(_job(), error, 1 << 20))
        self.assertEqual(verb, "FAIL")
        self.assertEqual(body["id"], "j1")
        self.assertEqual(body["error"]["type"], "procession.client.worker.JobError")
        self.assertEqual(body["error"]["message"], "no luck")
        self.assertTrue(
            any("raise JobError" in line for line in body["error"]["backtrace"])
        )
        self.assertEqual((body["retry"], body["retry_in"]), (False, 3))
        verb, body = _body(fail_frame(_job(), ValueError("v"), 1 << 20))
        self.assertEqual(body["error"]["type"], "ValueError")
        self.assertNotIn("retry", body)

    def test_fail_is_cut_to_fit(self) -> None:
        """
        A long message is cut; a frame over the limit loses most of its
        traceback and message.
        """
        verb, body = _body(fail_frame(_job(), ValueError("m" * 10_000), 1 << 20))
        self.assertEqual(len(body["error"]["message"]), MAX_MESSAGE)
        frame = fail_frame(_job(), ValueError("m" * 10_000), 2000)
        verb, body = _body(frame)
        self.assertEqual(len(body["error"]["message"]), 256)


class WorkerTests(SynchronousTestCase):
    """
    The worker runner, C{python -m procession.client.worker}, against a server.
    """

    def setUp(self) -> None:
        self.server = ServerProcess(self, "--shutdown-grace", "10").start()
        self.redis = RedisReader(self.server.ns)
        self.addCleanup(self.redis.close)
        self.client = client_of(self, self.server)

    def worker(self, *args: str) -> WorkerProcess:
        return WorkerProcess(self, self.server, *args)

    def wait_states(
        self,
        queue: str,
        ids: list[str],
        states: set[str],
        worker: WorkerProcess,
        timeout: float = 15,
    ) -> None:
        def describe() -> str:
            got = Counter(self.redis.states(queue, ids))
            return f"states {dict(got)}; worker log:\n{worker.log()}"

        wait_for(
            lambda: set(self.redis.states(queue, ids)) <= states, timeout, describe
        )

    def test_runs_jobs(self) -> None:
        """
        A list of args is passed as positional arguments, an object as
        keyword arguments; the return value is the job's result, when it
        is JSON.  Handlers come from the decorator and from HANDLERS.
        """
        ids = [self.client.push("echo", [i, "x"], queue="q1") for i in range(20)]
        by_name = self.client.push("echo", {"a": 1, "b": [2]}, queue="q1")
        added = self.client.push("add", [2, 3], queue="q2")
        opaque = self.client.push("opaque", queue="q2")
        worker = self.worker("--queues", "q1,q2", "--concurrency", "4")
        self.wait_states("q1", [*ids, by_name], {"completed"}, worker)
        self.wait_states("q2", [added, opaque], {"completed"}, worker)
        self.assertEqual(
            json.loads(self.redis.job("q1", ids[7])["result"]),
            {"args": [7, "x"], "kwargs": {}},
        )
        self.assertEqual(
            json.loads(self.redis.job("q1", by_name)["result"]),
            {"args": [], "kwargs": {"a": 1, "b": [2]}},
        )
        self.assertEqual(self.redis.job("q2", added)["result"], "5")
        self.assertEqual(self.redis.job("q2", opaque)["result"], "")
        done = worker.records("done")
        self.assertEqual(
            Counter(i for _, i, _ in done), Counter([*ids, by_name, added, opaque])
        )

    def test_failures(self) -> None:
        """
        A handler that raises fails its job with the exception's type,
        message and traceback; the job is retried, or dead when it has used
        its attempts or the exception says not to retry.
        """
        retried = self.client.push("boom", ["first try"], queue="f", max_attempts=3)
        dead = self.client.push("boom", ["last try"], queue="f", max_attempts=1)
        fatal = self.client.push("fatal", queue="f", max_attempts=5)
        unknown = self.client.push("no_such_type", queue="f", max_attempts=1)
        worker = self.worker("--queues", "f")
        self.wait_states("f", [retried], {"retrying"}, worker)
        self.wait_states("f", [dead, fatal, unknown], {"dead"}, worker)
        [error] = self.redis.errors("f", dead)
        self.assertEqual((error["type"], error["message"]), ("ValueError", "last try"))
        self.assertEqual(error["backtrace"][0], "Traceback (most recent call last):")
        self.assertEqual(error["backtrace"][-1], "ValueError: last try")
        self.assertIn("    raise ValueError(message)", error["backtrace"])
        self.assertTrue(
            any("tests/worker_jobs.py" in line for line in error["backtrace"])
        )
        [error] = self.redis.errors("f", fatal)
        self.assertEqual(
            (error["type"], error["message"]),
            ("procession.client.worker.JobError", "no point in retrying"),
        )
        self.assertEqual(self.redis.job("f", fatal)["attempt"], "1")
        [error] = self.redis.errors("f", unknown)
        self.assertEqual(error["type"], "procession.client.worker.UnknownJobType")
        self.assertIn("no_such_type", error["message"])
        self.assertEqual(self.redis.errors("f", retried)[0]["message"], "first try")

    def test_extends_long_jobs(self) -> None:
        """
        A job that runs past its timeout keeps its lease: the runner
        extends it, so it is not given to anyone else meanwhile.
        """
        job_id = self.client.push("sleep", [2.5], queue="long", timeout=1)
        worker = self.worker("--queues", "long")
        self.wait_states("long", [job_id], {"completed"}, worker)
        job = self.redis.job("long", job_id)
        self.assertEqual((job["attempt"], job["result"]), ("1", "2.5"))
        self.assertEqual(worker.records(), [("start", job_id, 1), ("done", job_id, 1)])
        self.assertEqual(self.redis.errors("long", job_id), [])

    def test_sigterm(self) -> None:
        """
        On SIGTERM the runner finishes the jobs it holds, takes no new ones,
        and exits.
        """
        held = [self.client.push("sleep", [1.5], queue="t") for _ in range(2)]
        worker = self.worker("--queues", "t", "--concurrency", "2", "--prefetch", "0")
        wait_for(lambda: len(worker.records("start")) == 2, 15, worker.log)
        waiting = [self.client.push("echo", queue="t") for _ in range(3)]
        worker.process.send_signal(signal.SIGTERM)
        self.assertEqual(worker.wait(15), 0, worker.log())
        self.assertEqual(self.redis.states("t", held), ["completed", "completed"])
        self.assertEqual(self.redis.states("t", waiting), ["queued"] * 3)
        self.assertEqual({a for _, _, a in worker.records()}, {1})
        self.assertEqual(len(worker.records("done")), 2)

    def test_quiet(self) -> None:
        """
        When the server stops, it sends QUIET: the runner finishes the job
        it holds (the server still takes its ack), says BYE and exits.
        """
        job_id = self.client.push("sleep", [1.0], queue="quiet")
        worker = self.worker("--queues", "quiet")
        wait_for(lambda: worker.records("start"), 15, worker.log)
        assert self.server.process is not None
        self.server.process.send_signal(signal.SIGTERM)
        self.assertEqual(worker.wait(15), 0, worker.log())
        self.assertEqual(self.redis.job("quiet", job_id)["state"], "completed")
        self.assertIn("QUIET", worker.log())

    def test_bad_token(self) -> None:
        """
        A worker the server refuses exits at once, with status 1.
        """
        server = ServerProcess(self, "--token", "right").start()
        worker = WorkerProcess(self, server, "--token", "wrong")
        self.assertEqual(worker.wait(15), 1)
        self.assertIn("unauthorized", worker.log())

    def test_survives_server_restart(self) -> None:
        """
        The server is killed (SIGKILL) while a worker drains a queue and a
        producer pushes, and started again on the same port and Redis.  The
        worker reconnects by itself, the producer's pushes go through, and
        every job ends completed; a job ran twice only when an attempt was
        interrupted (each run has its own attempt number).
        """
        queue = "restart"
        first = self.client.push_many(
            [
                {"type": "step", "args": [0.02], "queue": queue, "timeout": 2}
                for _ in range(300)
            ]
        )
        worker = self.worker("--queues", queue, "--concurrency", "8")
        pushed: list[str] = []
        failures: list[BaseException] = []
        producing = threading.Event()

        def produce() -> None:
            producer = Client("127.0.0.1", self.server.port, timeout=2, retry_for=30)
            try:
                for _ in range(150):
                    pushed.append(producer.push("step", [0.01], queue=queue, timeout=2))
                    producing.set()
                    time.sleep(0.01)
            except BaseException as e:
                failures.append(e)
            finally:
                producer.close()

        wait_for(lambda: len(worker.records("done")) >= 60, 15, worker.log)
        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        wait_for(lambda: len(pushed) >= 10, 15)
        self.server.kill(signal.SIGKILL)
        done_at_kill = len(worker.records("done"))
        time.sleep(0.3)
        self.server.start()
        thread.join(40)
        self.assertFalse(thread.is_alive(), "the producer is stuck")
        self.assertEqual(failures, [])
        self.assertEqual(len(set(pushed)), 150)
        ids = first + pushed
        self.wait_states(queue, ids, {"completed"}, worker, timeout=30)
        self.assertIsNone(worker.process.poll(), "the worker exited")
        self.assertLess(
            done_at_kill, len(ids), "the kill came too late to test anything"
        )
        runs = worker.records("done")
        self.assertEqual({i for _, i, _ in runs}, set(ids))
        # at most one run per attempt: a second run only after an
        # interrupted one
        self.assertEqual(len(runs), len({(i, a) for _, i, a in runs}))
        attempts = dict(
            zip(
                ids,
                self.redis.pipeline(
                    *[
                        ("HGET", self.redis.key(queue, f"job:{i}"), "attempt")
                        for i in ids
                    ]
                ),
            )
        )
        for _, job_id, attempt in runs:
            self.assertLessEqual(attempt, int(attempts[job_id]))
        self.assertIn("Connected", worker.log())
