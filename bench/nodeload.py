"""
The benchmark's Node.js side: BullMQ (the npm package, installed into
``bench/node/`` from its lockfile by L{ensure_installed}) and
``bench/node/load.mjs``, which pushes and drains for procession (its TCP
protocol spoken directly) and for BullMQ (its own client), so that the two
are measured with clients in one language.  Without Node.js those cases are
skipped, with a message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")


def ensure_installed() -> str | None:
    """
    Make sure Node.js and BullMQ are there (``npm ci`` in ``bench/node/``
    when BullMQ is not installed yet); C{None}, or why the Node.js cases
    cannot run.
    """
    if shutil.which("node") is None:
        return "Node.js (node) is not installed"
    if os.path.exists(os.path.join(HERE, "node_modules", "bullmq", "package.json")):
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed, so BullMQ cannot be (bench/node/package.json)"
    try:
        process = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"npm ci in bench/node failed: {e}"
    if process.returncode != 0:
        return f"npm ci in bench/node failed:\n{process.stderr[-2000:]}"
    return None


def bullmq_version() -> str | None:
    """
    The installed BullMQ's version, if any.
    """
    try:
        with open(
            os.path.join(HERE, "node_modules", "bullmq", "package.json"),
            encoding="utf-8",
        ) as f:
            return str(json.load(f)["version"])
    except OSError:
        return None


def node_version() -> str | None:
    """
    ``node --version``, if there is a node.
    """
    node = shutil.which("node")
    if node is None:
        return None
    return subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()


def command(
    root: str, mode: str, system: str, target: str, jobs: int, **options: object
) -> list[str]:
    """
    The command line of ``load.mjs`` in the code folder C{root}: C{mode}
    push, drain or fill; options as ``--name value``.
    """
    node = shutil.which("node") or "node"
    args = [
        node, os.path.join(root, "bench", "node", "load.mjs"), mode,
        "--system", system, "--target", target, "--jobs", str(jobs),
    ]  # fmt: skip
    for name, value in options.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return args
