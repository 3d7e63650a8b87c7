"""
Tests for L{procession.core.json_checks.decode_json}: msgspec's decoder
with the json module's answers.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from procession.core.json_checks import decode_json
from tests.test_job import json_values as job_json_values

# tests.test_job's JSON values, and integers beyond 64 bits among them
json_values = job_json_values | st.lists(
    st.integers(min_value=-(10**40), max_value=10**40) | job_json_values,
    max_size=4,
)


def outcome(decode: Any, data: bytes) -> tuple[str, Any]:
    """
    What C{decode(data)} gives: a value's repr (so that 0.0, -0.0 and 0
    differ, and types count), or the exception's type and message.
    """
    try:
        return ("value", repr(decode(data)))
    except Exception as e:
        return ("error", (type(e), str(e)))


class DecodeJSONTests(SynchronousTestCase):
    """
    L{decode_json} gives what C{json.loads} gives, value or exception.
    """

    @settings(max_examples=300)
    @given(json_values, st.booleans(), st.booleans())
    def test_values(self, value: Any, ascii: bool, spaced: bool) -> None:
        """
        Any JSON value, written compact or spaced, escaped or not.
        """
        separators = (", ", ": ") if spaced else (",", ":")
        data = json.dumps(value, ensure_ascii=ascii, separators=separators).encode(
            "utf-8", "surrogatepass"
        )
        self.assertEqual(outcome(decode_json, data), outcome(json.loads, data))

    @settings(max_examples=300)
    @given(st.binary(max_size=40) | st.text(max_size=20).map(str.encode))
    def test_any_bytes(self, data: bytes) -> None:
        """
        Any bytes: the same value, or the same exception and message.
        """
        self.assertEqual(outcome(decode_json, data), outcome(json.loads, data))

    def test_what_msgspec_refuses(self) -> None:
        """
        Texts msgspec refuses and the json module takes are taken as it
        takes them.
        """
        for data in (
            b"NaN",
            b"[Infinity, -Infinity]",
            b"1e400",
            b'"\\ud800"',
            b'"\xed\xa0\x80"',
            b"\xef\xbb\xbf{}",
            '{"a": 1}'.encode("utf-16"),
            b'{"a": 1, "a": 2}',
            b"123456789012345678901234567890",
        ):
            self.assertEqual(
                outcome(decode_json, data), outcome(json.loads, data), data
            )
        self.assertEqual(decode_json(b'{"a": 1, "a": 2}'), {"a": 2})
        with self.assertRaises(json.JSONDecodeError):
            decode_json(b"[1, 2,]")
