"""
Checks of the Redis under the store at start-up: that it answers, and,
for an external Redis, whether its configuration could lose or evict
jobs.  Reads only.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from procession.store.jobs import Store


async def wait_until_answering(
    store: Store, clock: IReactorTime, timeout: float = 30.0
) -> None:
    """
    Ping Redis every half second until it answers.

    @raise RuntimeError: it did not within C{timeout} seconds.
    """
    deadline = clock.seconds() + timeout
    while True:
        try:
            await store.ping()
            return
        except Exception as e:
            if clock.seconds() > deadline:
                raise RuntimeError(f"Redis does not answer: {e}")
            await deferLater(clock, 0.5, lambda: None)


async def configuration_warnings(store: Store, replicas_ack: int) -> list[str]:
    """
    What in Redis's configuration could lose or evict jobs: an eviction
    policy, no persistence, fewer replicas than C{--replicas-ack} asks
    for.
    """
    try:
        policy: Any = await store.command("CONFIG", "GET", "maxmemory-policy")
        aof: Any = await store.command("CONFIG", "GET", "appendonly")
        save: Any = await store.command("CONFIG", "GET", "save")
    except Exception as e:
        return [
            f"Cannot read the Redis configuration ({e}): make sure "
            "maxmemory-policy is noeviction and persistence is on"
        ]
    warnings = []
    if list(policy)[-1] != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {list(policy)[-1]}: under memory "
            "pressure Redis may evict jobs. Set it to noeviction."
        )
    if list(aof)[-1] != "yes" and not list(save)[-1]:
        warnings.append(
            "Redis persists nothing (no AOF, no RDB snapshots): a Redis "
            "restart loses every job. Turn on appendonly."
        )
    if replicas_ack:
        try:
            info = await store.command("INFO", "replication")
        except Exception:
            return warnings
        replicas = 0
        for line in str(info).splitlines():
            if line.startswith("connected_slaves:"):
                replicas = int(line.partition(":")[2] or 0)
        if replicas < replicas_ack:
            warnings.append(
                f"--replicas-ack {replicas_ack}: Redis has {replicas} replicas "
                "connected now, so pushes fail until enough are"
            )
    return warnings
