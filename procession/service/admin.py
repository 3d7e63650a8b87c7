"""
The operator's side of the queue service: queue, job and worker
management and statistics, for the management API, the UI and
C{/metrics}.

The front ends call this, never the store: every state change is one of
the store's scripts, reached through one method here.  Workers connected
to this server are known from the front ends that hold their connections
(L{WorkerSource}, registered by start-up wiring) and from the HTTP
pollers the dispatcher has seen; those of the other servers from their
heartbeats (L{procession.service.cluster}).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from twisted.internet import defer

from procession.core.errors import (
    InvalidRequest,
    JobNotFound,
    QueueNotFound,
    WorkerNotFound,
)
from procession.core.job import JOB_ID
from procession.core.queue_limits import LimitStatus, QueueLimits
from procession.core.stats import QueueSummary, Totals
from procession.service.dispatcher import Dispatcher

#: The single-job actions, by name (see L{procession.core.states.JOB_ACTIONS}).
JOB_ACTION_NAMES = ("retry", "kill", "cancel", "delete")

#: The bulk actions over one state of a queue, by name.
BULK_ACTION_NAMES = ("retry", "kill", "delete")


class WorkerSource(Protocol):
    """
    A front end that holds worker connections to this server (the TCP
    listener's factory).
    """

    def describe_workers(self) -> list[dict[str, Any]]:
        """
        Its connected workers, as the workers listing shows them.
        """

    def quiet_workers(self, name: str) -> list[str]:
        """
        Send C{QUIET} to the connection named C{name} (C{worker#N}), or
        else to every connection of worker C{name}.

        @return: the names of the connections told (none: no such worker).
        """


class Admin:
    """
    Management and statistics over the queue service.

    @param dispatcher: the queue service (its store, cluster and pollers).
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self._store = dispatcher.store
        self._sources: list[WorkerSource] = []

    # -- this server

    @property
    def server_id(self) -> str:
        """
        This server's id in the registry.
        """
        return self._store.server_id

    def seconds(self) -> float:
        """
        The store's clock, in seconds (as written into jobs).
        """
        return float(self._store.clock.seconds())

    def now_ms(self) -> int:
        """
        The store's clock, in milliseconds.
        """
        return self._store.now_ms()

    async def redis_round_trip(self) -> float:
        """
        Ping Redis; the seconds the answer took.
        """
        clock = self._store.reactor
        started = clock.seconds()
        await self._store.ping()
        return float(clock.seconds() - started)

    def redis_info(self) -> defer.Deferred[str]:
        """
        Redis's C{INFO} text (for the dashboard).
        """
        return self._store.command("INFO")

    # -- queues

    def known_queues(self) -> defer.Deferred[list[str]]:
        """
        The names of every queue that ever had a job, sorted.
        """
        return self._store.known_queues()

    async def known_queue(self, name: str) -> str:
        """
        C{name}, when it is a known queue.

        @raise QueueNotFound: when it is not.
        """
        if name not in await self._store.known_queues():
            raise QueueNotFound(f"no queue {name!r}", queue=name)
        return name

    async def summaries(self) -> list[QueueSummary]:
        """
        The summary of every known queue, by name.
        """
        return await self._store.summaries()

    async def summary(self, name: str) -> QueueSummary:
        """
        One queue's summary.
        """
        return await self._store.summary(name)

    async def totals(self) -> tuple[list[QueueSummary], Totals]:
        """
        Every queue's summary and the totals over them, with the workers
        of the whole cluster counted (an HTTP worker polling several
        servers once).
        """
        summaries = await self._store.summaries()
        tcp, http = worker_counts(await self.cluster_workers())
        return summaries, Totals.of(summaries, tcp, http)

    def set_paused(self, name: str, paused: bool) -> defer.Deferred[bool]:
        """
        Pause or resume a queue; whether that changed anything.
        """
        return self._store.set_paused(name, paused)

    async def set_limits(self, name: str, limits: QueueLimits) -> LimitStatus:
        """
        Replace a queue's limits (docs/limits.rst); they take effect at the
        next claim of every server, and the queue's consumers are woken.

        @return: how the new limits stand.
        """
        await self._store.set_limits(name, limits)
        self._dispatcher.wake(name)
        return await self._store.limit_status(name)

    async def limit_status(self, name: str) -> LimitStatus:
        """
        A queue's limits and how they stand now.
        """
        return await self._store.limit_status(name)

    async def limit_statuses(self, names: Sequence[str]) -> list[LimitStatus]:
        """
        The limit status of each queue of C{names} that has, or once had,
        limits (those whose claims were never held back and that have none
        now are left out), by name.
        """
        statuses = await defer.gatherResults(
            [defer.ensureDeferred(self._store.limit_status(n)) for n in names],
            consumeErrors=True,
        ).addErrback(lambda f: f.value.subFailure)
        return [
            s
            for s in statuses
            if not s.limits.unlimited or s.throttled_ms or s.throttled
        ]

    async def bulk(self, action: str, name: str, state: str) -> int:
        """
        Apply C{action} (one of L{BULK_ACTION_NAMES}) to every job of queue
        C{name} in C{state}, a batch per script call.

        @return: how many jobs changed.
        """
        if action not in BULK_ACTION_NAMES:
            raise InvalidRequest(
                f"action must be one of {', '.join(BULK_ACTION_NAMES)}",
                field="action",
            )
        store = self._store
        change = {
            "retry": store.retry_all,
            "kill": store.kill_all,
            "delete": store.purge,
        }[action]
        return await change(name, state)

    async def history(
        self, queue: str, first_minute: int, periods: int, minutes_per_period: int
    ) -> list[tuple[int, int]]:
        """
        Processed and failed jobs of a queue per period (the charts'
        figures; see L{procession.store.jobs.Store.history}).
        """
        return await self._store.history(
            queue, first_minute, periods, minutes_per_period
        )

    # -- jobs

    async def list_jobs(
        self,
        queue: str | None,
        after: str | None,
        limit: int,
        state: str | None = None,
        job_type: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """
        One page of jobs, newest first, and the position to continue after
        (see L{procession.store.jobs.Store.list_jobs}).
        """
        return await self._store.list_jobs(
            queue, after, limit, state=state, job_type=job_type
        )

    async def state_page(
        self,
        queue: str | None,
        state: str,
        after: tuple[str, str] | None,
        limit: int,
        job_type: str | None = None,
    ) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        """
        One page of the jobs in one state, in that state's order (see
        L{procession.store.jobs.Store.state_page}).
        """
        return await self._store.state_page(
            queue, state, after, limit, job_type=job_type
        )

    async def locate(self, job_id: str) -> str:
        """
        The queue that holds a job.

        @raise JobNotFound: when no queue has it (or C{job_id} cannot be an id).
        """
        if not JOB_ID.match(job_id):
            raise JobNotFound(f"no job {job_id!r}", id=job_id)
        return await self._store.locate(job_id)

    async def get_job(self, job_id: str, queue: str | None = None) -> dict[str, Any]:
        """
        Everything about a job, with its error history; looked up in every
        queue unless C{queue} is given.

        @raise JobNotFound: when there is no such job.
        """
        if queue is None:
            queue = await self.locate(job_id)
        return await self._store.get_job(queue, job_id)

    async def running(self, queue: str) -> list[str]:
        """
        The ids of a queue's running jobs.
        """
        return await self._store.state_members(queue, "running")

    async def members(self, queue: str, state: str) -> list[str]:
        """
        The ids of a queue's jobs in C{state}.
        """
        return await self._store.state_members(queue, state)

    async def job_action(
        self, action: str, job_id: str, queue: str | None = None
    ) -> tuple[str, str]:
        """
        Apply C{action} (one of L{JOB_ACTION_NAMES}) to one job, found in
        every queue unless C{queue} is given.

        @return: the job's queue and its state before.
        @raise JobNotFound: no such job.
        @raise IllegalState: its state does not allow C{action}.
        """
        if action not in JOB_ACTION_NAMES:
            raise InvalidRequest(
                f"action must be one of {', '.join(JOB_ACTION_NAMES)}",
                field="action",
            )
        if queue is None:
            queue = await self.locate(job_id)
        store = self._store
        change = {
            "retry": store.retry_now,
            "kill": store.kill,
            "cancel": store.cancel,
            "delete": store.delete,
        }[action]
        return queue, await change(queue, job_id)

    # -- workers

    def add_worker_source(self, source: WorkerSource) -> None:
        """
        Count C{source}'s connected workers among this server's.
        """
        self._sources.append(source)

    def tcp_workers(self) -> list[dict[str, Any]]:
        """
        The workers connected to this server's front ends, by connection.
        """
        return [w for s in self._sources for w in s.describe_workers()]

    def http_workers(self) -> list[dict[str, Any]]:
        """
        The HTTP workers of this server: every one seen in the last minute.
        """
        return [{"kind": "http", **p} for p in self._dispatcher.recent_pollers()]

    def local_workers(self) -> list[dict[str, Any]]:
        """
        This server's workers, as the workers listing shows them (and this
        server's heartbeat describes them to the others).
        """
        return self.tcp_workers() + self.http_workers()

    async def cluster_workers(self) -> list[dict[str, Any]]:
        """
        The workers of every live server, each with its C{server}.
        """
        return await self._dispatcher.cluster.workers(self.local_workers())

    def quiet_worker(self, name: str) -> list[str]:
        """
        Send C{QUIET} to a worker connection of this server (C{name#N}), or
        to every connection of a worker name.

        @return: the connections told.
        @raise WorkerNotFound: when none is connected here.
        """
        told = [n for s in self._sources for n in s.quiet_workers(name)]
        if not told:
            raise WorkerNotFound(f"no TCP worker {name!r} on this server", name=name)
        return told


def worker_counts(workers: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """
    How many TCP worker connections and distinct HTTP workers are listed:
    an HTTP worker behind a load balancer polls several servers, and counts
    once.  A Faktory worker process (per server it is connected to) counts
    as TCP, as /metrics counts it.
    """
    tcp = sum(1 for w in workers if w.get("kind") in ("tcp", "faktory"))
    http = len({w.get("name") for w in workers if w.get("kind") == "http"})
    return tcp, http
