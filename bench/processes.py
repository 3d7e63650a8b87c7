"""
Child processes of the benchmark: the procession server under test, worker
processes, and what /proc says about them (CPU seconds, peak memory).

The children run this checkout's code, or a frozen copy of it
(L{freeze_code}): it goes first on their C{PYTHONPATH} and is their working
folder (a strict editable install links only the modules that existed when
it was made, and the C{bench} package is not installed).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import IO

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Where the children import procession and bench from: the checkout, or
# the copy that L{freeze_code} made.
CODE = REPO


def freeze_code() -> str:
    """
    Copy procession, bench and the twist plugin to a temporary folder and
    run every child from there: others may edit the checkout while a run
    lasts, and all of a run's figures must come from one version of the
    code.  Returns a digest of the copied server code, for the report.
    """
    global CODE
    root = tempfile.mkdtemp(prefix="procession-bench-code-")
    ignore = shutil.ignore_patterns("__pycache__", "results", "*.pyc")
    shutil.copytree(
        os.path.join(REPO, "procession"),
        os.path.join(root, "procession"),
        ignore=ignore,
    )
    shutil.copytree(
        os.path.join(REPO, "bench"), os.path.join(root, "bench"), ignore=ignore
    )
    plugins = os.path.join(root, "twisted", "plugins")
    os.makedirs(plugins)
    shutil.copy(
        os.path.join(REPO, "twisted", "plugins", "procession_plugin.py"), plugins
    )
    digest = hashlib.sha1()
    for folder, _, names in sorted(os.walk(os.path.join(root, "procession"))):
        for name in sorted(names):
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(name.encode() + f.read())
    CODE = root
    atexit.register(shutil.rmtree, root, True)
    return digest.hexdigest()[:12]


def code_root() -> str:
    """
    The folder the children run from (see L{freeze_code}).
    """
    return CODE


def environment(**extra: str) -> dict[str, str]:
    """
    The children's environment: the code under test first on the path, no
    procession settings inherited from the caller.
    """
    env = dict(os.environ)
    for name in (
        "PROCESSION_REDIS",
        "PROCESSION_TOKEN",
        "PROCESSION_HOST",
        "PROCESSION_PORT",
    ):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (CODE, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def free_port() -> int:
    """
    A loopback TCP port that nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """
    User plus system CPU seconds a process has used (its threads included,
    its children not).
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # the command name may hold spaces: count fields after its ")"
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kb(pid: int, field: str = "VmHWM") -> int:
    """
    A memory figure of /proc/<pid>/status in KiB: VmHWM (peak resident
    size) by default, or VmRSS.
    """
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class Child:
    """
    A child process whose output goes to a temporary file, read back when
    something goes wrong.
    """

    def __init__(
        self, args: Sequence[str], name: str, env: dict[str, str] | None = None
    ) -> None:
        self.args = list(args)
        self.name = name
        self.log: IO[bytes] = tempfile.NamedTemporaryFile(
            prefix=f"procession-bench-{name}-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=CODE,
            env=env or environment(),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self, tail: int = 4000) -> str:
        self.log.flush()
        with open(self.log.name, "rb") as f:
            return f.read().decode("utf-8", "replace")[-tail:]

    def wait(self, timeout: float) -> int:
        """
        Wait for the process to end by itself; its status.

        @raise RuntimeError: it did not end in time (it is then killed).
        """
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(
                f"{self.name} did not finish in {timeout:g} s:\n{self.output()}"
            )

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        """
        Signal the process group (the process and any children it forked:
        Celery, Dramatiq and RQ workers fork), then SIGKILL what is left.
        """
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(grace)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.process.poll() is None:
            self.process.wait(10)

    def cleanup(self) -> None:
        self.stop(signal.SIGKILL)
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


class ProcessionServer(Child):
    """
    ``python -m twisted procession`` on loopback ports, with an external
    Redis, started and waited for until its TCP listener says HI and its
    other listeners (HTTP, and Faktory's when ``extra`` asks for it, which
    start after the first) take connections.
    """

    def __init__(
        self, redis_url: str, namespace: str, extra: Sequence[str] = ()
    ) -> None:
        self.port = free_port()
        self.http_port = free_port()
        args = [
            sys.executable, "-m", "twisted", "--log-format=text", "procession",
            "--tcp", str(self.port),
            "--http", str(self.http_port),
            "--redis", redis_url,
            "--namespace", namespace,
            *extra,
        ]  # fmt: skip
        super().__init__(args, "procession")
        self.namespace = namespace
        self._others = [self.http_port]
        if "--faktory" in extra:
            self._others.append(int(extra[list(extra).index("--faktory") + 1]))
        self._serving(30)

    def _serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"the procession server exited:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 1) as s:
                    s.settimeout(2)
                    if s.recv(1024).startswith(b"HI "):
                        for port in self._others:
                            socket.create_connection(("127.0.0.1", port), 1).close()
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.cleanup()
                raise RuntimeError(
                    f"the procession server never listened:\n{self.output()}"
                )
            time.sleep(0.05)

    def key(self, queue: str, name: str) -> str:
        """
        A Redis key of one queue (procession.store.jobs's layout).
        """
        return f"{self.namespace}:{{{queue}}}:{name}"


def group_cpu(pgid: int) -> float:
    """
    CPU seconds used by every live process of a process group, with the
    children they have reaped (RQ's default worker forks one per job).
    """
    total = 0.0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid:
            total += sum(int(x) for x in fields[11:15]) / CLOCK_TICKS
    return total


def load_average() -> float:
    """
    The host's one-minute load average: how busy the shared machine was.
    """
    with open("/proc/loadavg", encoding="ascii") as f:
        return float(f.read().split()[0])


def context_switches(pid: int) -> int:
    """
    A process's voluntary context switches: roughly, how often it slept
    (in epoll, for the server).
    """
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


# The system calls counted in the server (with perf's tracepoints): all of
# them, and those of the reactor's loop and socket I/O.
SYSCALL_EVENTS = (
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_ctl",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_recvmsg",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_sendmsg",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_writev",
)


class SyscallCounter:
    """
    ``perf stat`` counting a process's system calls until L{stop}, when
    perf is there and may trace (else it counts nothing and says so).
    """

    def __init__(self, pid: int) -> None:
        self.process: subprocess.Popen[str] | None = None
        perf = shutil.which("perf")
        if perf is None or not os.path.isdir("/sys/kernel/tracing/events/syscalls"):
            return
        self.process = subprocess.Popen(
            [perf, "stat", "-x", ",", "-e", ",".join(SYSCALL_EVENTS), "-p", str(pid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # perf attaches in a few milliseconds
        time.sleep(0.1)

    def stop(self) -> dict[str, int]:
        """
        The counts by system call (C{all} for every one), or nothing.
        """
        if self.process is None:
            return {}
        self.process.send_signal(signal.SIGINT)
        try:
            _, err = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return {}
        counts = {}
        for line in err.splitlines():
            fields = line.split(",")
            if len(fields) < 3 or not fields[0].isdigit():
                continue
            name = fields[2].split(":")[-1].removeprefix("sys_enter_")
            counts["all" if name == "sys_enter" else name] = int(fields[0])
        return counts
