"""
A blocking client of procession's TCP protocol, for programs without a
reactor: a Django view, a Flask app, a script, a cron job.

    from procession.client import Client

    client = Client()                      # 127.0.0.1:7000, or PROCESSION_HOST/PORT/TOKEN
    job_id = client.push("send_email", ["a@example.com"], queue="mail")
    result = client.push("resize", [path]).wait(timeout=30)   # its ACK's result
    with client.batch("thumbnails", on_success={"type": "zip"}) as batch:
        for path in paths:
            batch.push("resize", [path])
    ids = client.push_many([make_job("resize", [path]) for path in paths])
    with client.pipeline() as p:           # many pushes, one round trip
        for path in paths:
            p.push("resize", [path])

Every push carries an id the client made (unless the caller gave one), so a
push whose reply was lost to a network error, a timeout or a server restart
is simply sent again: the server answers a known id with C{created: false}
and stores nothing twice.  The client reconnects by itself and keeps trying
for C{retry_for} seconds before it gives up with L{ConnectionFailed}.

The server's C{ERR} replies become L{ProcessionError} subclasses, one per
code of docs/protocol.rst (L{InvalidJob}, L{Unauthorized}, ...): the
classes the server raises, from L{procession.core.errors}.

A L{Client} may be shared by threads (a lock serializes its requests) and
survives C{fork}: a child process opens its own connection.

This module also holds the pieces that L{procession.client.worker} builds on: the
connection handshake (L{Connection}), frame encoding and the error classes.
It must not import Twisted, nor any of the server's modules: it runs inside
applications that have neither.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import ssl as _ssl
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

# The job's rules, the errors and the protocol's limits live with the
# server's; procession.core is pure (no Twisted), so the client shares them
# instead of copying them.
from procession.core.errors import (
    ConnectionFailed,
    FrameTooLarge,
    InvalidJob,
    JobFailed,
    JobNotFound,
    NotAuthenticated,
    ProcessionError,
    ProtocolViolation,
    WaitTimeout,
    error_from_body,
)
from procession.core.job import SUBMISSION_FIELDS as JOB_FIELDS
from procession.core.job import new_job_id
from procession.core.wire import (
    DEFAULT_MAX_FRAME,
    DEFAULT_PORT,
    MAX_BATCH,
    PROTOCOL_VERSION,
    WORKER_NAME_LIMIT,
)

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
# Requests in flight at once when pipelining, and their bytes: enough to
# keep the pipe full, few enough that the server never pauses reading.
PIPELINE_WINDOW = 500
PIPELINE_WINDOW_BYTES = 4 << 20

# -- errors


# The server's names for two errors, under the names the client has
# always given them.
Unauthorized = NotAuthenticated
NotFound = JobNotFound

# Errors after which the server closes the connection.
CLOSING_ERRORS = frozenset({"frame_too_large", "unauthorized", "too_many_connections"})
# Errors a push may be resent after (with the same id): the server or its
# Redis is briefly unable, not the request wrong.
RETRYABLE_ERRORS = frozenset(
    {"store_unavailable", "shutting_down", "too_many_connections"}
)


# -- frames and jobs


def encode_frame(verb: str, body: Any = None) -> bytes:
    """
    One frame: C{VERB} or C{VERB <JSON>}, with its newline.
    """
    if body is None:
        return verb.encode("ascii") + b"\n"
    text = json.dumps(body, separators=(",", ":"), allow_nan=False)
    return f"{verb} {text}\n".encode("ascii")


def decode_body(body: bytes) -> Any:
    """
    The JSON of a frame's body, L{None} for a bare verb.
    """
    return json.loads(body) if body else None


def format_time(when: datetime) -> str:
    """
    An aware datetime as the RFC 3339 UTC time the protocol takes.
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("run_at must be an aware datetime (with a tzinfo)")
    when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def make_job(
    type: str,
    args: Any = None,
    *,
    queue: str | None = None,
    id: str | None = None,
    priority: int | None = None,
    delay: float | timedelta | None = None,
    run_at: datetime | str | None = None,
    max_attempts: int | None = None,
    timeout: float | None = None,
    meta: Mapping[str, Any] | None = None,
    limit_key: str | None = None,
    batch: str | None = None,
    after: Sequence[str] | None = None,
    on_parent_dead: str | None = None,
    unique_for: float | timedelta | None = None,
    unique_key: str | None = None,
    unique_until: str | None = None,
    expires_at: datetime | str | None = None,
    expires_in: float | timedelta | None = None,
) -> dict[str, Any]:
    """
    A job as the protocol's JSON object, with an id (a fresh one unless
    given) so that sending it twice stores it once.  Fields left at
    L{None} take the server's defaults.  C{batch}, C{after} and
    C{on_parent_dead} are docs/workflows.rst's; C{unique_for},
    C{unique_key}, C{unique_until}, C{expires_at} and C{expires_in}
    docs/periodic.rst's.
    """
    job: dict[str, Any] = {"id": id or new_job_id(), "type": type}
    if args is not None:
        job["args"] = list(args) if isinstance(args, tuple) else args
    if queue is not None:
        job["queue"] = queue
    if priority is not None:
        job["priority"] = priority
    if delay is not None:
        job["delay"] = delay.total_seconds() if isinstance(delay, timedelta) else delay
    if run_at is not None:
        job["run_at"] = format_time(run_at) if isinstance(run_at, datetime) else run_at
    if max_attempts is not None:
        job["max_attempts"] = max_attempts
    if timeout is not None:
        job["timeout"] = timeout
    if meta is not None:
        job["meta"] = dict(meta)
    if limit_key is not None:
        job["limit_key"] = limit_key
    if batch is not None:
        job["batch"] = batch
    if after is not None:
        job["after"] = [str(a) for a in after]
    if on_parent_dead is not None:
        job["on_parent_dead"] = on_parent_dead
    if unique_for is not None:
        job["unique_for"] = _seconds(unique_for)
    if unique_key is not None:
        job["unique_key"] = unique_key
    if unique_until is not None:
        job["unique_until"] = unique_until
    if expires_at is not None:
        job["expires_at"] = (
            format_time(expires_at) if isinstance(expires_at, datetime) else expires_at
        )
    if expires_in is not None:
        job["expires_in"] = _seconds(expires_in)
    return job


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else value


