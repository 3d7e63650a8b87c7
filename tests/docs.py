"""
Shell sessions in the docs, run against a live server.

A session is the literal blocks of some sections of an .rst file: lines
C{$ command} (continued by a trailing backslash) followed by the output the
command prints.  The commands run in C{/bin/sh} with the environment a test
gives (C{export} lines are for readers and are skipped).  Outputs are
compared line by line; a line of JSON is compared by shape: values of keys
that vary from run to run (times, leases, cursors) are not compared, but
each one the docs show is remembered with its actual value and replaced in
later commands, so a documented lease or cursor can be used again.
"""

from __future__ import annotations

import json
import re
from typing import Any

from attrs import define, field
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

# Keys whose values differ from run to run.
VARYING = frozenset(
    {
        "created_at",
        "enqueued_at",
        "started_at",
        "finished_at",
        "run_at",
        "expires_at",
        "connected_at",
        "since",
        "last_seen",
        "oldest_enqueued_at",
        "latency",
        "throughput",
        "lease",
        "cursor",
        "version",
        "server",
        "committed_at",
        "pushed_at",
        "next_run",
    }
)


@define
class Example:
    """
    One command and the lines it is documented to print.
    """

    command: str
    output: list[str] = field(factory=list)


def section_text(text: str, titles: list[str]) -> str:
    """
    The text of the sections with these titles (a title underlined with
    C{=}), each up to the next such title.
    """
    parts = re.split(r"^(.+)\n=+\n", text, flags=re.M)
    chosen = []
    for title, body in zip(parts[1::2], parts[2::2]):
        if title.strip() in titles:
            chosen.append(body)
    return "\n".join(chosen)


def examples(text: str) -> list[Example]:
    """
    The commands of the literal blocks of C{text} and their outputs.
    """
    found: list[Example] = []
    lines = text.splitlines()
    current: Example | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") or (line and not line.startswith("    ")):
            # A new literal block, or prose: no example is open.
            current = None
        elif line.startswith("    $ "):
            command = line[6:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1].rstrip() + " " + lines[i].strip()
            current = Example(command)
            found.append(current)
        elif current is not None and line.startswith("    "):
            current.output.append(line[4:])
        elif current is not None and line == "":
            # A blank line between output lines is output (an empty body);
            # one at the end of the block is not.
            following = lines[i + 1] if i + 1 < len(lines) else ""
            if following.startswith("    ") and not following.startswith("    $ "):
                current.output.append("")
        i += 1
    return found


def same_shape(documented: Any, actual: Any, seen: dict[str, str]) -> bool:
    """
    Whether C{actual} matches C{documented} but for varying values, whose
    documented strings are remembered in C{seen} with their actual ones.
    """
    if isinstance(documented, dict) and isinstance(actual, dict):
        if set(documented) != set(actual):
            return False
        for key, value in documented.items():
            if key in VARYING:
                if isinstance(value, str) and isinstance(actual[key], str):
                    seen[value] = actual[key]
                continue
            if not same_shape(value, actual[key], seen):
                return False
        return True
    if isinstance(documented, list) and isinstance(actual, list):
        return len(documented) == len(actual) and all(
            same_shape(d, a, seen) for d, a in zip(documented, actual)
        )
    return documented == actual


def same_line(documented: str, actual: str, seen: dict[str, str]) -> bool:
    """
    Compare one line of output: as JSON when it is JSON, else exactly.
    """
    try:
        doc_value = json.loads(documented)
    except ValueError:
        return documented == actual
    try:
        actual_value = json.loads(actual)
    except ValueError:
        return False
    return same_shape(doc_value, actual_value, seen)


async def run(example: Example, env: dict[str, str], seen: dict[str, str]) -> list[str]:
    """
    Run one example's command; return the lines it printed.
    """
    command = example.command
    for documented, actual in seen.items():
        command = command.replace(documented, actual)
    out, err, code = await getProcessOutputAndValue(
        "/bin/sh", ["-c", command], env=env, reactor=reactor
    )
    text = out.decode("utf-8")
    if text.endswith("\n"):
        text = text[:-1]
    return text.split("\n") if text else []
