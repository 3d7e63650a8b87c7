"""
A stateful property test of queue limits (docs/limits.rst) in the claim
script: random sequences of pushes (with and without limit keys), limit
changes (concurrency, rate, per_key), claims, acks, fails, releases,
sweeps and a clock that moves, against the real test Redis.  Before and
after every claim the queue's state is read from Redis and the claim must
have leased exactly what the limits allowed:

- with queue-wide limits, the first C{min(asked, queued, free slots, rate
  budget)} jobs in priority and FIFO order;
- with C{per_key}, for each key at most its free slots and its rate
  budget, its own first jobs, and, when the claim came back short, every
  key with a queued job left at its concurrency or its rate;

and its C{wait} must say whether the limits held it back, and when the
rate window opens again.  The rate budget comes from this test's own log
of starts, not from Redis's window.  It runs the machine in a thread, as
tests/test_store_model.py does (see there why).
"""

from __future__ import annotations

import hashlib
import threading
import traceback
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from procession.core.queue_limits import QueueLimits, Rate
from procession.store.jobs import Script, Store
from tests.redis import namespace
from tests.support import FakeClock, connected_store, new_job
from tests.test_store_model import StoreMachine

QUEUE = "default"
KEYS = ["a", "b", "c", None]

# One read of the queue: the queued jobs in claim order with their limit
# keys, and the running jobs with the key they count under ('lk').
SNAPSHOT = """
local prefix = KEYS[1]
local queued = {}
for _, member in ipairs(redis.call('ZRANGE', prefix .. 'queued', 0, -1)) do
  local id = string.sub(member, 17)
  queued[#queued + 1] = {id, redis.call('HGET', prefix .. 'job:' .. id,
    'limit_key') or ''}
end
local running = {}
for _, id in ipairs(redis.call('ZRANGE', prefix .. 'running', 0, -1)) do
  running[#running + 1] = {id, redis.call('HGET', prefix .. 'job:' .. id,
    'lk') or false}
end
return {queued, running}
"""


