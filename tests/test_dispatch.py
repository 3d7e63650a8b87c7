"""
Tests for L{procession.service.dispatcher} and L{procession.service.cluster}'s
part in a cluster of servers: the heartbeat, when a server may declare others lost, releasing what a lost
server held, the heartbeat's description, and claims that serve TCP workers
and HTTP polls in turns.  Synchronous, against a fake store and a
L{task.Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from procession.service.cluster import MAX_DESCRIBED_JOBS
from procession.service.dispatcher import Dispatcher
from procession.core.errors import StoreUnavailable


class FakeStore:
    """
    The parts of L{procession.store.jobs.Store} the dispatcher's upkeep uses,
    in memory.
    """

    def __init__(self) -> None:
        self.server_id = "me"
        self.queues = ["q1", "q2"]
        self.beats: list[str] = []
        self.down = False
        self.lost: list[str] = []
        self.held: dict[tuple[str, str], int] = {}
        self.forgotten: list[str] = []
        self.deregistered = False
        self.claims: list[tuple[str, int, bool]] = []
        self.claim_results: list[defer.Deferred[Any]] = []

    # Coalesced operations the dispatcher binds at start; unused here.
    push = ack = fail = extend = None

    @property
    def registry(self) -> "FakeStore":
        # The server registry's part (L{procession.store.registry}).
        return self

    def heartbeat(self, description: str, ttl: float) -> defer.Deferred[int]:
        if self.down:
            return defer.fail(StoreUnavailable("Redis is down"))
        self.beats.append(description)
        return defer.succeed(0)

    def known_queues(self) -> defer.Deferred[list[str]]:
        return defer.succeed(list(self.queues))

    def sweep(self, *args: Any) -> defer.Deferred[tuple[int, int, int]]:
        return defer.succeed((0, 0, 0))

    def lost_servers(self, timeout: float) -> defer.Deferred[list[str]]:
        return defer.succeed(list(self.lost))

    def server_lost(
        self, queue: str, server_id: str, reason: str, limit: int = 1000
    ) -> defer.Deferred[tuple[int, int]]:
        n = self.held.pop((queue, server_id), 0)
        return defer.succeed((n, 0))

    def forget_server(self, server_id: str, timeout: float) -> defer.Deferred[bool]:
        self.forgotten.append(server_id)
        self.lost.remove(server_id)
        return defer.succeed(True)

    def deregister(self) -> defer.Deferred[None]:
        self.deregistered = True
        return defer.succeed(None)

    def claim(self, queue: str, slots: Any, held: bool = False) -> defer.Deferred[Any]:
        self.claims.append((queue, len(slots), held))
        d: defer.Deferred[Any] = defer.Deferred()
        self.claim_results.append(d)
        return d


class Consumer:
    def __init__(self, name: str, queues: list[str], room: int, bound: bool) -> None:
        self.name = name
        self.queues = queues
        self._room = room
        self.connection_bound = bound

    def room(self) -> int:
        return self._room

    def deliver(self, job: Any) -> bool:
        return True


class HeartbeatTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.store = FakeStore()
        self.dispatcher = Dispatcher(
            self.store, self.clock, sweep_interval=1.0, server_timeout=4.0
        )  # type: ignore[arg-type]

    def beat(self) -> None:
        self.successResultOf(defer.ensureDeferred(self.dispatcher.cluster.heartbeat()))

    def sweep(self) -> None:
        self.successResultOf(defer.ensureDeferred(self.dispatcher.sweep()))

    def test_judges_only_after_a_whole_timeout_of_heartbeats(self) -> None:
        """
        A server declares others lost only once its own heartbeats have
        gone through for a whole server timeout: after an outage of Redis,
        the others need that long to beat again.
        """
        self.assertFalse(self.dispatcher.cluster.judges_servers())
        for _ in range(4):
            self.beat()
            self.assertFalse(self.dispatcher.cluster.judges_servers())
            self.clock.advance(1)
        self.beat()
        self.assertTrue(self.dispatcher.cluster.judges_servers())
        # Redis goes away: judging stops, and starts again only a whole
        # timeout after the heartbeats come back.
        self.store.down = True
        self.beat()
        self.assertFalse(self.dispatcher.cluster.judges_servers())
        self.store.down = False
        for _ in range(4):
            self.clock.advance(1)
            self.beat()
            self.assertFalse(self.dispatcher.cluster.judges_servers())
        self.clock.advance(1)
        self.beat()
        self.assertTrue(self.dispatcher.cluster.judges_servers())
        # A long gap between heartbeats (a stalled process) counts as a
        # break too.
        self.clock.advance(3)
        self.beat()
        self.assertFalse(self.dispatcher.cluster.judges_servers())

    def test_lost_servers_jobs_come_back(self) -> None:
        """
        The sweep releases, queue by queue, what a lost server held, then
        forgets it; never this server itself, and nothing before it judges.
        """
        self.store.lost = ["dead", "me"]
        self.store.held = {("q1", "dead"): 3, ("q2", "dead"): 2, ("q1", "me"): 1}
        self.beat()
        self.sweep()
        self.assertEqual(self.store.forgotten, [])
        self.assertEqual(len(self.store.held), 3)
        for _ in range(4):
            self.clock.advance(1)
            self.beat()
        self.sweep()
        self.assertEqual(self.store.forgotten, ["dead"])
        self.assertEqual(self.store.held, {("q1", "me"): 1})

    def test_leave(self) -> None:
        """
        A clean stop releases what is still recorded as held here and
        leaves the registry.
        """
        self.store.held = {("q1", "me"): 2}
        self.dispatcher.start()
        self.successResultOf(defer.ensureDeferred(self.dispatcher.cluster.leave()))
        self.dispatcher.stop_sweeping()
        self.assertEqual(self.store.held, {})
        self.assertTrue(self.store.deregistered)
        beats = len(self.store.beats)
        self.clock.advance(10)
        self.assertEqual(len(self.store.beats), beats)

    def test_description(self) -> None:
        """
        The heartbeat describes the server, with what the front ends add,
        each worker's jobs cut short.
        """
        jobs = [{"id": str(i), "queue": "q1"} for i in range(MAX_DESCRIBED_JOBS + 5)]
        self.dispatcher.cluster.describe = lambda: {
            "listening": {"tcp": "127.0.0.1:7000"},
            "workers": [{"kind": "tcp", "name": "w#1", "jobs": jobs}],
        }
        described = self.dispatcher.cluster.description()
        self.assertEqual(described["listening"], {"tcp": "127.0.0.1:7000"})
        self.assertEqual(len(described["workers"][0]["jobs"]), MAX_DESCRIBED_JOBS)
        self.assertEqual(
            sorted(described), ["host", "listening", "pid", "started_at", "workers"]
        )


class TurnTests(SynchronousTestCase):
    def test_bound_and_unbound_consumers_take_turns(self) -> None:
        """
        When TCP workers (whose jobs this server holds) and HTTP polls
        (whose jobs it does not) wait on one queue, each claim serves one
        kind, and a claim that fills every slot is followed by one for the
        other kind.
        """
        clock = task.Clock()
        store = FakeStore()
        dispatcher = Dispatcher(store, clock)  # type: ignore[arg-type]
        tcp = Consumer("tcp#1", ["q"], 2, True)
        poll = Consumer("poller", ["q"], 1, False)
        dispatcher.add_consumer(tcp)
        dispatcher.add_consumer(poll)
        clock.advance(0)
        self.assertEqual(len(store.claims), 1)
        first = store.claims[0]
        # Filled: the next claim is the other kind's.
        store.claim_results[0].callback([_job(i) for i in range(first[1])])
        clock.advance(0)
        self.assertEqual(len(store.claims), 2)
        self.assertNotEqual(store.claims[1][2], first[2])
        self.assertEqual(
            {(n, held) for _, n, held in store.claims}, {(2, True), (1, False)}
        )
        # Short: the queue ran dry for both kinds, no further claim.
        store.claim_results[1].callback([])
        clock.advance(0)
        self.assertEqual(len(store.claims), 2)


def _job(i: int) -> Any:
    class Job:
        id = str(i)
        lease = f"l{i}"

    return Job()
