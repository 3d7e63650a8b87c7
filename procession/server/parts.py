"""
The parts of one procession server, each a child service of
L{procession.server.tap.ProcessionService} that starts and stops itself:
the embedded Redis, the store's connection, the dispatcher, the upkeep
timers (heartbeat and sweep), the periodic scheduler, the TCP, Faktory
and HTTP listeners, the other processes of C{--processes} and the watch on
a parent process.

Start-up runs L{Part.start} of each in order, each once the one before it
is up (Redis must answer before the dispatcher runs, the heartbeat must be
in the registry before a listener opens).  Shutdown runs three rounds, the
parts in the reverse order each time: L{Part.quiet} (take no new work),
L{Part.drain} (the front ends' workers finish what they hold, or it is
released; all front ends at once, within C{--shutdown-grace}) and
L{Part.close} (let go of the rest).  A part reads the options and records what it builds on
the server (C{server.store}, C{server.dispatcher}, ...), where the parts
after it and the tests find it.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

if TYPE_CHECKING:
    from procession.server.tap import ProcessionService

log = Logger()


class Part(service.Service):
    """
    One part of a server; every step does nothing unless overridden.

    @ivar server: the server this part belongs to.
    """

    def __init__(self, server: ProcessionService) -> None:
        self.server = server

    async def start(self) -> None:
        """
        Bring this part up; the parts before it are up.
        """

    async def quiet(self) -> None:
        """
        Take no new work (first round of shutdown).
        """

    async def drain(self) -> None:
        """
        Let work in hand finish or give it back (second round, every part's
        at once).
        """

    async def close(self) -> None:
        """
        Let go of everything else (last round).  Also called on a part
        whose start failed half-way: check what exists.
        """


class EmbeddedRedis(Part):
    """
    The redis-server this server runs itself, without C{--redis}.
    """

    async def start(self) -> None:
        from procession.redis.address import RedisAddress

        server, options = self.server, self.server.options
        address = options["redis-address"]
        if address is None:
            from procession.redis.embedded import EmbeddedRedis as Embedded

            data_dir = os.path.abspath(options["data-dir"])
            server.embedded = Embedded(
                options["redis-binary"],
                data_dir,
                options["fsync"],
                reactor=server.reactor,
            )
            server.embedded.startService()
            path = await server.embedded.whenReady()
            address = RedisAddress(path=path)
            log.info("Embedded Redis is up, data in {data_dir}", data_dir=data_dir)
        server.address = address

    async def close(self) -> None:
        if self.server.embedded is not None:
            await self.server.embedded.stopService()


class StoreConnection(Part):
    """
    The connection to Redis and the job store on it, once Redis answers.
    """

    async def start(self) -> None:
        from procession.redis.connection import connect
        from procession.store import health
        from procession.store.jobs import Store

        server, options = self.server, self.server.options
        address = server.address
        log.info("Using Redis at {address}", address=address.describe())
        replicas_ack = options["replicas-ack"]
        # WAIT holds its connection until the replicas answer: give other
        # commands connections of their own meanwhile.
        server.redis = connect(address, poolsize=4 if replicas_ack else 1)
        server.store = Store(
            server.redis,
            server.reactor,
            server.reactor,
            namespace=options["namespace"],
            timeout=options["redis-timeout"],
            replicas_ack=replicas_ack,
            fail_fast=bool(address.sentinels),
        )
        await health.wait_until_answering(server.store, server.reactor)
        if options["redis-address"] is not None:
            # An external Redis: warn where its configuration could lose or
            # evict jobs.
            for warning in await health.configuration_warnings(
                server.store, options["replicas-ack"]
            ):
                log.warn("{warning}", warning=warning)

    async def close(self) -> None:
        if self.server.redis is not None:
            try:
                await self.server.redis.disconnect()
            except Exception:
                pass


class QueueService(Part):
    """
    The dispatcher and its management side, and the wake-up listener that
    tells it of work pushed anywhere.
    """

    async def start(self) -> None:
        from procession.redis.wake import WakeListener
        from procession.service.admin import Admin
        from procession.service.dispatcher import Dispatcher

        server, options = self.server, self.server.options
        server.dispatcher = dispatcher = Dispatcher(
            server.store,
            server.reactor,
            sweep_interval=options["sweep-interval"],
            keep_completed=options["keep-completed"],
            keep_dead=options["keep-dead"],
            max_dead=options["max-dead"],
            server_timeout=options["server-timeout"],
        )
        server.admin = Admin(dispatcher)
        workflows = dispatcher.workflows

        def reconnected() -> None:
            dispatcher.wake_all()
            workflows.reconnected()

        server.wake_listener = WakeListener(
            server.address,
            server.store.channel,
            dispatcher.wake,
            reconnected,
            server.store.server_id,
            on_flow=workflows.heard,
        )
        server.wake_listener.start()

    async def quiet(self) -> None:
        dispatcher = self.server.dispatcher
        if dispatcher is not None:
            dispatcher.quiet()
            await dispatcher.claims_settled()

    async def close(self) -> None:
        if self.server.wake_listener is not None:
            await self.server.wake_listener.stop()


class Upkeep(Part):
    """
    The heartbeat into the server registry and the periodic sweep.
    """

    async def start(self) -> None:
        server = self.server
        server.dispatcher.cluster.describe = server.describe
        # In the registry before any worker can take a job here: jobs held
        # by a server that is not in it would only come back when their
        # leases expire.
        await server.dispatcher.cluster.heartbeat()
        server.dispatcher.start()

    async def quiet(self) -> None:
        # The heartbeat goes on until close: workers may still be
        # finishing jobs that this server holds.
        if self.server.dispatcher is not None:
            self.server.dispatcher.stop_sweeping()

    async def close(self) -> None:
        if self.server.dispatcher is not None:
            await self.server.dispatcher.cluster.leave()


class PeriodicScheduler(Part):
    """
    The periodic entries' scheduler (docs/periodic.rst), with the
    C{--periodic} file loaded, and reloaded on SIGHUP.
    """

    async def start(self) -> None:
        from procession.service.periodic import Periodic

        server, options = self.server, self.server.options
        server.periodic = Periodic(
            server.store,
            server.reactor,
            max_job_size=options["max-job-size"],
            path=options["periodic"],
        )
        await server.periodic.load_file()
        server.periodic.start()
        if options["periodic"]:
            self._reload_on_sighup()

    def _reload_on_sighup(self) -> None:
        """
        Reload the C{--periodic} file on SIGHUP (in the reactor's thread).
        """
        import signal

        server = self.server

        def hup(signum: int, frame: Any) -> None:
            server.reactor.callFromThread(server.periodic.reload)

        signal.signal(signal.SIGHUP, hup)

    async def quiet(self) -> None:
        if self.server.periodic is not None:
            await self.server.periodic.stop()


class TCPListener(Part):
    """
    The native worker protocol's listener.
    """

    async def start(self) -> None:
        from procession.tcp.protocol import WorkerFactory

        server, options = self.server, self.server.options
        server.worker_factory = WorkerFactory(
            server.dispatcher,
            server.reactor,
            token=options["token"],
            max_frame=options["max-frame"],
            max_job_size=options["max-job-size"],
            max_connections=options["max-connections"],
            handshake_timeout=options["handshake-timeout"],
        )
        server.worker_factory.periodic = server.periodic
        server.admin.add_worker_source(server.worker_factory)
        server.tcp_port = await server.listen("tcp", 0, server.worker_factory)
        server.listening["tcp"] = describe_port(server.tcp_port)

    async def quiet(self) -> None:
        if self.server.tcp_port is not None:
            await self.server.tcp_port.stopListening()

    async def drain(self) -> None:
        factory = self.server.worker_factory
        if factory is None:
            return
        grace = self.server.options["shutdown-grace"]
        factory.quiet_all()
        held = factory.jobs_in_hand()
        if held:
            log.info(
                "Shutting down: waiting up to {grace} s for workers to "
                "finish {held} jobs",
                grace=grace,
                held=held,
            )
            finished = factory.when_no_jobs_in_hand()
            finished.addTimeout(grace, self.server.reactor)
            try:
                await finished
            except defer.TimeoutError:
                pass
        left = factory.jobs_in_hand()
        if left:
            log.info("Shutting down: giving {left} jobs back", left=left)
        await factory.release_all("the server shut down")


class FaktoryListener(Part):
    """
    The Faktory listener (C{--faktory}): a second front end on the same
    dispatcher, with the registry of the Faktory worker processes' leases.
    """

    async def start(self) -> None:
        from procession.service.owners import LeaseOwners
        from procession.tcp.faktory import FaktoryFactory

        server, options = self.server, self.server.options
        server.lease_owners = LeaseOwners(
            server.dispatcher, server.reactor, options["faktory-worker-timeout"]
        )
        server.faktory_factory = FaktoryFactory(
            server.dispatcher,
            server.lease_owners,
            server.admin,
            server.reactor,
            password=options["token"],
            max_line=options["max-frame"],
            max_job_size=options["max-job-size"],
            max_connections=options["max-connections"],
            handshake_timeout=options["handshake-timeout"],
            allow_flush=bool(options["faktory-allow-flush"]),
        )
        server.lease_owners.start()
        from twisted.internet import task

        server.faktory_prune = task.LoopingCall(server.faktory_factory.prune)
        server.faktory_prune.clock = server.reactor
        server.faktory_prune.start(5.0, now=False).addErrback(
            lambda f: log.failure("The Faktory listener's upkeep stopped", f)
        )
        server.admin.add_worker_source(server.faktory_factory)
        server.faktory_port = await server.listen("faktory", 2, server.faktory_factory)
        server.listening["faktory"] = describe_port(server.faktory_port)
        log.info(
            "Serving Faktory clients on {faktory}",
            faktory=server.listening["faktory"],
        )

    async def quiet(self) -> None:
        if self.server.faktory_port is not None:
            await self.server.faktory_port.stopListening()

    async def drain(self) -> None:
        """
        Wait (within C{--shutdown-grace}) for every Faktory worker
        connected here to have been told to terminate (its BEAT answered
        so) and for the jobs they hold to finish, then close their
        connections.  Their jobs stay theirs: a worker may finish them
        through another server; the others come back after the Faktory
        worker timeout.
        """
        from twisted.internet.defer import TimeoutError

        server = self.server
        factory = server.faktory_factory
        if factory is None:
            return
        deadline = server.reactor.seconds() + server.options["shutdown-grace"]
        factory.quiet_all()
        if server.faktory_prune is not None and server.faktory_prune.running:
            server.faktory_prune.stop()
        while not factory.drained() and server.reactor.seconds() < deadline:
            # Jobs acknowledged through another server or process are not
            # in hand here any more: nothing here hears of them, so look
            # every half second; the rest wakes the wait as it happens.
            await factory.prune(older_than=0)
            wait = min(0.5, deadline - server.reactor.seconds())
            try:
                await factory.when_drained().addTimeout(max(wait, 0), server.reactor)
            except TimeoutError:
                pass
        factory.close_all()
        if server.lease_owners is not None:
            server.lease_owners.stop()

    async def close(self) -> None:
        # A start that failed half-way leaves the upkeep running.
        prune = self.server.faktory_prune
        if prune is not None and prune.running:
            prune.stop()


class HTTPListener(Part):
    """
    The HTTP listener: worker API, management API, UI, metrics.
    """

    async def start(self) -> None:
        from procession.http.gate import Gate, parse_allowed_hosts
        from procession.server.tap import is_local
        from procession.http.limits import HTTPConnectionLimit
        from procession.http.site import HTTPServer
        from procession.http.web import Site

        server, options = self.server, self.server.options
        server.http_server = HTTPServer(
            server.dispatcher,
            admin=server.admin,
            worker_token=options["token"],
            admin_token=options["admin-token"],
            max_body=options["max-job-size"],
            poll_timeout=options["poll-timeout"],
            metrics_auth=bool(options["metrics-auth"]),
        )
        server.http_server.periodic = server.periodic
        site = Site(
            server.http_server.resource(),
            access_log=bool(options["http-access-log"]),
            gate=Gate(
                worker_token=options["token"],
                admin_token=options["admin-token"],
                max_body=options["max-job-size"],
                allowed_hosts=parse_allowed_hosts(options["allowed-hosts"]),
                loopback=is_local(options["http"])
                and not options["http"].startswith("unix:"),
            ),
            clock=server.reactor,
        )
        server.http_limit = HTTPConnectionLimit(
            site, options["max-http-connections"], server.reactor
        )
        server.http_port = await server.listen("http", 1, server.http_limit)
        server.listening["http"] = describe_port(server.http_port)

    async def quiet(self) -> None:
        if self.server.http_port is not None:
            await self.server.http_port.stopListening()


class OtherProcesses(Part):
    """
    The other processes of C{--processes N}, on this process's Redis and
    listeners; they stop, gracefully, alongside this one.
    """

    _stopped: defer.Deferred[None] | None = None

    async def start(self) -> None:
        from procession.server.processes import Children, twist_arguments
        from procession.server.tap import child_arguments, child_environment

        server, options = self.server, self.server.options
        if options["redis"]:
            url = options["redis"]
        else:
            url = "unix://" + server.address.path
        listeners = [
            (options["tcp"], server.tcp_port),
            (options["http"], server.http_port),
        ]
        if server.faktory_port is not None:
            listeners.append((options["faktory"], server.faktory_port))
        server.children = Children(
            server.reactor,
            options["processes"],
            child_arguments(options),
            twist_arguments(sys.argv),
            listeners,
            child_environment(options, url),
            stop_timeout=options["shutdown-grace"] + 15,
        )
        server.children.startService()

    async def quiet(self) -> None:
        if self.server.children is not None:
            self._stopped = self.server.children.stopService()

    async def close(self) -> None:
        if self._stopped is not None:
            await self._stopped


class ParentWatch(Part):
    """
    In a child of C{--processes}: stop when the parent process is gone.
    """

    async def start(self) -> None:
        from procession.server.processes import watch_parent

        server = self.server
        server.parent_watch = watch_parent(server.reactor, server.options["parent-pid"])

    async def quiet(self) -> None:
        watch = self.server.parent_watch
        if watch is not None and watch.running:
            watch.stop()


def parts_for(server: ProcessionService) -> list[Part]:
    """
    The parts of C{server}, in start-up order, as its options ask.
    """
    options = server.options
    parts: list[Part] = []
    if options["parent-pid"] is not None:
        # First up: a child whose parent dies while it starts stops too.
        parts.append(ParentWatch(server))
    parts += [
        EmbeddedRedis(server),
        StoreConnection(server),
        QueueService(server),
        Upkeep(server),
        PeriodicScheduler(server),
        TCPListener(server),
    ]
    if options["faktory"] is not None:
        parts.append(FaktoryListener(server))
    parts.append(HTTPListener(server))
    if options["processes"] > 1:
        parts.append(OtherProcesses(server))
    return parts


def describe_port(port: Any) -> str:
    """
    Where a listening port listens: C{host:port}, or a socket's path.
    """
    address = port.getHost()
    if hasattr(address, "port"):
        return f"{address.host}:{address.port}"
    return str(getattr(address, "name", address))
