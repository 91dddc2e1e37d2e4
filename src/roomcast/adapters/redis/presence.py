"""The Presence port on Redis: who is in a room on every node, counted per user.

Each node counts its own connections in (`P pk:<node>`, see presence_join.lua) and says
it is alive every `heartbeat` seconds (`node:<id>`, expiring after three beats). A
node found absent on two sweeps in a row (once could be Redis coming back after an
outage) has its connections counted out by whichever live node sweeps the room.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from roomcast.adapters.redis.client import Keys, stop_task
from roomcast.adapters.redis.link import RedisLink
from roomcast.core.errors import StoreError

log = logging.getLogger("roomcast.redis")


class RedisPresence:
    """The Presence port on Redis (see the module doc and `roomcast.ports`)."""

    def __init__(self, link: RedisLink, *, prefix: str = "rc:", heartbeat: float = 5.0):
        self.link = link
        self.keys = Keys(prefix)
        self.node_id = secrets.token_hex(6)
        self._beat = heartbeat
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._absent: set[str] = set()  # nodes found gone at the last sweep
        self._first_sweep = 0.0

    async def open(self) -> None:
        if self._task is not None:
            return
        await self.link.open()
        self._first_sweep = time.monotonic() + 3 * self._beat  # give peers time to beat
        self._task = asyncio.create_task(self._heartbeat(), name="redis-heartbeat")

    async def close(self) -> None:
        self._stopping = True
        if self._task is None:
            return  # never opened, or closed already: the shared link is not ours now
        await stop_task(self._task)
        self._task = None
        await self.link.close()

    async def join(
        self, room_id: str, user_id: str, name: str, conn_id: str, list_max: int
    ) -> tuple[bool, int, list[tuple[str, str]]]:
        room = self.keys.room(room_id)
        first, count, flat = await self.link.run(
            "presence_join", room, self.node_id, user_id, conn_id, name, list_max
        )
        users = [(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]
        return bool(first), int(count), users

    async def leave(self, room_id: str, user_id: str, conn_id: str) -> tuple[bool, int]:
        room = self.keys.room(room_id)
        last, count = await self.link.run("presence_leave", room, self.node_id, user_id, conn_id)
        return bool(last), int(count)

    async def sweep(self, rooms: list[str]) -> list[tuple[str, int, list[str]]]:
        """Count out the users of nodes absent on two sweeps in a row."""
        if time.monotonic() < self._first_sweep:
            return []
        changed: list[tuple[str, int, list[str]]] = []
        absent: set[str] = set()
        client = self.link.client
        try:
            for room_id in rooms:
                room = self.keys.room(room_id)
                nodes = await self.link.direct(client.smembers(room + "nodes"))
                for raw in nodes:
                    node_id = raw.decode() if isinstance(raw, bytes) else raw
                    if node_id == self.node_id or await self._alive(node_id):
                        continue
                    absent.add(node_id)
                    if node_id not in self._absent:
                        continue
                    count, gone = await self.link.run("presence_purge", room, node_id)
                    users = [g.decode() for g in gone]
                    log.info("room %s: node %s is gone; %d users out", room_id, node_id, len(users))
                    changed.append((room_id, int(count), users))
        except StoreError:
            self._absent = set()  # Redis was away: peers may have missed beats too
            raise
        self._absent = absent
        return changed

    async def _alive(self, node_id: str) -> bool:
        return bool(await self.link.direct(self.link.client.exists(self.keys.node(node_id))))

    async def _heartbeat(self) -> None:
        """Say this node is alive, on its own schedule (a slow sweep must not delay it)."""
        while not self._stopping:
            ttl_ms = max(1, int(3 * self._beat * 1000))
            try:
                await self.link.direct(
                    self.link.client.set(self.keys.node(self.node_id), b"1", px=ttl_ms)
                )
            except StoreError as exc:
                log.debug("heartbeat: %s", exc)
            await asyncio.sleep(self._beat)
