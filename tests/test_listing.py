"""
Tests for L{procession.core.listing}: cursors, and a property test of the merge
of several queues' pages against a model of list.lua's walk.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from procession.core.errors import InvalidRequest
from procession.core.listing import (
    DEFAULT_LIMIT,
    QueuePage,
    decode_cursor,
    encode_cursor,
    merge,
    parse_limit,
)


def walk(
    positions: list[str], matching: set[str], after: str | None, limit: int, budget: int
) -> QueuePage:
    """
    What list.lua does on one queue: examine positions newest first after
    C{after}, at most C{budget} of them, until C{limit} match.
    """
    newest_first = sorted(
        (p for p in positions if after is None or p < after), reverse=True
    )
    jobs = []
    examined = 0
    for position in newest_first:
        if examined == budget:
            return QueuePage(jobs, newest_first[examined - 1])
        examined += 1
        if position in matching:
            jobs.append((position, {"position": position}))
            if len(jobs) == limit:
                return QueuePage(jobs, position)
    return QueuePage(jobs, None)


positions = st.builds(
    lambda ms, name: f"{ms:015d}{name}",
    st.integers(0, 5),
    st.text("abc/-", min_size=1, max_size=3),
)


class MergeTests(SynchronousTestCase):
    @given(
        queues=st.lists(st.sets(positions, max_size=15), min_size=1, max_size=4),
        keep=st.sets(st.integers(0, 60)),
        limit=st.integers(1, 6),
        budget=st.integers(1, 8),
    )
    def test_pages_list_every_match_once_in_order(
        self, queues: list[set[str]], keep: set[int], limit: int, budget: int
    ) -> None:
        everything = sorted({p for q in queues for p in q}, reverse=True)
        # The same position in two queues is the same job: keep them apart.
        queues = [
            {p for p in q if all(p not in other for other in queues[:i])}
            for i, q in enumerate(queues)
        ]
        matching = {p for i, p in enumerate(everything) if i % 61 in keep}
        listed: list[str] = []
        after = None
        for _ in range(1000):
            pages = [walk(sorted(q), matching, after, limit, budget) for q in queues]
            jobs, after = merge(pages, limit)
            self.assertLessEqual(len(jobs), limit)
            listed += [j["position"] for j in jobs]
            if after is None:
                break
        else:
            self.fail("the listing does not end")
        self.assertEqual(listed, sorted(matching, reverse=True))


class CursorTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        position = "001800000000000" + "job-1/x"
        self.assertEqual(decode_cursor(encode_cursor(position)), position)

    def test_bad_cursors(self) -> None:
        for cursor in [
            "",
            "!!!",
            encode_cursor("12"),
            encode_cursor("001800000000000"),
            "é",
        ]:
            self.assertRaises(InvalidRequest, decode_cursor, cursor)

    def test_limit(self) -> None:
        self.assertEqual(parse_limit(None), DEFAULT_LIMIT)
        self.assertEqual(parse_limit("500"), 500)
        for text in ["0", "501", "-1", "1.5", "x"]:
            self.assertRaises(InvalidRequest, parse_limit, text)
