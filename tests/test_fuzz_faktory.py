"""
The Faktory listener under generated input, as tests/test_fuzz_protocol.py
does it for the native protocol: hypothesis throws random bytes, invalid
UTF-8, lines over the line limit, deeply nested and huge JSON, wrong types
and commands out of order at a real server (one C{twist procession
--faktory} child process for the module), over blocking sockets.

Each example is checked against docs/faktory.rst: every line after HELLO
gets exactly one RESP reply, in order (C{+OK}, C{-CODE message}, a bulk
string of JSON or C{$-1}), never C{internal error}; a line before HELLO
other than HELLO, a wrong HELLO and a line over the limit get one C{-ERR}
and the connection closes; C{END} closes it.  Meanwhile a well-behaved
native worker (L{Canary}) runs jobs on the same server, and must never
fail nor stall; and the server's log must show no unexpected error.
"""

from __future__ import annotations

import atexit
import json
import socket
import threading
import uuid
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.ledger import Canary, Procession, wait_for
from tests.redis import free_port, shared_redis

MAX_LINE = 8192
HANDSHAKE_LINE = 16 * 1024
# FETCH waits 2 s when there is nothing: left out of the random commands
# (test_examples has it).
COMMANDS = (
    "PUSH",
    "PUSHB",
    "ACK",
    "FAIL",
    "BEAT",
    "INFO",
    "FLUSH",
    "QUEUE",
    "MUTATE",
    "BATCH",
    "TRACK",
)
HELLO = b'HELLO {"wid":"fuzz-worker","v":2}\r\n'

_server: Procession | None = None
_faktory_port = 0


def server() -> Procession:
    """
    The module's server, started on first use and killed at exit.
    """
    global _server, _faktory_port
    if _server is None or not _server.running():
        _faktory_port = free_port()
        _server = Procession(
            None,
            "--max-frame", str(MAX_LINE),
            "--max-job-size", "2048",
            "--faktory", f"tcp:{_faktory_port}:interface=127.0.0.1",
            redis=shared_redis(),
            namespace="fz" + uuid.uuid4().hex[:10],
        )  # fmt: skip
        atexit.register(_server.cleanup)
        _server.serving()
        wait_for(_faktory_listening, 20, "no Faktory listener")
    return _server


def _faktory_listening() -> bool:
    try:
        Session().close()
        return True
    except OSError:
        return False


class Closed(Exception):
    """
    The server closed the connection.
    """


