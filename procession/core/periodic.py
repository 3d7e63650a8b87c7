"""
Periodic jobs: what an entry is, how it is checked, and when it ticks.

An entry is a name, a cron expression, an IANA time zone, a job template
and a policy for missed ticks.  croniter computes the ticks (in the entry's
zone, through zoneinfo, so that DST gaps and repeats go the way cron's
do); cron-descriptor puts an expression into words for the UI.

This module is pure: no I/O, no reactor.  Claiming ticks is the store's
(tick.lua); running the schedule is the service's (procession.service.periodic).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from attrs import frozen
from croniter import croniter

from procession.core.errors import InvalidJob, InvalidRequest
from procession.core.job import NewJob, format_time, parse_submission

PERIODIC_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}\Z")
ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-/]{1,64}\Z")
MISSED_POLICIES = ("skip", "all")
SOURCES = ("api", "file")
# The fields of an entry's job template: a submission less what each tick
# sets itself (id, run_at, delay) and what a schedule has no use for.
TEMPLATE_FIELDS = frozenset(
    {
        "type",
        "args",
        "queue",
        "priority",
        "max_attempts",
        "timeout",
        "meta",
        "expires_in",
        "limit_key",
    }
)
ENTRY_FIELDS = frozenset({"cron", "timezone", "job", "missed", "paused"})
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# A tick that no server ran within this long of its time counts as missed
# (the scheduler runs late ticks up to then, one job each, whatever the
# policy).
GRACE_MS = 10_000
# The most missed ticks the 'all' policy runs after downtime (the most
# recent ones), and the most missed ticks counted as skipped at once.
MAX_CATCH_UP = 100
MAX_COUNTED = 10_000
# The most ticks of one entry claimed per script call.
MAX_TICKS_PER_CALL = 200


def _expression(text: object) -> str:
    """
    A checked cron expression in croniter's terms (seconds first when it
    has six fields).

    @raise InvalidRequest: naming C{cron}.
    """
    if not isinstance(text, str) or not 0 < len(text) <= 256:
        raise InvalidRequest("cron must be a cron expression", field="cron")
    expr = ALIASES.get(text.strip().lower(), text.strip())
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise InvalidRequest(
            "cron must have 5 fields (minute hour day month weekday), 6 with "
            "seconds first, or be one of " + ", ".join(sorted(ALIASES)),
            field="cron",
        )
    if any("h" in f.lower() for f in fields):
        raise InvalidRequest("cron does not take H (hashed) fields", field="cron")
    try:
        croniter(expr, datetime(2026, 1, 1, tzinfo=timezone.utc),
                 second_at_beginning=True).get_next(float)  # fmt: skip
    except (ValueError, KeyError, TypeError, OverflowError) as e:
        raise InvalidRequest(f"cron is not a valid expression: {e}", field="cron")
    return expr


def _zone(name: object) -> ZoneInfo:
    if not isinstance(name, str) or not ZONE_NAME.match(name) or ".." in name:
        raise InvalidRequest(
            "timezone must be an IANA time zone name such as Europe/Berlin",
            field="timezone",
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidRequest(f"timezone {name!r} is not a known zone", field="timezone")


@frozen
class PeriodicEntry:
    """
    One periodic entry as defined (by the API or the file).

    @ivar job: the job template, checked, as the client gave it.
    @ivar missed: what to do with ticks missed while no server ran:
        C{skip} runs the latest once, C{all} runs each (the last
        L{MAX_CATCH_UP}).
    @ivar source: C{api} or C{file} (C{--periodic}).
    """

    name: str
    cron: str
    timezone: str
    job: dict[str, Any]
    missed: str = "skip"
    source: str = "api"

    @property
    def queue(self) -> str:
        return str(self.job.get("queue", "default"))

    def spec(self) -> str:
        """
        The definition as stored, canonical: two equal definitions have the
        same text (so a reload of an unchanged file changes nothing).
        """
        return json.dumps(
            {
                "cron": self.cron,
                "timezone": self.timezone,
                "job": self.job,
                "missed": self.missed,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_spec(cls, name: str, spec: str, source: str) -> "PeriodicEntry":
        fields = json.loads(spec)
        return cls(
            name,
            fields["cron"],
            fields["timezone"],
            fields["job"],
            fields.get("missed", "skip"),
            source,
        )

    def _iter(self, after_ms: int, backwards: bool = False) -> croniter:
        start = datetime.fromtimestamp(after_ms / 1000, ZoneInfo(self.timezone))
        return croniter(
            _expression(self.cron), start, second_at_beginning=True, is_prev=backwards
        )

    def next_tick(self, after_ms: int) -> int:
        """
        The first tick strictly after C{after_ms} (ms since the epoch).
        """
        return self._next(self._iter(after_ms))

    def _next(self, it: croniter) -> int:
        """
        The iterator's next tick.  When clocks go back and an hour repeats,
        an entry with fixed hours runs once, in the first pass of the hour
        (as cron does); one whose hour field is a wildcard runs in both.
        """
        zone = ZoneInfo(self.timezone)
        for _ in range(3):
            tick = round(it.get_next(float) * 1000)
            when = datetime.fromtimestamp(tick / 1000, zone)
            if not (when.fold == 1 and self._fixed_hours() and _repeated(when)):
                return tick
        return tick

    def _fixed_hours(self) -> bool:
        fields = _expression(self.cron).split()
        return not fields[-4].startswith("*")

    def due(self, after_ms: int, now_ms: int) -> "Due":
        """
        The ticks to run now: those after C{after_ms} (the last one run)
        and at or before C{now_ms}.  Ticks within L{GRACE_MS} of now are
        late, not missed: each runs.  Older ones are missed: with C{skip}
        only the latest of them runs, and only when no late tick runs
        either; with C{all} the last L{MAX_CATCH_UP} of them run.
        """
        it = self._iter(after_ms)
        missed: list[int] = []
        late: list[int] = []
        counted = 0
        horizon = now_ms - GRACE_MS
        while counted < MAX_COUNTED:
            tick = self._next(it)
            if tick > now_ms:
                break
            counted += 1
            if tick <= horizon:
                missed.append(tick)
                del missed[:-MAX_CATCH_UP]
            else:
                late.append(tick)
                if len(late) >= MAX_TICKS_PER_CALL:
                    break
        else:
            # Too many to count: jump to the latest missed tick.
            latest = round(
                self._iter(horizon + 1, backwards=True).get_prev(float) * 1000
            )
            missed = [latest]
            late = []
        if self.missed == "all":
            run = missed[-MAX_CATCH_UP:] + late
        elif late:
            run = late
        else:
            run = missed[-1:]
        return Due(run[:MAX_TICKS_PER_CALL], max(0, counted - len(run)))

    def job_for(self, tick_ms: int | None, now_ms: int, max_size: int) -> NewJob:
        """
        The job of one tick (id C{<name>@<tick time>}), or of a "run now"
        at C{now_ms} when C{tick_ms} is None.
        """
        fields = dict(self.job)
        if tick_ms is None:
            fields["id"] = f"{self.name}@now-{format_time(now_ms)}"
        else:
            fields["id"] = f"{self.name}@{format_time(tick_ms)}"
        return parse_submission(fields, now_ms, max_size)

    def describe(self) -> str:
        """
        The expression in words ("Every 5 minutes"), or the expression
        itself when it cannot be put into words.
        """
        return describe_cron(self.cron)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cron": self.cron,
            "timezone": self.timezone,
            "job": self.job,
            "missed": self.missed,
            "source": self.source,
            "description": self.describe(),
        }


@frozen
class Due:
    """
    The ticks an entry should run now, oldest first, and how many ticks
    passed without a job (missed ones not run).
    """

    ticks: list[int]
    skipped: int


def describe_cron(cron: str) -> str:
    """
    A cron expression in words, or itself when it cannot be put into words.
    """
    try:
        from cron_descriptor import ExpressionDescriptor

        expr = ALIASES.get(cron.strip().lower(), cron)
        return str(
            ExpressionDescriptor(expr, use_24hour_time_format=True).get_description()
        )
    except Exception:
        return cron


def _repeated(when: datetime) -> bool:
    """
    Whether a local time is the second pass of an hour that clocks went
    back over.
    """
    return when.replace(fold=0).utcoffset() != when.utcoffset()


def parse_entry(
    name: str, obj: object, source: str = "api", max_size: int = 1 << 20
) -> tuple[PeriodicEntry, bool | None]:
    """
    Check one entry's definition (the body of C{PUT /api/v1/periodic/<name>},
    a table of the C{--periodic} file).

    @return: the entry, and whether it is to be paused (None: as it was).
    @raise InvalidRequest: naming the field at fault (C{job.<field>} for
        the template's).
    """
    if not isinstance(name, str) or not PERIODIC_NAME.match(name):
        raise InvalidRequest(
            "a periodic entry's name must match [A-Za-z0-9_.:-]{1,100}", field="name"
        )
    if not isinstance(obj, dict):
        raise InvalidRequest("a periodic entry must be an object", field=None)
    unknown = sorted(set(obj) - ENTRY_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}", field=unknown[0])
    cron = obj.get("cron")
    _expression(cron)
    zone = obj.get("timezone", "UTC")
    _zone(zone)
    missed = obj.get("missed", "skip")
    if missed not in MISSED_POLICIES:
        raise InvalidRequest("missed must be 'skip' or 'all'", field="missed")
    paused = obj.get("paused")
    if paused is not None and not isinstance(paused, bool):
        raise InvalidRequest("paused must be true or false", field="paused")
    template = obj.get("job")
    if not isinstance(template, dict):
        raise InvalidRequest("job must be an object (the job template)", field="job")
    unknown = sorted(set(template) - TEMPLATE_FIELDS)
    if unknown:
        raise InvalidRequest(
            f"job: unknown field {unknown[0]!r}", field=f"job.{unknown[0]}"
        )
    try:
        parse_submission(dict(template, id=f"{name}@x"), 0, max_size)
    except InvalidJob as e:
        field = e.details.get("field")
        raise InvalidRequest(
            f"job: {e.message}", field=f"job.{field}" if field else "job"
        )
    assert isinstance(cron, str) and isinstance(zone, str)
    return PeriodicEntry(name, cron, zone, dict(template), missed, source), paused


def parse_file(text: str, max_size: int = 1 << 20) -> list[PeriodicEntry]:
    """
    The entries of a C{--periodic} file: TOML, one table per entry under
    C{[periodic.<name>]} (its C{job} a sub-table), for example::

        [periodic.nightly-report]
        cron = "0 2 * * *"
        timezone = "Europe/Berlin"
        job = { type = "report", args = [1], queue = "default" }

    @raise InvalidRequest: for the first bad entry, naming it and the field.
    """
    import tomllib

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidRequest(f"the periodic file is not valid TOML: {e}")
    unknown = sorted(set(document) - {"periodic"})
    if unknown:
        raise InvalidRequest(
            f"unknown table {unknown[0]!r} (entries go under [periodic.<name>])",
            field=unknown[0],
        )
    tables = document.get("periodic", {})
    if not isinstance(tables, dict):
        raise InvalidRequest("periodic must be a table of entries", field="periodic")
    entries = []
    for name, table in tables.items():
        if isinstance(table, dict) and "paused" in table:
            raise InvalidRequest(
                f"entry {name!r}: paused is set through the API or the UI, "
                "not the file",
                field="paused",
            )
        try:
            entry, _ = parse_entry(name, table, "file", max_size)
        except InvalidRequest as e:
            raise InvalidRequest(
                f"entry {name!r}: {e.message}", field=e.details.get("field")
            )
        entries.append(entry)
    return entries
