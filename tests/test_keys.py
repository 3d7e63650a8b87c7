"""
Tests for L{procession.store.keys}: the one place key names are built,
and its agreement with the Lua scripts' shared header.
"""

from __future__ import annotations

import re
from importlib.resources import files

from twisted.trial.unittest import SynchronousTestCase

from procession.core.states import STATES
from procession.store.keys import QUEUE_KEYS, STATE_SET_NAMES, Keys


class KeysTests(SynchronousTestCase):
    def test_common_lua_lists_the_same_keys(self) -> None:
        """
        common.lua's header names the keys under a queue's prefix that
        L{QUEUE_KEYS} names, in the same order.
        """
        text = files("procession.store").joinpath("lua/common.lua").read_text("utf-8")
        header = text[: text.index("\nlocal ")]
        listed = re.findall(r"^--   (\S+)\s", header, re.MULTILINE)
        self.assertEqual(tuple(listed), QUEUE_KEYS)

    def test_names(self) -> None:
        """
        Every key of a queue carries its hash tag; the others do not.
        """
        keys = Keys("ns")
        self.assertEqual(keys.prefix("q"), "ns:{q}:")
        self.assertEqual(keys.job("q", "7"), "ns:{q}:job:7")
        self.assertEqual(keys.errors("q", "7"), "ns:{q}:errors:7")
        self.assertEqual(keys.held("q", "srv"), "ns:{q}:held:srv")
        self.assertEqual(keys.state_set("q", "completed"), "ns:{q}:done")
        self.assertEqual(keys.state_set("q", "done"), "ns:{q}:done")
        self.assertEqual(
            {keys.state_set("q", s) for s in STATES},
            {keys.prefix("q") + n for n in STATE_SET_NAMES},
        )
        self.assertEqual(
            (keys.queues, keys.channel, keys.servers, keys.server("srv")),
            ("ns:queues", "ns:wake", "ns:servers", "ns:server:srv"),
        )
