"""
Redis Sentinel: finding the primary, watching for a promotion, and a pool
that follows the primary.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer, task
from twisted.python.failure import Failure
from procession.redis.address import RedisAddress
from procession.redis.internals import pool_factory
from twisted.logger import Logger

log = Logger()


SENTINEL_DISCOVERY_TIMEOUT = 1.0
# The longest wait between two attempts to reach the master (txredisapi's
# default is 10 s).
SENTINEL_MAX_RETRY_DELAY = 2.0
# How often to ask the sentinels whether the connections still go to the
# master they name (see MasterWatch), and sooner when Redis is slow.
SENTINEL_CHECK_INTERVAL = 0.5


def _sentinel(address: RedisAddress) -> Any:
    """
    A txredisapi C{Sentinel} that asks C{address}'s sentinels, with their
    own credentials.  (txredisapi hands its keyword arguments to every
    sentinel connection, which sends AUTH first; a sentinel that refuses
    them is not tried again, and the master is then never found: the
    requests fail with store_unavailable and the log says why.)
    """
    import txredisapi

    credentials: dict[str, Any] = {}
    if address.sentinel_password is not None:
        credentials["password"] = address.sentinel_password
        if address.sentinel_username:
            credentials["username"] = address.sentinel_username
    sentinel = txredisapi.Sentinel(list(address.sentinels), **credentials)
    sentinel.discovery_timeout = SENTINEL_DISCOVERY_TIMEOUT
    sentinel.sentinels = [
        _ReportingSentinel(connection, host, port)
        for connection, (host, port) in zip(sentinel.sentinels, address.sentinels)
    ]
    return sentinel


class _ReportingSentinel:
    """
    One sentinel connection of a txredisapi C{Sentinel}, which logs why the
    sentinel refused to name the master (txredisapi ignores the error and
    only says, a second later, that no master was found): each new reason
    once, so a sentinel that wants a password says so.
    """

    def __init__(self, connection: Any, host: str, port: int) -> None:
        self._connection = connection
        self._where = f"{host}:{port}"
        self._reported: str | None = None

    def sentinel_masters(self) -> defer.Deferred[Any]:
        """
        SENTINEL MASTERS, its failure logged.
        """

        def answered(masters: Any) -> Any:
            self._reported = None
            return masters

        def refused(failure: Any) -> Any:
            reason = failure.getErrorMessage()
            if reason != self._reported:
                self._reported = reason
                hint = ""
                if reason.startswith(("NOAUTH", "WRONGPASS", "ERR invalid password")):
                    hint = " (give its password as sentinel_password in the URL)"
                log.warn(
                    "Sentinel {sentinel} did not name the master: {reason}{hint}",
                    sentinel=self._where,
                    reason=reason,
                    hint=hint,
                )
            return failure

        return self._connection.sentinel_masters().addCallbacks(answered, refused)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class MasterWatch:
    """
    Every C{SENTINEL_CHECK_INTERVAL} seconds, ask the sentinels which
    server is the master, and close the connections of C{factory} (a
    txredisapi factory) that go to another one: they then reconnect to
    the master the sentinels name.

    txredisapi asks the sentinels only before it connects.  A connection
    to a master that hung (or was cut off) while a replica was promoted
    stays open, and once the old master answers again it takes writes, as
    a master still, until the sentinels demote it, which takes up to ten
    seconds; every write it took is then thrown away.  (Sentinel closes
    the clients' connections when it demotes a server, but that is too
    late.)
    """

    def __init__(self, sentinel: Any, master: str, factory: Any) -> None:
        self._sentinel = sentinel
        self._master = master
        self._factory = factory
        self._call: task.LoopingCall | None = None
        self._checking: defer.Deferred[None] | None = None

    def start(self) -> None:
        """
        Start checking.
        """
        self._call = task.LoopingCall(self.check)
        self._call.start(SENTINEL_CHECK_INTERVAL, now=False).addErrback(
            lambda f: log.failure("The check of the Sentinel master stopped", f)
        )

    def stop(self) -> None:
        """
        Stop checking.
        """
        if self._call is not None and self._call.running:
            self._call.stop()
        self._call = None

    def check(self) -> defer.Deferred[None]:
        """
        Close the connections that do not go to the master the sentinels
        name now (none when no sentinel answers).  Called again while a
        check is under way, it waits for that one.
        """
        if self._checking is None:
            self._checking = self._check()

            def done(result: Any) -> None:
                self._checking = None
                if isinstance(result, Failure):
                    log.failure("Checking the Sentinel master failed", result)

            self._checking.addBoth(done)
        if self._checking is None:  # it finished at once
            return defer.succeed(None)
        waiting: defer.Deferred[None] = defer.Deferred()
        self._checking.addBoth(waiting.callback)
        return waiting

    def _check(self) -> defer.Deferred[None]:
        import txredisapi

        def named(address: tuple[str, int]) -> None:
            master = _ip_and_port(*address)
            if master is None:
                # A host name (sentinels announcing host names): a
                # connection's peer is an address, which cannot be told
                # apart from it here.
                return
            for connection in list(self._factory.pool):
                transport = getattr(connection, "transport", None)
                if transport is None:
                    continue
                peer = transport.getPeer()
                where = _ip_and_port(
                    getattr(peer, "host", ""), getattr(peer, "port", 0)
                )
                if where is not None and where != master:
                    log.warn(
                        "Redis at {old} is no longer the master, {new} is: "
                        "reconnecting",
                        old=f"{peer.host}:{peer.port}",
                        new=f"{address[0]}:{address[1]}",
                    )
                    transport.loseConnection()

        def unknown(failure: Any) -> None:
            failure.trap(txredisapi.MasterNotFoundError)

        return self._sentinel.discover_master(self._master).addCallbacks(named, unknown)


def _ip_and_port(host: str, port: Any) -> tuple[Any, int] | None:
    try:
        return ipaddress.ip_address(host.strip("[]")), int(port)
    except ValueError:
        return None


class SentinelPool:
    """
    A txredisapi connection pool to the master that Redis Sentinel names:
    it asks the sentinels before every (re)connection, so after a failover
    it reconnects to the new master by itself.  Used like any txredisapi
    pool.
    """

    def __init__(self, address: RedisAddress, poolsize: int) -> None:
        self.sentinel = _sentinel(address)
        kwargs: dict[str, Any] = dict(
            password=address.password,
            convertNumbers=False,
            isLazy=True,
        )
        if address.username:
            kwargs["username"] = address.username
        self.handler = self.sentinel.master_for(
            address.master_name(), dbid=address.db, poolsize=poolsize, **kwargs
        )
        pool_factory(self.handler).maxDelay = SENTINEL_MAX_RETRY_DELAY
        self.watch = MasterWatch(
            self.sentinel, address.master_name(), pool_factory(self.handler)
        )
        self.watch.start()

    @property
    def _factory(self) -> Any:
        return pool_factory(self.handler)

    def suspect(self) -> None:
        """
        Redis did not answer in time: check now that the connections go to
        the master (a master that hangs is the usual reason for a
        failover).
        """
        self.watch.check()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handler, name)

    def disconnect(self) -> defer.Deferred[Any]:
        """
        Close the connections to the master and to the sentinels.
        """
        self.watch.stop()
        return defer.gatherResults(
            [
                defer.maybeDeferred(self.handler.disconnect),
                defer.maybeDeferred(self.sentinel.disconnect),
            ],
            consumeErrors=True,
        )
