"""
The periodic service: every server runs the schedule of every periodic
entry, and the front ends manage entries through it.

Running the schedule on every server is what keeps it going while any
server is up; exactly one job per tick comes from the store's tick
script, which claims a tick and pushes its job atomically (a server that
computes a tick another server already ran changes nothing).  This module
decides only when to call it: at each entry's next tick, and, after a
server or the whole cluster was down, with the entry's policy for missed
ticks (L{procession.core.periodic.PeriodicEntry.due}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from procession.core.errors import (
    InvalidRequest,
    PeriodicNotFound,
    ProcessionError,
    StoreUnavailable,
)
from procession.core.job import format_time
from procession.core.periodic import parse_entry, parse_file
from procession.store.jobs import Store
from procession.store.periodic import PeriodicStore, StoredEntry

log = Logger()

# The longest the scheduler sleeps, so that new, changed and resumed
# entries are picked up within it.
MAX_SLEEP = 1.0
# How soon it looks again after a failure (Redis unreachable).
RETRY_AFTER = 1.0


class Periodic:
    """
    The periodic entries of a deployment, and this server's run of their
    schedule.

    @param store: the job store.
    @param reactor: for the scheduler's timer.
    @param max_job_size: the most bytes a tick's job may take.
    @param path: the C{--periodic} file, if any.
    """

    def __init__(
        self,
        store: Store,
        reactor: IReactorTime,
        max_job_size: int = 1 << 20,
        path: str | None = None,
    ) -> None:
        self.store = store
        self.entries_store = PeriodicStore(store)
        self.reactor = reactor
        self.max_job_size = max_job_size
        self.path = path
        # Ticks this server claimed and skipped, since it started.
        self.ticks_run = 0
        self.ticks_skipped = 0
        # The last tick known per entry definition (name, since, spec).
        self._last: dict[tuple[str, int, str], int] = {}
        # The definitions whose ticks cannot be pushed (logged once each).
        self._broken: set[tuple[str, int, str]] = set()
        self._timer: Any = None
        self._running: defer.Deferred[Any] | None = None
        self._stopped = True

    # -- the schedule

    def start(self) -> None:
        """
        Start running the schedule.
        """
        self._stopped = False
        self._timer = self.reactor.callLater(0, self._pass)

    async def stop(self) -> None:
        """
        Stop running the schedule (after the pass under way, if any).
        """
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._running is not None:
            await self._running

    def _pass(self) -> None:
        self._timer = None
        self._running = defer.Deferred.fromCoroutine(self.run_due())
        self._running.addCallbacks(self._next, self._failed)

    def _next(self, sleep: float) -> None:
        self._running = None
        if not self._stopped:
            self._timer = self.reactor.callLater(sleep, self._pass)

    def _failed(self, failure: Any) -> None:
        if failure.check(ProcessionError):
            log.warn(
                "The periodic schedule could not run: {error}",
                error=failure.getErrorMessage(),
            )
        else:
            log.failure("The periodic schedule failed", failure)
        self._next(RETRY_AFTER)

    async def run_due(self) -> float:
        """
        Run every tick that is due now, of every entry that is not paused.

        @return: the seconds until the next tick of any entry (at most
            L{MAX_SLEEP}).
        """
        now = self.store.now_ms()
        earliest = now + int(MAX_SLEEP * 1000)
        entries = await self.entries_store.entries()
        live = set()
        for stored in entries:
            if stored.paused:
                continue
            entry = stored.entry
            key = (entry.name, stored.since, entry.spec())
            live.add(key)
            try:
                upcoming = await self._run_entry(stored, key, now)
            except StoreUnavailable:
                raise
            except Exception:
                # A bad entry must not stop the others; said once per
                # definition, not at every pass.
                if key not in self._broken:
                    self._broken.add(key)
                    log.failure("Periodic entry {name} cannot run", name=entry.name)
                continue
            earliest = min(earliest, upcoming)
        for key in set(self._last) - live:
            del self._last[key]
        self._broken &= live
        return max(0.005, (earliest - self.store.now_ms()) / 1000)

    async def _run_entry(
        self, stored: StoredEntry, key: tuple[str, int, str], now: int
    ) -> int:
        entry = stored.entry
        last = self._last.get(key)
        if last is None:
            last = (await self.entries_store.tick_state(entry)).tick
        after = max(last, stored.since)
        upcoming = entry.next_tick(after)
        if upcoming <= now:
            due = entry.due(after, now)
            if due.ticks:
                jobs = [
                    (tick, entry.job_for(tick, now, self.max_job_size))
                    for tick in due.ticks
                ]
                claimed, _ = await self.entries_store.claim_ticks(
                    entry, jobs, due.skipped
                )
                ran = sum(1 for tick in due.ticks if tick > last)
                if claimed == due.ticks[-1] and ran:
                    # This server's claim took them (or some of them).
                    self.ticks_run += ran
                    self.ticks_skipped += due.skipped
                last = max(last, claimed)
                upcoming = entry.next_tick(max(last, stored.since))
        self._last[key] = last
        return upcoming

    # -- the file

    async def load_file(self) -> tuple[int, int, int]:
        """
        (Re)load the C{--periodic} file: its entries replace those loaded
        from it before.

        @return: entries created, updated and deleted.
        @raise InvalidRequest: the file cannot be read or is invalid (the
            entries stay as they were).
        """
        if self.path is None:
            return 0, 0, 0
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidRequest(f"cannot read the periodic file {self.path}: {e}")
        entries = parse_file(text, self.max_job_size)
        counts = await self.entries_store.sync_file(entries)
        log.info(
            "Periodic file {path}: {n} entries ({created} new, {updated} changed, "
            "{deleted} removed)",
            path=self.path,
            n=len(entries),
            created=counts[0],
            updated=counts[1],
            deleted=counts[2],
        )
        return counts

    def reload(self) -> defer.Deferred[Any]:
        """
        L{load_file} on SIGHUP: a bad file is logged and changes nothing.
        """

        def failed(failure: Any) -> None:
            log.error(
                "The periodic file was not reloaded: {error}",
                error=failure.getErrorMessage(),
            )

        return defer.Deferred.fromCoroutine(self.load_file()).addErrback(failed)

    # -- management (the HTTP API, the UI)

    async def _stored(self, name: str) -> StoredEntry:
        stored = await self.entries_store.get(name)
        if stored is None:
            raise PeriodicNotFound(f"no periodic entry {name!r}", name=name)
        return stored

    async def describe(self, stored: StoredEntry) -> dict[str, Any]:
        """
        An entry as the API shows it: its definition, whether it is paused,
        its next and last runs, and its last job and that job's state.
        """
        entry = stored.entry
        ticks = await self.entries_store.tick_state(entry)
        state = await self.entries_store.job_state(entry, ticks.job)
        body = entry.as_json()
        next_run = None
        if not stored.paused:
            next_run = format_time(entry.next_tick(max(ticks.tick, stored.since)))
        body.update(
            {
                "paused": stored.paused,
                "next_run": next_run,
                "last_run": format_time(ticks.run_at or None),
                "last_tick": format_time(ticks.tick or None),
                "last_job": ({"id": ticks.job, "state": state} if ticks.job else None),
                "runs": ticks.runs,
                "skipped": ticks.skipped,
            }
        )
        return body

    async def list(self) -> list[dict[str, Any]]:
        """
        Every entry, described, by name.
        """
        stored = await self.entries_store.entries()
        return list(
            await defer.gatherResults(
                [defer.ensureDeferred(self.describe(s)) for s in stored],
                consumeErrors=True,
            ).addErrback(lambda f: f.value.subFailure)
        )

    async def get(self, name: str) -> dict[str, Any]:
        """
        One entry, described.

        @raise PeriodicNotFound: there is none.
        """
        return await self.describe(await self._stored(name))

    async def put(self, name: str, body: object) -> tuple[str, dict[str, Any]]:
        """
        Create or replace an entry from the API.

        @return: C{created}, C{updated} or C{unchanged}, and the entry.
        @raise InvalidRequest: naming the field at fault.
        """
        entry, paused = parse_entry(name, body, "api", self.max_job_size)
        outcome = await self.entries_store.put(entry, paused)
        return outcome, await self.get(name)

    async def delete(self, name: str) -> None:
        """
        Remove an entry.

        @raise PeriodicNotFound: there is none.
        """
        if not await self.entries_store.delete(name):
            raise PeriodicNotFound(f"no periodic entry {name!r}", name=name)

    async def set_paused(self, name: str, paused: bool) -> dict[str, Any]:
        """
        Pause or resume an entry (a paused entry's ticks pass without jobs;
        resumed, it runs from its next tick on).
        """
        await self._stored(name)
        await self.entries_store.set_paused(name, paused)
        return await self.get(name)

    async def run_now(self, name: str) -> dict[str, Any]:
        """
        Push an entry's job now, outside its schedule (its ticks are not
        affected).

        @return: the job's id and the entry.
        """
        stored = await self._stored(name)
        now = self.store.now_ms()
        job = stored.entry.job_for(None, now, self.max_job_size)
        await self.entries_store.claim_ticks(stored.entry, [(0, job)], 0, now=True)
        return {"id": job.id, "periodic": await self.get(name)}
