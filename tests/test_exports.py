"""
The public names of L{procession.client}, pinned (as Klein's
test_exports does): an application imports these, so one that goes or
changes meaning breaks it.  Adding a name means adding it here too.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

import procession.client
from procession.core import errors

PINNED = {
    "BadFrame",
    "Batch",
    "BatchExists",
    "BatchNotFound",
    "BatchNotOpen",
    "Client",
    "Connection",
    "ConnectionClosed",
    "ConnectionFailed",
    "FrameTooLarge",
    "IllegalState",
    "InvalidJob",
    "InvalidRequest",
    "JobCancelled",
    "JobFailed",
    "JobTooLarge",
    "LeaseLost",
    "NotFound",
    "NotHeld",
    "OutOfOrder",
    "PeriodicNotFound",
    "Pipeline",
    "ProcessionError",
    "ProtocolViolation",
    "Pushed",
    "ShuttingDown",
    "StoreUnavailable",
    "TooManyConnections",
    "Unauthorized",
    "UnknownVerb",
    "WaitTimeout",
    "error_from_body",
    "make_job",
    "resolve_address",
}


class ExportTests(SynchronousTestCase):
    def test_pinned(self) -> None:
        """
        C{__all__} is the pinned list, and every name in it exists.
        """
        self.assertEqual(set(procession.client.__all__), PINNED)
        for name in PINNED:
            self.assertTrue(hasattr(procession.client, name), name)

    def test_one_error_hierarchy(self) -> None:
        """
        The client's errors are the server's classes (two under the names
        the client has always used), so one code maps to one class.
        """
        client = procession.client
        self.assertIs(client.ProcessionError, errors.ProcessionError)
        self.assertIs(client.Unauthorized, errors.NotAuthenticated)
        self.assertIs(client.NotFound, errors.JobNotFound)
        for name in PINNED:
            value = getattr(client, name)
            if isinstance(value, type) and issubclass(value, Exception):
                if issubclass(value, errors.ProcessionError):
                    self.assertIs(errors.ERRORS.get(value.code, value), value, name)
        error = client.error_from_body(
            {"code": "not_found", "message": "no job 'x'", "id": "x"}
        )
        self.assertIsInstance(error, client.NotFound)
        self.assertEqual(
            (error.code, error.message, error.details),
            ("not_found", "no job 'x'", {"id": "x"}),
        )
        self.assertEqual(str(error), "not_found: no job 'x'")
