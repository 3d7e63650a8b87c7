"""
Tests for L{procession.core.job}: validation of submissions and the job's forms.
"""

from __future__ import annotations

import json

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from procession.core.errors import InvalidJob, InvalidRequest, JobTooLarge
from procession.core.job import (
    MAX_BATCH,
    ClaimedJob,
    encode_result,
    failure_reply,
    format_time,
    parse_batch,
    parse_extend_seconds,
    parse_failure,
    parse_queues,
    parse_submission,
    parse_time,
    parse_worker_name,
)

NOW = 1_800_000_000_000
MAX = 1 << 20

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
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
            (
                job.queue,
                job.args,
                job.priority,
                job.max_attempts,
                job.timeout,
                job.meta,
                job.run_at,
            ),
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
        self.assertEqual(
            self.field_error(delay=1, run_at="2026-01-01T00:00:00Z"), "run_at"
        )
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
        self.assertEqual(
            parse_submission({"type": "t", "delay": 1.5}, NOW, 1 << 20).run_at,
            NOW + 1500,
        )
        job = parse_submission(
            {"type": "t", "run_at": "2027-01-15T08:00:00Z"}, NOW, 1 << 20
        )
        self.assertEqual(format_time(job.run_at), "2027-01-15T08:00:00.000Z")
        job = parse_submission(
            {"type": "t", "run_at": "2027-01-15T09:00:00+01:00"}, NOW, 1 << 20
        )
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


class JSONStringTests(SynchronousTestCase):
    @given(st.text() | st.text(alphabet=st.characters(max_codepoint=0x7F)))
    def test_string_is_json_dumps(self, text: str) -> None:
        """
        The JOB frame's strings (ids, types, queues) are written as
        C{json.dumps(text, ensure_ascii=False)} writes them.
        """
        from procession.core.job import _string

        self.assertEqual(_string(text), json.dumps(text, ensure_ascii=False))


class ClaimedJobTests(SynchronousTestCase):
    def test_payload_is_json(self) -> None:
        job = parse_submission(
            {
                "type": 'ty"pé',
                "args": {"a": [1, 2]},
                "priority": -3,
                "meta": {"m": 1},
                "id": "i",
            },
            NOW,
            MAX,
        )
        row = ["i", job.wire(NOW - 5), "2", "300.0", str(NOW)]
        claimed = ClaimedJob.from_claim(row, "default", "tok@default")
        payload = json.loads(claimed.payload)
        self.assertEqual(
            payload,
            {
                "id": "i",
                "type": 'ty"pé',
                "queue": "default",
                "args": {"a": [1, 2]},
                "priority": -3,
                "attempt": 2,
                "max_attempts": 25,
                "timeout": 300,
                "created_at": format_time(NOW - 5),
                "enqueued_at": format_time(NOW),
                "lease": "tok@default",
                "meta": {"m": 1},
            },
        )
        self.assertEqual(
            (claimed.id, claimed.queue, claimed.attempt), ("i", "default", 2)
        )

    @given(
        st.text(min_size=1, max_size=20),
        json_values,
        st.one_of(
            st.none(), st.dictionaries(st.text(max_size=8), json_values, max_size=3)
        ),
        st.floats(min_value=0.001, max_value=86400),
        st.integers(min_value=1, max_value=1000),
    )
    def test_payload_round_trip(self, jtype, args, meta, timeout, attempt) -> None:
        """
        Whatever was submitted, the JOB frame's JSON gives it back.
        """
        submitted = {"type": jtype, "args": args, "timeout": timeout}
        if meta is not None:
            submitted["meta"] = meta
        try:
            job = parse_submission(submitted, NOW, MAX)
        except InvalidJob:
            return
        row = [job.id, job.wire(NOW), str(attempt), repr(job.timeout), str(NOW + 1)]
        payload = json.loads(
            ClaimedJob.from_claim(row, job.queue, "x@" + job.queue).payload
        )
        self.assertEqual(
            (
                payload["type"],
                payload["args"],
                payload.get("meta"),
                payload["timeout"],
                payload["attempt"],
            ),
            (jtype, json.loads(job.args), meta, job.timeout, attempt),
        )

    def test_timeout(self) -> None:
        job = parse_submission({"type": "t", "timeout": 0.5}, NOW, MAX)
        self.assertIn('"timeout":0.5,', job.wire(NOW))
        row = [job.id, job.wire(NOW), "1", "0.5", str(NOW)]
        claimed = ClaimedJob.from_claim(row, "default", "l@default")
        self.assertEqual(claimed.timeout, 0.5)
        self.assertNotIn("meta", json.loads(claimed.payload))


