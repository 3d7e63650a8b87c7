"""
Shared pieces for tests: a connected L{Store} on the test Redis.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from procession.core.job import NewJob, parse_submission
from procession.store.jobs import Store
from tests.redis import namespace, shared_redis


class FakeClock:
    """
    A settable clock for the times the store writes into jobs (the reactor
    still runs timeouts).
    """

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def seconds(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def connected_store(test: TestCase, clock: Any = None, **kwargs: Any) -> Store:
    """
    A L{Store} in a fresh namespace of the test Redis, disconnected when
    the test ends.
    """
    server = shared_redis()
    redis = await txredisapi.UnixConnectionPool(
        server.socket, poolsize=2, convertNumbers=False
    )
    test.addCleanup(redis.disconnect)
    kwargs.setdefault("namespace", namespace())
    return Store(redis, clock or FakeClock(), reactor, **kwargs)


def new_job(now_ms: int = 0, **fields: Any) -> NewJob:
    """
    A valid job with the given fields over sensible defaults.
    """
    fields.setdefault("type", "test")
    return parse_submission(fields, now_ms, 1 << 20)
