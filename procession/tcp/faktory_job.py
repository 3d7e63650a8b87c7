"""
Faktory's job format, both ways: a job a Faktory client pushes becomes a
procession job, and a procession job (pushed by anyone) becomes the job a
Faktory worker fetches.  docs/faktory.rst lists the mapping.

Pure: no I/O, no reactor.  The fields procession has no place for (a
Faktory C{retry} of 0 or -1, the client's C{created_at}, C{at}, the
C{backtrace} wanted) ride in the job's C{meta} under C{"_faktory"}, so
that a round trip gives back every field; the rest of C{meta} is
Faktory's C{custom}.
"""

from __future__ import annotations

import json
from typing import Any, TypeGuard

from procession.core.errors import InvalidJob, InvalidRequest
from procession.core.job import (
    MAX_ATTEMPTS_LIMIT,
    NewJob,
    format_time,
    parse_submission,
    parse_time,
)

# What Faktory's server assumes when a job does not say.
DEFAULT_RETRY = 25
DEFAULT_RESERVE_FOR = 1800
MAX_RESERVE_FOR = 86400
MIN_JID = 8
# Faktory's FAIL trims its fields to these.
MAX_ERRTYPE = 100
MAX_MESSAGE = 1000
MAX_BACKTRACE = 50
# The key of meta that keeps Faktory's own fields.
META_KEY = "_faktory"


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def to_submission(obj: object) -> dict[str, Any]:
    """
    The procession submission (the native C{PUSH} body) for a job a
    Faktory client pushed, checked as Faktory's server checks it.
    Unknown fields are ignored, as Faktory ignores them.

    @raise InvalidJob: naming the field at fault, with Faktory's message.
    """
    if not isinstance(obj, dict):
        raise InvalidJob("a job must be a JSON object", field=None)
    jid = obj.get("jid")
    if not isinstance(jid, str) or len(jid) < MIN_JID:
        raise InvalidJob("jobs must have a reasonable jid parameter", field="jid")
    jobtype = obj.get("jobtype")
    if not isinstance(jobtype, str) or not jobtype:
        raise InvalidJob("jobs must have a jobtype parameter", field="jobtype")
    args = obj.get("args")
    if not isinstance(args, list):
        raise InvalidJob("jobs must have an args parameter", field="args")
    reserve_for = obj.get("reserve_for") or 0
    if not _is_int(reserve_for) or reserve_for < 0:
        raise InvalidJob("reserve_for must be a number of seconds", field="reserve_for")
    if reserve_for > MAX_RESERVE_FOR:
        raise InvalidJob(
            "jobs cannot be reserved for more than one day", field="reserve_for"
        )
    retry = obj.get("retry")
    if retry is None:
        retry = DEFAULT_RETRY
    if not _is_int(retry) or retry < -1:
        raise InvalidJob("retry must be an integer, -1 or more", field="retry")
    queue = obj.get("queue") or "default"
    custom = obj.get("custom")
    if custom is not None and not isinstance(custom, dict):
        raise InvalidJob("custom must be a JSON object", field="custom")
    own: dict[str, Any] = {}
    if retry < 1 or retry >= MAX_ATTEMPTS_LIMIT:
        own["retry"] = retry
    created_at = obj.get("created_at")
    if isinstance(created_at, str) and created_at:
        own["created_at"] = created_at
    backtrace = obj.get("backtrace")
    if _is_int(backtrace) and backtrace:
        own["backtrace"] = backtrace
    submission: dict[str, Any] = {
        "id": jid,
        "type": jobtype,
        "args": args,
        "queue": queue,
        "max_attempts": max(1, min(retry + 1, MAX_ATTEMPTS_LIMIT)),
        "timeout": reserve_for or DEFAULT_RESERVE_FOR,
    }
    priority = obj.get("priority")
    if _is_int(priority):
        submission["priority"] = priority
    at = obj.get("at")
    if at:
        if not isinstance(at, str):
            raise InvalidJob(f"invalid timestamp for 'at': {at!r}", field="at")
        try:
            parse_time(at)
        except (ValueError, OverflowError, OSError):
            raise InvalidJob(f"invalid timestamp for 'at': {at!r}", field="at")
        submission["run_at"] = at
        own["at"] = at
    meta = dict(custom or {})
    if own:
        meta[META_KEY] = own
    if meta:
        submission["meta"] = meta
    # Faktory Enterprise's batches: a job joins one by naming it in
    # custom.bid (docs/workflows.rst); it stays in custom for the worker.
    bid = (custom or {}).get("bid")
    if bid is not None:
        submission["batch"] = bid
    # Faktory Enterprise's unique and expiring jobs, also named in custom
    # (docs/periodic.rst): a push whose lock is held answers NOTUNIQUE.
    for name in ("unique_for", "unique_until", "expires_at", "expires_in"):
        value = (custom or {}).get(name)
        if value is not None:
            submission[name] = value
    return submission


