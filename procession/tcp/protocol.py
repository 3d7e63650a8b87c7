"""
The TCP worker protocol: one frame per line, C{VERB} or C{VERB <JSON>}.

This module parses frames, keeps each connection's state (its name, its
queues and credit, the jobs it holds) and turns requests into calls on the
dispatcher.  Replies go out in request order even when requests are
pipelined; C{JOB} and C{QUIET} frames are the server's own and may come
between them.  docs/protocol.rst describes the protocol for client authors
and must stay in step with this module.
"""

from __future__ import annotations

import hmac
import json
from collections import deque
from typing import Any, Callable

from twisted.internet import defer, protocol
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    ISSLTransport,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer
from twisted.python.failure import Failure

from procession import __version__
from procession.service.dispatcher import Dispatcher
from procession.service.workflows import (
    MAX_AWAIT,
    parse_await_wait,
    parse_progress,
)
from procession.core.errors import (
    BadFrame,
    JobCancelled,
    FrameTooLarge,
    InvalidRequest,
    NotAuthenticated,
    NotHeld,
    OutOfOrder,
    ProcessionError,
    ShuttingDown,
    StoreUnavailable,
    UnknownVerb,
)
from procession.core.json_checks import (
    MAX_DECODE_NESTING,
    decode_json,
    lone_surrogate,
    may_hold_surrogates,
    too_deep,
)
from procession.core.wire import DEFAULT_MAX_FRAME, MAX_CREDIT, PROTOCOL_VERSION
from procession.net.transport import corked, write_now
from procession.core.job import (
    ClaimedJob,
    PushOutcome,
    batch_reply,
    push_reply,
    encode_result,
    failure_reply,
    format_time,
    parse_batch,
    parse_batch_spec,
    parse_extend_seconds,
    parse_failure,
    parse_queues,
    parse_submission,
    parse_worker_name,
)

log = Logger()

# With this many replies pending, stop reading the connection until some
# are written: a client that floods pipelined requests slows itself down.
MAX_PENDING_REPLIES = 1_000
# How many ids of jobs cancelled in its hands a connection remembers, to
# answer the worker's later ACK or FAIL for them with 'cancelled'.
MAX_CANCELLED_REMEMBERED = 1_000
# The longest frame before HELLO: a HELLO is small.
HANDSHAKE_MAX_FRAME = 16 * 1024
# What PERIODIC does besides "list" (docs/protocol.rst).
PERIODIC_ACTIONS = ("get", "put", "delete", "pause", "resume", "run")


