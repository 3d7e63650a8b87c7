"""
The Faktory job mapping (procession/tcp/faktory_job.py) and the password
hash, as pure functions: a round trip keeps every field, bad jobs are
refused with Faktory's messages.
"""

from __future__ import annotations

import hashlib
import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from procession.core.errors import InvalidJob, InvalidRequest
from procession.core.job import ClaimedJob
from procession.tcp import faktory_job
from procession.tcp.faktory import password_hash

NOW = 1_800_000_000_000

plain = st.one_of(
    st.none(), st.booleans(), st.integers(-1000, 1000), st.text(max_size=8)
)
faktory_jobs = st.fixed_dictionaries(
    {
        "jid": st.from_regex(r"[A-Za-z0-9_-]{8,24}", fullmatch=True),
        "jobtype": st.text(min_size=1, max_size=12),
        "args": st.lists(plain, max_size=4),
    },
    optional={
        "queue": st.from_regex(r"[a-z0-9_.-]{1,10}", fullmatch=True),
        "retry": st.integers(-1, 1200),
        "reserve_for": st.integers(1, 86400),
        "priority": st.integers(1, 9),
        "custom": st.dictionaries(
            st.from_regex(r"[a-z]{1,6}", fullmatch=True), plain, max_size=3
        ),
        "created_at": st.just("2026-01-02T03:04:05.123456Z"),
        "at": st.just("2030-01-02T03:04:05Z"),
    },
)


def fetched(job: dict[str, object], attempt: int = 1) -> dict[str, object]:
    """
    The Faktory job a worker fetches after C{job} was pushed, as the
    claim script's row would give it.
    """
    new = faktory_job.parse_job(job, NOW, 1 << 20, None)
    row = [new.id, new.wire(NOW), str(attempt), repr(new.timeout), str(NOW)]
    claimed = ClaimedJob.from_claim(row, new.queue, "lease@" + new.queue)
    return json.loads(claimed.payload)


class MappingTests(SynchronousTestCase):
    @given(faktory_jobs)
    def test_round_trip_keeps_every_field(self, job: dict[str, object]) -> None:
        """
        A job pushed by a Faktory client comes back to a Faktory worker
        with every field it had.
        """
        out = faktory_job.from_wire(fetched(job))
        self.assertEqual(out["jid"], job["jid"])
        self.assertEqual(out["jobtype"], job["jobtype"])
        self.assertEqual(out["args"], job["args"])
        self.assertEqual(out["queue"], job.get("queue", "default"))
        self.assertEqual(out["retry"], job.get("retry", 25))
        self.assertEqual(out["reserve_for"], job.get("reserve_for", 1800))
        self.assertEqual(out.get("custom"), job.get("custom") or None)
        self.assertEqual(out["priority"], job.get("priority", 0))
        if "created_at" in job:
            self.assertEqual(out["created_at"], job["created_at"])
        self.assertEqual(out.get("at"), job.get("at"))
        self.assertNotIn("failure", out)

    def test_native_fields(self) -> None:
        """
        What a native worker sees of a Faktory job.
        """
        wire = fetched({"jid": "abcdefgh", "jobtype": "t", "args": [1], "retry": 0})
        self.assertEqual(wire["max_attempts"], 1)
        self.assertEqual(wire["timeout"], 1800)
        self.assertEqual(wire["meta"], {"_faktory": {"retry": 0}})
        wire = fetched(
            {"jid": "abcdefgh", "jobtype": "t", "args": [], "custom": {"k": 1}}
        )
        self.assertEqual(wire["max_attempts"], 26)
        self.assertEqual(wire["meta"], {"k": 1})

    def test_failure(self) -> None:
        """
        A job that failed before carries Faktory's failure member, from
        its newest error.
        """
        job = {"jid": "abcdefgh", "jobtype": "t", "args": [], "retry": 3}
        error = {
            "type": "ValueError",
            "message": "no",
            "backtrace": ["a", "b"],
            "at": NOW,
        }
        out = faktory_job.from_wire(fetched(job, attempt=3), error)
        self.assertEqual(
            out["failure"],
            {
                "retry_count": 1,
                "remaining": 1,
                "failed_at": "2027-01-15T08:00:00.000Z",
                "message": "no",
                "errtype": "ValueError",
                "backtrace": ["a", "b"],
            },
        )

    def test_refused_as_faktory_refuses(self) -> None:
        """
        Faktory's checks, with its messages; unknown fields are ignored.
        """
        cases = [
            ({"jid": "short", "jobtype": "t", "args": []}, "jid"),
            ({"jid": "abcdefgh", "args": []}, "jobtype"),
            ({"jid": "abcdefgh", "jobtype": "t"}, "args"),
            ({"jid": "abcdefgh", "jobtype": "t", "args": {}}, "args"),
            (
                {"jid": "abcdefgh", "jobtype": "t", "args": [], "reserve_for": 86401},
                "reserve_for",
            ),
            ({"jid": "abcdefgh", "jobtype": "t", "args": [], "at": "soon"}, "at"),
            ({"jid": "abcdefgh", "jobtype": "t", "args": [], "retry": "x"}, "retry"),
            ([], None),
        ]
        for job, field in cases:
            with self.assertRaises(InvalidJob) as caught:
                faktory_job.parse_job(job, NOW, 1 << 20, None)
            self.assertEqual(caught.exception.details.get("field"), field, job)
        self.assertEqual(
            faktory_job.parse_job(
                {"jid": "abcdefgh", "jobtype": "t", "args": [], "colour": "red"},
                NOW,
                1 << 20,
                None,
            ).id,
            "abcdefgh",
        )

    def test_fail_body_trimmed(self) -> None:
        """
        FAIL's fields are trimmed as Faktory trims them.
        """
        jid, text = faktory_job.failure_record(
            {
                "jid": "abcdefgh",
                "errtype": "E" * 500,
                "message": " " + "m" * 5000,
                "backtrace": [f"line {n}" for n in range(80)],
            },
            "w",
            NOW,
        )
        error = json.loads(text)
        self.assertEqual(jid, "abcdefgh")
        self.assertEqual(len(error["type"]), 100)
        self.assertEqual(len(error["message"]), 1000)
        self.assertEqual(len(error["backtrace"]), 50)
        _, text = faktory_job.failure_record({"jid": "abcdefgh"}, "w", NOW)
        self.assertEqual(json.loads(text)["type"], "unknown")
        with self.assertRaises(InvalidRequest):
            faktory_job.failure_record({"message": "x"}, "w", NOW)


class PasswordTests(SynchronousTestCase):
    def test_rounds(self) -> None:
        """
        One round is SHA-256 of password and salt; each more round hashes
        the digest again (as Faktory's server.go and the clients do).
        """
        one = hashlib.sha256(b"secretsalt").digest()
        self.assertEqual(password_hash("secret", "salt", 1), one.hex())
        self.assertEqual(
            password_hash("secret", "salt", 3),
            hashlib.sha256(hashlib.sha256(one).digest()).hexdigest(),
        )
