"""
The examples in the docs, run against a live server, the README's commands
checked against CI's, and every reStructuredText file checked to build
cleanly.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
from typing import Any

from docutils import nodes
from docutils.core import publish_doctree

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.client import LineClient, ServerFixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Values that differ from run to run; the docs show examples of them.
VARYING = {
    "version",
    "created_at",
    "enqueued_at",
    "expires_at",
    "lease",
    "worker",
    "run_at",
}


def session_lines(path: str, heading: str) -> list[str]:
    """
    The C{>}/C{<} lines of the literal block that follows C{heading}.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    section = text.split(heading, 1)[1]
    block = section.split("::\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        if line.strip():
            lines.append(line.strip())
    return lines


def same_shape(documented: Any, actual: Any) -> bool:
    """
    Whether a reply matches the documented one, except for varying values.
    """
    if isinstance(documented, dict) and isinstance(actual, dict):
        if set(documented) != set(actual):
            return False
        return all(
            k in VARYING or same_shape(documented[k], actual[k]) for k in documented
        )
    return documented == actual


class ProtocolDocTests(TestCase):
    async def test_nc_session(self) -> None:
        lines = session_lines(
            os.path.join(ROOT, "docs", "protocol.rst"), "A session with nc"
        )
        self.assertGreater(len(lines), 10)
        server = await ServerFixture(self).start()
        client = LineClient()
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", server.tcp_port), client
        )
        self.addCleanup(server._close, client)
        await client.hi
        expected_index = 0
        pending = None
        for line in lines:
            direction, frame = line[0], line[2:]
            if direction == ">":
                pending = client.send("", raw=frame.encode())
                continue
            verb, _, body = frame.partition(" ")
            documented = json.loads(body) if body else None
            if verb == "HI":
                actual = ("HI", await client.hi)
            elif verb == "JOB":
                actual = ("JOB", await client.next_job())
            else:
                self.assertIsNotNone(pending, line)
                actual = await pending
                pending = None
            self.assertEqual(actual[0], verb, line)
            self.assertTrue(
                same_shape(documented, actual[1]),
                f"documented {line!r}, got {actual!r}",
            )
            expected_index += 1
        await client.closed


class CommandsTests(SynchronousTestCase):
    def readme_commands(self) -> list[str]:
        with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as f:
            text = f.read()
        return re.findall(r"^    (python3 -m venv .*)$", text, re.M)

    def test_readme_names_two_commands(self) -> None:
        commands = self.readme_commands()
        self.assertEqual(len(commands), 2, commands)
        self.assertIn("twist procession", commands[0])
        self.assertIn("twisted.trial tests", commands[1])

    def test_ci_runs_the_readme_test_command(self) -> None:
        with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
            ci = f.read()
        self.assertIn(self.readme_commands()[1], ci)


def rst_files() -> list[str]:
    """
    Every reStructuredText file of the project, relative to its root.
    """
    found = []
    for pattern in ("*.rst", "docs/*.rst", "bench/*.rst", "examples/**/*.rst"):
        found += glob.glob(os.path.join(ROOT, pattern), recursive=True)
    return sorted(os.path.relpath(path, ROOT) for path in found)


class BuildTests(SynchronousTestCase):
    def test_docs_build_cleanly(self) -> None:
        """
        Every .rst file parses with docutils without a warning or an error
        (a malformed table, a broken reference, bad indentation).
        """
        files = rst_files()
        self.assertIn(os.path.join("docs", "protocol.rst"), files)
        problems = []
        for name in files:
            with open(os.path.join(ROOT, name), encoding="utf-8") as f:
                text = f.read()
            tree = publish_doctree(
                text,
                source_path=os.path.join(ROOT, name),
                settings_overrides={
                    "report_level": 5,
                    "halt_level": 5,
                    "warning_stream": io.StringIO(),
                },
            )
            for message in tree.findall(nodes.system_message):
                if message["level"] >= 2:
                    problems.append(message.astext()[:300])
        self.assertEqual(problems, [])


class ServerOptionsTests(SynchronousTestCase):
    def test_every_option_documented(self) -> None:
        """
        Every option of C{twist procession} (but the internal ones of
        --processes) is described in the README or a page of docs/.
        """
        from procession.server.tap import Options

        text = ""
        for name in ["README.rst", *glob.glob(os.path.join(ROOT, "docs", "*.rst"))]:
            with open(os.path.join(ROOT, name), encoding="utf-8") as f:
                text += f.read()
        internal = {"inherit", "parent-pid"}
        options = [o[0] for o in Options.optFlags + Options.optParameters]
        self.assertIn("max-http-connections", options)
        missing = [o for o in options if o not in internal and f"``--{o}" not in text]
        self.assertEqual(missing, [])
