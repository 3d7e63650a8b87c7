"""
A stateful property test of L{procession.store.jobs}: random sequences of
pushes, claims, acks, fails, extensions, releases, sweeps and management
actions run against the real test Redis and against a small in-memory
model of the job state machine, and after every step the two must agree.
The model includes unique locks (who holds each, freed at start or on
success, by death, cancel, expiry and removal) and expiring jobs (a claim
ends a job past its expires_at as expired and takes the next).

Hypothesis cannot drive a Deferred-returning test, so the state machine
runs in a thread (C{deferToThread}) and every store call hops onto the
reactor and waits for its answer (as C{blockingCallFromThread} does, but
giving up once the test is over, so that a timed-out run cannot leave the
thread waiting for a reactor that has stopped and hang the process).  Each
example gets a fresh key namespace and its own L{FakeClock}; they share one
Redis connection pool.
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from attrs import define
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from procession.core.errors import IllegalState, JobNotFound
from procession.core.job import UniqueHeld, format_time
from procession.core.states import KILLABLE, PURGEABLE, RETRYABLE, STATES, UNFINISHED
from procession.core.stats import QueueSummary, Throughput
from procession.store.jobs import Store
from tests.redis import namespace
from tests.support import FakeClock, connected_store, new_job

QUEUE = "default"
MAX_ERRORS = 10
MINUTE_MS = 60_000

# The longest a store call may take before the run is given up: the store
# times out its own Redis commands after 5 s, so only a reactor that no
# longer runs takes this long.
CALL_LIMIT = 60.0

# A small pool of ids, so batches repeat ids and deleted ids come back;
# some carry characters that matter to keys and globs.
IDS = ["a", "b", "c", "d", "e", "f", "g", "x{y}", "k:1", "z*"]
MISSING = "never-pushed"
WORKERS = ["w1", "w2", "w3"]

# Where each state's jobs live, as procession.store.jobs.STATE_SETS says.
SET_OF = {
    "queued": "queued",
    "scheduled": "scheduled",
    "retrying": "retrying",
    "running": "running",
    "dead": "dead",
    "completed": "done",
    "cancelled": "done",
    "expired": "done",
}
SETS = ("queued", "scheduled", "retrying", "running", "dead", "done")

# The invariant's read of one queue's raw state, as one JSON text: every
# state set with its scores, the created index, every job hash, every error
# history's length.
# KEYS[1] is the queue's prefix, ARGV the names of the state sets.
SNAPSHOT = """
local prefix = KEYS[1]
local out = {sets = {}, jobs = {}, errors = {}}
for _, name in ipairs(ARGV) do
  out.sets[name] = redis.call('ZRANGE', prefix .. name, 0, -1, 'WITHSCORES')
