"""
The HTTP side of the benchmark: pushes with ``POST /api/v1/jobs`` and a
long-poll drain (``GET /api/v1/jobs/next`` then ``POST .../ack`` with the
job's lease), from a few threads, each with one keep-alive connection
(docs/http-api.rst).  With ``--batch N``, each request carries N jobs:
a push posts a JSON array, a poll asks for ``count=N`` and acks what it
got with one ``POST /api/v1/acks``.  Prints what it did as JSON.

    python -m bench.httpload push --port 8080 --jobs 10000 --threads 4
    python -m bench.httpload drain --port 8080 --jobs 10000 --threads 4 --batch 100
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from typing import Any

from bench.producer import job_args


class Counter:
    """
    Jobs handed out to (push) or finished by (drain) the threads, with the
    time of the first and the last.
    """

    def __init__(self, target: int, deadline: float) -> None:
        self.lock = threading.Lock()
        self.target = target
        self.deadline = deadline
        self.taken = 0
        self.done = 0
        self.first: float | None = None
        self.last = 0.0
        self.errors: list[str] = []

    def take_many(self, n: int) -> list[int]:
        """
        The numbers of up to C{n} next jobs to push (none when all are).
        """
        with self.lock:
            if time.monotonic() > self.deadline:
                return []
            numbers = list(range(self.taken, min(self.taken + n, self.target)))
            self.taken += len(numbers)
            return numbers

    def finished(self) -> bool:
        return (
            self.done >= self.target
            or time.monotonic() > self.deadline
            or bool(self.errors)
        )

    def one_done(self, started: float | None = None, n: int = 1) -> None:
        now = time.monotonic()
        with self.lock:
            self.done += n
            if self.first is None:
                self.first = started if started is not None else now
            self.last = now


def pusher(port: int, counter: Counter, batch: int) -> None:
    """
    Push jobs one a request (a JSON object) or C{batch} a request (an
    array), until the counter has handed out all.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    while numbers := counter.take_many(batch):
        jobs = [{"type": "noop", "args": job_args(i)} for i in numbers]
        body = json.dumps(jobs if batch > 1 else jobs[0])
        started = time.monotonic()
        connection.request("POST", "/api/v1/jobs", body, headers)
        response = connection.getresponse()
        data = response.read()
        if response.status != 201:
            counter.errors.append(f"{response.status} {data[:200]!r}")
            return
        counter.one_done(started, len(numbers))
    connection.close()


def poller(port: int, counter: Counter, name: str, batch: int) -> None:
    """
    Take jobs by long poll, one a request or up to C{batch} (``count``),
    and ack them, one a request or all in one ``POST /api/v1/acks``.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    url = f"/api/v1/jobs/next?queues=default&wait=1&worker={name}"
    if batch > 1:
        url += f"&count={batch}"
    while not counter.finished():
        started = time.monotonic()
        connection.request("GET", url)
        response = connection.getresponse()
        data = response.read()
        if response.status == 204:
            continue
        if response.status != 200:
            counter.errors.append(f"next: {response.status} {data[:200]!r}")
            return
        taken = json.loads(data)
        if batch > 1:
            body = json.dumps(
                [{"id": job["id"], "lease": job["lease"]} for job in taken]
            )
            connection.request("POST", "/api/v1/acks", body, headers)
        else:
            body = json.dumps({"lease": taken["lease"]})
            connection.request("POST", f"/api/v1/jobs/{taken['id']}/ack", body, headers)
        response = connection.getresponse()
        data = response.read()
        refused = response.status != 200 or (
            batch > 1 and any("error" in r for r in json.loads(data)["results"])
        )
        if refused:
            counter.errors.append(f"ack: {response.status} {data[:200]!r}")
            return
        counter.one_done(started, len(taken) if batch > 1 else 1)
    connection.close()


def run(
    mode: str, port: int, jobs: int, threads: int, max_seconds: float, batch: int = 1
) -> dict[str, Any]:
    counter = Counter(jobs, time.monotonic() + max_seconds)
    workers = [
        threading.Thread(
            target=pusher if mode == "push" else poller,
            args=(port, counter, batch)
            if mode == "push"
            else (port, counter, f"http-{n}", batch),
            daemon=True,
        )
        for n in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(max_seconds + 60)
    first = counter.first or 0.0
    return {
        "jobs": counter.done,
        "start": first,
        "end": counter.last,
        "seconds": counter.last - first,
        "errors": counter.errors[:5],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.httpload", description=__doc__
    )
    parser.add_argument("mode", choices=("push", "drain"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument(
        "--batch", type=int, default=1, help="jobs per request (default 1)"
    )
    options = parser.parse_args(argv)
    result = run(
        options.mode,
        options.port,
        options.jobs,
        options.threads,
        options.max_seconds,
        options.batch,
    )
    print(json.dumps(result), flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
