"""
The operator's command line, C{procession}: look at queues, jobs and
workers, push a job, retry, kill, cancel or delete one, pause and resume
queues, set their limits, purge them.

It is a client of the HTTP management API (docs/http-api.rst) and nothing
else: each command is one request (a job listing may follow cursors), shown
as an aligned table or, with C{--json}, as the API's JSON.  It uses the
standard library only and must not import Twisted, so that it starts fast
and runs from any Python.  docs/cli.rst describes it.

Exit codes: 0 success, 1 the API refused the request, 2 wrong usage, 3 the
server could not be reached.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from procession.core.states import (
    KILLABLE,
    PURGEABLE,
    RETRYABLE,
    SIZED_STATES,
    STATES,
)

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_REQUEST_TIMEOUT = 30.0

OK = 0
API_ERROR = 1
USAGE_ERROR = 2
UNREACHABLE = 3


# The largest page the API serves.
MAX_PAGE = 500


class UsageError(Exception):
    """
    The command line is wrong (exit 2).
    """


class ApiError(Exception):
    """
    The server refused a request (exit 1): its HTTP status and the C{code}
    and C{message} of its JSON error body.
    """

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        if self.code is None:
            return f"{self.message} (HTTP {self.status})"
        return f"{self.message} ({self.code}, HTTP {self.status})"


class Unreachable(Exception):
    """
    No answer from the server (exit 3): refused, unknown host, timeout, a
    connection cut before the answer.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot reach procession at {self.url}: {self.reason}"


# -- the HTTP API


class Api:
    """
    Requests to one server's HTTP API.

    @ivar url: the server's base URL (C{http://host:port}, maybe with a
        path prefix when a proxy serves it under one).
    @ivar token: the bearer token, if any.
    @ivar timeout: seconds to wait for each answer.
    """

    # Not a dataclass: the dataclasses module costs a noticeable share of
    # the start-up time of a command that runs for a moment.
    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """
        Send one request; the decoded JSON of a successful answer.

        @param path: under the base URL, starting with C{/}; its variable
            parts already quoted (L{segment}).
        @param query: parameters, those that are L{None} left out.
        @raise ApiError: the server answered with an error status.
        @raise Unreachable: it did not answer.
        """
        url = self.url.rstrip("/") + path
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json", "User-Agent": "procession-cli"}
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            with e:
                raise error_from_answer(e.code, e.reason, _read(e)) from None
        except urllib.error.URLError as e:
            raise Unreachable(self.url, _reason(e.reason)) from None
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(self.url, _reason(e)) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(
                status, None, "the answer is not JSON: is this a procession server?"
            ) from None


def _read(response: urllib.error.HTTPError) -> bytes:
    try:
        return response.read()
    except (OSError, http.client.HTTPException):
        return b""


