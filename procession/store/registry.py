"""
The server registry: which procession servers share this Redis, when each
was last heard of (by Redis's clock, C{lua/servers.lua}) and what each
last said about itself (its description, JSON text that expires).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

if TYPE_CHECKING:
    from procession.store.jobs import Store


class ServerRegistry:
    """
    The registry's reads and writes, on the store's connection.

    @param store: runs the commands and the C{servers} script, and names
        this server (C{server_id}).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._keys = store.keys

    def heartbeat(self, description: str, ttl: float) -> defer.Deferred[int]:
        """
        Record that this server is alive, and its description (JSON text),
        kept for C{ttl} seconds.

        The registry entry and the description are two keys (so that each
        command touches one key, as a Redis Cluster needs); they need not
        change together: the entry says when the server was last heard
        of, the description only what it last said.

        @return: the time of the heartbeat (ms, by Redis's clock).
        """
        beat = self._store.run_on(
            "servers", [self._keys.servers], ["beat", self._store.server_id]
        )
        told = self._store.command(
            "SET",
            self._keys.server(self._store.server_id),
            description,
            "PX",
            max(1, int(ttl * 1000)),
        )
        return defer.gatherResults([beat, told], consumeErrors=True).addCallbacks(
            lambda results: int(results[0]), lambda f: f.value.subFailure
        )

    def lost_servers(self, timeout: float) -> defer.Deferred[list[str]]:
        """
        The servers not heard of for more than C{timeout} seconds (by
        Redis's clock), oldest first.
        """
        return self._store.run_on(
            "servers", [self._keys.servers], ["lost", int(timeout * 1000)]
        ).addCallback(list)

    def forget_server(self, server_id: str, timeout: float) -> defer.Deferred[bool]:
        """
        Remove a lost server from the registry, unless it has been heard of
        in the last C{timeout} seconds after all.
        """
        return self._store.run_on(
            "servers",
            [self._keys.servers],
            ["forget", server_id, int(timeout * 1000)],
        ).addCallback(lambda n: bool(int(n)))

    def deregister(self) -> defer.Deferred[None]:
        """
        Take this server out of the registry (it stops cleanly).
        """
        return defer.gatherResults(
            [
                self._store.command("ZREM", self._keys.servers, self._store.server_id),
                self._store.command("DEL", self._keys.server(self._store.server_id)),
            ],
            consumeErrors=True,
        ).addCallbacks(lambda _: None, lambda f: f.value.subFailure)

    async def live_servers(self) -> list[dict[str, Any]]:
        """
        The descriptions of every server heard of recently (the ones
        whose description has not expired), by id.
        """
        ids = sorted(await self._store.command("ZRANGE", self._keys.servers, 0, -1))
        if not ids:
            return []
        # One GET each rather than one MGET: the keys may live on different
        # nodes of a cluster.
        texts = await defer.gatherResults(
            [self._store.command("GET", self._keys.server(i)) for i in ids],
            consumeErrors=True,
        ).addErrback(lambda f: f.value.subFailure)
        found = []
        for server_id, text in zip(ids, texts):
            if not text:
                continue
            try:
                description = json.loads(text)
            except ValueError:
                continue
            if isinstance(description, dict):
                description["id"] = server_id
                found.append(description)
        return found


class OwnerRegistry:
    """
    The registry of lease owners: worker processes that hold jobs across
    connections and servers (a Faktory worker's C{wid}), with when each
    was last heard of, by Redis's clock, in the same script as the server
    registry (C{lua/servers.lua}) on a key of its own (C{ns:owners}).

    @param store: runs the C{servers} script.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._keys = store.keys

    @staticmethod
    def holder(owner: str) -> str:
        """
        The name under which an owner's jobs are held (their C{server}
        field and held set), distinct from every server id (12 hex
        digits).
        """
        return "owner:" + owner

    def beat(self, owner: str) -> defer.Deferred[int]:
        """
        Record that C{owner} is alive.

        @return: the time recorded (ms, by Redis's clock).
        """
        return self._store.run_on(
            "servers", [self._keys.owners], ["beat", owner]
        ).addCallback(int)

    def lost(self, timeout: float) -> defer.Deferred[list[str]]:
        """
        The owners not heard of for more than C{timeout} seconds, oldest
        first.
        """
        return self._store.run_on(
            "servers", [self._keys.owners], ["lost", int(timeout * 1000)]
        ).addCallback(list)

    def forget(self, owner: str, timeout: float) -> defer.Deferred[bool]:
        """
        Remove a lost owner, unless it has been heard of in the last
        C{timeout} seconds after all.
        """
        return self._store.run_on(
            "servers", [self._keys.owners], ["forget", owner, int(timeout * 1000)]
        ).addCallback(lambda n: bool(int(n)))

    def signal(
        self, owner: str, state: str, ttl: float = 86400.0
    ) -> defer.Deferred[Any]:
        """
        Record that C{owner} was told C{state} (C{quiet}), for whichever
        server its next beat reaches; forgotten after C{ttl} seconds.
        """
        return self._store.command(
            "SET", self._keys.owner_state(owner), state, "PX", int(ttl * 1000)
        )

    def signalled(self, owner: str) -> defer.Deferred[str | None]:
        """
        What C{owner} was last told (L{signal}), or L{None}.
        """
        return self._store.command("GET", self._keys.owner_state(owner))
