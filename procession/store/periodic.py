"""
Periodic entries in Redis: their definitions (periodic.lua, on the one
registry hash C{<ns>:periodic}) and their ticks (tick.lua, on the keys of
each entry's queue, so that claiming a tick and pushing its job are one
script under one hash tag).

Like L{procession.store.jobs}, nothing here decides anything: the schedule
is computed by L{procession.core.periodic} and run by
L{procession.service.periodic}.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from attrs import frozen

from procession.core.job import NewJob
from procession.core.periodic import PeriodicEntry
from procession.store.jobs import Store, _as_dict


@frozen
class StoredEntry:
    """
    A periodic entry as stored: its definition, whether it is paused, and
    since when (ms) its definition holds (ticks count from then).
    """

    entry: PeriodicEntry
    paused: bool
    since: int


@frozen
class TickState:
    """
    An entry's ticks so far, in its queue: the last tick claimed (ms, 0
    for none), the last job pushed (its id, '' for none) and when, and the
    ticks run and skipped.
    """

    tick: int
    job: str
    run_at: int
    runs: int
    skipped: int


class PeriodicStore:
    """
    The periodic entries of one deployment (one namespace of a Redis).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.key = store.keys.periodic

    def _run(self, *args: Any) -> Any:
        return self.store.run_on("periodic", [self.key], list(args))

    # -- definitions

    async def entries(self) -> list[StoredEntry]:
        """
        Every entry, by name.
        """
        found = []
        for name, text in sorted(
            _as_dict(await self.store.command("HGETALL", self.key)).items()
        ):
            stored = _decode(name, text)
            if stored is not None:
                found.append(stored)
        return found

    async def get(self, name: str) -> StoredEntry | None:
        """
        One entry, or None.
        """
        text = await self.store.command("HGET", self.key, name)
        return None if text is None else _decode(name, text)

    async def put(self, entry: PeriodicEntry, paused: bool | None = None) -> str:
        """
        Store an entry's definition (see periodic.lua: an unchanged one keeps
        its schedule).

        @return: C{created}, C{updated} or C{unchanged}.
        """
        flag = "" if paused is None else ("1" if paused else "0")
        return str(
            await self._run(
                "put", entry.name, entry.spec(), entry.source, self.store.now_ms(), flag
            )
        )

    async def delete(self, name: str) -> bool:
        """
        Remove an entry; whether there was one.  (Its tick state stays with
        its queue, so an entry put again under the same name does not run
        ticks it ran already.)
        """
        return bool(int(await self._run("delete", name)))

    async def set_paused(self, name: str, paused: bool) -> bool:
        """
        Pause or resume an entry; whether there was one.  Resumed, it runs
        from its next tick on: ticks that passed while it was paused are
        not missed ones.
        """
        flag = "1" if paused else "0"
        return bool(int(await self._run("pause", name, flag, self.store.now_ms())))

    async def sync_file(self, entries: Sequence[PeriodicEntry]) -> tuple[int, int, int]:
        """
        Make the entries marked as from the file exactly C{entries}.

        @return: how many were created, updated and deleted.
        """
        args: list[Any] = ["sync", self.store.now_ms()]
        for entry in entries:
            args += [entry.name, entry.spec()]
        created, updated, deleted = await self._run(*args)
        return int(created), int(updated), int(deleted)

    # -- ticks

    def state_key(self, entry: PeriodicEntry) -> str:
        return self.store.keys.periodic_ticks(entry.queue, entry.name)

    async def tick_state(self, entry: PeriodicEntry) -> TickState:
        """
        An entry's ticks so far, in its current queue.
        """
        fields = _as_dict(await self.store.command("HGETALL", self.state_key(entry)))
        return TickState(
            tick=int(fields.get("tick") or 0),
            job=fields.get("job", ""),
            run_at=int(fields.get("run_at") or 0),
            runs=int(fields.get("runs") or 0),
            skipped=int(fields.get("skipped") or 0),
        )

    async def job_state(self, entry: PeriodicEntry, job_id: str) -> str | None:
        """
        The state of one of an entry's jobs, None once it is gone.
        """
        if not job_id:
            return None
        return await self.store.command(
            "HGET", self.store.keys.job(entry.queue, job_id), "state"
        )

    async def claim_ticks(
        self,
        entry: PeriodicEntry,
        ticks: Sequence[tuple[int, NewJob]],
        skipped: int,
        now: bool = False,
    ) -> tuple[int, int]:
        """
        Claim ticks and push their jobs in one script call (tick.lua), or,
        with C{now}, push one job outside the schedule.

        @param ticks: (tick time ms, its job), oldest first.
        @param skipped: ticks passed without a job, counted if this call
            claims a tick.
        @return: the last tick claimed (ms, 0 for never) and how many jobs
            were pushed; (0, 0) when the stored definition names another
            queue than C{entry}'s (moved since it was read).
        """
        queue = entry.queue
        await self.store._register([queue])
        at = self.store.now_ms()
        args: list[Any] = [
            at,
            self.store.channel,
            queue,
            queue,
            entry.name,
            "now" if now else "tick",
            skipped,
        ]
        for tick, job in ticks:
            args.append(tick)
            args.extend(job.script_args(at))
            args.append("")  # no workflow
            args.extend(job.lifetime_args())
        last, pushed = await self.store.run(
            "tick", queue, args, [self.store.keys.ids, self.key]
        )
        return int(last), int(pushed)


def _decode(name: str, text: str) -> StoredEntry | None:
    try:
        fields = json.loads(text)
        entry = PeriodicEntry.from_spec(name, fields["spec"], fields["source"])
        return StoredEntry(entry, bool(fields.get("paused")), int(fields["since"]))
    except (ValueError, KeyError, TypeError):
        return None
