"""
Checks on JSON that clients send, which the JSON decoder lets through but
the rest of the server cannot take: strings that are not valid Unicode
(lone UTF-16 surrogates written as C{\\ud800} escapes, which Redis cannot
be sent) and values nested deeper than the server reads back without
depending on Python's recursion limit.

Every front end decodes a frame or body in one place, with L{decode_json},
and calls L{lone_surrogate} there; job and result validation calls
L{too_deep}.  Pure: no I/O.  Both checks are iterative, whatever the
input's depth.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

#: The most levels of arrays and objects in a job's C{args} or C{meta}, an
#: C{ACK}'s C{result} or a C{FAIL}'s C{error} (docs/protocol.rst, "Limits").
MAX_NESTING = 64

# A value read back from Redis deeper than this (stored before the limit
# existed) is shown as its JSON text instead of being decoded: the error
# record adds a couple of levels to what a worker sent.
READ_NESTING = MAX_NESTING + 8

#: The most levels a frame or body may nest at all: deeper ones are refused
#: before they are decoded, so that decoding never meets the recursion
#: limit, however deep the stack it runs on.
MAX_DECODE_NESTING = 512

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_BYTES_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BYTES_BRACKET = re.compile(rb"[\[\]{}]")


def may_hold_surrogates(data: bytes | str) -> bool:
    """
    Whether the raw JSON text may hold a lone surrogate: only a C{\\u}
    escape can write one (UTF-8 cannot encode surrogates), so text without
    any needs no walk.
    """
    if isinstance(data, str):
        return "\\u" in data
    return b"\\u" in data


def _path(trail: Any) -> str:
    parts: list[Any] = []
    while trail is not None:
        part, trail = trail
        parts.append(part)
    out = ""
    for part in reversed(parts):
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += "." + part
        else:
            out = part
    return out or "body"


def _bad(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _printable(key: str) -> str:
    # A path names a bad key by its valid part: the message must encode.
    return key.encode("utf-8", "replace").decode("utf-8")[:64]


def lone_surrogate(value: Any) -> str | None:
    """
    The path (C{args[2].name}, C{worker}, C{[1].meta}) of the first string
    or object key in a decoded JSON value that is not valid Unicode, or
    L{None} when every one is.
    """
    # Each entry keeps its path as a linked trail (key, parent's trail):
    # constant work per value, whatever the depth.
    stack: list[tuple[Any, Any]] = [(value, None)]
    while stack:
        item, trail = stack.pop()
        if isinstance(item, str):
            if _bad(item):
                return _path(trail)
        elif isinstance(item, dict):
            for key, member in reversed(list(item.items())):
                if _bad(key):
                    return _path((_printable(key), trail))
                stack.append((member, (key, trail)))
        elif isinstance(item, list):
            for index in range(len(item) - 1, -1, -1):
                stack.append((item[index], (index, trail)))
    return None


def too_deep(text: str | bytes, limit: int = MAX_NESTING) -> bool:
    """
    Whether the JSON text C{text} nests arrays and objects more than
    C{limit} levels deep (brackets inside strings do not count).
    """
    if isinstance(text, bytes):
        if text.count(b"[") + text.count(b"{") <= limit:
            return False
        brackets = [
            chr(b[0]) for b in _BYTES_BRACKET.findall(_BYTES_STRING.sub(b"", text))
        ]
    else:
        if text.count("[") + text.count("{") <= limit:
            return False
        brackets = _BRACKET.findall(_STRING.sub("", text))
    depth = 0
    for bracket in brackets:
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


_msgspec_decode = msgspec.json.Decoder().decode


def decode_json(data: bytes | str) -> Any:
    """
    C{json.loads(data)}: the same value, or the same exception.

    msgspec decodes in C, several times faster than the json module (a
    push frame: 0.5 against 5 us); where it refuses a text (malformed,
    C{NaN}, numbers beyond a double, lone surrogates, other encodings
    than UTF-8), the json module decides, so what is accepted and every
    error message are as they were (C{tests/test_json_checks.py}).
    """
    try:
        return _msgspec_decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return json.loads(data)
