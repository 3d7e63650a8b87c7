"""
The workflow half of the queue service: awaiting a job's result, batches,
progress reports and telling workers that their job was cancelled
(docs/workflows.rst).  Front ends reach it as C{dispatcher.workflows}.

Every state change is a script of the store (batch counts and callbacks
are kept by the same scripts that ack and fail, workflow.lua); this module
keeps only what is live in this process: the callers waiting here for
jobs to finish.  A finished job that someone awaits is published on the
wake channel (C{!done <id>}), so a waiter on any server hears of an ack on
any other; C{!cancel <id>} tells every server that a running job was
cancelled, and the one whose worker holds it tells that worker.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from procession.core.errors import (
    InvalidRequest,
    JobNotFound,
)
from procession.core.job import BatchSpec
from procession.core.states import FINISHED
from procession.store.jobs import Store

log = Logger()

# The longest a caller may wait for a job in one request (TCP AWAIT).
MAX_AWAIT = 3600.0


def parse_await_wait(value: object, cap: float = MAX_AWAIT) -> float:
    """
    Check how long to wait for a job: a number of seconds from 0, cut to
    C{cap}.

    @raise InvalidRequest: when it is not such a number.
    """
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or value != value
        or value < 0
    ):
        raise InvalidRequest(
            "wait must be a number of seconds, 0 or more", field="wait"
        )
    return min(float(value), cap)


def parse_progress(body: dict[str, Any]) -> tuple[float, str]:
    """
    Check a progress report's C{progress} (0 to 100) and C{message}.

    @raise InvalidRequest: naming the field at fault.
    """
    percent = body.get("progress")
    if (
        not isinstance(percent, (int, float))
        or isinstance(percent, bool)
        or not 0 <= percent <= 100
    ):
        raise InvalidRequest(
            "progress must be a number from 0 to 100", field="progress"
        )
    message = body.get("message", "")
    if message is None:
        message = ""
    if not isinstance(message, str) or len(message) > 1024:
        raise InvalidRequest(
            "message must be a string of at most 1024 characters", field="message"
        )
    return float(percent), message


def outcome_of(job: dict[str, Any]) -> dict[str, Any]:
    """
    What a caller awaiting a job is told: its state, whether it finished,
    its result and its last error.
    """
    errors = job.get("errors") or []
    return {
        "id": job["id"],
        "queue": job["queue"],
        "state": job["state"],
        "finished": job["state"] in FINISHED,
        "result": job.get("result"),
        "error": errors[0] if errors else None,
        "finished_at": job.get("finished_at"),
    }


class Workflows:
    """
    Awaiting, batches and progress, for every front end.

    @param store: the job store.
    @param reactor: runs the waits' timeouts.
    @param keep_completed: how long a batch is kept once done (seconds),
        as completed jobs are.
    """

    def __init__(
        self, store: Store, reactor: IReactorTime, keep_completed: float = 3600.0
    ) -> None:
        self.store = store
        self.reactor = reactor
        self.keep_completed = keep_completed
        # job id -> the Deferreds of the callers waiting here for it
        self._waiters: dict[str, list[defer.Deferred[None]]] = {}
        # Called with the id of a running job that was cancelled (or
        # killed, or deleted): the TCP front end tells its worker.
        self.on_revoked: list[Callable[[str], None]] = []

    # -- pub/sub

    def heard(self, kind: str, job_id: str) -> None:
        """
        A message of the wake channel about a job: C{done} (it finished
        and someone awaits it) or C{cancel} (its lease was revoked).
        """
        if kind == "done":
            self._wake(job_id)
        elif kind == "cancel":
            for revoked in list(self.on_revoked):
                try:
                    revoked(job_id)
                except Exception:
                    log.failure(
                        "Telling a worker its job {id} was cancelled", id=job_id
                    )

    def reconnected(self) -> None:
        """
        The pub/sub connection came back: a finish may have been missed
        meanwhile, so every waiter looks again.
        """
        for job_id in list(self._waiters):
            self._wake(job_id)

    def _wake(self, job_id: str) -> None:
        for d in self._waiters.pop(job_id, []):
            if not d.called:
                d.callback(None)

    def waiting(self) -> int:
        """
        How many jobs callers of this process wait for.
        """
        return len(self._waiters)

    # -- awaiting

    async def await_job(self, job_id: str, wait: float) -> dict[str, Any]:
        """
        Wait until a job finishes, or C{wait} seconds; then its
        L{outcome_of}.

        @raise JobNotFound: when there is no such job.
        """
        store = self.store
        queue = await store.locate(job_id)
        woken: defer.Deferred[None] = defer.Deferred()
        # Listen first, then mark the job: a finish after the mark is
        # published, one before it shows in the state the mark returns.
        self._waiters.setdefault(job_id, []).append(woken)
        try:
            state = await store.await_job(queue, job_id)
            if state not in FINISHED and wait > 0:
                try:
                    await woken.addTimeout(wait, self.reactor)
                except defer.TimeoutError:
                    pass
            job = await store.get_job(queue, job_id)
        finally:
            self._forget(job_id, woken)
        return outcome_of(job)

    def _forget(self, job_id: str, woken: defer.Deferred[None]) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is None:
            return
        if woken in waiters:
            waiters.remove(woken)
        if not waiters:
            del self._waiters[job_id]

    # -- batches

    async def create_batch(self, spec: BatchSpec) -> dict[str, Any]:
        """
        Create an open batch; its description as L{get_batch} gives it.
        """
        await self.store.batch_new(spec, self.keep_completed)
        return await self.store.get_batch(spec.id)

    async def commit_batch(self, batch_id: str) -> dict[str, Any]:
        """
        Commit a batch: its callbacks fire once its jobs have finished.
        """
        await self.store.batch_change(batch_id, "commit")
        return await self.store.get_batch(batch_id)

    async def open_batch(self, batch_id: str) -> dict[str, Any]:
        """
        Reopen a committed batch that is not done, to add jobs to it.
        """
        await self.store.batch_change(batch_id, "open")
        return await self.store.get_batch(batch_id)

    async def get_batch(self, batch_id: str) -> dict[str, Any]:
        """
        A batch's state, counts and callbacks.
        """
        return await self.store.get_batch(batch_id)

    async def list_batches(self, limit: int = 100) -> list[dict[str, Any]]:
        """
        The newest batches.
        """
        return await self.store.list_batches(limit)

    async def batch_jobs(
        self, batch_id: str, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """
        The jobs of a batch (up to C{limit}), without their error histories.
        """
        await self.store.get_batch(batch_id)
        members = await self.store.batch_jobs(batch_id)
        chosen = sorted(members.items())[:limit]

        async def one(job_id: str, queue: str) -> dict[str, Any] | None:
            try:
                job = await self.store.get_job(queue, job_id)
            except JobNotFound:
                return None
            del job["errors"]
            return job

        found = await defer.gatherResults(
            [defer.ensureDeferred(one(i, q)) for i, q in chosen], consumeErrors=True
        ).addErrback(lambda f: f.value.subFailure)
        return [job for job in found if job is not None]

    # -- progress

    async def progress(
        self, queue: str, job_id: str, lease: str, percent: float, message: str
    ) -> None:
        """
        Record how far a job has got (only its lease holder may).

        @raise LeaseLost: the lease is no longer the caller's.
        @raise JobCancelled: the job was cancelled: stop.
        """
        [outcome] = await self.store.progress(
            queue, [(job_id, lease, percent, message)]
        )
        self.store.lease_checked(outcome, job_id)
