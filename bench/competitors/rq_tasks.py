"""
The benchmark's RQ task: ``rq worker`` imports it by name.
"""

from __future__ import annotations

from typing import Any

from bench.record import received


def noop(*args: Any) -> None:
    """
    A no-op job (see L{bench.record} for the latency workload).
    """
    received(args)
