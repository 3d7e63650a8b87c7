"""
What the operator UI's pages show, and how: the Jinja2 environment of the
templates (autoescaped, with the L{procession.http.ui.humanize} filters), links,
charts drawn as SVG shapes, Redis's status, and which actions fit which
state.

Pure: no I/O.  L{procession.http.ui.routes} gathers the data and serves the pages.
"""

from __future__ import annotations

import json
import math
from importlib.resources import files
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote, urlencode

import jinja2
from attrs import frozen
from markupsafe import Markup

import procession
from procession.http.ui import humanize
from procession.core.job import parse_time
from procession.core.states import JOB_ACTIONS

# The pages that list jobs by state (/queued, /scheduled, ...).
LISTS = ("queued", "scheduled", "retrying", "dead")


def section_of(state: str) -> str:
    """
    The navigation's entry for a page about jobs in C{state}: queued jobs
    are reached through their queues.
    """
    if state == "queued":
        return "queues"
    return state if state in ("running", "scheduled", "retrying", "dead") else ""


def template_folder() -> Path:
    """
    Where the templates are: inside the installed package
    (C{procession/templates}, mapped from the top-level folder by
    setup.cfg), or the top-level C{templates/} of a checkout.
    """
    installed = files("procession").joinpath("templates")
    if installed.is_dir():
        return Path(str(installed))
    return Path(procession.__file__).resolve().parent.parent / "templates"


def to_ms(value: Any) -> int | None:
    """
    A time given as milliseconds, an RFC 3339 text or None, as milliseconds.
    """
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return int(value)
    try:
        return parse_time(value)
    except (ValueError, OverflowError):
        return None


def pretty_json(value: Any) -> str:
    """
    JSON indented for reading (escaped later, like every value).
    """
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def preview(value: Any, limit: int = 80) -> str:
    """
    A value as one line of compact JSON, cut at C{limit} characters.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def backtrace(value: Any) -> str:
    """
    A backtrace as a worker sent it (a list of lines or frames, or a
    text), as lines of text.
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return pretty_json(value)
    return "\n".join(
        line.rstrip("\n")
        if isinstance(line, str)
        else json.dumps(line, ensure_ascii=False)
        for line in value
    )


def job_url(job_id: str) -> str:
    """
    The page of a job: its id is quoted whole, slashes included.
    """
    return "/jobs/" + quote(job_id, safe="")


def queue_url(name: str) -> str:
    """
    The page of a queue.
    """
    return "/queues/" + quote(name, safe="")


def list_url(state: str, **params: str | None) -> str:
    """
    A list page with its filters, leaving out empty ones.
    """
    given = {k: v for k, v in params.items() if v}
    return f"/{state}" + (("?" + urlencode(given)) if given else "")


def nice_top(value: float) -> int:
    """
    The top of a chart's scale: C{value} rounded up to 1, 2 or 5 times a
    power of ten (at least 1).
    """
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return int(step * power)
    return int(10 * power)  # pragma: no cover


@frozen
class Chart:
    """
    Processed and failed jobs per bucket, oldest first, drawn as an SVG
    area (processed) and line (failed) by the template.
    """

    processed: Sequence[int]
    failed: Sequence[int]
    per: str
    width: int = 600
    height: int = 120

    @property
    def top(self) -> int:
        return nice_top(max([*self.processed, *self.failed, 0]))

    def _xy(self, values: Sequence[int]) -> list[tuple[float, float]]:
        n = max(len(values) - 1, 1)
        top = self.top
        return [
            (
                round(i * self.width / n, 1),
                round(self.height - v * self.height / top, 1),
            )
            for i, v in enumerate(values)
        ]

    def line(self, values: Sequence[int]) -> str:
        return " ".join(f"{x:g},{y:g}" for x, y in self._xy(values))

    def area(self, values: Sequence[int]) -> str:
        return f"0,{self.height} {self.line(values)} {self.width},{self.height}"

    def points(self, name: str) -> dict[str, str]:
        """
        The SVG points of the chart's shapes, by the names the page gives
        them.
        """
        return {
            f"{name}-processed-area": self.area(self.processed),
            f"{name}-processed": self.line(self.processed),
            f"{name}-failed": self.line(self.failed),
        }

    def text(self, name: str) -> dict[str, str]:
        """
        The chart's labels.
        """
        return {
            f"{name}-top": humanize.compact(self.top) + "/" + self.per,
            f"{name}-processed-total": humanize.count(sum(self.processed)),
            f"{name}-failed-total": humanize.count(sum(self.failed)),
        }


def parse_info(text: str) -> dict[str, str]:
    """
    Redis's C{INFO} reply as a dict of its fields.
    """
    fields = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            name, _, value = line.partition(":")
            fields[name.strip()] = value.strip()
    return fields


def redis_status(info: dict[str, str], now_ms: int) -> dict[str, str]:
    """
    What the dashboard says about Redis, from its C{INFO} fields.
    """

    def number(name: str) -> int:
        try:
            return int(info.get(name, "0"))
        except ValueError:
            return 0

    maxmemory = number("maxmemory")
    memory = humanize.size(number("used_memory"))
    memory += " of " + (humanize.size(maxmemory) if maxmemory else "no limit")
    if info.get("aof_enabled") == "1":
        aof = "AOF on, last write " + info.get("aof_last_write_status", "?")
    else:
        aof = "AOF off"
    if info.get("rdb_last_save_time") and number("rdb_changes_since_last_save") >= 0:
        rdb = (
            "RDB saved "
            + humanize.ago(number("rdb_last_save_time") * 1000, now_ms)
            + f", {humanize.count(number('rdb_changes_since_last_save'))} changes since"
        )
    else:
        rdb = "RDB unknown"
    return {
        "redis-version": info.get("redis_version", "?"),
        "redis-memory": memory,
        "redis-policy": info.get("maxmemory_policy", "?"),
        "redis-persistence": f"{aof}; {rdb}",
        "redis-uptime": humanize.duration(number("uptime_in_seconds")),
        "redis-clients": humanize.count(number("connected_clients")),
    }


def environment(folder: Path | None = None) -> jinja2.Environment:
    """
    The Jinja2 environment of the UI's templates: autoescaped, strict about
    undefined values, with the humanize filters.
    """
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder or template_folder())),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        number=humanize.count,
        plural=humanize.plural,
        compact=humanize.compact,
        rate=humanize.rate,
        duration=humanize.duration,
        size=humanize.size,
        pretty_json=pretty_json,
        job_url=job_url,
        queue_url=queue_url,
        urlpart=lambda text: quote(text, safe=""),
        ms=lambda value: to_ms(value) or 0,
        exact=lambda value: humanize.utc(to_ms(value) or 0),
        preview=preview,
        backtrace=backtrace,
    )
    env.globals.update(list_url=list_url, lists=LISTS, job_actions=JOB_ACTIONS)

    @jinja2.pass_context
    def when(context: Any, value: Any) -> Markup:
        ms = to_ms(value)
        if ms is None:
            return Markup('<span class="muted">\u2014</span>')
        return Markup('<time datetime="{iso}" title="{exact}">{ago}</time>').format(
            iso=humanize.utc(ms).replace(" UTC", "Z").replace(" ", "T"),
            exact=humanize.utc(ms),
            ago=humanize.ago(ms, context["now_ms"]),
        )

    @jinja2.pass_context
    def since(context: Any, value: Any) -> str:
        ms = to_ms(value)
        if ms is None:
            return "\u2014"
        return humanize.duration(max(0, context["now_ms"] - ms) / 1000)

    env.filters["when"] = when
    env.filters["since"] = since
    return env