class BatchTests(SynchronousTestCase):
    def test_batch(self) -> None:
        jobs = parse_batch([{"type": "a", "id": "x"}, {"type": "b"}], NOW, 1 << 20)
        self.assertEqual([j.type for j in jobs], ["a", "b"])

    def test_names_the_bad_job(self) -> None:
        error = self.assertRaises(
            InvalidJob,
            parse_batch,
            [{"type": "a"}, {"type": "b", "queue": "no way"}],
            NOW,
            1 << 20,
        )
        self.assertEqual((error.details["index"], error.details["field"]), (1, "queue"))
        self.assertTrue(error.message.startswith("job 1: "))
        error = self.assertRaises(
            JobTooLarge, parse_batch, [{"type": "a", "args": "x" * 2000}], NOW, 1000
        )
        self.assertEqual(error.details["index"], 0)

    def test_not_a_batch(self) -> None:
        for obj in ([], {}, None, "x", [{"type": "t"}] * (MAX_BATCH + 1)):
            self.assertRaises(InvalidRequest, parse_batch, obj, NOW, 1 << 20)


class WorkerRequestTests(SynchronousTestCase):
    """
    The checks the TCP protocol and the HTTP worker API share.
    """

    def test_queues(self) -> None:
        self.assertEqual(parse_queues(["high", "default"]), ("high", "default"))
        for obj in ([], ["a", "a"], ["a b"], [""], [1], "default", None, ["q"] * 101):
            error = self.assertRaises(InvalidRequest, parse_queues, obj)
            self.assertEqual(error.details["field"], "queues")

    def test_worker_name(self) -> None:
        self.assertEqual(parse_worker_name("w"), "w")
        for obj in ("", "x" * 129, None, 5):
            error = self.assertRaises(InvalidRequest, parse_worker_name, obj)
            self.assertEqual(error.details["field"], "worker")

    def test_result(self) -> None:
        self.assertEqual(encode_result(None), "")
        self.assertEqual(encode_result({"a": [1, "é"]}), '{"a":[1,"\\u00e9"]}')
        self.assertRaises(InvalidRequest, encode_result, float("nan"))

    def test_failure_defaults(self) -> None:
        report = parse_failure({}, "w#1", NOW)
        self.assertEqual((report.retry_in, report.retry), (None, True))
        self.assertEqual(
            json.loads(report.error),
            {
                "type": "Error",
                "message": "",
                "backtrace": [],
                "worker": "w#1",
                "at": NOW,
            },
        )

    def test_failure(self) -> None:
        report = parse_failure(
            {
                "error": {
                    "type": "Boom",
                    "message": "m" * 5000,
                    "backtrace": ["a", "b"],
                    "extra": 1,
                },
                "retry_in": 2.5,
                "retry": False,
            },
            "w",
            NOW,
        )
        self.assertEqual((report.retry_in, report.retry), (2.5, False))
        record = json.loads(report.error)
        self.assertEqual(
            (record["type"], len(record["message"]), record["backtrace"]),
            ("Boom", 4096, ["a", "b"]),
        )
        self.assertNotIn("extra", record)
        self.assertEqual(
            json.loads(parse_failure({"error": {"backtrace": "x"}}, "w", NOW).error)[
                "backtrace"
            ],
            [],
        )

    def test_failure_fields(self) -> None:
        for body, field in (
            ({"error": "x"}, "error"),
            ({"error": [1]}, "error"),
            ({"retry_in": -1}, "retry_in"),
            ({"retry_in": True}, "retry_in"),
            ({"retry_in": float("inf")}, "retry_in"),
            ({"retry_in": 366 * 86400}, "retry_in"),
            ({"retry": 0}, "retry"),
        ):
            error = self.assertRaises(InvalidRequest, parse_failure, body, "w", NOW)
            self.assertEqual(error.details["field"], field, body)

    @given(
        st.dictionaries(
            st.sampled_from(["error", "retry_in", "retry", "x"]),
            json_values,
            max_size=4,
        )
    )
    def test_arbitrary_failures_never_crash(self, body) -> None:
        try:
            report = parse_failure(body, "w", NOW)
        except InvalidRequest as e:
            self.assertIn(e.details["field"], ("error", "retry_in", "retry"))
        else:
            json.loads(report.error)

    def test_failure_reply(self) -> None:
        self.assertEqual(failure_reply("j", "dead", 0), {"id": "j", "state": "dead"})
        self.assertEqual(
            failure_reply("j", "retrying", NOW),
            {"id": "j", "state": "retrying", "run_at": format_time(NOW)},
        )

    def test_extend_seconds(self) -> None:
        self.assertEqual(parse_extend_seconds({"seconds": 30}), 30)
        self.assertEqual(parse_extend_seconds({"seconds": 0.5}), 0.5)
        for body in (
            {},
            {"seconds": 0},
            {"seconds": -1},
            {"seconds": "5"},
            {"seconds": True},
            {"seconds": 7 * 86400 + 1},
            {"seconds": float("nan")},
        ):
            error = self.assertRaises(InvalidRequest, parse_extend_seconds, body)
            self.assertEqual(error.details["field"], "seconds")
