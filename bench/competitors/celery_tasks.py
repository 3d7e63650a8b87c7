"""
The benchmark's Celery app and task, on the Redis broker named by
C{BENCH_BROKER}:

    celery -A bench.competitors.celery_tasks worker -P solo
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from bench.record import received

app = Celery("bench", broker=os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    # no result backend: a no-op's result is not stored by any system here
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "4")),
)


@app.task(name="noop")
def noop(*args: Any) -> None:
    """
    A no-op job (see L{bench.record} for the latency workload).
    """
    received(args)
