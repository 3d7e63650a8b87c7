"""
This server's part in a cluster of servers on one Redis: it heartbeats
into the server registry with a description of itself and its workers,
and releases the jobs that a server which stopped heartbeating (it
died, or lost Redis) held for its worker connections, once the server
timeout has passed.  Any server can list the workers of the whole cluster
from the others' descriptions.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Callable, Sequence

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from procession.core.errors import ProcessionError
from procession.core.job import format_time
from procession.store.jobs import Store

log = Logger()

# The most jobs listed per worker in a heartbeat's description (the
# description is written every heartbeat, so it must stay small).
MAX_DESCRIBED_JOBS = 100


class Cluster:
    """
    Heartbeat, registry upkeep and recovery of lost servers' jobs.

    @param store: the job store.
    @param reactor: for the heartbeat's timer and the time.
    @param server_timeout: seconds without a heartbeat after which a
        server counts as lost and the jobs its connections held are given
        back.
    @param heartbeat_interval: seconds between heartbeats.
    @ivar describe: gives the parts of this server's description that
        only the front ends know (its C{workers}, its listeners), for the
        heartbeat; start-up wiring sets it.
    """

    def __init__(
        self,
        store: Store,
        reactor: IReactorTime,
        server_timeout: float = 10.0,
        heartbeat_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.reactor = reactor
        self.server_timeout = server_timeout
        self.heartbeat_interval = heartbeat_interval
        self.describe: Callable[[], dict[str, Any]] = dict
        self.started_at = reactor.seconds()
        self._heartbeat: task.LoopingCall | None = None
        # Since when (reactor seconds) this server's heartbeats have gone
        # through without a break; None while they fail.
        self._heard_since: float | None = None
        self._last_beat: float | None = None
        self._beating: set[defer.Deferred[Any]] = set()

    def start(self) -> None:
        """
        Start heartbeating, now and every C{heartbeat_interval} seconds.
        """
        self._heartbeat = task.LoopingCall(self.heartbeat)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(self.heartbeat_interval, now=True).addErrback(
            lambda f: log.failure("The heartbeat stopped", f)
        )

    def stop(self) -> None:
        """
        Stop heartbeating (a heartbeat on its way still arrives).
        """
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()

    async def leave(self) -> None:
        """
        Leave the server registry, for a clean stop, after the front ends
        have released the jobs their workers held: jobs still recorded as
        held here (a claim whose reply was lost) go back to their queues,
        then this server's entry goes.  If Redis does not answer, the
        entry stays, and another server gives the jobs back once the
        server timeout has passed.
        """
        self.stop()
        # A heartbeat still on its way would put this server back.
        while self._beating:
            await defer.DeferredList(list(self._beating))
        own = self.store.server_id
        try:
            for name in await self.store.known_queues():
                await self.release_held(name, own, "the server stopped")
            await self.store.registry.deregister()
        except ProcessionError as e:
            log.warn(
                "Could not leave the server registry ({error}); another "
                "server gives back what this one held",
                error=e.message,
            )

    def description(self) -> dict[str, Any]:
        """
        What this server's heartbeat says about it: where it runs, since
        when, and what the front ends add (see L{describe}), its workers'
        job lists cut to L{MAX_DESCRIBED_JOBS} each.
        """
        described: dict[str, Any] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": format_time(int(self.started_at * 1000)),
        }
        described.update(self.describe())
        workers = []
        for worker in described.get("workers", []):
            jobs = worker.get("jobs")
            if jobs is not None and len(jobs) > MAX_DESCRIBED_JOBS:
                worker = {**worker, "jobs": jobs[:MAX_DESCRIBED_JOBS]}
            workers.append(worker)
        described["workers"] = workers
        return described

    async def heartbeat(self) -> None:
        """
        Tell the registry this server is alive, with its description.
        Failures are logged: a server that cannot reach Redis cannot do
        anything else either.
        """
        try:
            text = json.dumps(self.description(), separators=(",", ":"))
            beat = self.store.registry.heartbeat(text, self.server_timeout)
            self._beating.add(beat)
            try:
                await beat
            finally:
                self._beating.discard(beat)
        except ProcessionError as e:
            if self._heard_since is not None:
                log.warn("The heartbeat failed: {error}", error=e.message)
            self._heard_since = None
            return
        except Exception:
            self._heard_since = None
            log.failure("The heartbeat failed")
            return
        now = self.reactor.seconds()
        if (
            self._heard_since is None
            or self._last_beat is None
            or now - self._last_beat > self.server_timeout / 2
        ):
            self._heard_since = now
        self._last_beat = now

    def judges_servers(self) -> bool:
        """
        Whether this server may declare others lost: only after its own
        heartbeats have gone through for a whole server timeout.  After an
        outage of Redis every heartbeat is old; the others must have had
        the time to reconnect and beat again before their silence means
        anything.
        """
        return (
            self._heard_since is not None
            and self.reactor.seconds() - self._heard_since >= self.server_timeout
        )

    async def recover_lost_servers(self, names: Sequence[str]) -> None:
        """
        Give back what lost servers held, and forget them once nothing is
        left.  Every server does this; the scripts make it safe.
        """
        if not self.judges_servers():
            return
        own = self.store.server_id
        for server_id in await self.store.registry.lost_servers(self.server_timeout):
            if server_id == own:
                continue
            left = 0
            taken = 0
            for name in names:
                given, still = await self.release_held(
                    name,
                    server_id,
                    f"server {server_id} was not heard of for "
                    f"{self.server_timeout:g} s",
                )
                taken += given
                left += still
            if taken:
                log.warn(
                    "Server {server} is lost: gave back {count} jobs its workers held",
                    server=server_id,
                    count=taken,
                )
            if not left:
                await self.store.registry.forget_server(server_id, self.server_timeout)

    async def release_held(
        self, name: str, server_id: str, reason: str, rounds: int = 10
    ) -> tuple[int, int]:
        """
        Release the jobs of queue C{name} held by server C{server_id} back
        to the queue, a bounded number of batches at a time.

        @return: (jobs released, jobs still recorded as held).
        """
        total = 0
        left = 0
        for _ in range(rounds):
            given, left = await self.store.server_lost(name, server_id, reason)
            total += given
            if not left:
                break
        return total, left

    async def workers(self, local: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """
        The workers of every live server: C{local}, this server's own (read
        now), then the others' as their last heartbeat described them, each
        with the C{server} it is connected to.
        """
        own = self.store.server_id
        workers = [{**w, "server": own} for w in local]
        for described in await self.store.registry.live_servers():
            if described["id"] == own:
                continue
            for worker in described.get("workers") or []:
                if isinstance(worker, dict):
                    workers.append({**worker, "server": described["id"]})
        return workers
