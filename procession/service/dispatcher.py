"""
The queue service: the one API that every front end (the TCP worker
protocol, the HTTP API) calls, between them and the store.

It keeps the live, per-process part of procession: which consumers (worker
connections, HTTP long-polls) wait on which queues with how much credit.
Work reaches them by push, never by polling: a push on any server publishes
a wake-up on Redis pub/sub (while another server may have consumers
waiting: the queue's waiting set, kept by the claim script), and wakes its
own consumers itself; the dispatcher answers a wake-up with one claim
script call per queue for as many jobs as its waiting consumers have room
for.  It also coalesces acks, fails and extends that arrive in the same
reactor turn into one script call per queue, and runs the periodic sweep.

It holds no state that a crash could lose: every job is in Redis, and a
lease whose holder vanished comes back by itself when it expires, or
sooner, when this server's L{Cluster} (L{procession.service.cluster})
finds the server that held it lost.
"""

from __future__ import annotations

import base64
import os
from contextlib import nullcontext
from typing import Any, Iterable, Protocol, Sequence

from attrs import define, field
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from procession.core.errors import (
    ProcessionError,
    ShuttingDown,
)
from procession.core.job import QUEUE_NAME, ClaimedJob, NewJob, PushOutcome
from procession.service.cluster import Cluster
from procession.service.coalescer import Coalescer
from procession.service.pollers import Pollers
from procession.service.workflows import Workflows
from procession.store.jobs import Store
from procession.net.transport import corked

log = Logger()

# The most jobs one claim script call may lease.
MAX_CLAIM = 1000

# The fewest jobs a claim asks for while consumers have room for more.  A
# claim asks for about twice what the last one found (so a queue that a
# trickle of pushes keeps nearly empty costs one small claim per job), and
# four times as many after one that found every job it asked for (so a backlog is
# claimed in batches of MAX_CLAIM after a few calls).
MIN_CLAIM = 16


class Consumer(Protocol):
    """
    Something that takes jobs: a worker connection or an HTTP long-poll.
    """

    @property
    def name(self) -> str:
        """
        Its name, as its jobs record it (C{worker}).
        """

    @property
    def queues(self) -> Sequence[str]:
        """
        The queues it takes jobs from, the one it likes best first.
        """

    def room(self) -> int:
        """
        How many more jobs it can take now.
        """

    def deliver(self, job: ClaimedJob) -> bool:
        """
        Hand it a leased job; L{False} when it can no longer take it (gone).
        """


def lease_holder(consumer: Consumer) -> str | None:
    """
    Who holds the leases of C{consumer}'s jobs: L{None} when nobody does
    but the lease itself (an HTTP long-poll, see L{connection_bound}),
    C{""} for this server (a TCP worker's connection), or the name of a
    lease owner that holds them across connections and servers (a
    Faktory worker process, its C{holder}).
    """
    if not connection_bound(consumer):
        return None
    return getattr(consumer, "holder", "") or ""


def connection_bound(consumer: Consumer) -> bool:
    """
    Whether the leases of C{consumer}'s jobs live and die with its
    connection to this server (a TCP worker: yes; an HTTP long-poll, whose
    worker may ack through any server: no, it says C{connection_bound =
    False}).  Only such jobs are released when this server is lost.
    """
    return bool(getattr(consumer, "connection_bound", True))


def new_lease(queue: str) -> str:
    """
    A fresh, unguessable lease token for a job of C{queue}:
    C{<random>@<queue>}.

    The queue rides along so that a client holding nothing but the job's id
    and lease (an HTTP worker) names the queue its ack goes to; queue names
    never contain C{@}, and the random part is URL-safe base64.
    """
    return new_leases(queue, 1)[0]


def new_leases(queue: str, count: int) -> list[str]:
    """
    C{count} fresh lease tokens for jobs of C{queue}, as L{new_lease}
    makes them, from one read of the system's random source (a claim
    wants up to a thousand at once; a system call each would cost more
    than the rest of the claim).
    """
    # 9 random bytes are 12 base64 characters, without padding.
    text = base64.urlsafe_b64encode(os.urandom(9 * count)).decode("ascii")
    suffix = "@" + queue
    return [text[i : i + 12] + suffix for i in range(0, 12 * count, 12)]


