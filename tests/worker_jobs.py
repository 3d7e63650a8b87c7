"""
Job handlers for the worker runs of L{tests.test_client}: run as
C{python -m procession.client.worker tests.worker_jobs}.

Each handler appends what it did to the file named by
C{PROCESSION_TEST_RECORD}, one line per event: C{<event> <job id>
<attempt>}, so a test can tell what ran, how often, on which attempt, and
whether a job was still running when something happened.
"""

from __future__ import annotations

import os
import time
from typing import Any

from procession.client.worker import JobError, current_job, handler


def record(event: str) -> None:
    """
    Append one line for the current job; one write, so the lines of
    concurrent handlers do not mix.
    """
    job = current_job()
    assert job is not None
    line = f"{event} {job.id} {job.attempt}\n".encode("ascii")
    fd = os.open(
        os.environ["PROCESSION_TEST_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT
    )
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@handler("echo")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """
    Returns its arguments, so the test sees how args were passed.
    """
    record("done")
    return {"args": list(args), "kwargs": kwargs}


@handler
def step(seconds: float = 0.0) -> None:
    """
    Takes a while, then records that it finished.
    """
    time.sleep(seconds)
    record("done")


@handler("sleep")
def sleep(seconds: float) -> float:
    """
    Records its start and its end, with a sleep between.
    """
    record("start")
    time.sleep(seconds)
    record("done")
    return seconds


@handler("boom")
def boom(message: str) -> None:
    """
    Always fails.
    """
    record("start")
    raise ValueError(message)


@handler("fatal")
def fatal() -> None:
    """
    Fails, and says not to retry.
    """
    raise JobError("no point in retrying", retry=False)


def add(a: int, b: int) -> int:
    """
    Registered through HANDLERS rather than the decorator.
    """
    record("done")
    return a + b


def opaque() -> object:
    """
    Returns something that is not JSON: the job is acked without a result.
    """
    record("done")
    return object()


HANDLERS = {"add": add, "opaque": opaque}
