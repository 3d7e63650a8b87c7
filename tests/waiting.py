"""
The tests' waits: poll a condition until it holds or a deadline passes,
failing with what the caller says about the state it saw.  L{wait_for}
blocks (tests that drive other processes); L{wait_until} awaits on the
reactor (tests whose server runs in the test's own reactor).  Waits are
deadlines, never measurements: no test asserts how long something took.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater


def wait_for(
    condition: Callable[[], Any],
    timeout: float,
    describe: Callable[[], str] | str = "",
    interval: float = 0.05,
) -> Any:
    """
    Poll C{condition} until it is true; its value.

    @raise AssertionError: when C{timeout} seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            text = describe() if callable(describe) else describe
            raise AssertionError(f"still not true after {timeout} s. {text}")
        time.sleep(interval)


async def wait_until(condition: Any, timeout: float, describe: Any) -> Any:
    """
    Poll the coroutine function C{condition} until its value is true.
    """
    deadline = reactor.seconds() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"still not true after {timeout} s: {describe()}")
        await deferLater(reactor, 0.05, lambda: None)
