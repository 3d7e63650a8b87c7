"""
Summaries of py-spy profiles of the procession server, recorded by the
harness with C{--profile DIR} (``py-spy record -f raw``: one line per
distinct stack, C{frame;frame;... count}, each frame C{function (file:line)}).

    python -m bench.spy bench/results/profile-drain.txt

prints where the server's time goes: own time (the innermost frame) and
inclusive time per function, as shares of the samples taken while it was
busy (py-spy leaves out the time it sleeps in epoll).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from typing import Any

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def function_of(frame: str) -> str:
    """
    A frame without its line number, its file shortened to the package
    path: C{dataReceived (twisted/protocols/basic.py)}.
    """
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match.group('function')} ({path})"


def package_of(name: str) -> str:
    """
    Where a function lives, coarsely: C{procession/<module>}, the Twisted
    subpackage, C{txredisapi}, C{json}... (for own time by package).
    """
    path = name[name.rfind("(") + 1 : -1]
    parts = path.split("/")
    if parts[0] == "procession":
        return path.removesuffix(".py")
    if parts[0] == "twisted" and len(parts) > 2:
        return "twisted/" + parts[1]
    if parts[0].endswith(".py"):
        return parts[0].removesuffix(".py")
    return parts[0]


def summarise(path: str, top: int = 25, expected: int | None = None) -> dict[str, Any]:
    """
    Own and inclusive samples per function in a raw py-spy profile, own
    samples per package, and (given the samples a fully busy process would
    have had) the share of the time the process was busy.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [function_of(fr) for fr in stack.split(";") if fr]
            if not frames:
                continue
            own[frames[-1]] += n
            packages[package_of(frames[-1])] += n
            for name in set(frames):
                inclusive[name] += n

    def share(n: float) -> float:
        return round(100.0 * n / total, 1) if total else 0.0

    summary: dict[str, Any] = {
        "samples": total,
        "own": [[name, share(n)] for name, n in own.most_common(top)],
        "packages": [[name, share(n)] for name, n in packages.most_common(15)],
        # the frames every stack has (the reactor's loop) say nothing
        "inclusive": [
            [name, share(n)] for name, n in inclusive.most_common(top + 15) if n < total
        ][:top],
    }
    if expected:
        summary["busy_percent"] = round(100.0 * total / expected, 1)
    return summary


def render(summary: dict[str, Any], top: int = 25) -> str:
    """
    A summary as text: columns of percentages and functions.
    """
    busy = summary.get("busy_percent")
    head = f"{summary['samples']} samples while busy"
    if busy is not None:
        head += f" ({busy}% of the time; the rest waiting in epoll)"
    lines = [head, "", "own time by package:"]
    lines += [f"  {pct:5.1f}%  {name}" for name, pct in summary.get("packages", [])]
    lines += ["", "own time:"]
    lines += [f"  {pct:5.1f}%  {name}" for name, pct in summary["own"][:top]]
    lines += ["", "inclusive time:"]
    lines += [f"  {pct:5.1f}%  {name}" for name, pct in summary["inclusive"][:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spy", description=__doc__)
    parser.add_argument("profile", nargs="+")
    parser.add_argument("--top", type=int, default=25)
    options = parser.parse_args(argv)
    for path in options.profile:
        print(f"== {path}")
        print(render(summarise(path, options.top), options.top))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
