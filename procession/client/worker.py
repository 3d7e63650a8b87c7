"""
The worker runner: takes jobs from a procession server over TCP and runs
them in a pool of threads, with the Python functions registered for their
types.

Handlers live in a module of your application, registered with the
L{handler} decorator, or listed in a module-level C{HANDLERS} dict (or
both)::

    # myapp/jobs.py
    from procession.client.worker import handler

    @handler("send_email")
    def send_email(to, subject, body=""):
        ...

    @handler                        # the job type is the function's name
    def resize(path, width=800):
        ...

    HANDLERS = {"legacy.cleanup": cleanup}   # another way to say it

and the runner imports that module and serves the queues you name::

    python -m procession.client.worker myapp.jobs --queues high,default --concurrency 8

A job whose C{args} is a list calls its handler with them as positional
arguments, an object as keyword arguments, anything else as the one
argument.  L{current_job} tells a handler which job (and which attempt) it
runs.  A handler that returns acks its job, with the return value as the
result when it is JSON; one that raises fails it, with the exception's type,
message and traceback, and the server retries it with backoff.  Raise
L{JobError}C{(message, retry=False)} (or any exception with C{retry} and
C{retry_in} attributes) to decide about the retry.

How it runs: the thread that calls L{Worker.run} (the main thread under
C{python -m}) owns the connection.  It reads frames, hands C{JOB}s to the
pool, writes acks and fails as the pool finishes them (without waiting for
their replies: it matches replies to its requests by order), C{EXTEND}s the
lease of every job it holds at half its C{timeout}, and reconnects with
backoff when the server goes away (the jobs in hand then are the server's
again: they are dropped, and their results with them).  It asks for
C{concurrency + prefetch} jobs at once.  An C{ACK} or C{FAIL} the server
could not store (C{store_unavailable}: its Redis is down or slow) is sent
again, with backoff, until the server answers otherwise, so that a Redis
outage shorter than the job's lease does not make the job run again (past
the lease, the answer will be C{lease_lost}).

Stopping: on SIGTERM or SIGINT it takes no new jobs (C{READY} with credit
0), finishes the ones it holds, says C{BYE} and returns; a second signal,
or C{shutdown_timeout} running out, gives back at once what it holds.  The
server's C{QUIET} (the server is stopping, or an operator quieted this
worker) does the same and then, by default, exits (C{on_quiet="exit"}; with
C{"reconnect"} it connects again after a pause).

This module must not import Twisted or the server's modules: it runs in the
application's environment.
"""

from __future__ import annotations

import argparse
import heapq
import importlib
import itertools
import json
import logging
import os
import queue
import selectors
import signal
import socket
import ssl as _ssl
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar, overload

from attrs import define, field, frozen

from procession.client.client import (
    Backoff,
    Connection,
    Unauthorized,
    decode_body,
    default_worker_name,
    encode_frame,
    resolve_address,
)
from procession.core.job import QUEUE_NAME
from procession.core.errors import (
    ProcessionError,
    ProtocolViolation,
    error_from_body,
)

log = logging.getLogger(__name__)

# Codes that mean a job is no longer this worker's: its ack is refused, and
# another worker may be running it.
GONE = frozenset({"lease_lost", "not_held", "not_found", "cancelled"})
MAX_MESSAGE = 4096
MAX_BACKTRACE_LINES = 200
MAX_LINE = 1000
# The shortest pause between two EXTENDs of one job.
MIN_EXTEND_INTERVAL = 0.05
# An ACK or FAIL answered store_unavailable is sent again after a pause
# (backoff from the first to the second, with jitter) until the server
# answers otherwise.
RESEND_BACKOFF = (0.25, 2.0)


@frozen
class Job:
    """
    A job as the server sent it in a C{JOB} frame.
    """

    id: str
    type: str
    queue: str
    args: Any
    attempt: int
    max_attempts: int
    timeout: float
    priority: int = 0
    created_at: str | None = None
    enqueued_at: str | None = None
    meta: Any = None
    #: The batch the job belongs to (docs/workflows.rst), if any.
    batch: str | None = None
    #: Set when the server cancels the job (a C{CANCEL} frame): the handler
    #: should stop (see L{cancelled} and L{check_cancelled}).
    cancel_event: threading.Event = field(factory=threading.Event, eq=False, repr=False)

    @property
    def cancelled(self) -> bool:
        """
        Whether the server has cancelled this job: its result would be
        dropped, so the handler may as well stop.
        """
        return self.cancel_event.is_set()

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> "Job":
        """
        Build from the decoded body of a C{JOB} frame.
        """
        return cls(
            id=body["id"],
            type=body["type"],
            queue=body.get("queue", "default"),
            args=body.get("args", []),
            attempt=int(body.get("attempt", 1)),
            max_attempts=int(body.get("max_attempts", 25)),
            timeout=float(body.get("timeout", 300)),
            priority=int(body.get("priority", 0)),
            created_at=body.get("created_at"),
            enqueued_at=body.get("enqueued_at"),
            meta=body.get("meta"),
            batch=body.get("batch"),
        )


