"""
Faktory's protocol spoken directly (docs/faktory.rst), to measure
procession's Faktory listener rather than a client library, beside the
native protocol's cases:

    python -m bench.faktoryload push --port 7419 --jobs 20000
    python -m bench.faktoryload drain --port 7419 --jobs 20000 --processors 20

``push`` sends one ``PUSH`` at a time, each waiting for its ``+OK`` (how
Faktory's clients push; none pipelines), the job's args the same ~100
bytes as bench.producer's.  ``drain`` runs C{--processors} connections of
one worker process (one C{wid}, as faktory_worker_go's pool does), each
``FETCH`` then ``ACK`` in turn, until C{--jobs} are acknowledged, and
beats every second on its own connection.  Each prints its timing as JSON
(C{jobs}, C{start}, C{end}, C{seconds}, C{errors}).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import time
from typing import Any

PAD = "x" * 80


def connect(port: int, wid: str | None) -> tuple[socket.socket, Any]:
    sock = socket.create_connection(("127.0.0.1", port), 10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")
    hi = reader.readline()
    if not hi.startswith(b"+HI "):
        raise RuntimeError(f"not a Faktory server: {hi!r}")
    hello: dict[str, Any] = {"v": 2, "hostname": "bench", "pid": os.getpid()}
    if wid:
        hello["wid"] = wid
    sock.sendall(b"HELLO " + json.dumps(hello).encode() + b"\r\n")
    ok = reader.readline()
    if ok != b"+OK\r\n":
        raise RuntimeError(f"HELLO refused: {ok!r}")
    return sock, reader


def push(port: int, jobs: int, max_seconds: float, queue: str) -> dict[str, Any]:
    sock, reader = connect(port, None)
    pad = json.dumps(PAD)
    errors = 0
    start = time.monotonic()
    done = 0
    for i in range(jobs):
        now = time.monotonic()
        if now - start > max_seconds:
            break
        sock.sendall(
            (
                f'PUSH {{"jid":"bench-{os.getpid()}-{i:08d}","jobtype":"noop",'
                f'"queue":"{queue}","args":[{pad},{i},{now!r}]}}\r\n'
            ).encode()
        )
        if reader.readline() != b"+OK\r\n":
            errors += 1
        done += 1
    end = time.monotonic()
    sock.close()
    return {
        "jobs": done,
        "start": start,
        "end": end,
        "seconds": end - start,
        "errors": errors,
    }


class Processor:
    """
    One connection of the worker process: FETCH, then ACK, again.
    """

    def __init__(self, port: int, wid: str, queue: str) -> None:
        self.sock, _ = connect(port, wid)
        self.sock.setblocking(False)
        self.queue = queue
        self.buffer = b""
        self.jid: str | None = None

    def fetch(self) -> None:
        self.jid = None
        self.sock.sendall(f"FETCH {self.queue}\r\n".encode())

    def replies(self) -> list[bytes | None]:
        """
        The complete replies read so far: a bulk string's body, C{None}
        for nil, or a simple reply line.
        """
        data = self.sock.recv(1 << 16)
        if not data:
            raise RuntimeError("the server closed a connection")
        self.buffer += data
        out: list[bytes | None] = []
        while b"\r\n" in self.buffer:
            line, _, rest = self.buffer.partition(b"\r\n")
            if line.startswith(b"$"):
                size = int(line[1:])
                if size < 0:
                    out.append(None)
                    self.buffer = rest
                    continue
                if len(rest) < size + 2:
                    break
                out.append(rest[:size])
                self.buffer = rest[size + 2 :]
            else:
                out.append(line)
                self.buffer = rest
        return out


def drain(
    port: int, jobs: int, processors: int, max_seconds: float, queue: str
) -> dict[str, Any]:
    wid = f"bench-{os.getpid()}"
    beat, beat_reader = connect(port, wid)
    pool = [Processor(port, wid, queue) for _ in range(processors)]
    selector = selectors.DefaultSelector()
    for p in pool:
        selector.register(p.sock, selectors.EVENT_READ, p)
        p.fetch()
    acked = 0
    errors = 0
    start: float | None = None
    last_beat = time.monotonic()
    while acked < jobs:
        now = time.monotonic()
        if start is not None and now - start > max_seconds:
            break
        if now - last_beat > 1:
            beat.sendall(b'BEAT {"wid":"' + wid.encode() + b'"}\r\n')
            beat_reader.readline()
            last_beat = now
        for key, _ in selector.select(1):
            p = key.data
            for reply in p.replies():
                if p.jid is None:
                    if reply is None:
                        p.fetch()
                        continue
                    if reply.startswith(b"-"):
                        errors += 1
                        p.fetch()
                        continue
                    if start is None:
                        start = time.monotonic()
                    p.jid = json.loads(reply)["jid"]
                    p.sock.sendall(
                        b'ACK {"jid":' + json.dumps(p.jid).encode() + b"}\r\n"
                    )
                else:
                    if reply != b"+OK":
                        errors += 1
                    acked += 1
                    p.fetch()
    end = time.monotonic()
    for p in pool:
        p.sock.close()
    beat.close()
    begun = start if start is not None else end
    return {
        "jobs": acked,
        "start": begun,
        "end": end,
        "seconds": end - begun,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.faktoryload", description=__doc__
    )
    parser.add_argument("mode", choices=("push", "drain"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--processors", type=int, default=20)
    parser.add_argument("--queue", default="default")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    options = parser.parse_args(argv)
    if options.mode == "push":
        result = push(options.port, options.jobs, options.max_seconds, options.queue)
    else:
        result = drain(
            options.port,
            options.jobs,
            options.processors,
            options.max_seconds,
            options.queue,
        )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
