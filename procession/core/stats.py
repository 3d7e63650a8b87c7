"""
Statistics as value objects: one queue's summary and the totals over
every queue, with their JSON forms, built from what the store reads.

Pure: no I/O.  The store gathers the numbers (C{summary.lua}); the HTTP
API and the metrics render them.
"""

from __future__ import annotations

from typing import Any, Sequence

from attrs import frozen

from procession.core.job import format_time
from procession.core.states import SIZED_STATES


MINUTE_MS = 60_000


@frozen
class Throughput:
    """
    Jobs processed and failed per minute, over the last minute and averaged
    over the last hour.

    The store counts jobs in clock-aligned minute buckets; a sliding window
    takes the whole buckets inside it and the share of the oldest, partial
    bucket that falls within it (the usual sliding-window estimate: exact
    when the jobs in that bucket were spread evenly over it).
    """

    processed_minute: float
    failed_minute: float
    processed_hour: float
    failed_hour: float

    @classmethod
    def from_buckets(cls, now_ms: int, buckets: Sequence[int]) -> "Throughput":
        """
        From summary.lua's eight bucket numbers: processed and failed in the
        current minute, the one before, the 58 before that summed, and the
        minute 60 minutes ago.
        """
        cur_p, cur_f, prev_p, prev_f, mid_p, mid_f, edge_p, edge_f = buckets
        # The share of the oldest bucket still inside the window.
        share = 1 - (now_ms % MINUTE_MS) / MINUTE_MS
        return cls(
            processed_minute=cur_p + prev_p * share,
            failed_minute=cur_f + prev_f * share,
            processed_hour=(cur_p + prev_p + mid_p + edge_p * share) / 60,
            failed_hour=(cur_f + prev_f + mid_f + edge_f * share) / 60,
        )

    def __add__(self, other: "Throughput") -> "Throughput":
        return Throughput(
            self.processed_minute + other.processed_minute,
            self.failed_minute + other.failed_minute,
            self.processed_hour + other.processed_hour,
            self.failed_hour + other.failed_hour,
        )

    def as_json(self) -> dict[str, Any]:
        """
        C{{"processed": {"last_minute": .., "last_hour": ..}, "failed": ...}}
        in jobs per minute.
        """
        return {
            "processed": {
                "last_minute": round(self.processed_minute, 3),
                "last_hour": round(self.processed_hour, 3),
            },
            "failed": {
                "last_minute": round(self.failed_minute, 3),
                "last_hour": round(self.failed_hour, 3),
            },
        }


NO_THROUGHPUT = Throughput(0.0, 0.0, 0.0, 0.0)


@frozen
class QueueSummary:
    """
    One queue at one moment: its sizes by state, whether it is paused, its
    latency (seconds the oldest queued job has waited), its totals since it
    began and its throughput.
    """

    name: str
    sizes: dict[str, int]
    paused: bool
    pushed: int
    processed: int
    failed: int
    oldest_enqueued_at: int | None
    latency: float
    throughput: Throughput
    expired: int = 0
    unique_collisions: int = 0

    @classmethod
    def from_script(
        cls, name: str, now_ms: int, reply: Sequence[Any]
    ) -> "QueueSummary":
        """
        From summary.lua's reply.
        """
        values = [int(v) for v in reply]
        sizes = dict(zip(SIZED_STATES, values[0:5]))
        oldest = values[9] if values[9] >= 0 else None
        latency = 0.0 if oldest is None else max(0, now_ms - oldest) / 1000
        return cls(
            name=name,
            sizes=sizes,
            paused=bool(values[5]),
            pushed=values[6],
            processed=values[7],
            failed=values[8],
            oldest_enqueued_at=oldest,
            latency=latency,
            throughput=Throughput.from_buckets(now_ms, values[10:18]),
            expired=values[18] if len(values) > 18 else 0,
            unique_collisions=values[19] if len(values) > 19 else 0,
        )

    def as_json(self) -> dict[str, Any]:
        """
        The queue as the HTTP API shows it.
        """
        return {
            "name": self.name,
            "paused": self.paused,
            "sizes": dict(self.sizes),
            "latency": round(self.latency, 3),
            "oldest_enqueued_at": format_time(self.oldest_enqueued_at),
            "totals": {
                "pushed": self.pushed,
                "processed": self.processed,
                "failed": self.failed,
                "expired": self.expired,
                "unique_collisions": self.unique_collisions,
            },
            "throughput": self.throughput.as_json(),
        }


@frozen
class Totals:
    """
    Every queue's numbers added up, and the workers connected to this
    server.
    """

    queues: int
    sizes: dict[str, int]
    pushed: int
    processed: int
    failed: int
    latency: float
    throughput: Throughput
    tcp_workers: int
    http_workers: int
    expired: int = 0
    unique_collisions: int = 0

    @classmethod
    def of(
        cls, summaries: Sequence[QueueSummary], tcp_workers: int, http_workers: int
    ) -> "Totals":
        """
        Add up queue summaries.
        """
        throughput = NO_THROUGHPUT
        for s in summaries:
            throughput = throughput + s.throughput
        return cls(
            queues=len(summaries),
            sizes={
                state: sum(s.sizes[state] for s in summaries) for state in SIZED_STATES
            },
            pushed=sum(s.pushed for s in summaries),
            processed=sum(s.processed for s in summaries),
            failed=sum(s.failed for s in summaries),
            latency=max((s.latency for s in summaries), default=0.0),
            throughput=throughput,
            tcp_workers=tcp_workers,
            http_workers=http_workers,
            expired=sum(s.expired for s in summaries),
            unique_collisions=sum(s.unique_collisions for s in summaries),
        )

    def as_json(self) -> dict[str, Any]:
        """
        The totals as C{GET /api/v1/stats} shows them.
        """
        totals: dict[str, int] = {
            "pushed": self.pushed,
            "processed": self.processed,
            "failed": self.failed,
            "expired": self.expired,
            "unique_collisions": self.unique_collisions,
        }
        totals.update(self.sizes)
        return {
            "totals": totals,
            "throughput": self.throughput.as_json(),
            "latency": round(self.latency, 3),
            "queues": self.queues,
            "workers": {
                "tcp": self.tcp_workers,
                "http": self.http_workers,
                "total": self.tcp_workers + self.http_workers,
            },
        }
