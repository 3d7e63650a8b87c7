"""
The benchmark harness: ``python -m bench`` (``--help`` for the options,
``bench/README.rst`` for what each workload measures).

Every measured run gets a fresh redis-server (append-only file, fsync every
second, on a unix socket) and, for procession, a fresh server process
(``python -m twisted procession --redis ...``), so runs do not inherit each
other's memory or AOF.  The repetitions are interleaved (every case once,
then every case again), and the table quotes medians.

Drains start from queues filled once per system with the system's own
client, saved with DUMP and RESTOREd into each run's Redis: every run of a
system drains the same jobs, and slow producers (Celery's) do not eat the
time budget.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import platform
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from attrs import define, frozen

from bench.processes import (
    REPO,
    Child,
    ProcessionServer,
    SyscallCounter,
    code_root,
    context_switches,
    cpu_seconds,
    environment,
    free_port,
    freeze_code,
    group_cpu,
    load_average,
    memory_kb,
)
from bench import nodeload
from bench.record import read_samples
from bench.redisserver import (
    RedisServer,
    RespClient,
    command_stats,
    info,
    restore,
    snapshot,
    traffic,
    usec_per_call,
)
from bench.spy import render, summarise

SYSTEMS = ("procession", "rq", "celery", "dramatiq", "bullmq")
# The Python libraries; BullMQ is measured against procession's Node.js
# client side (bench/nodeload.py).
COMPETITORS = ("rq", "celery", "dramatiq")
NAMESPACE = "bench1"
BIN = os.path.dirname(sys.executable)
POLL = 0.005
# Jobs per request in the batched HTTP cases.
HTTP_BATCH = 100
PROFILE_CASES = (
    "drain-raw",
    "drain-runner",
    "push-one",
    "push-pipeline",
    "http-push",
    "http-drain",
)


# The connections of the Faktory drain's worker process (FETCH is one job
# per request: each connection has one in flight).
FAKTORY_PROCESSORS = 20


@define
class Settings:
    """
    What to run, and how big.
    """

    jobs: int = 20_000
    max_seconds: float = 8.0
    repeat: int = 3
    latency_rates: tuple[int, ...] = (1000, 5000)
    competitor_latency_rates: tuple[int, ...] = (1000,)
    latency_seconds: float = 3.0
    scale: tuple[int, ...] = (1, 10, 100, 1000)
    deep: int = 1_000_000
    idle_seconds: float = 10.0
    http_threads: int = 4
    runner_concurrency: int = 32
    raw_credit: int = 200
    transport: str = "unix"
    systems: tuple[str, ...] = SYSTEMS
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    profile: str | None = None
    profile_seconds: float = 10.0
    profile_cases: tuple[str, ...] = PROFILE_CASES
    quick: bool = False
    # why the Node.js cases (BullMQ's, procession's Node.js client side)
    # cannot run, or None
    node_missing: str | None = None
    node_producers: int = 16
    bullmq_concurrency: int = 50


@frozen
class Case:
    """
    One measurement: C{run(env)} returns one run's metrics.

    C{family} groups a procession case with the competitor cases it is
    compared with (the best of them); C{once} cases run in the first
    repetition only (they are slow or their figure hardly varies).
    """

    id: str
    workload: str
    variant: str
    system: str
    family: str
    run: Callable[[Env], dict[str, Any]]
    once: bool = False


class Env:
    """
    One run's world: a fresh redis-server, a harness connection to it, and
    for procession a fresh server process.  Closing it stops them all.
    """

    def __init__(self, settings: Settings, system: str, faktory: bool = False) -> None:
        self.system = system
        self.redis = RedisServer(free_port(), settings.transport).start()
        self.resp = RespClient(self.redis)
        self.children: list[Child] = []
        self.server: ProcessionServer | None = None
        # procession's Faktory listener, for the Faktory cases only (it
        # adds a tick of its own to the server's Redis calls)
        self.faktory_port: int | None = None
        try:
            if system == "procession":
                extra: list[str] = []
                if faktory:
                    self.faktory_port = free_port()
                    extra = ["--faktory", str(self.faktory_port)]
                self.server = ProcessionServer(self.redis.url(), NAMESPACE, extra)
        except BaseException:
            self.close()
            raise

    def target(self) -> str:
        """
        What the producer connects to: procession's port, or a Redis URL in
        the form the system's library takes.
        """
        if self.server is not None:
            return str(self.server.port)
        return self.redis.url(kombu=self.system == "celery")

    def node_target(self) -> str:
        """
        What ``bench/node/load.mjs`` connects to: procession's port, or
        Redis's unix socket path (or host:port).
        """
        if self.server is not None:
            return str(self.server.port)
        if self.redis.transport == "unix":
            return self.redis.socket
        return f"127.0.0.1:{self.redis.port}"

    def child(self, args: list[str], name: str, **env: str) -> Child:
        """
        Start a child process that L{close} will stop.
        """
        extra = {"BENCH_BROKER": self.redis.url(kombu=self.system == "celery"), **env}
        child = Child(args, name, environment(**extra))
        self.children.append(child)
        return child

    def close(self) -> None:
        for child in self.children:
            child.cleanup()
        if self.server is not None:
            self.server.cleanup()
        self.resp.close()
        self.redis.stop()


class Meter:
    """
    Counters read at the start of a measured phase and again at its end:
    CPU of the procession server, of Redis and of the worker, Redis's
    commands and bytes (less the harness's own), the server's peak memory.
    """

    def __init__(self, env: Env) -> None:
        self.env = env
        env.resp.call("CONFIG", "RESETSTAT")
        env.resp.reset_counters()
        self.redis_cpu = cpu_seconds(env.redis.pid)
        self.server_cpu = cpu_seconds(env.server.pid) if env.server else 0.0
        self.server_switches = context_switches(env.server.pid) if env.server else 0
        self.syscalls = SyscallCounter(env.server.pid) if env.server else None
        self.worker: Child | None = None
        self.worker_cpu = 0.0
        self.worker_last = 0.0
        self.load = load_average()

    def watch(self, worker: Child) -> None:
        """
        Count this worker's CPU (and its children's) from now on.
        """
        self.worker = worker
        self.worker_cpu = self.worker_last = group_cpu(worker.pid)

    def sample(self) -> None:
        """
        Read the worker's CPU now: a worker may exit by itself (RQ's
        ``--burst``) and take its figures with it.
        """
        if self.worker is not None:
            self.worker_last = max(self.worker_last, group_cpu(self.worker.pid))

    def finish(self, jobs: int, seconds: float) -> dict[str, Any]:
        """
        The metrics of the phase, per job (or per 10k jobs).
        """
        env = self.env
        self.sample()
        per10k = 10_000 / jobs if jobs else 0.0
        harness_commands = env.resp.sent
        harness_bytes = env.resp.bytes
        seen = traffic(env.resp)
        calls = command_stats(env.resp)
        metrics: dict[str, Any] = {
            "jobs": jobs,
            "seconds": round(seconds, 4),
            "jobs_per_s": round(jobs / seconds, 1) if seconds > 0 else 0.0,
            "redis_cpu_s_per_10k": round(
                (cpu_seconds(env.redis.pid) - self.redis_cpu) * per10k, 3
            ),
            "redis_cmds_per_job": round((seen["commands"] - harness_commands) / jobs, 2)
            if jobs
            else 0.0,
            "redis_bytes_per_job": round(
                (seen["bytes_in"] + seen["bytes_out"] - harness_bytes) / jobs
            )
            if jobs
            else 0,
            "redis_calls_per_job": {
                name: round(n / jobs, 3)
                for name, n in sorted(calls.items(), key=lambda kv: -kv[1])[:12]
            }
            if jobs
            else {},
            "load_average": self.load,
        }
        if env.server is not None:
            metrics["server_cpu_s_per_10k"] = round(
                (cpu_seconds(env.server.pid) - self.server_cpu) * per10k, 3
            )
            metrics["server_peak_rss_mb"] = round(memory_kb(env.server.pid) / 1024, 1)
            switches = context_switches(env.server.pid) - self.server_switches
            assert self.syscalls is not None
            counts = self.syscalls.stop()
            if jobs:
                metrics["server_wakeups_per_job"] = round(switches / jobs, 3)
                if counts:
                    metrics["server_syscalls_per_job"] = {
                        name: round(n / jobs, 3) for name, n in counts.items() if n
                    }
        if self.worker is not None:
            metrics["worker_cpu_s_per_10k"] = round(
                (self.worker_last - self.worker_cpu) * per10k, 3
            )
        return metrics


def monitor(redis: RedisServer, seconds: float) -> tuple[int, int]:
    """
    Watch Redis's MONITOR for C{seconds}: the commands clients sent, and
    those scripts ran (``[<db> lua]``).
    """
    client = RespClient(redis)
    try:
        client.sock.sendall(b"MONITOR\r\n")
        data = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([client.sock], [], [], 0.1)
            if ready:
                data += client.sock.recv(1 << 16)
        lines = data.split(b"\r\n")[1:]  # after +OK
        scripted = sum(1 for line in lines if re.search(rb"\[\d+ lua\]", line))
        sent = sum(1 for line in lines if line.startswith(b"+")) - scripted
        return sent, scripted
    finally:
        client.close()


def percentiles(latencies: list[float]) -> dict[str, float]:
    """
    p50, p99 and max of latencies in seconds, as milliseconds.
    """
    if not latencies:
        return {}
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "p50_ms": round(at(0.50) * 1000, 3),
        "p99_ms": round(at(0.99) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


class Bench:
    """
    Builds the cases of the settings, runs them, and reports.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.snapshots: dict[tuple[str, int], list[tuple[str, int, bytes]]] = {}
        self.log = sys.stderr

    def say(self, text: str) -> None:
        print(text, file=self.log, flush=True)

    # -- building blocks

    def produce(self, env: Env, mode: str, jobs: int, **options: Any) -> dict[str, Any]:
        """
        Run L{bench.producer} for the env's system; its JSON.
        """
        process = self.start_producer(env, mode, jobs, **options)
        out, err = process.communicate(timeout=options.get("timeout", 3600))
        if process.returncode != 0:
            raise RuntimeError(f"the producer failed:\n{err[-3000:]}")
        return json.loads(out.strip().splitlines()[-1])

    def start_producer(
        self, env: Env, mode: str, jobs: int, **options: Any
    ) -> subprocess.Popen[str]:
        args = [
            sys.executable, "-m", "bench.producer",
            "--system", env.system, "--target", env.target(),
            "--mode", mode, "--jobs", str(jobs),
        ]  # fmt: skip
        if "rate" in options:
            args += ["--rate", str(options["rate"])]
        if "max_seconds" in options:
            args += ["--max-seconds", str(options["max_seconds"])]
        return subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=code_root(),
            env=environment(),
        )

    def fill(self, env: Env, jobs: int) -> None:
        """
        Queue C{jobs} no-op jobs for the env's system: made once with the
        system's own client (in an env of their own, so that the server
        under test never saw them pushed), then restored.
        """
        key = (env.system, jobs)
        if key not in self.snapshots:
            scratch = Env(self.settings, env.system)
            try:
                if env.system == "bullmq":
                    self.node(scratch, "fill", jobs)
                else:
                    self.produce(scratch, "batch", jobs)
                # procession: the queue's keys (not the scratch server's
                # entry in the registry of live servers)
                pattern = NAMESPACE + ":{*" if env.system == "procession" else "*"
                self.snapshots[key] = snapshot(scratch.resp, pattern)
            finally:
                scratch.close()
        restore(env.resp, self.snapshots[key])

    def progress(self, env: Env, total: int) -> tuple[int, int]:
        """
        Jobs finished and jobs still waiting in the queue, read from Redis
        in each system's layout.
        """
        r = env.resp
        system = env.system
        if system == "procession":
            assert env.server is not None
            done, waiting = r.pipeline(
                ("HGET", env.server.key("default", "stats"), "processed"),
                ("ZCARD", env.server.key("default", "queued")),
            )
            return int(done or 0), int(waiting)
        if system == "rq":
            done, waiting = r.pipeline(
                ("ZCARD", "rq:finished:default"), ("LLEN", "rq:queue:default")
            )
            return int(done), int(waiting)
        if system == "celery":
            # acked (before running, Celery's default) means taken off both
            waiting, unacked = r.pipeline(("LLEN", "celery"), ("HLEN", "unacked"))
            return total - int(waiting) - int(unacked), int(waiting)
        if system == "dramatiq":
            # a message leaves the .msgs hash when acked
            unfinished, waiting = r.pipeline(
                ("HLEN", "dramatiq:default.msgs"), ("LLEN", "dramatiq:default")
            )
            return total - int(unfinished), int(waiting)
        if system == "bullmq":
            done, waiting = r.pipeline(
                ("ZCARD", "bull:default:completed"), ("LLEN", "bull:default:wait")
            )
            return int(done), int(waiting)
        raise ValueError(system)

    def wait_drained(
        self, env: Env, worker: Child, meter: Meter, total: int, queued: int
    ) -> tuple[float, float, int]:
        """
        Poll Redis until C{total} jobs are finished (or the time allowed
        runs out); the time the first job left the queue, the time the last
        was finished, and how many were.
        """
        cap = self.settings.max_seconds
        startup = time.monotonic() + 60
        first: float | None = None
        samples = 0
        while True:
            done, waiting = self.progress(env, total)
            now = time.monotonic()
            if first is None and (waiting < queued or done > 0):
                first = now
            if done >= total:
                return first or now, now, done
            if first is not None and now - first > cap:
                return first, now, done
            if not worker.alive():
                done, waiting = self.progress(env, total)
                if done >= total:
                    return first or now, time.monotonic(), done
                raise RuntimeError(
                    f"{worker.name} exited with {done} of {total} done:\n{worker.output()}"
                )
            if first is None and now > startup:
                raise RuntimeError(
                    f"{worker.name} took no job in 60 s:\n{worker.output()}"
                )
            samples += 1
            if samples % 10 == 0:
                meter.sample()
            time.sleep(POLL)

    def worker_args(
        self, env: Env, variant: str, jobs: int, result: str = "", **extra: Any
    ) -> list[str]:
        """
        The command line of a worker of the env's system.
        """
        s = self.settings
        if variant == "runner":
            assert env.server is not None
            return [
                sys.executable, "-m", "procession.client.worker", "bench.jobs",
                "--port", str(env.server.port),
                "--concurrency", str(s.runner_concurrency),
                "--log-level", "WARNING",
            ]  # fmt: skip
        if variant == "raw":
            assert env.server is not None
            args = [
                sys.executable, "-m", "bench.rawworker",
                "--port", str(env.server.port), "--jobs", str(jobs),
                "--connections", str(extra.get("connections", 1)),
                "--credit", str(extra.get("credit", s.raw_credit)),
                "--result", result,
            ]  # fmt: skip
            if extra.get("latency"):
                args.append("--latency")
            return args
        if variant in ("simple", "fork"):
            args = [os.path.join(BIN, "rq"), "worker", "-u", env.redis.url()]
            if extra.get("burst", True):
                args.append("--burst")
            if variant == "simple":
                args += ["-w", "rq.worker.SimpleWorker"]
            return args + ["--logging_level", "WARNING", "default"]
        if variant == "solo":
            return [
                os.path.join(BIN, "celery"), "-A", "bench.competitors.celery_tasks",
                "worker", "-P", "solo", "-l", "WARNING",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ]  # fmt: skip
        if variant == "threads":
            return [
                os.path.join(BIN, "dramatiq"), "bench.competitors.dramatiq_tasks",
                "--processes", "1", "--threads", "8",
            ]  # fmt: skip
        raise ValueError(variant)

    # -- the workloads

    def push(self, mode: str) -> Callable[[Env], dict[str, Any]]:
        def run(env: Env) -> dict[str, Any]:
            meter = Meter(env)
            out = self.produce(
                env, mode, self.settings.jobs, max_seconds=self.settings.max_seconds
            )
            metrics = meter.finish(out["jobs"], out["seconds"])
            self.check_stored(env, out["jobs"])
            return metrics

        return run

    def check_stored(self, env: Env, jobs: int) -> None:
        """
        Make sure every push landed (a benchmark of lost jobs is no use).
        """
        if env.system == "procession":
            assert env.server is not None
            stored = int(env.resp.call("ZCARD", env.server.key("default", "queued")))
        elif env.system == "rq":
            stored = int(env.resp.call("LLEN", "rq:queue:default"))
        elif env.system == "celery":
            stored = int(env.resp.call("LLEN", "celery"))
        elif env.system == "bullmq":
            stored = int(env.resp.call("LLEN", "bull:default:wait"))
        else:
            stored = int(env.resp.call("LLEN", "dramatiq:default"))
        if stored != jobs:
            raise RuntimeError(f"{jobs} jobs pushed but {stored} queued")

    def drain(self, variant: str, **extra: Any) -> Callable[[Env], dict[str, Any]]:
        def run(env: Env) -> dict[str, Any]:
            jobs = self.settings.jobs
            self.fill(env, jobs)
            result = tempfile.mktemp(prefix="procession-bench-", suffix=".json")
            meter = Meter(env)
            worker = env.child(
                self.worker_args(env, variant, jobs, result, **extra), variant
            )
            meter.watch(worker)
            first, last, done = self.wait_drained(env, worker, meter, jobs, jobs)
            metrics = meter.finish(done, last - first)
            if variant == "raw":
                worker.wait(30)
                with open(result, encoding="ascii") as f:
                    seen = json.load(f)
                os.unlink(result)
                metrics["wire_bytes_per_job"] = round(
                    (seen["bytes_in"] + seen["bytes_out"]) / max(1, seen["jobs"])
                )
                if seen["errors"]:
                    raise RuntimeError(f"the raw worker got {seen['errors']} errors")
            return metrics

        return run

    def faktory_args(self, env: Env, mode: str, jobs: int) -> list[str]:
        """
        The command line of L{bench.faktoryload} against the env's Faktory
        listener.
        """
        assert env.faktory_port is not None
        return [
            sys.executable, "-m", "bench.faktoryload", mode,
            "--port", str(env.faktory_port), "--jobs", str(jobs),
            "--processors", str(FAKTORY_PROCESSORS),
            "--max-seconds", str(self.settings.max_seconds),
        ]  # fmt: skip

    def faktory_push(self, env: Env) -> dict[str, Any]:
        """
        One job at a time over Faktory's protocol (PUSH, wait for +OK), as
        Faktory's clients push: beside push.one.
        """
        meter = Meter(env)
        process = subprocess.run(
            self.faktory_args(env, "push", self.settings.jobs),
            check=False,
            capture_output=True,
            text=True,
            cwd=code_root(),
            env=environment(),
            timeout=self.settings.max_seconds + 600,
        )
        if process.returncode != 0:
            raise RuntimeError(f"faktoryload push failed:\n{process.stderr[-3000:]}")
        out = json.loads(process.stdout.strip().splitlines()[-1])
        if out["errors"]:
            raise RuntimeError(f"{out['errors']} Faktory pushes were refused")
        metrics = meter.finish(out["jobs"], out["seconds"])
        self.check_stored(env, out["jobs"])
        return metrics

    def faktory_drain(self, env: Env) -> dict[str, Any]:
        """
        One Faktory worker process (FAKTORY_PROCESSORS connections, each
        FETCH then ACK) drains N queued jobs: beside drain.raw.
        """
        jobs = self.settings.jobs
        self.fill(env, jobs)
        meter = Meter(env)
        worker = env.child(self.faktory_args(env, "drain", jobs), "faktory-drain")
        meter.watch(worker)
        first, last, done = self.wait_drained(env, worker, meter, jobs, jobs)
        metrics = meter.finish(done, last - first)
        worker.wait(30)
        return metrics

    def node(self, env: Env, mode: str, jobs: int, **options: Any) -> dict[str, Any]:
        """
        Run ``bench/node/load.mjs`` (push or fill) for the env's system to
        the end; its JSON.
        """
        args = nodeload.command(
            code_root(), mode, env.system, env.node_target(), jobs, **options
        )
        process = subprocess.run(
            args,
            check=False,
            capture_output=True,
            text=True,
            cwd=code_root(),
            timeout=self.settings.max_seconds + 600,
        )
        if process.returncode != 0:
            raise RuntimeError(f"load.mjs {mode} failed:\n{process.stderr[-3000:]}")
        return json.loads(process.stdout.strip().splitlines()[-1])

    def node_push(self, connections: int) -> Callable[[Env], dict[str, Any]]:
        """
        One job at a time on each of C{connections} connections, from
        Node.js (procession's protocol, or BullMQ's Queue.add).
        """

        def run(env: Env) -> dict[str, Any]:
            meter = Meter(env)
            out = self.node(
                env,
                "push",
                self.settings.jobs,
                connections=connections,
                max_seconds=self.settings.max_seconds,
            )
            metrics = meter.finish(out["jobs"], out["seconds"])
            self.check_stored(env, out["jobs"])
            return metrics

        return run

    def node_drain(self, env: Env) -> dict[str, Any]:
        """
        One Node.js consumer drains N queued jobs: procession's protocol
        with credit C{raw_credit}, or a BullMQ Worker with concurrency
        C{bullmq_concurrency}.
        """
        s = self.settings
        self.fill(env, s.jobs)
        meter = Meter(env)
        args = nodeload.command(
            code_root(),
            "drain",
            env.system,
            env.node_target(),
            s.jobs,
            credit=s.raw_credit,
            concurrency=s.bullmq_concurrency,
        )
        worker = env.child(args, "node-drain")
        meter.watch(worker)
        first, last, done = self.wait_drained(env, worker, meter, s.jobs, s.jobs)
        metrics = meter.finish(done, last - first)
        worker.wait(30)
        return metrics

    def latency(self, variant: str, rate: int) -> Callable[[Env], dict[str, Any]]:
        def run(env: Env) -> dict[str, Any]:
            s = self.settings
            jobs = int(rate * s.latency_seconds)
            path = tempfile.mktemp(prefix="procession-bench-latency-")
            result = tempfile.mktemp(prefix="procession-bench-", suffix=".json")
            args = self.worker_args(
                env, variant, jobs, result, latency=True, burst=False
            )
            worker = env.child(args, variant, BENCH_LATENCY_FILE=path)
            if variant == "raw":
                deadline = time.monotonic() + 30
                while "ready" not in worker.output():
                    if time.monotonic() > deadline or not worker.alive():
                        raise RuntimeError(
                            f"the raw worker did not start:\n{worker.output()}"
                        )
                    time.sleep(0.01)
                time.sleep(0.3)
            else:
                # a few jobs first: the worker is up and taking work
                self.produce(env, "one", 20)
                deadline = time.monotonic() + 60
                while len(read_samples(path)) < 20:
                    if time.monotonic() > deadline or not worker.alive():
                        raise RuntimeError(
                            f"{variant} did not start:\n{worker.output()}"
                        )
                    time.sleep(0.02)
                os.truncate(path, 0)
            meter = Meter(env)
            meter.watch(worker)
            mode = "paced" if env.system == "procession" else "rate"
            producers = 1 if mode == "paced" else 2
            # two producer processes for the libraries whose one-at-a-time
            # push is slower than the rate (Celery's)
            started = [
                self.start_producer(env, mode, jobs // producers, rate=rate / producers)
                for _ in range(producers)
            ]
            outs = []
            for p in started:
                out, err = p.communicate(timeout=600)
                if p.returncode != 0:
                    raise RuntimeError(f"the producer failed:\n{err[-3000:]}")
                outs.append(json.loads(out.strip().splitlines()[-1]))
            pushed = sum(o["jobs"] for o in outs)
            push_seconds = max(o["end"] for o in outs) - min(o["start"] for o in outs)
            deadline = time.monotonic() + s.max_seconds
            if variant == "raw":
                while worker.alive() and time.monotonic() < deadline:
                    meter.sample()
                    time.sleep(0.02)
                worker.stop()
                with open(result, encoding="ascii") as f:
                    samples = [tuple(x) for x in json.load(f)["latency"]]
                os.unlink(result)
            else:
                while len(read_samples(path)) < pushed and time.monotonic() < deadline:
                    meter.sample()
                    time.sleep(0.05)
                samples = read_samples(path)
            if os.path.exists(path):
                os.unlink(path)
            metrics = meter.finish(pushed, push_seconds)
            metrics["received"] = len(samples)
            metrics.update(percentiles([got - pushed_at for pushed_at, got in samples]))
            return metrics

        return run

    def http(self, mode: str, batch: int = 1) -> Callable[[Env], dict[str, Any]]:
        def run(env: Env) -> dict[str, Any]:
            assert env.server is not None
            s = self.settings
            if mode == "drain":
                self.fill(env, s.jobs)
            meter = Meter(env)
            # fmt: off
            command = [
                sys.executable, "-m", "bench.httpload", mode,
                "--port", str(env.server.http_port), "--jobs", str(s.jobs),
                "--threads", str(s.http_threads), "--max-seconds", str(s.max_seconds),
                "--batch", str(batch),
            ]
            # fmt: on
            process = subprocess.run(
                command,
                check=False,
                capture_output=True,
                text=True,
                cwd=code_root(),
                env=environment(),
                timeout=s.max_seconds + 120,
            )
            if process.returncode != 0:
                raise RuntimeError(
                    f"httpload failed:\n{process.stdout}{process.stderr[-3000:]}"
                )
            out = json.loads(process.stdout.strip().splitlines()[-1])
            return meter.finish(out["jobs"], out["seconds"])

        return run

    def deep(self, env: Env) -> dict[str, Any]:
        """
        Push C{deep} jobs with PUSHB, then time claims and a drain of
        C{jobs} of them, beside the same on a queue of C{jobs}.
        """
        s = self.settings
        assert env.server is not None
        # the reference: the claim script on a queue of `jobs`
        shallow = Env(s, "procession")
        try:
            self.fill(shallow, s.jobs)
            claim_shallow = self.claim_cost(shallow, s.jobs)
        finally:
            shallow.close()
        meter = Meter(env)
        out = self.produce(env, "batch", s.deep)
        pushed = meter.finish(out["jobs"], out["seconds"])
        memory = int(
            env.resp.call("INFO", "memory").split("used_memory:")[1].split()[0]
        )
        # Redis rewrites its AOF as it grows; measured during a rewrite,
        # every write pays the fork's copy-on-write faults
        rewrite = self.wait_for_aof_rewrite(env)
        claim_deep = self.claim_cost(env, s.deep)
        result = tempfile.mktemp(prefix="procession-bench-", suffix=".json")
        queued = int(env.resp.call("ZCARD", env.server.key("default", "queued")))
        meter = Meter(env)
        worker = env.child(self.worker_args(env, "raw", s.jobs, result), "raw")
        meter.watch(worker)
        first, last, done = self.wait_drained(env, worker, meter, s.jobs, queued)
        metrics = meter.finish(done, last - first)
        worker.wait(30)
        if os.path.exists(result):
            os.unlink(result)
        metrics.update(
            {
                "queue_length": queued,
                "push_batch_jobs_per_s": pushed["jobs_per_s"],
                "push_batch_server_cpu_s_per_10k": pushed.get("server_cpu_s_per_10k"),
                "redis_memory_mb": round(memory / 1048576, 1),
                "claim_usec_per_call_deep": claim_deep,
                "claim_usec_per_call_shallow": claim_shallow,
                "evalsha_usec_per_call": usec_per_call(env.resp, "evalsha"),
                "aof_rewrite_wait_s": rewrite,
            }
        )
        return metrics

    def wait_for_aof_rewrite(self, env: Env, limit: float = 600) -> float:
        """
        Wait until Redis is not rewriting its AOF; the seconds waited.
        """
        started = time.monotonic()
        while time.monotonic() - started < limit:
            fields = info(env.resp, "persistence")
            if fields.get("aof_rewrite_in_progress") == "0" and fields.get(
                "aof_rewrite_scheduled"
            ) in ("0", None):
                break
            time.sleep(0.2)
        return round(time.monotonic() - started, 1)

    def claim_cost(
        self, env: Env, queued: int, rounds: int = 6, batch: int = 10
    ) -> float:
        """
        Redis's own microseconds per call of procession's claim script
        (store.py's, run directly) taking C{batch} jobs off the queue: the
        lowest of a few rounds' means, since on a shared machine any round
        may be descheduled.
        """
        assert env.server is not None
        # the server's own script text (store.load_scripts: common.lua first)
        lua = os.path.join(code_root(), "procession", "store", "lua")
        with open(os.path.join(lua, "common.lua"), encoding="utf-8") as f:
            text = f.read() + "\n"
        with open(os.path.join(lua, "claim.lua"), encoding="utf-8") as f:
            text += f.read()
        r = env.resp
        sha = r.call("SCRIPT", "LOAD", text)
        prefix = env.server.key("default", "")
        now = int(time.time() * 1000)
        # take at most half the queue: an empty queue's claim is cheaper
        calls = max(1, min(50, queued // (2 * rounds * batch)))
        best = float("inf")
        for n in range(rounds):
            r.call("CONFIG", "RESETSTAT")
            for i in range(calls):
                # now, the server, no lease owner, then the slots
                argv = [now, "bench-server", ""] + [
                    x
                    for j in range(batch)
                    for x in ("bench-claim", f"lease{n}.{i}.{j}@default")
                ]
                r.call("EVALSHA", sha, 1, prefix, *argv)
            best = min(best, usec_per_call(r, "evalsha"))
        return best

    def idle(self, env: Env) -> dict[str, Any]:
        """
        100 idle workers connected (READY, credit 10) to an empty queue.
        """
        s = self.settings
        assert env.server is not None
        workers = 100
        worker = env.child(
            self.worker_args(
                env, "raw", 0, "/dev/null", connections=workers, credit=10
            ),
            "raw",
        )
        deadline = time.monotonic() + 60
        while "ready" not in worker.output():
            if time.monotonic() > deadline or not worker.alive():
                raise RuntimeError(
                    f"the idle workers did not connect:\n{worker.output()}"
                )
            time.sleep(0.05)
        time.sleep(2)
        meter = Meter(env)
        sent, scripted = monitor(env.redis, s.idle_seconds)
        cpu = cpu_seconds(env.server.pid) - meter.server_cpu
        assert meter.syscalls is not None
        counts = meter.syscalls.stop()
        seen = traffic(env.resp)
        commands = seen["commands"] - env.resp.sent
        calls = command_stats(env.resp)
        return {
            # by command, those run inside scripts included: EVALSHA and the
            # commands no script runs are the round trips
            "redis_calls_per_s": {
                name: round(n / s.idle_seconds, 2)
                for name, n in sorted(calls.items(), key=lambda kv: -kv[1])
            },
            "server_syscalls_per_s": round(counts.get("all", 0) / s.idle_seconds, 1),
            "server_wakeups_per_s": round(
                (context_switches(env.server.pid) - meter.server_switches)
                / s.idle_seconds,
                1,
            ),
            "workers": workers,
            "seconds": s.idle_seconds,
            "server_cpu_percent": round(100 * cpu / s.idle_seconds, 2),
            "redis_cmds_per_s": round(commands / s.idle_seconds, 2),
            # what the server sent (Redis's MONITOR), apart from what its
            # scripts ran
            "redis_round_trips_per_s": round(sent / s.idle_seconds, 2),
            "redis_script_cmds_per_s": round(scripted / s.idle_seconds, 2),
            "server_peak_rss_mb": round(memory_kb(env.server.pid) / 1024, 1),
            "load_average": meter.load,
        }

    # -- the plan

    def cases(self) -> list[Case]:
        s = self.settings
        cases: list[Case] = []

        def add(
            workload: str,
            variant: str,
            system: str,
            family: str,
            run: Any,
            once: bool = False,
        ) -> None:
            cid = (
                f"{workload}.{variant}/{system}" if variant else f"{workload}/{system}"
            )
            if system not in s.systems:
                return
            if s.only and not any(fnmatch.fnmatch(cid, p) for p in s.only):
                return
            if any(fnmatch.fnmatch(cid, p) for p in s.skip):
                return
            cases.append(Case(cid, workload, variant, system, family, run, once))

        add("push", "one", "procession", "push.one", self.push("one"))
        add("push", "pipeline", "procession", "push.batch", self.push("pipeline"))
        add("push", "batch", "procession", "push.batch", self.push("batch"))
        for system in COMPETITORS:
            add("push", "one", system, "push.one", self.push("one"))
            add("push", "batch", system, "push.batch", self.push("batch"))
        add("push", "faktory", "procession", "push.one", self.faktory_push)
        add("drain", "runner", "procession", "drain", self.drain("runner"))
        add("drain", "faktory", "procession", "drain", self.faktory_drain)
        add("drain", "raw", "procession", "drain", self.drain("raw"))
        add("drain", "simple", "rq", "drain", self.drain("simple"))
        add("drain", "fork", "rq", "drain", self.drain("fork"))
        add("drain", "solo", "celery", "drain", self.drain("solo"))
        add("drain", "threads", "dramatiq", "drain", self.drain("threads"))
        for rate in s.latency_rates:
            family = f"latency.{rate}"
            add(
                f"latency{rate}", "raw", "procession", family, self.latency("raw", rate)
            )
            add(
                f"latency{rate}",
                "runner",
                "procession",
                family,
                self.latency("runner", rate),
            )
        for rate in s.competitor_latency_rates:
            family = f"latency.{rate}"
            add(f"latency{rate}", "simple", "rq", family, self.latency("simple", rate))
            add(f"latency{rate}", "solo", "celery", family, self.latency("solo", rate))
            add(
                f"latency{rate}",
                "threads",
                "dramatiq",
                family,
                self.latency("threads", rate),
            )
        add("http", "push", "procession", "push.one", self.http("push"))
        add("http", "drain", "procession", "drain", self.http("drain"))
        add(
            "http",
            "push-batch",
            "procession",
            "push.batch",
            self.http("push", HTTP_BATCH),
        )
        add(
            "http", "drain-batch", "procession", "drain", self.http("drain", HTTP_BATCH)
        )
        for n in s.scale:
            credit = max(1, s.raw_credit // n)
            add(
                "workers",
                str(n),
                "procession",
                "",
                self.drain("raw", connections=n, credit=credit),
                once=n >= 1000,
            )
        # BullMQ's cases and procession's Node.js side of them
        if s.node_missing is None and "bullmq" in s.systems:
            n = s.node_producers
            for system in ("procession", "bullmq"):
                add("push", "node1", system, "node.push1", self.node_push(1))
                add("push", f"node{n}", system, f"node.push{n}", self.node_push(n))
                add("drain", "node", system, "node.drain", self.node_drain)
        if s.deep:
            add("deep", "", "procession", "", self.deep, once=True)
        if s.idle_seconds:
            add("idle", "", "procession", "", self.idle, once=True)
        return cases

    def run(self, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """
        Run every case C{repeat} times, interleaved; the report, also given
        to C{save} after each repetition (a crash late in a long run keeps
        what was measured).
        """
        s = self.settings
        cases = self.cases()
        runs: dict[str, list[dict[str, Any]]] = {c.id: [] for c in cases}
        errors: dict[str, str] = {}
        started = time.monotonic()
        host = machine()
        report: dict[str, Any] = {}
        for rep in range(s.repeat):
            for case in cases:
                if case.once and rep > 0:
                    continue
                if case.id in errors:
                    continue
                self.say(
                    f"[{time.monotonic() - started:6.0f}s] run {rep + 1}/{s.repeat}: {case.id}"
                )
                env = Env(s, case.system, faktory=case.variant == "faktory")
                try:
                    metrics = case.run(env)
                except Exception as e:
                    errors[case.id] = f"{type(e).__name__}: {e}"[:4000]
                    self.say(f"  FAILED: {errors[case.id]}")
                    continue
                finally:
                    env.close()
                runs[case.id].append(metrics)
                self.say("  " + brief(metrics))
            report = self.report(host, cases, runs, errors, started)
            save(report)
        if s.profile:
            report["profiles"] = self.profiles(s.profile)
            save(report)
        return report

    def report(
        self,
        host: dict[str, Any],
        cases: list[Case],
        runs: dict[str, list[dict[str, Any]]],
        errors: dict[str, str],
        started: float,
    ) -> dict[str, Any]:
        """
        The report of the runs so far: medians, ratios, targets.
        """
        results = []
        for case in cases:
            if not runs[case.id]:
                continue
            results.append(
                {
                    "id": case.id,
                    "workload": case.workload,
                    "variant": case.variant,
                    "system": case.system,
                    "family": case.family,
                    "median": medians(runs[case.id]),
                    "runs": runs[case.id],
                }
            )
        add_ratios(results)
        return {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": host,
            "settings": settings_json(self.settings),
            "results": results,
            "errors": errors,
            "targets": targets(results),
            "seconds": round(time.monotonic() - started, 1),
        }

    # -- profiles

    def profiles(self, folder: str) -> dict[str, Any]:
        """
        py-spy profiles of the server, each C{profile_seconds} long: drain
        (raw and Python workers), push (one at a time, pipelined), and the
        HTTP push and long-poll drain.
        """
        os.makedirs(folder, exist_ok=True)
        s = self.settings
        summaries = {}
        for name in s.profile_cases:
            try:
                summaries[name] = self.profile(folder, name)
            except Exception as e:
                summaries[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
                self.say(f"profile {name} FAILED: {summaries[name]['error']}")
        return summaries

    def profile(self, folder: str, name: str) -> dict[str, Any]:
        """
        One py-spy profile of a fresh server under one load; its summary.
        """
        s = self.settings
        env = Env(s, "procession")
        try:
            assert env.server is not None
            path = os.path.join(folder, f"profile-{name}.txt")
            kind, variant = name.split("-")
            draining = variant in ("raw", "runner", "drain")
            # enough to outlast the profile at today's speed
            jobs = 60_000 if draining else 1_000_000
            if draining:
                self.fill(env, jobs)
            # fmt: off
            command = [
                os.path.join(BIN, "py-spy"), "record", "-p", str(env.server.pid),
                "-d", str(int(s.profile_seconds)), "-r", "100", "-f", "raw", "-o", path,
            ]
            # fmt: on
            spy = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.5)
            load: subprocess.Popen[str] | None = None
            if kind == "http":
                # fmt: off
                load = subprocess.Popen(
                    [
                        sys.executable, "-m", "bench.httpload", variant,
                        "--port", str(env.server.http_port), "--jobs", str(jobs),
                        "--threads", str(s.http_threads),
                        "--max-seconds", str(s.profile_seconds + 1),
                    ],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    text=True, cwd=code_root(), env=environment(),
                )
                # fmt: on
            elif draining:
                env.child(self.worker_args(env, variant, jobs, "/dev/null"), variant)
            else:
                load = self.start_producer(
                    env, variant, jobs, max_seconds=s.profile_seconds + 1
                )
            _, err = spy.communicate(timeout=s.profile_seconds + 60)
            if load is not None:
                load.communicate(timeout=120)
            if spy.returncode != 0 or not os.path.exists(path):
                return {"error": err[-2000:]}
            summary = summarise(path, expected=int(s.profile_seconds * 100))
            with open(os.path.join(folder, f"profile-{name}.summary.txt"), "w") as f:
                f.write(render(summary) + "\n")
            self.say(f"profile {name}: {path}")
            return summary
        finally:
            env.close()


# -- reporting

METRIC_ORDER = (
    "jobs_per_s",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "server_cpu_s_per_10k",
    "server_peak_rss_mb",
    "redis_cpu_s_per_10k",
    "redis_cmds_per_job",
    "redis_bytes_per_job",
    "worker_cpu_s_per_10k",
)


def brief(metrics: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v}" for k, v in metrics.items() if not isinstance(v, (list, dict))
    )


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """
    The median of every numeric metric over the runs (of every entry, for
    a metric that is a dict of numbers).
    """
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        if isinstance(first, dict):
            names = {n for r in runs for n in r.get(key, {})}
            out[key] = {
                n: round(statistics.median([r.get(key, {}).get(n, 0) for r in runs]), 3)
                for n in sorted(names, key=lambda n: -first.get(n, 0))
            }
            continue
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if values and isinstance(first, (int, float)):
            out[key] = round(statistics.median(values), 3)
    return out


def add_ratios(results: list[dict[str, Any]]) -> None:
    """
    Give each procession result its ratio to the best competitor of its
    family: throughput ours/theirs, latency theirs/ours (above 1: ahead).
    """
    for result in results:
        if result["system"] != "procession" or not result["family"]:
            continue
        rivals = [
            r
            for r in results
            if r["system"] != "procession" and r["family"] == result["family"]
        ]
        if not rivals:
            continue
        if result["family"].startswith("latency"):
            # the rate is set: compare latencies, with the competitor lowest in each
            ratio: dict[str, Any] = {}
            for key in ("p50_ms", "p99_ms"):
                fastest = min(
                    (r for r in rivals if r["median"].get(key)),
                    key=lambda r: r["median"][key],
                    default=None,
                )
                ours = result["median"].get(key)
                if fastest is not None and ours:
                    ratio[key] = round(fastest["median"][key] / ours, 2)
                    ratio[f"{key}_best"] = fastest["id"]
            if "p99_ms_best" in ratio:
                ratio["best"] = ratio["p99_ms_best"]
                result["ratio"] = ratio
            continue
        best = max(rivals, key=lambda r: r["median"].get("jobs_per_s", 0))
        theirs = best["median"].get("jobs_per_s", 0)
        if theirs:
            result["ratio"] = {
                "best": best["id"],
                "jobs_per_s": round(result["median"].get("jobs_per_s", 0) / theirs, 2),
            }


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    Issue 6's targets, each with the measured median and whether it is met.
    """
    by_id = {r["id"]: r for r in results}
    checks: list[dict[str, Any]] = []

    def check(
        name: str,
        case: str,
        key: str,
        goal: float,
        higher: bool = True,
        ratio: bool = False,
    ) -> None:
        result = by_id.get(case)
        if result is None:
            return
        source = result.get("ratio", {}) if ratio else result["median"]
        value = source.get(key)
        if value is None:
            return
        met = value >= goal if higher else value <= goal
        checks.append(
            {"target": name, "case": case, "value": value, "goal": goal, "met": met}
        )

    check(
        "TCP drain, Python worker: >= 15,000 jobs/s",
        "drain.runner/procession",
        "jobs_per_s",
        15000,
    )
    check(
        "TCP drain, Python worker: >= 4x the best competitor",
        "drain.runner/procession",
        "jobs_per_s",
        4,
        ratio=True,
    )
    check(
        "TCP drain, raw worker: >= 15,000 jobs/s",
        "drain.raw/procession",
        "jobs_per_s",
        15000,
    )
    check(
        "TCP push one at a time: >= 8,000 jobs/s",
        "push.one/procession",
        "jobs_per_s",
        8000,
    )
    check(
        "TCP push pipelined: >= 30,000 jobs/s",
        "push.pipeline/procession",
        "jobs_per_s",
        30000,
    )
    check(
        "TCP push batched: >= 30,000 jobs/s",
        "push.batch/procession",
        "jobs_per_s",
        30000,
    )
    check(
        "HTTP long-poll drain: >= 2,000 jobs/s",
        "http.drain/procession",
        "jobs_per_s",
        2000,
    )
    check("HTTP POST push: >= 3,000 jobs/s", "http.push/procession", "jobs_per_s", 3000)
    check(
        f"HTTP long-poll drain, {HTTP_BATCH} jobs a request: >= 2,000 jobs/s",
        "http.drain-batch/procession",
        "jobs_per_s",
        2000,
    )
    check(
        f"HTTP POST push, {HTTP_BATCH} jobs a request: >= 3,000 jobs/s",
        "http.push-batch/procession",
        "jobs_per_s",
        3000,
    )
    check(
        "Latency at 1,000/s: p50 <= 1 ms",
        "latency1000.raw/procession",
        "p50_ms",
        1,
        higher=False,
    )
    check(
        "Latency at 1,000/s: p99 <= 5 ms",
        "latency1000.raw/procession",
        "p99_ms",
        5,
        higher=False,
    )
    check(
        "Idle, 100 workers: < 1% of a core",
        "idle/procession",
        "server_cpu_percent",
        1,
        higher=False,
    )
    check(
        "Idle, 100 workers: a few Redis commands/s (sent by the server)",
        "idle/procession",
        "redis_round_trips_per_s",
        5,
        higher=False,
    )
    # issue 13: against BullMQ, both sides with Node.js clients
    check(
        "Push, 16 producers, one at a time each: >= 1.5x BullMQ",
        "push.node16/procession",
        "jobs_per_s",
        1.5,
        ratio=True,
    )
    check(
        "Push, one at a time: >= 0.5x BullMQ",
        "push.node1/procession",
        "jobs_per_s",
        0.5,
        ratio=True,
    )
    check(
        "Drain, one consumer: >= 1.5x BullMQ",
        "drain.node/procession",
        "jobs_per_s",
        1.5,
        ratio=True,
    )
    for case in ("push.node1/procession", "push.node16/procession"):
        check(
            f"Server CPU per push ({case}): <= 120 us (1.2 s/10k)",
            case,
            "server_cpu_s_per_10k",
            1.2,
            higher=False,
        )
        check(
            f"Redis CPU per push ({case}): <= 60 us (0.6 s/10k)",
            case,
            "redis_cpu_s_per_10k",
            0.6,
            higher=False,
        )
    deep = by_id.get("deep/procession")
    if deep is not None:
        m = deep["median"]
        growth = m["claim_usec_per_call_deep"] / max(
            m["claim_usec_per_call_shallow"], 1e-9
        )
        checks.append(
            {
                "target": "Claim cost does not grow with queue length (deep/shallow claim time)",
                "case": "deep/procession",
                "value": round(growth, 2),
                "goal": 2.0,
                "met": growth <= 2.0,
            }
        )
    return checks


def table(report: dict[str, Any]) -> str:
    """
    The results as a text table: medians, and ratios to the best
    competitor of the same family.
    """
    header = [
        "case", "jobs/s", "vs best rival", "p50 ms", "p99 ms", "max ms",
        "srv CPU s/10k", "srv peak MB", "redis CPU s/10k", "redis cmd/job",
        "redis B/job", "worker CPU s/10k",
    ]  # fmt: skip
    rows = [header]
    for r in report["results"]:
        m = r["median"]
        ratio = r.get("ratio") or {}
        vs = ""
        if "jobs_per_s" in ratio:
            vs = f"{ratio['jobs_per_s']:.2f}x {ratio['best'].split('/')[1]}"
        elif "p99_ms" in ratio:
            vs = f"p99 {ratio['p99_ms']:.2f}x {ratio['best'].split('/')[1]}"
        rows.append(
            [
                r["id"],
                fmt(m.get("jobs_per_s"), 0),
                vs,
                fmt(m.get("p50_ms"), 2),
                fmt(m.get("p99_ms"), 2) + censored(m),
                fmt(m.get("max_ms"), 1) + censored(m),
                fmt(m.get("server_cpu_s_per_10k"), 2),
                fmt(m.get("server_peak_rss_mb"), 0),
                fmt(m.get("redis_cpu_s_per_10k"), 2),
                fmt(m.get("redis_cmds_per_job"), 2),
                fmt(m.get("redis_bytes_per_job"), 0),
                fmt(m.get("worker_cpu_s_per_10k"), 2),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:])
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    extra = []
    for r in report["results"]:
        m = r["median"]
        if r["workload"] == "deep":
            extra.append(
                f"deep queue: {m['queue_length']:.0f} jobs waiting ({m['redis_memory_mb']} MB in Redis), "
                f"pushed at {m['push_batch_jobs_per_s']:.0f} jobs/s with PUSHB; claim script "
                f"{m['claim_usec_per_call_deep']} us/call (10 jobs) vs "
                f"{m['claim_usec_per_call_shallow']} us/call on a queue of {report['settings']['jobs']}"
            )
        if r["workload"] == "idle":
            extra.append(
                f"idle: {m['workers']:.0f} connected workers, server {m['server_cpu_percent']}% of a core, "
                f"{m.get('redis_round_trips_per_s')} Redis commands/s sent by the server "
                f"({m['redis_cmds_per_s']} with those its scripts ran)"
            )
    if any(censored(r["median"]) for r in report["results"]):
        extra.append(
            "* not every job reached the worker within --max-seconds of the last push: "
            "percentiles of those that did (lower bounds)"
        )
    lines += [""] + extra if extra else []
    if report["targets"]:
        lines += ["", "targets (issues 6 and 13):"]
        for t in report["targets"]:
            mark = "met   " if t["met"] else "MISSED"
            lines.append(f"  {mark} {t['target']}: {t['value']}")
    if report["errors"]:
        lines += ["", "failed cases:"]
        lines += [f"  {k}: {v.splitlines()[0]}" for k, v in report["errors"].items()]
    return "\n".join(lines)


def censored(median: dict[str, Any]) -> str:
    """
    A mark for latencies measured on part of the jobs only.
    """
    if "received" in median and median["received"] < median["jobs"]:
        return "*"
    return ""


def fmt(value: Any, digits: int) -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}f}"


def machine() -> dict[str, Any]:
    """
    What the numbers were measured on.
    """
    model = "?"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with RedisServer(free_port()) as redis:
        redis_version = redis.version()
    versions: dict[str, str | None] = {}
    for package in (
        "twisted",
        "txredisapi",
        "hiredis",
        "rq",
        "celery",
        "kombu",
        "dramatiq",
        "redis",
    ):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    versions["bullmq"] = nodeload.bullmq_version()
    versions["node"] = nodeload.node_version()
    try:
        commit = subprocess.run(
            ["git", "-C", REPO, "describe", "--always", "--dirty"],
            check=False,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        commit = "?"
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "redis": redis_version,
        "kernel": platform.release(),
        "packages": versions,
        "commit": commit,
        "load_average": load_average(),
    }


def settings_json(s: Settings) -> dict[str, Any]:
    from attrs import asdict

    return asdict(s)


# -- command line


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def parse(argv: list[str] | None) -> tuple[Settings, str | None, bool]:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark procession beside RQ, Celery, Dramatiq and BullMQ (bench/README.rst).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: small N, one repetition, procession only",
    )
    parser.add_argument(
        "--repeat", type=int, help="repetitions (default 3; medians are reported)"
    )
    parser.add_argument(
        "--jobs", type=int, help="N, the jobs of each push and drain (default 20000)"
    )
    parser.add_argument(
        "--max-seconds", type=float, help="cap on each measured phase (default 8)"
    )
    parser.add_argument(
        "--systems",
        help="comma-separated: procession,rq,celery,dramatiq,bullmq (default all; --quick: procession)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only cases matching this glob (e.g. 'drain.*')",
    )
    parser.add_argument(
        "--skip", action="append", default=[], help="skip cases matching this glob"
    )
    parser.add_argument(
        "--deep",
        type=int,
        help="jobs waiting in the claim-cost case (default 1000000; 0 skips)",
    )
    parser.add_argument(
        "--scale", help="connected workers for the scale cases (default 1,10,100,1000)"
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        help="seconds of pushing per latency case (default 3)",
    )
    parser.add_argument(
        "--runner-concurrency",
        type=int,
        help="procession.client.worker --concurrency (default 32)",
    )
    parser.add_argument(
        "--transport",
        choices=("unix", "tcp"),
        help="how everyone reaches Redis (default unix)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="also record py-spy profiles of the server into DIR",
    )
    parser.add_argument(
        "--profile-cases",
        help=f"which profiles to record (default {','.join(PROFILE_CASES)})",
    )
    parser.add_argument(
        "--output", help="the JSON file (default bench/results/<date>.json)"
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="run the checkout's code as it changes, rather than a copy taken at the start",
    )
    options = parser.parse_args(argv)
    s = Settings()
    if options.quick:
        s.jobs = 2000
        s.max_seconds = 2.0
        s.repeat = 1
        s.latency_rates = (1000,)
        s.latency_seconds = 1.0
        s.scale = (1, 100)
        s.deep = 10_000
        s.idle_seconds = 2.0
        s.systems = ("procession",)
        s.quick = True
    for name in (
        "repeat",
        "jobs",
        "max_seconds",
        "deep",
        "latency_seconds",
        "runner_concurrency",
        "transport",
    ):
        value = getattr(options, name)
        if value is not None:
            setattr(s, name, value)
    if options.systems:
        s.systems = tuple(x for x in options.systems.split(",") if x)
        unknown = set(s.systems) - set(SYSTEMS)
        if unknown:
            parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    if options.scale:
        s.scale = tuple(int(x) for x in options.scale.split(","))
    s.only = tuple(options.only)
    s.skip = tuple(options.skip)
    s.profile = options.profile
    if options.profile_cases:
        s.profile_cases = tuple(x for x in options.profile_cases.split(",") if x)
        unknown = set(s.profile_cases) - set(PROFILE_CASES)
        if unknown:
            parser.error(f"unknown profile cases: {', '.join(sorted(unknown))}")
    return s, options.output, options.live


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--table"]:
        # print the table of an earlier run
        for path in args[1:]:
            with open(path, encoding="utf-8") as f:
                print(table(json.load(f)))
        return 0
    settings, output, live = parse(argv)
    if "bullmq" in settings.systems:
        # before the code is frozen: the copy takes bench/node/node_modules
        settings.node_missing = nodeload.ensure_installed()
        if settings.node_missing is not None:
            print(
                f"skipping BullMQ and procession's Node.js cases: {settings.node_missing}",
                file=sys.stderr,
                flush=True,
            )
    code = "live" if live else freeze_code()
    # SIGTERM stops a run as ^C does: each run's processes are stopped
    signal.signal(signal.SIGTERM, _interrupt)
    if output is None:
        stamp = datetime.date.today().isoformat() + ("-quick" if settings.quick else "")
        output = os.path.join(REPO, "bench", "results", f"{stamp}.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)

    def save(report: dict[str, Any]) -> None:
        report["machine"]["code"] = code
        with open(output + ".tmp", "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
        os.replace(output + ".tmp", output)

    report = Bench(settings).run(save)
    print(table(report))
    print(f"\nwrote {output} in {report['seconds']:.0f} s", flush=True)
    return 1 if report["errors"] else 0
