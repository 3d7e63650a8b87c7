"""
The producer side of the benchmark: push N no-op jobs with a system's own
client library, one way or another, and print what it took as JSON.

    python -m bench.producer --system procession --target 7000 --mode one --jobs 20000

Modes:

``one``
    One job at a time, each push waiting for its reply (how a web request
    enqueues).
``pipeline``
    procession only: ``Client.pipeline()``, 1,000 ``PUSH`` frames a write.
``batch``
    Each system's bulk API: procession's ``push_many`` (``PUSHB`` of 1,000
    jobs), RQ's ``enqueue_many`` (one Redis pipeline per 1,000), Celery and
    Dramatiq have none, so their ``group`` of 1,000 signatures/messages.
``rate``
    One at a time, each waiting for its reply, paced at C{--rate} jobs per
    second (steady latency, RQ, Celery and Dramatiq).
``paced``
    procession only: one ``PUSH`` frame per job at C{--rate} jobs per
    second, the frames due written every half millisecond without waiting
    for replies (a thread reads them), so that the producer never limits
    the rate (steady latency).

Every job's args are the same ~100 bytes of JSON: an 80-character string,
the job's number, and the push time (C{time.monotonic()}).  Timing starts
after the client is connected and its library imported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

PAD = "x" * 80
CHUNK = 1000


def job_args(i: int) -> list[Any]:
    """
    The args of job C{i}, with the push time as its third value.
    """
    return [PAD, i, time.monotonic()]


def chunks(n: int) -> Iterator[range]:
    for start in range(0, n, CHUNK):
        yield range(start, min(n, start + CHUNK))


# -- one "pusher" per system: (one job, a chunk of jobs) callables


def procession_pushers(
    target: str, queue: str, mode: str
) -> tuple[Callable[[int], Any], Callable[[range], Any]]:
    from procession.client import Client, make_job

    client = Client(port=int(target), timeout=60)
    client.connect()

    def one(i: int) -> None:
        client.push("noop", job_args(i), queue=queue)

    def pipelined(r: range) -> None:
        with client.pipeline() as p:
            for i in r:
                p.push("noop", job_args(i), queue=queue)

    def batch(r: range) -> None:
        client.push_many([make_job("noop", job_args(i), queue=queue) for i in r])

    return one, pipelined if mode == "pipeline" else batch


def rq_pushers(
    target: str, queue: str, mode: str
) -> tuple[Callable[[int], Any], Callable[[range], Any]]:
    from redis import Redis
    from rq import Queue

    from bench.competitors.rq_tasks import noop

    q = Queue(queue, connection=Redis.from_url(target))
    q.connection.ping()

    def one(i: int) -> None:
        q.enqueue(noop, *job_args(i))

    def batch(r: range) -> None:
        q.enqueue_many([Queue.prepare_data(noop, args=tuple(job_args(i))) for i in r])

    return one, batch


def celery_pushers(
    target: str, queue: str, mode: str
) -> tuple[Callable[[int], Any], Callable[[range], Any]]:
    import os

    os.environ["BENCH_BROKER"] = target
    from celery import group

    from bench.competitors.celery_tasks import app, noop

    with app.connection_for_write() as connection:
        connection.ensure_connection()

    def one(i: int) -> None:
        noop.apply_async(job_args(i), queue="celery")

    def batch(r: range) -> None:
        group(noop.s(*job_args(i)) for i in r).apply_async(queue="celery")

    return one, batch


def dramatiq_pushers(
    target: str, queue: str, mode: str
) -> tuple[Callable[[int], Any], Callable[[range], Any]]:
    import os

    os.environ["BENCH_BROKER"] = target
    import dramatiq

    from bench.competitors.dramatiq_tasks import broker, noop

    broker.client.ping()

    def one(i: int) -> None:
        noop.send(*job_args(i))

    def batch(r: range) -> None:
        dramatiq.group(noop.message(*job_args(i)) for i in r).run()

    return one, batch


def paced(port: int, jobs: int, rate: float, queue: str) -> dict[str, Any]:
    """
    Push with raw pipelined ``PUSH`` frames at a fixed rate; the timing.
    """
    import socket
    import threading

    from procession.client import Connection

    connection = Connection.open("127.0.0.1", port, worker="bench-paced")
    connection.sock.settimeout(None)
    answered = [0, 0]  # replies, errors

    def read() -> None:
        while answered[0] < jobs:
            verb, body = connection.read_frame()
            if verb in ("OK", "ERR"):
                answered[0] += 1
                if verb == "ERR":
                    answered[1] += 1
                    print(f"push refused: {body[:200]!r}", file=sys.stderr)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sock: socket.socket = connection.sock
    queue_part = "" if queue == "default" else f',"queue":"{queue}"'
    pad = json.dumps(PAD)
    start = time.monotonic()
    sent = 0
    while sent < jobs:
        due = min(jobs, int((time.monotonic() - start) * rate) + 1)
        if due > sent:
            now = time.monotonic()
            sock.sendall(
                b"".join(
                    f'PUSH {{"type":"noop","args":[{pad},{i},{now!r}]{queue_part}}}\n'.encode()
                    for i in range(sent, due)
                )
            )
            sent = due
        time.sleep(0.0005)
    end = time.monotonic()
    reader.join(60)
    connection.close()
    return {
        "jobs": sent,
        "start": start,
        "end": end,
        "seconds": end - start,
        "errors": answered[1],
    }


PUSHERS = {
    "procession": procession_pushers,
    "rq": rq_pushers,
    "celery": celery_pushers,
    "dramatiq": dramatiq_pushers,
}


def produce(
    system: str,
    target: str,
    mode: str,
    jobs: int,
    rate: float,
    queue: str,
    max_seconds: float,
) -> dict[str, Any]:
    """
    Push the jobs, stopping early after C{max_seconds}; the timing.
    """
    if mode == "paced":
        if system != "procession":
            raise SystemExit("--mode paced is for procession only")
        return paced(int(target), jobs, rate, queue)
    one, chunk = PUSHERS[system](target, queue, mode)
    start = time.monotonic()
    deadline = start + max_seconds
    done = 0
    if mode in ("one", "rate"):
        interval = 1.0 / rate if mode == "rate" else 0.0
        for i in range(jobs):
            if interval:
                ahead = start + i * interval - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            elif i % 100 == 0 and time.monotonic() > deadline:
                break
            one(i)
            done += 1
    else:
        for r in chunks(jobs):
            if time.monotonic() > deadline:
                break
            chunk(r)
            done += len(r)
    end = time.monotonic()
    return {"jobs": done, "start": start, "end": end, "seconds": end - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.producer", description=__doc__
    )
    parser.add_argument("--system", choices=sorted(PUSHERS), required=True)
    parser.add_argument(
        "--target", required=True, help="procession's TCP port, or a Redis URL"
    )
    parser.add_argument(
        "--mode", choices=("one", "pipeline", "batch", "rate", "paced"), required=True
    )
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--queue", default="default")
    parser.add_argument(
        "--max-seconds", type=float, default=3600.0, help="stop pushing after this long"
    )
    options = parser.parse_args(argv)
    result = produce(
        options.system,
        options.target,
        options.mode,
        options.jobs,
        options.rate,
        options.queue,
        options.max_seconds,
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
