"""
The wake-up listener: one pub/sub connection per server that hears every
server's pushes, so that waiting consumers are served at once.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from procession.redis.address import RedisAddress
from procession.redis.internals import sentinel_endpoint
from procession.redis.sentinel import SENTINEL_MAX_RETRY_DELAY, MasterWatch, _sentinel
from twisted.logger import Logger

log = Logger()


class WakeListener:
    """
    A pub/sub subscription to the wake channel: calls C{on_wake(queue)} for
    every push (on any server but the one of C{server_id}, which wakes its
    own consumers) and any other change that queued work, and
    C{on_connect()} after every (re)connection, when messages may have been
    missed, and C{on_flow(kind, job_id)} for the messages about one job
    (C{!done <id>}, C{!cancel <id>}: see L{procession.service.workflows}).
    """

    def __init__(
        self,
        address: RedisAddress,
        channel: str,
        on_wake: Callable[[str], None],
        on_connect: Callable[[], None],
        server_id: str | None = None,
        on_flow: Callable[[str, str], None] | None = None,
    ) -> None:
        self._address = address
        self._channel = channel
        self._on_wake = on_wake
        self._server_id = server_id
        self._on_connect = on_connect
        self._on_flow = on_flow
        self._factory: Any = None
        self._watch: MasterWatch | None = None

    def _heard(self, message: str) -> None:
        if message.startswith("!"):
            # About one job (workflow.lua): '!done <id>', '!cancel <id>'.
            if self._on_flow is not None:
                kind, _, job_id = message[1:].partition(" ")
                self._on_flow(kind, job_id)
            return
        queue, _, origin = message.partition(" ")
        # A server's own pushes woke its consumers already.
        if not origin or origin != self._server_id:
            self._on_wake(queue)

    def start(self) -> None:
        """
        Connect and subscribe; keep reconnecting until L{stop}.
        """
        import txredisapi
        from twisted.internet import reactor
        from twisted.internet.interfaces import IStreamClientEndpoint
        from twisted.internet.endpoints import (
            HostnameEndpoint,
            UNIXClientEndpoint,
            wrapClientTLS,
        )

        listener = self

        class Subscriber(txredisapi.SubscriberProtocol):
            def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
                listener._heard(message)

        class Factory(txredisapi.SubscriberFactory):
            protocol = Subscriber

            def addConnection(self, conn: Any) -> None:
                super().addConnection(conn)
                if conn.connected:
                    conn.subscribe(listener._channel).addCallback(
                        lambda _: listener._on_connect()
                    ).addErrback(subscribe_failed)

        def subscribe_failed(failure: Any) -> None:
            # Stopping while a SUBSCRIBE is in flight loses it: not a fault.
            # Otherwise the factory reconnects and subscribes again.
            if listener._factory is None:
                return
            log.failure("subscribing", failure)

        address = self._address
        factory = Factory(isLazy=True)
        factory.dbid = None
        factory.password = address.password
        factory.username = address.username
        factory.convertNumbers = False
        self._sentinel = None
        if address.sentinels:
            # Follow the master through failovers, as SentinelPool does.
            self._sentinel = _sentinel(address)
            factory.sentinel_manager = self._sentinel
            factory.service_name = address.master
            factory.is_master = True
            factory.maxDelay = SENTINEL_MAX_RETRY_DELAY
            factory.initialDelay = 0.1
            factory.startConnecting(sentinel_endpoint(factory))
            self._factory = factory
            self._watch = MasterWatch(self._sentinel, address.master_name(), factory)
            self._watch.start()
            return
        endpoint: IStreamClientEndpoint
        if address.path:
            endpoint = UNIXClientEndpoint(reactor, address.path, timeout=5)
        else:
            host = address.tcp_host()
            endpoint = HostnameEndpoint(reactor, host, address.port, timeout=5)
            if address.tls:
                from twisted.internet.ssl import optionsForClientTLS

                endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        factory.startConnecting(endpoint)
        self._factory = factory

    def stop(self) -> defer.Deferred[None]:
        """
        Unsubscribe and close the connection.
        """
        if self._factory is None:
            return defer.succeed(None)
        factory, self._factory = self._factory, None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        stopping = [defer.maybeDeferred(factory.disconnect)]
        sentinel = getattr(self, "_sentinel", None)
        if sentinel is not None:
            stopping.append(defer.maybeDeferred(sentinel.disconnect))
        return defer.gatherResults(stopping, consumeErrors=True).addCallbacks(
            lambda _: None, lambda _: None
        )


# Error replies of a Redis that will serve again by itself.
