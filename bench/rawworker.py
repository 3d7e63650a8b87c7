"""
A minimal worker speaking the TCP protocol directly (docs/protocol.rst),
to measure the server rather than a client library: one or many
connections from one process, each with a fixed credit, every ACK written
as soon as its JOB is read (the ACKs of one read go out in one write,
pipelined: their replies are counted, never waited for).

    python -m bench.rawworker --port 7000 --jobs 20000 --connections 10 --credit 20

It exits once C{--jobs} acks are answered, writing what it saw as JSON to
C{--result}: the time of the first JOB and of the last ACK's reply
(C{time.monotonic()}, one clock for every process of the host), bytes each
way, and, with C{--latency}, the push time each job carried in its args
beside the time its JOB frame was read.  With C{--jobs 0} it connects, says
READY and waits for SIGTERM (the idle workload).
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import signal
import socket
import sys
import time
from typing import Any

JOB_PREFIX = b'JOB {"id":"'


class Conn:
    """
    One worker connection: its socket, buffers and counters.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.out = bytearray()
        self.ready_answered = False
        self.jobs = 0
        self.answered = 0
        self.errors = 0


def connect(port: int, name: str) -> socket.socket:
    """
    Connect, read HI, say HELLO and read its OK (blocking); the socket.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    lines: list[bytes] = []
    sent_hello = False
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        buf += data
        *complete, buf = buf.split(b"\n")
        lines.extend(complete)
        while lines:
            line = lines.pop(0)
            if line.startswith(b"HI ") and not sent_hello:
                sock.sendall(b'HELLO {"worker":"%s"}\n' % name.encode())
                sent_hello = True
            elif line.startswith(b"OK") and sent_hello:
                if buf or lines:
                    raise RuntimeError("unexpected frames after HELLO's reply")
                return sock
            else:
                raise RuntimeError(f"unexpected frame {line[:200]!r}")


def run(options: argparse.Namespace) -> dict[str, Any]:
    """
    Work until C{options.jobs} acks are answered; what was seen.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = options.connections + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    selector = selectors.DefaultSelector()
    conns: list[Conn] = []
    ready = b'READY {"queues":["%s"],"credit":%d}\n' % (
        options.queue.encode(),
        options.credit,
    )
    for i in range(options.connections):
        conn = Conn(connect(options.port, f"raw-{i}"))
        conn.sock.setblocking(False)
        conns.append(conn)
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    # READY on every connection at once, after all are up: the drain starts
    # with every consumer in place.
    for conn in conns:
        conn.sock.sendall(ready)
    print("ready", flush=True)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    target = options.jobs
    latency = options.latency
    samples: list[tuple[float, float]] = []
    acked = 0
    first: float | None = None
    last = 0.0
    bytes_in = 0
    bytes_out = 0
    monotonic = time.monotonic
    loads = json.loads
    while not stop and (target == 0 or acked < target):
        events = selector.select(1.0)
        for key, _ in events:
            conn = key.data
            try:
                data = conn.sock.recv(1 << 18)
            except BlockingIOError:
                continue
            if not data:
                raise ConnectionError("the server closed a connection")
            now = monotonic()
            bytes_in += len(data)
            buf = conn.inbuf + data
            end = buf.rfind(b"\n")
            if end < 0:
                conn.inbuf = buf
                continue
            conn.inbuf = buf[end + 1 :]
            acks = []
            for line in buf[:end].split(b"\n"):
                if line.startswith(JOB_PREFIX):
                    stop_at = line.index(b'"', 11)
                    job_id = line[11:stop_at]
                    if b"\\" in job_id:
                        job_id = json.dumps(loads(line[4:])["id"]).encode()[1:-1]
                    acks.append(b'ACK {"id":"%s"}\n' % job_id)
                    conn.jobs += 1
                    if first is None:
                        first = now
                    if latency:
                        args = loads(line[4:])["args"]
                        samples.append((args[2], now))
                elif line.startswith(b"OK") or line.startswith(b"ERR"):
                    if line.startswith(b"ERR"):
                        conn.errors += 1
                        print(
                            f"server error: {line[:300]!r}", file=sys.stderr, flush=True
                        )
                    if not conn.ready_answered:
                        conn.ready_answered = True
                    else:
                        conn.answered += 1
                        acked += 1
                        last = now
                elif line.startswith(b"QUIET"):
                    stop.append(True)
                elif line.startswith(b"JOB"):
                    job_id = json.dumps(loads(line[4:])["id"]).encode()[1:-1]
                    acks.append(b'ACK {"id":"%s"}\n' % job_id)
                    conn.jobs += 1
            if acks:
                payload = b"".join(acks)
                bytes_out += len(payload)
                conn.sock.setblocking(True)
                conn.sock.sendall(payload)
                conn.sock.setblocking(False)
    for conn in conns:
        conn.sock.close()
    return {
        "jobs": acked,
        "first": first,
        "last": last,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "errors": sum(c.errors for c in conns),
        "per_connection": sorted(c.jobs for c in conns),
        "latency": samples if latency else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rawworker", description=__doc__
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--jobs", type=int, required=True, help="acks to wait for; 0: idle"
    )
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--credit", type=int, default=200, help="credit per connection")
    parser.add_argument("--queue", default="default")
    parser.add_argument(
        "--latency", action="store_true", help="record push/receive times"
    )
    parser.add_argument("--result", default=None, help="write the result JSON here")
    options = parser.parse_args(argv)
    result = run(options)
    text = json.dumps(result)
    if options.result:
        with open(options.result, "w", encoding="ascii") as f:
            f.write(text)
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
