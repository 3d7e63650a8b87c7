"""
The benchmark's handlers for procession's worker runner:

    python -m procession.client.worker bench.jobs --concurrency 8

``noop`` does nothing (or, in the steady-latency workload, notes when it
ran: L{bench.record}).
"""

from __future__ import annotations

from typing import Any

from bench.record import received
from procession.client.worker import handler


@handler("noop")
def noop(*args: Any) -> None:
    """
    A no-op job.
    """
    received(args)
