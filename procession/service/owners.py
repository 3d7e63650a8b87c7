"""
Lease owners: worker processes that hold their jobs across connections
and servers, rather than one connection holding them.

A Faktory worker process (its C{wid}) fetches on one pooled connection and
acknowledges on another, possibly through another procession server: its
jobs are held by the process.  This module keeps the part of the queue
service that such front ends need:

 - a registry in Redis of the owners alive (each server records, every
   tick, the owners with a connection open to it; a Faktory C{BEAT}
   records one at once), with the same script as the server registry;
 - the give-back: when an owner has had no open connection and sent no
   beat for the owner timeout (C{--faktory-worker-timeout}), any server
   gives its jobs back to their queues (the attempt counted, error type
   C{WorkerLost}), instead of waiting out their leases;
 - the look-up of a running job's lease by its id alone, for workers that
   acknowledge by id.

Claims for owners go through the dispatcher like any other: a consumer
with a C{holder} (see L{procession.service.dispatcher.lease_holder}) has its
jobs recorded under that holder.  This module never touches Redis but
through the store.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from procession.core.errors import ProcessionError

log = Logger()


class LeaseOwners:
    """
    The registry of lease owners and the give-back of lost ones' jobs.

    @param dispatcher: the queue service (for its store and for whether
        this server may judge others, L{Cluster.judges_servers}).
    @param timeout: seconds without a connection or a beat after which an
        owner counts as lost.
    @ivar connected: gives the owners with a connection open to this
        server now; the front end that has them sets it.
    """

    def __init__(
        self, dispatcher: Any, reactor: IReactorTime, timeout: float = 60.0
    ) -> None:
        self.dispatcher = dispatcher
        self.store = dispatcher.store
        self.reactor = reactor
        self.timeout = timeout
        self.interval = max(0.2, min(dispatcher.sweep_interval, timeout / 4))
        self.connected: Callable[[], Iterable[str]] = tuple
        self._loop: task.LoopingCall | None = None
        self._ticking = False

    def holder(self, owner: str) -> str:
        """
        The holder name an owner's claims are recorded under.
        """
        return self.store.owners.holder(owner)

    def start(self) -> None:
        """
        Record the connected owners and look for lost ones, every tick.
        """
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("The lease owners' upkeep stopped", f)
        )

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def beat(self, owner: str) -> defer.Deferred[Any]:
        """
        Owner C{owner} is alive (it sent a beat, or opened a connection).
        Failures are logged: the next tick records it again.
        """

        def failed(failure: Any) -> None:
            log.warn(
                "Could not record worker {owner} as alive: {error}",
                owner=owner,
                error=failure.getErrorMessage(),
            )

        return self.store.owners.beat(owner).addErrback(failed)

    async def tick(self) -> None:
        """
        One round: the owners connected here are alive; the lost ones'
        jobs go back.
        """
        if self._ticking:
            return
        self._ticking = True
        try:
            here = set(self.connected())
            # All at once: Redis pipelines them on the one connection.
            await defer.gatherResults(
                [self.store.owners.beat(owner) for owner in sorted(here)],
                consumeErrors=True,
            ).addErrback(lambda f: f.value.subFailure)
            await self.recover(here)
        except ProcessionError as e:
            log.warn("The lease owners' upkeep failed: {error}", error=e.message)
        except Exception:
            log.failure("The lease owners' upkeep failed")
        finally:
            self._ticking = False

    async def recover(self, here: Iterable[str] = ()) -> int:
        """
        Give back what lost owners held, and forget them once nothing is
        left.  Every server does this; the scripts make it safe.

        @param here: owners connected to this server (never lost).
        @return: how many jobs went back.
        """
        if not self.dispatcher.cluster.judges_servers():
            return 0
        here = set(here)
        lost = [o for o in await self.store.owners.lost(self.timeout) if o not in here]
        if not lost:
            return 0
        names = await self.store.known_queues()
        total = 0
        for owner in lost:
            holder = self.holder(owner)
            reason = (
                f"worker {owner} had no connection and sent no heartbeat "
                f"for {self.timeout:g} s"
            )
            left = 0
            for name in names:
                for _ in range(10):
                    given, left_here = await self.store.server_lost(
                        name, holder, reason, error_type="WorkerLost"
                    )
                    total += given
                    if not left_here:
                        break
                left += left_here
            if not left:
                await self.store.owners.forget(owner, self.timeout)
        if total:
            log.warn(
                "Gave back {count} jobs held by lost workers {owners}",
                count=total,
                owners=", ".join(lost),
            )
        return total

    def signal(self, owner: str, state: str) -> defer.Deferred[Any]:
        """
        Tell C{owner} C{state} (C{quiet}) through every server: the one
        its next beat reaches answers it.  Failures are logged.
        """

        def failed(failure: Any) -> None:
            log.warn(
                "Could not record that worker {owner} is {state}: {error}",
                owner=owner,
                state=state,
                error=failure.getErrorMessage(),
            )

        return self.store.owners.signal(owner, state).addErrback(failed)

    def signalled(self, owner: str) -> defer.Deferred[str | None]:
        """
        What C{owner} was told through any server (L{signal}), or L{None};
        L{None} too when Redis does not answer.
        """
        return self.store.owners.signalled(owner).addErrback(lambda _: None)

    def running_lease(self, job_id: str) -> defer.Deferred[tuple[str, str]]:
        """
        The queue and lease of a running job, by its id alone.

        @raise JobNotFound: no queue has it.
        @raise LeaseLost: it is not running.
        """
        return defer.Deferred.fromCoroutine(self.store.running_lease(job_id))

    def last_error(self, queue: str, job_id: str) -> defer.Deferred[Any]:
        """
        The newest error recorded for a job (a dict), or L{None}.
        """
        return defer.Deferred.fromCoroutine(self.store.last_error(queue, job_id))
