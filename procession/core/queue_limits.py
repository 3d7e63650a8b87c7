"""
A queue's limits (docs/limits.rst): how many of its jobs may run at once
and how many may start per window of time, for the queue as a whole or for
each C{limit_key} of its jobs apart.

This module is pure: the limits' JSON form, their checks, the values the
store's scripts take and give back, and how they stand now.  The claim
script (procession/store/lua/claim.lua) enforces them.
"""

from __future__ import annotations

import math
from typing import Any, Sequence, TypeGuard

from attrs import frozen

from procession.core.errors import InvalidRequest
from procession.core.job import format_time

#: The highest concurrency limit.
MAX_CONCURRENCY = 1_000_000
#: The most starts one rate window may allow (the window keeps one entry
#: per start, so this bounds its memory).
MAX_RATE = 100_000
#: The longest rate window, seconds.
MAX_PER = 86_400.0
#: The shortest rate window, seconds (the store counts in milliseconds).
MIN_PER = 0.001
#: Switching C{per_key} indexes (or drops the index of) the queued jobs in
#: one script call: refused above this many queued jobs.
MAX_REINDEX = 100_000

LIMIT_FIELDS = frozenset({"concurrency", "rate", "per_key"})
RATE_FIELDS = frozenset({"limit", "per"})


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


@frozen
class Rate:
    """
    At most C{limit} jobs started in any C{per} seconds.
    """

    limit: int
    per: float

    @property
    def per_ms(self) -> int:
        return max(1, round(self.per * 1000))

    def as_json(self) -> dict[str, Any]:
        return {"limit": self.limit, "per": self.per}


@frozen
class QueueLimits:
    """
    The limits of one queue; no limit at all by default.

    @ivar per_key: the limits apply to each C{limit_key} of the queue's
        jobs apart (jobs without one share the key C{""}), and keys are
        served in turn.
    """

    concurrency: int | None = None
    rate: Rate | None = None
    per_key: bool = False

    @property
    def unlimited(self) -> bool:
        return self.concurrency is None and self.rate is None

    def script_args(self) -> list[str]:
        """
        ARGV[3..6] of set_limits.lua.
        """
        rate = self.rate
        return [
            "" if self.concurrency is None else str(self.concurrency),
            "" if rate is None else str(rate.limit),
            "" if rate is None else str(rate.per_ms),
            "1" if self.per_key else "0",
        ]

    def as_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "rate": None if self.rate is None else self.rate.as_json(),
            "per_key": self.per_key,
        }


def parse_limits(obj: object) -> QueueLimits:
    """
    Check the JSON of C{PUT /api/v1/queues/{name}/limits}: an object with
    any of C{concurrency} (an integer, or null for none), C{rate}
    (C{{"limit": N, "per": seconds}}, or null) and C{per_key} (a boolean).
    What it leaves out is not limited.

    @raise InvalidRequest: naming the field at fault.
    """
    if not isinstance(obj, dict):
        raise InvalidRequest("limits must be a JSON object", field=None)
    unknown = sorted(set(obj) - LIMIT_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}", field=unknown[0])
    concurrency = obj.get("concurrency")
    if concurrency is not None and (
        not _is_int(concurrency) or not 1 <= concurrency <= MAX_CONCURRENCY
    ):
        raise InvalidRequest(
            f"concurrency must be an integer from 1 to {MAX_CONCURRENCY}, or null",
            field="concurrency",
        )
    rate = obj.get("rate")
    parsed_rate = None
    if rate is not None:
        if not isinstance(rate, dict):
            raise InvalidRequest(
                'rate must be an object such as {"limit": 10, "per": 1}, or null',
                field="rate",
            )
        unknown = sorted(set(rate) - RATE_FIELDS)
        if unknown:
            raise InvalidRequest(
                f"unknown field {'rate.' + unknown[0]!r}", field="rate." + unknown[0]
            )
        limit = rate.get("limit")
        if not _is_int(limit) or not 1 <= limit <= MAX_RATE:
            raise InvalidRequest(
                f"rate.limit must be an integer from 1 to {MAX_RATE}",
                field="rate.limit",
            )
        per = rate.get("per", 1.0)
        if (
            not isinstance(per, (int, float))
            or isinstance(per, bool)
            or not math.isfinite(per)
            or not MIN_PER <= per <= MAX_PER
        ):
            raise InvalidRequest(
                f"rate.per must be a number of seconds from {MIN_PER} to "
                f"{int(MAX_PER)}",
                field="rate.per",
            )
        parsed_rate = Rate(limit, float(per))
    per_key = obj.get("per_key", False)
    if not isinstance(per_key, bool):
        raise InvalidRequest("per_key must be true or false", field="per_key")
    return QueueLimits(concurrency, parsed_rate, per_key)


@frozen
class LimitStatus:
    """
    A queue's limits and how they stand at C{now} (ms), as limits.lua
    reads them in one snapshot.

    @ivar running: the queue's running jobs (the slots in use, for a
        queue-wide concurrency limit).
    @ivar in_window: jobs started in the current rate window (queue-wide
        rate only).
    @ivar next_slot: when the full rate window opens a slot (ms), or None.
    @ivar throttled_since: since when claims are held back (ms), or None.
    @ivar throttled_ms: how long claims have been held back in all,
        including now.
    @ivar keys: limit keys with queued jobs (per_key only).
    @ivar keys_waiting: keys of those held back by their rate.
    """

    queue: str
    now: int
    limits: QueueLimits
    running: int
    in_window: int
    next_slot: int | None
    throttled_since: int | None
    throttled_ms: int
    keys: int
    keys_waiting: int
    paused: bool

    @classmethod
    def from_script(cls, queue: str, now: int, reply: Sequence[Any]) -> "LimitStatus":
        concurrency, rate, per, per_key = reply[:4]
        limits = QueueLimits(
            int(concurrency) if concurrency not in ("", None) else None,
            Rate(int(rate), int(per) / 1000) if rate not in ("", None) else None,
            bool(int(per_key)),
        )
        (
            running,
            in_window,
            next_slot,
            since,
            total,
            keys,
            waiting,
            paused,
        ) = (int(v) for v in reply[4:12])
        throttled_ms = total + (max(0, now - since) if since >= 0 else 0)
        return cls(
            queue,
            now,
            limits,
            running,
            in_window,
            next_slot if next_slot >= 0 else None,
            since if since >= 0 else None,
            throttled_ms,
            keys,
            waiting,
            bool(paused),
        )

    @property
    def throttled(self) -> bool:
        return self.throttled_since is not None

    def as_json(self) -> dict[str, Any]:
        """
        The body of C{GET /api/v1/queues/{name}/limits}.
        """
        body: dict[str, Any] = {"queue": self.queue}
        body.update(self.limits.as_json())
        body["status"] = {
            "running": self.running,
            "started_in_window": self.in_window,
            "throttled": self.throttled,
            "throttled_since": format_time(self.throttled_since),
            "throttled_seconds": self.throttled_ms / 1000,
            "next_slot": format_time(self.next_slot),
            "keys": self.keys,
            "keys_waiting": self.keys_waiting,
            "paused": self.paused,
        }
        return body
