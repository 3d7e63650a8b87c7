"""
The benchmark's Redis: a private redis-server child per measured run, with
the persistence every system gets alike (append-only file, fsync every
second), and a tiny blocking RESP client for the harness's own reads
(queue sizes, INFO, FLUSHALL), so that the harness needs no Redis library.

Only the harness talks to Redis through this module; the systems under test
use their own clients.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from typing import Any

from procession.redis.embedded import find_redis_server


class RedisServer:
    """
    A redis-server child process in a temporary directory, listening on a
    unix socket and a loopback port.

    @param transport: ``"unix"`` or ``"tcp"``: which of the two L{url}
        names (the systems under test all use that one).
    """

    def __init__(
        self, port: int, transport: str = "unix", binary: str | None = None
    ) -> None:
        self.binary = binary or find_redis_server()
        self.port = port
        self.transport = transport
        self.dir = tempfile.mkdtemp(prefix="procession-bench-redis-")
        self.socket = os.path.join(self.dir, "redis.sock")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        """
        Start redis-server and wait until it answers PING.
        """
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--unixsocket", self.socket,
                "--unixsocketperm", "700",
                "--dir", self.dir,
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--maxmemory-policy", "noeviction",
                # As procession's embedded Redis and docs/scaling.rst have
                # it; it applies to every system measured.
                "--hash-max-ziplist-value", "1024",
                "--daemonize", "no",
                "--logfile", os.path.join(self.dir, "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with RespClient(self) as r:
                    if r.call("PING") == "PONG":
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start (see {self.dir}/redis.log)")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def url(self, db: int = 0, kombu: bool = False) -> str:
        """
        The address for the systems under test: ``unix:///path?db=N`` or
        ``redis://127.0.0.1:PORT/N``; with C{kombu}, in the form Celery's
        transport takes (``redis+socket:///path?virtual_host=N``).
        """
        if self.transport == "unix":
            if kombu:
                return f"redis+socket://{self.socket}?virtual_host={db}"
            return f"unix://{self.socket}?db={db}"
        return f"redis://127.0.0.1:{self.port}/{db}"

    def version(self) -> str:
        """
        The server's version, from INFO.
        """
        with RespClient(self) as r:
            return info(r, "server").get("redis_version", "?")

    def stop(self) -> None:
        """
        Stop the process and remove its files.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RespError(Exception):
    """
    An error reply from Redis.
    """


class RespClient:
    """
    A minimal blocking RESP2 client: one command at a time, or a pipeline
    of several with L{pipeline}.  Bulk replies come back as text, or as
    bytes with C{raw=True}.  It counts the commands and bytes it sent and
    received, so that the harness can leave its own traffic out of Redis's
    figures.
    """

    def __init__(
        self, server: RedisServer, db: int = 0, timeout: float = 120.0
    ) -> None:
        if server.transport == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(server.socket)
        else:
            self.sock = socket.create_connection(("127.0.0.1", server.port), timeout)
        self.file = self.sock.makefile("rb")
        self.sent = 0
        self.bytes = 0
        self.counts: Counter[str] = Counter()
        if db:
            self.call("SELECT", db)

    def __enter__(self) -> RespClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def reset_counters(self) -> None:
        self.sent = 0
        self.bytes = 0
        self.counts.clear()

    @staticmethod
    def _encode(args: tuple[Any, ...]) -> bytes:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(parts)

    def call(self, *args: Any, raw: bool = False) -> Any:
        """
        Send one command; its reply.
        """
        return self.pipeline(args, raw=raw)[0]

    def pipeline(self, *commands: tuple[Any, ...], raw: bool = False) -> list[Any]:
        """
        Send several commands in one write; their replies.
        """
        data = b"".join(self._encode(c) for c in commands)
        self.sock.sendall(data)
        self.sent += len(commands)
        self.bytes += len(data)
        self.counts.update(str(c[0]).lower() for c in commands)
        return [self._read(raw) for _ in commands]

    def _read(self, raw: bool) -> Any:
        line = self.file.readline()
        if not line:
            raise ConnectionError("Redis closed the connection")
        self.bytes += len(line)
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)[:-2]
            self.bytes += n + 2
            return data if raw else data.decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._read(raw) for _ in range(n)]
        raise RespError(f"unexpected reply {line!r}")


def snapshot(client: RespClient, pattern: str = "*") -> list[tuple[str, int, bytes]]:
    """
    The keys matching C{pattern} as (name, TTL in ms or 0, DUMP payload),
    to put back with L{restore}: the queued jobs of a drain are made once
    per system with its own client and restored into each run's fresh Redis.
    """
    keys = client.call("KEYS", pattern)
    out = []
    for start in range(0, len(keys), 1000):
        part = keys[start : start + 1000]
        replies = client.pipeline(
            *[c for k in part for c in (("PTTL", k), ("DUMP", k))], raw=True
        )
        for i, key in enumerate(part):
            ttl = replies[2 * i]
            out.append((key, max(0, ttl), replies[2 * i + 1]))
    return out


def restore(client: RespClient, keys: list[tuple[str, int, bytes]]) -> None:
    """
    Put back keys saved by L{snapshot}.
    """
    for start in range(0, len(keys), 1000):
        client.pipeline(
            *[
                ("RESTORE", k, ttl, payload, "REPLACE")
                for k, ttl, payload in keys[start : start + 1000]
            ]
        )


def info(client: RespClient, section: str = "") -> dict[str, str]:
    """
    An INFO section as a dict of its fields.
    """
    text = client.call("INFO", section) if section else client.call("INFO")
    fields = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key] = value
    return fields


def command_stats(client: RespClient) -> dict[str, int]:
    """
    Calls per command since the last CONFIG RESETSTAT (INFO commandstats;
    the commands scripts run count too), less the client's own.
    """
    calls = {}
    for key, value in info(client, "commandstats").items():
        # cmdstat_evalsha:calls=12,usec=345,usec_per_call=28.75,...
        fields = dict(part.split("=", 1) for part in value.split(","))
        name = key.removeprefix("cmdstat_")
        n = int(fields["calls"]) - client.counts.get(name, 0)
        if n > 0:
            calls[name] = n
    return calls


def usec_per_call(client: RespClient, command: str) -> float:
    """
    Mean microseconds Redis spent per call of a command since the last
    CONFIG RESETSTAT (0 when it was not called).
    """
    value = info(client, "commandstats").get(f"cmdstat_{command}")
    if not value:
        return 0.0
    fields = dict(part.split("=", 1) for part in value.split(","))
    return float(fields["usec_per_call"])


def traffic(client: RespClient) -> dict[str, int]:
    """
    What Redis did since the last CONFIG RESETSTAT: commands processed and
    network bytes in and out (including the harness's own polling).
    """
    stats = info(client, "stats")
    return {
        "commands": int(stats["total_commands_processed"]),
        "bytes_in": int(stats["total_net_input_bytes"]),
        "bytes_out": int(stats["total_net_output_bytes"]),
    }
