"""
The benchmark's Dramatiq actor, on the Redis broker named by
C{BENCH_BROKER}:

    dramatiq bench.competitors.dramatiq_tasks --processes 1 --threads 8
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.record import received

broker = RedisBroker(url=os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/0"))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="default", max_retries=0)
def noop(*args: Any) -> None:
    """
    A no-op job (see L{bench.record} for the latency workload).
    """
    received(args)
