"""
A job's states and the groups of them that operations accept: the one
definition that the store, the HTTP API, the UI and the CLI use.
"""

from __future__ import annotations

#: Every state a job can be in, in the order of its life.
STATES = (
    "waiting",
    "scheduled",
    "queued",
    "running",
    "retrying",
    "completed",
    "dead",
    "cancelled",
    "expired",
)

#: The states a job leaves only by an operator or a worker: not finished.
UNFINISHED = ("waiting", "queued", "scheduled", "retrying", "running")

#: The states of a job that has finished (what a caller awaiting it waits for).
FINISHED = ("completed", "dead", "cancelled", "expired")

#: The states whose jobs a queue summary counts, in the order of summary.lua.
SIZED_STATES = ("queued", "scheduled", "retrying", "running", "dead")

#: The states a purge of a queue applies to.
PURGEABLE = ("queued", "scheduled", "retrying", "dead")

#: The states a retry applies to (one job, or every job of a queue in one).
RETRYABLE = ("scheduled", "retrying", "dead")

#: The states a bulk kill over a queue applies to.
KILLABLE = ("queued", "scheduled", "retrying")

#: What each single-job action may be applied to (the store's scripts
#: decide; the UI only chooses which buttons to show).
JOB_ACTIONS = {
    "retry": RETRYABLE,
    "kill": UNFINISHED,
    "cancel": UNFINISHED,
    "delete": STATES,
}
