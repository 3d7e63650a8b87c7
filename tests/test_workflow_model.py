"""
The batch counters and callbacks against a model: random sequences of
claims, acks, fails, kills, cancels, deletes, retries and sweeps on the
jobs of one committed batch, driven through the store's scripts on the
test Redis.  After every step the batch's counts are what the jobs' states
say, and each callback has been pushed exactly when (and as often as) the
model says: once.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import TestCase

from procession.core.errors import IllegalState, JobNotFound
from procession.core.job import parse_batch_spec
from tests.support import FakeClock, connected_store, new_job

UNFINISHED = ("queued", "scheduled", "retrying", "running", "waiting")


class BatchModelTests(TestCase):
    async def test_random_histories_keep_exact_counts(self) -> None:
        outcomes = []
        for seed in range(4):
            outcomes.append(await self.history(seed, steps=110, size=8))
        # The histories reached both callbacks, and on_complete without
        # on_success.
        self.assertIn((True, True), outcomes)
        self.assertIn((False, True), outcomes)

    async def history(self, seed: int, steps: int, size: int) -> tuple[bool, bool]:
        rng = random.Random(seed)
        clock = FakeClock()
        store = await connected_store(self, clock)
        spec = parse_batch_spec(
            {
                "id": f"b{seed}",
                "on_success": {"type": "ok", "queue": "cb"},
                "on_complete": {"type": "done", "queue": "cb"},
            },
            store.now_ms(),
            1 << 20,
        )
        await store.batch_new(spec, 3600)
        ids = [f"j{n}" for n in range(size)]
        await store.push(
            [
                new_job(store.now_ms(), id=i, batch=spec.id, max_attempts=3, queue="q")
                for i in ids
            ]
        )
        await store.batch_change(spec.id, "commit")
        leases: dict[str, str] = {}
        # What each deleted job counts as in the batch.
        deleted: dict[str, str] = {}
        known: dict[str, str] = {}
        fired = {"success": 0, "complete": 0}
        ever = {"success": False, "complete": False}
        lease_no = 0

        def queue_of(job_id: str) -> str:
            return "cb" if job_id.startswith(spec.id + ":") else "q"

        async def state(job_id: str) -> str | None:
            try:
                return (await store.get_job(queue_of(job_id), job_id))["state"]
            except JobNotFound:
                return None

        for step in range(steps):
            job_id = rng.choice(ids)
            # Odd seeds may cancel and delete (for good: such a batch can
            # no longer succeed); even ones only kill (a retry revives).
            final = seed % 2
            op = rng.choices(
                ["claim", "ack", "fail", "kill", "cancel", "delete", "retry", "sweep"],
                [4, 4, 2, 0.4, 0.4 * final, 0.15 * final, 2, 1.5],
            )[0]
            if step >= steps - 40:
                # The end of each history finishes the work.
                op = rng.choice(["claim", "ack", "retry", "sweep"])
            current = await state(job_id)
            if op == "claim":
                lease_no += 1
                lease = f"l{lease_no}"
                claimed = await store.claim(
                    "q", [("w", lease + "a"), ("w", lease + "b")]
                )
                for job in claimed:
                    leases[job.id] = job.lease
            elif op == "ack" and leases:
                job_id = rng.choice(sorted(leases))
                await store.ack("q", [(job_id, leases.pop(job_id), "")])
            elif op == "fail" and job_id in leases:
                retry = rng.random() < 0.6
                await store.fail("q", [(job_id, leases.pop(job_id), "{}", 0, retry)])
            elif op in ("kill", "cancel", "retry", "delete") and current is not None:
                change = {
                    "kill": store.kill,
                    "cancel": store.cancel,
                    "retry": store.retry_now,
                    "delete": store.delete,
                }[op]
                try:
                    await change("q", job_id)
                except IllegalState:
                    pass
                else:
                    leases.pop(job_id, None)
                    if op == "delete":
                        deleted[job_id] = (
                            "completed" if current == "completed" else "dead"
                        )
            elif op == "sweep":
                clock.advance(rng.choice([0.5, 2, 400]))
                await store.sweep("q", 1000, 3600, 86400, 1000)

            # The model: the counts from the jobs' states.
            counts = {"pending": 0, "completed": 0, "dead": 0}
            for i in ids:
                s = await state(i)
                if s is None:
                    # Deleted, or (finished) past its retention: it counts
                    # as it did when it went.
                    kind = deleted.get(i, known.get(i))
                    assert kind is not None, (seed, step, i)
                elif s in UNFINISHED:
                    kind = "pending"
                elif s == "completed":
                    kind = "completed"
                else:
                    kind = "dead"
                known[i] = kind
                counts[kind] += 1
            batch = await store.get_batch(spec.id)
            where = f"seed {seed} step {step} ({op} {job_id})"
            self.assertEqual({k: batch[k] for k in counts}, counts, where)
            self.assertEqual(batch["total"], size, where)
            if counts["pending"] == 0:
                ever["complete"] = True
                if counts["dead"] == 0:
                    ever["success"] = True
            for name in ("success", "complete"):
                exists = await state(f"{spec.id}:{name}") is not None
                self.assertEqual(exists, ever[name], (where, name))
                fired[name] = int(exists)
            sizes = await store.queue_sizes("cb")
            self.assertEqual(
                sizes["pushed"], fired["success"] + fired["complete"], where
            )
        return ever["success"], ever["complete"]