end
out.created = redis.call('ZRANGE', prefix .. 'created', 0, -1)
for _, key in ipairs(redis.call('KEYS', prefix .. 'job:*')) do
  out.jobs[string.sub(key, #prefix + 5)] = redis.call('HGETALL', key)
end
for _, key in ipairs(redis.call('KEYS', prefix .. 'errors:*')) do
  out.errors[string.sub(key, #prefix + 8)] = redis.call('LLEN', key)
end
out.locks = {}
for _, key in ipairs(redis.call('KEYS', prefix .. 'unique:*')) do
  out.locks[string.sub(key, #prefix + 8)] = redis.call('GET', key)
end
return cjson.encode(out)
"""

job_specs = st.fixed_dictionaries(
    {
        "id": st.sampled_from(IDS),
        "priority": st.integers(-2, 2),
        "max_attempts": st.integers(1, 3),
        "timeout": st.sampled_from([0.5, 1, 5, 30]),
        "delay": st.sampled_from([None, None, 0, 0.25, 1, 5, 20]),
        # A unique key (from a small pool, so that pushes collide) and
        # when its lock frees; the locks last an hour of real time, which
        # no example reaches (expiry by time is tests/test_unique.py's).
        "unique": st.sampled_from([None, None, "k1", "k2"]),
        "until": st.sampled_from(["success", "start"]),
        "expires_in": st.sampled_from([None, None, 0.5, 3, 30]),
    }
)
UNIQUE_FOR = 3600


class Abandoned(BaseException):
    """
    The test is over (it timed out or was interrupted): stop the state
    machine.  Not an C{Exception}, so hypothesis passes it straight up
    instead of taking it for a failure to shrink.
    """


@define
class ModelJob:
    """
    What the model knows about one stored job.
    """

    id: str
    priority: int
    max_attempts: int
    timeout: float
    state: str
    attempt: int = 0
    qm: int | None = None  # the FIFO number kept in the hash's 'qm'
    run_at: int | None = None
    expiry: int | None = None
    lease: str | None = None
    finished_at: int | None = None
    errors: int = 0
    created_at: int = 0
    enqueued_at: int | None = None
    # The unique lock the job took (its name), when it frees, and whether
    # it still holds it.
    lock: str | None = None
    until: str = "success"
    holds: bool = False
    expires_at: int | None = None


class StoreMachine(RuleBasedStateMachine):
    """
    The store against a model of one queue.
    """

    def __init__(self, redis: Any, abandoned: threading.Event) -> None:
        super().__init__()
        self.abandoned = abandoned
        self.clock = FakeClock()
        self.store = Store(redis, self.clock, reactor, namespace=namespace())
        self.jobs: dict[str, ModelJob] = {}
        self.seq = 0
        self.lease_count = 0
        self.issued: list[tuple[str, str]] = []
        self.paused = False
        self.pushed = 0
        self.processed = 0
        self.failed = 0
        self.expired = 0
        self.collisions = 0
        # Each unique lock held: its name -> the id of the job holding it.
        self.locks: dict[str, str] = {}
        # processed and failed per clock minute, as common.lua's count()
        self.minutes: dict[int, list[int]] = {}
        self.checks = 0

    # -- plumbing

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """
        Run a store operation on the reactor thread and wait for it.

        @raise Abandoned: when the test is over before the answer comes.
        """
        answers: queue.Queue[Any] = queue.Queue()

        def start() -> None:
            # maybeDeferred takes plain, Deferred and coroutine results.
            defer.maybeDeferred(fn, *args, **kwargs).addBoth(answers.put)

        reactor.callFromThread(start)
        give_up = time.monotonic() + CALL_LIMIT
        while True:
            if self.abandoned.is_set() or time.monotonic() > give_up:
                raise Abandoned()
            try:
                answer = answers.get(timeout=0.1)
            except queue.Empty:
                continue
            if self.abandoned.is_set():
                raise Abandoned()
            if isinstance(answer, Failure):
                answer.raiseException()
            return answer

    def now(self) -> int:
        return self.store.now_ms()

    def in_state(self, *states: str) -> list[ModelJob]:
        return sorted(
            (j for j in self.jobs.values() if j.state in states),
            key=lambda j: j.id,
        )

    def queued_order(self) -> list[ModelJob]:
        """
        The queued jobs in the order claims must hand them out.
        """
        queued = [j for j in self.jobs.values() if j.state == "queued"]
        return sorted(queued, key=lambda j: (-j.priority, self.member(j)))

    @staticmethod
    def member(job: ModelJob) -> str:
        assert job.qm is not None
        return f"{job.qm:016d}{job.id}"

    def new_lease(self) -> str:
        self.lease_count += 1
        return f"lease-{self.lease_count}"

    def pick_leases(self, data: Any, most: int = 3) -> list[tuple[str, str]]:
        """
        (id, lease) pairs for ack, fail, extend and release: mostly leases
        held right now; sometimes a running job under a lease it no longer
        (or never) had, a stale lease of any job, or an unknown job.
        """
        running = self.in_state("running")
        held = [(j.id, j.lease) for j in running]
        wrong = [(j.id, "bogus") for j in running] + [
            (i, lease)
            for i, lease in self.issued
            if i in self.jobs
            and self.jobs[i].state == "running"
            and lease != self.jobs[i].lease
        ][-6:]
        others = self.issued[-6:] + [(MISSING, "lease-1")]
        items = []
        for _ in range(data.draw(st.integers(1, most), label="count")):
            kind = data.draw(st.integers(0, 5), label="kind")
            if held and kind < 4:
                items.append(data.draw(st.sampled_from(held), label="held"))
            elif wrong and kind == 4:
                items.append(data.draw(st.sampled_from(wrong), label="wrong"))
            else:
                items.append(data.draw(st.sampled_from(others), label="other"))
        return items

    def count(self, field: int, now: int, n: int) -> None:
        """
        Count processed (field 0) or failed (field 1) jobs in now's minute.
        """
        if n:
            self.minutes.setdefault(now // MINUTE_MS, [0, 0])[field] += n

    def lease_problem(self, job_id: str, lease: str) -> str | None:
        """
        What check_lease in common.lua must answer.
        """
        job = self.jobs.get(job_id)
        if job is None:
            return "not_found"
        if job.state == "cancelled":
            # Its worker is told it was cancelled (docs/workflows.rst).
            return "cancelled"
        if job.state != "running" or job.lease != lease:
            return "lease_lost"
        return None

    # -- model transitions (mirroring common.lua)

    def enqueue(self, job: ModelJob, now: int, keep_place: bool = False) -> None:
        if not (keep_place and job.qm is not None):
            self.seq += 1
            job.qm = self.seq
        job.state = "queued"
        job.enqueued_at = now
        job.run_at = job.expiry = job.lease = None

    def free_lock(self, job: ModelJob, when: str | None = None) -> None:
        """
        free_unique in common.lua: the job's lock frees if it holds it (and
        it frees at C{when}, when given).
        """
        if not job.holds or (when is not None and job.until != when):
            return
        assert job.lock is not None
        if self.locks.get(job.lock) == job.id:
            del self.locks[job.lock]
        job.holds = False

    def forget_job(self, job: ModelJob) -> None:
        """
        erase() in common.lua: the job is gone, its lock with it.
        """
        self.free_lock(job)
        del self.jobs[job.id]

    def make_dead(self, job: ModelJob, now: int) -> None:
        self.free_lock(job)
        job.state = "dead"
        job.finished_at = now
        job.run_at = job.expiry = job.lease = None

    def release_job(self, job: ModelJob, now: int, uncount: bool) -> str:
        job.lease = job.expiry = None
        if uncount:
            job.attempt -= 1
            self.enqueue(job, now, keep_place=True)
            return "queued"
        job.errors += 1
        if job.attempt >= job.max_attempts:
            self.make_dead(job, now)
            return "dead"
        self.enqueue(job, now, keep_place=True)
        return "queued"

    def finish(self, job: ModelJob, state: str, now: int) -> None:
        if state == "completed":
            self.free_lock(job, "success")
        else:
            self.free_lock(job)
        job.state = state
        job.finished_at = now
        job.run_at = job.expiry = job.lease = None

    # -- rules

    @initialize(specs=st.lists(job_specs, min_size=2, max_size=6))
    def start(self, specs: list[dict[str, Any]]) -> None:
        # Each example talks to a namespace nothing else has used, and
        # starts with some jobs so that its first steps have work to do.
        sizes = self.call(self.store.queue_sizes, QUEUE)
        assert sizes["pushed"] == 0, sizes
        self.push(specs)

    @rule(specs=st.lists(job_specs, min_size=1, max_size=4))
    def push(self, specs: list[dict[str, Any]]) -> None:
        now = self.now()
        jobs = []
        for spec in specs:
            fields = {
                k: v
                for k, v in spec.items()
                if v is not None and k not in ("unique", "until")
            }
            if spec.get("unique"):
                fields["unique_for"] = UNIQUE_FOR
                fields["unique_key"] = spec["unique"]
                fields["unique_until"] = spec["until"]
            jobs.append(new_job(now, **fields))
        expected: list[Any] = []
        for spec, job in zip(specs, jobs):
            if job.id in self.jobs:
                expected.append(False)
                continue
            if job.unique_lock and job.unique_lock in self.locks:
                expected.append(UniqueHeld(self.locks[job.unique_lock]))
                self.collisions += 1
                continue
            expected.append(True)
            self.pushed += 1
            model = ModelJob(
                id=job.id,
                priority=job.priority,
                max_attempts=job.max_attempts,
                timeout=job.timeout,
                state="scheduled",
                created_at=now,
                expires_at=job.expires_at or None,
            )
            if job.unique_lock:
                model.lock = job.unique_lock
                model.until = job.unique_until
                model.holds = True
                self.locks[job.unique_lock] = job.id
            self.jobs[job.id] = model
            if job.run_at > now:
                model.run_at = job.run_at
            else:
                self.enqueue(model, now)
        created = self.call(self.store.push, jobs)
        assert created == expected, (created, expected)

    @precondition(lambda self: self.in_state("queued"))
    @rule(n=st.integers(1, 4), worker=st.sampled_from(WORKERS))
    def claim(self, n: int, worker: str) -> None:
        now = self.now()
        slots = [(worker, self.new_lease()) for _ in range(n)]
        # In the queue's order, jobs past their expires_at end expired and
        # the claim takes the next, until it has n or the queue is empty.
        expected: list[ModelJob] = []
        expired: list[ModelJob] = []
        for job in [] if self.paused else self.queued_order():
            if len(expected) == n:
                break
            if job.expires_at is not None and job.expires_at <= now:
                expired.append(job)
            else:
                expected.append(job)
        claimed = self.call(self.store.claim, QUEUE, slots)
        assert [c.id for c in claimed] == [j.id for j in expected], (
            [c.id for c in claimed],
            [j.id for j in expected],
        )
        if self.paused:
            # A paused queue hands out nothing.  Resume it at once: a pause
            # that lasted would starve the rest of the example of work.
            assert self.call(self.store.set_paused, QUEUE, False) is True
            self.paused = False
        for job in expired:
            self.finish(job, "expired", now)
            self.expired += 1
        for (_, lease), job, got in zip(slots, expected, claimed):
            self.free_lock(job, "start")
            job.state = "running"
            job.attempt += 1
            job.lease = lease
            job.expiry = now + math.floor(job.timeout * 1000)
            self.issued.append((job.id, lease))
            assert got.lease == lease
            assert got.attempt == job.attempt, (got, job)

    @precondition(lambda self: self.in_state("running"))
    @rule(data=st.data())
    def ack(self, data: Any) -> None:
        now = self.now()
        items = self.pick_leases(data)
        expected = []
        for job_id, lease in items:
            problem = self.lease_problem(job_id, lease)
            if problem:
                expected.append(problem)
                continue
            self.finish(self.jobs[job_id], "completed", now)
            self.processed += 1
            self.count(0, now, 1)
            expected.append("ok")
        replies = self.call(
            self.store.ack, QUEUE, [(i, lease, '{"ok":1}') for i, lease in items]
        )
        assert replies == expected, (items, replies, expected)

    @precondition(lambda self: self.in_state("running"))
    @rule(
        data=st.data(),
        how=st.sampled_from(
            [("backoff", None), ("no-retry", None)]
            + [("in", s) for s in (0, 0.5, 1, 7, 100)]
        ),
    )
    def fail(self, data: Any, how: tuple[str, float | None]) -> None:
        now = self.now()
        items = self.pick_leases(data)
        mode, retry_in = how
        retry = mode != "no-retry"
        expected: list[tuple[str, Any]] = []
        for job_id, lease in items:
            problem = self.lease_problem(job_id, lease)
            if problem:
                expected.append((problem, 0))
                continue
            job = self.jobs[job_id]
            job.errors += 1
            job.lease = job.expiry = None
            self.failed += 1
            self.count(1, now, 1)
            if not retry or job.attempt >= job.max_attempts:
                self.make_dead(job, now)
                expected.append(("dead", 0))
            else:
                job.state = "retrying"
                if mode == "backoff":
                    expected.append(("backoff", job))  # filled in below
                else:
                    job.run_at = now + math.floor(retry_in * 1000)
                    expected.append(("retrying", job.run_at))
        error = '{"type":"E","message":"boom"}'
        replies = self.call(
            self.store.fail,
            QUEUE,
            [(i, lease, error, retry_in, retry) for i, lease in items],
        )
        assert len(replies) == len(expected), (replies, expected)
        for reply, want in zip(replies, expected):
            if want[0] != "backoff":
                assert reply == want, (items, replies, expected)
                continue
            job = want[1]
            status, run_at = reply
            assert status == "retrying", (items, replies)
            # attempt^4 + 15 + jitter * (attempt + 1) seconds, jitter 0..30
            a = job.attempt
            extra = run_at - now - (a**4 + 15) * 1000
            step = (a + 1) * 1000
            assert extra % step == 0 and 0 <= extra // step <= 30, (a, run_at - now)
            job.run_at = run_at

    @precondition(lambda self: self.in_state("running"))
    @rule(data=st.data(), seconds=st.sampled_from([0, 1, 2.5, 30, 600]))
    def extend(self, data: Any, seconds: float) -> None:
        now = self.now()
        items = self.pick_leases(data)
        expected = []
        for job_id, lease in items:
            problem = self.lease_problem(job_id, lease)
            if problem:
                expected.append((problem, 0))
                continue
            job = self.jobs[job_id]
            job.expiry = now + math.floor(seconds * 1000)
            expected.append(("ok", job.expiry))
        replies = self.call(
            self.store.extend, QUEUE, [(i, lease, seconds) for i, lease in items]
        )
        assert replies == expected, (items, replies, expected)

    @precondition(lambda self: self.in_state("running"))
    @rule(data=st.data(), delivered=st.booleans())
    def release(self, data: Any, delivered: bool) -> None:
        now = self.now()
        items = self.pick_leases(data)
        expected = []
        for job_id, lease in items:
            problem = self.lease_problem(job_id, lease)
            if problem:
                expected.append(problem)
                continue
            expected.append(
                self.release_job(self.jobs[job_id], now, uncount=not delivered)
            )
        replies = self.call(
            self.store.release, QUEUE, items, "gone", delivered=delivered
        )
        assert replies == expected, (items, replies, expected)

    @rule(seconds=st.sampled_from([0.001, 0.25, 0.5, 1, 4, 20, 100, 1000]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(
        seconds=st.sampled_from([1, 0, 5, 30, 300, 0.5]),
        limit=st.sampled_from([1000, 2, 1]),
        keep_completed=st.sampled_from([10**6, 5, 0]),
        keep_dead=st.sampled_from([10**6, 5, 0]),
        max_dead=st.sampled_from([1000, 2, 0]),
    )
    def sweep(
        self,
        seconds: float,
        limit: int,
        keep_completed: int,
        keep_dead: int,
        max_dead: int,
    ) -> None:
        """
        Let time pass, then sweep: promotion, lease expiry and retention.
        """
        self.clock.advance(seconds)
        now = self.now()
        promoted = reclaimed = removed = 0
        for state in ("scheduled", "retrying"):
            due = sorted(
                (j for j in self.in_state(state) if j.run_at <= now),
                key=lambda j: (j.run_at, j.id),
            )[:limit]
            for job in due:
                self.enqueue(job, now)
                promoted += 1
        expired = sorted(
            (j for j in self.in_state("running") if j.expiry <= now),
            key=lambda j: (j.expiry, j.id),
        )[:limit]
        for job in expired:
            self.release_job(job, now, uncount=False)
            reclaimed += 1

        def oldest(states: tuple[str, ...]) -> list[ModelJob]:
            return sorted(self.in_state(*states), key=lambda j: (j.finished_at, j.id))

        def forget(jobs: list[ModelJob]) -> None:
            nonlocal removed
            for job in jobs:
                self.forget_job(job)
                removed += 1

        forget(
            [
                j
                for j in oldest(("completed", "cancelled", "expired"))
                if j.finished_at <= now - keep_completed * 1000
            ][:limit]
        )
        forget(
            [j for j in oldest(("dead",)) if j.finished_at <= now - keep_dead * 1000][
                :limit
            ]
        )
        extra = len(self.in_state("dead")) - max_dead
        if extra > 0:
            forget(oldest(("dead",))[: min(extra, limit)])
        result = self.call(
            self.store.sweep, QUEUE, limit, keep_completed, keep_dead, max_dead
        )
        assert result == (promoted, reclaimed, removed), (
            result,
            (promoted, reclaimed, removed),
        )

    def pick_id(self, data: Any, states: tuple[str, ...]) -> str:
        """
        Mostly the id of a stored job in one of C{states} (the ones the
        action applies to); sometimes any stored job, or an id that may
        not be stored.
        """
        # A state first, then a job in it: running and retrying jobs are
        # few, and would otherwise rarely be picked.
        present = [s for s in states if self.in_state(s)]
        known = sorted(self.jobs)
        choice = data.draw(st.integers(0, 5), label="which")
        if present and choice < 4:
            state = data.draw(st.sampled_from(present), label="state")
            fit = [j.id for j in self.in_state(state)]
            return data.draw(st.sampled_from(fit), label="id")
        if known and choice < 5:
            return data.draw(st.sampled_from(known), label="id")
        return data.draw(st.sampled_from([MISSING, IDS[-1]]), label="id")

    def run_action(
        self,
        action: Callable[[str, str], Awaitable[str]],
        job_id: str,
        allowed: tuple[str, ...],
    ) -> ModelJob | None:
        """
        Run cancel, kill, retry_now or delete and check its answer; returns
        the model job when the action applies to it.
        """
        job = self.jobs.get(job_id)
        try:
            before = self.call(action, QUEUE, job_id)
        except JobNotFound:
            assert job is None, job
            return None
        except IllegalState:
            assert job is not None and job.state not in allowed, job
            return None
        assert job is not None and job.state in allowed, (job, before)
        assert before == job.state, (before, job)
        return job

    def act(self, action: str, job_id: str) -> None:
        """
        Cancel, kill, retry or delete one job, in Redis and in the model.
        """
        now = self.now()
        if action == "cancel":
            job = self.run_action(self.store.cancel, job_id, UNFINISHED)
            if job is not None:
                self.finish(job, "cancelled", now)
        elif action == "kill":
            job = self.run_action(self.store.kill, job_id, UNFINISHED)
            if job is not None:
                self.make_dead(job, now)
        elif action == "retry_now":
            job = self.run_action(self.store.retry_now, job_id, RETRYABLE)
            if job is not None:
                job.finished_at = None
                self.enqueue(job, now)
        else:
            job = self.run_action(self.store.delete, job_id, STATES)
            if job is not None:
                self.forget_job(job)

    # The management actions share one rule so that, between them, they
    # take no more steps than one worker action: purge and delete would
    # otherwise empty the queue too often for long job lives to happen.
    @rule(
        data=st.data(),
        action=st.sampled_from(
            [
                "retry_now",
                "cancel",
                "kill",
                "retry_now",
                "delete",
                "pause",
                "purge",
                "retry_all",
                "kill_all",
            ]
        ),
    )
    def manage(self, data: Any, action: str) -> None:
        now = self.now()
        if action == "pause":
            paused = data.draw(st.booleans(), label="paused")
            changed = self.call(self.store.set_paused, QUEUE, paused)
            assert changed == (paused != self.paused)
            self.paused = paused
        elif action == "purge":
            state = self.pick_state(data, PURGEABLE)
            batch = data.draw(st.sampled_from([1, 2, 1000]), label="batch")
            doomed = self.in_state(state)
            for job in doomed:
                self.forget_job(job)
            n = self.call(self.store.purge, QUEUE, state, batch=batch)
            assert n == len(doomed), (n, doomed)
        elif action == "retry_all":
            state = self.pick_state(data, RETRYABLE)
            batch = data.draw(st.sampled_from([1, 2, 1000]), label="batch")
            # They reach the queue in their set's order.
            moved = self.set_order(state)
            for job in moved:
                job.finished_at = None
                self.enqueue(job, now)
            n = self.call(self.store.retry_all, QUEUE, state, batch=batch)
            assert n == len(moved), (n, moved)
        elif action == "kill_all":
            state = self.pick_state(data, KILLABLE)
            batch = data.draw(st.sampled_from([1, 2, 1000]), label="batch")
            doomed = self.set_order(state)
            for job in doomed:
                self.make_dead(job, now)
            n = self.call(self.store.kill_all, QUEUE, state, batch=batch)
            assert n == len(doomed), (n, doomed)
        else:
            allowed = {
                "cancel": UNFINISHED,
                "kill": UNFINISHED,
                "retry_now": RETRYABLE,
                "delete": STATES,
            }[action]
            self.act(action, self.pick_id(data, allowed))

    # Revoking a lease is what makes a worker's later ack, fail or extend
    # stale; running jobs are too few for manage to pick them often.
    @precondition(lambda self: self.in_state("running"))
    @rule(data=st.data(), action=st.sampled_from(["cancel", "kill", "delete"]))
    def revoke(self, data: Any, action: str) -> None:
        running = [j.id for j in self.in_state("running")]
        self.act(action, data.draw(st.sampled_from(running), label="id"))

    def pick_state(self, data: Any, states: tuple[str, ...]) -> str:
        """
        One of C{states}, mostly one that has jobs.
        """
        present = [s for s in states if self.in_state(s)]
        if present and data.draw(st.integers(0, 7), label="present") < 7:
            return data.draw(st.sampled_from(present), label="state")
        return data.draw(st.sampled_from(states), label="state")

    def set_order(self, state: str) -> list[ModelJob]:
        """
        A state's jobs in the order of its zset.
        """
        if state == "queued":
            return self.queued_order()
        score = {
            "scheduled": lambda j: j.run_at,
            "retrying": lambda j: j.run_at,
            "dead": lambda j: j.finished_at,
        }[state]
        return sorted(self.in_state(state), key=lambda j: (score(j), j.id))

    # -- the invariant

    @invariant()
    def store_matches_model(self) -> None:
        self.call(self.check, full=False)

    def teardown(self) -> None:
        # Hypothesis tears down in a finally clause: after a failed step,
        # a second report about the same bug would only confuse.
        if sys.exc_info()[0] is None:
            self.call(self.check, full=True)

    async def check(self, full: bool) -> None:
        """
        Compare Redis with the model: the raw state in full, and the reads
        the APIs use.  After each step, state_members and get_job are
        checked on one state and one job, in turn (txredisapi spends a
        reactor turn on every element of a reply, and these take several
        commands each); at the end of an example on every state and job.
        """
        store = self.store
        prefix = store.keys.prefix(QUEUE)
        ids = sorted(self.jobs)
        self.checks += 1
        if full:
            states, sampled_ids = list(STATES), ids
        else:
            states = [STATES[self.checks % len(STATES)]]
            sampled_ids = [ids[self.checks % len(ids)]] if ids else []

        # Every read at once: nothing else changes the queue meanwhile.
        reads = [
            store.command("EVAL", SNAPSHOT, 1, prefix, *SETS),
            defer.ensureDeferred(store.queue_sizes(QUEUE)),
            defer.ensureDeferred(store.summary(QUEUE)),
        ]
        reads += [defer.ensureDeferred(store.state_members(QUEUE, s)) for s in states]
        reads += [defer.ensureDeferred(store.get_job(QUEUE, i)) for i in sampled_ids]
        text, sizes, summary, *rest = await defer.gatherResults(reads)
        members_of, details = rest[: len(states)], rest[len(states) :]
        snapshot = json.loads(text)

        def listed(value: Any) -> Any:
            # cjson cannot tell an empty array from an empty object.
            return value or []

        # Every job the model knows is stored, and nothing else is; error
        # histories go with their jobs.
        hashes = snapshot["jobs"] or {}
        assert sorted(hashes) == ids, (sorted(hashes), ids)
        histories = snapshot["errors"] or {}
        want_errors = {
            j.id: min(j.errors, MAX_ERRORS) for j in self.jobs.values() if j.errors
        }
        assert histories == want_errors, (histories, want_errors)

        # Each state set holds exactly the model's jobs of its states, with
        # the right scores; so no job is in two sets or in none.
        score = {
            "scheduled": lambda j: j.run_at,
            "retrying": lambda j: j.run_at,
            "running": lambda j: j.expiry,
            "dead": lambda j: j.finished_at,
            "done": lambda j: j.finished_at,
        }
        seen: dict[str, str] = {}
        for name in SETS:
            reply = listed(snapshot["sets"][name])
            got = [(m, float(sc)) for m, sc in zip(reply[::2], reply[1::2])]
            if name == "queued":
                want_members = [
                    (self.member(j), float(-j.priority)) for j in self.queued_order()
                ]
                assert got == want_members, (got, want_members)
            else:
                jobs = [j for j in self.jobs.values() if SET_OF[j.state] == name]
                want_set = sorted((j.id, float(score[name](j))) for j in jobs)
                assert sorted(got) == want_set, (name, sorted(got), want_set)
            for member, _ in got:
                job_id = member[16:] if name == "queued" else member
                assert job_id not in seen, (job_id, seen[job_id], name)
                seen[job_id] = name
        assert sorted(seen) == ids, (sorted(seen), ids)
        # Each unique lock is held by the job the model says.
        locks = snapshot["locks"] or {}
        assert locks == self.locks, (locks, self.locks)
        for job in self.jobs.values():
            assert job.holds == (
                job.lock is not None and self.locks.get(job.lock) == job.id
            ), job
        created = listed(snapshot["created"])
        want_created = sorted(f"{j.created_at:015d}{j.id}" for j in self.jobs.values())
        assert created == want_created, (created, want_created)

        # Each job's hash agrees with the model.
        for job_id in ids:
            job = self.jobs[job_id]
            flat = listed(hashes[job_id])
            fields = dict(zip(flat[::2], flat[1::2]))
            want_fields = {
                "state": job.state,
                "attempt": str(job.attempt),
                "priority": str(job.priority),
                "max_attempts": str(job.max_attempts),
                "lease": job.lease,
                "qm": None if job.qm is None else self.member(job),
                "run_at": None if job.run_at is None else str(job.run_at),
                "finished_at": (
                    None if job.finished_at is None else str(job.finished_at)
                ),
                "created_at": str(job.created_at),
                "enqueued_at": (
                    None if job.enqueued_at is None else str(job.enqueued_at)
                ),
                "expires_at": (None if job.expires_at is None else str(job.expires_at)),
                "ulock": job.lock if job.holds else None,
            }
            got_fields = {k: fields.get(k) for k in want_fields}
            assert got_fields == want_fields, (job_id, got_fields, want_fields)

        # The reads the APIs use agree too.
        want_sizes = {
            s: len(self.in_state(s))
            for s in ("queued", "scheduled", "retrying", "running", "dead")
        }
        assert sizes["sizes"] == want_sizes, (sizes, want_sizes)
        assert sizes["paused"] == self.paused, sizes
        counts = (sizes["pushed"], sizes["processed"], sizes["failed"])
        want_counts = (self.pushed, self.processed, self.failed)
        assert counts == want_counts, (counts, want_counts)
        queued = self.in_state("queued")
        minute = self.now() // MINUTE_MS

        def bucket(m: int) -> list[int]:
            return self.minutes.get(m, [0, 0])

        hour = [0, 0]
        for m in range(minute - 59, minute - 1):
            hour = [a + b for a, b in zip(hour, bucket(m))]
        want_summary = QueueSummary(
            name=QUEUE,
            sizes=want_sizes,
            paused=self.paused,
            pushed=self.pushed,
            processed=self.processed,
            failed=self.failed,
            oldest_enqueued_at=(min(j.enqueued_at for j in queued) if queued else None),
            latency=(
                max(0, self.now() - min(j.enqueued_at for j in queued)) / 1000
                if queued
                else 0.0
            ),
            throughput=Throughput.from_buckets(
                self.now(),
                bucket(minute) + bucket(minute - 1) + hour + bucket(minute - 60),
            ),
            expired=self.expired,
            unique_collisions=self.collisions,
        )
        assert summary == want_summary, (summary, want_summary)
        for state, members in zip(states, members_of):
            if state == "queued":
                want_ids = [j.id for j in self.queued_order()]
                assert members == want_ids, (members, want_ids)
            else:
                want_ids = [j.id for j in self.in_state(state)]
                assert sorted(members) == want_ids, (state, members, want_ids)
        for job_id, got in zip(sampled_ids, details):
            job = self.jobs[job_id]
            context = (job, got)
            assert got["state"] == job.state, context
            assert got["attempt"] == job.attempt, context
            assert got["priority"] == job.priority, context
            assert got["max_attempts"] == job.max_attempts, context
            assert got["timeout"] == job.timeout, context
            assert got["run_at"] == format_time(job.run_at), context
            assert got["finished_at"] == format_time(job.finished_at), context
            assert got["created_at"] == format_time(job.created_at), context
            assert got["enqueued_at"] == format_time(job.enqueued_at), context
            assert len(got["errors"]) == min(job.errors, MAX_ERRORS), context


class StoreModelTests(TestCase):
    """
    Run L{StoreMachine} against the test Redis.
    """

    async def setUp(self) -> None:
        # Only for its connection pool (closed when the test ends): each
        # example makes its own Store, in a namespace of its own, on it.
        store = await connected_store(self)
        self.redis = store.redis

    def test_store_follows_the_model(self) -> defer.Deferred[None]:
        abandoned = threading.Event()
        self.addCleanup(abandoned.set)

        # A factory, not a class attribute: hypothesis inspects the class's
        # members, and a txredisapi handler answers every attribute lookup.
        def run() -> None:
            try:
                run_state_machine_as_test(
                    lambda: StoreMachine(self.redis, abandoned),
                    settings=settings(
                        max_examples=100,
                        stateful_step_count=30,
                        # One bug at a time: shrinking several takes minutes.
                        report_multiple_bugs=False,
                    ),
                )
            except Exception as e:
                # Hypothesis puts the failing steps in the exception's
                # notes, which trial does not print.
                text = "".join(traceback.format_exception(e))
                raise AssertionError(text) from None

        return deferToThread(run)

    # A pass takes 20-40 s; a failure also needs time to shrink (hypothesis
    # gives shrinking up to 5 minutes).
    test_store_follows_the_model.timeout = 600  # type: ignore[attr-defined]
