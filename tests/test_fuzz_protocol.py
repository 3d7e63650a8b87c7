"""
The TCP protocol under generated input: hypothesis throws random bytes,
invalid UTF-8, lines over the frame limit, deeply nested and huge JSON,
wrong types and verbs out of order at a real server (one C{twist
procession} child process for the module), over blocking sockets.

Each example is checked against a small model of docs/protocol.rst: every
frame gets exactly one reply, in order; the replies that the rules fix
(C{frame_too_large}, C{unknown_verb}, C{out_of_order}, C{bad_frame}, C{PING}
and C{BYE}) are the documented ones; every other reply is C{OK} or an
C{ERR} with a documented code (never C{internal}); and the server closes
the connection exactly when the documentation says.  Meanwhile a
well-behaved worker (L{Canary}) pushes and runs jobs on its own connection,
and must never fail nor stall; and the server's log must show no
unexpected error.
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

from procession.core.json_checks import MAX_DECODE_NESTING, lone_surrogate, too_deep
from tests.ledger import REPO, Canary, Procession, wait_for
from tests.redis import shared_redis

MAX_FRAME = 8192
MAX_JOB_SIZE = 2048
VERBS = ("HELLO", "PING", "BYE", "PUSH", "PUSHB", "READY", "ACK", "FAIL", "EXTEND")
BEFORE_HELLO = ("HELLO", "PING", "BYE")
# The server closes the connection after these.
CLOSING = {"frame_too_large", "unauthorized", "too_many_connections"}


def documented_codes() -> set[str]:
    """
    The error codes of docs/protocol.rst's table.
    """
    with open(f"{REPO}/docs/protocol.rst", encoding="utf-8") as f:
        text = f.read()
    table = text.split("=\n``bad_frame``", 1)[1].split("\n=", 1)[0]
    return {"bad_frame"} | {
        line.split("``")[1] for line in table.splitlines() if line.startswith("``")
    }


CODES = documented_codes()

_server: Procession | None = None


def server() -> Procession:
    """
    The module's server, started on first use and killed at exit.
    """
    global _server
    if _server is None or not _server.running():
        _server = Procession(
            None,
            "--max-frame", str(MAX_FRAME),
            "--max-job-size", str(MAX_JOB_SIZE),
            redis=shared_redis(),
            namespace="z" + uuid.uuid4().hex[:10],
        )  # fmt: skip
        atexit.register(_server.cleanup)
        _server.serving()
    return _server


class Closed(Exception):
    """
    The server closed the connection (FIN or reset).
    """


class Session:
    """
    A raw connection: bytes out, frames in.
    """

    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        self.buffer = b""
        self.reset = False
        verb, _ = self.frame()
        assert verb == "HI", verb

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            # the server may close before it has read everything
            pass

    def line(self) -> bytes:
        while b"\n" not in self.buffer:
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                self.reset = True
                data = b""
            if not data:
                raise Closed()
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def frame(self) -> tuple[str, Any]:
        line = self.line()
        verb, _, body = line.decode("utf-8").partition(" ")
        return verb, (json.loads(body) if body else None)

    def reply(self) -> tuple[str, Any]:
        """
        The next reply, skipping the server's own frames.
        """
        while True:
            verb, body = self.frame()
            if verb not in ("JOB", "QUIET"):
                return verb, body

    def closes(self) -> bool:
        """
        Whether the server closes the connection soon.
        """
        try:
            while True:
                self.line()
        except Closed:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def expected(frame: bytes, hello: bool) -> str:
    """
    What docs/protocol.rst says the reply to C{frame} is: an error code,
    C{"OK"}, C{"BYE"} (C{OK}, then the server closes), or C{"?"} (C{OK} or
    any documented error).
    """
    if len(frame) > MAX_FRAME:
        return "frame_too_large"
    line = frame[:-1] if frame.endswith(b"\r") else frame
    verb_bytes, _, body = line.partition(b" ")
    try:
        verb = verb_bytes.decode("ascii")
    except UnicodeDecodeError:
        return "unknown_verb"
    if verb not in VERBS:
        return "unknown_verb" if line.strip() else "bad_frame"
    if not hello and verb not in BEFORE_HELLO:
        return "out_of_order"
    if body:
        # Deeper than the documented 512 levels: refused before decoding.
        if too_deep(body, MAX_DECODE_NESTING):
            return "bad_frame"
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            return "bad_frame"
        # A string (or key) that is not valid Unicode: a lone surrogate.
        if lone_surrogate(value) is not None:
            return "bad_frame"
    if verb == "PING":
        return "OK"
    if verb == "BYE":
        return "BYE"
    return "?"


def exchange(test: SynchronousTestCase, data: bytes, hello: bool = False) -> list[str]:
    """
    Send C{data} (after a C{HELLO} if C{hello}) and a final C{PING} in one
    write, and check every reply against L{expected}; the replies' kinds.
    """
    session = Session(server().port)
    try:
        prefix = b'HELLO {"worker":"fuzz"}\n' if hello else b""
        payload = prefix + data + b"\nPING\n"
        frames = payload.split(b"\n")[:-1]
        session.send(payload)
        said_hello = False
        kinds: list[str] = []
        for index, frame in enumerate(frames):
            want = expected(frame, said_hello)
            try:
                verb, body = session.reply()
            except Closed:
                # Only a closing error may go missing: the server closed on
                # unread input, and the kernel reset the connection.
                test.assertTrue(
                    session.reset and want in CLOSING,
                    f"closed before answering frame {index} {frame[:80]!r} (want {want})",
                )
                return kinds
            what = f"frame {index} {frame[:120]!r} -> {verb} {body!r}"
            test.assertIn(verb, ("OK", "ERR"), what)
            if verb == "ERR":
                test.assertIsInstance(body, dict, what)
                test.assertIn(body.get("code"), CODES, what)
                test.assertIsInstance(body.get("message"), str, what)
                code = body["code"]
                if want not in ("?",):
                    test.assertEqual(code, want, what)
                kinds.append(code)
                if code in CLOSING:
                    test.assertTrue(session.closes(), f"not closed after {what}")
                    return kinds
            else:
                test.assertIn(want, ("OK", "BYE", "?"), what)
                kinds.append("OK")
                if frame.startswith(b"HELLO"):
                    said_hello = True
                if want == "BYE":
                    test.assertTrue(session.closes(), f"not closed after {what}")
                    return kinds
        return kinds
    finally:
        session.close()


# -- strategies

# Strings of any characters, lone UTF-16 surrogates among them (json.dumps
# writes those as escapes such as \udfff, which a client may send).
strings = st.text(max_size=20) | st.text(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(),
    max_size=6,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | strings,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(strings.map(lambda t: t[:8]), children, max_size=4)
    ),
    max_leaves=12,
)


def deep(depth: int, inner: Any = None) -> Any:
    """
    A value nested C{depth} levels deep, arrays and objects in turn.
    """
    value = inner
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


job_fields = st.fixed_dictionaries(
    {},
    optional={
        "type": json_values | st.text(max_size=10),
        "args": json_values
        | st.builds(deep, st.integers(60, 70))
        | st.builds(deep, st.integers(500, 520), strings),
        "queue": json_values | st.from_regex(r"[A-Za-z0-9_.:-]{1,12}", fullmatch=True),
        "id": json_values | st.text(max_size=12),
        "priority": json_values | st.integers(),
        "run_at": json_values | st.just("2030-01-02T03:04:05Z"),
        "delay": json_values | st.floats(allow_nan=False),
        "max_attempts": json_values | st.integers(),
        "timeout": json_values | st.floats(),
        "meta": json_values | st.builds(lambda d: {"m": deep(d)}, st.integers(60, 70)),
        "colour": json_values,
    },
)

request_bodies = st.one_of(
    json_values,
    job_fields,
    st.lists(job_fields, max_size=3),
    st.fixed_dictionaries(
        {},
        optional={
            "worker": json_values | st.text(max_size=10),
            "queues": json_values | st.lists(st.text(max_size=6), max_size=3),
            "credit": json_values | st.integers(-5, 20_000),
            "id": json_values,
            "seconds": json_values,
            "error": json_values,
            "retry": json_values,
            "retry_in": json_values,
            "result": json_values | st.builds(deep, st.integers(60, 70)),
        },
    ),
)


def _dump(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False).encode()


frames = st.one_of(
    # a verb, known or not, with a body of any shape
    st.builds(
        lambda verb, body: verb.encode() + b" " + _dump(body),
        st.sampled_from(VERBS + ("FROB", "ping", "")),
        request_bodies,
    ),
    st.sampled_from(VERBS).map(str.encode),
    # malformed JSON, invalid UTF-8, stray bytes
    st.builds(
        lambda verb, junk: verb.encode() + b" " + junk,
        st.sampled_from(VERBS),
        st.binary(max_size=40),
    ),
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
    st.text(max_size=30).map(lambda t: t.replace("\n", "").encode("utf-8")),
    # lines around the limit
    st.integers(MAX_FRAME - 16, MAX_FRAME + 64).map(
        lambda n: b"PUSH " + b'"' + b"x" * max(0, n - 7) + b'"'
    ),
    # deep nesting
    st.integers(1, 5000).map(lambda d: b"PUSH " + b"[" * d + b"]" * d),
    st.integers(1, 3000).map(
        lambda d: b'PUSH {"type":"t","args":' + b"[" * d + b"]" * d + b"}"
    ),
    # a job just over --max-job-size
    st.integers(MAX_JOB_SIZE - 40, MAX_JOB_SIZE + 40).map(
        lambda n: b'PUSH {"type":"t","args":"' + b"y" * n + b'"}'
    ),
)


class FuzzProtocolTests(SynchronousTestCase):
    """
    Generated input against the real server, with a canary worker running
    alongside.
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

    @given(st.lists(frames, min_size=1, max_size=8), st.booleans())
    def test_frames(self, lines: list[bytes], hello: bool) -> None:
        """
        Sequences of frames: known and unknown verbs in any order, bodies
        of every JSON shape (jobs with wrong types, unknown fields), bad
        JSON, invalid UTF-8, lines over the limit, deep nesting.
        """
        exchange(self, b"\n".join(lines), hello)

    def test_examples(self) -> None:
        """
        The cases the issue names, spelled out.
        """
        huge = b"PUSH " + b"[" * 10_000 + b"]" * 10_000
        big_job = b'PUSH {"type":"t","args":"' + b"y" * MAX_JOB_SIZE + b'"}'
        cases = [
            (b"\xff\xfe\xfd", False, ["unknown_verb", "OK"]),
            (b"PUSH \xff\xfe", True, ["OK", "bad_frame", "OK"]),
            (b'PUSH {"type": "t", "args": "\xe9"}', True, ["OK", "bad_frame", "OK"]),
            (b"PUSH {", True, ["OK", "bad_frame", "OK"]),
            (huge, True, ["OK", "frame_too_large"]),
            (b"PUSH " + b"[" * 3000 + b"]" * 3000, True, ["OK", "bad_frame", "OK"]),
            (b'PUSH {"type": 5}', True, ["OK", "invalid_job", "OK"]),
            (
                b'PUSH {"type": "t", "priority": "high"}',
                True,
                ["OK", "invalid_job", "OK"],
            ),
            (b'PUSHB {"type": "t"}', True, ["OK", "invalid_request", "OK"]),
            (b'READY {"credit": -1}', True, ["OK", "invalid_request", "OK"]),
            (b'ACK {"id": "nope"}', True, ["OK", "not_held", "OK"]),
            (b'ACK {"id": 5}', True, ["OK", "invalid_request", "OK"]),
            (b'PUSH {"type": "t"}', False, ["out_of_order", "OK"]),
            (b'HELLO {"worker": "w"}', True, ["OK", "out_of_order", "OK"]),
            (b'HELLO {"worker": ""}', False, ["invalid_request", "OK"]),
            (b"FROB", True, ["OK", "unknown_verb", "OK"]),
            (b"", True, ["OK", "bad_frame", "OK"]),
            (b"BYE", True, ["OK", "OK"]),
            (big_job, True, ["OK", "job_too_large", "OK"]),
            # Lone surrogates anywhere, and nesting around the limits.
            (b'HELLO {"worker":"\\udfffbad"}', False, ["bad_frame", "OK"]),
            (b'PUSH {"type":"t","args":["\\ud800"]}', True, ["OK", "bad_frame", "OK"]),
            (
                b'PUSH {"type":"t","meta":{"\\udc00":1}}',
                True,
                ["OK", "bad_frame", "OK"],
            ),
            (
                b'PUSHB [{"type":"t","queue":"a"},{"type":"\\ud800","queue":"b"}]',
                True,
                ["OK", "bad_frame", "OK"],
            ),
            (b'ACK {"id":"x","result":"\\udfff"}', True, ["OK", "bad_frame", "OK"]),
            (
                b'PUSH {"type":"t","args":' + b"[" * 65 + b"]" * 65 + b"}",
                True,
                ["OK", "invalid_job", "OK"],
            ),
            (
                b'PUSH {"type":"t","args":' + b"[" * 960 + b"]" * 960 + b"}",
                True,
                ["OK", "bad_frame", "OK"],
            ),
            (b'PUSH {"type":"t","args":["\\ud83d\\ude00"]}', True, ["OK", "OK", "OK"]),
        ]
        for data, hello, want in cases:
            self.assertEqual(exchange(self, data, hello), want, data[:60])

    def test_flood(self) -> None:
        """
        Floods of pipelined requests, written at once: 20,000 PINGs, then
        3,000 PUSHes; every one answered, in order, while the canary keeps
        going.
        """
        session = Session(self.server.port, timeout=60)
        self.addCleanup(session.close)
        session.send(b'HELLO {"worker":"flood"}\n')
        self.assertEqual(session.reply()[0], "OK")
        writer = threading.Thread(target=session.send, args=(b"PING\n" * 20_000,))
        writer.start()
        for _ in range(20_000):
            self.assertEqual(session.reply(), ("OK", None))
        writer.join(30)
        queue = "flood-" + uuid.uuid4().hex[:6]
        pushes = b"".join(
            b'PUSH {"type":"t","queue":"%s","id":"f%d"}\n' % (queue.encode(), n)
            for n in range(3000)
        )
        writer = threading.Thread(target=session.send, args=(pushes,))
        writer.start()
        for n in range(3000):
            verb, body = session.reply()
            self.assertEqual((verb, body["id"]), ("OK", f"f{n}"))
        writer.join(30)
