"""
The job store: every read and write of procession's state in Redis.

Each change of a job's state is one Lua script from C{procession/store/lua/}
(run by EVALSHA, sent again in full when Redis answers NOSCRIPT), so no
crash of the server or of Redis can leave a job half-moved between two
commands.  Nothing outside this module talks to Redis.

Every key of a queue carries the queue's hash tag (C{ns:{queue}:...}) and
every script touches one queue only, so the scripts stay valid on a
sharded Redis (L{procession.store.keys} names every key).  The server
registry is L{procession.store.registry}.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from importlib.resources import files
from typing import Any, Iterable, Sequence

from attrs import frozen
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from procession.core.errors import (
    BatchExists,
    BatchNotFound,
    BatchNotOpen,
    IllegalState,
    ProcessionError,
    InvalidJob,
    JobCancelled,
    InvalidRequest,
    JobNotFound,
    LeaseLost,
    StoreUnavailable,
)
from procession.core.job import (
    BatchSpec,
    ClaimedJob,
    ClaimedJobs,
    format_time,
    NewJob,
    PushOutcome,
    UniqueHeld,
    backoff_jitter,
    job_from_hash,
)
from procession.core.listing import (
    SCAN_BUDGET,
    QueuePage,
    StatePage,
    merge,
    merge_states,
)
from procession.core.queue_limits import MAX_REINDEX, LimitStatus, QueueLimits
from procession.core.stats import QueueSummary
from procession.core.states import KILLABLE, PURGEABLE, RETRYABLE, STATES
from procession.redis.connection import send
from procession.redis.internals import pool_factory
from procession.store.preamble import Preamble
from procession.store.keys import STATE_SET_NAMES, STATE_SETS, Keys
from procession.store.registry import OwnerRegistry, ServerRegistry

# The states whose pages are read from their own zsets (L{Store.state_page}).
STATE_PAGES = ("queued", "scheduled", "retrying", "dead")

log = Logger()

SCRIPT_NAMES = (
    "push",
    "claim",
    "ack",
    "fail",
    "extend",
    "release",
    "sweep",
    "cancel",
    "retry",
    "kill",
    "delete",
    "purge",
    "pause",
    "retry_bulk",
    "kill_bulk",
    "list",
    "state_page",
    "summary",
    "history",
    "server_lost",
    "set_limits",
    "limits",
    # workflows (workflow.lua, docs/workflows.rst)
    "await",
    "progress",
    "batch",
    # periodic jobs (service/periodic.py, docs/periodic.rst)
    "tick",
)

# Scripts that are not about one queue: they run without common.lua, on
# the keys they are given.
REGISTRY_SCRIPT_NAMES = ("servers", "periodic")


# How far summary.lua looks for the oldest queued job: the first jobs of the
# first priority levels (see the script).
LATENCY_LEVELS = 64
LATENCY_PER_LEVEL = 16


@frozen
class Script:
    """
    One Lua script: its full text (with the shared helpers) and its SHA1.
    """

    name: str
    text: str
    sha: str
    #: The script file it is linked from (a plain variant's is its
    #: script's): what it does, for messages.
    source: str


def load_scripts() -> dict[str, Script]:
    """
    Read the Lua scripts shipped with the package.
    """
    folder = files("procession.store").joinpath("lua")
    preamble = load_preamble()
    scripts = {}
    for name in SCRIPT_NAMES + REGISTRY_SCRIPT_NAMES:
        text = folder.joinpath(f"{name}.lua").read_text("utf-8")
        if name in SCRIPT_NAMES:
            # Only the helpers the script uses (procession.store.preamble).
            for variant, without in PLAIN_VARIANTS.get(name, ()):
                linked = preamble.link(text, without)
                scripts[variant] = _script(variant, linked, name)
            text = preamble.link(text)
        scripts[name] = _script(name, text, name)
    return scripts


def load_preamble() -> Preamble:
    """
    The shared helpers every queue script is linked with: common.lua, then
    workflow.lua.
    """
    folder = files("procession.store").joinpath("lua")
    return Preamble.parse(
        folder.joinpath("common.lua").read_text("utf-8")
        + "\n"
        + folder.joinpath("workflow.lua").read_text("utf-8")
    )


def _script(name: str, text: str, source: str) -> Script:
    sha = hashlib.sha1(text.encode("utf-8")).hexdigest()
    return Script(name, text, sha, source)


def _workflow_hook(name: str) -> bool:
    return name.startswith("flow.")


# Variants of a script linked without some helpers, for the calls that
# never reach them: push_plain is push.lua without the workflow hooks, for
# jobs with no batch and no parents (push.lua's header).
PLAIN_VARIANTS: dict[str, tuple[tuple[str, Callable[[str], bool]], ...]] = {
    "push": (("push_plain", _workflow_hook),),
}


def new_server_id() -> str:
    """
    A fresh id for a server process: 12 random hex digits.
    """
    return os.urandom(6).hex()


_TRANSIENT_REPLIES = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "READONLY")


class Store:
    """
    procession's state in Redis, as Deferred-returning operations.

    @param redis: a txredisapi connection (pool) handler.
    @param clock: gives the time written into jobs (C{seconds()}).
    @param reactor: runs the timeouts.
    @param namespace: the prefix of every key, so several deployments may
        share one Redis database.
    @param timeout: seconds to wait for Redis before a request fails with
        L{StoreUnavailable}.
    @param server_id: this server process's id in the server registry and
        in the jobs its worker connections hold (default: a fresh one).
    @param replicas_ack: when above 0, a push, an ack or a fail answers
        only once that many replicas have its writes (Redis C{WAIT}), so
        that it survives the loss of the primary; fewer in time fails it
        with L{StoreUnavailable} (see L{run_replicated}).
    @param fail_fast: fail a request at once with L{StoreUnavailable}
        while no connection to Redis is up (during a Sentinel failover),
        rather than queue it until Redis is back or the timeout passes.
    """

    def __init__(
        self,
        redis: Any,
        clock: IReactorTime,
        reactor: IReactorTime,
        namespace: str = "procession",
        timeout: float = 5.0,
        server_id: str | None = None,
        replicas_ack: int = 0,
        fail_fast: bool = False,
    ) -> None:
        self.redis = redis
        self.clock = clock
        self.reactor = reactor
        self.namespace = namespace
        self.timeout = timeout
        self.server_id = server_id or new_server_id()
        self.replicas_ack = replicas_ack
        # Whether Redis runs commands in the order they are sent: the server
        # uses one connection, except when it waits for replicas (WAIT holds
        # its connection) and its pool has several.
        self.in_order = replicas_ack <= 0
        self.fail_fast = fail_fast
        self.keys = Keys(namespace)
        self.channel = self.keys.channel
        self.registry = ServerRegistry(self)
        self.owners = OwnerRegistry(self)
        self.scripts = load_scripts()
        self._known_queues: set[str] = set()

    # -- plumbing

    def now_ms(self) -> int:
        """
        The current time in milliseconds, as written into jobs.
        """
        return int(self.clock.seconds() * 1000)

    def _guard(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        import txredisapi

        def unavailable(failure: Any) -> Any:
            if failure.check(defer.TimeoutError, defer.CancelledError):
                # A pool that can look for a new master (a Sentinel pool)
                # has a suspect method; look it up on the class, as a plain
                # txredisapi pool answers every attribute with a command.
                if getattr(type(self.redis), "suspect", None) is not None and (
                    failure.check(defer.TimeoutError)
                ):
                    self.redis.suspect()
                raise StoreUnavailable(
                    f"Redis did not answer within {self.timeout:g} s"
                )
            if failure.check(txredisapi.ConnectionError):
                raise StoreUnavailable(
                    f"Redis is unreachable: {failure.getErrorMessage()}"
                )
            # A Redis that is up but cannot serve yet (loading its AOF after
            # a restart, a busy script, a replica without its master): a
            # state to retry after, not a fault of the request.
            if failure.check(txredisapi.ResponseError) and str(
                failure.value
            ).startswith(_TRANSIENT_REPLIES):
                raise StoreUnavailable(
                    f"Redis cannot serve now: {failure.getErrorMessage()}"
                )
            return failure

        d.addTimeout(self.timeout, self.reactor)
        return d.addErrback(unavailable)

    def _send(self, *args: Any) -> defer.Deferred[Any]:
        """
        Send one command on the pool (or fail fast, see C{fail_fast}).
        """
        if self.fail_fast and not self.connected():
            return defer.fail(
                StoreUnavailable("no connection to Redis (it may be failing over)")
            )
        return send(self.redis, *args)

    def connected(self) -> bool:
        """
        Whether a connection to Redis is up now.
        """
        factory = pool_factory(self.redis)
        return factory is None or factory.size > 0

    def command(self, *args: Any) -> defer.Deferred[Any]:
        """
        Run one plain Redis command (reads only: state changes are scripts).
        """
        return self._guard(self._send(*args))

    def run(
        self,
        name: str,
        queue: str,
        args: Sequence[Any],
        more_keys: Sequence[str] = (),
    ) -> defer.Deferred[Any]:
        """
        Run one script on one queue's keys (C{more_keys}, when a script
        takes more, share the queue's hash tag).
        """
        return self.run_on(name, [self.keys.prefix(queue), *more_keys], args)

    def run_on(
        self, name: str, keys: Sequence[str], args: Sequence[Any]
    ) -> defer.Deferred[Any]:
        """
        Run one script on the keys given.
        """
        script = self.scripts[name]
        d = self._send("EVALSHA", script.sha, len(keys), *keys, *args)
        d.addErrback(self._noscript, script, keys, args)
        return self._guard(d)

    def _noscript(
        self, failure: Any, script: Script, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """
        Send the script's text when Redis does not have it (NOSCRIPT: a
        Redis restarted, failed over or flushed), else pass the failure on.
        """
        import txredisapi

        if not failure.check(txredisapi.ScriptDoesNotExist) and not (
            failure.check(txredisapi.ResponseError)
            and str(failure.value).startswith("NOSCRIPT")
        ):
            return failure
        log.info("Loading script {name} into Redis", name=script.name)
        return self.redis.execute_command("EVAL", script.text, len(keys), *keys, *args)

    def ping(self) -> defer.Deferred[Any]:
        """
        Check that Redis answers.
        """
        return self.command("PING")

    # -- queues

    def _register(self, queues: Iterable[str]) -> defer.Deferred[None]:
        new = set(queues) - self._known_queues
        if not new:
            return defer.succeed(None)

        def registered(_: Any) -> None:
            self._known_queues.update(new)

        return self.command("SADD", self.keys.queues, *sorted(new)).addCallback(
            registered
        )

    def known_queues(self) -> defer.Deferred[list[str]]:
        """
        The names of every queue that ever had a job, sorted.
        """

        def got(names: list[str]) -> list[str]:
            self._known_queues.update(names)
            return sorted(names)

        return self.command("SMEMBERS", self.keys.queues).addCallback(got)

    # -- the worker's side

    def push(self, jobs: Sequence[NewJob]) -> defer.Deferred[list[PushOutcome]]:
        """
        Store new jobs; a job whose id exists already (in any queue) is
        left untouched, and so is a job whose unique lock another job
        holds.

        Jobs of one queue are pushed by one script call, atomically.  When
        the jobs of one queue are stored and another queue's call fails,
        the error says which were (L{_partial}).

        @return: for each job, L{True} when it was created, L{False} when
            its queue had a job with its id, the name of the other queue
            that has one, or L{UniqueHeld} (the id of the job holding its
            unique lock).
        """
        queue = jobs[0].queue if jobs else None
        if queue in self._known_queues and all(
            job.queue == queue and not job.after for job in jobs
        ):
            # The hot path (a PUSH frame, or the pushes of one queue that
            # the coalescer gathered): one script call, no coroutine, as
            # below for one queue.
            now = self.now_ms()
            args = self._push_args(queue, now)
            for job in jobs:
                args.extend(_job_args(job, now, {}))
            return self.run_replicated(
                _push_script(jobs), queue, args, [self.keys.ids]
            ).addCallbacks(
                _one_pushed if len(jobs) == 1 else _all_pushed, _flow_refused
            )
        by_queue: dict[str, list[int]] = {}
        for index, job in enumerate(jobs):
            by_queue.setdefault(job.queue, []).append(index)

        async def push() -> list[PushOutcome]:
            await self._register(by_queue)
            parents = await self._parent_queues(jobs)
            created: list[PushOutcome | None] = [None] * len(jobs)
            now = self.now_ms()
            calls = []
            for queue, indexes in by_queue.items():
                args = self._push_args(queue, now)
                for i in indexes:
                    args.extend(_job_args(jobs[i], now, parents))
                call = self.run_replicated(
                    _push_script(jobs[i] for i in indexes),
                    queue,
                    args,
                    [self.keys.ids],
                ).addErrback(_flow_refused)
                calls.append((indexes, call))
            if len(calls) == 1:
                indexes, call = calls[0]
                outcomes = [(True, await call)]
            else:
                outcomes = await defer.DeferredList(
                    [call for _, call in calls], consumeErrors=True
                )
            failure = None
            for (indexes, _), (ok, flags) in zip(calls, outcomes):
                if not ok:
                    failure = failure or flags
                    continue
                for i, flag in zip(indexes, flags):
                    created[i] = _pushed_flag(flag)
            if failure is not None:
                raise _partial(failure, jobs, created)
            return created  # type: ignore[return-value]

        return defer.Deferred.fromCoroutine(push())

    def _push_args(self, queue: str, now: int) -> list[Any]:
        """
        push.lua's first arguments, for a push to C{queue}.
        """
        return [now, self.channel, queue, f"{queue} {self.server_id}"]

    async def _parent_queues(self, jobs: Sequence[NewJob]) -> dict[str, str]:
        """
        The queue of every job that C{jobs} run after.

        @raise InvalidJob: one of them does not exist.
        """
        wanted = {p for job in jobs for p in job.after}
        if not wanted:
            return {}
        found = {}
        for parent in sorted(wanted):
            try:
                found[parent] = await self.locate(parent)
            except JobNotFound:
                raise InvalidJob(
                    f"no job {parent!r} to run after", field="after", id=parent
                )
        return found

    def run_replicated(
        self,
        name: str,
        queue: str,
        args: Sequence[Any],
        more_keys: Sequence[str] = (),
    ) -> defer.Deferred[Any]:
        """
        L{run}, then, with C{replicas_ack} above 0, wait until that many
        replicas have the script's writes: for the state changes a client
        is told about and must not lose to a failover (pushes, acks,
        fails).

        @raise StoreUnavailable: fewer replicas confirmed within half of
            the timeout.  The script ran on the primary all the same.
        """
        if self.replicas_ack <= 0:
            return self.run(name, queue, args, more_keys)
        return self._guard(
            defer.Deferred.fromCoroutine(
                self._run_replicated(name, queue, args, more_keys)
            )
        )

    async def _run_replicated(
        self,
        name: str,
        queue: str,
        args: Sequence[Any],
        more_keys: Sequence[str] = (),
    ) -> Any:
        """
        The script, then C{WAIT} for C{replicas_ack} replicas, both on one
        connection (WAIT counts that connection's writes) in one round
        trip.
        """
        import txredisapi

        if self.fail_fast and not self.connected():
            raise StoreUnavailable("no connection to Redis (it may be failing over)")
        script = self.scripts[name]
        keys = [self.keys.prefix(queue), *more_keys]
        # Leave time for the answer within the request's timeout.
        wait_ms = max(1, int(self.timeout * 500))
        for verb, body in (("EVALSHA", script.sha), ("EVAL", script.text)):
            pipe = await self.redis.pipeline()
            pipe.execute_command(verb, body, len(keys), *keys, *args)
            pipe.execute_command("WAIT", self.replicas_ack, wait_ms)
            try:
                reply, acked = await pipe.execute_pipeline()
            except defer.FirstError as e:
                failure = e.subFailure
                if verb == "EVALSHA" and str(failure.value).startswith("NOSCRIPT"):
                    log.info("Loading script {name} into Redis", name=name)
                    continue
                failure.raiseException()
            if isinstance(reply, txredisapi.ResponseError):
                raise reply
            if int(acked) < self.replicas_ack:
                raise StoreUnavailable(
                    f"the {script.source} reached {int(acked)} of the {self.replicas_ack} "
                    f"replicas asked for within {wait_ms / 1000:g} s"
                )
            return reply
        raise AssertionError("unreachable")

    def claim(
        self,
        queue: str,
        leases: Sequence[tuple[str, str]],
        held: bool = False,
        holder: str | None = None,
    ) -> defer.Deferred[list[ClaimedJob]]:
        """
        Lease up to C{len(leases)} jobs from a queue.

        @param leases: per wanted job, the worker's name and the new lease.
        @param held: whether the leases live and die with connections to
            this server (TCP workers): the jobs are recorded as held here,
            and come back soon after this server dies (L{server_lost}).
        @param holder: with C{held}, who holds them instead of this server:
            a worker process that owns its leases across connections and
            servers (see L{procession.store.registry.OwnerRegistry.holder});
            they come back when it is lost.
        @return: the jobs leased, the i-th under the i-th lease,
            as L{ClaimedJobs}: its C{wait} says whether and how long the
            queue's limits hold claims back.
        """
        args: list[Any] = [self.now_ms(), self.server_id, holder or ""]
        for worker, lease in leases:
            args.append(worker)
            args.append(lease)

        def built(rows: list[Any]) -> ClaimedJobs:
            jobs = ClaimedJobs()
            if rows and not isinstance(rows[-1], list):
                # The limits throttled the claim (claim.lua).
                jobs.wait = int(rows.pop()) / 1000
            for i, row in enumerate(rows):
                jobs.append(ClaimedJob.from_claim(row, queue, leases[i][1]))
            return jobs

        more = [self.keys.held(queue, holder or self.server_id)] if held else []
        return self.run("claim", queue, args, more).addCallback(built)

    def ack(
        self, queue: str, items: Sequence[tuple[str, str, str]]
    ) -> defer.Deferred[list[str]]:
        """
        Complete jobs: C{items} are (id, lease, result JSON text or '').

        @return: per job C{'ok'}, C{'not_found'} or C{'lease_lost'}.
        """
        args: list[Any] = [self.now_ms()]
        for item in items:
            args.extend(item)
        return self.run_replicated("ack", queue, args)

    def fail(
        self,
        queue: str,
        items: Sequence[tuple[Any, ...]],
    ) -> defer.Deferred[list[tuple[str, int]]]:
        """
        Record failed attempts: C{items} are (id, lease, error JSON text,
        retry_in seconds or None for the default backoff, retry), and
        optionally a sixth member, C{discard}: when true and the job is
        not retried, it is deleted instead of kept as dead (a Faktory job
        with C{"retry": 0}).

        @return: per job (C{'retrying'}, run_at ms), (C{'dead'}, 0),
            (C{'discarded'}, 0) or an error code with 0.
        """
        args: list[Any] = [self.now_ms()]
        for job_id, lease, error, retry_in, retry, *rest in items:
            if rest and rest[0]:
                wait: float = -3
            elif not retry:
                wait = -2
            elif retry_in is None:
                wait = -1
            else:
                wait = retry_in
            args.extend([job_id, lease, error, wait, backoff_jitter()])
        return self.run_replicated("fail", queue, args, [self.keys.ids]).addCallback(
            lambda rows: [(status, int(at)) for status, at in rows]
        )

    def extend(
        self, queue: str, items: Sequence[tuple[str, str, float]]
    ) -> defer.Deferred[list[tuple[str, int]]]:
        """
        Extend leases: C{items} are (id, lease, seconds from now).

        @return: per job (C{'ok'}, new expiry ms) or (error code, 0).
        """
        args: list[Any] = [self.now_ms()]
        for item in items:
            args.extend(item)
        return self.run("extend", queue, args).addCallback(
            lambda rows: [(status, int(at)) for status, at in rows]
        )

    def release(
        self,
        queue: str,
        items: Sequence[tuple[str, str]],
        reason: str,
        delivered: bool = True,
    ) -> defer.Deferred[list[str]]:
        """
        Give leased jobs back to their queue at once.

        @param items: (id, lease) pairs.
        @param reason: why, recorded as the attempt's error.
        @param delivered: L{False} for jobs that never reached a worker:
            their attempt is not counted.
        """
        error = json.dumps(
            {"type": "WorkerLost", "message": reason, "at": self.now_ms()}
        )
        args: list[Any] = [
            self.now_ms(),
            self.channel,
            queue,
            error,
            "0" if delivered else "1",
        ]
        for item in items:
            args.extend(item)
        return self.run("release", queue, args)

    # -- upkeep

    def sweep(
        self,
        queue: str,
        limit: int,
        keep_completed: float,
        keep_dead: float,
        max_dead: int,
    ) -> defer.Deferred[tuple[int, int, int]]:
        """
        Promote due jobs, take back expired leases and apply retention on
        one queue.

        @return: (promoted, reclaimed, removed).
        """
        now = self.now_ms()
        error = json.dumps(
            {
                "type": "LeaseExpired",
                "message": "the worker held the job past its lease",
                "at": now,
            }
        )
        args = [
            now,
            self.channel,
            queue,
            limit,
            int(keep_completed * 1000),
            int(keep_dead * 1000),
            max_dead,
            error,
        ]

        def counted(reply: list[Any]) -> tuple[int, int, int]:
            promoted, reclaimed, removed = (int(n) for n in reply)
            return promoted, reclaimed, removed

        return self.run("sweep", queue, args, [self.keys.ids]).addCallback(counted)

    def server_lost(
        self,
        queue: str,
        server_id: str,
        reason: str,
        limit: int = 1000,
        error_type: str = "ServerLost",
    ) -> defer.Deferred[tuple[int, int]]:
        """
        Give back (the attempt counted) up to C{limit} jobs of a queue that
        worker connections of server C{server_id} held, because that server
        is gone (or that a lost lease owner held: C{server_id} is then its
        L{procession.store.registry.OwnerRegistry.holder}).

        @param reason: recorded as the attempt's error (type C{error_type}).
        @return: (jobs released, jobs still recorded as held there).
        """
        now = self.now_ms()
        error = json.dumps({"type": error_type, "message": reason, "at": now})
        return self.run(
            "server_lost",
            queue,
            [now, self.channel, queue, error, limit, server_id],
            [self.keys.held(queue, server_id)],
        ).addCallback(lambda r: (int(r[0]), int(r[1])))

    async def running_lease(self, job_id: str) -> tuple[str, str]:
        """
        The queue and current lease of a running job, found by its id alone
        (for protocols whose workers name a job only by its id).

        @raise JobNotFound: when no queue has the job.
        @raise LeaseLost: when the job is not running.
        """
        queue = await self.locate(job_id)
        state, lease = await self.command(
            "HMGET", self.keys.job(queue, job_id), "state", "lease"
        )
        if state != "running" or not lease:
            raise LeaseLost(f"job {job_id!r} is not running", id=job_id)
        return queue, lease

    async def last_error(self, queue: str, job_id: str) -> dict[str, Any] | None:
        """
        The newest error recorded for a job, or L{None}.
        """
        text = await self.command("LINDEX", self.keys.errors(queue, job_id), 0)
        if not text:
            return None
        try:
            error = json.loads(text)
        except ValueError:
            return None
        return error if isinstance(error, dict) else None

    # -- management

    def _checked(self, outcome: str, job_id: str) -> str:
        if outcome == "not_found":
            raise JobNotFound(f"no job {job_id!r}", id=job_id)
        if outcome == "illegal_state":
            raise IllegalState(
                f"job {job_id!r} is not in a state that allows this", id=job_id
            )
        if outcome == "lease_lost":
            raise LeaseLost(f"the lease on job {job_id!r} is lost", id=job_id)
        return outcome

    def cancel(self, queue: str, job_id: str) -> defer.Deferred[str]:
        """
        Cancel a job that has not finished; returns its former state.
        """
        return self.run("cancel", queue, [self.now_ms(), job_id]).addCallback(
            self._checked, job_id
        )

    def retry_now(self, queue: str, job_id: str) -> defer.Deferred[str]:
        """
        Queue a scheduled, retrying or dead job now; returns its former state.
        """
        return self.run(
            "retry", queue, [self.now_ms(), self.channel, queue, job_id]
        ).addCallback(self._checked, job_id)

    def kill(self, queue: str, job_id: str) -> defer.Deferred[str]:
        """
        Send a job that has not finished to dead; returns its former state.
        """
        return self.run("kill", queue, [self.now_ms(), job_id]).addCallback(
            self._checked, job_id
        )

    def delete(self, queue: str, job_id: str) -> defer.Deferred[str]:
        """
        Remove a job entirely; returns its former state.
        """
        return self.run("delete", queue, [job_id], [self.keys.ids]).addCallback(
            self._checked, job_id
        )

    async def purge(self, queue: str, state: str, batch: int = 1000) -> int:
        """
        Delete every job of one state from a queue, a batch per script call.

        @return: how many were deleted.
        """
        if state not in PURGEABLE:
            raise InvalidRequest(
                f"state must be one of {', '.join(PURGEABLE)}", field="state"
            )
        total = 0
        while True:
            n = int(await self.run("purge", queue, [state, batch], [self.keys.ids]))
            total += n
            if n < batch:
                return total

    async def _bulk(
        self, name: str, queue: str, state: str, args: list[Any], batch: int
    ) -> int:
        # Bounded by the set's size at the start: jobs that come back to
        # the state meanwhile (a retried job failing again at once) are not
        # chased round and round.
        size = int(await self.command("ZCARD", self.keys.state_set(queue, state)))
        total = 0
        while total < size:
            n = int(await self.run(name, queue, args + [min(batch, size - total)]))
            total += n
            if n == 0:
                break
        return total

    async def retry_all(self, queue: str, state: str, batch: int = 1000) -> int:
        """
        Queue every job of a queue in one state (scheduled, retrying, dead)
        now, a batch per script call.

        @return: how many were queued.
        """
        if state not in RETRYABLE:
            raise InvalidRequest(
                f"state must be one of {', '.join(RETRYABLE)}", field="state"
            )
        args: list[Any] = [self.now_ms(), self.channel, queue, state]
        return await self._bulk("retry_bulk", queue, state, args, batch)

    async def kill_all(self, queue: str, state: str, batch: int = 1000) -> int:
        """
        Send every job of a queue in one state (queued, scheduled, retrying)
        to dead, a batch per script call.

        @return: how many were killed.
        """
        if state not in KILLABLE:
            raise InvalidRequest(
                f"state must be one of {', '.join(KILLABLE)}", field="state"
            )
        return await self._bulk(
            "kill_bulk", queue, state, [self.now_ms(), state], batch
        )

    def set_paused(self, queue: str, paused: bool) -> defer.Deferred[bool]:
        """
        Pause or resume a queue; returns whether that changed anything.
        """
        action = "pause" if paused else "resume"

        async def go() -> bool:
            await self._register([queue])
            changed = await self.run("pause", queue, [action, self.channel, queue])
            return bool(int(changed))

        return defer.Deferred.fromCoroutine(go())

    # -- limits

    async def set_limits(self, queue: str, limits: QueueLimits) -> None:
        """
        Replace a queue's limits (docs/limits.rst), and wake its consumers.

        @raise IllegalState: when C{per_key} changes while more than
            L{MAX_REINDEX} jobs are queued (nothing changes then).
        """
        await self._register([queue])
        status, queued = await self.run(
            "set_limits",
            queue,
            [self.channel, queue, *limits.script_args(), MAX_REINDEX],
        )
        if status == "too_many_queued":
            raise IllegalState(
                f"per_key can change only while at most {MAX_REINDEX} jobs are "
                f"queued; queue {queue!r} has {int(queued)}",
                queue=queue,
                queued=int(queued),
            )

    async def limit_status(self, queue: str) -> LimitStatus:
        """
        A queue's limits and how they stand now, in one snapshot.
        """
        now = self.now_ms()
        reply = await self.run("limits", queue, [now])
        return LimitStatus.from_script(queue, now, reply)

    # -- workflows (docs/workflows.rst)

    def await_job(self, queue: str, job_id: str) -> defer.Deferred[str]:
        """
        Mark a job as awaited (its finish is then published as C{!done
        <id>} on the wake channel); its state now.

        @raise JobNotFound: when there is no such job.
        """
        return self.run("await", queue, [job_id]).addCallback(self._checked, job_id)

    def progress(
        self, queue: str, items: Sequence[tuple[str, str, float, str]]
    ) -> defer.Deferred[list[str]]:
        """
        Record how far jobs have got: C{items} are (id, lease, percent,
        message).

        @return: per job C{'ok'}, C{'not_found'}, C{'lease_lost'} or
            C{'cancelled'} (see L{lease_checked}).
        """
        args: list[Any] = [self.now_ms()]
        for job_id, lease, percent, message in items:
            args.extend([job_id, lease, repr(float(percent)), message])
        return self.run("progress", queue, args)

    @staticmethod
    def lease_checked(outcome: str, job_id: str) -> str:
        """
        The outcome of a lease holder's request (ack, fail, extend,
        progress), or its error: the job was cancelled (the worker should
        stop), the lease is lost, the job is gone.
        """
        if outcome == "cancelled":
            raise JobCancelled(f"job {job_id!r} was cancelled", id=job_id)
        if outcome == "lease_lost":
            raise LeaseLost(
                f"the lease on job {job_id!r} expired or was revoked", id=job_id
            )
        if outcome == "not_found":
            raise JobNotFound(f"no job {job_id!r}", id=job_id)
        return outcome

    async def batch_new(self, spec: BatchSpec, retention: float) -> None:
        """
        Create an open batch.

        @param retention: seconds to keep it once done.
        @raise BatchExists: when its id is taken.
        """
        outcome = await self.run_on(
            "batch",
            [self.keys.batch_prefix],
            [
                "new",
                self.now_ms(),
                spec.id,
                spec.description,
                BatchSpec.callback_value(spec.on_success),
                BatchSpec.callback_value(spec.on_complete),
                int(retention * 1000),
            ],
        )
        if outcome == "exists":
            raise BatchExists(f"batch {spec.id!r} exists", id=spec.id)
        for job in (spec.on_success, spec.on_complete):
            if job is not None:
                await self._register([job.queue])

    async def batch_change(self, batch_id: str, action: str) -> None:
        """
        Commit (C{action} 'commit') or reopen ('open') a batch.

        @raise BatchNotFound: no such batch.
        @raise IllegalState: reopening a batch that is done.
        """
        outcome = await self.run_on(
            "batch", [self.keys.batch_prefix], [action, self.now_ms(), batch_id]
        )
        if outcome == "not_found":
            raise BatchNotFound(f"no batch {batch_id!r}", id=batch_id)
        if outcome == "illegal_state":
            raise IllegalState(
                f"batch {batch_id!r} is done: it takes no more jobs", id=batch_id
            )

    async def get_batch(self, batch_id: str) -> dict[str, Any]:
        """
        A batch's state, counts and callbacks.

        @raise BatchNotFound: no such batch (or it has expired).
        """
        fields = _as_dict(await self.command("HGETALL", self.keys.batch(batch_id)))
        if not fields:
            raise BatchNotFound(f"no batch {batch_id!r}", id=batch_id)
        return batch_from_hash(fields)

    async def batch_jobs(self, batch_id: str) -> dict[str, str]:
        """
        The ids of a batch's jobs, with their queues.
        """
        return _as_dict(await self.command("HGETALL", self.keys.batch_jobs(batch_id)))

    async def list_batches(self, limit: int) -> list[dict[str, Any]]:
        """
        The newest batches, newest first.  Entries of expired batches are
        dropped from the index on the way.
        """
        index = self.keys.batches
        ids = await self.command("ZREVRANGE", index, 0, max(0, limit * 2))
        found: list[dict[str, Any]] = []
        for batch_id in ids:
            if len(found) >= limit:
                break
            try:
                found.append(await self.get_batch(batch_id))
            except BatchNotFound:
                await self.command("ZREM", index, batch_id)
        return found

    # -- reads

    async def get_job(self, queue: str, job_id: str) -> dict[str, Any]:
        """
        Everything about one job of a known queue.

        @raise JobNotFound: when there is no such job.
        """
        fields, errors = await defer.gatherResults(
            [
                self.command("HGETALL", self.keys.job(queue, job_id)),
                self.command("LRANGE", self.keys.errors(queue, job_id), 0, -1),
            ],
            consumeErrors=True,
        ).addErrback(lambda f: f.value.subFailure)
        if not fields:
            raise JobNotFound(f"no job {job_id!r}", id=job_id)
        return job_from_hash(_as_dict(fields), errors)

    async def locate(self, job_id: str) -> str:
        """
        The queue that holds a job.

        @raise JobNotFound: when no queue has it.
        """
        owner = await self.command("HGET", self.keys.ids, job_id)
        if owner and int(await self.command("EXISTS", self.keys.job(owner, job_id))):
            return owner
        # Jobs pushed before the id index existed are not in it.
        queues = await self.known_queues()
        found = await defer.gatherResults(
            [self.command("EXISTS", self.keys.job(q, job_id)) for q in queues],
            consumeErrors=True,
        ).addErrback(lambda f: f.value.subFailure)
        for queue, exists in zip(queues, found):
            if int(exists):
                return queue
        raise JobNotFound(f"no job {job_id!r}", id=job_id)

    async def summary(self, queue: str) -> QueueSummary:
        """
        One queue's sizes, pause, latency, totals and throughput, read in
        one snapshot.
        """
        now = self.now_ms()
        reply = await self.run(
            "summary", queue, [now, LATENCY_LEVELS, LATENCY_PER_LEVEL]
        )
        return QueueSummary.from_script(queue, now, reply)

    async def summaries(self) -> list[QueueSummary]:
        """
        The summary of every known queue, by name.
        """
        queues = await self.known_queues()
        return await defer.gatherResults(
            [defer.ensureDeferred(self.summary(q)) for q in queues],
            consumeErrors=True,
        ).addErrback(lambda f: f.value.subFailure)

    async def list_jobs(
        self,
        queue: str | None,
        after: str | None,
        limit: int,
        state: str | None = None,
        job_type: str | None = None,
        budget: int = SCAN_BUDGET,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """
        One page of jobs, newest first (by creation time, then id), of one
        queue or of every known queue.

        @param after: the position (see L{procession.core.listing}) to continue
            after; None starts with the newest job.
        @param budget: the most index entries to examine in all.
        @return: the jobs (without their error histories) and the position
            to continue after, or None when the listing is complete.
        """
        if state is not None and state not in STATES:
            raise InvalidRequest(f"unknown state {state!r}", field="state")
        queues = [queue] if queue is not None else await self.known_queues()
        if not queues:
            return [], None
        per_queue = max(limit, budget // len(queues))
        args = [after or "", limit, per_queue, state or "", job_type or ""]
        replies = await defer.gatherResults(
            [self.run("list", q, args) for q in queues], consumeErrors=True
        ).addErrback(lambda f: f.value.subFailure)
        pages = []
        for reply in replies:
            jobs = []
            for flat in reply[1:]:
                fields = _as_dict(flat)
                at = f"{int(fields['created_at']):015d}{fields['id']}"
                jobs.append((at, fields))
            pages.append(QueuePage(jobs, reply[0] or None))
        chosen, position = merge(pages, limit)
        listed = []
        for fields in chosen:
            job = job_from_hash(fields, [])
            del job["errors"]
            listed.append(job)
        return listed, position

    async def state_page(
        self,
        queue: str | None,
        state: str,
        after: tuple[str, str] | None,
        limit: int,
        job_type: str | None = None,
        budget: int = SCAN_BUDGET,
    ) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        """
        One page of the jobs in one state (queued, scheduled, retrying or
        dead), read from that state's own zset in its order: queued by
        priority then arrival (the order they will run), scheduled and
        retrying soonest first, dead most recent first.  Time in
        proportion to the page (and, with C{job_type}, to C{budget}),
        whatever else the queues hold.

        @return: the jobs (without their error histories) and the position
            to continue after (L{procession.core.listing.encode_state_cursor}),
            or None when the listing is complete.
        """
        if state not in STATE_PAGES:
            raise InvalidRequest(
                f"state must be one of {', '.join(STATE_PAGES)}", field="state"
            )
        queues = [queue] if queue is not None else await self.known_queues()
        if not queues:
            return [], None
        descending = state == "dead"
        per_queue = max(limit, budget // len(queues))
        score, member = after or ("", "")
        args = [
            STATE_SETS[state],
            "desc" if descending else "asc",
            score,
            member,
            limit,
            per_queue,
            state,
            job_type or "",
        ]
        replies = await defer.gatherResults(
            [self.run("state_page", q, args) for q in queues], consumeErrors=True
        ).addErrback(lambda f: f.value.subFailure)
        pages = []
        for reply in replies:
            rows = reply[2:]
            jobs = [
                ((rows[i], rows[i + 1]), _as_dict(rows[i + 2]))
                for i in range(0, len(rows), 3)
            ]
            stopped = (reply[0], reply[1]) if reply[0] != "" else None
            pages.append(StatePage(jobs, stopped))
        chosen, position = merge_states(pages, limit, descending)
        listed = []
        for fields in chosen:
            job = job_from_hash(fields, [])
            del job["errors"]
            listed.append(job)
        return listed, position

    async def history(
        self, queue: str, first_minute: int, periods: int, minutes_per_period: int
    ) -> list[tuple[int, int]]:
        """
        Processed and failed jobs of a queue per period of
        C{minutes_per_period} minutes, C{periods} of them from
        C{first_minute} (ms since the epoch // 60000), oldest first: the
        operator UI's charts.  The per-minute counters last two days.
        """
        reply = await self.run(
            "history", queue, [first_minute, periods, minutes_per_period]
        )
        values = [int(v) for v in reply]
        return list(zip(values[0::2], values[1::2]))

    async def queue_sizes(self, queue: str) -> dict[str, Any]:
        """
        How many jobs a queue holds in each state, whether it is paused and
        its processed/failed totals.
        """
        names = STATE_SET_NAMES
        replies = await defer.gatherResults(
            [self.command("ZCARD", self.keys.state_set(queue, n)) for n in names]
            + [
                self.command("EXISTS", self.keys.paused(queue)),
                self.command("HGETALL", self.keys.stats(queue)),
            ],
            consumeErrors=True,
        ).addErrback(lambda f: f.value.subFailure)
        sizes = {n: int(v) for n, v in zip(names, replies)}
        stats = _as_dict(replies[-1])
        return {
            "name": queue,
            "sizes": {s: sizes[s] for s in names if s not in ("done", "dependent")},
            "paused": bool(int(replies[-2])),
            "pushed": int(stats.get("pushed", 0)),
            "processed": int(stats.get("processed", 0)),
            "failed": int(stats.get("failed", 0)),
        }

    async def state_members(self, queue: str, state: str) -> list[str]:
        """
        The ids of every job of a queue in one state (for tests and small
        listings; the HTTP API pages).
        """
        if state not in STATES:
            raise InvalidRequest(f"unknown state {state!r}", field="state")
        members = await self.command("ZRANGE", self.keys.state_set(queue, state), 0, -1)
        if state == "queued":
            return [m[16:] for m in members]
        if STATE_SETS[state] != state:
            states = []
            for m in members:
                s = await self.command("HGET", self.keys.job(queue, m), "state")
                if s == state:
                    states.append(m)
            return states
        return list(members)


def _pushed_flag(flag: Any) -> PushOutcome:
    """
    One job's outcome in push.lua's reply.
    """
    if isinstance(flag, list) and len(flag) == 2:
        holder = flag[1]
        return UniqueHeld(holder.decode() if isinstance(holder, bytes) else str(holder))
    if isinstance(flag, list):
        [queue] = flag
        return queue.decode("utf-8") if isinstance(queue, bytes) else str(queue)
    return bool(int(flag))


def _partial(
    failure: Any, jobs: Sequence[NewJob], created: list[PushOutcome | None]
) -> Exception:
    """
    The error of a push of several queues of which some were stored: the
    failed call's error, telling which jobs are stored (C{created} as a
    push answers it, with C{null} for the jobs whose call failed: they may
    or may not be stored, and a push of them again is safe).
    """
    error = failure.value
    if not any(c is not None for c in created):
        return error
    if not isinstance(error, ProcessionError):
        log.failure("A push of a batch failed", failure)
        error = ProcessionError("the push failed")
    unknown = sum(1 for c in created if c is None)
    error.message = (
        f"{error.message}; {len(created) - unknown} of the batch's jobs were "
        f"stored and {unknown} may not be: push those again"
    )
    error.args = (error.message,)
    error.details["ids"] = [j.id for j in jobs]
    error.details["created"] = [c if c is None else c is True for c in created]
    return error


def batch_from_hash(fields: dict[str, str]) -> dict[str, Any]:
    """
    A batch's hash as the JSON object the APIs return.
    """
    batch_id = fields["id"]
    counts = {
        n: int(fields.get(n) or 0) for n in ("total", "pending", "completed", "dead")
    }
    callbacks: dict[str, Any] = {}
    for name, suffix, at in (
        ("on_success", "success", "success_at"),
        ("on_complete", "complete", "complete_at"),
    ):
        if fields.get(name):
            pushed = fields.get(at)
            callbacks[name] = {
                "id": f"{batch_id}:{suffix}",
                "pushed_at": format_time(int(pushed)) if pushed else None,
            }
        else:
            callbacks[name] = None
    return {
        "id": batch_id,
        "description": fields.get("description", ""),
        "state": fields.get("state"),
        **counts,
        "created_at": format_time(int(fields["created_at"])),
        "committed_at": format_time(int(fields["committed_at"]))
        if fields.get("committed_at")
        else None,
        "finished_at": format_time(int(fields["finished_at"]))
        if fields.get("finished_at")
        else None,
        "on_success": callbacks["on_success"],
        "on_complete": callbacks["on_complete"],
    }


def _flow_refused(failure: Any) -> Any:
    """
    Map the push script's refusals (C{PROCESSION <code> <id>}) to errors.
    """
    import txredisapi

    if failure.check(txredisapi.ResponseError):
        words = str(failure.value).split(" ")
        if len(words) == 3 and words[0] == "PROCESSION":
            code, target = words[1], words[2]
            if code == "batch_not_found":
                raise BatchNotFound(f"no batch {target!r}", id=target)
            if code == "batch_not_open":
                raise BatchNotOpen(
                    f"batch {target!r} takes no jobs now (commit ended it; "
                    "reopen it from one of its jobs)",
                    id=target,
                )
            if code == "parent_not_found":
                raise InvalidJob(
                    f"no job {target!r} to run after", field="after", id=target
                )
            if code == "too_many_children":
                raise InvalidJob(
                    f"job {target!r} has 10,000 jobs waiting for it already",
                    field="after",
                    id=target,
                    limit=10_000,
                )
    return failure


def _as_dict(reply: Any) -> dict[str, str]:
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2]))


def _job_args(job: NewJob, now: int, parents: dict[str, str]) -> list[Any]:
    """
    push.lua's arguments for one job (its header lists them).
    """
    return [*job.script_args(now), job.flow_value(parents), *job.lifetime_args()]


def _push_script(jobs: Iterable[NewJob]) -> str:
    """
    push.lua's plain variant when no job of C{jobs} is in a workflow, else
    push.lua.
    """
    return "push" if any(job.in_workflow for job in jobs) else "push_plain"


def _all_pushed(flags: list[Any]) -> list[PushOutcome]:
    """
    push.lua's reply, as L{Store.push} returns it.
    """
    return [_pushed_flag(flag) for flag in flags]


def _one_pushed(flags: list[Any]) -> list[PushOutcome]:
    """
    push.lua's reply for one job, as L{Store.push} returns it.
    """
    return [_pushed_flag(flags[0])]
