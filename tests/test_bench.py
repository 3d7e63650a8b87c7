"""
A smoke run of the benchmark harness (bench/, issue 6): ``python -m bench
--quick`` for procession alone, as a child process, and the shape of the
JSON it writes.  It asserts no timing: the figures only have to exist and
be positive.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The cases a quick procession-only run measures, and a metric each must have.
EXPECTED = {
    "push.one/procession": "jobs_per_s",
    "push.pipeline/procession": "jobs_per_s",
    "push.batch/procession": "jobs_per_s",
    "drain.runner/procession": "jobs_per_s",
    "drain.raw/procession": "jobs_per_s",
    "push.faktory/procession": "jobs_per_s",
    "drain.faktory/procession": "jobs_per_s",
    "latency1000.raw/procession": "p99_ms",
    "latency1000.runner/procession": "p99_ms",
    "http.push/procession": "jobs_per_s",
    "http.drain/procession": "jobs_per_s",
    "workers.1/procession": "jobs_per_s",
    "workers.100/procession": "jobs_per_s",
    "deep/procession": "claim_usec_per_call_deep",
    "idle/procession": "redis_cmds_per_s",
}


_run: dict[str, Any] = {}


def quick_run() -> tuple[dict[str, Any], str]:
    """
    Run ``python -m bench --quick`` once for all the tests here: its
    report and what it printed.
    """
    if not _run:
        folder = tempfile.mkdtemp(prefix="procession-test-bench-")
        output = os.path.join(folder, "quick.json")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (ROOT, env.get("PYTHONPATH")) if p
        )
        for name in ("PROCESSION_REDIS", "PROCESSION_TOKEN"):
            env.pop(name, None)
        command = [sys.executable, "-m", "bench", "--quick", "--systems", "procession"]
        process = subprocess.run(
            [*command, "--output", output],
            check=False,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if process.returncode != 0:
            raise AssertionError(
                f"python -m bench --quick exited with {process.returncode}:\n"
                f"{process.stdout[-4000:]}\n{process.stderr[-4000:]}"
            )
        with open(output, encoding="utf-8") as f:
            _run["report"] = json.load(f)
        _run["stdout"] = process.stdout
        shutil.rmtree(folder, ignore_errors=True)
    return _run["report"], _run["stdout"]


class QuickRunTests(SynchronousTestCase):
    """
    ``python -m bench --quick`` runs every procession workload once and
    writes its report.
    """

    def setUp(self) -> None:
        self.report, self.stdout = quick_run()

    def test_report(self) -> None:
        """
        The report says when, where and with what settings it ran, and
        nothing failed.
        """
        for key in ("date", "machine", "settings", "results", "targets", "errors"):
            self.assertIn(key, self.report)
        self.assertEqual(self.report["errors"], {})
        machine = self.report["machine"]
        self.assertGreater(machine["nproc"], 0)
        self.assertTrue(machine["redis"])
        self.assertTrue(self.report["settings"]["quick"])

    def test_cases(self) -> None:
        """
        Every workload has a result with positive figures, medians of its
        runs.
        """
        results = {r["id"]: r for r in self.report["results"]}
        self.assertEqual(set(EXPECTED) - set(results), set())
        for case, key in EXPECTED.items():
            result = results[case]
            self.assertEqual(result["system"], "procession")
            self.assertEqual(len(result["runs"]), 1)
            self.assertGreater(result["median"][key], 0, case)

    def test_throughput_metrics(self) -> None:
        """
        Push and drain cases carry the server's CPU and memory, and Redis's
        commands and bytes per job.
        """
        results = {r["id"]: r for r in self.report["results"]}
        for case in (
            "push.one/procession",
            "drain.raw/procession",
            "drain.runner/procession",
        ):
            median = results[case]["median"]
            for key in (
                "jobs",
                "jobs_per_s",
                "server_cpu_s_per_10k",
                "server_peak_rss_mb",
                "redis_cmds_per_job",
                "redis_bytes_per_job",
            ):
                self.assertGreater(median[key], 0, f"{case}: {key}")
        self.assertGreater(
            results["drain.raw/procession"]["median"]["wire_bytes_per_job"], 0
        )

    def test_latency_metrics(self) -> None:
        """
        Latency cases give ordered percentiles for every job pushed.
        """
        median = {r["id"]: r for r in self.report["results"]}[
            "latency1000.raw/procession"
        ]["median"]
        self.assertGreater(median["p50_ms"], 0)
        self.assertLessEqual(median["p50_ms"], median["p99_ms"])
        self.assertLessEqual(median["p99_ms"], median["max_ms"])
        self.assertEqual(median["received"], median["jobs"])

    def test_targets_and_table(self) -> None:
        """
        The report checks issue 6's targets, and the table is printed.
        """
        names = [t["target"] for t in self.report["targets"]]
        self.assertTrue(any("push one at a time" in n for n in names))
        for target in self.report["targets"]:
            self.assertIsInstance(target["met"], bool)
        self.assertIn("push.one/procession", self.stdout)
        self.assertIn("jobs/s", self.stdout)


class NodeRunTests(SynchronousTestCase):
    """
    The BullMQ cases and procession's Node.js side of them run (a tiny
    case each), when Node.js is installed.
    """

    def test_bullmq_cases(self) -> None:
        """
        ``python -m bench --systems procession,bullmq --only '*node*'``
        measures both sides of the push and drain cases, with Redis's CPU
        for both and the server's for procession, and compares them.
        """
        if shutil.which("node") is None:
            raise SkipTest("Node.js is not installed")
        folder = tempfile.mkdtemp(prefix="procession-test-bench-")
        self.addCleanup(shutil.rmtree, folder, True)
        output = os.path.join(folder, "node.json")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (ROOT, env.get("PYTHONPATH")) if p
        )
        # fmt: off
        command = [
            sys.executable, "-m", "bench", "--systems", "procession,bullmq",
            "--only", "*node*", "--jobs", "300", "--repeat", "1",
            "--max-seconds", "5", "--output", output,
        ]
        # fmt: on
        process = subprocess.run(
            command,
            check=False,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if "skipping BullMQ" in process.stderr:
            raise SkipTest(process.stderr.strip().splitlines()[0])
        self.assertEqual(process.returncode, 0, process.stderr[-4000:])
        with open(output, encoding="utf-8") as f:
            report = json.load(f)
        self.assertEqual(report["errors"], {})
        self.assertTrue(report["machine"]["packages"]["bullmq"])
        results = {r["id"]: r for r in report["results"]}
        for system in ("procession", "bullmq"):
            for variant in ("push.node1", "push.node16", "drain.node"):
                median = results[f"{variant}/{system}"]["median"]
                self.assertEqual(median["jobs"], 300)
                self.assertGreater(median["jobs_per_s"], 0)
                self.assertGreater(median["redis_cmds_per_job"], 0)
                # CPU is counted in clock ticks: a tiny case may take none
                self.assertGreaterEqual(median["redis_cpu_s_per_10k"], 0)
                if system == "procession":
                    self.assertGreaterEqual(median["server_cpu_s_per_10k"], 0)
                    ratio = results[f"{variant}/{system}"]["ratio"]
                    self.assertEqual(ratio["best"], f"{variant}/bullmq")
                    self.assertGreater(ratio["jobs_per_s"], 0)
        names = [t["target"] for t in report["targets"]]
        self.assertTrue(any("BullMQ" in n for n in names))
