"""
Tests for L{procession.server.tap}: options and listener descriptions.
"""

from __future__ import annotations

import os

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from procession.server.tap import Options, endpoint_description, is_local


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
        self.assertRaises(
            usage.UsageError, options.parseOptions, ["--redis", "http://x"]
        )


class ScalingOptionsTests(SynchronousTestCase):
    """
    The options of docs/scaling.rst: --processes, --server-timeout,
    --replicas-ack, sentinel:// URLs, and what a child of --processes is
    given.
    """

    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(["--redis", "redis://127.0.0.1:1/0", *args])
        return options

    def test_values(self) -> None:
        options = self.parse(
            "--processes", "3", "--server-timeout", "2.5", "--replicas-ack", "1"
        )
        self.assertEqual(
            (options["processes"], options["server-timeout"], options["replicas-ack"]),
            (3, 2.5, 1),
        )
        defaults = self.parse()
        self.assertEqual(
            (
                defaults["processes"],
                defaults["server-timeout"],
                defaults["replicas-ack"],
            ),
            (1, 10.0, 0),
        )
        for bad in (
            ["--processes", "0"],
            ["--server-timeout", "0"],
            ["--replicas-ack", "-1"],
            ["--inherit", "3"],
        ):
            self.assertRaises(usage.UsageError, self.parse, *bad)

    def test_sentinel_url(self) -> None:
        options = Options()
        options.parseOptions(["--redis", "sentinel://h1:26379,h2/main/1"])
        address = options["redis-address"]
        self.assertEqual(address.sentinels, (("h1", 26379), ("h2", 26379)))
        self.assertEqual((address.master, address.db), ("main", 1))
        self.assertRaises(
            usage.UsageError, Options().parseOptions, ["--redis", "sentinel://h1"]
        )

    def test_child_inherits(self) -> None:
        """
        A child gets the parent's options but not its listeners' sockets,
        Redis or secrets, which travel in its environment.
        """
        from procession.server.tap import child_arguments, child_environment

        self.patch(os, "environ", {"HOME": "/h"})
        options = self.parse(
            "--processes", "2", "--token", "s3cret", "--namespace", "ns",
            "--insecure", "--sweep-interval", "0.5",
        )  # fmt: skip
        args = child_arguments(options)
        self.assertIn("--namespace=ns", args)
        self.assertIn("--sweep-interval=0.5", args)
        self.assertIn("--insecure", args)
        self.assertIn("--tcp=tcp:7000:interface=127.0.0.1", args)
        for word in args:
            self.assertNotIn("s3cret", word)
            self.assertNotIn("redis://", word)
            self.assertFalse(word.startswith("--processes"), word)
        env = child_environment(options, "unix:///tmp/r.sock")
        self.assertEqual(env["PROCESSION_REDIS"], "unix:///tmp/r.sock")
        self.assertEqual(env["PROCESSION_TOKEN"], "s3cret")
        self.assertNotIn("PROCESSION_ADMIN_TOKEN", env)
        self.assertEqual(env["HOME"], "/h")
        child = Options()
        self.patch(os, "environ", env)
        child.parseOptions([*args, "--inherit", "3,4", "--parent-pid", "1"])
        self.assertEqual(child["inherit"], (3, 4))
        self.assertEqual(child["token"], "s3cret")
        self.assertEqual(child["namespace"], "ns")
