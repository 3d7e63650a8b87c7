"""
Tests for L{procession.store.preamble}: the shared Lua helpers linked in
front of each script with only the definitions it uses.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from procession.store.jobs import (
    PLAIN_VARIANTS,
    SCRIPT_NAMES,
    load_preamble,
    load_scripts,
)
from procession.store.preamble import Preamble, PreambleError, names_used

SAMPLE = """\
-- sample.lua: a header comment.
--
-- More header.

local prefix = KEYS[1]
local LIMIT = 10  -- a comment naming unused_helper

-- The key of a job.
local function jobkey(id)
  return prefix .. 'job:' .. id
end

local function unused_helper()
  return LIMIT
end

-- uses jobkey; the string below names 'LIMIT' and so keeps it
local function describe(id)
  return jobkey(id) .. ' LIMIT'
end

local flow = {}

flow.hook = function(id)
  return describe(id)
end
"""

# What a script may read or write as a global inside Redis 6.2 (its Lua
# 5.1 sandbox): anything else would be a helper the linking left out.
REDIS_GLOBALS = frozenset(
    {
        "redis", "KEYS", "ARGV", "cjson", "cmsgpack", "bit", "struct",
        "string", "table", "math", "tonumber", "tostring", "type", "ipairs",
        "pairs", "next", "select", "unpack", "error", "pcall", "assert",
        "rawget", "rawset", "setmetatable", "getmetatable",
    }
)  # fmt: skip


class PreambleTests(SynchronousTestCase):
    """
    L{Preamble} reads definitions and links what a script names.
    """

    def setUp(self) -> None:
        self.preamble = Preamble.parse(SAMPLE)

    def test_definitions(self) -> None:
        """
        Each top-level definition is read with its name and the comment
        lines above it; the lines before the first one are the header.
        """
        names = [d.name for d in self.preamble.definitions]
        self.assertEqual(
            names,
            [
                "prefix",
                "LIMIT",
                "jobkey",
                "unused_helper",
                "describe",
                "flow",
                "flow.hook",
            ],
        )
        self.assertEqual(
            self.preamble.header,
            "-- sample.lua: a header comment.\n--\n-- More header.\n",
        )
        jobkey = self.preamble.definitions[2]
        self.assertIn("-- The key of a job.\nlocal function jobkey(id)", jobkey.text)
        self.assertEqual(jobkey.uses & {"prefix", "id"}, {"prefix", "id"})

    def test_needed_follows_names(self) -> None:
        """
        A script gets what it names and what that names, in the
        preamble's order, and nothing else; a comment's names do not
        count, a string's do.
        """
        script = "-- unused_helper() is not called\nreturn flow.hook(ARGV[1])\n"
        needed = [d.name for d in self.preamble.needed(script)]
        self.assertEqual(
            needed, ["prefix", "LIMIT", "jobkey", "describe", "flow", "flow.hook"]
        )

    def test_without(self) -> None:
        """
        Definitions that C{without} names are left out, and so is what
        only they needed.
        """
        script = "local x = jobkey(ARGV[1])\nreturn flow.hook(x)\n"
        text = self.preamble.link(script, lambda name: name.startswith("flow."))
        self.assertIn("local function jobkey", text)
        self.assertIn("local flow = {}", text)
        self.assertNotIn("flow.hook = function", text)
        self.assertNotIn("describe", text.replace(script, ""))
        self.assertTrue(text.endswith(script))

    def test_link_order(self) -> None:
        """
        The linked text is the header, the definitions, then the script.
        """
        text = self.preamble.link("return jobkey('a')\n")
        self.assertEqual(
            text,
            "-- sample.lua: a header comment.\n--\n-- More header.\n\n"
            "local prefix = KEYS[1]\n"
            "\n-- The key of a job.\nlocal function jobkey(id)\n"
            "  return prefix .. 'job:' .. id\nend\n"
            "return jobkey('a')\n",
        )

    def test_unknown_statement(self) -> None:
        """
        A top-level line the reader does not know is refused, with its
        line number, rather than dropped or misread.
        """
        with self.assertRaises(PreambleError) as e:
            Preamble.parse("local a = 1\nredis.call('PING')\n")
        self.assertIn("line 2", str(e.exception))

    def test_function_without_end(self) -> None:
        """
        A function whose C{end} is not in column 0 is refused.
        """
        with self.assertRaises(PreambleError) as e:
            Preamble.parse("local function f()\n  return 1\n  end\n")
        self.assertIn("f has no 'end'", str(e.exception))

    def test_value_on_several_lines(self) -> None:
        """
        A value must be defined on one line: a table that goes on is
        refused.
        """
        with self.assertRaises(PreambleError):
            Preamble.parse("local t = {\n  a = 1,\n}\n")

    def test_names_used(self) -> None:
        """
        Names outside comments, C{flow.NAME} also naming C{flow}; a C{--}
        inside a string does not start a comment.
        """
        self.assertEqual(
            names_used("local s = 'a--b' .. flow.x(y) -- z"),
            {"local", "s", "a", "b", "flow.x", "flow", "y"},
        )


class ShippedScriptsTests(SynchronousTestCase):
    """
    The scripts procession ships, linked.
    """

    def setUp(self) -> None:
        self.scripts = load_scripts()

    def test_push_plain_leaves_out_workflows(self) -> None:
        """
        push.lua's plain variant has none of the workflow hooks and what
        only they use; push.lua itself has them.
        """
        plain = self.scripts["push_plain"].text
        full = self.scripts["push"].text
        for hook in (
            "flow.check = function",
            "flow.pushed = function",
            "release_children",
        ):
            self.assertNotIn(hook, plain)
            self.assertIn(hook, full)
        self.assertEqual(self.scripts["push_plain"].source, "push")
        self.assertEqual(list(PLAIN_VARIANTS), ["push"])

    def test_scripts_are_smaller(self) -> None:
        """
        A script that needs few helpers gets few: pause.lua none of the
        lease or workflow helpers.
        """
        pause = self.scripts["pause"].text
        self.assertNotIn("local function release_job", pause)
        self.assertNotIn("flow.finished = function", pause)
        self.assertIn("local prefix = KEYS[1]", pause)

    def test_no_helper_left_out(self) -> None:
        """
        Compiled by Lua 5.1 (Redis's), no linked script reads or writes a
        global other than Redis's own: every helper a script calls is
        there.  Checked with C{luac5.1} (Debian's lua5.1, which
        C{.ci/run} installs).
        """
        luac = shutil.which("luac5.1")
        if luac is None:
            raise self.skipTest(
                "luac5.1 is not installed (apt-get install lua5.1): "
                "the linked scripts' globals cannot be listed"
            )
        self.assertEqual(set(SCRIPT_NAMES) - set(self.scripts), set())
        for name, script in sorted(self.scripts.items()):
            listing = subprocess.run(
                [luac, "-p", "-l", "-"],
                input=script.text,
                capture_output=True,
                text=True,
                check=False,
            )
            self.assertEqual(listing.returncode, 0, f"{name}: {listing.stderr}")
            used = set(re.findall(r"[GS]ETGLOBAL\s.*; (\S+)", listing.stdout))
            self.assertIn("redis", used, name)
            self.assertEqual(used - REDIS_GLOBALS, set(), f"{name} uses globals")

    def test_left_out_helper_is_seen(self) -> None:
        """
        The check above can fail: push.lua linked without C{jobkey}
        reads it as a global.
        """
        luac = shutil.which("luac5.1")
        if luac is None:
            raise self.skipTest("luac5.1 is not installed (apt-get install lua5.1)")
        from importlib.resources import files

        folder = files("procession.store").joinpath("lua")
        text = load_preamble().link(
            folder.joinpath("push.lua").read_text("utf-8"), lambda n: n == "jobkey"
        )
        listing = subprocess.run(
            [luac, "-p", "-l", "-"],
            input=text,
            capture_output=True,
            text=True,
            check=True,
        )
        self.assertIn("jobkey", re.findall(r"GETGLOBAL\s.*; (\S+)", listing.stdout))
