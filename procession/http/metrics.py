"""
Prometheus metrics: a collector that renders a snapshot of procession's
numbers in the Prometheus text format.

prometheus_client collectors are synchronous while procession's numbers live
in Redis, so the C{/metrics} route gathers a L{Snapshot} first (through the
store) and only then renders it.  Each server has its own registry, never
the process-global one, so that the library's default process collectors
and other code's metrics do not leak in and tests can run several servers.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from attrs import frozen
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from procession.core.queue_limits import LimitStatus
from procession.core.states import SIZED_STATES
from procession.core.stats import QueueSummary

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


@frozen
class Snapshot:
    """
    The numbers one scrape shows.

    @ivar redis_rtt: seconds a PING to Redis took.
    """

    queues: Sequence[QueueSummary]
    tcp_workers: int
    http_workers: int
    redis_rtt: float
    #: The limits of the queues that have or had some (docs/limits.rst).
    limits: Sequence[LimitStatus] = ()
    #: The periodic entries, as the API describes them (docs/periodic.rst).
    periodic: Sequence[dict[str, Any]] = ()


class SnapshotCollector(Collector):
    """
    Yields the metrics of the last L{Snapshot} it was given.
    """

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        if snapshot is None:
            return
        counters = [
            ("pushed", "Jobs pushed, by queue."),
            ("processed", "Jobs completed, by queue."),
            ("failed", "Failed attempts, by queue."),
            ("expired", "Jobs that expired before a worker took them, by queue."),
            (
                "unique_collisions",
                "Pushes refused because another job held their unique lock, by queue.",
            ),
        ]
        for name, text in counters:
            family = CounterMetricFamily(
                f"procession_jobs_{name}", text, labels=["queue"]
            )
            for q in snapshot.queues:
                family.add_metric([q.name], getattr(q, name))
            yield family
        sizes = GaugeMetricFamily(
            "procession_queue_jobs",
            "Jobs in a queue, by state.",
            labels=["queue", "state"],
        )
        latency = GaugeMetricFamily(
            "procession_queue_latency_seconds",
            "How long the oldest queued job of a queue has waited.",
            labels=["queue"],
        )
        paused = GaugeMetricFamily(
            "procession_queue_paused",
            "1 while a queue is paused.",
            labels=["queue"],
        )
        for q in snapshot.queues:
            for state in SIZED_STATES:
                sizes.add_metric([q.name, state], q.sizes[state])
            latency.add_metric([q.name], q.latency)
            paused.add_metric([q.name], 1 if q.paused else 0)
        yield sizes
        yield latency
        yield paused
        throttled = CounterMetricFamily(
            "procession_queue_throttled_seconds",
            "How long claims of a queue have been held back by its limits.",
            labels=["queue"],
        )
        held = GaugeMetricFamily(
            "procession_queue_throttled",
            "1 while the limits of a queue hold its claims back.",
            labels=["queue"],
        )
        concurrency = GaugeMetricFamily(
            "procession_queue_limit_concurrency",
            "A queue's concurrency limit (per key with per_key).",
            labels=["queue"],
        )
        for status in snapshot.limits:
            throttled.add_metric([status.queue], status.throttled_ms / 1000)
            held.add_metric([status.queue], 1 if status.throttled else 0)
            if status.limits.concurrency is not None:
                concurrency.add_metric([status.queue], status.limits.concurrency)
        yield throttled
        yield held
        yield concurrency
        runs = CounterMetricFamily(
            "procession_periodic_ticks",
            "Ticks of a periodic entry that pushed a job, by entry.",
            labels=["entry"],
        )
        skipped = CounterMetricFamily(
            "procession_periodic_ticks_skipped",
            "Missed ticks of a periodic entry that ran no job (its policy), by entry.",
            labels=["entry"],
        )
        entry_paused = GaugeMetricFamily(
            "procession_periodic_paused",
            "1 while a periodic entry is paused.",
            labels=["entry"],
        )
        for entry in snapshot.periodic:
            runs.add_metric([entry["name"]], entry["runs"])
            skipped.add_metric([entry["name"]], entry["skipped"])
            entry_paused.add_metric([entry["name"]], 1 if entry["paused"] else 0)
        yield runs
        yield skipped
        yield entry_paused
        workers = GaugeMetricFamily(
            "procession_workers_connected",
            "Workers connected to this server: TCP connections and recent "
            "HTTP pollers.",
            labels=["kind"],
        )
        workers.add_metric(["tcp"], snapshot.tcp_workers)
        workers.add_metric(["http"], snapshot.http_workers)
        yield workers
        yield GaugeMetricFamily(
            "procession_redis_rtt_seconds",
            "How long a PING to Redis took during this scrape.",
            value=snapshot.redis_rtt,
        )


class Metrics:
    """
    One server's registry and collector.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = SnapshotCollector()
        self.registry.register(self.collector)

    def render(self, snapshot: Snapshot) -> bytes:
        """
        The Prometheus text of C{snapshot}.
        """
        # Synchronous from here on: nothing can swap the snapshot between
        # setting it and rendering it.
        self.collector.snapshot = snapshot
        return generate_latest(self.registry)
