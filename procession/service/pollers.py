"""
What one server process knows of its HTTP pollers: the workers that take
jobs with C{GET /api/v1/jobs/next} rather than over a TCP connection.

An HTTP worker has no connection to list, so this keeps, per worker name,
its queues, when it was first and last seen, how many of its polls are
open now and the leases handed to it here that it has not acked or failed
here yet (until they expire).  The dispatcher owns one registry; the
workers listing reads it.  It also lets the dispatcher end every open poll
when the server stops.

Memory only, and approximate by nature: a worker's ack may reach another
server process, and an operator may revoke a lease; such a job counts as
in hand until its lease would have expired.  Nothing here decides the fate
of a job: the store does.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from attrs import define, field, frozen
from twisted.internet.interfaces import IReactorTime

from procession.core.job import format_time

# A poller stays listed this long after its last poll ends (when it holds
# no job); a live one polls at least every --poll-timeout seconds.
RECENT = 60.0
# The most pollers remembered: names are the clients' choice, so the
# registry must not grow without bound.
MAX_POLLERS = 10_000


class OpenPoll(Protocol):
    """
    A long-poll waiting for a job (see L{procession.http.worker_api.Poll}).
    """

    name: str
    queues: Sequence[str]

    def quiet(self) -> None:
        """
        The server stops: answer now, without a job.
        """


@frozen
class Handed:
    """
    A job handed to an HTTP worker: which, and until when (seconds).
    """

    id: str
    queue: str
    expires_at: float


@define
class PollerRecord:
    """
    One HTTP worker, by the name it polls with.

    @ivar leases: lease token -> the job handed to this worker here under
        it and not yet finished here.
    """

    name: str
    queues: tuple[str, ...]
    since: float
    last_seen: float
    waiting: int = 0
    leases: dict[str, Handed] = field(factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """
        The record as L{Pollers.recent} lists it.
        """
        jobs = sorted((h.id, h.queue) for h in self.leases.values())
        return {
            "kind": "http",
            "name": self.name,
            "queues": list(self.queues),
            "since": format_time(int(self.since * 1000)),
            "last_seen": format_time(int(self.last_seen * 1000)),
            "waiting": self.waiting,
            "jobs_in_hand": len(jobs),
            "jobs": [{"id": i, "queue": q} for i, q in jobs],
        }


class Pollers:
    """
    The registry of recent HTTP pollers of this process.

    @param clock: gives the time (C{seconds()}).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._records: dict[str, PollerRecord] = {}
        self._owners: dict[str, str] = {}
        self._open: set[OpenPoll] = set()

    def poll_started(self, poll: OpenPoll) -> None:
        """
        A poll opens.
        """
        now = self._clock.seconds()
        record = self._records.get(poll.name)
        if record is None:
            if len(self._records) >= MAX_POLLERS:
                self._prune(now)
                if len(self._records) >= MAX_POLLERS:
                    self._evict_one()
            record = self._records[poll.name] = PollerRecord(
                poll.name, tuple(poll.queues), now, now
            )
        record.queues = tuple(poll.queues)
        record.last_seen = now
        record.waiting += 1
        self._open.add(poll)

    def poll_ended(self, poll: OpenPoll) -> None:
        """
        A poll answered (with a job or without) or its client went away.
        """
        if poll not in self._open:
            return
        self._open.discard(poll)
        record = self._records.get(poll.name)
        if record is not None:
            record.waiting -= 1
            record.last_seen = self._clock.seconds()

    def handed_out(
        self, name: str, job_id: str, queue: str, lease: str, timeout: float
    ) -> None:
        """
        Worker C{name} took a job under C{lease} for C{timeout} seconds.
        """
        record = self._records.get(name)
        if record is None:
            return
        expires_at = self._clock.seconds() + timeout
        record.leases[lease] = Handed(job_id, queue, expires_at)
        self._owners[lease] = name

    def worker_of(self, lease: str) -> str | None:
        """
        The name of the worker a lease was handed to here, if known.
        """
        return self._owners.get(lease)

    def lease_extended(self, lease: str, expires_at: float) -> None:
        """
        A lease handed out here now expires at C{expires_at} (seconds).
        """
        record = self._records.get(self._owners.get(lease, ""))
        handed = record.leases.get(lease) if record is not None else None
        if record is not None and handed is not None:
            record.leases[lease] = Handed(handed.id, handed.queue, expires_at)

    def lease_ended(self, lease: str) -> None:
        """
        A lease handed out here is over (acked, failed, or lost).
        """
        name = self._owners.pop(lease, None)
        record = self._records.get(name or "")
        if record is not None:
            record.leases.pop(lease, None)
            record.last_seen = self._clock.seconds()

    def quiet(self) -> None:
        """
        End every open poll: the server stops handing out jobs.
        """
        for poll in list(self._open):
            poll.quiet()

    def recent(self) -> list[dict[str, Any]]:
        """
        Every HTTP worker seen in the last L{RECENT} seconds, waiting now,
        or holding a job, by name.
        """
        self._prune(self._clock.seconds())
        return [self._records[name].as_dict() for name in sorted(self._records)]

    def _prune(self, now: float) -> None:
        for name, record in list(self._records.items()):
            for lease, handed in list(record.leases.items()):
                if handed.expires_at <= now:
                    del record.leases[lease]
                    self._owners.pop(lease, None)
            if (
                not record.waiting
                and not record.leases
                and record.last_seen + RECENT <= now
            ):
                del self._records[name]

    def _evict_one(self) -> None:
        idle = [r for r in self._records.values() if not r.waiting]
        if not idle:
            return
        oldest = min(idle, key=lambda r: r.last_seen)
        for lease in oldest.leases:
            self._owners.pop(lease, None)
        del self._records[oldest.name]
