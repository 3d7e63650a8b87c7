"""
The shared Lua helpers (C{lua/common.lua} and C{lua/workflow.lua}), put in
front of each queue script with only the definitions it uses.

Redis runs a script's whole text on every call: each C{local function} of
a preamble is a new closure, each table a new allocation, every call, and
the garbage collector sweeps them after.  With the full preamble (about 80
definitions) that was a third of the cost of a push inside Redis (issue
13), for helpers a push never calls.  So each script gets the helpers it
names, and the helpers those name, in their order in the preamble.

The preamble files are read as a list of top-level definitions, one per
statement that starts in column 0: C{local function NAME(...)} and
C{flow.NAME = function(...)} up to the C{end} in column 0, C{local NAME =
...} on one line.  Comment lines above a definition go with it; the lines
before the first definition (the files' header comments) are kept.  A
definition is needed when a needed text names it: an identifier token, or
C{flow.NAME} for the workflow hooks, outside comments.  Naming is read
conservatively (a name inside a string literal counts too), so a helper is
never left out for a call it could make; C{tests/test_preamble.py} checks
each linked script with C{luac5.1} for names that would be globals.

A script can also be linked without some definitions (L{Preamble.link}'s
C{without}): push.lua's plain variant leaves out the workflow hooks
(C{flow.*}), which a push of jobs with no batch and no parents never calls.

This module must not know what any helper does: it reads names only.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from attrs import frozen

# A top-level definition's first line, and the name it defines.
_LOCAL_FUNCTION = re.compile(r"^local function ([A-Za-z_]\w*)\s*\(")
_FLOW_FUNCTION = re.compile(r"^(flow\.[A-Za-z_]\w*)\s*=\s*function\s*\(")
_LOCAL_VALUE = re.compile(r"^local ([A-Za-z_]\w*)\s*=")

# Names a piece of Lua uses: C{flow.NAME} first, then plain identifiers.
_NAME = re.compile(r"\bflow\.[A-Za-z_]\w*|\b[A-Za-z_]\w*")


class PreambleError(ValueError):
    """
    A preamble file does not have the shape this module reads.
    """


@frozen
class Definition:
    """
    One top-level definition of the preamble: the name it defines, its
    text (with the comment lines above it) and the names it uses.
    """

    name: str
    text: str
    uses: frozenset[str]


@frozen
class Preamble:
    """
    The shared helpers, read into definitions, ready to be put in front of
    scripts.
    """

    header: str
    definitions: tuple[Definition, ...]

    @classmethod
    def parse(cls, text: str) -> Preamble:
        """
        Read the preamble's text (the files joined in order).

        @raise PreambleError: a top-level line that is neither a comment,
            blank, nor the start of a definition this module reads; or a
            function without its C{end} in column 0.
        """
        lines = text.splitlines()
        header: list[str] = []
        pending: list[str] = []  # comment lines waiting for a definition
        definitions: list[Definition] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            if not line.strip() or line.startswith("--"):
                pending.append(line)
                i += 1
                continue
            function = _LOCAL_FUNCTION.match(line) or _FLOW_FUNCTION.match(line)
            value = None if function else _LOCAL_VALUE.match(line)
            if function:
                end = i + 1
                while end < len(lines) and lines[end] != "end":
                    end += 1
                if end == len(lines):
                    raise PreambleError(
                        f"line {i + 1}: {function.group(1)} has no 'end' in column 0"
                    )
                body = lines[i : end + 1]
                name = function.group(1)
            elif value:
                if not _balanced(line):
                    raise PreambleError(
                        f"line {i + 1}: a value must be defined on one line: {line!r}"
                    )
                body = [line]
                end = i
                name = value.group(1)
            else:
                raise PreambleError(
                    f"line {i + 1}: not a definition the preamble reader knows: {line!r}"
                )
            if not definitions:
                header, pending = pending, []
            uses = frozenset(names_used("\n".join(body))) - {name}
            definitions.append(Definition(name, "\n".join([*pending, *body]), uses))
            pending = []
            i = end + 1
        return cls("\n".join(header), tuple(definitions))

    def needed(
        self, script: str, without: Callable[[str], bool] = lambda name: False
    ) -> list[Definition]:
        """
        The definitions that C{script} (a script's own text) needs, in the
        preamble's order: those it names, and those they name, and so on;
        none whose name C{without} is true for.
        """
        by_name = {d.name: d for d in self.definitions if not without(d.name)}
        wanted: set[str] = set()
        todo = [n for n in names_used(script) if n in by_name]
        while todo:
            name = todo.pop()
            if name in wanted:
                continue
            wanted.add(name)
            todo.extend(n for n in by_name[name].uses if n in by_name)
        return [d for d in self.definitions if d.name in wanted]

    def link(
        self, script: str, without: Callable[[str], bool] = lambda name: False
    ) -> str:
        """
        The text Redis runs for C{script}: the header, the definitions it
        needs (none that C{without} names), then the script.
        """
        needed = self.needed(script, without)
        parts = [self.header, *(d.text for d in needed), script]
        return "\n".join(parts)


def names_used(text: str) -> set[str]:
    """
    The names a piece of Lua mentions outside comments: identifiers and
    C{flow.NAME} (a C{flow.NAME} also names C{flow}).
    """
    found: set[str] = set()
    for line in text.splitlines():
        for token in _NAME.findall(_without_comment(line)):
            found.add(token)
            if token.startswith("flow."):
                found.add("flow")
    return found


def _without_comment(line: str) -> str:
    """
    C{line} up to a C{--} comment, where that C{--} is not in a string.
    """
    quote = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif line.startswith("--", i):
            return line[:i]
        i += 1
    return line


def _balanced(line: str) -> bool:
    """
    Whether C{line}'s brackets close on it (strings and comment aside).
    """
    code = re.sub(r"'(\\.|[^'\\])*'|\"(\\.|[^\"\\])*\"", "", _without_comment(line))
    return all(code.count(o) == code.count(c) for o, c in ("()", "{}", "[]"))