F = TypeVar("F", bound=Callable[..., Any])

_local = threading.local()


def current_job() -> Job | None:
    """
    The job the calling handler thread is running, or L{None} outside a
    handler.
    """
    return getattr(_local, "job", None)


class Cancelled(Exception):
    """
    Raised by L{check_cancelled} in a handler whose job the server has
    cancelled.  The runner sends nothing for a cancelled job: the server
    has finished it already.
    """


def cancelled() -> bool:
    """
    Whether the job the calling handler runs has been cancelled (by an
    operator, or because a job it runs after died): a long handler checks
    this now and then, as BullMQ's AbortSignal or Celery's revoke.
    """
    job = current_job()
    return job is not None and job.cancelled


def check_cancelled() -> None:
    """
    Raise L{Cancelled} if the calling handler's job has been cancelled.
    """
    if cancelled():
        raise Cancelled("the server cancelled this job")


def progress(percent: float, message: str = "") -> None:
    """
    Report how far the calling handler's job has got (0 to 100, and a
    short message): sent as C{PROGRESS} by the worker's connection, shown
    by the API and the UI.  Does nothing outside a handler.
    """
    job = current_job()
    worker = getattr(_local, "worker", None)
    if job is None or worker is None:
        return
    if not 0 <= percent <= 100:
        raise ValueError("percent must be from 0 to 100")
    frame = encode_frame(
        "PROGRESS", {"id": job.id, "progress": percent, "message": message[:1024]}
    )
    worker._progress.put((job, frame))
    worker._poke()


class JobError(Exception):
    """
    Raise from a handler to fail its job and say what happens next:
    C{retry=False} makes it dead at once, C{retry_in} sets the seconds
    before the next attempt (instead of the server's backoff).
    """

    def __init__(
        self, message: str = "", *, retry: bool = True, retry_in: float | None = None
    ) -> None:
        super().__init__(message)
        self.retry = retry
        self.retry_in = retry_in


class UnknownJobType(Exception):
    """
    A job of a type this worker has no handler for.  It is failed and
    retried, in case another worker of the queue knows the type.
    """


class Registry:
    """
    Handlers by job type.
    """

    def __init__(
        self, handlers: Mapping[str, Callable[..., Any]] | None = None
    ) -> None:
        self._handlers: dict[str, Callable[..., Any]] = {}
        if handlers:
            self.update(handlers)

    def add(self, type: str, function: Callable[..., Any]) -> None:
        """
        Run C{function} for the jobs of C{type}.

        @raise ValueError: another function handles C{type} already.
        """
        if not isinstance(type, str) or not type:
            raise ValueError(f"a job type must be a non-empty string, not {type!r}")
        if not callable(function):
            raise TypeError(f"the handler of {type!r} is not callable")
        existing = self._handlers.get(type)
        if (
            existing is not None
            and existing is not function
            and _where(existing) != _where(function)
        ):
            raise ValueError(
                f"job type {type!r} has a handler already: {_where(existing)}"
            )
        self._handlers[type] = function

    def update(self, handlers: Mapping[str, Callable[..., Any]]) -> None:
        """
        L{add} every pair of a mapping.
        """
        for type, function in handlers.items():
            self.add(type, function)

    @overload
    def handler(self, type: F) -> F: ...

    @overload
    def handler(self, type: str | None = None) -> Callable[[F], F]: ...

    def handler(self, type: Any = None) -> Any:
        """
        A decorator registering a function: C{@handler("send_email")}, or
        bare C{@handler} for the function's own name.
        """
        if callable(type):
            self.add(type.__name__, type)
            return type

        def register(function: F) -> F:
            self.add(type or function.__name__, function)
            return function

        return register

    def get(self, type: str) -> Callable[..., Any] | None:
        """
        The handler of C{type}, or L{None}.
        """
        return self._handlers.get(type)

    def types(self) -> list[str]:
        """
        The job types handled, sorted.
        """
        return sorted(self._handlers)

    def __contains__(self, type: object) -> bool:
        return type in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)


def _where(function: Callable[..., Any]) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', function)!s}"


# The registry the module-level decorator fills; `python -m procession.client.worker`
# serves it.
registry = Registry()
handler = registry.handler


def call_handler(function: Callable[..., Any], args: Any) -> Any:
    """
    Call a handler with a job's args: a list as positional arguments, an
    object as keyword arguments, anything else as the one argument.
    """
    if isinstance(args, list):
        return function(*args)
    if isinstance(args, dict):
        return function(**args)
    if args is None:
        return function()
    return function(args)