def _reason(error: Any) -> str:
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "no answer in time"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"unknown host ({error.strerror})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def error_from_answer(status: int, reason: str, raw: bytes) -> ApiError:
    """
    The error an error answer carries: the API's C{{"error": {"code",
    "message"}}}, or just the HTTP status from something else (a proxy).
    """
    try:
        error = json.loads(raw)["error"]
        return ApiError(status, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return ApiError(status, None, reason or "error")


def segment(value: str) -> str:
    """
    One path segment of a URL (a job id may contain C{/}, a worker name
    C{#}).

    @raise UsageError: for an empty value, which would name another route.
    """
    if not value:
        raise UsageError("a job id, queue or worker name cannot be empty")
    if value in (".", ".."):
        # Left as they are, a URL's dot segments would be resolved away.
        return value.replace(".", "%2E")
    return urllib.parse.quote(value, safe="")


# -- output


def cell(value: Any) -> str:
    """
    A value as table text: C{-} for nothing, control characters escaped so
    one cell stays on one line.
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shorten(text: str, width: int = 40) -> str:
    """
    At most C{width} characters, cut with C{...}.
    """
    return text if len(text) <= width else text[: width - 3] + "..."


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()
) -> str:
    """
    Rows as aligned columns under a header; the columns in C{right}
    (numbers) aligned right.
    """
    rows = [list(headers)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
    right = set(right)
    lines = []
    for row in rows:
        cells = [
            text.rjust(width) if i in right else text.ljust(width)
            for i, (text, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def fields(pairs: Iterable[tuple[str, Any]]) -> str:
    """
    Name and value pairs, one a line, the values aligned.
    """
    pairs = [(name, cell(value)) for name, value in pairs]
    width = max((len(name) for name, _ in pairs), default=0)
    return "\n".join(f"{name.ljust(width)}  {value}".rstrip() for name, value in pairs)


def moment(value: Any) -> str:
    """
    A time of the API (RFC 3339 text, or milliseconds in error records)
    to the second.
    """
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        when = datetime.fromtimestamp(value / 1000, UTC)
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    text = str(value)
    if len(text) == 24 and text.endswith("Z") and text[19] == ".":
        return text[:19] + "Z"
    return cell(text)


def duration(seconds: Any) -> str:
    """
    Seconds as C{850ms}, C{4.2s}, C{3m05s}, C{2h10m}, C{3d04h}.
    """
    if not isinstance(seconds, (int, float)):
        return cell(seconds)
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def rate(value: Any) -> str:
    """
    A per-minute rate, to three significant digits at most.
    """
    if not isinstance(value, (int, float)):
        return cell(value)
    return f"{value:.3g}/min"


def plural(count: int, word: str) -> str:
    """
    C{1 job}, C{2 jobs}.
    """
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


class Output:
    """
    Where a command writes: C{json} says whether the caller wants the
    API's JSON rather than text for people.
    """

    def __init__(self, stdout: TextIO, stderr: TextIO, json: bool) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.json = json

    def show(self, answer: Any, text: Callable[[Any], str]) -> None:
        """
        Print the API's answer as JSON, or as C{text(answer)}.
        """
        if self.json:
            self.line(json.dumps(answer, ensure_ascii=False, separators=(",", ":")))
        else:
            self.line(text(answer))

    def line(self, text: str) -> None:
        self.stdout.write(text + "\n")

    def note(self, text: str) -> None:
        """
        A hint for people, on stderr so it never mixes with the data.
        """
        self.stderr.write(text + "\n")


# -- commands


def cmd_stats(api: Api, args: argparse.Namespace, out: Output) -> None:
    """
    procession stats: C{GET /api/v1/stats}.
    """
    answer = api.request("GET", "/api/v1/stats")

    def text(s: dict[str, Any]) -> str:
        totals, workers = s["totals"], s["workers"]
        throughput = s["throughput"]
        pairs: list[tuple[str, Any]] = [
            ("queues", s["queues"]),
            (
                "workers",
                f"{workers['total']} ({workers['tcp']} tcp, {workers['http']} http)",
            ),
            ("latency", duration(s["latency"])),
            ("pushed", totals["pushed"]),
            ("processed", totals["processed"]),
            ("failed", totals["failed"]),
        ]
        pairs += [(state, totals[state]) for state in SIZED_STATES if state in totals]
        for kind in ("processed", "failed"):
            t = throughput[kind]
            pairs.append(
                (
                    f"{kind} rate",
                    f"{rate(t['last_minute'])} last minute, {rate(t['last_hour'])} last hour",
                )
            )
        return fields(pairs)

    out.show(answer, text)


def _queue_row(q: dict[str, Any]) -> list[str]:
    sizes, totals = q["sizes"], q["totals"]
    return [
        cell(q["name"]),
        "paused" if q["paused"] else "active",
        *(str(sizes[s]) for s in SIZED_STATES),
        duration(q["latency"]),
        str(totals["processed"]),
        str(totals["failed"]),
    ]


QUEUE_HEADERS = (
    "QUEUE",
    "STATE",
    *(s.upper() for s in SIZED_STATES),
    "LATENCY",
    "PROCESSED",
    "FAILED",
)


def cmd_queues(api: Api, args: argparse.Namespace, out: Output) -> None:
    """
    procession queues [QUEUE]: C{GET /api/v1/queues[/QUEUE]}.
    """
    if args.name is not None:
        answer = api.request("GET", "/api/v1/queues/" + segment(args.name))

        def one(q: dict[str, Any]) -> str:
            t = q["throughput"]
            pairs: list[tuple[str, Any]] = [
                ("queue", q["name"]),
                ("state", "paused" if q["paused"] else "active"),
            ]
            pairs += [(s, q["sizes"][s]) for s in SIZED_STATES]
            pairs += [
                ("latency", duration(q["latency"])),
                ("oldest queued", moment(q.get("oldest_enqueued_at"))),
                ("pushed", q["totals"]["pushed"]),
                ("processed", q["totals"]["processed"]),
                ("failed", q["totals"]["failed"]),
            ]
            for kind in ("processed", "failed"):
                last_minute, last_hour = t[kind]["last_minute"], t[kind]["last_hour"]
                pairs.append(
                    (
                        f"{kind} rate",
                        f"{rate(last_minute)} last minute, {rate(last_hour)} last hour",
                    )
                )
            return fields(pairs)

        out.show(answer, one)
        return
    answer = api.request("GET", "/api/v1/queues")

    def text(a: dict[str, Any]) -> str:
        if not a["queues"]:
            return "no queues"
        return table(
            QUEUE_HEADERS, [_queue_row(q) for q in a["queues"]], right=range(2, 10)
        )

    out.show(answer, text)


JOB_HEADERS = ("ID", "QUEUE", "TYPE", "STATE", "ATTEMPT", "CREATED", "ARGS")


def _job_row(job: dict[str, Any]) -> list[str]:
    return [
        cell(job["id"]),
        cell(job["queue"]),
        shorten(cell(job["type"])),
        cell(job["state"]),
        f"{job['attempt']}/{job['max_attempts']}",
        moment(job.get("created_at")),
        shorten(cell(job.get("args"))),
    ]


def cmd_jobs(api: Api, args: argparse.Namespace, out: Output) -> None:
    """
    procession jobs: C{GET /api/v1/jobs}, as many pages as it takes.
    """
    # A filtered page may hold fewer jobs than asked for, even none, and
    # still have a cursor: follow cursors until the page is full, asking
    # each time for what is missing, so that the last cursor is exactly
    # where this page ends.
    wanted = None if args.all else args.limit
    jobs: list[dict[str, Any]] = []
    cursor = args.cursor
    while True:
        missing = MAX_PAGE if wanted is None else wanted - len(jobs)
        page = api.request(
            "GET",
            "/api/v1/jobs",
            {
                "queue": args.queue,
                "state": args.state,
                "type": args.type,
                "limit": min(missing, MAX_PAGE),
                "cursor": cursor,
            },
        )
        jobs.extend(page["jobs"])
        cursor = page["cursor"]
        if cursor is None or (wanted is not None and len(jobs) >= wanted):
            break
    answer = {"jobs": jobs, "cursor": cursor}

    def text(a: dict[str, Any]) -> str:
        if not a["jobs"]:
            return "no jobs"
        return table(JOB_HEADERS, [_job_row(j) for j in a["jobs"]], right=[4])

    out.show(answer, text)
    if cursor is not None and not out.json:
        out.note(f"more jobs: add --cursor {cursor}")


def _job_id(job_id: str) -> str:
    if job_id == "next":
        # GET /api/v1/jobs/next is the worker's long poll: it would take a
        # job, not show one.
        raise UsageError(
            "the HTTP API cannot show a job whose id is 'next' (that route "
            "takes a job); find it with 'procession jobs'"
        )
    return segment(job_id)


def _error_lines(errors: list[dict[str, Any]]) -> list[str]:
    lines = [f"errors ({len(errors)}, newest first):"]
    for n, error in enumerate(errors):
        lines.append(
            f"  {moment(error.get('at'))}  {cell(error.get('worker'))}  "
            f"{cell(error.get('type'))}: {cell(error.get('message'))}"
        )
        if n == 0:
            # The newest failure's traceback is the one that matters; --json
            # has them all.
            lines.extend("      " + cell(line) for line in error.get("backtrace") or [])
    return lines


def cmd_job(api: Api, args: argparse.Namespace, out: Output) -> None:
    """
    procession job ID: C{GET /api/v1/jobs/ID}.
    """
    answer = api.request("GET", "/api/v1/jobs/" + _job_id(args.id))

    def text(job: dict[str, Any]) -> str:
        pairs = []
        for name, value in job.items():
            if name == "errors":
                continue
            if name == "timeout":
                value = duration(value)
            elif name.endswith("_at"):
                value = moment(value)
            pairs.append((name, value))
        lines = [fields(pairs)]
        if job.get("errors"):
            lines += _error_lines(job["errors"])
        return "\n".join(lines)

    out.show(answer, text)


def _json_option(name: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise UsageError(f"{name} is not valid JSON: {e}") from None


def cmd_push(api: Api, args: argparse.Namespace, out: Output) -> None:
    """
    procession push TYPE: C{POST /api/v1/jobs}.
    """
    job: dict[str, Any] = {"type": args.type}
    if args.args is not None:
        job["args"] = _json_option("--args", args.args)
    meta = _json_option("--meta", args.meta)
    for name, value in (
        ("queue", args.queue),
        ("id", args.id),
        ("priority", args.priority),
        ("delay", args.delay),
        ("run_at", args.run_at),
        ("max_attempts", args.max_attempts),
        ("timeout", args.timeout),
        ("meta", meta),
        ("limit_key", args.limit_key),
        ("unique_for", args.unique_for),
        ("unique_key", args.unique_key),
        ("unique_until", args.unique_until),
        ("expires_in", args.expires_in),
        ("expires_at", args.expires_at),
    ):
        if value is not None:
            job[name] = value
    answer = api.request("POST", "/api/v1/jobs", body=job)

    def text(a: dict[str, Any]) -> str:
        if a["created"]:
            return f"pushed {cell(a['id'])}"
        if args.unique_for is not None and a["id"] != args.id:
            return f"{cell(a['id'])} holds the unique lock: nothing pushed"
        return f"{cell(a['id'])} exists already: nothing pushed"

    out.show(answer, text)


def _bulk(
    api: Api,
    args: argparse.Namespace,
    out: Output,
    action: str,
    allowed: tuple[str, ...],
    done: str,
) -> None:
    if args.state is None:
        raise UsageError(f"{action} --queue needs --state ({'|'.join(allowed)})")
    if args.state not in allowed:
        raise UsageError(
            f"{action} --queue: --state must be one of {', '.join(allowed)}"
        )
    answer = api.request(
        "POST", f"/api/v1/queues/{segment(args.queue)}/{action}", {"state": args.state}
    )
    out.show(
        answer,
        lambda a: (
            f"{done} {plural(a['count'], args.state + ' job')} of queue {cell(args.queue)}"
        ),
    )


def _job_change(action: str) -> Callable[[Api, argparse.Namespace, Output], None]:
    """
    procession retry/kill/cancel/delete: one job by id, or (retry and kill)
    every job of one state of a queue.
    """
    bulk = {"retry": (RETRYABLE, "retried"), "kill": (KILLABLE, "killed")}.get(action)

    def command(api: Api, args: argparse.Namespace, out: Output) -> None:
        if bulk is not None:
            if (args.id is None) == (args.queue is None):
                raise UsageError(
                    f"{action} takes a job id, or --queue and --state: one of them"
                )
            if args.queue is not None:
                _bulk(api, args, out, action, *bulk)
                return
            if args.state is not None:
                raise UsageError("--state goes with --queue")
        path = "/api/v1/jobs/" + segment(args.id)
        if action == "delete":
            answer = api.request("DELETE", path)
        else:
            answer = api.request("POST", path + "/" + action)

        def text(a: dict[str, Any]) -> str:
            name, queue = cell(a["id"]), cell(a["queue"])
            if action == "delete":
                return (
                    f"{name}: deleted (it was {a['previous_state']}, in queue {queue})"
                )
            return f"{name}: {a['previous_state']} -> {a['state']} (queue {queue})"

        out.show(answer, text)

    command.__name__ = f"cmd_{action}"
    return command


def _pause(paused: bool) -> Callable[[Api, argparse.Namespace, Output], None]:
    """
    procession pause/resume QUEUE.
    """
    word = "paused" if paused else "resumed"
    action = "pause" if paused else "resume"

    def command(api: Api, args: argparse.Namespace, out: Output) -> None:
        answer = api.request("POST", f"/api/v1/queues/{segment(args.queue)}/{action}")

        def text(a: dict[str, Any]) -> str:
            if a["changed"]:
                return f"queue {cell(a['name'])} {word}"
            state = "paused" if a["paused"] else "not paused"
            return f"queue {cell(a['name'])} was {state} already"

        out.show(answer, text)

    command.__name__ = f"cmd_{action}"
    return command


def cmd_purge(api: Api, args: argparse.Namespace, out: Output) -> None:
    """
    procession purge QUEUE --state S: C{DELETE /api/v1/queues/QUEUE/jobs}.
    """
    answer = api.request(
        "DELETE", f"/api/v1/queues/{segment(args.queue)}/jobs", {"state": args.state}
    )
    out.show(
        answer,
        lambda a: (
            f"deleted {plural(a['count'], args.state + ' job')} of queue {cell(args.queue)}"
        ),
    )


def _rate_option(text: str) -> dict[str, Any]:
    """
    C{--rate N} (N jobs a second) or C{--rate N/S} (N jobs per S seconds).
    """
    limit, _, per = text.partition("/")
    try:
        rate: dict[str, Any] = {"limit": int(limit)}
        if per:
            rate["per"] = float(per)
    except ValueError:
        raise UsageError(
            f"--rate must look like 10 (a second) or 10/60 (per 60 s), not {text!r}"
        ) from None
    return rate


def limits_text(a: dict[str, Any]) -> str:
    """
    A queue's limits and their status, for people.
    """
    status = a["status"]
    if a["rate"] is None:
        rate_text = "-"
    else:
        rate_text = f"{a['rate']['limit']} per {duration(a['rate']['per'])}"
    if status["throttled"]:
        throttled = f"yes, since {moment(status['throttled_since'])}"
    else:
        throttled = "no"
    pairs = [
        ("queue", a["queue"]),
        ("concurrency", "-" if a["concurrency"] is None else a["concurrency"]),
        ("rate", rate_text),
        ("per key", "yes" if a["per_key"] else "no"),
        ("running", status["running"]),
        ("started in window", status["started_in_window"]),
        ("throttled", throttled),
        ("throttled in all", duration(status["throttled_seconds"])),
        ("next slot", moment(status["next_slot"])),
    ]
    if a["per_key"]:
        pairs.append(("keys with jobs", status["keys"]))
        pairs.append(("keys waiting", status["keys_waiting"]))
    return fields(pairs)


def cmd_limits(api: Api, args: argparse.Namespace, out: Output) -> None:
    """
    procession limits QUEUE [...]: C{GET} or C{PUT /api/v1/queues/QUEUE/limits}.
    """
    path = f"/api/v1/queues/{segment(args.queue)}/limits"
    body: dict[str, Any] = {}
    if args.concurrency is not None:
        body["concurrency"] = args.concurrency
    if args.rate is not None:
        body["rate"] = _rate_option(args.rate)
    if args.per_key:
        body["per_key"] = True
    if body and args.none:
        raise UsageError("--none lifts every limit: give it alone")
    if body or args.none:
        answer = api.request("PUT", path, body=body)
    else:
        answer = api.request("GET", path)
    out.show(answer, limits_text)


PERIODIC_HEADERS = (
    "NAME",
    "CRON",
    "ZONE",
    "NEXT RUN",
    "LAST RUN",
    "LAST JOB",
    "STATUS",
)


def _periodic_row(e: dict[str, Any]) -> list[str]:
    last = e["last_job"]
    status = "paused" if e["paused"] else "active"
    if e["source"] == "file":
        status += ", from the file"
    return [
        cell(e["name"]),
        cell(e["cron"]),
        cell(e["timezone"]),
        moment(e["next_run"]),
        moment(e["last_run"]),
        "-" if last is None else f"{cell(last['state'] or 'gone')}",
        status,
    ]


def periodic_text(e: dict[str, Any]) -> str:
    """
    One periodic entry, for people.
    """
    last = e["last_job"]
    return fields(
        [
            ("name", e["name"]),
            ("cron", e["cron"]),
            ("in words", e["description"]),
            ("timezone", e["timezone"]),
            ("job", json.dumps(e["job"], ensure_ascii=False)),
            ("missed ticks", e["missed"]),
            ("source", e["source"]),
            ("paused", "yes" if e["paused"] else "no"),
            ("next run", moment(e["next_run"])),
            ("last run", moment(e["last_run"])),
            (
                "last job",
                "-" if last is None else f"{last['id']} ({last['state'] or 'gone'})",
            ),
            ("runs", e["runs"]),
            ("skipped", e["skipped"]),
        ]
    )


def cmd_periodic(api: Api, args: argparse.Namespace, out: Output) -> None:
    """
    procession periodic [NAME [...]]: the C{/api/v1/periodic} routes.
    """
    actions = [a for a in ("pause", "resume", "run_now", "delete") if getattr(args, a)]
    define = args.cron is not None or args.job is not None
    if args.name is None:
        if actions or define or args.timezone or args.missed:
            raise UsageError("name the periodic entry to change")
        answer = api.request("GET", "/api/v1/periodic")

        def listing(a: dict[str, Any]) -> str:
            if not a["periodic"]:
                return "no periodic entries"
            return table(PERIODIC_HEADERS, [_periodic_row(e) for e in a["periodic"]])

        out.show(answer, listing)
        return
    path = f"/api/v1/periodic/{segment(args.name)}"
    if len(actions) + bool(define) > 1:
        raise UsageError(
            "give one of --cron/--job, --pause, --resume, --run and --delete"
        )
    if define:
        if args.cron is None or args.job is None:
            raise UsageError("a periodic entry needs both --cron and --job")
        body: dict[str, Any] = {
            "cron": args.cron,
            "job": _json_option("--job", args.job),
        }
        if args.timezone is not None:
            body["timezone"] = args.timezone
        if args.missed is not None:
            body["missed"] = args.missed
        out.show(api.request("PUT", path, body=body), periodic_text)
    elif args.delete:
        out.show(
            api.request("DELETE", path),
            lambda a: f"periodic entry {a['name']} deleted",
        )
    elif args.run_now:
        out.show(
            api.request("POST", path + "/run"),
            lambda a: f"pushed {cell(a['id'])}",
        )
    elif actions:
        out.show(api.request("POST", f"{path}/{actions[0]}"), periodic_text)
    else:
        if args.timezone is not None or args.missed is not None:
            raise UsageError("--timezone and --missed go with --cron and --job")
        out.show(api.request("GET", path), periodic_text)


WORKER_HEADERS = ("KIND", "NAME", "QUEUES", "JOBS", "SINCE", "STATUS")


def _worker_row(w: dict[str, Any]) -> list[str]:
    if w.get("kind") == "tcp":
        since = w.get("connected_at")
        status = f"credit {w.get('credit')}" + (", quiet" if w.get("quiet") else "")
    else:
        since = w.get("since")
        status = (
            f"waiting {w.get('waiting', 0)}, last seen {moment(w.get('last_seen'))}"
        )
    return [
        cell(w.get("kind")),
        cell(w.get("name")),
        cell(",".join(w.get("queues") or [])),
        str(len(w.get("jobs") or [])),
        moment(since),
        status,
    ]


def cmd_workers(api: Api, args: argparse.Namespace, out: Output) -> None:
    """
    procession workers: C{GET /api/v1/workers}.
    """
    answer = api.request("GET", "/api/v1/workers")

    def text(a: dict[str, Any]) -> str:
        if not a["workers"]:
            return "no workers"
        return table(WORKER_HEADERS, [_worker_row(w) for w in a["workers"]], right=[3])

    out.show(answer, text)


def cmd_quiet(api: Api, args: argparse.Namespace, out: Output) -> None:
    """
    procession quiet WORKER: C{POST /api/v1/workers/WORKER/quiet}.
    """
    answer = api.request("POST", f"/api/v1/workers/{segment(args.worker)}/quiet")
    out.show(answer, lambda a: "quieted " + ", ".join(cell(n) for n in a["quieted"]))


# -- the command line


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _page_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_PAGE}")
    return value


def _connection_options(parser: argparse.ArgumentParser, top: bool) -> None:
    # The same options on the main parser and on each command, so they may
    # come before or after the command; on the commands they default to
    # nothing at all, so as not to hide a value given before.
    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--url",
        default=default(None),
        help=f"the server's HTTP address (default: PROCESSION_URL, else {DEFAULT_URL})",
    )
    group.add_argument(
        "--token",
        default=default(None),
        help="the admin token (default: PROCESSION_ADMIN_TOKEN, else PROCESSION_TOKEN)",
    )
    group.add_argument(
        "--token-file",
        default=default(None),
        metavar="PATH",
        help="read the token from this file (keeps it out of the process list)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the API's JSON answer instead of text",
    )
    group.add_argument(
        "--request-timeout",
        type=_seconds,
        default=default(DEFAULT_REQUEST_TIMEOUT),
        metavar="S",
        help=f"seconds to wait for the server (default {DEFAULT_REQUEST_TIMEOUT:g})",
    )


def build_parser() -> argparse.ArgumentParser:
    """
    The parser of the whole command line.
    """
    parser = argparse.ArgumentParser(
        prog="procession",
        description="Look after a procession server through its HTTP API.",
        epilog=(
            "Exit status: 0 done, 1 the server refused the request, 2 wrong usage, "
            "3 the server could not be reached. See docs/cli.rst."
        ),
    )
    _connection_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, run: Callable[..., None], help: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        _connection_options(sub, top=False)
        sub.set_defaults(run=run)
        return sub

    command("stats", cmd_stats, "totals over every queue, throughput and workers")

    sub = command(
        "queues", cmd_queues, "every queue's sizes, latency and totals, or one queue's"
    )
    sub.add_argument(
        "name", nargs="?", metavar="QUEUE", help="show only this queue, in full"
    )

    sub = command("jobs", cmd_jobs, "list jobs, newest first")
    sub.add_argument("--queue", help="only this queue's jobs")
    sub.add_argument("--state", choices=STATES, help="only jobs in this state")
    sub.add_argument("--type", help="only jobs of this type")
    sub.add_argument(
        "--limit",
        type=_page_size,
        default=50,
        metavar="N",
        help=f"at most N jobs (1 to {MAX_PAGE}, default 50)",
    )
    sub.add_argument("--cursor", metavar="C", help="continue where a listing stopped")
    sub.add_argument(
        "--all", action="store_true", help="every matching job, however many"
    )

    sub = command("job", cmd_job, "everything about one job, its errors included")
    sub.add_argument("id", metavar="ID")

    sub = command("push", cmd_push, "push a job")
    sub.add_argument("type", metavar="TYPE")
    sub.add_argument(
        "--args", metavar="JSON", help="the job's arguments, as JSON (default [])"
    )
    sub.add_argument("--queue", help="default: default")
    sub.add_argument(
        "--id", help="the job's id; a push of an existing id changes nothing"
    )
    sub.add_argument(
        "--priority", type=int, metavar="N", help="higher runs first (default 0)"
    )
    sub.add_argument(
        "--delay",
        type=float,
        metavar="S",
        help="run it no sooner than S seconds from now",
    )
    sub.add_argument(
        "--run-at", metavar="TIME", help="run it no sooner than this RFC 3339 time"
    )
    sub.add_argument("--max-attempts", type=int, metavar="N", help="default 25")
    sub.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="the job's lease, in seconds (default 300)",
    )
    sub.add_argument("--meta", metavar="JSON", help="an object kept with the job")
    sub.add_argument(
        "--limit-key",
        metavar="KEY",
        help="the key its queue's per_key limits count it under (docs/limits.rst)",
    )
    sub.add_argument(
        "--unique-for",
        type=float,
        metavar="S",
        help="refuse another push of the same unique key for S seconds",
    )
    sub.add_argument(
        "--unique-key", metavar="KEY", help="with --unique-for: the key to lock"
    )
    sub.add_argument(
        "--unique-until",
        choices=("success", "start"),
        help="with --unique-for: when the lock frees (default success)",
    )
    sub.add_argument(
        "--expires-in",
        type=float,
        metavar="S",
        help="never run it if not started within S seconds",
    )
    sub.add_argument(
        "--expires-at", metavar="TIME", help="never run it after this RFC 3339 time"
    )

    for action, help, bulk in (
        ("retry", "run a scheduled, retrying or dead job now", RETRYABLE),
        ("kill", "send an unfinished job to dead", KILLABLE),
        ("cancel", "cancel an unfinished job", None),
        ("delete", "remove a job and its history", None),
    ):
        sub = command(action, _job_change(action), help)
        if bulk is None:
            sub.add_argument("id", metavar="ID")
        else:
            sub.add_argument("id", metavar="ID", nargs="?")
            sub.add_argument(
                "--queue", help=f"{action} every job of this queue in --state instead"
            )
            sub.add_argument(
                "--state", choices=bulk, help="with --queue: the state of the jobs"
            )

    sub = command(
        "pause", _pause(True), "stop a queue handing out jobs (it still takes pushes)"
    )
    sub.add_argument("queue", metavar="QUEUE")
    sub = command("resume", _pause(False), "let a paused queue hand out jobs again")
    sub.add_argument("queue", metavar="QUEUE")

    sub = command(
        "limits",
        cmd_limits,
        "show a queue's concurrency and rate limits, or replace them",
    )
    sub.add_argument("queue", metavar="QUEUE")
    sub.add_argument(
        "--concurrency", type=int, metavar="N", help="at most N of its jobs running"
    )
    sub.add_argument(
        "--rate",
        metavar="N[/S]",
        help="at most N jobs started a second, or per S seconds",
    )
    sub.add_argument(
        "--per-key",
        action="store_true",
        help="the limits apply to each limit_key of its jobs apart",
    )
    sub.add_argument("--none", action="store_true", help="lift every limit")

    sub = command("purge", cmd_purge, "delete every job of one state from a queue")
    sub.add_argument("queue", metavar="QUEUE")
    sub.add_argument("--state", choices=PURGEABLE, required=True)

    sub = command(
        "periodic",
        cmd_periodic,
        "list periodic (cron) entries, show one, define one, or pause, resume, "
        "run or delete it",
    )
    sub.add_argument("name", nargs="?", metavar="NAME", help="the entry")
    sub.add_argument(
        "--cron", metavar="EXPR", help="define it: the cron expression (with --job)"
    )
    sub.add_argument(
        "--job", metavar="JSON", help="define it: the job template, as JSON"
    )
    sub.add_argument(
        "--timezone", metavar="ZONE", help="with --cron: an IANA zone (default UTC)"
    )
    sub.add_argument(
        "--missed",
        choices=("skip", "all"),
        help="with --cron: what to do with missed ticks (default skip)",
    )
    for flag, dest, text in (
        ("pause", "pause", "pause it: its ticks pass without jobs"),
        ("resume", "resume", "resume it from its next tick"),
        ("run", "run_now", "push its job now"),
        ("delete", "delete", "remove it (its jobs stay)"),
    ):
        sub.add_argument(f"--{flag}", dest=dest, action="store_true", help=text)

    command("workers", cmd_workers, "the workers of the server that answers")

    sub = command(
        "quiet", cmd_quiet, "tell a TCP worker to finish its jobs and take no more"
    )
    sub.add_argument(
        "worker", metavar="WORKER", help="a connection (name#N) or a worker name"
    )
    return parser


def _token(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    if args.token_file is not None:
        if args.token is not None:
            raise UsageError("--token and --token-file: give one")
        try:
            with open(args.token_file, encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError as e:
            raise UsageError(f"cannot read --token-file: {e.strerror}") from None
    return (
        args.token
        or environ.get("PROCESSION_ADMIN_TOKEN")
        or environ.get("PROCESSION_TOKEN")
        or None
    )


def _url(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    url = args.url or environ.get("PROCESSION_URL") or DEFAULT_URL
    parts = urllib.parse.urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or parts.query
        or parts.fragment
    ):
        raise UsageError(f"the URL must look like http://host:port, not {url!r}")
    return url


def main(
    argv: Sequence[str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """
    Run one command; its exit status.
    """
    if stdout is None:
        stdout = sys.stdout
        # A job's type or args may hold any character: never fail to print
        # one on a terminal or pipe that is not UTF-8.
        if hasattr(stdout, "reconfigure"):
            stdout.reconfigure(errors="backslashreplace")
    stderr = stderr or sys.stderr
    environ = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output(stdout, stderr, args.json)
    try:
        api = Api(_url(args, environ), _token(args, environ), args.request_timeout)
        args.run(api, args, out)
        stdout.flush()
    except UsageError as e:
        stderr.write(f"procession: error: {e}\n")
        return USAGE_ERROR
    except ApiError as e:
        stderr.write(f"procession: {e}\n")
        return API_ERROR
    except Unreachable as e:
        stderr.write(f"procession: {e}\n")
        return UNREACHABLE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (| head): nothing more to say, to anyone.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return OK
    return OK


if __name__ == "__main__":
    sys.exit(main())