def to_batch_request(obj: object) -> dict[str, Any]:
    """
    The native batch request (C{BATCH {"action": "new"}}) for Faktory's
    C{BATCH NEW {"description", "success", "complete", "parent_bid"}}; its
    callbacks are Faktory jobs, mapped as pushes are.

    @raise InvalidJob: a callback is not a valid Faktory job.
    @raise InvalidRequest: a child batch (C{parent_bid}), which procession
        does not have.
    """
    if not isinstance(obj, dict):
        raise InvalidRequest("a batch must be a JSON object")
    if obj.get("parent_bid"):
        raise InvalidRequest("child batches (parent_bid) are not supported")
    request: dict[str, Any] = {}
    description = obj.get("description")
    if description is not None:
        request["description"] = description
    for faktory_name, name in (("success", "on_success"), ("complete", "on_complete")):
        job = obj.get(faktory_name)
        if job is None:
            continue
        if not isinstance(job, dict):
            raise InvalidRequest(f"{faktory_name} must be a job", field=faktory_name)
        # The callback's id is the batch's (<bid>:success): a jid given is
        # not used.
        submission = to_submission({**job, "jid": job.get("jid") or "x" * MIN_JID})
        del submission["id"]
        request[name] = submission
    return request


def batch_status(batch: dict[str, Any]) -> dict[str, Any]:
    """
    Faktory's C{BATCH STATUS} answer for a batch: C{failed} counts the
    jobs that died; a callback's state is C{""} until pushed, then C{"1"}.
    """

    def state(name: str) -> str:
        callback = batch.get(name)
        return "1" if callback and callback.get("pushed_at") else ""

    return {
        "bid": batch["id"],
        "parent_bid": "",
        "description": batch.get("description", ""),
        "created_at": batch.get("created_at"),
        "total": batch["total"],
        "pending": batch["pending"],
        "failed": batch["dead"],
        "complete_st": state("on_complete"),
        "success_st": state("on_success"),
    }


def parse_job(obj: object, now_ms: int, max_size: int, size: int | None) -> NewJob:
    """
    A Faktory job as a checked procession job.

    @raise InvalidJob: (or L{JobTooLarge}) naming the field at fault.
    """
    return parse_submission(to_submission(obj), now_ms, max_size, size)


def retry_policy(job: dict[str, Any]) -> int:
    """
    The Faktory C{retry} of a procession job (its wire or API form).
    """
    own = _own(job)
    if _is_int(own.get("retry")):
        return int(own["retry"])
    return int(job.get("max_attempts") or 1) - 1


def discards(job: dict[str, Any]) -> bool:
    """
    Whether a failure deletes the job rather than retrying it or keeping
    it as dead: a job a Faktory client pushed with C{"retry": 0}.  (A
    native job with one attempt shows C{"retry": 0} too, but goes to dead
    as natively.)  Retries and dead otherwise follow C{max_attempts}:
    C{"retry": -1} is one attempt, then dead.
    """
    return _own(job).get("retry") == 0


def _own(job: dict[str, Any]) -> dict[str, Any]:
    meta = job.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get(META_KEY), dict):
        return meta[META_KEY]
    return {}


def from_wire(
    job: dict[str, Any], last_error: dict[str, Any] | None = None
) -> dict[str, Any]:
    """
    The Faktory job for a procession job as a worker receives it (the
    native C{JOB} frame's JSON), with the newest error recorded for it,
    for the C{failure} member of a job that failed before.
    """
    own = _own(job)
    retry = retry_policy(job)
    out: dict[str, Any] = {
        "jid": job["id"],
        "queue": job["queue"],
        "jobtype": job["type"],
        "args": job["args"] if isinstance(job.get("args"), list) else [job["args"]],
        "created_at": own.get("created_at") or job.get("created_at"),
        "enqueued_at": job.get("enqueued_at"),
        "retry": retry,
        "reserve_for": int(job.get("timeout") or DEFAULT_RESERVE_FOR),
        "priority": job.get("priority", 0),
    }
    if own.get("at"):
        out["at"] = own["at"]
    if own.get("backtrace"):
        out["backtrace"] = own["backtrace"]
    meta = job.get("meta")
    if isinstance(meta, dict):
        custom = {k: v for k, v in meta.items() if k != META_KEY}
        if custom:
            out["custom"] = custom
    attempt = int(job.get("attempt") or 1)
    if attempt > 1 and last_error is not None:
        failures = attempt - 1
        failure: dict[str, Any] = {
            "retry_count": failures - 1,
            "remaining": max(0, retry - failures),
            "failed_at": _time(last_error.get("at")),
            "message": str(last_error.get("message", "")),
            "errtype": str(last_error.get("type", "")),
        }
        backtrace = last_error.get("backtrace")
        if isinstance(backtrace, list) and backtrace:
            failure["backtrace"] = [str(line) for line in backtrace]
        out["failure"] = failure
    return out


def _time(ms: object) -> str | None:
    if _is_int(ms):
        return format_time(ms)
    return None


def failure_record(body: object, worker: str, now_ms: int) -> tuple[str, str]:
    """
    A Faktory C{FAIL} body as the job's id and the error record procession
    keeps (JSON text), trimmed as Faktory trims it.

    @raise InvalidRequest: when the body is not a FAIL object with a jid.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("invalid FAIL: it takes a JSON object")
    jid = body.get("jid")
    if not isinstance(jid, str) or not jid:
        raise InvalidRequest("missing JID", field="jid")
    errtype = str(body.get("errtype") or "").strip()[:MAX_ERRTYPE] or "unknown"
    message = str(body.get("message") or "").strip()[:MAX_MESSAGE] or "unknown"
    backtrace = body.get("backtrace")
    if not isinstance(backtrace, list):
        backtrace = []
    record = {
        "type": errtype,
        "message": message,
        "backtrace": [str(line) for line in backtrace[:MAX_BACKTRACE]],
        "worker": worker,
        "at": now_ms,
    }
    return jid, json.dumps(record, separators=(",", ":"))
