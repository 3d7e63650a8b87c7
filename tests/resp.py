"""
The tests' one reader and writer of RESP, Redis's wire protocol, for the
blocking Redis clients the tests use to look at what the server stored
(L{tests.ledger.Resp}, L{tests.test_client.RedisReader},
L{tests.test_sentinel}'s commands to single nodes).
"""

from __future__ import annotations

from typing import Any, BinaryIO, Iterable, Sequence


class RespError(RuntimeError):
    """
    An error reply (C{-ERR ...}) from Redis.
    """


def encode(command: Sequence[Any]) -> bytes:
    """
    One command as a RESP array of bulk strings (C{str()} of each value
    that is not bytes).
    """
    out = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def encode_all(commands: Iterable[Sequence[Any]]) -> bytes:
    """
    Several commands, to be sent in one write.
    """
    return b"".join(encode(c) for c in commands)


def read_reply(reader: BinaryIO, errors_as_values: bool = False) -> Any:
    """
    Read one reply: simple strings and bulk strings as text, integers,
    arrays as lists, nil as None.

    @param errors_as_values: return an error reply as a L{RespError}
        instead of raising it (so one error does not hide the other
        replies of a pipeline).
    @raise ConnectionError: Redis closed the connection.
    """
    line = reader.readline()
    if not line:
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        error = RespError(rest.decode())
        if errors_as_values:
            return error
        raise error
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else reader.read(size + 2)[:-2].decode()
    if kind == b"*":
        size = int(rest)
        if size < 0:
            return None
        return [read_reply(reader, errors_as_values) for _ in range(size)]
    raise RespError(f"not RESP: {line!r}")
