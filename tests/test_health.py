"""
Tests for L{procession.store.health}: the start-up checks of the Redis
under the store, against the test Redis (AOF on, noeviction, no replicas).
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from procession.store import health
from tests.support import connected_store


class HealthTests(TestCase):
    async def test_a_safe_configuration(self) -> None:
        """
        With AOF on and noeviction nothing is said, unless replicas are
        asked for and none is connected.
        """
        store = await connected_store(self)
        await health.wait_until_answering(store, reactor)
        self.assertEqual(await health.configuration_warnings(store, 0), [])
        [warning] = await health.configuration_warnings(store, 2)
        self.assertIn("--replicas-ack 2: Redis has 0 replicas", warning)

    async def test_an_evicting_redis(self) -> None:
        """
        An eviction policy other than noeviction is warned of.
        """
        store = await connected_store(self)
        await store.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        self.addCleanup(
            store.command, "CONFIG", "SET", "maxmemory-policy", "noeviction"
        )
        [warning] = await health.configuration_warnings(store, 0)
        self.assertIn("maxmemory-policy is allkeys-lru", warning)

    async def test_no_answer(self) -> None:
        """
        A Redis that does not answer is asked again every half second, and
        start-up gives up with a clear error once the timeout has passed.
        """
        store = await connected_store(self)
        clock = Clock()
        pings = []

        async def down() -> None:
            pings.append(clock.seconds())
            raise ConnectionError("refused")

        store.ping = down  # type: ignore[method-assign, assignment]
        waiting = defer.ensureDeferred(
            health.wait_until_answering(store, clock, timeout=1)
        )
        for _ in range(3):
            self.assertNoResult(waiting)
            clock.advance(0.5)
        failure = self.failureResultOf(waiting, RuntimeError)
        self.assertIn("Redis does not answer: refused", str(failure.value))
        self.assertEqual(pings, [0.0, 0.5, 1.0, 1.5])