def _with_ids(jobs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """
    Copies of the jobs given to L{Client.push_many}, each with an id.
    """
    return [_with_id(job, index) for index, job in enumerate(jobs)]


def _with_id(job: Mapping[str, Any], index: int) -> dict[str, Any]:
    if not isinstance(job, Mapping):
        raise TypeError(f"job {index} is not a mapping of job fields: {job!r}")
    unknown = sorted(set(job) - JOB_FIELDS)
    if unknown:
        # the server would refuse it too, but a batch after others
        raise InvalidJob(
            message=f"job {index}: unknown field {unknown[0]!r}",
            details={"field": unknown[0], "index": index},
        )
    copy = dict(job)
    if not copy.get("id"):
        copy["id"] = new_job_id()
    if isinstance(copy.get("run_at"), datetime):
        copy["run_at"] = format_time(copy["run_at"])
    if isinstance(copy.get("delay"), timedelta):
        copy["delay"] = copy["delay"].total_seconds()
    if isinstance(copy.get("args"), tuple):
        copy["args"] = list(copy["args"])
    return copy


# -- addresses


def default_worker_name(kind: str = "client") -> str:
    """
    A name for C{HELLO} that tells an operator where a connection is from.
    """
    return f"python-{kind}@{socket.gethostname()}:{os.getpid()}"[:WORKER_NAME_LIMIT]


def resolve_address(
    host: str | None = None,
    port: int | str | None = None,
    url: str | None = None,
    token: str | None = None,
    tls: bool | _ssl.SSLContext | None = None,
) -> tuple[str, int, str | None, _ssl.SSLContext | None]:
    """
    Where to connect, from the arguments, else C{PROCESSION_HOST},
    C{PROCESSION_PORT} and C{PROCESSION_TOKEN}, else 127.0.0.1:7000.

    C{url} is C{tcp://host:port}, or C{tls://host:port} (also
    C{ssl://}) for TLS with the system's trusted certificates.  C{tls} is
    L{True} for the same, or an C{ssl.SSLContext} of your own.

    @return: host, port, token (L{None} for none) and the TLS context
        (L{None} for plain TCP).
    """
    if url is not None:
        parts = urlsplit(url if "://" in url else "tcp://" + url)
        if parts.scheme not in ("tcp", "tls", "ssl"):
            raise ValueError(f"{url!r}: the scheme must be tcp://, tls:// or ssl://")
        host = parts.hostname or host
        port = parts.port or port
        if parts.scheme in ("tls", "ssl") and tls is None:
            tls = True
    if host is None:
        host = os.environ.get("PROCESSION_HOST") or DEFAULT_HOST
    if port is None:
        port = os.environ.get("PROCESSION_PORT") or DEFAULT_PORT
    try:
        port_number = int(port)
    except ValueError:
        raise ValueError(f"{port!r} is not a port number") from None
    if not 0 < port_number < 65536:
        raise ValueError(f"{port!r} is not a port number")
    if token is None:
        token = os.environ.get("PROCESSION_TOKEN") or None
    context: _ssl.SSLContext | None = None
    if tls is True:
        context = _ssl.create_default_context()
    elif isinstance(tls, _ssl.SSLContext):
        context = tls
    return host, port_number, token, context


# -- one connection


class ConnectionClosed(ConnectionError):
    """
    The server closed the connection.
    """


class Connection:
    """
    One connection to a server, past its handshake (C{HI} read, C{HELLO}
    answered): a socket and what the server said of itself.  Blocking, and
    not thread-safe: its owner serializes its use.

    @ivar hi: the body of the server's C{HI}.
    @ivar name: the name the server gave this connection (C{worker#N}).
    @ivar max_frame: the longest frame the server takes, in bytes.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.hi: dict[str, Any] = {}
        self.name = ""
        self.max_frame = DEFAULT_MAX_FRAME
        self.pid = os.getpid()
        self._buffer = bytearray()
        self._lines: deque[bytes] = deque()

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        *,
        worker: str,
        token: str | None = None,
        timeout: float = 10.0,
        tls: _ssl.SSLContext | None = None,
    ) -> "Connection":
        """
        Connect, read C{HI} and say C{HELLO}.

        @raise OSError: the server cannot be reached or went away.
        @raise ProcessionError: the server refused the C{HELLO}
            (L{Unauthorized}, L{TooManyConnections}...).
        """
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=host)
            connection = cls(sock)
            connection._handshake(worker, token)
        except BaseException:
            sock.close()
            raise
        return connection

    def _handshake(self, worker: str, token: str | None) -> None:
        verb, body = self.read_frame()
        if verb == "ERR":
            # too_many_connections comes instead of HI
            raise error_from_body(decode_body(body))
        if verb != "HI":
            raise ProtocolViolation(message=f"expected HI, got {verb[:32]!r}")
        hi = decode_body(body)
        if not isinstance(hi, dict) or hi.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolViolation(message=f"unsupported server: {hi!r}")
        self.hi = hi
        if isinstance(hi.get("max_frame"), int):
            self.max_frame = hi["max_frame"]
        # "cancel": this client understands CANCEL frames (docs/protocol.rst).
        hello: dict[str, Any] = {
            "worker": worker[:WORKER_NAME_LIMIT] or "python",
            "cancel": True,
        }
        if token is not None:
            hello["token"] = token
        self.send(encode_frame("HELLO", hello))
        verb, body = self.read_frame()
        if verb == "ERR":
            raise error_from_body(decode_body(body))
        if verb != "OK":
            raise ProtocolViolation(
                message=f"expected a reply to HELLO, got {verb[:32]!r}"
            )
        reply = decode_body(body) or {}
        self.name = str(reply.get("worker", worker))

    def send(self, data: bytes) -> None:
        """
        Write bytes (whole frames) to the server.
        """
        self.sock.sendall(data)

    def read_frame(self) -> tuple[str, bytes]:
        """
        The next frame as its verb and its body's bytes, waiting at most the
        socket's timeout for it.

        @raise ConnectionClosed: the server closed the connection.
        @raise socket.timeout: nothing came in time.
        """
        if not self._lines:
            self._fill()
        line = self._lines.popleft()
        verb, _, body = line.partition(b" ")
        try:
            return verb.decode("ascii"), body
        except UnicodeDecodeError:
            raise ProtocolViolation(message="a frame's verb is not ASCII") from None

    def _fill(self) -> None:
        while True:
            data = self.sock.recv(1 << 18)
            if not data:
                raise ConnectionClosed("the server closed the connection")
            self._buffer += data
            if b"\n" in data:
                break
            if len(self._buffer) > self.max_frame + 2:
                raise ProtocolViolation(message="a frame from the server is too long")
        *lines, rest = self._buffer.split(b"\n")
        self._buffer = bytearray(rest)
        for line in lines:
            self._lines.append(bytes(line[:-1] if line.endswith(b"\r") else line))

    def take_buffer(self) -> bytes:
        """
        Bytes read past the frames read so far (for a new owner that reads
        the socket by itself), leaving the connection's buffers empty.
        """
        pending = b"".join(line + b"\n" for line in self._lines) + bytes(self._buffer)
        self._lines.clear()
        self._buffer = bytearray()
        return pending

    def close(self) -> None:
        """
        Close the socket (without C{BYE}).
        """
        try:
            self.sock.close()
        except OSError:
            pass


# -- the client


class Client:
    """
    A blocking producer client: pushes jobs over one TCP connection, made on
    first use and remade after errors.

    @param host: the server's address; default C{PROCESSION_HOST}, else
        127.0.0.1.
    @param port: default C{PROCESSION_PORT}, else 7000.
    @param url: C{tcp://host:port} or C{tls://host:port} instead of
        C{host} and C{port}.
    @param token: the worker token for C{HELLO}; default
        C{PROCESSION_TOKEN}.
    @param worker: the name this connection gives in C{HELLO}.
    @param timeout: seconds to wait for a connection or for a reply before
        the connection is deemed dead (and the request resent).
    @param retry_for: seconds for which a request is retried (reconnecting
        with backoff) after network errors, C{store_unavailable} and
        C{shutting_down}, before L{ConnectionFailed} (or the server's
        error) is raised.  0 tries once.
    @param tls: L{True} or an C{ssl.SSLContext} to connect with TLS.
    @param batch_size: jobs per C{PUSHB} frame in L{push_many} (at most
        10,000; batches are also kept under the server's C{max_frame}).
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | str | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        worker: str | None = None,
        timeout: float = 10.0,
        retry_for: float = 10.0,
        tls: bool | _ssl.SSLContext | None = None,
        batch_size: int = 1000,
    ) -> None:
        self.host, self.port, self.token, self._tls = resolve_address(
            host, port, url, token, tls
        )
        self.worker = worker or default_worker_name("client")
        self.timeout = timeout
        self.retry_for = retry_for
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be from 1 to {MAX_BATCH}")
        self.batch_size = batch_size
        self._lock = threading.RLock()
        self._connection: Connection | None = None

    def __repr__(self) -> str:
        return f"<procession.client.Client {self.host}:{self.port}>"

    # -- life cycle

    def connect(self) -> None:
        """
        Connect now rather than on the first request.
        """
        with self._lock:
            self._connected()

    def close(self) -> None:
        """
        Say C{BYE} and close the connection; the next request reconnects.
        """
        with self._lock:
            connection, self._connection = self._connection, None
            if connection is None or connection.pid != os.getpid():
                return
            try:
                connection.sock.settimeout(min(self.timeout, 1.0))
                connection.send(encode_frame("BYE"))
                connection.read_frame()
            except (OSError, ProcessionError):
                pass
            connection.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connected(self) -> Connection:
        connection = self._connection
        if connection is not None and connection.pid != os.getpid():
            # A forked child must not share its parent's socket: drop it
            # without a word on it.
            connection = self._connection = None
        if connection is None:
            connection = Connection.open(
                self.host,
                self.port,
                worker=self.worker,
                token=self.token,
                timeout=self.timeout,
                tls=self._tls,
            )
            connection.sock.settimeout(self.timeout)
            self._connection = connection
        return connection

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # -- requests

    def ping(self) -> float:
        """
        Round-trip a C{PING}; the seconds it took.
        """
        start = time.monotonic()
        [reply] = self.exchange([encode_frame("PING")])
        if isinstance(reply, ProcessionError):
            raise reply
        return time.monotonic() - start

    def push(
        self,
        type: str,
        args: Any = None,
        *,
        queue: str | None = None,
        id: str | None = None,
        priority: int | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        meta: Mapping[str, Any] | None = None,
        limit_key: str | None = None,
        batch: str | None = None,
        after: Sequence[str] | None = None,
        on_parent_dead: str | None = None,
        unique_for: float | timedelta | None = None,
        unique_key: str | None = None,
        unique_until: str | None = None,
        expires_at: datetime | str | None = None,
        expires_in: float | timedelta | None = None,
    ) -> "Pushed":
        """
        Push one job and wait for the server to store it; its id, as a
        L{Pushed} (a C{str}) whose C{wait()} waits for the job's result.
        C{Pushed.created} says whether this push stored it: a push with
        C{unique_for} whose key another job holds returns that job's id,
        with C{created} false (docs/periodic.rst); so does a push of an id
        that exists.

        C{args} is any JSON value; a list is given to the handler as
        positional arguments, an object as keyword arguments.  The other
        fields are docs/protocol.rst's; L{None} means the server's default.
        Pushing an id that exists changes nothing and returns the id.
        C{after} names jobs this one runs after, C{batch} the open batch
        it joins (docs/workflows.rst).

        @raise InvalidJob: the server refused the job (C{field} says why).
        @raise ConnectionFailed: no server answered within C{retry_for}.
        """
        job = make_job(
            type,
            args,
            queue=queue,
            id=id,
            priority=priority,
            delay=delay,
            run_at=run_at,
            max_attempts=max_attempts,
            timeout=timeout,
            meta=meta,
            limit_key=limit_key,
            batch=batch,
            after=after,
            on_parent_dead=on_parent_dead,
            unique_for=unique_for,
            unique_key=unique_key,
            unique_until=unique_until,
            expires_at=expires_at,
            expires_in=expires_in,
        )
        [reply] = self.exchange([encode_frame("PUSH", job)])
        if isinstance(reply, ProcessionError):
            raise reply
        return Pushed(str(reply["id"]), self, bool(reply.get("created")))

    # -- periodic jobs (docs/periodic.rst)

    def periodic(
        self,
        name: str | None = None,
        cron: str | None = None,
        *,
        job: Mapping[str, Any] | None = None,
        timezone: str | None = None,
        missed: str | None = None,
        paused: bool | None = None,
    ) -> Any:
        """
        The periodic entries (``PERIODIC``): with no argument, every entry
        (a list, by name); with a C{name}, that entry; with a C{name}, a
        C{cron} expression and a C{job} template (a mapping of job fields:
        type, args, queue, priority, max_attempts, timeout, meta,
        expires_in, limit_key), creates or replaces it and returns it.
        An entry is a dict with its definition, C{next_run}, C{last_run},
        C{last_job} and more (docs/http-api.rst, "Periodic jobs").

        @raise InvalidRequest: a bad expression, zone or template
            (C{field} names it).
        @raise PeriodicNotFound: no entry has that name.
        """
        if name is None:
            if cron is not None or job is not None:
                raise TypeError("a periodic entry to define needs a name")
            return self._periodic({"action": "list"})["periodic"]
        if cron is None and job is None:
            return self._periodic({"action": "get", "name": name})
        if cron is None or job is None:
            raise TypeError("a periodic entry needs both cron and job")
        body: dict[str, Any] = {"action": "put", "name": name, "cron": cron}
        body["job"] = dict(job)
        if timezone is not None:
            body["timezone"] = timezone
        if missed is not None:
            body["missed"] = missed
        if paused is not None:
            body["paused"] = paused
        entry = self._periodic(body)
        entry.pop("outcome", None)
        return entry

    def delete_periodic(self, name: str) -> None:
        """
        Remove a periodic entry (the jobs it pushed stay).
        """
        self._periodic({"action": "delete", "name": name})

    def pause_periodic(self, name: str) -> dict[str, Any]:
        """
        Pause a periodic entry: its ticks pass without jobs.  The entry.
        """
        return self._periodic({"action": "pause", "name": name})

    def resume_periodic(self, name: str) -> dict[str, Any]:
        """
        Resume a paused entry from its next tick.  The entry.
        """
        return self._periodic({"action": "resume", "name": name})

    def run_periodic(self, name: str) -> "Pushed":
        """
        Push a periodic entry's job now, outside its schedule; its id.
        """
        reply = self._periodic({"action": "run", "name": name})
        return Pushed(str(reply["id"]), self, True)

    def _periodic(self, body: Mapping[str, Any]) -> Any:
        [reply] = self.exchange([encode_frame("PERIODIC", dict(body))])
        if isinstance(reply, ProcessionError):
            raise reply
        return reply

    # -- results and batches (docs/workflows.rst)

    def result(self, job_id: str, wait: float = 0.0) -> dict[str, Any]:
        """
        A job's outcome (C{AWAIT}): its C{state}, whether it C{finished},
        its C{result} and last C{error}; waiting up to C{wait} seconds for
        it to finish.

        @raise NotFound: there is no such job.
        """
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            # Waits in steps shorter than the reply timeout, so a long wait
            # is not mistaken for a dead connection.
            step = max(0.0, min(deadline - time.monotonic(), self.timeout / 2))
            [reply] = self.exchange(
                [encode_frame("AWAIT", {"id": str(job_id), "wait": round(step, 3)})]
            )
            if isinstance(reply, ProcessionError):
                raise reply
            if reply["finished"] or time.monotonic() >= deadline:
                return reply

    def batch(
        self,
        description: str = "",
        *,
        on_success: Mapping[str, Any] | None = None,
        on_complete: Mapping[str, Any] | None = None,
        id: str | None = None,
    ) -> "Batch":
        """
        Create an open batch (C{BATCH}); add jobs with its C{push} and
        C{push_many}, then C{commit()} it (or use it as a context manager,
        which commits on a clean exit).  C{on_success} and C{on_complete}
        are jobs (mappings of job fields, see L{make_job}, without an id)
        pushed once each: when every job has completed, and when every job
        has completed or died.
        """
        body: dict[str, Any] = {"id": id or new_job_id(), "description": description}
        for name, job in (("on_success", on_success), ("on_complete", on_complete)):
            if job is not None:
                body[name] = {k: v for k, v in dict(job).items() if k != "id"}
        status = self._batch_request(body)
        return Batch(self, status["id"], status)

    def open_batch(self, batch_id: str) -> "Batch":
        """
        Reopen a committed batch that is not done, to add jobs to it: from
        inside one of its jobs (child jobs).  Commit it again after.
        """
        status = self._batch_request({"action": "open", "id": batch_id})
        return Batch(self, batch_id, status)

    def batch_status(self, batch_id: str) -> dict[str, Any]:
        """
        A batch's state, counts and callbacks.
        """
        return self._batch_request({"action": "status", "id": batch_id})

    def _batch_request(self, body: Mapping[str, Any]) -> dict[str, Any]:
        [reply] = self.exchange([encode_frame("BATCH", dict(body))])
        if isinstance(reply, ProcessionError):
            raise reply
        return reply

    def push_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[str]:
        """
        Push many jobs (mappings of the job fields, see L{make_job}) in
        C{PUSHB} batches, pipelined; their ids, in order.

        Each batch is all or nothing, but the batches are independent: when
        one is refused, others may be stored.  Every job has an id, so
        fixing the culprit and pushing the same list again is safe.  A job
        refused by a unique lock is given as the id of the job holding it.

        @raise InvalidJob: with C{index} the culprit's position in C{jobs}.
        """
        prepared = _with_ids(jobs)
        if not prepared:
            return []
        frames, starts = self._batches(prepared)
        replies = self.exchange(frames)
        ids = [job["id"] for job in prepared]
        for start, reply in zip(starts, replies):
            if isinstance(reply, ProcessionError):
                raise _in_batch(reply, start)
            answered = reply.get("ids") if isinstance(reply, dict) else None
            if isinstance(answered, list):
                ids[start : start + len(answered)] = [str(i) for i in answered]
        return ids

    def _batches(self, jobs: Sequence[dict[str, Any]]) -> tuple[list[bytes], list[int]]:
        """
        C{PUSHB} frames of at most C{batch_size} jobs and under the
        server's frame limit; and the index of each frame's first job.
        """
        limit = self._max_frame() - 64
        frames: list[bytes] = []
        starts: list[int] = []
        batch: list[bytes] = []
        size = 0
        start = 0
        for index, job in enumerate(jobs):
            encoded = json.dumps(job, separators=(",", ":"), allow_nan=False).encode(
                "ascii"
            )
            if len(encoded) > limit:
                raise FrameTooLarge(
                    message=f"job {index} is {len(encoded)} bytes, over the server's frame limit",
                    details={"index": index, "limit": limit},
                )
            if batch and (
                len(batch) >= self.batch_size or size + len(encoded) + 1 > limit
            ):
                frames.append(b"PUSHB [" + b",".join(batch) + b"]\n")
                starts.append(start)
                batch, size, start = [], 0, index
            batch.append(encoded)
            size += len(encoded) + 1
        frames.append(b"PUSHB [" + b",".join(batch) + b"]\n")
        starts.append(start)
        return frames, starts

    def _max_frame(self) -> int:
        """
        The server's frame limit (connecting to learn it, if need be).
        """
        with self._lock:
            if self._connection is None:
                try:
                    self._connected()
                except (OSError, ProcessionError):
                    # the request will retry; assume the default meanwhile
                    pass
            connection = self._connection
        return connection.max_frame if connection is not None else DEFAULT_MAX_FRAME

    def pipeline(self) -> "Pipeline":
        """
        A L{Pipeline}: pushes collected, then sent together, their replies
        read after.
        """
        return Pipeline(self)

    def exchange(self, frames: Sequence[bytes]) -> list[Any]:
        """
        Send request frames, pipelined, and return their replies in order:
        each the decoded body of an C{OK} or a L{ProcessionError} for an
        C{ERR}.

        Only for idempotent requests (C{PING}, and pushes with ids): after
        a network error, a timeout, C{store_unavailable} or
        C{shutting_down}, the frames without an answer are sent again on
        a new connection, with backoff, until C{retry_for} runs out.

        @raise ConnectionFailed: when the time to retry ran out.
        @raise Unauthorized: the server refused the token.
        """
        if not frames:
            return []
        results: list[Any] = [None] * len(frames)
        todo = list(range(len(frames)))
        deadline = time.monotonic() + self.retry_for
        backoff = Backoff(initial=0.05, maximum=1.0)
        with self._lock:
            while True:
                failure: BaseException | None = None
                try:
                    connection = self._connected()
                    longest = max(len(frames[i]) for i in todo)
                    if longest > connection.max_frame:
                        raise FrameTooLarge(
                            message=f"a {longest}-byte frame is over the server's "
                            f"limit of {connection.max_frame}",
                            details={"limit": connection.max_frame},
                        )
                    self._exchange(connection, frames, todo, results)
                except (FrameTooLarge, _ssl.SSLCertVerificationError):
                    # no resend can mend these
                    raise
                except (OSError, ConnectionClosed, ProtocolViolation) as e:
                    log.debug("procession: request failed (%s); will retry", e)
                    self._drop()
                    failure = e
                except ProcessionError as e:
                    # HELLO refused
                    self._drop()
                    if e.code not in RETRYABLE_ERRORS:
                        raise
                    failure = e
                retry = [i for i in todo if results[i] is None]
                for i in todo:
                    error = results[i]
                    if (
                        isinstance(error, ProcessionError)
                        and error.code in RETRYABLE_ERRORS
                    ):
                        failure = error
                        retry.append(i)
                        results[i] = None
                        if error.code == "shutting_down":
                            # this server is going; another (or it, back)
                            # will take the resend
                            self._drop()
                todo = sorted(retry)
                if not todo:
                    return results
                pause = backoff.next()
                if time.monotonic() + pause > deadline:
                    if isinstance(failure, ProcessionError) and not isinstance(
                        failure, ConnectionFailed
                    ):
                        for i in todo:
                            results[i] = failure
                        return results
                    raise ConnectionFailed(
                        message=f"no answer from {self.host}:{self.port} "
                        f"within {self.retry_for:g} s: {failure}"
                    ) from failure
                time.sleep(pause)

    def _exchange(
        self,
        connection: Connection,
        frames: Sequence[bytes],
        todo: list[int],
        results: list[Any],
    ) -> None:
        """
        Send C{frames[i]} for each i in C{todo}, keeping at most a window of
        them unanswered, and store each reply in C{results[i]}.
        """
        sent = 0
        answered = 0
        in_flight_bytes = 0
        sizes: deque[int] = deque()
        total = len(todo)
        while answered < total:
            # Refill the window when half of it is answered: fewer, larger
            # writes.
            if sent < total and (sent == 0 or sent - answered <= PIPELINE_WINDOW // 2):
                chunk: list[bytes] = []
                while (
                    sent < total
                    and sent - answered < PIPELINE_WINDOW
                    and (not chunk or in_flight_bytes < PIPELINE_WINDOW_BYTES)
                ):
                    frame = frames[todo[sent]]
                    chunk.append(frame)
                    sizes.append(len(frame))
                    in_flight_bytes += len(frame)
                    sent += 1
                if chunk:
                    connection.send(b"".join(chunk))
            verb, body = connection.read_frame()
            if verb == "OK":
                value: Any = decode_body(body)
            elif verb == "ERR":
                value = error_from_body(decode_body(body))
                if value.code in CLOSING_ERRORS:
                    results[todo[answered]] = value
                    raise ConnectionClosed(f"the server closed the connection: {value}")
            elif verb in ("JOB", "QUIET", "HI", "CANCEL"):
                # not replies; a producer holds no jobs (it sent no READY)
                continue
            else:
                raise ProtocolViolation(message=f"unexpected frame {verb[:32]!r}")
            results[todo[answered]] = {} if value is None and verb == "OK" else value
            in_flight_bytes -= sizes.popleft()
            answered += 1


class Pushed(str):
    """
    The id of a job just pushed (a C{str}, usable wherever the id was),
    which can also wait for the job's result.
    """

    client: "Client"
    #: Whether the push stored this job (False: it existed, or another job
    #: held its unique lock and this is that job's id).
    created: bool

    def __new__(cls, job_id: str, client: "Client", created: bool = True) -> "Pushed":
        self = super().__new__(cls, job_id)
        self.client = client
        self.created = created
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled or copied, it is the plain id: a client's connection
        # does not travel.
        return (str, (str(self),))

    def wait(self, timeout: float | None = None) -> Any:
        """
        Wait until the job finishes; its result when it completed.

        @param timeout: seconds to wait at most (L{None}: as long as it
            takes).
        @raise JobFailed: it died, was cancelled or expired (C{state},
            C{error}).
        @raise WaitTimeout: it had not finished within C{timeout}.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 3600.0 if deadline is None else deadline - time.monotonic()
            outcome = self.client.result(str(self), wait=max(0.0, left))
            if outcome["finished"]:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(
                    message=f"job {str(self)!r} is still {outcome['state']}",
                    details={"state": outcome["state"]},
                )
        if outcome["state"] == "completed":
            return outcome["result"]
        raise JobFailed(
            message=f"job {str(self)!r} is {outcome['state']}",
            details={"state": outcome["state"], "error": outcome["error"]},
        )

    def outcome(self, wait: float = 0.0) -> dict[str, Any]:
        """
        The job's outcome now, or after up to C{wait} seconds (see
        L{Client.result}).
        """
        return self.client.result(str(self), wait)


class Batch:
    """
    An open batch (L{Client.batch}, L{Client.open_batch}): jobs pushed
    through it join it; C{commit()} ends the adding.  As a context manager
    it commits on a clean exit.
    """

    def __init__(self, client: Client, batch_id: str, status: dict[str, Any]) -> None:
        self.client = client
        self.id = batch_id
        self.status_when_opened = status

    def __repr__(self) -> str:
        return f"<procession.client.Batch {self.id}>"

    def push(self, type: str, args: Any = None, **fields: Any) -> Pushed:
        """
        Push one job into this batch (as L{Client.push}).
        """
        return self.client.push(type, args, batch=self.id, **fields)

    def push_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[str]:
        """
        Push many jobs into this batch (as L{Client.push_many}).
        """
        return self.client.push_many({**job, "batch": self.id} for job in jobs)

    def commit(self) -> dict[str, Any]:
        """
        No more jobs: the callbacks fire once every job has finished (at
        once if all have).  Its status.
        """
        return self.client._batch_request({"action": "commit", "id": self.id})

    def status(self) -> dict[str, Any]:
        """
        The batch's state, counts and callbacks.
        """
        return self.client.batch_status(self.id)

    def __enter__(self) -> "Batch":
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        if kind is None:
            self.commit()


def _in_batch(error: ProcessionError, start: int) -> ProcessionError:
    """
    Make the C{index} of an error about a batch that began at job C{start}
    count from the first job of the whole list.
    """
    index = error.details.get("index")
    if isinstance(index, int) and start:
        error.details["index"] = index + start
        prefix = f"job {index}: "
        if error.message.startswith(prefix):
            error.message = f"job {index + start}: " + error.message[len(prefix) :]
            error.args = (error.message,)
    return error


class Pipeline:
    """
    Pushes collected now and sent together when the C{with} block ends (or
    at L{execute}): one write of many frames, then their replies.  Nothing
    is sent before that, so build the jobs inside the block and read the
    ids it returned after it.

        with client.pipeline() as p:
            ids = [p.push("resize", [path]) for path in paths]

    If any push was refused, the block raises the first refusal after every
    reply is in; L{results} has each push's id (or list of ids for a
    L{push_many}) or its error.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.results: list[Any] = []
        self._frames: list[bytes] = []
        self._ids: list[Any] = []
        self._starts: list[int | None] = []

    def push(self, type: str, args: Any = None, **fields: Any) -> str:
        """
        Queue a push (same arguments as L{Client.push}); the job's id.
        """
        job = make_job(type, args, **fields)
        self._frames.append(encode_frame("PUSH", job))
        self._ids.append(job["id"])
        self._starts.append(None)
        return str(job["id"])

    def push_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[str]:
        """
        Queue a L{Client.push_many}; the jobs' ids.
        """
        prepared = _with_ids(jobs)
        if not prepared:
            return []
        frames, starts = self.client._batches(prepared)
        for frame, start, end in zip(frames, starts, [*starts[1:], len(prepared)]):
            self._frames.append(frame)
            self._ids.append([job["id"] for job in prepared[start:end]])
            self._starts.append(start)
        return [job["id"] for job in prepared]

    def __len__(self) -> int:
        return len(self._frames)

    def execute(self) -> list[Any]:
        """
        Send what was queued and read the replies; each push's id (a list
        of ids for each batch of a L{push_many}).

        @raise ProcessionError: the first refusal, once all replies are in.
        """
        frames, ids, starts = self._frames, self._ids, self._starts
        self._frames, self._ids, self._starts = [], [], []
        if not frames:
            return []
        replies = self.client.exchange(frames)
        results: list[Any] = []
        first: ProcessionError | None = None
        for reply, value, start in zip(replies, ids, starts):
            if isinstance(reply, ProcessionError):
                if start is not None:
                    _in_batch(reply, start)
                first = first or reply
                results.append(reply)
            else:
                results.append(value)
        self.results = results
        if first is not None:
            raise first
        return results

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None:
            self.execute()


class Backoff:
    """
    Exponential backoff with jitter: each pause up to twice the last, at
    most C{maximum}.
    """

    def __init__(self, initial: float = 0.1, maximum: float = 5.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._current = initial

    def next(self) -> float:
        """
        The next pause, in seconds.
        """
        pause = self._current * (0.5 + random.random() / 2)
        self._current = min(self._current * 2, self.maximum)
        return pause

    def reset(self) -> None:
        """
        Start again from the shortest pause.
        """
        self._current = self.initial