def ack_frame(job: Job, result: Any, max_frame: int) -> bytes:
    """
    The C{ACK} of a job, with its result when that is JSON and fits.
    """
    if result is not None:
        try:
            frame = encode_frame("ACK", {"id": job.id, "result": result})
        except (TypeError, ValueError, RecursionError):
            log.warning(
                "Job %s (%s): its result is not JSON and is not kept", job.id, job.type
            )
        else:
            if len(frame) <= max_frame:
                return frame
            log.warning(
                "Job %s (%s): its %d-byte result is over the server's frame limit and is not kept",
                job.id,
                job.type,
                len(frame),
            )
    return encode_frame("ACK", {"id": job.id})


def fail_frame(job: Job, error: BaseException, max_frame: int) -> bytes:
    """
    The C{FAIL} of a job that raised C{error}: the exception's type,
    message and traceback, and its C{retry} and C{retry_in} if it has them.
    """
    kind = type(error)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    try:
        message = str(error)
    except Exception:
        message = repr(error)
    lines = [
        line[:MAX_LINE]
        for chunk in traceback.format_exception(kind, error, error.__traceback__)
        for line in chunk.rstrip("\n").split("\n")
    ]
    body: dict[str, Any] = {
        "id": job.id,
        "error": {
            "type": name,
            "message": message[:MAX_MESSAGE],
            "backtrace": lines[-MAX_BACKTRACE_LINES:],
        },
    }
    retry = getattr(error, "retry", None)
    if isinstance(retry, bool):
        body["retry"] = retry
    retry_in = getattr(error, "retry_in", None)
    if (
        isinstance(retry_in, (int, float))
        and not isinstance(retry_in, bool)
        and retry_in >= 0
    ):
        body["retry_in"] = retry_in
    frame = encode_frame("FAIL", body)
    if len(frame) > max_frame:
        body["error"]["backtrace"] = lines[-20:]
        body["error"]["message"] = message[:256]
        frame = encode_frame("FAIL", body)
    return frame