class LimitsMachine(RuleBasedStateMachine):
    """
    The claim script against the limits' rules, on one queue.
    """

    def __init__(self, redis: Any, abandoned: threading.Event) -> None:
        super().__init__()
        self.abandoned = abandoned
        self.clock = FakeClock()
        self.store = Store(redis, self.clock, reactor, namespace=namespace())
        self.limits = QueueLimits()
        self.pushed = 0
        self.leases = 0
        self.held: dict[str, str] = {}  # running job id -> its lease
        # Starts the queue-wide window counts, and each key's window.
        self.window: list[int] = []
        self.key_windows: dict[str, list[int]] = {}

    call = StoreMachine.call

    def now(self) -> int:
        return self.store.now_ms()

    def snapshot(self) -> tuple[list[tuple[str, str]], list[tuple[str, Any]]]:
        queued, running = self.call(
            self.store.run_on,
            "snapshot",
            [self.store.keys.prefix(QUEUE)],
            [],
        )
        return [tuple(q) for q in queued], [tuple(r) for r in running]

    def in_window(self, starts: list[int]) -> int:
        rate = self.limits.rate
        assert rate is not None
        return sum(1 for t in starts if t > self.now() - rate.per_ms)

    # -- rules

    @initialize(
        specs=st.lists(
            st.tuples(st.sampled_from(KEYS), st.integers(-1, 1)),
            min_size=4,
            max_size=12,
        ),
        concurrency=st.sampled_from([None, 1, 2, 3]),
        rate=st.sampled_from([None, (1, 30.0), (2, 30.0), (3, 20.0)]),
        per_key=st.booleans(),
    )
    def start(
        self,
        specs: list[tuple[str | None, int]],
        concurrency: int | None,
        rate: tuple[int, float] | None,
        per_key: bool,
    ) -> None:
        # The snapshot script, beside the store's own.
        sha = hashlib.sha1(SNAPSHOT.encode()).hexdigest()
        self.store.scripts["snapshot"] = Script("snapshot", SNAPSHOT, sha, "snapshot")
        # Each example starts with limits and jobs, so that its claims
        # have something to hold back.
        self.set_limits(concurrency, rate, per_key)
        self.push(specs)

    @rule(
        specs=st.lists(
            st.tuples(st.sampled_from(KEYS), st.integers(-1, 1)),
            min_size=1,
            max_size=5,
        )
    )
    def push(self, specs: list[tuple[str | None, int]]) -> None:
        jobs = []
        for key, priority in specs:
            self.pushed += 1
            fields: dict[str, Any] = {"id": f"j{self.pushed}", "priority": priority}
            fields["timeout"] = 40
            if key is not None:
                fields["limit_key"] = key
            jobs.append(new_job(self.now(), **fields))
        self.call(self.store.push, jobs)

    @rule(
        concurrency=st.sampled_from([None, 1, 2, 3]),
        rate=st.sampled_from([None, (1, 30.0), (2, 30.0), (3, 20.0)]),
        per_key=st.booleans(),
    )
    def set_limits(
        self, concurrency: int | None, rate: tuple[int, float] | None, per_key: bool
    ) -> None:
        limits = QueueLimits(
            concurrency, None if rate is None else Rate(*rate), per_key
        )
        self.call(self.store.set_limits, QUEUE, limits)
        self.limits = limits
        if rate is None:
            # set_limits.lua drops the queue-wide window with the rate.
            self.window = []

    @rule(seconds=st.sampled_from([0.5, 5.0, 12.0, 31.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def sweep(self) -> None:
        self.call(self.store.sweep, QUEUE, 100, 3600, 3600, 100)
        _, running = self.snapshot()
        alive = {job_id for job_id, _ in running}
        self.held = {i: lease for i, lease in self.held.items() if i in alive}

    @precondition(lambda self: self.held)
    @rule(data=st.data(), how=st.sampled_from(["ack", "fail", "release"]))
    def finish(self, data: Any, how: str) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.held)))
        lease = self.held.pop(job_id)
        if how == "ack":
            self.call(self.store.ack, QUEUE, [(job_id, lease, "")])
        elif how == "fail":
            self.call(self.store.fail, QUEUE, [(job_id, lease, "{}", 30, True)])
        else:
            self.call(self.store.release, QUEUE, [(job_id, lease)], "gone")

    @rule(asked=st.integers(1, 6))
    def claim(self, asked: int) -> None:
        queued, running = self.snapshot()
        slots = []
        for _ in range(asked):
            self.leases += 1
            slots.append(("w", f"l{self.leases}@{QUEUE}"))
        jobs = self.call(self.store.claim, QUEUE, slots)
        now = self.now()
        for job in jobs:
            self.held[job.id] = job.lease
        after, _ = self.snapshot()
        context = (self.limits, queued, running, [j.id for j in jobs], jobs.wait)
        key_of = dict(queued)
        if self.limits.per_key:
            self.check_per_key(asked, queued, running, jobs, after, context)
            for job in jobs:
                if self.limits.rate is not None:
                    self.key_windows.setdefault(key_of[job.id], []).append(now)
            return
        allowed = min(asked, len(queued))
        if self.limits.concurrency is not None:
            allowed = min(allowed, max(0, self.limits.concurrency - len(running)))
        if self.limits.rate is not None:
            allowed = min(
                allowed, max(0, self.limits.rate.limit - self.in_window(self.window))
            )
        assert [j.id for j in jobs] == [i for i, _ in queued[:allowed]], context
        if self.limits.rate is not None:
            self.window += [now] * len(jobs)
        if len(jobs) == asked or not after:
            assert jobs.wait is None, context
            return
        if self.limits.unlimited:
            assert jobs.wait is None, context
            return
        rate = self.limits.rate
        if rate is not None and self.in_window(self.window) >= rate.limit:
            oldest = min(t for t in self.window if t > now - rate.per_ms)
            assert jobs.wait == max(1, oldest + rate.per_ms - now) / 1000, context
        else:
            assert jobs.wait == 0, context

    def check_per_key(
        self,
        asked: int,
        queued: list[tuple[str, str]],
        running: list[tuple[str, Any]],
        jobs: Any,
        after: list[tuple[str, str]],
        context: Any,
    ) -> None:
        limits = self.limits
        rate = limits.rate
        taken: dict[str, list[str]] = {}
        key_of = dict(queued)
        for job in jobs:
            taken.setdefault(key_of[job.id], []).append(job.id)
        for key, ids in taken.items():
            # Its own first jobs, in order, within its own limits.
            assert ids == [i for i, k in queued if k == key][: len(ids)], context
            if limits.concurrency is not None:
                busy = sum(1 for _, lk in running if lk == key)
                assert len(ids) <= limits.concurrency - busy, (key, context)
            if rate is not None:
                used = self.in_window(self.key_windows.get(key, []))
                assert len(ids) <= rate.limit - used, (key, context)
        if len(jobs) == asked or not after:
            assert jobs.wait is None, context
            return
        # Short, with jobs left: every key that has one is at a limit.
        _, running_after = self.snapshot()
        for key in {k for _, k in after}:
            busy = sum(1 for _, lk in running_after if lk == key)
            at_concurrency = (
                limits.concurrency is not None and busy >= limits.concurrency
            )
            starts = self.key_windows.get(key, []) + [self.now()] * len(
                taken.get(key, [])
            )
            at_rate = rate is not None and self.in_window(starts) >= rate.limit
            assert at_concurrency or at_rate, (key, context)
        assert jobs.wait is not None, context


class LimitsModelTests(TestCase):
    """
    Run L{LimitsMachine} against the test Redis.
    """

    async def setUp(self) -> None:
        store = await connected_store(self)
        self.redis = store.redis

    def test_claims_lease_what_the_limits_allow(self) -> defer.Deferred[None]:
        abandoned = threading.Event()
        self.addCleanup(abandoned.set)

        def run() -> None:
            try:
                run_state_machine_as_test(
                    lambda: LimitsMachine(self.redis, abandoned),
                    settings=settings(
                        max_examples=150,
                        stateful_step_count=30,
                        report_multiple_bugs=False,
                    ),
                )
            except Exception as e:
                text = "".join(traceback.format_exception(e))
                raise AssertionError(text) from None

        return deferToThread(run)

    test_claims_lease_what_the_limits_allow.timeout = 600  # type: ignore[attr-defined]
