"""
Group commit: calls of one queue that arrive while one is on its way to
Redis wait for it and then go together, as one script call.  The
dispatcher coalesces pushes, acks, fails and extends through it.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.python.failure import Failure

from procession.net.transport import corked


class Coalescer:
    """
    Gathers calls into few calls, per queue: group commit.

    A call made while fewer than C{in_flight} calls of its queue are on
    their way goes at once, alone; calls made while that many are wait for
    one to return and then go together, as one.  So a lone push or ack
    costs no extra reactor turn, and under load each queue has a few script
    calls in flight (Redis runs one while the server handles another's
    answer) whose size follows the load.

    C{operation(queue, items)} must return a Deferred of one result per item.
    """

    def __init__(
        self,
        operation: Callable[[str, list[Any]], defer.Deferred[list[Any]]],
        in_flight: int = 1,
    ) -> None:
        self._operation = operation
        self._limit = in_flight
        # Per queue with calls in flight: how many, and the calls waiting.
        self._sent: dict[str, int] = {}
        self._waiting: dict[str, list[tuple[Any, defer.Deferred[Any]]]] = {}

    def __call__(self, queue: str, item: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        if self._sent.get(queue, 0) < self._limit:
            self._send(queue, [(item, d)])
        else:
            self._waiting.setdefault(queue, []).append((item, d))
        return d

    def idle(self, queue: str) -> bool:
        """
        Whether a call for C{queue} made now would go at once.
        """
        return self._sent.get(queue, 0) < self._limit

    def _send(self, queue: str, entries: list[tuple[Any, defer.Deferred[Any]]]) -> None:
        self._sent[queue] = self._sent.get(queue, 0) + 1
        try:
            sent = self._operation(queue, [item for item, _ in entries])
        except BaseException:
            sent = defer.fail()
        sent.addBoth(self._settle, queue, entries)

    def _settle(self, result: Any, queue: str, entries: list[Any]) -> None:
        # One callback for both outcomes: this is every push's and ack's path.
        try:
            if isinstance(result, Failure):
                self._fail(result, entries)
            else:
                self._answer(result, entries)
        finally:
            self._next(queue)

    def _next(self, queue: str) -> None:
        left = self._sent[queue] - 1
        if left:
            self._sent[queue] = left
        else:
            del self._sent[queue]
        waiting = self._waiting.pop(queue, None)
        if waiting:
            self._send(queue, waiting)

    @staticmethod
    def _answer(results: list[Any], entries: list[Any]) -> None:
        if len(entries) == 1:
            entries[0][1].callback(results[0])
            return
        # The replies to many calls, often on one connection, leave together.
        with corked():
            for (_, d), result in zip(entries, results):
                d.callback(result)

    @staticmethod
    def _fail(failure: Any, entries: list[Any]) -> None:
        for _, d in entries:
            d.errback(failure)
