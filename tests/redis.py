"""
One real redis-server for the whole test run.

Started on first use in a temporary directory with a unix socket and a
loopback TCP port, and killed when the test process exits.  Tests isolate
themselves by key namespace rather than by flushing, so they never step on
each other.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

from procession.redis.embedded import find_redis_server

_server: "RedisProcess | None" = None


class RedisProcess:
    """
    A redis-server child process owned by the tests.
    """

    def __init__(self, port: int | None = None, appendfsync: str = "everysec") -> None:
        self.binary = find_redis_server()
        self.dir = tempfile.mkdtemp(prefix="procession-test-redis-")
        self.socket = os.path.join(self.dir, "redis.sock")
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """
        Start redis-server and wait until it answers.
        """
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--unixsocket",
                self.socket,
                "--dir",
                self.dir,
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--daemonize",
                "no",
                "--logfile",
                os.path.join(self.dir, "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start (see {self.dir})")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """
        Stop the process with a signal and wait for it.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)

    def cleanup(self) -> None:
        """
        Kill the process and remove its files.
        """
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self) -> str:
        """
        A redis:// URL for the server.
        """
        return f"redis://127.0.0.1:{self.port}/0"


# Ports handed out by free_port, each held by a bound socket that does not
# listen; the oldest are let go past MAX_RESERVED.
_reserved: list[socket.socket] = []
MAX_RESERVED = 200


def free_port() -> int:
    """
    A TCP port on loopback that nothing listens on, reserved for a while.

    Binding port 0 and closing the socket again (the usual way) races: the
    kernel may give the same port to the next caller, in this process or
    in another test run on the machine, before the server meant for it
    listens.  Instead the port stays bound here, with C{SO_REUSEADDR} and
    without listening: no other bind to port 0 gets it, and a server told
    to listen on it (Twisted's listeners and redis-server set
    C{SO_REUSEADDR}) still can.  Connecting to it before then is refused.
    """
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    _reserved.append(s)
    if len(_reserved) > MAX_RESERVED:
        _reserved.pop(0).close()
    return s.getsockname()[1]


def shared_redis() -> RedisProcess:
    """
    The test run's redis-server, started on first use.
    """
    global _server
    if _server is None:
        _server = RedisProcess()
        _server.start()
        atexit.register(_server.cleanup)
    return _server


def namespace() -> str:
    """
    A key namespace no other test uses.
    """
    return "t" + uuid.uuid4().hex[:12]
