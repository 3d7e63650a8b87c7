"""
Tests for L{procession.service.coalescer}: group commit per queue,
synchronous.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from procession.service.coalescer import Coalescer


class CoalescerTests(SynchronousTestCase):
    """
    L{Coalescer}: group commit per queue.
    """

    def setUp(self) -> None:
        self.calls: list[tuple[str, list[Any], defer.Deferred[list[Any]]]] = []

        def operation(queue: str, items: list[Any]) -> defer.Deferred[list[Any]]:
            d: defer.Deferred[list[Any]] = defer.Deferred()
            self.calls.append((queue, items, d))
            return d

        self.coalescer = Coalescer(operation, in_flight=2)

    def answer(self, index: int) -> None:
        _, items, d = self.calls[index]
        d.callback([f"done {item}" for item in items])

    def test_calls_go_at_once_up_to_the_limit_then_together(self) -> None:
        first = self.coalescer("q", 1)
        second = self.coalescer("q", 2)
        self.assertTrue(self.coalescer.idle("other"))
        self.assertFalse(self.coalescer.idle("q"))
        later = [self.coalescer("q", n) for n in (3, 4, 5)]
        elsewhere = self.coalescer("other", 6)
        self.assertEqual(
            [(q, items) for q, items, _ in self.calls],
            [("q", [1]), ("q", [2]), ("other", [6])],
        )
        self.answer(0)
        self.assertEqual(self.successResultOf(first), "done 1")
        # The waiting calls went as one, behind the one still in flight.
        self.assertEqual(self.calls[3][:2], ("q", [3, 4, 5]))
        self.assertNoResult(later[0])
        self.answer(3)
        self.assertEqual(
            [self.successResultOf(d) for d in later], ["done 3", "done 4", "done 5"]
        )
        self.answer(1)
        self.answer(2)
        self.assertEqual(self.successResultOf(second), "done 2")
        self.assertEqual(self.successResultOf(elsewhere), "done 6")
        self.assertTrue(self.coalescer.idle("q"))

    def test_a_failure_reaches_every_caller_of_its_call(self) -> None:
        first = self.coalescer("q", 1)
        self.coalescer("q", 2)
        waiting = [self.coalescer("q", n) for n in (3, 4)]
        self.calls[0][2].errback(RuntimeError("down"))
        self.assertEqual(str(self.failureResultOf(first, RuntimeError).value), "down")
        self.calls[2][2].errback(RuntimeError("still down"))
        for d in waiting:
            self.assertEqual(
                str(self.failureResultOf(d, RuntimeError).value), "still down"
            )
        self.answer(1)
        self.assertTrue(self.coalescer.idle("q"))
