"""
Hooks for the schemathesis run of tests/test_http_admin.py (named by
C{SCHEMATHESIS_HOOKS}): besides the bodies the OpenAPI description
yields, send them with lone UTF-16 surrogates (in a string, in a key) and
nested around the documented limits (64 levels for args, meta and
results; 512 for a whole body), and fail on any answer with code
C{internal}, whatever its status.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import strategies as st

HOW = ("as_is", "surrogate", "key", "deep", "deeper")


def _deep(depth: int) -> Any:
    value: Any = "x"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def _first_string(value: Any) -> bool:
    """
    Put a lone surrogate into the first string of C{value}, in place.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        pairs = (
            list(item.items())
            if isinstance(item, dict)
            else list(enumerate(item))
            if isinstance(item, list)
            else []
        )
        for key, member in pairs:
            if isinstance(member, str):
                item[key] = member + "\udfff"
                return True
            stack.append(member)
    return False


def hostile(body: Any, how: str) -> Any:
    """
    C{body}, made hostile in the way C{how} names.
    """
    import copy

    if not isinstance(body, (dict, list)):
        # Not a JSON document (raw bytes of another media type): as it is.
        return body
    body = copy.deepcopy(body)
    if how == "surrogate":
        if not _first_string(body):
            return {"type": "\ud800", "args": ["\udc00"]}
        return body
    if how == "key":
        if isinstance(body, dict):
            body["\ud800"] = 1
            return body
        return [{"\udc00": body}]
    if how in ("deep", "deeper"):
        depth = 70 if how == "deep" else 600
        if isinstance(body, dict):
            for field in ("args", "meta", "result", "error"):
                body[field] = {"m": _deep(depth)} if field == "meta" else _deep(depth)
            return body
        return [_deep(depth)]
    return body


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> Any:
    return st.sampled_from(HOW).map(lambda how: hostile(body, how))


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    if b'"code":"internal"' in response.content:
        raise AssertionError(
            f"{case.method} {case.formatted_path} answered code internal: "
            f"{response.content[:500]!r}"
        )
