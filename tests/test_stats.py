"""
Tests for L{procession.core.stats}: the sliding-window throughput and the JSON
forms of queue summaries and totals.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from procession.core.stats import QueueSummary, Throughput, Totals

MINUTE = 60_000


class ThroughputTests(SynchronousTestCase):
    def test_window_weighs_the_oldest_minute(self) -> None:
        # 15 s into the current minute: 45 s of the previous one and of the
        # one 60 minutes ago fall inside the windows.
        now = 1000 * MINUTE + 15_000
        t = Throughput.from_buckets(now, [2, 1, 8, 4, 120, 0, 60, 4])
        self.assertEqual(t.processed_minute, 2 + 8 * 0.75)
        self.assertEqual(t.failed_minute, 1 + 4 * 0.75)
        self.assertEqual(t.processed_hour, (2 + 8 + 120 + 60 * 0.75) / 60)
        self.assertEqual(t.failed_hour, (1 + 4 + 0 + 4 * 0.75) / 60)

    def test_at_the_start_of_a_minute(self) -> None:
        t = Throughput.from_buckets(1000 * MINUTE, [0, 0, 6, 0, 0, 0, 60, 0])
        self.assertEqual(t.processed_minute, 6)
        self.assertEqual(t.processed_hour, 66 / 60)

    def test_json(self) -> None:
        t = Throughput.from_buckets(0, [1, 0, 0, 0, 1, 0, 0, 0])
        self.assertEqual(
            t.as_json(),
            {
                "processed": {"last_minute": 1, "last_hour": 0.033},
                "failed": {"last_minute": 0, "last_hour": 0},
            },
        )


def summary(name: str, reply: list[int], now: int = 10 * MINUTE) -> QueueSummary:
    return QueueSummary.from_script(name, now, [str(v) for v in reply])


class SummaryTests(SynchronousTestCase):
    def test_from_script(self) -> None:
        s = summary(
            "q", [3, 1, 2, 4, 5, 1, 20, 10, 6, 10 * MINUTE - 2500] + [0] * 8 + [2, 7]
        )
        self.assertEqual(
            s.sizes,
            {"queued": 3, "scheduled": 1, "retrying": 2, "running": 4, "dead": 5},
        )
        self.assertTrue(s.paused)
        self.assertEqual((s.pushed, s.processed, s.failed), (20, 10, 6))
        self.assertEqual(s.latency, 2.5)
        body = s.as_json()
        self.assertEqual(body["latency"], 2.5)
        self.assertEqual(body["oldest_enqueued_at"], "1970-01-01T00:09:57.500Z")
        self.assertEqual(
            body["totals"],
            {
                "pushed": 20,
                "processed": 10,
                "failed": 6,
                "expired": 2,
                "unique_collisions": 7,
            },
        )

    def test_nothing_queued(self) -> None:
        s = summary("q", [0] * 9 + [-1] + [0] * 8)
        self.assertEqual((s.latency, s.oldest_enqueued_at), (0.0, None))
        self.assertIsNone(s.as_json()["oldest_enqueued_at"])

    def test_totals(self) -> None:
        a = summary(
            "a",
            [1, 0, 0, 2, 0, 0, 5, 3, 1, 10 * MINUTE - 1000, 3, 1] + [0] * 6 + [1, 0],
        )
        b = summary(
            "b",
            [2, 1, 0, 0, 1, 1, 7, 4, 2, 10 * MINUTE - 4000, 1, 0] + [0] * 6 + [2, 5],
        )
        body = Totals.of([a, b], tcp_workers=2, http_workers=1).as_json()
        self.assertEqual(
            body["totals"],
            {
                "pushed": 12,
                "processed": 7,
                "failed": 3,
                "expired": 3,
                "unique_collisions": 5,
                "queued": 3,
                "scheduled": 1,
                "retrying": 0,
                "running": 2,
                "dead": 1,
            },
        )
        self.assertEqual(body["latency"], 4.0)
        self.assertEqual(body["queues"], 2)
        self.assertEqual(body["workers"], {"tcp": 2, "http": 1, "total": 3})
        self.assertEqual(body["throughput"]["processed"]["last_minute"], 4)

    def test_no_queues(self) -> None:
        body = Totals.of([], 0, 0).as_json()
        self.assertEqual(body["latency"], 0)
        self.assertEqual(body["totals"]["pushed"], 0)
