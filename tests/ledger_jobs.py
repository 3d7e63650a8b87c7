"""
The job handler of the fault tests' workers (L{tests.ledger}): run as
C{python -m procession.client.worker tests.ledger_jobs}.

Every run that finishes appends one line, C{<job id> <attempt> <pid>}, to
the ledger file named by C{PROCESSION_LEDGER}, just before the runner acks
it.  A test reads the file to learn which jobs ran, how often, on which
attempt and in which worker process.
"""

from __future__ import annotations

import os
import time

from procession.client.worker import current_job, handler


@handler("work")
def work(seconds: float = 0.0) -> None:
    """
    Take C{seconds}, then write the ledger line.  One C{write} with
    C{O_APPEND}: the lines of concurrent runs, in this process or another,
    never mix.
    """
    if seconds:
        time.sleep(seconds)
    job = current_job()
    assert job is not None
    line = f"{job.id} {job.attempt} {os.getpid()}\n".encode("ascii")
    fd = os.open(
        os.environ["PROCESSION_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
    )
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
