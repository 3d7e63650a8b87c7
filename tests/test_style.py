"""
The code's form: ruff's formatter and linter (configured in
pyproject.toml) find nothing to change, and mypy (with the mypy-zope
plugin, configured there too) finds no error in procession/, so the test
command checks the style and the types as well as the behaviour.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = ["procession", "tests", "bench", "twisted"]


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *CODE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


class StyleTests(SynchronousTestCase):
    def test_formatted(self) -> None:
        result = ruff("format", "--check")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_lint(self) -> None:
        result = ruff("check")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_types(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--no-error-summary"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
