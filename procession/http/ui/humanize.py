"""
Numbers, rates, durations and times as an operator reads them: C{12,345},
C{1.2M}, C{840/s}, C{3.1k/min}, C{450 ms}, C{3 min 12 s}, C{4 minutes ago}.

Pure: no I/O, no clock (the current time is passed in).  The operator UI
(L{procession.http.ui.routes}) is its only user; the APIs keep exact numbers.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

# Short forms of large numbers, smallest first.
_UNITS = ((1e3, "k"), (1e6, "M"), (1e9, "B"), (1e12, "T"))


def count(n: int) -> str:
    """
    An exact count with thousands separators: C{12,345}.
    """
    return f"{int(n):,}"


def plural(n: int, word: str, words: str | None = None) -> str:
    """
    A count and its noun: C{1 job}, C{12,345 jobs}.
    """
    return f"{count(n)} {word if n == 1 else (words or word + 's')}"


def _short(value: float) -> str:
    """
    A number under 1,000 in at most three significant digits: one decimal
    below 10 (dropped when it is 0), none above.
    """
    if value < 9.95:
        text = f"{value:.1f}"
        return text[:-2] if text.endswith(".0") else text
    return f"{value:.0f}"


def compact(n: float) -> str:
    """
    A number in at most four characters and a unit: C{840}, C{1.2k},
    C{12k}, C{1.2M}, C{3.4B}.  Exact below 10 (to one decimal) and within
    5% above.
    """
    if n != n:  # NaN
        return "?"
    if n < 0:
        return "-" + compact(-n)
    if math.isinf(n):
        return "∞"
    if n < 999.5:
        return _short(n)
    # The unit is chosen after rounding: 999,600 is 1M, not 1000k.
    for size, unit in _UNITS:
        scaled = n / size
        if scaled < 999.5 or unit == "T":
            return _short(scaled) + unit
    raise AssertionError("unreachable")  # pragma: no cover


def rate(per_second: float) -> str:
    """
    A rate in the unit that reads best: C{840/s} from 100 a second up,
    C{3.1k/min} from one a minute, C{12/h} below that (and C{0/min} for
    none).
    """
    if per_second >= 99.95:
        return compact(per_second) + "/s"
    per_minute = per_second * 60
    if per_minute >= 0.95 or per_second <= 0:
        return compact(per_minute) + "/min"
    return compact(per_minute * 60) + "/h"


# Units of a duration, largest first: (seconds, name).
_DURATION_UNITS = ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"))


def duration(seconds: float) -> str:
    """
    A length of time in at most two units: C{450 ms}, C{4.5 s}, C{12 s},
    C{3 min 12 s}, C{2 h 5 min}, C{3 d 4 h}.  The smaller unit is dropped
    when it is 0 (C{3 min}); what is left out is less than one of the
    smaller unit.
    """
    if seconds != seconds or seconds < 0:
        seconds = 0.0
    if seconds < 0.9995:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    # Whole units, rounded down from 10 s up (9.95 s rounds to 10 s).
    whole = max(int(seconds), 10)
    for i, (size, name) in enumerate(_DURATION_UNITS[:-1]):
        if whole >= size:
            big, rest = divmod(whole, size)
            small_size, small_name = _DURATION_UNITS[i + 1]
            small = rest // small_size
            if small:
                return f"{big} {name} {small} {small_name}"
            return f"{big} {name}"
    return f"{whole} s"


_AGO_UNITS = (
    (365 * 86400, "year"),
    (30 * 86400, "month"),
    (7 * 86400, "week"),
    (86400, "day"),
    (3600, "hour"),
    (60, "minute"),
    (1, "second"),
)


def ago(when_ms: int, now_ms: int) -> str:
    """
    A time relative to now in its largest whole unit, rounded down:
    C{just now}, C{4 minutes ago}, C{in 2 hours}, C{1 day ago}.
    """
    delta = (now_ms - when_ms) / 1000
    future = delta < 0
    delta = abs(delta)
    if delta < 1:
        return "just now"
    for size, name in _AGO_UNITS:
        if delta >= size:
            n = int(delta // size)
            text = f"{n} {name}" + ("" if n == 1 else "s")
            return f"in {text}" if future else f"{text} ago"
    raise AssertionError("unreachable")  # pragma: no cover


def utc(when_ms: int) -> str:
    """
    The exact time in UTC, to the millisecond:
    C{2026-11-27 18:32:05.123 UTC}.
    """
    when = datetime.fromtimestamp(when_ms // 1000, tz=timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when_ms % 1000:03d} UTC"


def size(n_bytes: int) -> str:
    """
    A size in bytes, in binary units: C{512 B}, C{1.5 MiB}.
    """
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1023.95 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
