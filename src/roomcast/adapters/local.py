"""The in-process broker and presence: one node alone, nothing to connect to.

`LocalBroker` hands every publication of a subscribed room straight back to the node,
in the order they were published, before `publish` returns: no encoding, no copy.
`LocalPresence` counts connections per user in this process's memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator

from roomcast.core.errors import StoreError
from roomcast.core.wire import Publication
from roomcast.ports import OnPublication


class _Done:
    """An awaitable that is already done: awaiting it returns None at once."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return iter(())  # type: ignore[return-value]


DONE: Awaitable[None] = _Done()


class LocalBroker:
    """The `Broker` port inside one process (see `roomcast.ports`)."""

    def __init__(self) -> None:
        self.connected = True
        self.received = 0
        self.dropped = 0
        self.reconnects = 0
        self._rooms: set[str] = set()
        self._deliver: OnPublication | None = None

    def bind(self, on_publication: OnPublication, on_reconnect: Callable[[], None]) -> None:
        self._deliver = on_publication

    async def open(self) -> None:
        if self._deliver is None:
            raise StoreError("local broker: bind() before open()")

    async def close(self) -> None:
        self._rooms.clear()

    async def subscribe(self, room_id: str) -> None:
        self._rooms.add(room_id)

    async def unsubscribe(self, room_id: str) -> None:
        self._rooms.discard(room_id)

    def publish(self, pub: Publication) -> Awaitable[None]:
        """Deliver at once; what it returns is already done (no coroutine to run)."""
        if pub.room_id in self._rooms and self._deliver is not None:
            self.received += 1
            self._deliver(pub)
        return DONE


class _User:
    __slots__ = ("conns", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.conns: set[str] = set()


class LocalPresence:
    """The `Presence` port inside one process: room -> user -> that user's connections."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, _User]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def join(
        self, room_id: str, user_id: str, name: str, conn_id: str, list_max: int
    ) -> tuple[bool, int, list[tuple[str, str]]]:
        users = self._rooms.setdefault(room_id, {})
        user = users.get(user_id)
        first = user is None
        if user is None:
            user = users[user_id] = _User(name)
        user.name = name
        user.conns.add(conn_id)
        listed: list[tuple[str, str]] = []
        for uid, u in users.items():  # in joining order
            if len(listed) >= list_max:
                break
            listed.append((uid, u.name))
        return first, len(users), listed

    async def leave(self, room_id: str, user_id: str, conn_id: str) -> tuple[bool, int]:
        users = self._rooms.get(room_id)
        user = users.get(user_id) if users else None
        if users is None or user is None or conn_id not in user.conns:
            return False, len(users or ())
        user.conns.discard(conn_id)
        if user.conns:
            return False, len(users)
        del users[user_id]
        if not users:
            del self._rooms[room_id]
        return True, len(users)

    async def sweep(self, rooms: list[str]) -> list[tuple[str, int, list[str]]]:
        return []  # one process: no other node can die with members counted in
