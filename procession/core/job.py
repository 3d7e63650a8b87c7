"""
Jobs: what a client may submit, how it is checked, and how a job looks on
the wire and in Redis.

This module is pure: no I/O, no reactor.  Every conversion between a job's
three forms (the JSON a client sends, the fields of its Redis hash, the
JSON the server sends back) lives here, once each.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from functools import lru_cache
from datetime import datetime, timezone
from typing import Any, TypeGuard, overload

from attrs import frozen

from procession.core.json_checks import MAX_NESTING, READ_NESTING, too_deep
from procession.core.errors import (
    InvalidJob,
    InvalidRequest,
    JobTooLarge,
    ProcessionError,
)
from procession.core.wire import MAX_BATCH, MAX_QUEUES, WORKER_NAME_LIMIT

# "." and ".." are not names: as a path segment (UI links, API routes)
# they mean "here" and "up".
QUEUE_NAME = re.compile(r"(?!\.{1,2}\Z)[A-Za-z0-9_.:-]{1,128}\Z")
JOB_ID = re.compile(r"[\x21-\x7e]{1,128}\Z")

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 25
DEFAULT_TIMEOUT = 300.0
MAX_TIMEOUT = 7 * 86400.0
MAX_ATTEMPTS_LIMIT = 1000
PRIORITY_LIMIT = 1_000_000
MAX_TYPE_LENGTH = 256
MAX_RETRY_IN = 365 * 86400.0


# How long a unique lock may last at most, and the states that end it.
MAX_UNIQUE_FOR = 30 * 86400.0
UNIQUE_UNTIL = ("start", "success")
MAX_UNIQUE_KEY = 1024
MAX_EXPIRES_IN = 10 * 365 * 86400.0

SUBMISSION_FIELDS = frozenset(
    {
        "id",
        "type",
        "args",
        "queue",
        "priority",
        "run_at",
        "delay",
        "max_attempts",
        "timeout",
        "meta",
        "limit_key",
        "batch",
        "after",
        "on_parent_dead",
        "unique_for",
        "unique_key",
        "unique_until",
        "expires_at",
        "expires_in",
    }
)

#: The longest C{limit_key} (docs/limits.rst).
LIMIT_KEY_LENGTH = 128

# The most jobs one job may run after.
MAX_PARENTS = 100
ON_PARENT_DEAD = ("cancel", "run")


def new_job_id() -> str:
    """
    A fresh, unguessable job id (96 random bits, hex).
    """
    return os.urandom(12).hex()


@overload
def format_time(ms: int) -> str: ...
@overload
def format_time(ms: None) -> None: ...
@overload
def format_time(ms: int | None) -> str | None: ...
def format_time(ms: int | None) -> str | None:
    """
    Milliseconds since the epoch as an RFC 3339 UTC time, or L{None}.
    """
    if ms is None:
        return None
    return _format_ms(ms)


@lru_cache(maxsize=4096)
def _format_ms(ms: int) -> str:
    # Cached: on the hot path, the jobs of one batch share their times;
    # and jobs pushed one at a time, the second their times fall in.
    return f"{_format_second(ms // 1000)}.{ms % 1000:03d}Z"


@lru_cache(maxsize=64)
def _format_second(seconds: int) -> str:
    t = time.gmtime(seconds)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    )


def parse_time(text: str) -> int:
    """
    An RFC 3339 time as milliseconds since the epoch.

    @raise ValueError: when C{text} is not an RFC 3339 time with an offset.
    """
    if not isinstance(text, str) or len(text) > 64:
        raise ValueError("not a time")
    when = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError("a time needs a UTC offset or Z")
    # Exact integer arithmetic: timestamp() is a float and would round
    # some milliseconds down.
    delta = when - datetime(1970, 1, 1, tzinfo=timezone.utc)
    ms = (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if not 0 <= ms <= LATEST_TIME_MS:
        # 9999-12-31T20:00:00-05:00 is in year 10000 in UTC, which no RFC
        # 3339 time can write.
        raise ValueError("a time from 1970 to 9999-12-31T23:59:59.999Z")
    return ms


#: The last millisecond an RFC 3339 time can write in UTC.
LATEST_TIME_MS = 253402300799999


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


@frozen
class NewJob:
    """
    A validated submission, ready for the push script.

    C{args} and C{meta} stay encoded: they are stored and sent back exactly
    as the client wrote them, and never decoded again on the hot path.
    """

    id: str
    type: str
    queue: str
    args: str
    priority: int
    max_attempts: int
    timeout: float
    meta: str
    run_at: int
    created_at: int
    # The key its queue's per_key limits count it under ('' for none).
    limit_key: str = ""
    # Workflows (docs/workflows.rst): the batch it belongs to, the ids of
    # the jobs it runs after, and what it does when one of those dies.
    batch: str | None = None
    after: tuple[str, ...] = ()
    on_parent_dead: str = "cancel"
    # Unique jobs: the lock's name (a digest of the unique key, '' for
    # none), how long it may last (ms) and when it frees.
    unique_lock: str = ""
    unique_for: int = 0
    unique_until: str = "success"
    # Expiring jobs: not run after this time (ms; 0 for never).
    expires_at: int = 0

    def script_args(self, now_ms: int) -> list[str | int | float]:
        """
        The values the push script reads for this job, in its order, when
        it is pushed at C{now_ms}.
        """
        return [
            self.id,
            self.type,
            self.args,
            self.priority,
            self.max_attempts,
            # as txredisapi writes a float, so that the Redis command can
            # be packed by hiredis (procession.redis.connection)
            format(self.timeout, "f"),
            self.meta,
            self.run_at,
            self.wire(now_ms),
            self.limit_key,
        ]

    def lifetime_args(self) -> list[str | int]:
        """
        The values the push script reads after the job's workflow value:
        its unique lock (name, unique_for ms, unique_until) and its
        expires_at (ms, 0 for never).
        """
        return [self.unique_lock, self.unique_for, self.unique_until, self.expires_at]

    def wire(self, created_at: int) -> str:
        """
        The start of the C{JOB} frame's JSON for this job, created at
        C{created_at}: every member that stays the same from attempt to
        attempt, without the closing brace.  It is stored with the job, so
        that a claim reads one field and adds the attempt's own members
        (L{ClaimedJob.from_claim}).
        """
        parts = [
            '{"id":', _string(self.id),
            ',"type":', _string(self.type),
            ',"queue":', _string(self.queue),
            ',"args":', self.args,
            ',"priority":', str(self.priority),
            ',"max_attempts":', str(self.max_attempts),
            ',"timeout":', _number(repr(self.timeout)),
            ',"created_at":"', format_time(created_at), '"',
        ]  # fmt: skip
        if self.meta:
            parts += [',"meta":', self.meta]
        if self.limit_key:
            parts += [',"limit_key":', json.dumps(self.limit_key, ensure_ascii=False)]
        if self.batch is not None:
            parts += [',"batch":', json.dumps(self.batch)]
        return "".join(parts)

    @property
    def in_workflow(self) -> bool:
        """
        Whether the job is in a batch or runs after other jobs.
        """
        return self.batch is not None or bool(self.after)

    def flow_value(self, parent_queues: dict[str, str]) -> str:
        """
        The push script's workflow value for this job (workflow.lua's
        C{flow.check}): '' for a job in no batch and after no job, else
        JSON naming its batch and its parents with their queues.
        """
        if not self.in_workflow:
            return ""
        spec: dict[str, Any] = {}
        if self.batch is not None:
            spec["b"] = self.batch
        if self.after:
            spec["a"] = [[parent_queues[p], p] for p in self.after]
            spec["p"] = self.on_parent_dead
        return json.dumps(spec, separators=(",", ":"))


@frozen
class UniqueHeld:
    """
    A push's outcome when another job holds the job's unique lock: nothing
    was stored, and C{holder} is that job's id.
    """

    holder: str


#: What a push did with one job: L{True} created; L{False} its queue had a
#: job with this id; a queue's name: that other queue has one; or
#: L{UniqueHeld}.  (Each job is left alone unless created.)
PushOutcome = bool | str | UniqueHeld


def unique_lock_name(key: str | None, job_type: str, queue: str, args: object) -> str:
    """
    The name of a unique lock: a digest of the unique key, by default the
    job's type, queue and the canonical JSON of its arguments (keys
    sorted), so that equal arguments written in another order collide.
    """
    if key is None:
        key = _canonical([job_type, queue, args])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def push_reply(job_id: str, outcome: PushOutcome) -> dict[str, Any]:
    """
    What both front ends answer to a push of one job: C{outcome} is the
    store's (L{PushOutcome}).  A job refused by a unique lock is answered
    with the id of the job holding it, and C{created: false}.
    """
    if isinstance(outcome, UniqueHeld):
        return {"id": outcome.holder, "created": False}
    reply: dict[str, Any] = {"id": job_id, "created": outcome is True}
    if isinstance(outcome, str):
        reply["queue"] = outcome
    return reply


def batch_reply(jobs: list[NewJob], outcomes: list[PushOutcome]) -> dict[str, Any]:
    """
    What both front ends answer to a batch push: the ids and whether each
    was created, and, when a job's id was taken in another queue, the
    queue that holds each job (C{queues}).
    """
    reply: dict[str, Any] = {
        "ids": [
            o.holder if isinstance(o, UniqueHeld) else j.id
            for j, o in zip(jobs, outcomes)
        ],
        "created": [o is True for o in outcomes],
    }
    if any(isinstance(o, str) for o in outcomes):
        reply["queues"] = [
            o if isinstance(o, str) else j.queue for j, o in zip(jobs, outcomes)
        ]
    return reply


def parse_submission(
    obj: object, now_ms: int, max_size: int, encoded_size: int | None = None
) -> NewJob:
    """
    Check one submitted job and fill in its defaults.

    @param obj: the decoded JSON the client sent.
    @param now_ms: the current time, for C{delay}.
    @param max_size: the most bytes a job may take (C{--max-job-size}).
    @param encoded_size: the size of the job's JSON as received, when the
        caller knows it; otherwise it is measured here.
    @raise InvalidJob: naming the field at fault.
    @raise JobTooLarge: when the job is over C{max_size}.
    """
    if not isinstance(obj, dict):
        raise InvalidJob("a job must be a JSON object", field=None)
    unknown = sorted(set(obj) - SUBMISSION_FIELDS)
    if unknown:
        raise InvalidJob(f"unknown field {unknown[0]!r}", field=unknown[0])

    job_type = obj.get("type")
    if not isinstance(job_type, str) or not job_type:
        raise InvalidJob("type must be a non-empty string", field="type")
    if len(job_type) > MAX_TYPE_LENGTH:
        raise InvalidJob(
            f"type must be at most {MAX_TYPE_LENGTH} characters", field="type"
        )

    job_id = obj.get("id")
    if job_id is None:
        job_id = new_job_id()
    elif not isinstance(job_id, str) or not JOB_ID.match(job_id):
        raise InvalidJob(
            "id must be 1 to 128 printable ASCII characters without spaces",
            field="id",
        )

    queue = obj.get("queue", DEFAULT_QUEUE)
    if not isinstance(queue, str) or not QUEUE_NAME.match(queue):
        raise InvalidJob("queue must match [A-Za-z0-9_.:-]{1,128}", field="queue")

    priority = obj.get("priority", 0)
    if not _is_int(priority) or abs(priority) > PRIORITY_LIMIT:
        raise InvalidJob(
            f"priority must be an integer between -{PRIORITY_LIMIT} and "
            f"{PRIORITY_LIMIT}",
            field="priority",
        )

    max_attempts = obj.get("max_attempts", DEFAULT_MAX_ATTEMPTS)
    if not _is_int(max_attempts) or not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise InvalidJob(
            f"max_attempts must be an integer from 1 to {MAX_ATTEMPTS_LIMIT}",
            field="max_attempts",
        )

    timeout = obj.get("timeout", DEFAULT_TIMEOUT)
    if not _is_number(timeout) or not 0 < timeout <= MAX_TIMEOUT:
        raise InvalidJob(
            f"timeout must be a number of seconds above 0 and at most "
            f"{int(MAX_TIMEOUT)}",
            field="timeout",
        )

    run_at = now_ms
    if "run_at" in obj and "delay" in obj:
        raise InvalidJob("give run_at or delay, not both", field="run_at")
    if "run_at" in obj:
        try:
            run_at = parse_time(obj["run_at"])
        except (ValueError, OverflowError, OSError):
            raise InvalidJob(
                "run_at must be an RFC 3339 time such as 2026-01-02T03:04:05Z",
                field="run_at",
            )
    elif "delay" in obj:
        delay = obj["delay"]
        if not _is_number(delay) or not 0 <= delay <= 10 * 365 * 86400:
            raise InvalidJob(
                "delay must be a number of seconds, 0 or more", field="delay"
            )
        run_at = now_ms + int(delay * 1000)

    limit_key = obj.get("limit_key", "")
    if (
        not isinstance(limit_key, str)
        or len(limit_key) > LIMIT_KEY_LENGTH
        or ("limit_key" in obj and not limit_key)
    ):
        raise InvalidJob(
            f"limit_key must be a string of 1 to {LIMIT_KEY_LENGTH} characters",
            field="limit_key",
        )

    batch, after, on_parent_dead = _parse_flow(obj, job_id)

    meta = obj.get("meta", None)
    if meta is not None and not isinstance(meta, dict):
        raise InvalidJob("meta must be a JSON object", field="meta")

    args = obj.get("args", [])
    try:
        args_text = _compact(args)
        meta_text = "" if meta is None else _compact(meta)
    except (ValueError, RecursionError):
        raise InvalidJob("args and meta must be plain JSON", field="args")
    for name, text in (("args", args_text), ("meta", meta_text)):
        if too_deep(text):
            raise InvalidJob(
                f"{name} may nest arrays and objects at most {MAX_NESTING} deep",
                field=name,
                limit=MAX_NESTING,
            )

    size = encoded_size
    if size is None:
        size = len(args_text) + len(meta_text) + len(job_type) + 256
    if size > max_size:
        raise JobTooLarge(
            f"the job is {size} bytes, over the limit of {max_size}",
            limit=max_size,
        )

    unique_lock, unique_for, unique_until = _parse_unique(obj, job_type, queue, args)
    expires_at = _parse_expiry(obj, now_ms)

    return NewJob(
        id=job_id,
        type=job_type,
        queue=queue,
        args=args_text,
        priority=priority,
        max_attempts=max_attempts,
        timeout=float(timeout),
        meta=meta_text,
        run_at=run_at,
        created_at=now_ms,
        limit_key=limit_key,
        batch=batch,
        after=after,
        on_parent_dead=on_parent_dead,
        unique_lock=unique_lock,
        unique_for=unique_for,
        unique_until=unique_until,
        expires_at=expires_at,
    )


def _parse_flow(
    obj: dict[str, Any], job_id: str
) -> tuple[str | None, tuple[str, ...], str]:
    """
    Check a submission's C{batch}, C{after} and C{on_parent_dead}.
    """
    batch = obj.get("batch")
    if batch is not None and (not isinstance(batch, str) or not BATCH_ID.match(batch)):
        raise InvalidJob(
            "batch must be a batch id: 1 to 64 printable ASCII characters "
            "without spaces",
            field="batch",
        )
    after = obj.get("after", [])
    if (
        not isinstance(after, list)
        or len(after) > MAX_PARENTS
        or not all(isinstance(p, str) and JOB_ID.match(p) for p in after)
        or len(set(after)) != len(after)
        or job_id in after
    ):
        raise InvalidJob(
            f"after must be a list of at most {MAX_PARENTS} distinct job ids "
            "(not the job's own)",
            field="after",
        )
    on_parent_dead = obj.get("on_parent_dead", "cancel")
    if on_parent_dead not in ON_PARENT_DEAD:
        raise InvalidJob(
            'on_parent_dead must be "cancel" or "run"', field="on_parent_dead"
        )
    return batch, tuple(after), on_parent_dead


BATCH_ID = re.compile(r"[\x21-\x7e]{1,64}\Z")
BATCH_FIELDS = frozenset({"id", "description", "on_success", "on_complete"})
MAX_DESCRIPTION = 1024


@frozen
class BatchSpec:
    """
    A validated request to create a batch: its id, description and
    callbacks (each a job pushed once when the batch is done, under the
    id C{<batch id>:success} or C{<batch id>:complete}).
    """

    id: str
    description: str
    on_success: NewJob | None
    on_complete: NewJob | None

    @staticmethod
    def callback_value(job: NewJob | None) -> str:
        """
        A callback as batch.lua keeps it: the push values, its queue and
        its created_at, as JSON ('' for none).
        """
        if job is None:
            return ""
        return json.dumps(
            {"v": job.script_args(job.created_at), "q": job.queue, "c": job.created_at},
            separators=(",", ":"),
        )


def parse_batch_spec(obj: object, now_ms: int, max_size: int) -> BatchSpec:
    """
    Check a request to create a batch (HTTP C{POST /api/v1/batches}, TCP
    C{BATCH {"action": "new"}}).

    @raise InvalidRequest: naming the field at fault.
    """
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise InvalidRequest("a batch must be a JSON object")
    unknown = sorted(set(obj) - BATCH_FIELDS - {"action"})
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}", field=unknown[0])
    batch_id = obj.get("id")
    if batch_id is None:
        batch_id = new_job_id()
    elif not isinstance(batch_id, str) or not BATCH_ID.match(batch_id):
        raise InvalidRequest(
            "id must be 1 to 64 printable ASCII characters without spaces",
            field="id",
        )
    description = obj.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise InvalidRequest(
            f"description must be a string of at most {MAX_DESCRIPTION} characters",
            field="description",
        )
    callbacks: dict[str, NewJob | None] = {}
    for name, suffix in (("on_success", "success"), ("on_complete", "complete")):
        value = obj.get(name)
        if value is None:
            callbacks[name] = None
            continue
        if not isinstance(value, dict):
            raise InvalidRequest(f"{name} must be a job (a JSON object)", field=name)
        for taken in ("id", "batch", "after", "on_parent_dead"):
            if taken in value:
                raise InvalidRequest(
                    f"{name} may not give {taken!r}: a callback's id is "
                    f"<batch id>:{suffix}",
                    field=name,
                )
        try:
            callbacks[name] = parse_submission(
                {**value, "id": f"{batch_id}:{suffix}"}, now_ms, max_size
            )
        except ProcessionError as e:
            raise InvalidRequest(f"{name}: {e.message}", field=name)
    return BatchSpec(
        batch_id, description, callbacks["on_success"], callbacks["on_complete"]
    )


def _parse_unique(
    obj: dict[str, Any], job_type: str, queue: str, args: object
) -> tuple[str, int, str]:
    """
    The unique lock of a submission: its name ('' for none), how long it
    lasts (ms) and when it frees.
    """
    if "unique_for" not in obj:
        for name in ("unique_key", "unique_until"):
            if name in obj:
                raise InvalidJob(f"{name} needs unique_for", field=name)
        return "", 0, "success"
    unique_for = obj["unique_for"]
    if not _is_number(unique_for) or not 0 < unique_for <= MAX_UNIQUE_FOR:
        raise InvalidJob(
            f"unique_for must be a number of seconds above 0 and at most "
            f"{int(MAX_UNIQUE_FOR)}",
            field="unique_for",
        )
    key = obj.get("unique_key")
    if key is not None and (
        not isinstance(key, str) or not 0 < len(key) <= MAX_UNIQUE_KEY
    ):
        raise InvalidJob(
            f"unique_key must be a string of 1 to {MAX_UNIQUE_KEY} characters",
            field="unique_key",
        )
    until = obj.get("unique_until", "success")
    if until not in UNIQUE_UNTIL:
        raise InvalidJob(
            "unique_until must be 'start' or 'success'", field="unique_until"
        )
    try:
        name = unique_lock_name(key, job_type, queue, args)
    except (ValueError, TypeError, RecursionError):
        raise InvalidJob("args must be plain JSON", field="args")
    return name, max(1, int(unique_for * 1000)), until


def _parse_expiry(obj: dict[str, Any], now_ms: int) -> int:
    """
    When a submission expires (ms), or 0 for never.
    """
    if "expires_at" in obj and "expires_in" in obj:
        raise InvalidJob("give expires_at or expires_in, not both", field="expires_at")
    if "expires_at" in obj:
        try:
            return parse_time(obj["expires_at"])
        except (ValueError, OverflowError, OSError):
            raise InvalidJob(
                "expires_at must be an RFC 3339 time such as 2026-01-02T03:04:05Z",
                field="expires_at",
            )
    if "expires_in" in obj:
        expires_in = obj["expires_in"]
        if not _is_number(expires_in) or not 0 < expires_in <= MAX_EXPIRES_IN:
            raise InvalidJob(
                "expires_in must be a number of seconds above 0", field="expires_in"
            )
        return now_ms + max(1, int(expires_in * 1000))
    return 0


# Printable ASCII but the quote and the backslash: a JSON string of it is
# the text in quotes, with or without ensure_ascii.
_PLAIN = re.compile(r"[ !#-\[\]-~]*\Z")


def _string(text: str) -> str:
    """
    C{text} as a JSON string, as C{json.dumps(text, ensure_ascii=False)}
    writes it (quoted at once when it is plain ASCII: ids and queue names
    always are, job types nearly always).
    """
    if _PLAIN.match(text):
        return '"' + text + '"'
    return json.dumps(text, ensure_ascii=False)


# json.dumps with any option builds an encoder per call: build them once.
_compact = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
_compact_ascii = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_canonical = json.JSONEncoder(
    separators=(",", ":"), sort_keys=True, allow_nan=False
).encode


def parse_batch(obj: object, now_ms: int, max_size: int) -> list[NewJob]:
    """
    Check a batch of submitted jobs: all or nothing.

    @raise InvalidRequest: when C{obj} is not a non-empty list of at most
        L{MAX_BATCH} items.
    @raise InvalidJob: (or L{JobTooLarge}) for the first bad job, with its
        C{index} among the details and in the message.
    """
    if not isinstance(obj, list) or not obj:
        raise InvalidRequest("a batch is a non-empty JSON array of jobs")
    if len(obj) > MAX_BATCH:
        raise InvalidRequest(f"a batch holds at most {MAX_BATCH} jobs", limit=MAX_BATCH)
    jobs = []
    for index, item in enumerate(obj):
        try:
            jobs.append(parse_submission(item, now_ms, max_size))
        except ProcessionError as e:
            e.details["index"] = index
            e.message = f"job {index}: {e.message}"
            e.args = (e.message,)
            raise
    return jobs


def parse_queues(obj: object) -> tuple[str, ...]:
    """
    Check the queues a worker takes jobs from, in its order of preference.

    @raise InvalidRequest: unless C{obj} is a list of 1 to L{MAX_QUEUES}
        distinct queue names.
    """
    if (
        not isinstance(obj, list)
        or not obj
        or len(obj) > MAX_QUEUES
        or not all(isinstance(q, str) and QUEUE_NAME.match(q) for q in obj)
        or len(set(obj)) != len(obj)
    ):
        raise InvalidRequest(
            f"queues must be a list of 1 to {MAX_QUEUES} distinct queue names",
            field="queues",
        )
    return tuple(obj)


def parse_worker_name(obj: object) -> str:
    """
    Check the name a worker gives itself.

    @raise InvalidRequest: unless it is a string of 1 to 128 characters.
    """
    if (
        not isinstance(obj, str)
        or not 0 < len(obj) <= WORKER_NAME_LIMIT
        or not obj.isprintable()
    ):
        raise InvalidRequest(
            f"worker must be a name of 1 to {WORKER_NAME_LIMIT} printable "
            "characters (no newline, NUL or other control character)",
            field="worker",
        )
    return obj


def encode_result(value: object) -> str:
    """
    A job's result as stored: its JSON text, or '' for none.
    """
    if value is None:
        return ""
    try:
        text = _compact_ascii(value)
    except (ValueError, RecursionError):
        raise InvalidRequest("result must be plain JSON", field="result")
    if too_deep(text):
        raise InvalidRequest(
            f"result may nest arrays and objects at most {MAX_NESTING} deep",
            field="result",
            limit=MAX_NESTING,
        )
    return text


@frozen
class FailureReport:
    """
    A worker's report of a failed attempt, checked.

    @ivar error: the error record to keep with the job, as JSON text.
    @ivar retry_in: seconds until the retry, or L{None} for the default
        backoff.
    @ivar retry: L{False} to send the job to dead at once.
    """

    error: str
    retry_in: float | None
    retry: bool


def parse_failure(body: dict[str, Any], worker: str, now_ms: int) -> FailureReport:
    """
    Check the C{error}, C{retry_in} and C{retry} fields of a failure report
    (the TCP C{FAIL} body, the HTTP C{/fail} body).

    @param worker: the worker's name, recorded with the error.
    @raise InvalidRequest: naming the field at fault.
    """
    error = body.get("error", {})
    if error is None:
        error = {}
    if not isinstance(error, dict):
        raise InvalidRequest("error must be an object", field="error")
    try:
        deep = too_deep(_compact_ascii(error))
    except (ValueError, RecursionError):
        raise InvalidRequest("error must be plain JSON", field="error")
    if deep:
        raise InvalidRequest(
            f"error may nest arrays and objects at most {MAX_NESTING} deep",
            field="error",
            limit=MAX_NESTING,
        )
    retry_in = body.get("retry_in")
    if retry_in is not None and (
        not _is_number(retry_in) or not 0 <= retry_in <= MAX_RETRY_IN
    ):
        raise InvalidRequest(
            f"retry_in must be a number of seconds from 0 to {int(MAX_RETRY_IN)}",
            field="retry_in",
        )
    retry = body.get("retry", True)
    if not isinstance(retry, bool):
        raise InvalidRequest("retry must be true or false", field="retry")
    backtrace = error.get("backtrace", [])
    record = {
        "type": str(error.get("type", "Error"))[:256],
        "message": str(error.get("message", ""))[:4096],
        "backtrace": backtrace if isinstance(backtrace, list) else [],
        "worker": worker,
        "at": now_ms,
    }
    try:
        text = json.dumps(record, separators=(",", ":"), allow_nan=False)
    except (ValueError, RecursionError):
        raise InvalidRequest("error must be plain JSON", field="error")
    return FailureReport(text, retry_in, retry)


def failure_reply(job_id: str, state: str, run_at_ms: int) -> dict[str, Any]:
    """
    What both front ends answer to a recorded failure.
    """
    reply: dict[str, Any] = {"id": job_id, "state": state}
    if state == "retrying":
        reply["run_at"] = format_time(run_at_ms)
    return reply


def parse_extend_seconds(body: dict[str, Any]) -> float:
    """
    Check the C{seconds} of a lease extension (TCP C{EXTEND}, HTTP
    C{/extend}).

    @raise InvalidRequest: unless it is a number above 0 and at most
        L{MAX_TIMEOUT}.
    """
    seconds = body.get("seconds")
    if not _is_number(seconds) or not 0 < seconds <= MAX_TIMEOUT:
        raise InvalidRequest(
            f"seconds must be a number above 0 and at most {int(MAX_TIMEOUT)}",
            field="seconds",
        )
    return seconds


@frozen
class ClaimedJob:
    """
    A job just leased to a worker, with the lease's token.
    """

    id: str
    queue: str
    lease: str
    attempt: int
    payload: str
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_claim(cls, values: list[str], queue: str, lease: str) -> "ClaimedJob":
        """
        Build from one job's row of the claim script's reply (its id, then
        its hash's C{wire}, C{attempt}, C{timeout} and C{enqueued_at}, as
        claim.lua lists them): the JSON sent to the worker is the job's stored
        L{NewJob.wire} and the attempt's own members.  Leases and queue
        names need no JSON escaping.
        """
        jid, wire, attempt, timeout, enqueued_at = values
        payload = "".join(
            (
                wire,
                ',"attempt":', attempt,
                ',"enqueued_at":"', format_time(int(enqueued_at or 0)),
                '","lease":"', lease, '"}',
            )
        )  # fmt: skip
        return cls(jid, queue, lease, int(attempt), payload, float(timeout))


class ClaimedJobs(list):
    """
    The jobs one claim leased (a list of L{ClaimedJob}), and
    C{wait}: L{None}, unless the queue's limits held the claim back
    (docs/limits.rst): then seconds until a claim may find a free slot
    (0: when one of the queue's running jobs finishes, which wakes its
    consumers).
    """

    wait: float | None = None


def _number(text: str) -> str:
    value = float(text)
    if value.is_integer():
        return str(int(value))
    return repr(value)


INT_FIELDS = ("priority", "attempt", "max_attempts")
TIME_FIELDS = (
    "created_at",
    "enqueued_at",
    "run_at",
    "started_at",
    "finished_at",
)


def job_from_hash(fields: dict[str, str], errors: list[str]) -> dict[str, Any]:
    """
    Everything about a stored job as the JSON object the APIs return.

    @param fields: the job's Redis hash.
    @param errors: its error history, newest first, each a JSON text.
    """
    job: dict[str, Any] = {
        "id": fields["id"],
        "type": fields["type"],
        "queue": fields["queue"],
        "state": fields["state"],
        "args": _stored(fields["args"]),
    }
    for name in INT_FIELDS:
        job[name] = int(fields.get(name) or 0)
    job["timeout"] = float(fields["timeout"])
    for name in TIME_FIELDS:
        value = fields.get(name)
        job[name] = format_time(int(value)) if value else None
    # Only an expiring job has the field (docs/periodic.rst).
    if fields.get("expires_at"):
        job["expires_at"] = format_time(int(fields["expires_at"]))
    job["worker"] = fields.get("worker") or None
    job["meta"] = _stored(fields["meta"]) if fields.get("meta") else None
    if fields.get("limit_key"):
        job["limit_key"] = fields["limit_key"]
    result = fields.get("result")
    job["result"] = _stored(result) if result else None
    # Workflow fields only when they apply (docs/workflows.rst).
    if fields.get("batch"):
        job["batch"] = fields["batch"]
    if fields.get("after"):
        job["after"] = json.loads(fields["after"])
        job["on_parent_dead"] = fields.get("opd") or "cancel"
    if fields.get("progress"):
        job["progress"] = {
            "percent": float(fields["progress"]),
            "message": fields.get("progress_message") or None,
            "at": format_time(int(fields.get("progress_at") or 0)),
        }
    job["errors"] = [_stored(e) for e in errors]
    return job


def _stored(text: str) -> Any:
    """
    A JSON value read back from a job's hash.  One nested deeper than
    pushes allow (stored before the limit existed) is given as its JSON
    text, so that no listing or page depends on the recursion limit.
    """
    if too_deep(text, READ_NESTING):
        return text
    return json.loads(text)


def backoff_jitter() -> int:
    """
    The random part of the retry delay, 0 to 30, drawn here because Redis
    seeds Lua's generator the same way for every script call.
    """
    return os.urandom(1)[0] % 31
