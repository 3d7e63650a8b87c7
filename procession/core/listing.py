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
