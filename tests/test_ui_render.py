"""
Tests of L{procession.http.ui.render}: charts, Redis's status, links and
values as pages show them, and the templates' packaging.
"""

from __future__ import annotations

import configparser
import fnmatch
import os

from twisted.trial.unittest import SynchronousTestCase

from procession.http.ui import render as ui_render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ChartTests(SynchronousTestCase):
    def test_nice_top(self) -> None:
        for value, top in [
            (0, 1),
            (1, 1),
            (1.5, 2),
            (3, 5),
            (7, 10),
            (12, 20),
            (50, 50),
            (51, 100),
            (999, 1000),
        ]:
            self.assertEqual(ui_render.nice_top(value), top, value)

    def test_points(self) -> None:
        chart = ui_render.Chart([0, 5, 10], [0, 0, 5], "min", width=100, height=50)
        self.assertEqual(chart.top, 10)
        points = chart.points("c")
        self.assertEqual(points["c-processed"], "0,50 50,25 100,0")
        self.assertEqual(points["c-failed"], "0,50 50,50 100,25")
        self.assertEqual(points["c-processed-area"], "0,50 0,50 50,25 100,0 100,50")
        self.assertEqual(
            chart.text("c"),
            {"c-top": "10/min", "c-processed-total": "15", "c-failed-total": "5"},
        )


class RedisStatusTests(SynchronousTestCase):
    def test_status(self) -> None:
        info = ui_render.parse_info(
            "# Server\r\nredis_version:7.0.15\r\nuptime_in_seconds:3700\r\n\r\n"
            "# Memory\r\nused_memory:1572864\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n"
            "# Persistence\r\naof_enabled:1\r\naof_last_write_status:ok\r\n"
            "rdb_last_save_time:1800000000\r\nrdb_changes_since_last_save:12\r\n"
            "# Clients\r\nconnected_clients:4\r\n"
        )
        status = ui_render.redis_status(info, 1_800_000_240_000)
        self.assertEqual(status["redis-version"], "7.0.15")
        self.assertEqual(status["redis-memory"], "1.5 MiB of no limit")
        self.assertEqual(status["redis-policy"], "noeviction")
        self.assertEqual(
            status["redis-persistence"],
            "AOF on, last write ok; RDB saved 4 minutes ago, 12 changes since",
        )
        self.assertEqual(status["redis-uptime"], "1 h 1 min")
        self.assertEqual(status["redis-clients"], "4")

    def test_little_known(self) -> None:
        status = ui_render.redis_status({}, 0)
        self.assertEqual(status["redis-version"], "?")
        self.assertEqual(status["redis-persistence"], "AOF off; RDB unknown")


class PackagingTests(SynchronousTestCase):
    """
    The templates ship in the wheel: setup.cfg maps the top-level folder to
    the package procession.templates and its package data takes every file
    (an installed wheel was checked by hand: pip install into a fresh venv).
    """

    def test_every_template_file_is_package_data(self) -> None:
        config = configparser.ConfigParser()
        config.read(os.path.join(ROOT, "setup.cfg"))
        options = config["options"]
        self.assertIn("procession.templates", options["packages"].split())
        mapping = dict(
            (part.strip() for part in line.split("="))  # type: ignore[misc]
            for line in options["package_dir"].strip().splitlines()
        )
        self.assertEqual(mapping["procession.templates"], "templates")
        patterns = config["options.package_data"]["procession.templates"].split()
        folder = os.path.join(ROOT, "templates")
        files = [
            os.path.relpath(os.path.join(top, name), folder)
            for top, _, names in os.walk(folder)
            for name in names
            if "__pycache__" not in top
        ]
        self.assertIn("base.html", files)
        for name in files:
            self.assertTrue(any(fnmatch.fnmatch(name, p) for p in patterns), name)

    def test_the_templates_are_found(self) -> None:
        folder = ui_render.template_folder()
        self.assertTrue((folder / "base.html").is_file(), folder)
        self.assertTrue((folder / "static" / "ui.js").is_file(), folder)
        env = ui_render.environment()
        self.assertTrue(env.autoescape)


class HelperTests(SynchronousTestCase):
    def test_urls(self) -> None:
        self.assertEqual(ui_render.job_url("a/b?c"), "/jobs/a%2Fb%3Fc")
        self.assertEqual(
            ui_render.list_url("dead", queue="q", type=None), "/dead?queue=q"
        )
        self.assertEqual(ui_render.list_url("dead"), "/dead")

    def test_preview_and_backtrace(self) -> None:
        self.assertEqual(ui_render.preview({"a": [1, 2]}), '{"a":[1,2]}')
        self.assertEqual(len(ui_render.preview("x" * 500)), 80)
        self.assertEqual(
            ui_render.backtrace(["a\n", "b", {"file": "f"}]), 'a\nb\n{"file": "f"}'
        )
        self.assertEqual(ui_render.backtrace("text"), "text")
