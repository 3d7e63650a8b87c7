"""
Tests for L{procession.tap}: options and listener descriptions.
"""

from __future__ import annotations

import os

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from procession.tap import Options, endpoint_description, is_local


class ListenerTests(SynchronousTestCase):
    def test_bare_port_is_loopback(self) -> None:
        self.assertEqual(endpoint_description("7000"), "tcp:7000:interface=127.0.0.1")
        self.assertEqual(endpoint_description("unix:/x"), "unix:/x")
        self.assertRaises(usage.UsageError, endpoint_description, "70000")

    def test_is_local(self) -> None:
        self.assertTrue(is_local("tcp:7000:interface=127.0.0.1"))
        self.assertTrue(is_local("tcp6:7000:interface=\\:\\:1"))
        self.assertTrue(is_local("unix:/tmp/s"))
        self.assertTrue(is_local("ssl:7443:privateKey=k:certKey=c:interface=127.0.0.2"))
        self.assertFalse(is_local("tcp:7000"))
        self.assertFalse(is_local("tcp:7000:interface=0.0.0.0"))
        self.assertFalse(is_local("ssl:7443:privateKey=k:certKey=c"))
        self.assertFalse(is_local("systemd:domain=INET:index=0"))


class OptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(["--redis", "redis://127.0.0.1:1/0", *args])
        return options

    def test_defaults_are_loopback(self) -> None:
        options = self.parse()
        self.assertEqual(options["tcp"], "tcp:7000:interface=127.0.0.1")
        self.assertEqual(options["http"], "tcp:8080:interface=127.0.0.1")

    def test_exposed_needs_token(self) -> None:
        self.patch(os, "environ", {})
        error = self.assertRaises(usage.UsageError, self.parse, "--tcp", "tcp:7000")
        self.assertIn("--insecure", str(error))
        self.assertTrue(self.parse("--tcp", "tcp:7000", "--insecure")["insecure"])
        self.assertEqual(self.parse("--tcp", "tcp:7000", "--token", "t")["token"], "t")

    def test_token_from_environment_and_file(self) -> None:
        self.patch(os, "environ", {"PROCESSION_TOKEN": "env"})
        self.assertEqual(self.parse()["token"], "env")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from-file\n")
        self.assertEqual(self.parse("--token-file", path)["token"], "from-file")

    def test_bad_values(self) -> None:
        self.assertRaises(usage.UsageError, self.parse, "--fsync", "never")
        self.assertRaises(usage.UsageError, self.parse, "--max-frame", "0")
        options = Options()
        self.assertRaises(usage.UsageError, options.parseOptions, ["--redis", "http://x"])