class Session:
    """
    A raw connection to the Faktory listener: bytes out, RESP replies in.
    """

    def __init__(self, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", _faktory_port), timeout)
        self.buffer = b""
        self.reset = False
        hi = self.line()
        assert hi == b'+HI {"v":2}', hi

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                self.reset = True
                data = b""
            if not data:
                raise Closed()
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def reply(self) -> tuple[str, Any]:
        """
        The next reply: (C{"+"}, text), (C{"-"}, text), (C{"$"}, JSON, or
        text when it is not JSON) or (C{"$"}, L{None}) for nil.
        """
        line = self.line()
        kind, rest = line[:1].decode(), line[1:].decode("utf-8")
        if kind == "$":
            size = int(rest)
            if size < 0:
                return "$", None
            while len(self.buffer) < size + 2:
                data = self.sock.recv(1 << 16)
                if not data:
                    raise Closed()
                self.buffer += data
            body, self.buffer = self.buffer[:size], self.buffer[size + 2 :]
            try:
                return "$", json.loads(body)
            except ValueError:
                # BATCH NEW answers the new batch's id as it is.
                return "$", body.decode("utf-8")
        return kind, rest

    def closes(self) -> bool:
        try:
            while True:
                self.line()
        except Closed:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def exchange(test: SynchronousTestCase, data: bytes, hello: bool) -> list[str]:
    """
    Send C{data} (after a HELLO if C{hello}) and a final C{INFO} in one
    write; check every reply; the replies' kinds.
    """
    session = Session()
    try:
        payload = (HELLO if hello else b"") + data + b"\r\nINFO\r\n"
        lines = payload.split(b"\n")[:-1]
        session.send(payload)
        kinds: list[str] = []
        said_hello = False
        for index, raw in enumerate(lines):
            line = raw[:-1] if raw.endswith(b"\r") else raw
            limit = MAX_LINE if said_hello else min(MAX_LINE, HANDSHAKE_LINE)
            verb = line.partition(b" ")[0]
            try:
                kind, body = session.reply()
            except Closed:
                if said_hello and verb == b"END" and len(raw) <= limit:
                    return kinds
                test.assertTrue(
                    session.reset,
                    f"closed before answering line {index} {raw[:80]!r}",
                )
                return kinds
            what = f"line {index} {raw[:120]!r} -> {kind} {body!r}"
            test.assertIn(kind, ("+", "-", "$"), what)
            if kind == "-":
                test.assertRegex(body, r"^[A-Z]+ \S", what)
                test.assertNotIn("internal error", body, what)
            kinds.append(kind)
            if len(raw) > limit:
                test.assertEqual(kind, "-", what)
                test.assertIn("line too long", body, what)
                test.assertTrue(session.closes(), f"not closed after {what}")
                return kinds
            if not said_hello:
                if verb == b"HELLO" and kind == "+":
                    said_hello = True
                    continue
                test.assertEqual(kind, "-", what)
                test.assertTrue(session.closes(), f"not closed after {what}")
                return kinds
            if verb == b"END":
                test.fail(f"answered END: {what}")
        return kinds
    finally:
        session.close()


# -- strategies

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

fuzz_queue = st.from_regex(r"fz-[a-z0-9]{1,6}", fullmatch=True)

job_fields = st.fixed_dictionaries(
    {},
    optional={
        "jid": json_values | st.text(min_size=8, max_size=20),
        "jobtype": json_values | st.text(max_size=10),
        "args": json_values | st.lists(json_values, max_size=3),
        "queue": json_values | fuzz_queue,
        "retry": json_values | st.integers(-3, 30),
        "reserve_for": json_values | st.integers(-5, 90_000),
        "at": json_values | st.just("2030-01-02T03:04:05Z"),
        "custom": json_values,
        "priority": json_values,
        "colour": json_values,
    },
)

bodies = st.one_of(
    json_values,
    job_fields,
    st.lists(job_fields, max_size=3),
    st.fixed_dictionaries(
        {},
        optional={
            "jid": json_values | st.text(max_size=10),
            "wid": json_values | st.just("fuzz-worker"),
            "errtype": json_values,
            "message": json_values,
            "backtrace": json_values,
            "current_state": json_values | st.sampled_from(["quiet", "terminate"]),
            "cmd": json_values
            | st.sampled_from(["clear", "kill", "discard", "requeue"]),
            "target": json_values | st.sampled_from(["retries", "scheduled", "dead"]),
            "filter": json_values,
        },
    ),
)


def _dump(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False).encode()


lines = st.one_of(
    st.builds(
        lambda verb, body: verb.encode() + b" " + _dump(body),
        st.sampled_from(COMMANDS + ("FROB", "push", "")),
        bodies,
    ),
    st.sampled_from(COMMANDS + ("END",)).map(str.encode),
    st.builds(
        lambda sub, names: b"QUEUE " + sub.encode() + b" " + " ".join(names).encode(),
        st.sampled_from(["PAUSE", "RESUME", "REMOVE", "LATENCY", "FROB", "latency"]),
        st.lists(
            fuzz_queue | st.text(max_size=6).filter(lambda t: "*" not in t),
            max_size=3,
        ),
    ),
    st.builds(
        lambda verb, junk: verb.encode() + b" " + junk,
        st.sampled_from(COMMANDS),
        st.binary(max_size=40),
    ),
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
    st.text(max_size=30).map(lambda t: t.replace("\n", "").encode("utf-8")),
    st.integers(MAX_LINE - 16, MAX_LINE + 64).map(
        lambda n: b"PUSH " + b'"' + b"x" * max(0, n - 7) + b'"'
    ),
    st.integers(1, 5000).map(lambda d: b"PUSH " + b"[" * d + b"]" * d),
    st.integers(1, 3000).map(
        lambda d: (
            b'PUSH {"jid":"deepdeep","jobtype":"t","args":' + b"[" * d + b"]" * d + b"}"
        )
    ),
)


class FuzzFaktoryTests(SynchronousTestCase):
    """
    Generated input against the Faktory listener of a real server, with a
    canary worker running alongside.
    """

    def setUp(self) -> None:
        self.server = server()
        self.log_start = len(self.server.full_log())
        self.canary = Canary(self.server.port)
        self.canary.start()
        wait_for(lambda: self.canary.rounds > 0 or self.canary.error, 20)

    def tearDown(self) -> None:
        rounds = self.canary.rounds
        wait_for(
            lambda: self.canary.rounds > rounds + 3 or self.canary.error,
            20,
            "the canary stalled",
        )
        self.canary.stop()
        self.assertIsNone(self.canary.error, "the well-behaved worker failed")
        self.assertLess(self.canary.slowest, 5.0, "the well-behaved worker stalled")
        self.assertTrue(self.server.running(), "the server died")
        log = self.server.full_log()[self.log_start :]
        for bad in ("Traceback", "Unhandled", "critical", "internal error"):
            self.assertNotIn(bad, log, log[-3000:])

    @given(st.binary(max_size=400), st.booleans())
    def test_random_bytes(self, data: bytes, hello: bool) -> None:
        """
        Any bytes at all, before or after HELLO.
        """
        exchange(self, data, hello)

    @given(st.lists(lines, min_size=1, max_size=8), st.booleans())
    def test_lines(self, batch: list[bytes], hello: bool) -> None:
        """
        Sequences of requests: known and unknown commands in any order,
        payloads of every JSON shape, bad JSON, invalid UTF-8, lines over
        the limit, deep nesting.
        """
        exchange(self, b"\r\n".join(batch), hello)

    def test_examples(self) -> None:
        """
        The cases docs/faktory.rst names, spelled out.
        """
        cases = [
            (b"PUSH {}", False, ["-"]),
            (b"HELLO {", False, ["-"]),
            (b'HELLO {"v":"2"}', False, ["-"]),
            (b"PUSH {", True, ["+", "-", "$"]),
            (b'PUSH {"jid":"short","jobtype":"t","args":[]}', True, ["+", "-", "$"]),
            (b'PUSH {"jid":"12345678","jobtype":"t"}', True, ["+", "-", "$"]),
            (b"PUSH " + b"[" * 10_000 + b"]" * 10_000, True, ["+", "-"]),
            (b"FLUSH", True, ["+", "-", "$"]),
            (b"BATCH NEW {}", True, ["+", "$", "$"]),
            (b"BATCH NEW []", True, ["+", "-", "$"]),
            (b"BATCH STATUS nope", True, ["+", "-", "$"]),
            (b"BATCH COMMIT", True, ["+", "-", "$"]),
            (b"FETCH", True, ["+", "-", "$"]),
            (b"FETCH bad/name", True, ["+", "-", "$"]),
            (b"FETCH fz-empty", True, ["+", "$", "$"]),
            (b"QUEUE LATENCY *", True, ["+", "-", "$"]),
            (b"QUEUE LATENCY fz-none", True, ["+", "$", "$"]),
            (b"MUTATE {}", True, ["+", "-", "$"]),
            (b'BEAT {"wid":"someone-else"}', True, ["+", "-", "$"]),
            (b'BEAT {"wid":"fuzz-worker"}', True, ["+", "+", "$"]),
            (b'ACK {"jid":"nothing-here"}', True, ["+", "+", "$"]),
            (b'FAIL {"jid":"nothing-here"}', True, ["+", "-", "$"]),
            (b"FROB", True, ["+", "-", "$"]),
            (b"END", True, ["+"]),
        ]
        for data, hello, want in cases:
            self.assertEqual(exchange(self, data, hello), want, data[:60])

    def test_flood_and_pipelined_fetches(self) -> None:
        """
        3,000 pipelined PUSHes written at once are all answered, in order
        (the server stops reading while 1,000 replies are owed, and goes
        on); two pipelined FETCHes are served one after the other, each
        with one job.
        """
        session = Session(timeout=60)
        self.addCleanup(session.close)
        session.send(HELLO)
        self.assertEqual(session.reply(), ("+", "OK"))
        queue = "fz-flood" + uuid.uuid4().hex[:6]
        pushes = b"".join(
            b'PUSH {"jid":"flood-%s-%d","jobtype":"t","args":[],"queue":"%s"}\r\n'
            % (queue.encode(), n, queue.encode())
            for n in range(3000)
        )
        writer = threading.Thread(target=session.send, args=(pushes,))
        writer.start()
        for _ in range(3000):
            self.assertEqual(session.reply(), ("+", "OK"))
        writer.join(30)
        session.send(f"FETCH {queue}\r\nFETCH {queue}\r\n".encode())
        first = session.reply()
        second = session.reply()
        self.assertEqual(first[0], "$")
        self.assertEqual(second[0], "$")
        self.assertEqual(
            [first[1]["jid"], second[1]["jid"]],
            [f"flood-{queue}-0", f"flood-{queue}-1"],
        )