class Worker:
    """
    Runs jobs from a procession server in a pool of threads.

    @param handlers: a L{Registry} or a mapping of job type to function;
        default the module-level L{registry}.
    @param queues: the queues to take jobs from, the first preferred.
    @param concurrency: how many jobs run at once (threads).
    @param prefetch: how many jobs to hold beyond those running, so the
        next job is at hand when one ends; default a quarter of
        C{concurrency}, at least 1.
    @param host: see L{procession.client.Client} for C{host}, C{port},
        C{url}, C{token} and C{tls}.
    @param name: the name this worker gives in C{HELLO}.
    @param on_quiet: after the server's C{QUIET}: C{"exit"} (return from
        L{run}) or C{"reconnect"}.
    @param shutdown_timeout: seconds a graceful stop waits for the jobs in
        hand before giving them back.
    @param max_backoff: the longest pause between two connection attempts.
    @param ping_interval: seconds of silence after which it sends C{PING}.
    @param reply_timeout: seconds a request may wait for its reply before the
        connection is deemed dead.
    """

    def __init__(
        self,
        handlers: Registry | Mapping[str, Callable[..., Any]] | None = None,
        *,
        queues: Sequence[str] = ("default",),
        concurrency: int = 8,
        prefetch: int | None = None,
        host: str | None = None,
        port: int | str | None = None,
        url: str | None = None,
        token: str | None = None,
        tls: bool | _ssl.SSLContext | None = None,
        name: str | None = None,
        on_quiet: str = "exit",
        shutdown_timeout: float = 30.0,
        max_backoff: float = 5.0,
        connect_timeout: float = 10.0,
        ping_interval: float = 15.0,
        reply_timeout: float = 60.0,
    ) -> None:
        if handlers is None:
            handlers = registry
        self.handlers = (
            handlers if isinstance(handlers, Registry) else Registry(handlers)
        )
        if isinstance(queues, str):
            queues = [q for q in queues.split(",") if q]
        self.queues = list(queues)
        if (
            not self.queues
            or len(set(self.queues)) != len(self.queues)
            or not all(QUEUE_NAME.match(q) for q in self.queues)
        ):
            raise ValueError(
                "queues must be one or more distinct names of [A-Za-z0-9_.:-]{1,128}"
            )
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        if prefetch is None:
            prefetch = max(1, concurrency // 4)
        if prefetch < 0:
            raise ValueError("prefetch must be 0 or more")
        self.credit = min(concurrency + prefetch, 10_000)
        self.host, self.port, self.token, self._tls = resolve_address(
            host, port, url, token, tls
        )
        self.name = name or default_worker_name("worker")
        if on_quiet not in ("exit", "reconnect"):
            raise ValueError("on_quiet must be 'exit' or 'reconnect'")
        self.on_quiet = on_quiet
        self.shutdown_timeout = shutdown_timeout
        self.max_backoff = max_backoff
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.reply_timeout = reply_timeout

        self._work: queue.SimpleQueue[tuple[_Session, Job] | None] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[tuple[_Session, Job, str, bytes]] = (
            queue.SimpleQueue()
        )
        # PROGRESS frames from handlers (see progress()).
        self._progress: queue.SimpleQueue[tuple[Job, bytes]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._poked = False
        self._busy = 0
        self._busy_changed = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._stop_now = False
        self._stop_deadline = float("inf")
        self._running = False

    def handler(self, type: Any = None) -> Any:
        """
        A decorator registering a handler in this worker's registry (as
        L{Registry.handler}).
        """
        return self.handlers.handler(type)

    # -- control, from any thread

    def stop(self, now: bool = False) -> None:
        """
        Stop: take no new jobs, finish those in hand (or, with C{now}, give
        them back at once), say C{BYE} and return from L{run}.
        """
        if not self._stopping:
            self._stop_deadline = time.monotonic() + self.shutdown_timeout
        self._stopping = True
        if now:
            self._stop_now = True
            self._stop_deadline = time.monotonic()
        self._poke(force=True)

    def _poke(self, force: bool = False) -> None:
        # Callers put their result in the outbox before this check, and the
        # owner thread resets the flag (after draining the wake-up socket)
        # before it looks at the outbox: a result is either seen by that
        # look or its poke wakes the owner again.
        if force or not self._poked:
            self._poked = True
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass

    def _drain_wake(self) -> None:
        # Drain, then reset: the other order could swallow the byte of a
        # poke made in between and leave the flag set with nothing to read.
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass
        self._poked = False

    # -- running

    def run(self, install_signals: bool = True) -> None:
        """
        Serve until stopped (L{stop}, SIGTERM, SIGINT, or C{QUIET} with
        C{on_quiet="exit"}).  Signal handlers are installed only when this
        is the main thread.

        @raise Unauthorized: the server refused the token.
        """
        if not len(self.handlers):
            raise ValueError("no handlers: register some with @handler or HANDLERS")
        if self._running:
            raise RuntimeError("this worker is running already")
        self._running = True
        previous = self._install_signals() if install_signals else {}
        self._start_threads()
        backoff = Backoff(initial=0.1, maximum=self.max_backoff)
        log.info(
            "Worker %s serving queues %s with %d threads (credit %d); types: %s",
            self.name,
            ",".join(self.queues),
            self.concurrency,
            self.credit,
            ", ".join(self.handlers.types()),
        )
        try:
            while not self._stopping:
                try:
                    connection = Connection.open(
                        self.host,
                        self.port,
                        worker=self.name,
                        token=self.token,
                        timeout=self.connect_timeout,
                        tls=self._tls,
                    )
                except (Unauthorized, ProtocolViolation, _ssl.SSLCertVerificationError):
                    # misconfigured: retrying would not mend it
                    raise
                except (OSError, ProcessionError) as e:
                    pause = backoff.next()
                    log.warning(
                        "Cannot reach procession at %s:%d (%s); retrying in %.1f s",
                        self.host,
                        self.port,
                        e,
                        pause,
                    )
                    self._sleep(pause)
                    continue
                if self._stopping:
                    connection.close()
                    break
                backoff.reset()
                log.info(
                    "Connected to %s:%d as %s", self.host, self.port, connection.name
                )
                outcome = _Session(self, connection).run()
                if outcome == "quiet":
                    if self.on_quiet == "exit":
                        log.info("The server quieted this worker: exiting")
                        break
                    log.info("The server quieted this worker: reconnecting later")
                    self._sleep(max(1.0, backoff.next()))
                elif outcome == "lost":
                    self._sleep(backoff.next())
        finally:
            self._finish_threads()
            self._restore_signals(previous)
            self._running = False
            log.info("Worker %s stopped", self.name)

    def _sleep(self, seconds: float) -> None:
        """
        Wait, unless told to stop meanwhile.
        """
        deadline = time.monotonic() + seconds
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with selectors.DefaultSelector() as selector:
                selector.register(self._wake_r, selectors.EVENT_READ)
                if selector.select(left):
                    self._drain_wake()

    def _start_threads(self) -> None:
        for number in range(self.concurrency):
            thread = threading.Thread(
                target=self._work_loop, name=f"procession-worker-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _finish_threads(self) -> None:
        """
        Wait for running handlers (until the stop deadline), then end the
        threads.
        """
        timeout = (
            max(0.0, self._stop_deadline - time.monotonic()) if self._stopping else 0.0
        )
        with self._busy_changed:
            if not self._busy_changed.wait_for(lambda: self._busy == 0, timeout):
                log.warning("Exiting with %d handlers still running", self._busy)
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join(0.1)
        self._threads = []

    def _work_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            session, job = item
            # A job whose connection is gone is the server's again; one
            # whose lease was lost is someone else's.
            if not session.alive or session.held.get(job.id) is not job:
                continue
            with self._busy_changed:
                self._busy += 1
            try:
                verb, frame = self._perform(job, session.max_frame)
            except BaseException:
                # a bug here must not cost a thread: fail the job plainly
                log.exception(
                    "Job %s (%s): cannot report its outcome", job.id, job.type
                )
                verb, frame = (
                    "FAIL",
                    encode_frame(
                        "FAIL",
                        {
                            "id": job.id,
                            "error": {"type": "procession.client.worker.ReportError"},
                        },
                    ),
                )
            finally:
                with self._busy_changed:
                    self._busy -= 1
                    if self._busy == 0:
                        self._busy_changed.notify_all()
            self._outbox.put((session, job, verb, frame))
            self._poke()

    def _perform(self, job: Job, max_frame: int) -> tuple[str, bytes]:
        """
        Run one job; its C{ACK} or C{FAIL} frame.
        """
        function = self.handlers.get(job.type)
        _local.job = job
        _local.worker = self
        try:
            if function is None:
                raise UnknownJobType(
                    f"no handler for job type {job.type!r} in this worker "
                    f"(it handles {', '.join(self.handlers.types())})"
                )
            result = call_handler(function, job.args)
        except BaseException as e:
            log.warning(
                "Job %s (%s) failed on attempt %d of %d",
                job.id,
                job.type,
                job.attempt,
                job.max_attempts,
                exc_info=e,
            )
            return "FAIL", fail_frame(job, e, max_frame)
        finally:
            _local.job = None
        return "ACK", ack_frame(job, result, max_frame)

    # -- signals

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for number in (signal.SIGTERM, signal.SIGINT):
            previous[number] = signal.signal(number, self._signalled)
        return previous

    def _restore_signals(self, previous: Mapping[int, Any]) -> None:
        for number, action in previous.items():
            signal.signal(number, action)

    def _signalled(self, number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        if self._stopping:
            log.warning("%s again: giving back the jobs in hand and exiting", name)
            self.stop(now=True)
        else:
            log.info(
                "%s: finishing the jobs in hand (at most %g s; again to exit now)",
                name,
                self.shutdown_timeout,
            )
            self.stop()


class _Session:
    """
    One connection's life, owned by the thread in L{Worker.run}: its
    requests waiting for replies, the jobs it holds and their extend times.
    """

    def __init__(self, worker: Worker, connection: Connection) -> None:
        self.worker = worker
        self.connection = connection
        self.sock = connection.sock
        self.max_frame = connection.max_frame
        self.inbuf = bytearray(connection.take_buffer())
        self.out = bytearray()
        self.ssl_retry = 0
        self.expected: deque[tuple[str, str | None, float]] = deque()
        self.held: dict[str, Job] = {}
        # When each lease held ends, as far as this side knows (monotonic):
        # its JOB's arrival, or its last EXTEND's sending, plus the timeout.
        self.leases: dict[str, float] = {}
        # ACKs and FAILs sent and not yet answered, and those answered
        # store_unavailable, waiting to be sent again.
        self.finishing: dict[str, _Outcome] = {}
        self.resends: dict[str, _Outcome] = {}
        self.extends: list[tuple[float, int, str]] = []
        self.sequence = itertools.count()
        self.alive = True
        self.quieted = False
        self.credit_withdrawn = False
        # Once READY 0 is answered, no JOB can follow: the server writes
        # JOBs as it hands them out, and the reply after it read the READY.
        self.credit_withdrawn_answered = False
        self.bye_sent = False
        self.bye_answered = False
        self.last_heard = time.monotonic()

    def request(self, verb: str, frame: bytes, job_id: str | None = None) -> None:
        """
        Queue a request's frame; its reply is matched by order.
        """
        self.out += frame
        self.expected.append((verb, job_id, time.monotonic()))

    def run(self) -> str:
        """
        Serve the connection until it ends: C{"lost"}, C{"quiet"} (after
        C{QUIET} and C{BYE}) or C{"stopped"} (after a stop and C{BYE}).
        """
        worker = self.worker
        selector = selectors.DefaultSelector()
        writing = False
        try:
            self.sock.setblocking(False)
            selector.register(worker._wake_r, selectors.EVENT_READ)
            selector.register(self.sock, selectors.EVENT_READ)
            self.request(
                "READY",
                encode_frame(
                    "READY", {"queues": worker.queues, "credit": worker.credit}
                ),
            )
            self._parse()
            while True:
                now = time.monotonic()
                self._take_results()
                self._take_progress()
                self._resend(now)
                self._heartbeat(now)
                self._control(now)
                if self.bye_answered:
                    return "stopped" if worker._stopping else "quiet"
                if self.out:
                    self._flush()
                if bool(self.out) != writing:
                    writing = bool(self.out)
                    events = selectors.EVENT_READ | (
                        selectors.EVENT_WRITE if writing else 0
                    )
                    selector.modify(self.sock, events)
                for key, _ in selector.select(self._timeout(now)):
                    if key.fileobj is worker._wake_r:
                        worker._drain_wake()
                    elif not self._read():
                        if self.bye_sent:
                            return "stopped" if worker._stopping else "quiet"
                        log.warning("The server closed the connection")
                        return "lost"
        except (OSError, ProtocolViolation, ValueError) as e:
            log.warning("Connection lost: %s", e)
            return "lost"
        finally:
            self.alive = False
            selector.close()
            self.connection.close()
            if self.held:
                log.info(
                    "Dropping %d jobs in hand: the server has taken them back",
                    len(self.held),
                )
            if self.resends:
                log.warning(
                    "Dropping the results of %d jobs the server could not "
                    "store: it has taken them back, they will run again",
                    len(self.resends),
                )

    # -- what to send

    def _take_results(self) -> None:
        outbox = self.worker._outbox
        while True:
            try:
                session, job, verb, frame = outbox.get_nowait()
            except queue.Empty:
                return
            if session is not self or self.held.get(job.id) is not job:
                log.info(
                    "Job %s (%s) finished, but it is no longer this worker's: "
                    "its result is dropped",
                    job.id,
                    job.type,
                )
                continue
            del self.held[job.id]
            self.finishing[job.id] = _Outcome(job, verb, frame)
            self.request(verb, frame, job.id)

    def _take_progress(self) -> None:
        reports = self.worker._progress
        while True:
            try:
                job, frame = reports.get_nowait()
            except queue.Empty:
                return
            if self.held.get(job.id) is job:
                self.request("PROGRESS", frame, job.id)

    def _cancelled(self, body: bytes) -> None:
        """
        The server cancelled a job this connection holds (C{CANCEL}): the
        handler is told; whatever it returns is dropped.
        """
        try:
            job_id = json.loads(body)["id"]
        except (ValueError, KeyError, TypeError):
            raise ProtocolViolation(message="a CANCEL frame without an id") from None
        job = self.held.pop(job_id, None)
        self.leases.pop(job_id, None)
        if job is not None:
            job.cancel_event.set()
            log.info("Job %s (%s) was cancelled by the server", job.id, job.type)

    def _resend(self, now: float) -> None:
        """
        Send again the ACKs and FAILs that are due.
        """
        for job_id, outcome in list(self.resends.items()):
            if outcome.due <= now:
                del self.resends[job_id]
                self.finishing[job_id] = outcome
                self.request(outcome.verb, outcome.frame, job_id)

    def _in_hand(self) -> int:
        """
        Jobs this session must settle before it says BYE: running or
        waiting to run, or finished with an outcome not yet stored.
        """
        return len(self.held) + len(self.finishing) + len(self.resends)

    def _heartbeat(self, now: float) -> None:
        """
        Extend the leases that are due, and check that the server answers.
        """
        extends = self.extends
        while extends and extends[0][0] <= now:
            _, _, job_id = heapq.heappop(extends)
            job = self.held.get(job_id)
            if job is None:
                continue
            self.request(
                "EXTEND",
                encode_frame("EXTEND", {"id": job_id, "seconds": job.timeout}),
                job_id,
            )
            heapq.heappush(
                extends, (now + _extend_interval(job), next(self.sequence), job_id)
            )
        if self.expected:
            waited = now - self.expected[0][2]
            if waited > self.worker.reply_timeout:
                raise ConnectionError(f"no reply from the server in {waited:.0f} s")
        elif now - self.last_heard > self.worker.ping_interval:
            self.request("PING", encode_frame("PING"))

    def _control(self, now: float) -> None:
        worker = self.worker
        if self.bye_sent:
            return
        if worker._stopping:
            if not self.credit_withdrawn and not self.quieted and not worker._stop_now:
                self.credit_withdrawn = True
                self.request(
                    "READY",
                    encode_frame("READY", {"queues": worker.queues, "credit": 0}),
                )
            if self._in_hand() and now >= worker._stop_deadline:
                log.warning("Giving back %d unfinished jobs", self._in_hand())
                self._bye()
            elif not self._in_hand() and (
                self.quieted or self.credit_withdrawn_answered or worker._stop_now
            ):
                self._bye()
        elif self.quieted and not self._in_hand():
            self._bye()

    def _bye(self) -> None:
        self.bye_sent = True
        self.request("BYE", encode_frame("BYE"))

    def _timeout(self, now: float) -> float:
        worker = self.worker
        timeout = 1.0
        if self.extends:
            timeout = min(timeout, self.extends[0][0] - now)
        for outcome in self.resends.values():
            timeout = min(timeout, outcome.due - now)
        if worker._stopping and not self.bye_sent:
            timeout = min(timeout, worker._stop_deadline - now)
        return max(0.0, timeout)

    def _flush(self) -> None:
        while self.out:
            size = self.ssl_retry or min(len(self.out), 1 << 18)
            try:
                sent = self.sock.send(bytes(self.out[:size]))
            except (BlockingIOError, InterruptedError):
                return
            except (_ssl.SSLWantWriteError, _ssl.SSLWantReadError):
                # TLS wants the same write again
                self.ssl_retry = size
                return
            self.ssl_retry = 0
            del self.out[:sent]

    # -- what comes in

    def _read(self) -> bool:
        """
        Read what the socket has; L{False} when the server closed it.
        """
        try:
            data = self.sock.recv(1 << 18)
        except (
            BlockingIOError,
            InterruptedError,
            _ssl.SSLWantReadError,
            _ssl.SSLWantWriteError,
        ):
            return True
        if not data:
            return False
        if isinstance(self.sock, _ssl.SSLSocket):
            # decrypted bytes the selector cannot see
            while self.sock.pending():
                data += self.sock.recv(self.sock.pending())
        self.last_heard = time.monotonic()
        self.inbuf += data
        self._parse()
        return True

    def _parse(self) -> None:
        buffer = self.inbuf
        end = buffer.rfind(b"\n")
        if end < 0:
            if len(buffer) > self.max_frame + 2:
                raise ProtocolViolation(message="a frame from the server is too long")
            return
        lines = bytes(buffer[:end]).split(b"\n")
        del buffer[: end + 1]
        for line in lines:
            self._frame(line[:-1] if line.endswith(b"\r") else line)

    def _frame(self, line: bytes) -> None:
        verb, _, body = line.partition(b" ")
        if verb == b"JOB":
            self._job(json.loads(body))
        elif verb == b"OK" or verb == b"ERR":
            self._reply(verb, body)
        elif verb == b"CANCEL":
            self._cancelled(body)
        elif verb == b"QUIET":
            if not self.quieted:
                try:
                    reason = json.loads(body).get("reason", "unknown")
                except (ValueError, AttributeError):
                    reason = "unknown"
                log.info(
                    "The server sent QUIET (%s): finishing %d jobs in hand",
                    reason,
                    len(self.held),
                )
            self.quieted = True
        elif verb != b"HI":
            raise ProtocolViolation(message=f"unexpected frame {verb[:32]!r}")

    def _job(self, body: Any) -> None:
        try:
            job = Job.from_wire(body)
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolViolation(message=f"a JOB frame without {e}") from None
        self.held[job.id] = job
        self.leases[job.id] = time.monotonic() + job.timeout
        heapq.heappush(
            self.extends,
            (time.monotonic() + _extend_interval(job), next(self.sequence), job.id),
        )
        self.worker._work.put((self, job))

    def _reply(self, verb: bytes, body: bytes) -> None:
        if not self.expected:
            raise ProtocolViolation(message="a reply to no request")
        kind, job_id, sent = self.expected.popleft()
        if kind in ("ACK", "FAIL"):
            self._settled(kind, job_id or "", verb, body)
            return
        if verb == b"OK":
            if kind == "BYE":
                self.bye_answered = True
            elif kind == "READY" and self.credit_withdrawn:
                self.credit_withdrawn_answered = True
            elif kind == "EXTEND" and job_id in self.held:
                self.leases[job_id] = sent + self.held[job_id].timeout
            return
        error = error_from_body(decode_body(body))
        if kind in ("EXTEND", "PROGRESS"):
            if error.code in GONE:
                job = self.held.pop(job_id or "", None)
                self.leases.pop(job_id or "", None)
                if job is not None and error.code == "cancelled":
                    job.cancel_event.set()
                if job is not None:
                    log.warning(
                        "Job %s (%s): its lease is lost (%s); its result will be dropped",
                        job.id,
                        job.type,
                        error.code,
                    )
            else:
                log.warning("Job %s: %s refused: %s", job_id, kind, error)
        elif kind == "READY":
            if error.code == "shutting_down":
                self.quieted = True
            else:
                # a wrong configuration: reconnecting would not mend it
                raise error
        else:
            log.warning("The server refused %s: %s", kind, error)

    def _settled(self, kind: str, job_id: str, verb: bytes, body: bytes) -> None:
        """
        The answer to an ACK or FAIL: done, or (C{store_unavailable}) to be
        sent again after a pause, until the server answers otherwise.
        """
        outcome = self.finishing.pop(job_id, None)
        if verb == b"OK":
            self.leases.pop(job_id, None)
            if outcome is not None and outcome.tries > 1:
                log.info(
                    "Job %s: its %s was stored at try %d", job_id, kind, outcome.tries
                )
            return
        error = error_from_body(decode_body(body))
        now = time.monotonic()
        if error.code == "store_unavailable" and outcome is not None:
            # The connection still holds the job: send it again until the
            # store answers.  Past the lease the answer will be lease_lost
            # (or, if the sweep has not yet run, the outcome is stored).
            lease_ends = self.leases.get(job_id, now)
            outcome.due = now + outcome.backoff.next()
            outcome.tries += 1
            if outcome.tries == 2:
                log.warning(
                    "Job %s: the server could not store its %s (%s); sending "
                    "it again until it can (the lease lasts %.1f s more)",
                    job_id,
                    kind,
                    error,
                    max(0.0, lease_ends - now),
                )
            elif now >= lease_ends and not outcome.lease_over:
                outcome.lease_over = True
                log.warning(
                    "Job %s: its lease has run out before its %s could be "
                    "stored: the job may run again",
                    job_id,
                    kind,
                )
            self.resends[job_id] = outcome
            return
        self.leases.pop(job_id, None)
        if error.code in GONE and outcome is not None and outcome.tries > 1:
            # A try that timed out may have been stored after all.
            log.info(
                "Job %s: the server refused its %s at try %d: %s (an earlier "
                "try may have been stored late, or the lease ran out)",
                job_id,
                kind,
                outcome.tries,
                error,
            )
        elif error.code in GONE:
            log.info("Job %s: the server refused its %s: %s", job_id, kind, error)
        else:
            log.error("Job %s: the server refused its %s: %s", job_id, kind, error)


@define
class _Outcome:
    """
    A finished job's C{ACK} or C{FAIL}, kept until the server has answered
    it, to be sent again while the server cannot store it.
    """

    job: Job
    verb: str
    frame: bytes
    tries: int = 1
    due: float = 0.0
    lease_over: bool = False
    backoff: Backoff = field(factory=lambda: Backoff(*RESEND_BACKOFF))


def _extend_interval(job: Job) -> float:
    """
    When to extend a job's lease again: at half its timeout.
    """
    return max(job.timeout / 2, MIN_EXTEND_INTERVAL)


# -- python -m procession.client.worker


def load_handlers(modules: Iterable[str]) -> Registry:
    """
    Import the modules and gather their handlers: those registered with the
    module-level L{handler} and those in their C{HANDLERS} dicts.
    """
    found = Registry()
    for name in modules:
        module = importlib.import_module(name)
        extra = getattr(module, "HANDLERS", None)
        if extra is not None:
            if not isinstance(extra, Mapping):
                raise TypeError(
                    f"{name}.HANDLERS must be a dict of job type to function"
                )
            found.update(extra)
    for type in registry.types():
        function = registry.get(type)
        assert function is not None
        found.add(type, function)
    return found


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m procession.client.worker",
        description="Run procession jobs with the handlers of the given modules "
        "(registered with procession.client.worker.handler, or in a HANDLERS dict).",
    )
    parser.add_argument(
        "modules",
        nargs="+",
        metavar="MODULE",
        help="a module to import, e.g. myapp.jobs",
    )
    parser.add_argument(
        "--queues",
        default="default",
        help="queues to serve, most preferred first (default: default)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="jobs run at once, in threads (default: 8)",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        default=None,
        help="jobs held beyond those running (default: concurrency/4, at least 1)",
    )
    parser.add_argument(
        "--url", default=None, help="tcp://host:port or tls://host:port"
    )
    parser.add_argument(
        "--host", default=None, help="default: PROCESSION_HOST, else 127.0.0.1"
    )
    parser.add_argument(
        "--port", default=None, help="default: PROCESSION_PORT, else 7000"
    )
    parser.add_argument(
        "--token",
        default=None,
        help="the worker token (default: PROCESSION_TOKEN); prefer --token-file",
    )
    parser.add_argument(
        "--token-file", default=None, help="a file whose first line is the worker token"
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument(
        "--name", default=None, help="this worker's name, as the server shows it"
    )
    parser.add_argument(
        "--on-quiet",
        choices=("exit", "reconnect"),
        default="exit",
        help="what to do after the server's QUIET (default: exit)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds to finish the jobs in hand when stopping (default: 30)",
    )
    parser.add_argument(
        "--max-backoff",
        type=float,
        default=5.0,
        help="the longest pause between reconnections, in seconds (default: 5)",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING... (default: INFO)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    The command line; its exit status.
    """
    parser = _parser()
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=options.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # `python -m` puts the current folder on the path; a console script
    # does not, and the application's modules are usually there.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    token = options.token
    if options.token_file:
        with open(options.token_file, encoding="utf-8") as f:
            token = f.readline().strip()
    try:
        handlers = load_handlers(options.modules)
    except Exception as e:
        log.error("Cannot load handlers: %s", e, exc_info=True)
        return 1
    if not len(handlers):
        parser.error(f"no handlers found in {', '.join(options.modules)}")
    try:
        worker = Worker(
            handlers,
            queues=options.queues,
            concurrency=options.concurrency,
            prefetch=options.prefetch,
            host=options.host,
            port=options.port,
            url=options.url,
            token=token,
            tls=True if options.tls else None,
            name=options.name,
            on_quiet=options.on_quiet,
            shutdown_timeout=options.shutdown_timeout,
            max_backoff=options.max_backoff,
        )
    except ValueError as e:
        parser.error(str(e))
    try:
        worker.run()
    except (ProcessionError, _ssl.SSLCertVerificationError, ValueError) as e:
        log.error("Stopped: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    # Run the main() of the importable module, not of __main__: handler
    # modules register with procession.client.worker.registry, which would be
    # another object than this copy's.
    from procession.client.worker import main as _main

    sys.exit(_main())