def lease_queue(lease: str) -> str | None:
    """
    The queue a lease token from L{new_lease} was issued for, or L{None}
    when C{lease} cannot be one.
    """
    token, at, queue = lease.rpartition("@")
    if not at or not token or not QUEUE_NAME.match(queue):
        return None
    return queue


@define
class QueueState:
    """
    What this process knows of one queue between claims.

    C{empty} is a hint, cleared by every wake-up: while it is set,
    consumers that prefer this queue may take work from their next one.
    """

    consumers: list[Consumer] = field(factory=list)
    empty: bool = False
    claiming: bool = False
    dirty: bool = False
    # How many jobs the next claim asks for at most (see MIN_CLAIM).
    claim_size: int = MIN_CLAIM
    # How many claims have been answered (or failed).
    answered: int = 0
    # Whose turn it is when consumers with different lease holders wait
    # (connection-bound ones, HTTP polls, lease owners): one claim serves
    # one holder (see Dispatcher._pump).
    turn: int = 0
    # While the queue's rate limit holds claims back: the one timer that
    # claims again when its window opens a slot (docs/limits.rst).
    slot_timer: Any = None

    def forget(self) -> None:
        """
        Cancel the timer (the queue's state goes, or the server quiets).
        """
        if self.slot_timer is not None and self.slot_timer.active():
            self.slot_timer.cancel()
        self.slot_timer = None


