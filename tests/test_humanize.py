"""
Tests of L{procession.http.ui.humanize}: examples of each form, and properties
(hypothesis) that hold for every number: what is shown reads back close to
the value, in a bounded width, and in order.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from procession.http.ui import humanize

SUFFIX = {"": 1, "k": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
UNIT_SECONDS = {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "d": 86400}
AGO_SECONDS = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
    "month": 30 * 86400,
    "year": 365 * 86400,
}

finite = st.floats(min_value=0, max_value=1e15, allow_nan=False, allow_infinity=False)


def read_compact(text: str) -> float:
    """
    The number a compact form stands for.
    """
    match = re.fullmatch(r"(-?)([0-9]+(?:\.[0-9])?)([kMBT]?)", text)
    assert match, text
    sign = -1 if match.group(1) else 1
    return sign * float(match.group(2)) * SUFFIX[match.group(3)]


def read_duration(text: str) -> float:
    """
    The seconds a duration form stands for.
    """
    parts = re.findall(r"([0-9.]+) (ms|s|min|h|d)", text)
    assert " ".join(f"{n} {u}" for n, u in parts) == text, text
    return sum(float(n) * UNIT_SECONDS[u] for n, u in parts)


class ExampleTests(SynchronousTestCase):
    def test_count(self) -> None:
        self.assertEqual(humanize.count(0), "0")
        self.assertEqual(humanize.count(12345), "12,345")
        self.assertEqual(humanize.count(1234567), "1,234,567")

    def test_compact(self) -> None:
        for value, text in [
            (0, "0"),
            (7, "7"),
            (2.5, "2.5"),
            (840, "840"),
            (999, "999"),
            (999.6, "1k"),
            (1234, "1.2k"),
            (12_345, "12k"),
            (999_400, "999k"),
            (999_600, "1M"),
            (1_234_567, "1.2M"),
            (3_400_000_000, "3.4B"),
            (-1234, "-1.2k"),
        ]:
            self.assertEqual(humanize.compact(value), text, value)

    def test_rate(self) -> None:
        self.assertEqual(humanize.rate(840), "840/s")
        self.assertEqual(humanize.rate(1500), "1.5k/s")
        self.assertEqual(humanize.rate(3100 / 60), "3.1k/min")
        self.assertEqual(humanize.rate(2 / 60), "2/min")
        self.assertEqual(humanize.rate(0.5 / 60), "30/h")
        self.assertEqual(humanize.rate(0), "0/min")

    def test_duration(self) -> None:
        for seconds, text in [
            (0, "0 ms"),
            (0.45, "450 ms"),
            (4.5, "4.5 s"),
            (12, "12 s"),
            (60, "1 min"),
            (192, "3 min 12 s"),
            (3600, "1 h"),
            (7500, "2 h 5 min"),
            (3 * 86400 + 4 * 3600 + 59, "3 d 4 h"),
            (-5, "0 ms"),
        ]:
            self.assertEqual(humanize.duration(seconds), text, seconds)

    def test_ago(self) -> None:
        now = 1_800_000_000_000
        self.assertEqual(humanize.ago(now, now), "just now")
        self.assertEqual(humanize.ago(now - 1000, now), "1 second ago")
        self.assertEqual(humanize.ago(now - 4 * 60_000 - 59_000, now), "4 minutes ago")
        self.assertEqual(humanize.ago(now - 86_400_000, now), "1 day ago")
        self.assertEqual(humanize.ago(now + 2 * 3_600_000, now), "in 2 hours")

    def test_utc(self) -> None:
        self.assertEqual(humanize.utc(1_800_000_000_123), "2027-01-15 08:00:00.123 UTC")

    def test_plural(self) -> None:
        self.assertEqual(humanize.plural(1, "job"), "1 job")
        self.assertEqual(humanize.plural(0, "job"), "0 jobs")
        self.assertEqual(humanize.plural(12345, "job"), "12,345 jobs")
        self.assertEqual(humanize.plural(2, "person", "people"), "2 people")

    def test_size(self) -> None:
        self.assertEqual(humanize.size(512), "512 B")
        self.assertEqual(humanize.size(1536 * 1024), "1.5 MiB")


class PropertyTests(SynchronousTestCase):
    @given(st.integers(min_value=0, max_value=10**18))
    def test_count_is_exact(self, n: int) -> None:
        text = humanize.count(n)
        self.assertEqual(int(text.replace(",", "")), n)
        self.assertRegex(text, r"^[0-9]{1,3}(,[0-9]{3})*$")

    @given(finite)
    def test_compact_reads_back_close(self, n: float) -> None:
        text = humanize.compact(n)
        shown = read_compact(text)
        if n < 9.95:
            self.assertLessEqual(abs(shown - n), 0.05 + 1e-9, (n, text))
        else:
            self.assertLessEqual(abs(shown - n), 0.05 * n, (n, text))

    @given(st.floats(min_value=0, max_value=1e14, allow_nan=False))
    def test_compact_is_short(self, n: float) -> None:
        self.assertLessEqual(len(humanize.compact(n)), 4, n)

    @given(finite, finite)
    def test_compact_keeps_order(self, a: float, b: float) -> None:
        low, high = sorted((a, b))
        self.assertLessEqual(
            read_compact(humanize.compact(low)), read_compact(humanize.compact(high))
        )

    @given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
    def test_rate_reads_back_close(self, per_second: float) -> None:
        text = humanize.rate(per_second)
        number, unit = text.split("/")
        seconds = {"s": 1, "min": 60, "h": 3600}[unit]
        shown = read_compact(number) / seconds
        self.assertLessEqual(
            abs(shown - per_second), 0.05 * per_second + 0.05 / seconds, text
        )

    @given(st.floats(min_value=0, max_value=10 * 365 * 86400, allow_nan=False))
    def test_duration_reads_back_close(self, seconds: float) -> None:
        text = humanize.duration(seconds)
        shown = read_duration(text)
        self.assertLessEqual(len(text.split()), 4, text)
        # What is left out is less than one of the smallest unit shown.
        smallest = UNIT_SECONDS[text.split()[-1]]
        if seconds < 10:
            self.assertLessEqual(abs(shown - seconds), 0.05 + 1e-9, (seconds, text))
        else:
            self.assertLessEqual(shown, seconds)
            self.assertLess(seconds - shown, smallest)

    @given(
        st.integers(min_value=0, max_value=4_000_000_000_000),
        st.integers(
            min_value=-10 * 365 * 86400 * 1000, max_value=10 * 365 * 86400 * 1000
        ),
    )
    def test_ago_names_the_whole_units_that_passed(self, now: int, delta: int) -> None:
        text = humanize.ago(now - delta, now)
        if abs(delta) < 1000:
            self.assertEqual(text, "just now")
            return
        match = re.fullmatch(r"(in )?([0-9]+) (\w+?)s?( ago)?", text)
        assert match, text
        self.assertEqual(bool(match.group(1)), delta < 0, text)
        self.assertEqual(bool(match.group(4)), delta > 0, text)
        n, unit = int(match.group(2)), AGO_SECONDS[match.group(3)]
        self.assertTrue(n * unit <= abs(delta) / 1000 < (n + 1) * unit, (delta, text))
        self.assertEqual(
            text.endswith("s ago") or text.split()[-1].endswith("s"), n != 1, text
        )

    @given(st.integers(min_value=0, max_value=253_402_300_799_999))
    def test_utc_is_exact(self, ms: int) -> None:
        from procession.core.job import format_time, parse_time

        text = humanize.utc(ms)
        self.assertEqual(parse_time(text.replace(" UTC", "Z").replace(" ", "T")), ms)
        self.assertEqual(text.replace(" UTC", "Z").replace(" ", "T"), format_time(ms))
