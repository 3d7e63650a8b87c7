"""
A small blocking client of the worker protocol, for tests that talk to a
real server over a socket (the server runs in another process, so blocking
the test thread is fine).

Every read has a deadline: a test that waits for a frame that never comes
fails with L{WireTimeout} instead of hanging.
"""

from __future__ import annotations

import json
import socket
import time
from collections import deque
from typing import Any


class WireTimeout(Exception):
    """
    No frame arrived in time.
    """


class WireClosed(Exception):
    """
    The server closed the connection.
    """


class WireError(Exception):
    """
    The server answered a request with C{ERR}; C{body} is its JSON object.
    """

    def __init__(self, verb: str, body: Any) -> None:
        super().__init__(f"{verb} was refused: {body!r}")
        self.body = body


def _decode(line: bytes) -> tuple[str, Any]:
    verb, _, body = line.decode("utf-8").partition(" ")
    return verb, (json.loads(body) if body else None)


class WireClient:
    """
    One connection to a procession server.

    L{request} sends a request and returns its reply; the server's own
    frames that arrive in between are kept: C{JOB} bodies in L{jobs} (read
    them with L{next_job}), C{QUIET} as L{quieted}.

    @ivar hi: the body of the server's C{HI} frame.
    """

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout)
        self._buffer = b""
        self.jobs: deque[dict[str, Any]] = deque()
        self.quieted = False
        self.closed = False
        verb, self.hi = self.read_frame()
        if verb != "HI":
            raise AssertionError(f"expected HI, got {verb} {self.hi!r}")

    # -- raw frames

    def send(self, verb: str, body: Any = None) -> None:
        """
        Send one frame.
        """
        line = verb if body is None else f"{verb} {json.dumps(body)}"
        self.sock.sendall(line.encode("utf-8") + b"\n")

    def read_frame(self, timeout: float | None = None) -> tuple[str, Any]:
        """
        The next frame, whatever it is, as (verb, decoded body).

        @raise WireTimeout: if none arrives within C{timeout} seconds.
        @raise WireClosed: if the server closes the connection first.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WireTimeout("no frame arrived in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise WireTimeout("no frame arrived in time") from None
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                raise WireClosed("the server closed the connection")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return _decode(line.rstrip(b"\r"))

    def _keep(self, verb: str, body: Any) -> bool:
        """
        Keep a server-initiated frame; L{False} if C{verb} is not one.
        """
        if verb == "JOB":
            self.jobs.append(body)
            return True
        if verb == "QUIET":
            self.quieted = True
            return True
        return False

    # -- requests

    def reply(self, timeout: float | None = None) -> tuple[str, Any]:
        """
        The next reply (C{OK} or C{ERR}), keeping any C{JOB} and C{QUIET}
        frames that come before it.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            verb, body = self.read_frame(max(0.0, deadline - time.monotonic()))
            if not self._keep(verb, body):
                return verb, body

    def request(
        self, verb: str, body: Any = None, timeout: float | None = None
    ) -> tuple[str, Any]:
        """
        Send a request and return its reply as (C{'OK'} or C{'ERR'}, body).
        """
        self.send(verb, body)
        return self.reply(timeout)

    def ok(self, verb: str, body: Any = None, timeout: float | None = None) -> Any:
        """
        Send a request and return the body of its C{OK} reply.

        @raise WireError: if the server answers C{ERR}.
        """
        answer, reply = self.request(verb, body, timeout)
        if answer != "OK":
            raise WireError(verb, reply)
        return reply

    def hello(self, worker: str = "test", token: str | None = None) -> Any:
        """
        Introduce this connection; returns the C{OK} body.
        """
        body: dict[str, Any] = {"worker": worker}
        if token is not None:
            body["token"] = token
        return self.ok("HELLO", body)

    def push(self, **job: Any) -> Any:
        """
        Push one job; returns the C{OK} body (C{id}, C{created}).
        """
        job.setdefault("type", "test")
        return self.ok("PUSH", job)

    def ready(self, queues: list[str] | None = None, credit: int = 1) -> Any:
        """
        Ask for jobs.
        """
        return self.ok("READY", {"queues": queues or ["default"], "credit": credit})

    # -- server-initiated frames

    def next_job(self, timeout: float | None = None) -> dict[str, Any]:
        """
        The next C{JOB} body, waiting up to C{timeout} seconds for one.

        @raise WireTimeout: if no job arrives in time.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.jobs:
            verb, body = self.read_frame(max(0.0, deadline - time.monotonic()))
            if not self._keep(verb, body):
                raise AssertionError(f"unexpected frame while waiting: {verb} {body!r}")
        return self.jobs.popleft()

    def no_job(self, wait: float) -> bool:
        """
        Whether no C{JOB} arrives within C{wait} seconds.
        """
        try:
            job = self.next_job(wait)
        except WireTimeout:
            return True
        self.jobs.appendleft(job)
        return False

    def wait_quiet(self, timeout: float | None = None) -> None:
        """
        Wait for the server's C{QUIET} frame.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.quieted:
            verb, body = self.read_frame(max(0.0, deadline - time.monotonic()))
            if not self._keep(verb, body):
                raise AssertionError(f"unexpected frame while waiting: {verb} {body!r}")

    def wait_closed(self, timeout: float | None = None) -> bool:
        """
        Whether the server closes the connection within C{timeout} seconds
        (frames arriving before that are kept or dropped).
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                verb, body = self.read_frame(max(0.0, deadline - time.monotonic()))
                self._keep(verb, body)
        except WireClosed:
            return True
        except WireTimeout:
            return False

    def close(self) -> None:
        """
        Close the socket (idempotent).
        """
        try:
            self.sock.close()
        except OSError:
            pass