class Dispatcher:
    """
    The queue service.

    @param store: the job store.
    @param reactor: for timers and coalescing.
    @param server_timeout: seconds without a heartbeat after which a
        server counts as lost and the jobs its connections held are given
        back.
    @ivar cluster: this server's heartbeat and recovery of lost servers'
        jobs (its C{describe} is set by start-up wiring).
    """

    def __init__(
        self,
        store: Store,
        reactor: IReactorTime,
        sweep_interval: float = 1.0,
        keep_completed: float = 3600.0,
        keep_dead: float = 30 * 86400.0,
        max_dead: int = 10_000,
        server_timeout: float = 10.0,
    ) -> None:
        self.store = store
        self.reactor = reactor
        self.sweep_interval = sweep_interval
        self.keep_completed = keep_completed
        self.keep_dead = keep_dead
        self.max_dead = max_dead
        self.cluster = Cluster(
            store,
            reactor,
            server_timeout,
            heartbeat_interval=min(sweep_interval, server_timeout / 4),
        )
        self.accepting = True
        self._queues: dict[str, QueueState] = {}
        self._consumers: set[Consumer] = set()
        self._scheduled: set[str] = set()
        self._pump_call: Any = None
        self._sweeper: task.LoopingCall | None = None
        self._sweeping = False
        self._sweeps = 0
        self._claims_in_flight: set[defer.Deferred[Any]] = set()
        # One call of a queue on its way at once, the coalescers' default.
        # (Two made smaller batches: 0.027 script calls per job drained
        # instead of 0.016 and a third more server CPU per job in one full
        # benchmark run, bench/RESULTS.rst.)
        self._push = Coalescer(lambda queue, jobs: store.push(jobs))
        self._ack = Coalescer(store.ack)
        self._fail = Coalescer(store.fail)
        self._extend = Coalescer(store.extend)
        self.pollers = Pollers(reactor)
        self.workflows = Workflows(store, reactor, keep_completed)

    # -- life cycle

    def start(self) -> None:
        """
        Start the periodic sweep and heartbeat.
        """
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = self.reactor
        self._sweeper.start(self.sweep_interval, now=True).addErrback(
            lambda f: log.failure("The sweep stopped", f)
        )
        self.cluster.start()

    def stop_sweeping(self) -> None:
        """
        Stop the periodic sweep.  The heartbeat goes on until
        L{Cluster.leave}: workers may still be finishing jobs that this server holds.
        """
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()

    def quiet(self) -> None:
        """
        Stop handing out work: no claim starts after this.  Consumers are
        told by their front ends, except open HTTP polls, which end now.
        """
        self.accepting = False
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        self._pump_call = None
        for state in self._queues.values():
            state.forget()
        self.pollers.quiet()

    def claims_settled(self) -> defer.Deferred[Any]:
        """
        Fires when no claim is in flight (so no job can still be handed out).
        """
        return defer.DeferredList(list(self._claims_in_flight))

    # -- consumers

    def _queue(self, name: str) -> QueueState:
        state = self._queues.get(name)
        if state is None:
            state = self._queues[name] = QueueState()
        return state

    def add_consumer(self, consumer: Consumer) -> None:
        """
        Start handing jobs from C{consumer.queues} to C{consumer}.
        """
        self._consumers.add(consumer)
        for name in consumer.queues:
            self._queue(name).consumers.append(consumer)
        self.ready(consumer)

    def remove_consumer(self, consumer: Consumer) -> None:
        """
        Stop handing jobs to C{consumer}; jobs it holds are its front end's
        to release.
        """
        if consumer not in self._consumers:
            return
        self._consumers.discard(consumer)
        for name in consumer.queues:
            state = self._queues.get(name)
            if state is not None:
                state.consumers.remove(consumer)
                if not state.consumers and not state.claiming:
                    state.forget()
                    del self._queues[name]

    def consumers(self) -> list[Consumer]:
        """
        Every consumer of this process.
        """
        return list(self._consumers)

    def recent_pollers(self) -> list[dict[str, Any]]:
        """
        The HTTP workers of this process: every one seen in the last minute,
        waiting now or holding a job, sorted by name (see
        L{procession.service.pollers.PollerRecord.as_dict} for the fields).
        """
        return self.pollers.recent()

    def now_ms(self) -> int:
        """
        The current time in milliseconds, for front ends that check jobs.
        """
        return int(self.reactor.seconds() * 1000)

    def ready(self, consumer: Consumer) -> None:
        """
        C{consumer} has room again: claim for it from the first of its
        queues that may have work.
        """
        for name in consumer.queues:
            if not self._queue(name).empty:
                self._schedule(name)
                return

    def wake(self, name: str) -> None:
        """
        A queue may have work (a push, a promotion, a release).
        """
        state = self._queues.get(name)
        if state is None:
            return
        state.empty = False
        if state.claiming:
            state.dirty = True
        else:
            self._schedule(name)

    def wake_all(self) -> None:
        """
        Every queue may have work (after a lost pub/sub connection).
        """
        for name in list(self._queues):
            self.wake(name)

    # -- claiming

    def _schedule(self, name: str) -> None:
        if not self.accepting:
            return
        self._scheduled.add(name)
        if self._pump_call is None:
            self._pump_call = self.reactor.callLater(0, self._pump_scheduled)

    def _pump_scheduled(self) -> None:
        self._pump_call = None
        names, self._scheduled = self._scheduled, set()
        if len(names) == 1:
            self._pump(names.pop())
            return
        with corked():
            for name in names:
                self._pump(name)

    def _eligible(self, name: str, state: QueueState) -> list[Consumer]:
        """
        Consumers with room for which C{name} is the best queue that may
        have work.
        """
        eligible = []
        for consumer in state.consumers:
            if consumer.room() <= 0:
                continue
            for preferred in consumer.queues:
                if preferred == name:
                    eligible.append(consumer)
                    break
                if not self._queue(preferred).empty:
                    break
        return eligible

    def _pump(self, name: str) -> defer.Deferred[Any] | None:
        """
        Claim from queue C{name} for its consumers with room, unless a claim
        is on its way already.

        @return: the claim's Deferred, or L{None} when none was sent.
        """
        state = self._queues.get(name)
        if state is None or not self.accepting:
            return None
        if state.claiming:
            state.dirty = True
            return None
        eligible = self._eligible(name, state)
        if not eligible:
            return None
        # One claim records its jobs as held by this server or not: when
        # both kinds of consumers wait, serve them in turns.  If this
        # claim finds every job it asks for, the queue is not empty and the next one
        # serves the other kind; if it does not, the queue ran dry for
        # both.
        holders: dict[str | None, list[Consumer]] = {}
        for consumer in eligible:
            holders.setdefault(lease_holder(consumer), []).append(consumer)
        if len(holders) > 1:
            state.turn += 1
            order = sorted(holders, key=lambda h: "" if h is None else "." + h)
            eligible = holders[order[state.turn % len(order)]]
        holder = lease_holder(eligible[0])
        # Deal the jobs to take round-robin so that a batch shared by many consumers
        # spreads over them.
        rooms = {c: c.room() for c in eligible}
        size = state.claim_size
        takers: list[Consumer] = []
        while len(takers) < size and any(rooms.values()):
            for consumer in eligible:
                if rooms[consumer] > 0 and len(takers) < size:
                    rooms[consumer] -= 1
                    takers.append(consumer)
        leases = list(zip([c.name for c in takers], new_leases(name, len(takers))))
        state.claiming = True
        state.dirty = False
        if holder:
            d = self.store.claim(name, leases, held=True, holder=holder)
        elif holder is not None:
            d = self.store.claim(name, leases, held=True)
        else:
            d = self.store.claim(name, leases)
        self._claims_in_flight.add(d)
        d.addBoth(self._track, d)
        d.addCallbacks(
            self._claimed,
            self._claim_failed,
            callbackArgs=(name, state, takers),
            errbackArgs=(name, state),
        )
        return d

    def _track(self, result: Any, d: defer.Deferred[Any]) -> Any:
        self._claims_in_flight.discard(d)
        return result

    def _claimed(
        self,
        jobs: list[ClaimedJob],
        name: str,
        state: QueueState,
        takers: list[Consumer],
    ) -> None:
        state.claiming = False
        state.answered += 1
        if len(jobs) < len(takers):
            state.claim_size = max(MIN_CLAIM, 2 * len(jobs))
            if not state.dirty:
                state.empty = True
        else:
            state.claim_size = min(MAX_CLAIM, 4 * state.claim_size)
        undelivered = []
        # Many jobs leave together (one write per connection on the next
        # turn); a lone job leaves at once.
        with corked() if len(jobs) > 1 else nullcontext():
            for job, consumer in zip(jobs, takers):
                if consumer not in self._consumers or not consumer.deliver(job):
                    undelivered.append(job)
        if undelivered:
            self.release(name, undelivered, "not delivered", delivered=False)
        if not state.consumers and name in self._queues:
            state.forget()
            del self._queues[name]
            return
        wait = getattr(jobs, "wait", None)
        if wait and self.accepting:
            # The queue's rate limit holds it back (it counts as empty
            # meanwhile, so its consumers take work from their other
            # queues): claim again when its window opens a slot.  A wait
            # of 0 is a concurrency limit's: a finished job wakes it.
            self._slot_timer(name, state, wait)
        if state.dirty or not state.empty:
            self._schedule(name)
        else:
            # This queue ran dry: consumers still with room may take work
            # from the queues they like less.
            for consumer in state.consumers:
                if consumer.room() > 0:
                    self.ready(consumer)

    def _slot_timer(self, name: str, state: QueueState, wait: float) -> None:
        """
        Wake queue C{name} in C{wait} seconds, unless its timer fires
        sooner already: one timer per queue, however many claims it held
        back.
        """
        timer = state.slot_timer
        if timer is not None and timer.active():
            if timer.getTime() <= self.reactor.seconds() + wait:
                return
            timer.cancel()
        state.slot_timer = self.reactor.callLater(wait, self._slot_open, name)

    def _slot_open(self, name: str) -> None:
        state = self._queues.get(name)
        if state is not None:
            state.slot_timer = None
        self.wake(name)

    def _claim_failed(self, failure: Any, name: str, state: QueueState) -> None:
        state.claiming = False
        state.answered += 1
        log.warn(
            "Claiming from queue {queue} failed: {error}",
            queue=name,
            error=failure.getErrorMessage(),
        )
        # The sweep's safety pass will try again; nothing is lost, a job
        # leased by a claim whose reply was lost returns when its lease
        # expires.

    # -- the worker's side

    async def push(self, jobs: Sequence[NewJob]) -> list[PushOutcome]:
        """
        Store new jobs and wake their consumers.

        @return: per job, whether it was created (L{False}: a job with that
            id existed and was left alone; a queue's name: a job with that
            id exists in that other queue; L{UniqueHeld}: another job holds
            its unique lock).
        """
        if len(jobs) == 1:
            return [await self.push_one(jobs[0])]
        if not self.accepting:
            raise ShuttingDown("the server is shutting down")
        created = await self.store.push(jobs)
        for job in jobs:
            self.wake(job.queue)
        return created

    def push_one(self, job: NewJob) -> defer.Deferred[PushOutcome]:
        """
        L{push} for one job (the hot path of the C{PUSH} frame).  Single
        pushes that arrive together (pipelined by a client, or from many
        clients at once) go to Redis as one script call.
        """
        if not self.accepting:
            return defer.fail(ShuttingDown("the server is shutting down"))
        queue = job.queue
        state = self._queues.get(queue)
        if (
            state is None
            or state.claiming
            or not self._push.idle(queue)
            or not self.store.in_order
        ):
            return self._push(queue, job).addCallback(self._pushed, queue)
        # Consumers wait on this queue and no claim is on its way: send the
        # claim right behind the push, in the same write.  Redis runs them
        # in order on the one connection, so the claim finds the job
        # without waiting for the push's reply or its wake-up.
        with corked():
            d = self._push(queue, job)
            state.empty = False
            claimed = self._pump(queue)
        if claimed is None:
            return d.addCallback(self._pushed, queue)
        return d.addCallback(self._pushed, queue, state, state.answered)

    def _pushed(
        self,
        created: PushOutcome,
        queue: str,
        state: QueueState | None = None,
        answered: int = 0,
    ) -> PushOutcome:
        # A claim sent behind the push and still on its way will see the
        # job.  One answered already ran before the push (which waited for
        # something first: a new queue's registration, a script reload),
        # and may have missed it.
        if state is None or state.answered > answered:
            self.wake(queue)
        return created

    def ack(
        self, queue: str, job_id: str, lease: str, result: str
    ) -> defer.Deferred[None]:
        """
        Complete a job.

        @raise LeaseLost: when the lease is no longer the caller's.
        """
        return self._ack(queue, (job_id, lease, result)).addCallback(_checked, job_id)

    def fail(
        self,
        queue: str,
        job_id: str,
        lease: str,
        error: str,
        retry_in: float | None,
        retry: bool,
        discard: bool = False,
    ) -> defer.Deferred[tuple[str, int]]:
        """
        Record a failed attempt: (C{'retrying'}, run_at ms), (C{'dead'}, 0),
        or with C{discard} (the job is deleted rather than retried or kept
        as dead) (C{'discarded'}, 0).
        """

        def checked(outcome: tuple[str, int]) -> tuple[str, int]:
            _checked(outcome[0], job_id)
            return outcome

        item: tuple[Any, ...] = (job_id, lease, error, retry_in, retry)
        if discard:
            item += (True,)
        return self._fail(queue, item).addCallback(checked)

    def extend(
        self, queue: str, job_id: str, lease: str, seconds: float
    ) -> defer.Deferred[int]:
        """
        Extend a lease; returns its new expiry (ms).
        """

        def checked(outcome: tuple[str, int]) -> int:
            _checked(outcome[0], job_id)
            return outcome[1]

        return self._extend(queue, (job_id, lease, seconds)).addCallback(checked)

    def release(
        self,
        queue: str,
        jobs: Iterable[ClaimedJob | tuple[str, str]],
        reason: str,
        delivered: bool = True,
    ) -> defer.Deferred[list[str]]:
        """
        Give leased jobs back to their queue at once.  Failures are logged,
        not raised: a job that cannot be released now comes back when its
        lease expires.
        """
        items = [(j.id, j.lease) if isinstance(j, ClaimedJob) else j for j in jobs]
        if not items:
            return defer.succeed([])

        def failed(failure: Any) -> list[str]:
            log.warn(
                "Could not release {count} jobs of queue {queue} ({error}); "
                "they return when their leases expire",
                count=len(items),
                queue=queue,
                error=failure.getErrorMessage(),
            )
            return []

        return self.store.release(queue, items, reason, delivered).addErrback(failed)

    # -- upkeep

    async def sweep(self) -> None:
        """
        One round of upkeep on every known queue.
        """
        if self._sweeping:
            return
        self._sweeping = True
        try:
            self._sweeps += 1
            names = await self.store.known_queues()
            for name in names:
                await self.store.sweep(
                    name, 1000, self.keep_completed, self.keep_dead, self.max_dead
                )
            await self.cluster.recover_lost_servers(names)
            # A safety net against lost wake-ups (pub/sub is fire and forget):
            # now and then, look again at queues that consumers wait on.
            if self._sweeps % 5 == 0:
                self.wake_all()
        except ProcessionError as e:
            log.warn("The sweep failed: {error}", error=e.message)
        except Exception:
            log.failure("The sweep failed")
        finally:
            self._sweeping = False


def _checked(outcome: str, job_id: str) -> None:
    """
    Raise the error of a lease holder's outcome (L{Store.lease_checked});
    fires with nothing, as the dispatcher's ack does.
    """
    Store.lease_checked(outcome, job_id)
