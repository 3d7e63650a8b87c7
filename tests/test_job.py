"""
Tests for L{procession.job}: validation of submissions and the job's forms.
"""

from __future__ import annotations

import json

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from procession.errors import InvalidJob, JobTooLarge
from procession.job import (
    ClaimedJob,
    format_time,
    parse_submission,
    parse_time,
)

NOW = 1_800_000_000_000

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


class SubmissionTests(SynchronousTestCase):
    def field_error(self, **fields):
        fields.setdefault("type", "t")
        error = self.assertRaises(InvalidJob, parse_submission, fields, NOW, 1 << 20)
        return error.details["field"]

    def test_defaults(self) -> None:
        job = parse_submission({"type": "t"}, NOW, 1 << 20)
        self.assertEqual(
            (job.queue, job.args, job.priority, job.max_attempts, job.timeout, job.meta, job.run_at),
            ("default", "[]", 0, 25, 300.0, "", NOW),
        )
        self.assertEqual(len(job.id), 24)

    def test_each_bad_field_is_named(self) -> None:
        self.assertEqual(self.field_error(type=""), "type")
        self.assertEqual(self.field_error(type=3), "type")
        self.assertEqual(self.field_error(queue="a b"), "queue")
        self.assertEqual(self.field_error(queue="x" * 129), "queue")
        self.assertEqual(self.field_error(id=""), "id")
        self.assertEqual(self.field_error(id="a b"), "id")
        self.assertEqual(self.field_error(priority=1.5), "priority")
        self.assertEqual(self.field_error(priority=True), "priority")
        self.assertEqual(self.field_error(max_attempts=0), "max_attempts")
        self.assertEqual(self.field_error(timeout=0), "timeout")
        self.assertEqual(self.field_error(run_at="tomorrow"), "run_at")
        self.assertEqual(self.field_error(run_at="2026-01-01T00:00:00"), "run_at")
        self.assertEqual(self.field_error(delay=-1), "delay")
        self.assertEqual(self.field_error(delay=1, run_at="2026-01-01T00:00:00Z"), "run_at")
        self.assertEqual(self.field_error(meta=[1]), "meta")
        self.assertEqual(self.field_error(colour="red"), "colour")

    def test_not_an_object(self) -> None:
        self.assertRaises(InvalidJob, parse_submission, [], NOW, 1 << 20)

    def test_too_large(self) -> None:
        error = self.assertRaises(
            JobTooLarge, parse_submission, {"type": "t", "args": "x" * 2000}, NOW, 1000
        )
        self.assertEqual(error.code, "job_too_large")

    def test_schedule(self) -> None:
        self.assertEqual(parse_submission({"type": "t", "delay": 1.5}, NOW, 1 << 20).run_at, NOW + 1500)
        job = parse_submission({"type": "t", "run_at": "2027-01-15T08:00:00Z"}, NOW, 1 << 20)
        self.assertEqual(format_time(job.run_at), "2027-01-15T08:00:00.000Z")
        job = parse_submission({"type": "t", "run_at": "2027-01-15T09:00:00+01:00"}, NOW, 1 << 20)
        self.assertEqual(format_time(job.run_at), "2027-01-15T08:00:00.000Z")

    @given(json_values)
    def test_args_round_trip(self, args) -> None:
        job = parse_submission({"type": "t", "args": args}, NOW, 1 << 30)
        self.assertEqual(json.loads(job.args), args)

    @given(st.dictionaries(st.text(max_size=20), json_values, max_size=12))
    def test_arbitrary_objects_never_crash(self, obj) -> None:
        try:
            parse_submission(obj, NOW, 1 << 20)
        except InvalidJob as e:
            self.assertIn("field", e.details)

    @given(st.integers(min_value=0, max_value=4_000_000_000_000))
    def test_time_round_trip(self, ms) -> None:
        self.assertEqual(parse_time(format_time(ms)), ms)


class ClaimedJobTests(SynchronousTestCase):
    def test_payload_is_json(self) -> None:
        row = ["i", 'ty"pe', "q", '{"a":[1,2]}', "-3", "2", "25", "300", '{"m":1}', str(NOW), str(NOW)]
        job = ClaimedJob.from_claim(row, "lease")
        payload = json.loads(job.payload)
        self.assertEqual(payload["type"], 'ty"pe')
        self.assertEqual(payload["args"], {"a": [1, 2]})
        self.assertEqual((payload["priority"], payload["attempt"], payload["timeout"]), (-3, 2, 300))
        self.assertEqual(payload["meta"], {"m": 1})
        self.assertEqual(payload["lease"], "lease")
        self.assertEqual(job.attempt, 2)
