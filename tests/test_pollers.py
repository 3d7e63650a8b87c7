"""
Tests for L{procession.service.pollers}: the registry of recent HTTP pollers.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from procession.service.pollers import MAX_POLLERS, RECENT, Pollers


class FakePoll:
    def __init__(self, name: str, queues: tuple[str, ...] = ("default",)) -> None:
        self.name = name
        self.queues = queues
        self.quieted = False

    def quiet(self) -> None:
        self.quieted = True


class PollersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.pollers = Pollers(self.clock)

    def listed(self) -> dict[str, dict]:
        return {p["name"]: p for p in self.pollers.recent()}

    def test_shape(self) -> None:
        poll = FakePoll("w", ("high", "default"))
        self.pollers.poll_started(poll)
        self.assertEqual(
            self.pollers.recent(),
            [
                {
                    "kind": "http",
                    "name": "w",
                    "queues": ["high", "default"],
                    "since": "2027-01-15T08:00:00.000Z",
                    "last_seen": "2027-01-15T08:00:00.000Z",
                    "waiting": 1,
                    "jobs_in_hand": 0,
                    "jobs": [],
                }
            ],
        )

    def test_jobs_in_hand(self) -> None:
        poll = FakePoll("w")
        self.pollers.poll_started(poll)
        self.pollers.handed_out("w", "j1", "default", "l1@default", 10)
        self.pollers.poll_ended(poll)
        self.pollers.poll_started(poll)
        self.pollers.handed_out("w", "j2", "default", "l2@default", 10)
        self.pollers.poll_ended(poll)
        listed = self.listed()["w"]
        self.assertEqual((listed["waiting"], listed["jobs_in_hand"]), (0, 2))
        self.assertEqual(
            listed["jobs"],
            [{"id": "j1", "queue": "default"}, {"id": "j2", "queue": "default"}],
        )
        self.assertEqual(self.pollers.worker_of("l1@default"), "w")
        self.pollers.lease_ended("l1@default")
        self.assertEqual(self.listed()["w"]["jobs_in_hand"], 1)
        self.assertIsNone(self.pollers.worker_of("l1@default"))
        # An unacked job stops counting when its lease would have expired,
        # unless extended.
        self.pollers.lease_extended("l2@default", self.clock.seconds() + 30)
        self.clock.advance(20)
        self.assertEqual(self.listed()["w"]["jobs_in_hand"], 1)
        self.clock.advance(11)
        self.assertEqual(self.listed()["w"]["jobs_in_hand"], 0)
        self.assertIsNone(self.pollers.worker_of("l2@default"))

    def test_forgotten_when_idle(self) -> None:
        poll = FakePoll("w")
        self.pollers.poll_started(poll)
        self.clock.advance(RECENT * 3)
        self.assertIn("w", self.listed())  # still waiting
        self.pollers.poll_ended(poll)
        self.clock.advance(RECENT - 1)
        self.assertIn("w", self.listed())
        self.clock.advance(1)
        self.assertEqual(self.pollers.recent(), [])

    def test_concurrent_polls_of_one_worker(self) -> None:
        a, b = FakePoll("w"), FakePoll("w")
        self.pollers.poll_started(a)
        self.pollers.poll_started(b)
        self.assertEqual(self.listed()["w"]["waiting"], 2)
        self.pollers.poll_ended(a)
        self.pollers.poll_ended(a)
        self.assertEqual(self.listed()["w"]["waiting"], 1)

    def test_quiet(self) -> None:
        polls = [FakePoll("a"), FakePoll("b")]
        for poll in polls:
            self.pollers.poll_started(poll)
        self.pollers.poll_ended(polls[1])
        self.pollers.quiet()
        self.assertEqual([p.quieted for p in polls], [True, False])

    def test_bounded(self) -> None:
        waiting = FakePoll("waiting")
        self.pollers.poll_started(waiting)
        for i in range(MAX_POLLERS + 10):
            poll = FakePoll(f"w{i}")
            self.pollers.poll_started(poll)
            self.pollers.poll_ended(poll)
            self.clock.advance(0.001)
        listed = self.listed()
        self.assertEqual(len(listed), MAX_POLLERS)
        self.assertIn("waiting", listed)
        self.assertIn(f"w{MAX_POLLERS + 9}", listed)
