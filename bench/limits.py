"""
What queue limits (docs/limits.rst) cost the claim script:
``python -m bench.limits``.

On a private redis-server (bench/redisserver.py: AOF fsynced every second,
as the embedded Redis runs), it fills queues with the store's own push
script and times the store's own claim script (procession/store/lua/, run
directly, 10 jobs a call) by Redis's own microseconds per call (INFO
commandstats).  The cases take turns, round by round, and each keeps its
lowest round, since on a shared machine any round may be descheduled:

``off``
    ``--jobs`` queued jobs, no limits.
``on``
    The same, with a concurrency and a rate limit that never bind (what
    checking and counting them costs).
``keys``
    ``per_key`` with ``--keys`` keys of one job each: every call takes
    10 keys in turn.
``cycle.few`` and ``cycle.crowd``
    ``per_key`` with concurrency 1 and 10 busy keys of many jobs: each
    cycle claims 10 jobs (one a key) and acks them (which frees the keys'
    slots), timed together.  ``crowd`` adds ``--keys`` more keys that each
    have a job running and one waiting, held back by their concurrency:
    a cycle must cost the same.

It prints one JSON object: the figures and the settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench.processes import free_port
from bench.redisserver import RedisServer, RespClient, usec_per_call
from procession.core.job import NewJob
from procession.store.jobs import load_scripts

NS = "bench"
IDS = f"{NS}:ids"


def prefix(queue: str) -> str:
    return f"{NS}:{{{queue}}}:"


class Scripts:
    """
    The store's scripts loaded into one Redis, run by name.
    """

    def __init__(self, r: RespClient) -> None:
        self.r = r
        self.sha = {}
        for name, script in load_scripts().items():
            self.sha[name] = r.call("SCRIPT", "LOAD", script.text)

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return self.r.call("EVALSHA", self.sha[name], len(keys), *keys, *args)


def push(
    s: Scripts, queue: str, count: int, key: Any = None, batch: int = 1000
) -> None:
    """
    C{count} jobs, with limit key C{key(i)} (None: none).
    """
    now = int(time.time() * 1000)
    for start in range(0, count, batch):
        args: list[Any] = [now, f"{NS}:wake", queue, f"{queue} bench"]
        for i in range(start, min(count, start + batch)):
            lk = key(i) if key else ""
            job = NewJob(
                id=f"{queue}.{lk}.{i}",
                type="t",
                queue=queue,
                args="[]",
                priority=0,
                max_attempts=25,
                timeout=300.0,
                meta="",
                run_at=now,
                created_at=now,
                limit_key=lk,
            )
            args.extend(job.script_args(now))
            args.append(job.flow_value({}))
            args.extend(job.lifetime_args())
        s.run("push", [prefix(queue), IDS], args)


def set_limits(
    s: Scripts, queue: str, concurrency: str, rate: str, per: str, per_key: str
) -> None:
    s.run(
        "set_limits",
        [prefix(queue)],
        [f"{NS}:wake", queue, concurrency, rate, per, per_key, 1_000_000],
    )


_lease = 0


def claim(s: Scripts, queue: str, wanted: int = 10) -> list[Any]:
    """
    One claim of C{wanted} jobs: the rows leased, each with its lease.
    """
    global _lease
    args: list[Any] = [int(time.time() * 1000), "bench", ""]
    leases = []
    for _ in range(wanted):
        _lease += 1
        leases.append(f"l{_lease}@{queue}")
        args += ["bench-claim", leases[-1]]
    rows = [
        row for row in s.run("claim", [prefix(queue)], args) if isinstance(row, list)
    ]
    return list(zip(rows, leases))


def ack(s: Scripts, queue: str, leased: list[Any]) -> None:
    args: list[Any] = [int(time.time() * 1000)]
    for row, lease in leased:
        args += [row[0], lease, ""]
    s.run("ack", [prefix(queue)], args)


def timed(
    r: RespClient, calls: int, rounds: int, steps: dict[str, Any]
) -> dict[str, float]:
    """
    Per case, the lowest over C{rounds} of Redis's mean microseconds per
    step (a step's script calls together), C{calls} steps a round; the
    cases take turns round by round, so that a busy spell of the machine
    hits them alike.
    """
    best = {name: float("inf") for name in steps}
    for _ in range(rounds):
        for name, (step, per_step) in steps.items():
            r.call("CONFIG", "RESETSTAT")
            for _ in range(calls):
                step()
            best[name] = min(best[name], usec_per_call(r, "evalsha") * per_step)
    return {name: round(value, 1) for name, value in best.items()}


def claim_step(s: Scripts, queue: str) -> Any:
    return (lambda: claim(s, queue), 1)


def cycle_step(s: Scripts, queue: str) -> Any:
    # Two script calls a cycle: the figure is per cycle.
    return (lambda: ack(s, queue, claim(s, queue)), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limits")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    o = parser.parse_args(argv)
    needed = o.calls * o.rounds * 10
    server = RedisServer(free_port()).start()
    try:
        with RespClient(server) as r:
            s = Scripts(r)
            jobs = max(o.jobs, 2 * needed)
            push(s, "off", jobs)
            push(s, "on", jobs)
            set_limits(s, "on", "1000000", "100000", "1000", "0")
            set_limits(s, "keys", "1000000", "", "", "1")
            push(s, "keys", max(o.keys, 2 * needed), key=lambda i: f"k{i}")
            for queue in ("few", "crowd"):
                set_limits(s, queue, "1", "", "", "1")
            # Each crowd key: one job running, one held back.
            push(s, "crowd", 2 * o.keys, key=lambda i: f"c{i // 2}")
            while claim(s, "crowd", 1000):
                pass
            for queue in ("few", "crowd"):
                push(s, queue, 2 * needed, key=lambda i: f"busy{i % 10}")
            figures = timed(
                r,
                o.calls,
                o.rounds,
                {
                    "off": claim_step(s, "off"),
                    "on": claim_step(s, "on"),
                    "keys": claim_step(s, "keys"),
                    "cycle.few": cycle_step(s, "few"),
                    "cycle.crowd": cycle_step(s, "crowd"),
                },
            )
            held = int(r.call("HLEN", prefix("crowd") + "lkeys")) - 10
            figures["crowd_keys_held_back"] = held
    finally:
        server.stop()
    print(
        json.dumps(
            {
                "unit": "Redis microseconds per call (cycle: per claim+ack of 10)",
                "figures": figures,
                "settings": vars(o),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
