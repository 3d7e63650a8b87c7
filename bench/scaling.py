"""
How procession's throughput scales with server processes on one Redis
(docs/scaling.rst): ``python -m bench.scaling --processes 1,2,4``.

For each process count it starts a private redis-server (unix socket, AOF
fsynced every second, as the embedded Redis runs) and ``twist procession
--processes P`` on it, then measures two phases with raw-protocol clients
in separate processes, so that the load generator is not the server's
bottleneck:

push
    ``--jobs`` jobs pushed one per ``PUSH`` frame, ``--window`` frames in
    flight on each of ``--connections`` connections.
drain
    the same jobs taken and acked by ``--connections`` worker connections
    (credit ``--window`` each), acks sent as soon as a ``JOB`` arrives.

For each phase it reports jobs per second and the cores the server
processes (all of them) and redis-server used (CPU seconds from /proc over
the phase's wall time), so that the figures say where the bottleneck is.
Self-contained: it uses nothing of the ``bench`` harness.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                    if int(f.read().rpartition(")")[2].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                pass
    return found


class Lines:
    """
    Reads server frames from a socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def frames(self) -> list[bytes]:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("closed")
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        return lines


def connect(port: int, name: str) -> tuple[socket.socket, Lines]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lines = Lines(sock)
    sock.sendall(b'HELLO {"worker":"%s"}\n' % name.encode())
    got = 0
    while got < 2:  # HI, then OK
        got += len(lines.frames())
    return sock, lines


def pusher(port: int, count: int, window: int, start: Any, done: Any) -> None:
    sock, lines = connect(port, "pusher")
    frame = b'PUSH {"type":"noop","args":[1]}\n'
    start.wait()
    sent = answered = 0
    while answered < count:
        if sent < count and sent - answered < window:
            n = min(window - (sent - answered), count - sent)
            sock.sendall(frame * n)
            sent += n
        for line in lines.frames():
            if not line.startswith(b"OK"):
                raise RuntimeError(line[:200])
            answered += 1
    done.put(answered)
    sock.close()


def worker(port: int, window: int, start: Any, stop: Any, done: Any) -> None:
    sock, lines = connect(port, "drainer")
    start.wait()
    sock.sendall(b'READY {"queues":["default"],"credit":%d}\n' % window)
    acked = 0
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            frames = lines.frames()
        except socket.timeout:
            continue
        acks = []
        for line in frames:
            if line.startswith(b"JOB "):
                start_id = line.index(b'"id":"') + 6
                job_id = line[start_id : line.index(b'"', start_id)]
                acks.append(b'ACK {"id":"%s"}\n' % job_id)
        if acks:
            sock.sendall(b"".join(acks))
            acked += len(acks)
            done.put(len(acks))
    sock.close()


def run_case(processes: int, settings: argparse.Namespace) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="procession-scaling-")
    redis_socket = os.path.join(folder, "redis.sock")
    sys.path.insert(0, REPO)
    from procession.redis.embedded import find_redis_server

    redis = subprocess.Popen(
        [find_redis_server(), "--port", "0", "--unixsocket", redis_socket,
         "--dir", folder, "--appendonly", "yes", "--appendfsync", "everysec",
         "--save", "", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    port, http = free_port(), free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    server = None
    log = open(os.path.join(folder, "server.log"), "wb")
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(redis_socket):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        server = subprocess.Popen(
            [sys.executable, "-m", "twisted", "--log-format=text", "procession",
             "--tcp", str(port), "--http", str(http), "--processes", str(processes),
             "--redis", f"unix://{redis_socket}", "--namespace", "scaling"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            pids = [server.pid] + [p for p in children_of(server.pid) if p != redis.pid]
            if len(pids) == processes:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.1)
        time.sleep(1.5)  # every process up and in the registry

        result: dict[str, Any] = {"processes": processes}
        for phase in ("push", "drain"):
            start = multiprocessing.Event()
            stop = multiprocessing.Event()
            done: Any = multiprocessing.Queue()
            per = settings.jobs // settings.connections
            if phase == "push":
                children = [
                    multiprocessing.Process(
                        target=pusher, args=(port, per, settings.window, start, done)
                    )
                    for _ in range(settings.connections)
                ]
            else:
                children = [
                    multiprocessing.Process(
                        target=worker, args=(port, settings.window, start, stop, done)
                    )
                    for _ in range(settings.connections)
                ]
            for c in children:
                c.start()
            time.sleep(0.5)
            server_cpu = cpu_seconds(pids)
            redis_cpu = cpu_seconds([redis.pid])
            began = time.monotonic()
            start.set()
            total = 0
            target = per * settings.connections
            while total < target:
                total += done.get(timeout=120)
            took = time.monotonic() - began
            stop.set()
            for c in children:
                c.join(10)
            server_used = cpu_seconds(pids) - server_cpu
            redis_used = cpu_seconds([redis.pid]) - redis_cpu
            result[phase] = {
                "jobs_per_s": round(target / took),
                "server_cores": round(server_used / took, 2),
                "redis_cores": round(redis_used / took, 2),
                # CPU per job holds better than rates on a busy machine.
                "server_us_per_job": round(server_used / target * 1e6, 1),
                "redis_us_per_job": round(redis_used / target * 1e6, 1),
            }
        result["load_average"] = os.getloadavg()[0]
        return result
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        redis.kill()
        redis.wait(10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2,4", help="process counts to run")
    parser.add_argument("--jobs", type=int, default=40_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", help="write every run as JSON here")
    settings = parser.parse_args()
    counts = [int(n) for n in settings.processes.split(",")]
    runs: list[dict[str, Any]] = []
    for _ in range(settings.repeat):
        for n in counts:  # interleaved, so that drift hits every count
            run = run_case(n, settings)
            print(json.dumps(run), flush=True)
            runs.append(run)
    print(f"cores: {os.cpu_count()}; {settings.jobs} jobs, {settings.connections} "
          f"connections, window {settings.window}; medians of {settings.repeat}")  # fmt: skip
    print(
        "per phase: jobs/s, cores used by the servers and by Redis, "
        "CPU microseconds per job of the servers and of Redis"
    )
    print(f"{'processes':>9} {'push/s':>8} {'srv':>5} {'redis':>5} {'us':>5} {'us':>5} "
          f"{'drain/s':>8} {'srv':>5} {'redis':>5} {'us':>5} {'us':>5} {'load':>5}")  # fmt: skip
    for n in counts:
        mine = [r for r in runs if r["processes"] == n]

        def med(phase: str, key: str) -> float:
            return statistics.median(r[phase][key] for r in mine)

        row = f"{n:>9}"
        for phase in ("push", "drain"):
            row += (f" {med(phase, 'jobs_per_s'):>8.0f} {med(phase, 'server_cores'):>5.2f}"
                    f" {med(phase, 'redis_cores'):>5.2f} {med(phase, 'server_us_per_job'):>5.0f}"
                    f" {med(phase, 'redis_us_per_job'):>5.0f}")  # fmt: skip
        load = statistics.median(r["load_average"] for r in mine)
        print(row + f" {load:>5.1f}")
    if settings.output:
        with open(settings.output, "w", encoding="utf-8") as f:
            json.dump({"cores": os.cpu_count(), "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
