"""
The paged job listing's cursors and its merge across queues.

Pure: no I/O.  A position in the listing is a member of a queue's
C{created} index (C{<15-digit created_at ms><id>}, see common.lua): every
queue's index uses the same form, so one position is meaningful in all of
them, and listing newest first means walking members in descending order.
Clients see a position as an opaque cursor.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Sequence

from attrs import frozen

from procession.core.errors import InvalidRequest

_POSITION = re.compile(r"[0-9]{15}[\x21-\x7e]{1,128}\Z")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# The most index entries one request examines (over all queues): a filter
# that matches few jobs gets a short page and a cursor, not a long request.
SCAN_BUDGET = 5000


def encode_cursor(position: str) -> str:
    """
    The opaque cursor a client is given for a position.
    """
    return (
        base64.urlsafe_b64encode(position.encode("ascii")).decode("ascii").rstrip("=")
    )


def decode_cursor(cursor: str) -> str:
    """
    The position a cursor stands for.

    @raise InvalidRequest: when C{cursor} is not one this server gave out.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = raw.decode("ascii")
    except (binascii.Error, ValueError):
        raise InvalidRequest("cursor is not valid", field="cursor")
    if not _POSITION.match(position):
        raise InvalidRequest("cursor is not valid", field="cursor")
    return position


def parse_limit(text: str | None) -> int:
    """
    The C{limit} query parameter: 1 to L{MAX_LIMIT}, L{DEFAULT_LIMIT} when
    absent.
    """
    if text is None or text == "":
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidRequest(
            f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit"
        )
    return int(text)


_STATE_POSITION = re.compile(r"(-?[0-9][0-9.e+-]{0,30}|-?inf) ([\x21-\x7e]{1,160})\Z")


def encode_state_cursor(position: tuple[str, str]) -> str:
    """
    The opaque cursor of a position in a state's zset (its score as Redis
    wrote it, its member).
    """
    return encode_cursor(f"{position[0]} {position[1]}")


def decode_state_cursor(cursor: str) -> tuple[str, str]:
    """
    The position in a state's zset that a cursor stands for.

    @raise InvalidRequest: when C{cursor} is not one this server gave out.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        text = raw.decode("ascii")
    except (binascii.Error, ValueError):
        raise InvalidRequest("cursor is not valid", field="cursor")
    match = _STATE_POSITION.match(text)
    if match is None:
        raise InvalidRequest("cursor is not valid", field="cursor")
    try:
        float(match.group(1))
    except ValueError:
        raise InvalidRequest("cursor is not valid", field="cursor")
    return match.group(1), match.group(2)


@frozen
class StatePage:
    """
    What one queue's walk of a state's zset found: its matching jobs after
    the start position, in the zset's order, each with its position (score,
    member), and the last entry examined (None when the zset ran out).
    """

    jobs: Sequence[tuple[tuple[str, str], dict[str, str]]]
    stopped_at: tuple[str, str] | None


def _order(position: tuple[str, str]) -> tuple[float, str]:
    return (float(position[0]), position[1])


def merge_states(
    pages: Sequence[StatePage], limit: int, descending: bool
) -> tuple[list[dict[str, str]], tuple[str, str] | None]:
    """
    L{merge} for pages of a state's zsets, walked by (score, member),
    ascending or descending: at most C{limit} jobs and the position to
    continue after (None: done).
    """
    stops = [p.stopped_at for p in pages if p.stopped_at is not None]
    first = max if descending else min
    frontier = first(stops, key=_order) if stops else None
    candidates = [
        item
        for page in pages
        for item in page.jobs
        if frontier is None
        or (
            _order(item[0]) >= _order(frontier)
            if descending
            else _order(item[0]) <= _order(frontier)
        )
    ]
    candidates.sort(key=lambda item: _order(item[0]), reverse=descending)
    chosen = candidates[:limit]
    if len(candidates) > limit:
        return [job for _, job in chosen], chosen[-1][0]
    return [job for _, job in chosen], frontier


@frozen
class QueuePage:
    """
    What one queue's walk found: its matching jobs after the start position,
    newest first, each with its position, and where the walk stopped (None
    when it reached the queue's oldest job).
    """

    jobs: Sequence[tuple[str, dict[str, str]]]
    stopped_at: str | None


def merge(
    pages: Sequence[QueuePage], limit: int
) -> tuple[list[dict[str, str]], str | None]:
    """
    Merge the pages of several queues into one page of at most C{limit}
    jobs, newest first, and the position to continue from (None: done).

    A queue whose walk stopped early has unseen jobs older than where it
    stopped, so no job older than the newest such stop may be listed yet:
    it could come after one of those.  Every job at or above that frontier
    has been seen in every queue, so listing them and continuing from the
    frontier skips nothing and repeats nothing.
    """
    frontier = max(
        (p.stopped_at for p in pages if p.stopped_at is not None), default=None
    )
    candidates = [
        item
        for page in pages
        for item in page.jobs
        if frontier is None or item[0] >= frontier
    ]
    candidates.sort(key=lambda item: item[0], reverse=True)
    chosen = candidates[:limit]
    if len(candidates) > limit:
        return [job for _, job in chosen], chosen[-1][0]
    return [job for _, job in chosen], frontier
