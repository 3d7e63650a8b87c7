"""
Every Redis key name procession uses, built in this one place.

The Lua scripts build a queue's keys from its prefix (C{KEYS[1]}) by the
same names: C{lua/common.lua}'s header lists them and must agree with
L{QUEUE_KEYS}.  Python passes every key a script touches outside that
prefix (a server's held set, the registry) as a key, and every value a
script needs (a server's id) as an argument: no script cuts a name out
of a key.

Every key of a queue carries the queue's hash tag (C{ns:{queue}:...}), so
a script that touches one queue touches one cluster slot.  The only keys
outside a queue are the set of known queues, the wake-up channel, the
server registry (C{ns:servers}, a zset of heartbeats, and
C{ns:server:<id>}, each live server's description), the periodic
entries' definitions (C{ns:periodic}, one hash), and the id index
(C{ns:ids}): the one key that scripts of a queue (push, delete, purge,
sweep) touch besides their queue's, because a job's id is unique across
queues; and the lease owners' registry (C{ns:owners}, with what an
operator told each, C{ns:owner:<id>:state}).

The exception is workflows (lua/workflow.lua): batches (C{ns:batch:<id>},
C{ns:batch:<id>:jobs}, C{ns:batches}) and jobs that run after jobs of
other queues make the scripts that finish jobs reach keys outside the
job's queue, named from the namespace; they need one Redis, not a
cluster.
"""

from __future__ import annotations

from attrs import frozen

from procession.core.states import STATES

#: The keys under a queue's prefix, as common.lua's header describes them
#: (C{<id>} and C{<srv>} stand for a job's and a server's id).
QUEUE_KEYS = (
    "job:<id>",
    "errors:<id>",
    "queued",
    "scheduled",
    "retrying",
    "running",
    "dead",
    "done",
    "dependent",
    "children:<id>",
    "created",
    "seq",
    "paused",
    "stats",
    "minute:<m>",
    "waiting",
    "unique:<l>",
    "periodic:<n>",
    "held:<srv>",
    "limits",
    "window",
    "throttle",
    "kq:<key>",
    "krun:<key>",
    "kwin:<key>",
    "lkeys",
    "lready",
    "lwait",
)

#: The zset that holds each state's jobs (completed and cancelled share
#: C{done}).
STATE_SETS = {
    "queued": "queued",
    "scheduled": "scheduled",
    "retrying": "retrying",
    "running": "running",
    "dead": "dead",
    "completed": "done",
    "cancelled": "done",
    "waiting": "dependent",
    "expired": "done",
}
assert set(STATE_SETS) == set(STATES)

#: The queue's zsets, one per stored state (L{STATE_SETS}' values).
STATE_SET_NAMES = (
    "queued",
    "scheduled",
    "retrying",
    "running",
    "dead",
    "done",
    "dependent",
)


@frozen
class Keys:
    """
    The key names of one deployment (one C{namespace} of a Redis database).
    """

    namespace: str = "procession"

    @property
    def queues(self) -> str:
        """
        The set of every queue that ever had a job.
        """
        return f"{self.namespace}:queues"

    @property
    def channel(self) -> str:
        """
        The pub/sub channel that wakes the servers (C{"<queue> <server>"}).
        """
        return f"{self.namespace}:wake"

    @property
    def servers(self) -> str:
        """
        The server registry: a zset of server ids by last heartbeat.
        """
        return f"{self.namespace}:servers"

    @property
    def ids(self) -> str:
        """
        The id index: a hash of every job's id to its queue, so that an id
        is unique across queues (push.lua; erase() in common.lua).
        """
        return f"{self.namespace}:ids"

    @property
    def owners(self) -> str:
        """
        The lease owners' registry: a zset of worker process ids (Faktory
        C{wid}s) by when each was last heard of.
        """
        return f"{self.namespace}:owners"

    def owner_state(self, owner: str) -> str:
        """
        What an operator told a lease owner (C{quiet}), for whichever
        server or process its next beat reaches (expiring).
        """
        return f"{self.namespace}:owner:{owner}:state"

    def server(self, server_id: str) -> str:
        """
        A live server's description (JSON text, expiring).
        """
        return f"{self.namespace}:server:{server_id}"

    # -- workflows (lua/workflow.lua builds the same names)

    def batch(self, batch_id: str) -> str:
        """
        A batch's hash: its state, counts and callbacks.
        """
        return f"{self.namespace}:batch:{batch_id}"

    def batch_jobs(self, batch_id: str) -> str:
        """
        A batch's job ids, each with its queue.
        """
        return f"{self.batch(batch_id)}:jobs"

    @property
    def batches(self) -> str:
        """
        Every batch, by creation time.
        """
        return f"{self.namespace}:batches"

    @property
    def batch_prefix(self) -> str:
        """
        The C{KEYS[1]} of batch.lua: a prefix of the namespace that is no
        queue's (only the namespace is read from it).
        """
        return f"{self.namespace}:{{batch}}:"

    def prefix(self, queue: str) -> str:
        """
        The key prefix of a queue, hash tag included (a script's C{KEYS[1]}).
        """
        return f"{self.namespace}:{{{queue}}}:"

    def job(self, queue: str, job_id: str) -> str:
        """
        A job's hash.
        """
        return f"{self.prefix(queue)}job:{job_id}"

    def errors(self, queue: str, job_id: str) -> str:
        """
        A job's last failures, newest first.
        """
        return f"{self.prefix(queue)}errors:{job_id}"

    def state_set(self, queue: str, state: str) -> str:
        """
        The zset that holds a queue's jobs in C{state} (a state or one of
        L{STATE_SET_NAMES}).
        """
        return self.prefix(queue) + STATE_SETS.get(state, state)

    def created(self, queue: str) -> str:
        """
        Every job of a queue by creation time (the paged listing's index).
        """
        return f"{self.prefix(queue)}created"

    def paused(self, queue: str) -> str:
        """
        Present while the queue is paused.
        """
        return f"{self.prefix(queue)}paused"

    def stats(self, queue: str) -> str:
        """
        The queue's totals: pushed, processed, failed.
        """
        return f"{self.prefix(queue)}stats"

    def unique(self, queue: str, lock: str) -> str:
        """
        A unique lock of a queue: the id of the job holding it (expiring).
        """
        return f"{self.prefix(queue)}unique:{lock}"

    def periodic_ticks(self, queue: str, name: str) -> str:
        """
        The ticks so far of periodic entry C{name}, whose jobs go to
        C{queue}.
        """
        return f"{self.prefix(queue)}periodic:{name}"

    @property
    def periodic(self) -> str:
        """
        The definitions of the periodic entries: a hash, name -> JSON.
        """
        return f"{self.namespace}:periodic"

    def held(self, queue: str, server_id: str) -> str:
        """
        The set of a queue's running jobs that server C{server_id}'s worker
        connections hold.
        """
        return f"{self.prefix(queue)}held:{server_id}"
