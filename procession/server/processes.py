"""
Several server processes on one host (C{twist procession --processes N}),
sharing the TCP and HTTP listeners, so that one host's cores all serve.

The first process (the parent) opens the listeners, runs the embedded
Redis when there is one, and starts N-1 children: each is C{twist
procession} again, with the same options, told to use the parent's Redis
and to adopt listening sockets the parent hands down as file descriptors.
For C{tcp:}, C{tcp6:} and C{ssl:} listeners every process gets a socket
of its own bound with C{SO_REUSEPORT} to the same address, and the kernel
spreads new connections evenly over them; other listeners (C{unix:}) are
one socket that every process accepts on.  The parent restarts a child
that dies, and on SIGTERM stops the children and waits for them (each
stops gracefully) before it stops its Redis.

Nothing here knows about jobs: this module only starts, watches and stops
processes, and makes and adopts listening sockets.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Sequence

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.address import IPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from procession.net.internals import (
    endpoint_address,
    endpoint_tls_context,
    keep_shared_unix_socket,
)

log = Logger()

# Where a child finds the listeners it adopts: its file descriptors 3 and 4
# (TCP, HTTP), and 5 for the Faktory listener when there is one.
CHILD_TCP_FD = 3
CHILD_HTTP_FD = 4
CHILD_FIRST_FD = CHILD_TCP_FD

# A child that dies is started again after this long (seconds).
RESTART_DELAY = 1.0

# Run argv[1:] in a session of its own (same pid): a signal for the whole
# terminal's process group (Ctrl-C) reaches the parent alone, which stops
# the children itself.  A child watches for its parent's death instead.
_NEW_SESSION = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"


def _tcp_endpoint(reactor: Any, description: str) -> Any:
    """
    The TCP-like endpoint a description names (C{tcp:}, C{tcp6:},
    C{ssl:}), or L{None} for any other kind.
    """
    from twisted.internet.endpoints import (
        SSL4ServerEndpoint,
        TCP4ServerEndpoint,
        TCP6ServerEndpoint,
    )

    endpoint = serverFromString(reactor, description)
    if isinstance(
        endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint, SSL4ServerEndpoint)
    ):
        return endpoint
    return None


def reuseport_socket(
    family: int, interface: str, port: int, backlog: int = 50
) -> socket.socket:
    """
    A non-blocking listening socket on C{(interface, port)} bound with
    C{SO_REUSEPORT}, so that other processes may bind the same address and
    the kernel spreads new connections over all of them.
    """
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((interface, port))
        s.listen(backlog)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def listen_shared(reactor: Any, description: str, factory: Any) -> Any:
    """
    In the parent of C{--processes N}: listen on a C{tcp:}, C{tcp6:} or
    C{ssl:} description with a socket bound with C{SO_REUSEPORT}, which
    children can bind again; any other description listens as usual (its
    one socket is shared with the children as it is).

    @return: a Deferred of the listening port.
    """
    endpoint = _tcp_endpoint(reactor, description)
    if endpoint is None or not hasattr(socket, "SO_REUSEPORT"):
        return endpoint_listen(reactor, description, factory)
    interface, port, backlog = endpoint_address(endpoint)
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    try:
        s = reuseport_socket(family, interface, port, backlog)
    except OSError as e:
        from twisted.internet.error import CannotListenError

        return defer.fail(CannotListenError(interface, port, e))
    return defer.succeed(adopt(reactor, s.detach(), description, factory))


def endpoint_listen(reactor: Any, description: str, factory: Any) -> Any:
    """
    Listen as the description says.
    """
    return serverFromString(reactor, description).listen(factory)


def adopt(reactor: Any, fd: int, description: str, factory: Any) -> Any:
    """
    Listen with C{factory} on the listening socket C{fd} (which this
    takes: it is closed once adopted), as the C{description} it was made
    for says: an C{ssl:} listener speaks TLS.

    @return: the listening port.
    """
    listening = socket.socket(fileno=fd)
    family = listening.family
    try:
        listening.setblocking(False)
        endpoint = _tcp_endpoint(reactor, description)
        context = endpoint_tls_context(endpoint)
        if context is not None:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            factory = TLSMemoryBIOFactory(context, False, factory)
        # adoptStreamPort duplicates the descriptor.
        port = reactor.adoptStreamPort(listening.fileno(), family, factory)
    finally:
        listening.close()
    if family == socket.AF_UNIX:
        # An adopted unix port, when it stops listening, shuts the socket
        # down (for every process sharing it) and removes its file: neither
        # is this process's to do, the parent's listener lives on.  (An
        # adopted TCP port already leaves the socket alone.)
        keep_shared_unix_socket(port)
    return port


class _Child(protocol.ProcessProtocol):
    """
    One child process, as its parent sees it.
    """

    def __init__(self, children: "Children", number: int) -> None:
        self.children = children
        self.number = number
        self.ended: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Any) -> None:
        self.children._ended(self, reason)
        self.ended.callback(None)


class Children(service.Service):
    """
    The N-1 child server processes of C{--processes N}.

    @param argv: the child's command line after C{twist}'s own options,
        without the listeners it adopts.
    @param twist_args: C{twist}'s options (before C{procession}).
    @param listeners: per listener (TCP, HTTP, then Faktory's when the
        server has one), its description and the
        parent's listening port (whose socket children share when it
        cannot be bound again with C{SO_REUSEPORT}).
    @param env: the children's environment.
    @param stop_timeout: seconds a child has to stop after SIGTERM before it
        is killed.
    """

    def __init__(
        self,
        reactor: Any,
        count: int,
        argv: Sequence[str],
        twist_args: Sequence[str],
        listeners: Sequence[tuple[str, Any]],
        env: dict[str, str],
        stop_timeout: float,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.argv = list(argv)
        self.twist_args = list(twist_args)
        self.listeners = list(listeners)
        self.env = env
        self.stop_timeout = stop_timeout
        self.running_children: dict[int, tuple[_Child, Any]] = {}
        self._restarts: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()
        for number in range(1, self.count):
            self._spawn(number)

    def _sockets(self) -> list[tuple[int, socket.socket | None]]:
        """
        A listening socket per listener for one child: a fresh
        C{SO_REUSEPORT} socket on the parent's address where the parent's
        is one, else the parent's own.
        """
        chosen: list[tuple[int, socket.socket | None]] = []
        for description, port in self.listeners:
            address = port.getHost()
            family = {"TCP": socket.AF_INET}.get(getattr(address, "type", ""))
            if isinstance(address, IPv6Address):
                family = socket.AF_INET6
            if family is not None and _reuses_port(port):
                own = reuseport_socket(family, address.host, address.port)
                chosen.append((own.fileno(), own))
            else:
                chosen.append((port.fileno(), None))
        return chosen

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        sockets = self._sockets()
        child = _Child(self, number)
        args = [
            sys.executable,
            "-c",
            _NEW_SESSION,
            sys.executable,
            "-m",
            "twisted",
            *self.twist_args,
            "procession",
            *self.argv,
            "--inherit",
            ",".join(str(CHILD_FIRST_FD + i) for i in range(len(sockets))),
            "--parent-pid",
            str(os.getpid()),
        ]
        fds = {
            0: 0,
            1: 1,
            2: 2,
        }
        for i, (fd, _) in enumerate(sockets):
            fds[CHILD_FIRST_FD + i] = fd
        try:
            transport = self.reactor.spawnProcess(
                child, sys.executable, args, env=self.env, childFDs=fds
            )
        finally:
            # The child has its copies: a socket of its own must not stay
            # open here, or connections the kernel gives it would wait
            # unanswered after the child dies.
            for _, s in sockets:
                if s is not None:
                    s.close()
        self.running_children[number] = (child, transport)
        log.info(
            "Started server process {number} (pid {pid})",
            number=number,
            pid=transport.pid,
        )

    def _ended(self, child: _Child, reason: Any) -> None:
        current = self.running_children.get(child.number)
        if current is not None and current[0] is child:
            del self.running_children[child.number]
        if not self.running:
            return
        log.warn(
            "Server process {number} ended ({reason}); starting it again",
            number=child.number,
            reason=reason.getErrorMessage(),
        )
        self._restarts[child.number] = self.reactor.callLater(
            RESTART_DELAY, self._spawn, child.number
        )

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        waiting = []
        for child, transport in list(self.running_children.values()):
            waiting.append(child.ended)
            try:
                transport.signalProcess("TERM")
            except Exception:
                continue
            kill = self.reactor.callLater(self.stop_timeout, _kill, transport)
            child.ended.addBoth(_cancel, kill)
        return defer.DeferredList(waiting).addCallback(lambda _: None)


def _reuses_port(port: Any) -> bool:
    """
    Whether a parent's listening socket was bound with C{SO_REUSEPORT}.
    """
    try:
        s = socket.socket(fileno=os.dup(port.fileno()))
    except OSError:
        return False
    try:
        return bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
    except OSError:
        return False
    finally:
        s.close()


def _kill(transport: Any) -> None:
    log.warn("A server process ignored SIGTERM: killing it")
    try:
        transport.signalProcess("KILL")
    except Exception:
        pass


def _cancel(result: Any, call: Any) -> Any:
    if call.active():
        call.cancel()
    return result


def watch_parent(reactor: Any, parent_pid: int, interval: float = 1.0) -> Any:
    """
    In a child: stop when the parent is gone (it was killed: nobody will
    stop this process otherwise).

    @return: the L{task.LoopingCall} that watches.
    """
    from twisted.internet import task

    def check() -> None:
        if os.getppid() != parent_pid:
            log.warn("The parent process is gone: stopping")
            os.kill(os.getpid(), signal.SIGTERM)

    watcher = task.LoopingCall(check)
    watcher.clock = reactor
    watcher.start(interval, now=False)
    return watcher


def twist_arguments(argv: Sequence[str]) -> list[str]:
    """
    C{twist}'s own options in a command line (those before the
    C{procession} subcommand), for the children.
    """
    args = list(argv[1:])
    if "procession" in args:
        return args[: args.index("procession")]
    return []