class JobInHand:
    """
    A job in a worker's hands: its queue, lease and timeout, when its lease
    runs out (ms, as the store's clock; moved on by EXTEND), whether its ack
    or fail is on its way to the store, and (once the store could not take
    one) when to stop waiting for it again.
    """

    __slots__ = ("queue", "lease", "timeout", "expires_at", "finishing", "unsettled")

    def __init__(
        self, queue: str, lease: str, timeout: float = 300.0, expires_at: int = 0
    ) -> None:
        self.queue = queue
        self.lease = lease
        self.timeout = timeout
        self.expires_at = expires_at
        self.finishing = False
        self.unsettled: Any = None


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class WorkerProtocol(protocol.Protocol):
    """
    One worker (or producer) connection.
    """

    # A TCP or UNIX transport, set before connectionMade and never None
    # while connected (Twisted types it Optional[ITransport], without the
    # producer and TCP methods used here).
    transport: Any

    def __init__(self, factory: "WorkerFactory", number: int) -> None:
        self.factory = factory
        self.dispatcher = factory.dispatcher
        self.number = number
        self.name = f"conn-{number}"
        self.worker: str | None = None
        self.hello = False
        self.queues: tuple[str, ...] = ()
        self.credit = 0
        self.in_hand: dict[str, JobInHand] = {}
        self.unfinished = 0
        self.quieted = False
        self.closing = False
        self.connected_at = 0.0
        # The start of a frame not yet ended by a newline, in pieces.
        self._pieces: list[bytes] = []
        self._pending = 0
        self._replies: deque[list[Any]] = deque()
        # Why reading is stopped: "replies" (too many replies owed),
        # "output" (too much written and not sent yet); empty: reading.
        self._pauses: set[str] = set()
        self._closing_after_replies = False
        self._handshake_timer: Any = None
        # Jobs cancelled while this connection held them (see cancelled()).
        self.cancelled_ids: dict[str, None] = {}
        # Whether the client asked for CANCEL frames (HELLO "cancel": true):
        # a client written before them would take one for a reply.
        self.wants_cancel = False
        # AWAITs waiting: cancelled when the connection goes, so that a
        # client cannot leave waiters (and their timers) behind.
        self._awaits: set[defer.Deferred[Any]] = set()

    # -- connection

    def connectionMade(self) -> None:
        self.connected_at = self.factory.clock.seconds()
        if len(self.factory.connections) >= self.factory.max_connections:
            self._write_frame(
                "ERR",
                _compact(
                    {
                        "code": "too_many_connections",
                        "message": "the server is at --max-connections",
                    }
                ),
            )
            self.transport.loseConnection()
            self.closing = True
            return
        self.factory.connections.add(self)
        # The transport tells us (pauseProducing) when what it has not sent
        # yet passes its buffer size: a client that does not read its
        # replies stops being read, whatever the replies are.  A TLS
        # transport pauses its producer while its handshake runs, and a
        # paused connection reads nothing, so the handshake could never
        # end: register once it has (handshakeCompleted).
        if not ISSLTransport.providedBy(self.transport):
            self.transport.registerProducer(self, True)
        try:
            self.transport.setTcpKeepAlive(True)
            self.transport.setTcpNoDelay(True)
        except AttributeError:
            pass
        hi = {
            "server": "procession",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "auth": bool(self.factory.token),
            "max_frame": self.factory.max_frame,
        }
        self._write_frame("HI", json.dumps(hi, separators=(",", ":")))
        self._handshake_timer = self.factory.clock.callLater(
            self.factory.handshake_timeout, self._handshake_expired
        )

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is over: now the transport may pause us.
        """
        if not self.closing:
            self.transport.registerProducer(self, True)

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if not self.hello:
            self._error_and_close(OutOfOrder("no HELLO within the handshake timeout"))

    def readConnectionLost(self) -> None:
        """
        The client will send nothing more (C{nc -q}, C{shutdown(SHUT_WR)}):
        answer what it asked, then close.
        """
        self.dispatcher.remove_consumer(self)
        self._close_after_replies()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.closing = True
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self.factory.connections.discard(self)
        self.dispatcher.remove_consumer(self)
        for waiting in list(self._awaits):
            waiting.cancel()
        for in_hand in self.in_hand.values():
            _stop_waiting(in_hand)
        self._release_all("the worker's connection was lost")
        self.factory.job_left()

    def _release_all(self, reason: str) -> defer.Deferred[Any]:
        by_queue: dict[str, list[tuple[str, str]]] = {}
        for job_id, in_hand in self.in_hand.items():
            # A job whose ack or fail is on its way is the store's to settle:
            # releasing it too could overtake the ack and run it twice.
            if not in_hand.finishing:
                by_queue.setdefault(in_hand.queue, []).append((job_id, in_hand.lease))
        for items in by_queue.values():
            for job_id, _ in items:
                del self.in_hand[job_id]
        if by_queue:
            self.factory.job_left()
        return defer.DeferredList(
            [
                self.dispatcher.release(queue, items, reason)
                for queue, items in by_queue.items()
            ]
        )

    # -- framing

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        if self._pauses:
            # Read before the pause took hold: handled on resuming.
            self._pieces.append(data)
            self._pending += len(data)
            return
        if b"\n" not in data:
            # No frame ends here: keep the piece without copying what came
            # before, so a frame dribbled in tiny pieces costs linear time.
            self._pieces.append(data)
            self._pending += len(data)
            if self._pending > self._frame_limit():
                self._too_large()
            return
        if self._pieces:
            data = b"".join(self._pieces) + data
            self._pieces = []
        if data.count(b"\n") > 1:
            # Pipelined requests: their replies and Redis calls go together.
            with corked():
                self._frames(data)
        else:
            self._frames(data)

    def _frames(self, data: bytes) -> None:
        """
        Handle the frames in C{data}, keeping an unfinished last one.
        """
        start = 0
        while not self.closing and not self._pauses:
            end = data.find(b"\n", start)
            if end < 0:
                break
            if end - start > self._frame_limit():
                self._too_large()
                return
            line = data[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            self.frameReceived(line)
        if self.closing:
            self._pieces = []
            self._pending = 0
            return
        rest = data[start:]
        self._pieces = [rest] if rest else []
        self._pending = len(rest)
        # Paused, the rest may hold whole frames, read again on resuming.
        if not self._pauses and self._pending > self._frame_limit():
            self._too_large()

    # -- flow control: stop reading while replies cannot be sent

    def pauseProducing(self) -> None:
        """
        The transport holds more unsent output than its buffer size: read
        nothing more until it has sent it.
        """
        self._hold("output")

    def resumeProducing(self) -> None:
        """
        The transport has sent what it held.
        """
        self._release("output")
        if not self._pauses:
            self._has_room()

    def stopProducing(self) -> None:
        """
        The connection is going away; L{connectionLost} cleans up.
        """

    def _hold(self, reason: str) -> None:
        if not self._pauses and not self.closing:
            self.transport.pauseProducing()
        self._pauses.add(reason)

    def _release(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if self._pauses or self.closing:
            return
        self.transport.resumeProducing()
        if self._pieces and any(b"\n" in piece for piece in self._pieces):
            # Frames read before the pause and not handled yet.
            data = b"".join(self._pieces)
            self._pieces = []
            self._pending = 0
            with corked():
                self._frames(data)

    def _frame_limit(self) -> int:
        """
        The longest frame this connection may send now: --max-frame, but
        less before HELLO, so that connections that have not shown a token
        cannot make the server hold --max-frame bytes each.
        """
        if self.hello:
            return self.factory.max_frame
        return min(self.factory.max_frame, HANDSHAKE_MAX_FRAME)

    def _too_large(self) -> None:
        limit = self._frame_limit()
        self._pieces = []
        self._pending = 0
        self._error_and_close(
            FrameTooLarge(f"frames are limited to {limit} bytes", limit=limit)
        )

    def _write_frame(self, verb: str, body: str | None = None) -> None:
        if body is None:
            write_now(self.transport, verb.encode("ascii") + b"\n")
        else:
            write_now(self.transport, f"{verb} {body}\n".encode("utf-8"))

    def _error_and_close(self, error: ProcessionError) -> None:
        """
        Answer with an ERR frame after the replies already owed, then close.
        """
        slot = self._new_reply()
        self._close_after_replies()
        self._settle(slot, ("ERR", _compact(error.as_dict())))

    def _close_after_replies(self) -> None:
        """
        Read nothing more; close once every reply owed has been written.
        """
        self.closing = True
        self._closing_after_replies = True
        if not self._replies:
            self.transport.loseConnection()

    # -- replies in order

    def _new_reply(self) -> list[Any]:
        slot: list[Any] = [None]
        self._replies.append(slot)
        if len(self._replies) >= MAX_PENDING_REPLIES:
            self._hold("replies")
        return slot

    def _settle(self, slot: list[Any], frame: tuple[str, str | None]) -> None:
        slot[0] = frame
        replies = self._replies
        while replies and replies[0][0] is not None:
            verb, body = replies.popleft()[0]
            self._write_frame(verb, body)
        if "replies" in self._pauses and len(replies) < MAX_PENDING_REPLIES // 2:
            self._release("replies")
        if self._closing_after_replies and not replies:
            self.transport.loseConnection()

    def _settle_ok(self, value: Any, slot: list[Any]) -> None:
        self._settle(slot, _ok(value))

    def _settle_err(self, failure: Failure, slot: list[Any]) -> None:
        self._settle(slot, _err(failure))

    def _reply(self, result: Any) -> None:
        """
        Queue a reply: a value (sent as C{OK <JSON>}), a Deferred of one, or
        an exception (sent as C{ERR}).
        """
        slot = self._new_reply()
        if isinstance(result, defer.Deferred):
            result.addCallbacks(
                self._settle_ok,
                self._settle_err,
                callbackArgs=(slot,),
                errbackArgs=(slot,),
            )
        elif isinstance(result, BaseException):
            self._settle(slot, _err(result))
        else:
            self._settle(slot, _ok(result))

    # -- frames

    def frameReceived(self, line: bytes) -> None:
        """
        Handle one complete frame (without its line ending).
        """
        verb_bytes, _, body_bytes = line.partition(b" ")
        try:
            verb = verb_bytes.decode("ascii")
        except UnicodeDecodeError:
            return self._reply(UnknownVerb("the verb is not ASCII"))
        handler = self._handlers.get(verb)
        if handler is None:
            if not line.strip():
                return self._reply(BadFrame("empty frame"))
            return self._reply(UnknownVerb(f"unknown verb {verb[:32]!r}"))
        if verb not in ("HELLO", "PING", "BYE") and not self.hello:
            return self._reply(OutOfOrder("send HELLO first"))
        body: Any = None
        if body_bytes:
            if too_deep(body_bytes, MAX_DECODE_NESTING):
                return self._reply(
                    BadFrame(
                        f"the frame's JSON nests more than {MAX_DECODE_NESTING} deep",
                        limit=MAX_DECODE_NESTING,
                    )
                )
            try:
                body = decode_json(body_bytes)
            except UnicodeDecodeError:
                return self._reply(BadFrame("the frame is not valid UTF-8"))
            except RecursionError:
                return self._reply(BadFrame("the frame's JSON is nested too deeply"))
            except ValueError:
                return self._reply(BadFrame("the frame's JSON is malformed"))
            if may_hold_surrogates(body_bytes):
                path = lone_surrogate(body)
                if path is not None:
                    return self._reply(
                        BadFrame(
                            f"{path} is not valid Unicode (a lone UTF-16 "
                            "surrogate escape)",
                            field=path,
                        )
                    )
        try:
            result = handler(self, body, len(body_bytes))
        except ProcessionError as e:
            result = e
        if result is not _NO_REPLY:
            self._reply(result)

    def do_HELLO(self, body: Any, size: int) -> Any:
        if self.hello:
            raise OutOfOrder("HELLO was sent already")
        body = _object(body, "HELLO")
        worker = parse_worker_name(body.get("worker"))
        if self.factory.token:
            token = body.get("token")
            if not isinstance(token, str) or not hmac.compare_digest(
                token.encode("utf-8"), self.factory.token.encode("utf-8")
            ):
                self._error_and_close(
                    NotAuthenticated("a valid token is needed to connect")
                )
                return _NO_REPLY
        self.hello = True
        self.wants_cancel = body.get("cancel") is True
        self.worker = worker
        self.name = f"{worker}#{self.number}"
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        return {"worker": self.name}

    def do_PING(self, body: Any, size: int) -> Any:
        return None

    def do_BYE(self, body: Any, size: int) -> Any:
        self.dispatcher.remove_consumer(self)
        self.closing = True
        released = self._release_all("the worker said BYE")
        slot = self._new_reply()

        def done(_: Any) -> None:
            self._close_after_replies()
            self._settle(slot, ("OK", None))

        released.addCallback(done)
        return _NO_REPLY

    def do_PUSH(self, body: Any, size: int) -> Any:
        if not self.dispatcher.accepting:
            raise ShuttingDown("the server is shutting down")
        job = parse_submission(
            body, self.factory.now_ms(), self.factory.max_job_size, size
        )
        return self.dispatcher.push_one(job).addCallback(_pushed, job.id)

    def do_PUSHB(self, body: Any, size: int) -> Any:
        if not self.dispatcher.accepting:
            raise ShuttingDown("the server is shutting down")
        jobs = parse_batch(body, self.factory.now_ms(), self.factory.max_job_size)
        return defer.Deferred.fromCoroutine(self.dispatcher.push(jobs)).addCallback(
            lambda created: batch_reply(jobs, created)
        )

    def do_READY(self, body: Any, size: int) -> Any:
        body = _object(body, "READY")
        queues = parse_queues(body.get("queues", ["default"]))
        credit = body.get("credit", 1)
        if (
            not isinstance(credit, int)
            or isinstance(credit, bool)
            or not 0 <= credit <= MAX_CREDIT
        ):
            raise InvalidRequest(
                f"credit must be an integer from 0 to {MAX_CREDIT}",
                field="credit",
            )
        if self.quieted:
            raise ShuttingDown("this connection has been quieted")
        self.dispatcher.remove_consumer(self)
        self.queues = queues
        self.credit = credit
        self.dispatcher.add_consumer(self)
        return {"queues": list(queues), "credit": credit}

    def _take(self, body: Any, verb: str) -> tuple[dict[str, Any], str, JobInHand]:
        body = _object(body, verb)
        job_id = body.get("id")
        if not isinstance(job_id, str):
            raise InvalidRequest("id must be a string", field="id")
        in_hand = self.in_hand.get(job_id)
        if in_hand is None and job_id in self.cancelled_ids:
            del self.cancelled_ids[job_id]
            raise JobCancelled(f"job {job_id!r} was cancelled", id=job_id)
        if in_hand is None or in_hand.finishing:
            raise NotHeld(f"this connection does not hold job {job_id!r}", id=job_id)
        return body, job_id, in_hand

    def _finish(self, job_id: str, in_hand: JobInHand, d: defer.Deferred[Any]) -> Any:
        """
        Free the job's credit now, and forget the job once the store has
        answered (a refused ack means the lease is someone else's) -- unless
        the store was unavailable: then the job is held again, to be acked
        or failed again (or given back if the connection drops), and counts
        against the credit again.
        """
        again = self._finishing(in_hand)
        return d.addBoth(self._finished, job_id, in_hand, again)

    def _finishing(self, in_hand: JobInHand) -> bool:
        """
        L{_finish}'s first half, as the ack or fail goes to the store:
        whether it was sent again after C{store_unavailable}.
        """
        in_hand.finishing = True
        # Sent again after store_unavailable: the store may still be
        # unavailable, and a claim for the credit freed now could time out
        # and yet lease jobs when Redis wakes, to nobody.  Ask for more once
        # the store has answered.
        again = in_hand.unsettled is not None and _stop_waiting(in_hand)
        self.unfinished -= 1
        if not again:
            self._has_room()
        return again

    def _finished(
        self, result: Any, job_id: str, in_hand: JobInHand, again: bool
    ) -> Any:
        """
        L{_finish}'s second half, once the store has answered.
        """
        if (
            isinstance(result, Failure)
            and result.check(StoreUnavailable)
            and not self.closing
        ):
            in_hand.finishing = False
            self.unfinished += 1
            # A client that does not send it again must not hold the
            # credit forever: by then the lease is over anyway.
            in_hand.unsettled = self.factory.clock.callLater(
                in_hand.timeout, self._unsettled_expired, job_id, in_hand
            )
        else:
            self.in_hand.pop(job_id, None)
            self.factory.job_left()
            if again:
                self._has_room()
        return result

    def _unsettled_expired(self, job_id: str, in_hand: JobInHand) -> None:
        """
        A job whose ack or fail the store could not take was not sent
        again within its timeout: forget it, and free its credit.
        """
        in_hand.unsettled = None
        if self.in_hand.get(job_id) is in_hand and not in_hand.finishing:
            del self.in_hand[job_id]
            self.factory.job_left()
            self.unfinished -= 1
            self._has_room()

    def do_ACK(self, body: Any, size: int) -> Any:
        body, job_id, in_hand = self._take(body, "ACK")
        result = encode_result(body.get("result"))
        # As _finish does, with one callback: acks are the hot path.
        again = self._finishing(in_hand)
        return self.dispatcher.ack(
            in_hand.queue, job_id, in_hand.lease, result
        ).addBoth(self._acked, job_id, in_hand, again)

    def _acked(self, outcome: Any, job_id: str, in_hand: JobInHand, again: bool) -> Any:
        outcome = self._finished(outcome, job_id, in_hand, again)
        if isinstance(outcome, Failure):
            return outcome
        return _JSON('{"id":' + _compact(job_id) + "}")

    def do_FAIL(self, body: Any, size: int) -> Any:
        body, job_id, in_hand = self._take(body, "FAIL")
        report = parse_failure(body, self.name, self.factory.now_ms())
        d = self.dispatcher.fail(
            in_hand.queue,
            job_id,
            in_hand.lease,
            report.error,
            report.retry_in,
            report.retry,
        )
        return self._finish(job_id, in_hand, d).addCallback(
            lambda outcome: failure_reply(job_id, *outcome)
        )

    def do_EXTEND(self, body: Any, size: int) -> Any:
        body, job_id, in_hand = self._take(body, "EXTEND")
        seconds = parse_extend_seconds(body)

        def extended(expiry: int) -> dict[str, Any]:
            in_hand.expires_at = expiry
            return {"id": job_id, "expires_at": format_time(expiry)}

        return self.dispatcher.extend(
            in_hand.queue, job_id, in_hand.lease, seconds
        ).addCallback(extended)

    # -- workflows (docs/workflows.rst)

    def do_AWAIT(self, body: Any, size: int) -> Any:
        body = _object(body, "AWAIT")
        job_id = body.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise InvalidRequest("id must be a job id", field="id")
        wait = parse_await_wait(body.get("wait", MAX_AWAIT))
        waiting = defer.Deferred.fromCoroutine(
            self.dispatcher.workflows.await_job(job_id, wait)
        )
        self._awaits.add(waiting)

        def settled(result: Any) -> Any:
            self._awaits.discard(waiting)
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                # The connection is gone: nobody reads the answer.
                return None
            return result

        return waiting.addBoth(settled)

    def do_BATCH(self, body: Any, size: int) -> Any:
        body = _object(body, "BATCH")
        action = body.get("action", "new")
        workflows = self.dispatcher.workflows
        if action == "new":
            spec = parse_batch_spec(
                body, self.factory.now_ms(), self.factory.max_job_size
            )
            return defer.Deferred.fromCoroutine(workflows.create_batch(spec))
        if action not in ("commit", "open", "status"):
            raise InvalidRequest(
                'action must be "new", "commit", "open" or "status"', field="action"
            )
        if set(body) - {"action", "id"}:
            raise InvalidRequest(f'BATCH "{action}" takes only an id')
        batch_id = body.get("id")
        if not isinstance(batch_id, str) or not batch_id:
            raise InvalidRequest("id must be a batch id", field="id")
        change = {
            "commit": workflows.commit_batch,
            "open": workflows.open_batch,
            "status": workflows.get_batch,
        }[action]
        return defer.Deferred.fromCoroutine(change(batch_id))

    def do_PERIODIC(self, body: Any, size: int) -> Any:
        body = _object(body, "PERIODIC")
        periodic = self.factory.periodic
        if periodic is None:
            raise StoreUnavailable("this server runs no periodic service")
        action = body.get("action", "list")
        if action == "list":
            if set(body) - {"action"}:
                raise InvalidRequest('PERIODIC "list" takes no other field')
            return defer.Deferred.fromCoroutine(periodic.list()).addCallback(
                lambda entries: {"periodic": entries}
            )
        if action not in PERIODIC_ACTIONS:
            raise InvalidRequest(
                "action must be one of list, " + ", ".join(PERIODIC_ACTIONS),
                field="action",
            )
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("name must be a periodic entry's name", field="name")
        if action == "put":
            definition = {k: v for k, v in body.items() if k not in ("action", "name")}
            return defer.Deferred.fromCoroutine(
                periodic.put(name, definition)
            ).addCallback(lambda outcome: {**outcome[1], "outcome": outcome[0]})
        if set(body) - {"action", "name"}:
            raise InvalidRequest(f'PERIODIC "{action}" takes only a name')
        if action == "delete":
            return defer.Deferred.fromCoroutine(periodic.delete(name)).addCallback(
                lambda _: {"name": name, "deleted": True}
            )
        call = {
            "get": periodic.get,
            "pause": lambda n: periodic.set_paused(n, True),
            "resume": lambda n: periodic.set_paused(n, False),
            "run": periodic.run_now,
        }[action]
        return defer.Deferred.fromCoroutine(call(name))

    def do_PROGRESS(self, body: Any, size: int) -> Any:
        body, job_id, in_hand = self._take(body, "PROGRESS")
        percent, message = parse_progress(body)
        return defer.Deferred.fromCoroutine(
            self.dispatcher.workflows.progress(
                in_hand.queue, job_id, in_hand.lease, percent, message
            )
        ).addCallback(lambda _: {"id": job_id})

    def cancelled(self, job_id: str) -> bool:
        """
        The job was cancelled (or killed, or deleted) while this connection
        held it: send C{CANCEL}, and free its credit, if the client asked
        for C{CANCEL} frames in its C{HELLO}.  The worker's later
        ACK, FAIL, EXTEND or PROGRESS for it is answered C{cancelled}.
        Whether this connection held it.
        """
        in_hand = self.in_hand.get(job_id)
        if in_hand is None or in_hand.finishing or self.closing:
            return False
        if not self.wants_cancel:
            # It keeps the job (and its credit) until it acks or fails it,
            # which the store answers 'cancelled'.
            return True
        del self.in_hand[job_id]
        self.factory.job_left()
        _stop_waiting(in_hand)
        self.unfinished -= 1
        self.cancelled_ids[job_id] = None
        if len(self.cancelled_ids) > MAX_CANCELLED_REMEMBERED:
            del self.cancelled_ids[next(iter(self.cancelled_ids))]
        self._write_frame("CANCEL", _compact({"id": job_id}))
        self._has_room()
        return True

    _handlers: dict[str, Callable[..., Any]] = {
        "HELLO": do_HELLO,
        "PING": do_PING,
        "BYE": do_BYE,
        "PUSH": do_PUSH,
        "PUSHB": do_PUSHB,
        "READY": do_READY,
        "ACK": do_ACK,
        "FAIL": do_FAIL,
        "EXTEND": do_EXTEND,
        "AWAIT": do_AWAIT,
        "BATCH": do_BATCH,
        "PROGRESS": do_PROGRESS,
        "PERIODIC": do_PERIODIC,
    }

    # -- the dispatcher's consumer interface

    def room(self) -> int:
        # While the client has not read what was written (output held back),
        # ask for no more jobs: they would only pile up here.
        if self.quieted or self.closing or "output" in self._pauses:
            return 0
        return self.credit - self.unfinished

    def deliver(self, job: ClaimedJob) -> bool:
        # The jobs of a claim already made are taken whatever the output:
        # its size is bounded by the credit.
        if self.closing or self.quieted or self.credit - self.unfinished <= 0:
            return False
        expires_at = self.factory.now_ms() + int(job.timeout * 1000)
        self.in_hand[job.id] = JobInHand(job.queue, job.lease, job.timeout, expires_at)
        self.unfinished += 1
        write_now(self.transport, b"JOB " + job.payload.encode("utf-8") + b"\n")
        return True

    def _has_room(self) -> None:
        if self.queues and not self.closing and not self.quieted:
            self.dispatcher.ready(self)

    def quiet(self, reason: str = "operator") -> None:
        """
        Send no more jobs on this connection, and tell the worker why:
        C{"shutdown"} (this server is stopping) or C{"operator"} (someone
        quieted this worker).
        """
        if self.quieted or self.closing:
            return
        self.quieted = True
        self.dispatcher.remove_consumer(self)
        self._write_frame("QUIET", _compact({"reason": reason}))


_NO_REPLY = object()


def _stop_waiting(in_hand: JobInHand) -> bool:
    """
    Cancel the wait for a job's ack to be sent again; whether there was one.
    """
    if in_hand.unsettled is None:
        return False
    if in_hand.unsettled.active():
        in_hand.unsettled.cancel()
    in_hand.unsettled = None
    return True


def _object(body: Any, verb: str) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidRequest(f"{verb} takes a JSON object")
    return body


# json.dumps with any option builds an encoder per call; replies share one.
_compact = json.JSONEncoder(separators=(",", ":")).encode


class _JSON(str):
    """
    A reply body that is JSON text already.
    """


def _pushed(created: PushOutcome, job_id: str) -> Any:
    if not isinstance(created, bool):
        return push_reply(job_id, created)
    return _JSON(
        '{"id":'
        + _compact(job_id)
        + (',"created":true}' if created else ',"created":false}')
    )


def _ok(value: Any) -> tuple[str, str | None]:
    if value is None:
        return ("OK", None)
    if type(value) is _JSON:
        return ("OK", value)
    return ("OK", _compact(value))


def _err(error: Any) -> tuple[str, str]:
    # Check for a Failure first: recent Twisted makes Failure an exception.
    if isinstance(error, Failure):
        if error.check(ProcessionError):
            error = error.value
        else:
            log.failure("Unexpected error answering a request", error)
            error = ProcessionError("internal error")
    if not isinstance(error, ProcessionError):
        error = ProcessionError("internal error")
    return ("ERR", json.dumps(error.as_dict(), separators=(",", ":")))


class WorkerFactory(protocol.Factory):
    """
    Makes L{WorkerProtocol}s and knows every live connection.
    """

    noisy = False

    def __init__(
        self,
        dispatcher: Dispatcher,
        clock: IReactorTime,
        token: str | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_job_size: int = 1 << 20,
        max_connections: int = 10_000,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.dispatcher = dispatcher
        # The periodic service (PERIODIC), which start-up wiring sets.
        self.periodic: Any = None
        self.clock = clock
        self.token = token
        self.max_frame = max_frame
        self.max_job_size = max_job_size
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.connections: set[WorkerProtocol] = set()
        self._count = 0
        self._no_jobs_waiters: list[defer.Deferred[None]] = []
        dispatcher.workflows.on_revoked.append(self.job_revoked)

    def job_revoked(self, job_id: str) -> None:
        """
        A running job's lease was revoked (cancelled, killed, deleted):
        tell the worker of this server that holds it, if one does.
        """
        for connection in self.connections:
            if connection.cancelled(job_id):
                return

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def buildProtocol(self, addr: Any) -> WorkerProtocol:
        self._count += 1
        return WorkerProtocol(self, self._count)

    def _listed(self) -> list[WorkerProtocol]:
        # Connections that said HELLO and are not closing, and any that
        # still takes jobs, by connection number.
        found = {
            c for c in self.dispatcher.consumers() if isinstance(c, WorkerProtocol)
        }
        found.update(c for c in self.connections if c.hello and not c.closing)
        return sorted(found, key=lambda c: c.number)

    def describe_workers(self) -> list[dict[str, Any]]:
        """
        The workers connected here, as the workers listing shows them
        (L{procession.service.admin.WorkerSource}).  A connection's jobs
        are those it holds a live lease on: once a job's lease has run out
        (the sweep gives it back to its queue) it is not listed, though the
        connection keeps its credit until the worker acks (answered
        lease_lost) or goes.
        """
        now = self.now_ms()
        return [
            {
                "kind": "tcp",
                "name": c.name,
                "queues": list(c.queues),
                "credit": c.credit,
                "jobs": [
                    {"id": job_id, "queue": in_hand.queue}
                    for job_id, in_hand in sorted(c.in_hand.items())
                    if in_hand.expires_at > now
                ],
                "connected_at": format_time(int(c.connected_at * 1000)),
                "quiet": bool(c.quieted),
            }
            for c in self._listed()
        ]

    def quiet_workers(self, name: str) -> list[str]:
        """
        Send QUIET to connection C{name} (C{worker#N}), or else to every
        connection of worker C{name}; the connections told.
        """
        listed = self._listed()
        chosen = [c for c in listed if c.name == name] or [
            c for c in listed if c.worker == name
        ]
        for c in chosen:
            c.quiet()
        return [c.name for c in chosen]

    def quiet_all(self) -> None:
        """
        Send QUIET on every connection: the server is stopping.
        """
        for connection in list(self.connections):
            connection.quiet("shutdown")

    def jobs_in_hand(self) -> int:
        """
        How many jobs the connected workers hold.
        """
        return sum(len(c.in_hand) for c in self.connections)

    def when_no_jobs_in_hand(self) -> defer.Deferred[None]:
        """
        Fires once the connected workers hold no job (at once when they
        hold none); cancelling it stops the wait.
        """
        if not self.jobs_in_hand():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred(self._no_jobs_waiters.remove)
        self._no_jobs_waiters.append(d)
        return d

    def job_left(self) -> None:
        """
        A connection let go of a job, or closed: tell those waiting in
        L{when_no_jobs_in_hand} once no job is held.
        """
        if self._no_jobs_waiters and not self.jobs_in_hand():
            waiting, self._no_jobs_waiters = self._no_jobs_waiters, []
            for d in waiting:
                d.callback(None)

    def release_all(self, reason: str) -> defer.Deferred[Any]:
        """
        Give every held job back to its queue and close every connection.
        """
        released = [c._release_all(reason) for c in list(self.connections)]
        for connection in list(self.connections):
            connection.closing = True
            connection.transport.loseConnection()
        return defer.DeferredList(released)
