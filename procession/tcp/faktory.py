"""
The Faktory worker protocol, a second front end beside
L{procession.tcp.protocol}: Faktory's clients (Go, Ruby, Node, Python,
Rust, ...) talk to procession with nothing changed but their URL.

Requests are lines, C{VERB payload}; replies are RESP: C{+OK}, C{-ERR
message}, C{$len} bulk strings of JSON, C{$-1} for nil, byte for byte as
Faktory's server (contribsys/faktory, server/*.go) writes them.  Every
request becomes a call on the queue service (the dispatcher, and
L{procession.service.owners} for the leases that Faktory worker
processes own); this module never reaches the store another way.

A Faktory worker process (its C{wid}) fetches on one connection and
acknowledges on another, so its jobs are held by the process, not by a
connection: they are recorded under the process as lease owner, and come
back to their queues when it has had no connection and sent no C{BEAT}
for C{--faktory-worker-timeout}.  docs/faktory.rst is the reference for
client authors and operators and must stay in step with this module.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import socket
from collections import deque
from typing import Any, Callable

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from procession import __version__
from procession.core.json_checks import (
    MAX_DECODE_NESTING,
    decode_json,
    lone_surrogate,
    may_hold_surrogates,
    too_deep,
)
from procession.core.errors import (
    InvalidRequest,
    JobNotFound,
    LeaseLost,
    ProcessionError,
)
from procession.core.job import MAX_BATCH, QUEUE_NAME, format_time, parse_batch_spec
from procession.net.transport import write_now
from procession.service.owners import LeaseOwners
from procession.tcp import faktory_job

log = Logger()

# Faktory's protocol version: clients send "v" in HELLO; below 2 their
# password hash is a single round of SHA-256.
PROTOCOL_VERSION = 2
# How long FETCH waits for a job, as Faktory's server does.
FETCH_WAIT = 2.0
# The longest line before HELLO.
HANDSHAKE_MAX_LINE = 16 * 1024
# The most queues one FETCH may name.
MAX_FETCH_QUEUES = 100
# With this many replies owed, stop reading the connection until some are
# written (as the native protocol does): a client that pipelines requests
# without reading the answers slows itself down.
MAX_PENDING_REPLIES = 1_000
# The most MUTATE/QUEUE names or jids one request may give.
MAX_NAMES = 1000
WID = re.compile(r"[\x21-\x7e]{1,128}\Z")

STATES = ("running", "quiet", "terminate")


def password_hash(password: str, salt: str, iterations: int) -> str:
    """
    Faktory's C{pwdhash}: SHA-256 of password and salt, hashed again
    C{iterations - 1} times, in hex.
    """
    digest = hashlib.sha256((password + salt).encode("utf-8")).digest()
    for _ in range(iterations - 1):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


class FaktoryError(Exception):
    """
    A reply of C{-CODE message} (C{code} is C{ERR} unless Faktory has a
    code of its own, such as C{NOTUNIQUE}).
    """

    def __init__(self, message: str, code: str = "ERR") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class FaktoryWorker:
    """
    A Faktory worker process (a C{wid}) as this server knows it: what its
    HELLO said, its state (C{running} -> C{quiet} -> C{terminate}, never
    back) and its connections here.
    """

    def __init__(self, wid: str, hello: dict[str, Any], now: float) -> None:
        self.wid = wid
        self.hostname = str(hello.get("hostname") or "")
        pid = hello.get("pid")
        self.pid = pid if isinstance(pid, int) else 0
        labels = hello.get("labels")
        self.labels = [str(x) for x in labels] if isinstance(labels, list) else []
        self.state = "running"
        self.started_at = now
        self.last_beat = now
        self.rss_kb = 0
        # The state its last BEAT was answered with.
        self.told = "running"
        self.connections: set[FaktoryProtocol] = set()

    def signal(self, state: str) -> None:
        """
        Move to C{state} if that is forward (running, quiet, terminate).
        """
        if state in STATES and STATES.index(state) > STATES.index(self.state):
            self.state = state

    @property
    def name(self) -> str:
        return self.wid


class FaktoryLease:
    """
    A job a Faktory worker fetched through this server: its queue and
    lease, who owns it, when it was fetched and whether a failure out of
    retries deletes it (pushed with C{"retry": 0}) rather than sending it
    to dead.
    """

    __slots__ = ("queue", "lease", "owner", "fetched_at", "timeout", "discard")

    def __init__(
        self,
        queue: str,
        lease: str,
        owner: str,
        fetched_at: float,
        timeout: float,
        discard: bool,
    ) -> None:
        self.queue = queue
        self.lease = lease
        self.owner = owner
        self.fetched_at = fetched_at
        self.timeout = timeout
        self.discard = discard


class Fetch:
    """
    One FETCH waiting for a job: a consumer of the dispatcher with room
    for one job, whose lease its worker process holds.
    """

    connection_bound = True

    def __init__(
        self,
        connection: "FaktoryProtocol",
        queues: tuple[str, ...],
        slot: list[Any],
    ) -> None:
        self.connection = connection
        self.queues = queues
        # Where its reply goes among the connection's replies in order.
        self.slot = slot
        self.holder = connection.factory.owners.holder(connection.owner)
        self.name = connection.owner
        self.done = False
        self.timer: Any = None

    def room(self) -> int:
        return 0 if self.done else 1

    def deliver(self, job: Any) -> bool:
        if self.done or self.connection.closing:
            return False
        self.done = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.connection._fetched(self, job)
        return True


class FaktoryProtocol(protocol.Protocol):
    """
    One connection from a Faktory client (producer or worker).
    """

    # A TCP or UNIX transport, set before connectionMade and never None
    # while connected (Twisted types it Optional[ITransport]).
    transport: Any

    def __init__(self, factory: "FaktoryFactory", number: int) -> None:
        self.factory = factory
        self.dispatcher = factory.dispatcher
        self.number = number
        self.hello = False
        self.closing = False
        self.worker: FaktoryWorker | None = None
        self.owner = ""
        self.connected_at = 0.0
        self._salt = ""
        self._iterations = 1
        self._pieces: list[bytes] = []
        self._pending = 0
        self._replies: deque[list[Any]] = deque()
        self._close_after = False
        self._handshake_timer: Any = None
        self._fetches: set[Fetch] = set()
        # FETCHes sent while one waits: one at a time per connection (no
        # Faktory client pipelines them; one that did must not lease a job
        # per line it sent).
        self._queued_fetches: deque[tuple[tuple[str, ...], list[Any]]] = deque()
        self._paused = False
        self._timers: set[Any] = set()

    # -- connection

    def connectionMade(self) -> None:
        self.connected_at = self.factory.clock.seconds()
        if len(self.factory.connections) >= self.factory.max_connections:
            write_now(
                self.transport,
                b"-ERR Overloaded: too many connections (--max-connections)\r\n",
            )
            self.closing = True
            self.transport.loseConnection()
            return
        self.factory.connections.add(self)
        try:
            self.transport.setTcpKeepAlive(True)
            self.transport.setTcpNoDelay(True)
        except AttributeError:
            pass
        hi = '+HI {"v":2'
        if self.factory.password:
            # As Faktory: 4000 to 8095 rounds, a random salt in hex.
            self._iterations = 4000 + int.from_bytes(os.urandom(2), "big") % 4096
            self._salt = format(int.from_bytes(os.urandom(8), "big") >> 1, "x")
            hi += f',"i":{self._iterations},"s":"{self._salt}"' + "}"
        else:
            hi += "}"
        write_now(self.transport, hi.encode("ascii") + b"\r\n")
        self._handshake_timer = self.factory.clock.callLater(
            self.factory.handshake_timeout, self._handshake_expired
        )

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if not self.hello:
            self._error_and_close("no HELLO within the handshake timeout")

    def connectionLost(self, reason: Any = None) -> None:
        self.closing = True
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        for timer in list(self._timers):
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self._queued_fetches.clear()
        for fetch in list(self._fetches):
            self._end_fetch(fetch)
        self.factory.connections.discard(self)
        self.factory.left(self)

    # -- framing

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        if b"\n" not in data:
            self._pieces.append(data)
            self._pending += len(data)
            if self._pending > self._line_limit():
                self._too_long()
            return
        if self._pieces:
            data = b"".join(self._pieces) + data
            self._pieces = []
        start = 0
        while not self.closing:
            end = data.find(b"\n", start)
            if end < 0:
                break
            if end - start > self._line_limit():
                self._too_long()
                return
            line = data[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            self.lineReceived(line)
        if self.closing:
            self._pieces = []
            self._pending = 0
            return
        rest = data[start:]
        self._pieces = [rest] if rest else []
        self._pending = len(rest)
        if self._pending > self._line_limit():
            self._too_long()

    def _line_limit(self) -> int:
        if self.hello:
            return self.factory.max_line
        return min(self.factory.max_line, HANDSHAKE_MAX_LINE)

    def _too_long(self) -> None:
        self._pieces = []
        self._pending = 0
        self._error_and_close(f"line too long: the limit is {self._line_limit()} bytes")

    # -- replies, in request order

    def _slot(self) -> list[Any]:
        slot: list[Any] = [None]
        self._replies.append(slot)
        if len(self._replies) >= MAX_PENDING_REPLIES and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        return slot

    def _settle(self, slot: list[Any], data: bytes) -> None:
        slot[0] = data
        out = []
        while self._replies and self._replies[0][0] is not None:
            out.append(self._replies.popleft()[0])
        if out and self.transport is not None:
            write_now(self.transport, b"".join(out))
        if self._paused and len(self._replies) < MAX_PENDING_REPLIES // 2:
            self._paused = False
            self.transport.resumeProducing()
        if self._close_after and not self._replies:
            self.transport.loseConnection()

    def _reply(self, result: Any) -> None:
        """
        Queue a reply: bytes, a Deferred of bytes, or an exception.
        """
        slot = self._slot()
        if isinstance(result, defer.Deferred):
            result.addCallbacks(
                lambda data: self._settle(slot, data),
                lambda f: self._settle(slot, _error(f)),
            )
        elif isinstance(result, BaseException):
            self._settle(slot, _error(result))
        else:
            self._settle(slot, result)

    def _error_and_close(self, message: str) -> None:
        self.closing = True
        self._close_after = True
        self._reply(FaktoryError(message))

    def _close(self) -> None:
        self.closing = True
        self._close_after = True
        if not self._replies:
            self.transport.loseConnection()

    # -- requests

    def lineReceived(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._reply(FaktoryError("the request is not valid UTF-8"))
        verb, _, payload = text.partition(" ")
        if not self.hello:
            if verb != "HELLO":
                return self._error_and_close("send HELLO first")
            return self._hello(payload)
        handler = self._handlers.get(verb)
        if handler is None:
            if not text.strip():
                return self._reply(FaktoryError("empty request"))
            return self._reply(FaktoryError(f"unknown command {verb[:32]}"))
        self.factory.commands += 1
        try:
            result = handler(self, payload)
        except (FaktoryError, ProcessionError) as e:
            result = e
        if result is not _NO_REPLY:
            self._reply(result)

    def _hello(self, payload: str) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        try:
            body = _json(payload)
        except FaktoryError:
            return self._error_and_close("invalid HELLO: malformed JSON")
        if not isinstance(body, dict):
            return self._error_and_close("invalid HELLO: it takes a JSON object")
        version = body.get("v")
        if version is not None and (
            not isinstance(version, int) or isinstance(version, bool)
        ):
            return self._error_and_close("invalid HELLO: v must be an integer")
        wid = body.get("wid") or ""
        if wid and (not isinstance(wid, str) or not WID.match(wid)):
            return self._error_and_close(
                "invalid HELLO: wid must be 1 to 128 printable characters"
            )
        if self.factory.password:
            iterations = self._iterations if (version or 0) >= 2 else 1
            given = body.get("pwdhash")
            expected = password_hash(self.factory.password, self._salt, iterations)
            if not isinstance(given, str) or not hmac.compare_digest(
                given.encode("utf-8"), expected.encode("ascii")
            ):
                return self._error_and_close("Invalid password")
        self.hello = True
        if wid:
            self.owner = wid
            self.worker = self.factory.joined(self, wid, body)
        self._reply(b"+OK\r\n")

    def do_END(self, payload: str) -> Any:
        self._close()
        return _NO_REPLY

    def do_PUSH(self, payload: str) -> Any:
        self._accepting()
        job = faktory_job.parse_job(
            _json(payload),
            self.factory.now_ms(),
            self.factory.max_job_size,
            len(payload),
        )
        return self.dispatcher.push_one(job).addCallback(_pushed)

    def do_PUSHB(self, payload: str) -> Any:
        self._accepting()
        items = _json(payload)
        if not isinstance(items, list):
            raise FaktoryError("invalid JSON: PUSHB takes an array of jobs")
        if len(items) > MAX_BATCH:
            raise FaktoryError(f"PUSHB takes at most {MAX_BATCH} jobs")
        now = self.factory.now_ms()
        rejected: dict[str, str] = {}
        jobs = []
        seen: set[str] = set()
        for item in items:
            jid = item.get("jid") if isinstance(item, dict) else None
            key = jid if isinstance(jid, str) else ""
            try:
                job = faktory_job.parse_job(item, now, self.factory.max_job_size, None)
            except ProcessionError as e:
                rejected[key] = e.message
                continue
            if job.id in seen:
                rejected[key] = "NOTUNIQUE Job not unique"
                continue
            seen.add(job.id)
            jobs.append(job)

        def answered(created: list[bool | str]) -> bytes:
            for job, made in zip(jobs, created):
                if made is not True:
                    rejected[job.id] = "NOTUNIQUE Job not unique"
            return _bulk(rejected)

        if not jobs:
            return _bulk(rejected)
        return defer.Deferred.fromCoroutine(self.dispatcher.push(jobs)).addCallback(
            answered
        )

    def _accepting(self) -> None:
        if not self.dispatcher.accepting:
            raise FaktoryError("Closing connection: shutdown in progress")

    def do_FETCH(self, payload: str) -> Any:
        queues = tuple(q for q in payload.split(" ") if q)
        if not queues:
            raise FaktoryError("FETCH needs at least one queue")
        if len(queues) > MAX_FETCH_QUEUES:
            raise FaktoryError(f"FETCH takes at most {MAX_FETCH_QUEUES} queues")
        for name in queues:
            if not QUEUE_NAME.match(name):
                raise FaktoryError(f"invalid queue name {name[:64]!r}")
        if not self.owner:
            raise FaktoryError(
                "FETCH needs a worker: send HELLO with a wid to fetch jobs"
            )
        queues = tuple(dict.fromkeys(queues))
        slot = self._slot()
        if self._fetches or self._queued_fetches:
            self._queued_fetches.append((queues, slot))
            return _NO_REPLY
        self._start_fetch(queues, slot)
        return _NO_REPLY

    def _start_fetch(self, queues: tuple[str, ...], slot: list[Any]) -> None:
        worker = self.worker
        if (
            worker is None
            or worker.state != "running"
            or not self.dispatcher.accepting
            or self.factory.terminating
        ):
            # Quiet or terminating workers get no more jobs: nil, after
            # the wait a FETCH that found nothing would take.
            self._later(FETCH_WAIT, self._nil_fetched, slot)
            return
        fetch = Fetch(self, queues, slot)
        self._fetches.add(fetch)
        fetch.timer = self.factory.clock.callLater(
            FETCH_WAIT, self._fetch_expired, fetch
        )
        self.dispatcher.add_consumer(fetch)

    def _nil_fetched(self, slot: list[Any]) -> None:
        self._settle(slot, b"$-1\r\n")
        self._next_fetch()

    def _next_fetch(self) -> None:
        """
        Start the FETCH that waited behind the one just answered.
        """
        if self._queued_fetches and not self._fetches and not self.closing:
            self._start_fetch(*self._queued_fetches.popleft())

    def _later(self, seconds: float, f: Callable[..., Any], *args: Any) -> None:
        timer: Any = None

        def fire() -> None:
            self._timers.discard(timer)
            f(*args)

        timer = self.factory.clock.callLater(seconds, fire)
        self._timers.add(timer)

    def _end_fetch(self, fetch: Fetch) -> None:
        fetch.done = True
        if fetch.timer is not None and fetch.timer.active():
            fetch.timer.cancel()
        self._fetches.discard(fetch)
        self.dispatcher.remove_consumer(fetch)

    def _fetch_expired(self, fetch: Fetch) -> None:
        fetch.timer = None
        if fetch.done:
            return
        self._end_fetch(fetch)
        self._settle(fetch.slot, b"$-1\r\n")
        self._next_fetch()

    def _fetched(self, fetch: Fetch, job: Any) -> None:
        self._fetches.discard(fetch)
        self.dispatcher.remove_consumer(fetch)
        slot = fetch.slot
        wire = json.loads(job.payload)
        self.factory.leases[job.id] = FaktoryLease(
            job.queue,
            job.lease,
            self.owner,
            self.factory.clock.seconds(),
            job.timeout,
            faktory_job.discards(wire),
        )
        # The next FETCH of this connection starts once the dispatcher is
        # done handing out this claim's jobs.
        self._later(0, self._next_fetch)
        if job.attempt <= 1:
            self._settle(slot, _bulk(faktory_job.from_wire(wire)))
            return

        def answer(error: Any) -> None:
            self._settle(slot, _bulk(faktory_job.from_wire(wire, error)))

        def no_error(failure: Failure) -> None:
            answer(None)

        self.factory.owners.last_error(job.queue, job.id).addCallbacks(answer, no_error)

    def _lease(self, jid: str) -> defer.Deferred[tuple[str, str, bool | None]]:
        """
        The queue, lease and (when known) whether a failure discards a job
        a Faktory worker holds: from this server's record of what it handed
        out, or from Redis when the job was fetched through another server.
        """
        held = self.factory.leases.get(jid)
        if held is not None:
            return defer.succeed((held.queue, held.lease, held.discard))
        return self.factory.owners.running_lease(jid).addCallback(
            lambda found: (found[0], found[1], None)
        )

    def do_ACK(self, payload: str) -> Any:
        body = _json(payload, f"invalid ACK {payload[:200]}")
        jid = body.get("jid") if isinstance(body, dict) else None
        if not isinstance(jid, str) or not jid:
            raise FaktoryError(f"invalid ACK {payload[:200]}")

        async def ack() -> bytes:
            try:
                queue, lease, _ = await self._lease(jid)
                await self.dispatcher.ack(queue, jid, lease, "")
            except (JobNotFound, LeaseLost):
                # As Faktory: an ACK for a job not (or no longer) reserved
                # is answered OK; the job is not changed.
                log.info("No such job to acknowledge {jid}", jid=jid)
            self.factory.forget(jid)
            return b"+OK\r\n"

        return defer.Deferred.fromCoroutine(ack())

    def do_FAIL(self, payload: str) -> Any:
        try:
            body = _json(payload)
        except FaktoryError:
            raise FaktoryError(f"invalid FAIL {payload[:200]}")
        try:
            jid, error = faktory_job.failure_record(
                body, self.owner or f"faktory#{self.number}", self.factory.now_ms()
            )
        except InvalidRequest as e:
            raise FaktoryError(e.message)

        async def fail() -> bytes:
            try:
                queue, lease, discard = await self._lease(jid)
                if discard is None:
                    job = await self.factory.admin.get_job(jid, queue)
                    discard = faktory_job.discards(job)
                await self.dispatcher.fail(
                    queue,
                    jid,
                    lease,
                    error,
                    None,
                    True,
                    discard=discard,
                )
            except (JobNotFound, LeaseLost):
                raise FaktoryError(f"Job not found {jid}")
            finally:
                self.factory.forget(jid)
            return b"+OK\r\n"

        return defer.Deferred.fromCoroutine(fail())

    def do_BEAT(self, payload: str) -> Any:
        body = _json(payload, f"invalid BEAT {payload[:200]}")
        if not isinstance(body, dict):
            raise FaktoryError(f"invalid BEAT {payload[:200]}")
        wid = body.get("wid")
        worker = self.factory.workers.get(wid) if isinstance(wid, str) else None
        if worker is None:
            raise FaktoryError(f"unknown worker {str(wid)[:128]}")
        worker.last_beat = self.factory.clock.seconds()
        rss = body.get("rss_kb")
        if isinstance(rss, int) and not isinstance(rss, bool):
            worker.rss_kb = rss
        state = body.get("current_state")
        if isinstance(state, str) and state:
            worker.signal(state)
        if self.factory.terminating:
            worker.signal("terminate")
        self.factory.owners.beat(worker.wid)

        def answer(told: str | None) -> bytes:
            # An operator's quiet through another server or process.
            if told:
                worker.signal(told)
            if worker.state == "running":
                return b"+OK\r\n"
            worker.told = worker.state
            self.factory.settled()
            return _bulk_text('{"state":' + json.dumps(worker.state) + "}")

        if worker.state == "terminate":
            return answer(None)
        return self.factory.owners.signalled(worker.wid).addCallback(answer)

    def do_INFO(self, payload: str) -> Any:
        return defer.Deferred.fromCoroutine(self.factory.info()).addCallback(_bulk)

    def do_FLUSH(self, payload: str) -> Any:
        if not self.factory.allow_flush:
            raise FaktoryError(
                "FLUSH is refused: it wipes every queue; start the server with "
                "--faktory-allow-flush to allow it (test environments only)"
            )
        return defer.Deferred.fromCoroutine(self.factory.flush()).addCallback(
            lambda _: b"+OK\r\n"
        )

    def do_QUEUE(self, payload: str) -> Any:
        words = [w for w in payload.split(" ") if w]
        if not words:
            raise FaktoryError("no such QUEUE subcommand: ")
        sub = words[0].upper()
        names = words[1:]
        if sub not in ("PAUSE", "RESUME", "REMOVE", "LATENCY"):
            raise FaktoryError(f"no such QUEUE subcommand: {words[0][:32]}")
        if not names:
            raise FaktoryError(f"QUEUE {sub} needs queue names or *")
        if len(names) > MAX_NAMES:
            raise FaktoryError(f"QUEUE takes at most {MAX_NAMES} names")
        if sub == "LATENCY" and names == ["*"]:
            raise FaktoryError("QUEUE LATENCY does not support wildcards")
        for name in names:
            if name != "*" and not QUEUE_NAME.match(name):
                raise FaktoryError(f"invalid queue name {name[:64]!r}")
        if sub == "LATENCY":
            return defer.Deferred.fromCoroutine(
                self.factory.latencies(names)
            ).addCallback(_bulk)
        return defer.Deferred.fromCoroutine(
            self.factory.queue_command(sub, names)
        ).addCallback(lambda _: b"+OK\r\n")

    def do_MUTATE(self, payload: str) -> Any:
        if not payload or " " in payload.strip():
            raise FaktoryError("invalid format")
        body = _json(payload)
        if not isinstance(body, dict):
            raise FaktoryError("invalid format")
        return defer.Deferred.fromCoroutine(self.factory.mutate(body)).addCallback(
            lambda _: b"+OK\r\n"
        )

    def do_BATCH(self, payload: str) -> Any:
        """
        Faktory Enterprise's batches, on procession's (docs/workflows.rst):
        C{BATCH NEW <json>} answers the new batch's id; C{BATCH COMMIT
        <bid>} and C{BATCH OPEN <bid>} answer C{+OK}; C{BATCH STATUS <bid>}
        the batch's counts.  Jobs join a batch by C{custom.bid}.
        """
        sub, _, rest = payload.strip().partition(" ")
        sub = sub.upper()
        workflows = self.dispatcher.workflows
        if sub == "NEW":
            request = faktory_job.to_batch_request(_json(rest))
            spec = parse_batch_spec(
                request, self.factory.now_ms(), self.factory.max_job_size
            )
            return defer.Deferred.fromCoroutine(
                workflows.create_batch(spec)
            ).addCallback(lambda batch: _bulk_text(batch["id"]))
        bid = rest.strip()
        if not bid or " " in bid:
            raise FaktoryError(f"BATCH {sub} takes a batch id")
        if sub in ("COMMIT", "OPEN"):
            change = workflows.commit_batch if sub == "COMMIT" else workflows.open_batch
            return defer.Deferred.fromCoroutine(change(bid)).addCallback(
                lambda _: b"+OK\r\n"
            )
        if sub == "STATUS":
            return defer.Deferred.fromCoroutine(workflows.get_batch(bid)).addCallback(
                lambda batch: _bulk(faktory_job.batch_status(batch))
            )
        raise FaktoryError(f"unknown BATCH subcommand {sub[:32]}")

    def do_TRACK(self, payload: str) -> Any:
        raise FaktoryError("tracking subsystem is only available in Faktory Enterprise")

    _handlers: dict[str, Callable[..., Any]] = {
        "END": do_END,
        "PUSH": do_PUSH,
        "PUSHB": do_PUSHB,
        "FETCH": do_FETCH,
        "ACK": do_ACK,
        "FAIL": do_FAIL,
        "BEAT": do_BEAT,
        "INFO": do_INFO,
        "FLUSH": do_FLUSH,
        "QUEUE": do_QUEUE,
        "MUTATE": do_MUTATE,
        "BATCH": do_BATCH,
        "TRACK": do_TRACK,
    }


_NO_REPLY = object()


def _json(payload: str, message: str | None = None) -> Any:
    # The one place this front end decodes JSON: the checks every front
    # end makes (procession.core.json_checks).
    if too_deep(payload, MAX_DECODE_NESTING):
        raise FaktoryError(
            message or f"invalid JSON: nested more than {MAX_DECODE_NESTING} deep"
        )
    try:
        value = decode_json(payload)
    except RecursionError:
        raise FaktoryError(message or "invalid JSON: nested too deeply")
    except ValueError as e:
        raise FaktoryError(message or f"invalid JSON: {str(e)[:200]}")
    if may_hold_surrogates(payload):
        path = lone_surrogate(value)
        if path is not None:
            raise FaktoryError(
                f"invalid JSON: {path} is not valid Unicode (a lone UTF-16 "
                "surrogate escape)"
            )
    return value


_compact = json.JSONEncoder(separators=(",", ":")).encode


def _bulk_text(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"$" + str(len(data)).encode("ascii") + b"\r\n" + data + b"\r\n"


def _bulk(value: Any) -> bytes:
    return _bulk_text(_compact(value))


def _pushed(created: bool | str) -> bytes:
    # A queue's name: a job with that jid is in that other queue.
    if created is True:
        return b"+OK\r\n"
    return b"-NOTUNIQUE Job not unique\r\n"


def _error(error: Any) -> bytes:
    if isinstance(error, Failure):
        if error.check(FaktoryError, ProcessionError):
            error = error.value
        else:
            log.failure("Unexpected error answering a Faktory request", error)
            error = FaktoryError("internal error")
    if isinstance(error, FaktoryError):
        code, message = error.code, error.message
    elif isinstance(error, ProcessionError):
        code, message = "ERR", error.message
    else:
        code, message = "ERR", "internal error"
    # A reply is one line.
    message = message.replace("\r", " ").replace("\n", " ")
    return f"-{code} {message}\r\n".encode("utf-8")


class FaktoryFactory(protocol.Factory):
    """
    Makes L{FaktoryProtocol}s; knows the Faktory workers connected here
    and the jobs they fetched through this server.
    """

    noisy = False

    def __init__(
        self,
        dispatcher: Any,
        owners: LeaseOwners,
        admin: Any,
        clock: IReactorTime,
        password: str | None = None,
        max_line: int = 1 << 20,
        max_job_size: int = 1 << 20,
        max_connections: int = 10_000,
        handshake_timeout: float = 10.0,
        allow_flush: bool = False,
    ) -> None:
        self.dispatcher = dispatcher
        self.owners = owners
        self.admin = admin
        self.clock = clock
        self.password = password
        self.max_line = max_line
        self.max_job_size = max_job_size
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.allow_flush = allow_flush
        self.connections: set[FaktoryProtocol] = set()
        self.workers: dict[str, FaktoryWorker] = {}
        self.leases: dict[str, FaktoryLease] = {}
        self.terminating = False
        self._drained_waiters: list[defer.Deferred[None]] = []
        self.commands = 0
        self.started_at = clock.seconds()
        self._count = 0
        owners.connected = self.connected_owners

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def buildProtocol(self, addr: Any) -> FaktoryProtocol:
        self._count += 1
        return FaktoryProtocol(self, self._count)

    # -- workers

    def joined(
        self, connection: FaktoryProtocol, wid: str, hello: dict[str, Any]
    ) -> FaktoryWorker:
        worker = self.workers.get(wid)
        if worker is None:
            worker = self.workers[wid] = FaktoryWorker(wid, hello, self.clock.seconds())
            if self.terminating:
                worker.signal("terminate")
            self.owners.beat(wid)
        worker.connections.add(connection)
        return worker

    def left(self, connection: FaktoryProtocol) -> None:
        worker = connection.worker
        if worker is None:
            return
        worker.connections.discard(connection)
        if not worker.connections and self.workers.get(worker.wid) is worker:
            del self.workers[worker.wid]
            # Heard of until now: its timeout runs from here.
            self.owners.beat(worker.wid)
            self.settled()

    def connected_owners(self) -> list[str]:
        """
        The worker processes with a connection open here (alive), after
        forgetting the records of jobs whose leases are long over.
        """
        now = self.clock.seconds()
        stale = [
            jid
            for jid, held in self.leases.items()
            if held.owner not in self.workers
            and now - held.fetched_at > held.timeout + self.owners.timeout
        ]
        for jid in stale:
            del self.leases[jid]
        return list(self.workers)

    def forget(self, jid: str) -> None:
        self.leases.pop(jid, None)
        self.settled()

    async def prune(self, older_than: float = 5.0, limit: int = 1000) -> int:
        """
        Forget the records of jobs handed out here that were settled
        elsewhere (an ACK through another server or process) or given back
        meanwhile: their lease is no longer the one recorded.  Looks at up
        to C{limit} records fetched more than C{older_than} seconds ago.

        @return: how many were forgotten.
        """
        now = self.clock.seconds()
        chosen = [
            (jid, held)
            for jid, held in self.leases.items()
            if now - held.fetched_at > older_than
        ][:limit]
        gone = 0
        for jid, held in chosen:
            try:
                _, lease = await self.owners.running_lease(jid)
            except (JobNotFound, LeaseLost):
                lease = None
            except ProcessionError:
                return gone
            if lease != held.lease and self.leases.get(jid) is held:
                del self.leases[jid]
                gone += 1
        if gone:
            self.settled()
        return gone

    def quiet_workers(self, name: str) -> list[str]:
        """
        Quiet the Faktory worker process C{name} (its wid) if it is
        connected here: its next BEAT, through whichever server or process,
        is answered C{{"state":"quiet"}}, and its FETCHes here get nothing.

        @return: C{[name]}, or nothing when it is not connected here.
        """
        worker = self.workers.get(name)
        if worker is None:
            return []
        worker.signal("quiet")
        # Its BEAT may go to another server or process (--processes).
        self.owners.signal(name, "quiet")
        return [name]

    def describe_workers(self) -> list[dict[str, Any]]:
        """
        The Faktory workers connected here, as the workers listing shows
        them.
        """
        jobs: dict[str, list[dict[str, str]]] = {}
        for jid, held in sorted(self.leases.items()):
            jobs.setdefault(held.owner, []).append({"id": jid, "queue": held.queue})
        return [
            {
                "kind": "faktory",
                "name": w.wid,
                "hostname": w.hostname,
                "pid": w.pid,
                "labels": w.labels,
                "state": w.state,
                "queues": [],
                "jobs": jobs.get(w.wid, []),
                "connections": len(w.connections),
                "connected_at": format_time(int(w.started_at * 1000)),
                "quiet": w.state != "running",
            }
            for w in sorted(self.workers.values(), key=lambda w: w.wid)
        ]

    # -- shutdown

    def quiet_all(self) -> None:
        """
        The server is stopping: every worker's next BEAT says terminate.
        """
        self.terminating = True
        for worker in self.workers.values():
            worker.signal("terminate")

    def untold(self) -> int:
        """
        How many workers connected here have not been told to terminate
        yet (no BEAT answered so since the shutdown began).
        """
        return sum(1 for w in self.workers.values() if w.told != "terminate")

    def jobs_in_hand(self) -> int:
        """
        How many jobs the Faktory workers connected here hold.
        """
        return sum(1 for held in self.leases.values() if held.owner in self.workers)

    def drained(self) -> bool:
        """
        Whether the shutdown may close the connections: every worker
        connected here was told to terminate and holds no job here.
        """
        return not self.jobs_in_hand() and not self.untold()

    def when_drained(self) -> defer.Deferred[None]:
        """
        Fires once L{drained} (at once when it is); cancelling it stops
        the wait.
        """
        if self.drained():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred(self._drained_waiters.remove)
        self._drained_waiters.append(d)
        return d

    def settled(self) -> None:
        """
        A worker was told to terminate, left, or let go of a job: tell
        those waiting in L{when_drained} once L{drained}.  They are told
        on the reactor's next turn, after the answer being made now (the
        BEAT that says terminate) is written.
        """
        if self._drained_waiters and self.drained():
            self.clock.callLater(0, self._tell_drained)

    def _tell_drained(self) -> None:
        if self._drained_waiters and self.drained():
            waiting, self._drained_waiters = self._drained_waiters, []
            for d in waiting:
                d.callback(None)

    def close_all(self) -> None:
        """
        Close every connection.  The jobs stay with their worker processes
        (which may go on through another server); they come back after the
        worker timeout if nobody acknowledges them.
        """
        for connection in list(self.connections):
            connection.closing = True
            connection.transport.loseConnection()

    # -- management commands

    async def info(self) -> dict[str, Any]:
        summaries = await self.admin.summaries()
        queues = {s.name: s.sizes.get("queued", 0) for s in summaries}
        sizes = {
            k: sum(s.sizes.get(k, 0) for s in summaries)
            for k in ("scheduled", "retrying", "dead", "running")
        }
        now = self.clock.seconds()
        return {
            "now": format_time(int(now * 1000)),
            "server_utc_time": _utc_clock(now),
            "faktory": {
                "total_failures": sum(s.failed for s in summaries),
                "total_processed": sum(s.processed for s in summaries),
                "total_enqueued": sum(queues.values()),
                "total_queues": len(queues),
                "queues": queues,
                "sets": {
                    "scheduled": sizes["scheduled"],
                    "retries": sizes["retrying"],
                    "dead": sizes["dead"],
                    "working": sizes["running"],
                },
                "tasks": {},
            },
            "server": {
                "description": "procession",
                "faktory_version": __version__,
                "uptime": int(now - self.started_at),
                "connections": len(self.connections),
                "command_count": self.commands,
                "used_memory_mb": 0,
                "hostname": socket.gethostname(),
            },
        }

    async def _names(self, names: list[str]) -> list[str]:
        known = await self.admin.known_queues()
        if names == ["*"] or "*" in names:
            return known
        return [n for n in names if n in known]

    async def queue_command(self, sub: str, names: list[str]) -> None:
        for name in await self._names(names):
            if sub == "PAUSE":
                await self.admin.set_paused(name, True)
            elif sub == "RESUME":
                await self.admin.set_paused(name, False)
            else:
                # REMOVE: Faktory deletes the queue's waiting jobs.
                await self.admin.bulk("delete", name, "queued")

    async def latencies(self, names: list[str]) -> dict[str, float]:
        known = set(await self.admin.known_queues())
        out: dict[str, float] = {}
        for name in names:
            if name in known:
                out[name] = (await self.admin.summary(name)).latency
            else:
                out[name] = 0
        return out

    async def flush(self) -> None:
        for name in await self.admin.known_queues():
            for state in ("queued", "scheduled", "retrying", "dead"):
                await self.admin.bulk("delete", name, state)

    async def mutate(self, op: dict[str, Any]) -> None:
        cmd = op.get("cmd")
        target = op.get("target")
        sets = {"retries": "retrying", "scheduled": "scheduled", "dead": "dead"}
        if cmd not in ("clear", "kill", "discard", "requeue"):
            raise FaktoryError("unknown mutate operation")
        if target not in sets:
            raise FaktoryError("invalid target for mutation command")
        state = sets[target]
        admin = self.admin
        names = await admin.known_queues()
        flt = op.get("filter")
        if cmd == "clear" or (cmd == "discard" and not flt):
            for name in names:
                await admin.bulk("delete", name, state)
            return
        match = _matcher(flt)
        action = {"kill": "kill", "discard": "delete", "requeue": "retry"}[cmd]
        for name in names:
            for jid in await admin.members(name, state):
                try:
                    job = await admin.get_job(jid, name)
                except JobNotFound:
                    continue
                if job["state"] != state or not match(job):
                    continue
                try:
                    await admin.job_action(action, jid, name)
                except ProcessionError:
                    continue


def _matcher(flt: Any) -> Callable[[dict[str, Any]], bool]:
    """
    A MUTATE filter (C{jids}, C{jobtype}, C{regexp}: a Redis SCAN glob over
    the job's Faktory JSON) as a test of a job (its API form).
    """
    if flt is None:
        return lambda job: True
    if not isinstance(flt, dict):
        raise FaktoryError("invalid filter for mutation command")
    jids = flt.get("jids")
    if jids:
        if not isinstance(jids, list) or len(jids) > MAX_NAMES:
            raise FaktoryError("jids must be a list of job ids")
        wanted = {str(j) for j in jids}
        return lambda job: job["id"] in wanted
    jobtype = flt.get("jobtype") or ""
    pattern = flt.get("regexp") or ""
    if not isinstance(jobtype, str) or not isinstance(pattern, str):
        raise FaktoryError("invalid filter for mutation command")
    glob = _glob(pattern) if pattern and pattern != "*" else None

    def match(job: dict[str, Any]) -> bool:
        if jobtype and job["type"] != jobtype:
            return False
        if glob is not None:
            text = _compact(faktory_job.from_wire(job))
            return glob.fullmatch(text) is not None
        return True

    return match


def _glob(pattern: str) -> re.Pattern[str]:
    """
    A Redis glob (C{*}, C{?}, C{[...]}, C{\\x}) as a regular expression.
    """
    if len(pattern) > 1000:
        raise FaktoryError("regexp is limited to 1000 characters")
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("^"):
                    body = "^" + re.escape(body[1:]).replace("\\-", "-")
                else:
                    body = re.escape(body).replace("\\-", "-")
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _utc_clock(now: float) -> str:
    import time

    return time.strftime("%H:%M:%S UTC", time.gmtime(now))
