"""
What the benchmark's tasks do for the steady-latency workload, the same in
every system: note the time a job reached its handler beside the push time
it carries (its third argument), one line per job, in the file named by
C{BENCH_LATENCY_FILE}.  Times are C{time.monotonic()}, which on Linux is
one clock for every process of the host.

Without C{BENCH_LATENCY_FILE} a task does nothing at all: the drain
workloads run true no-ops.
"""

from __future__ import annotations

import os
import time
from typing import Any

PATH = os.environ.get("BENCH_LATENCY_FILE")
_fd: dict[int, int] = {}


def received(args: tuple[Any, ...]) -> None:
    """
    Record that the job with these args reached its handler now.
    """
    if PATH is None:
        return
    now = time.monotonic()
    pid = os.getpid()
    fd = _fd.get(pid)
    if fd is None:
        # per process: RQ's default worker forks a child per job
        fd = _fd[pid] = os.open(PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    # one write per line: lines of concurrent handlers do not mix
    os.write(fd, b"%r %r\n" % (float(args[2]), now))


def read_samples(path: str) -> list[tuple[float, float]]:
    """
    The (push time, receive time) pairs a run recorded.
    """
    samples = []
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                pushed, _, got = line.partition(" ")
                if got:
                    samples.append((float(pushed), float(got)))
    except FileNotFoundError:
        pass
    return samples
