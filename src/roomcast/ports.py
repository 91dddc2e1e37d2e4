"""Interfaces the runtime depends on; adapters implement them.

Each port is a `typing.Protocol` whose docstrings are the contract every adapter must
keep. `tests/test_store_contract.py` runs one conformance suite over every adapter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from roomcast.core.model import Appended, HistoryPage, StoredMessage
from roomcast.core.rooms import RoomInfo
from roomcast.core.wire import Publication

__all__ = ["Appended", "Broker", "HistoryPage", "Presence", "Store", "StoredMessage"]


class Store(Protocol):
    """Durable rooms, room history, votes and mutes.

    Guarantees every adapter keeps:

    - `epoch` names this store's history: it changes when the history is lost (a new
      memory store, a new database file), so offsets from another epoch mean nothing.
      A store whose rooms can lose their history one by one (Redis: FLUSHALL, DEL of a
      room's keys, eviction, a restart without persistence) gives each room its own
      epoch, new whenever that room's history is lost; `HistoryPage.epoch` and
      `Appended.epoch` carry it (empty: the store's `epoch`).
    - `append` assigns the room's next offset (last + 1, starting at 1) and a `chat_id`
      that is a decimal string below 2**53, unique across all rooms of this store. When
      `append` returns, the message is as durable as the adapter can make it; appends to
      one room that are started in some order complete, and return, in that order.
      With a `client_msg_id`, a second append by the same user in the same room with
      the same id stores nothing and returns the first message with `duplicate=True`
      (for as long as that message is kept).
    - `vote` records at most one vote per (chat_id, user_id) and returns the updated
      message, or None when that user had already voted; `unvote` removes it, or returns
      None when there was none. Concurrent calls never double-count.
    - Every method that names a message raises `UnknownChat` when no message with that
      id exists in that room (deleted messages do not exist).
    - `claim_alert` returns True exactly once per message, to the first caller.
    - `history` returns the last `limit` messages of a room, oldest first, with their
      current vote counts, the room's last offset and the voter's own votes, in one
      atomic read, so a joiner neither misses nor doubles a message. With `after=N` it
      returns instead the messages with offset > N, oldest first, at most `limit`, and
      `complete` says whether that is all of them (False when some were evicted or more
      than `limit` exist); with `newest_if_incomplete`, an incomplete answer holds the
      newest `limit` messages instead (what a client that cannot resume needs).
    - Who publishes a new message: a store paired with a broker of the same backend that
      can append and publish atomically (Redis) publishes the `ChatPub` itself, in the
      same step as storing it, and says so with `Appended.published`; otherwise the
      node publishes it after `append` returns. Either way it is published exactly once
      (a duplicate retry is not published again).
    - A store that several nodes share enforces `cooldown_ms` and `check_mute`
      atomically with the append (refusing with the COOLDOWN or MUTED error, built by
      `core.rooms`); a node-local store leaves them to the node, which checks the same
      rules before it calls `append`.
    - When an adapter cannot take more work it raises `StoreOverloaded` at once instead
      of queueing without bound. Other backend failures raise `StoreError`.
    - Every method is safe to call concurrently from one event loop.
    """

    async def open(self) -> None:
        """Connect or create; called once before any other method."""
        ...

    async def close(self) -> None:
        """Finish pending writes and release resources; idempotent."""
        ...

    async def ping(self) -> None:
        """Return when the backend answers; raise StoreError when it does not."""
        ...

    # ------------------------------------------------------------ messages

    @property
    def epoch(self) -> str:
        """The history's identity; valid after `open`."""
        ...

    async def append(
        self,
        room_id: str,
        user_id: str,
        name: str,
        text: str,
        client_msg_id: str | None = None,
        *,
        cooldown_ms: int = 0,
        check_mute: bool = False,
    ) -> Appended:
        """Store a new message at the end of the room's history (see the class doc)."""
        ...

    async def vote(self, room_id: str, chat_id: str, user_id: str) -> StoredMessage | None:
        """Count one vote by `user_id`; None if that user had voted already."""
        ...

    async def unvote(self, room_id: str, chat_id: str, user_id: str) -> StoredMessage | None:
        """Withdraw `user_id`'s vote; None if that user had not voted."""
        ...

    async def mark_answered(self, room_id: str, chat_id: str) -> StoredMessage:
        """Flag a message as answered (idempotent)."""
        ...

    async def delete_message(self, room_id: str, chat_id: str) -> None:
        """Remove a message and its votes from the history."""
        ...

    async def claim_alert(self, room_id: str, chat_id: str) -> bool:
        """True the first time it is called for a message, False ever after."""
        ...

    async def history(
        self,
        room_id: str,
        limit: int,
        voter: str | None = None,
        alerts: bool = False,
        after: int | None = None,
        newest_if_incomplete: bool = False,
    ) -> HistoryPage:
        """The last `limit` messages of the room, or those after offset `after`, oldest
        first (see the class doc); with `alerts`, also every message whose alert was
        claimed and that is not answered."""
        ...

    # ------------------------------------------------------------ rooms and mutes

    async def create_room(self, room: RoomInfo) -> RoomInfo:
        """Store a new room; raises `RoomExists` if the id is taken."""
        ...

    async def update_room(self, room: RoomInfo) -> None:
        """Replace a room's settings; raises `UnknownRoom` if it does not exist."""
        ...

    async def get_room(self, room_id: str) -> RoomInfo | None:
        """A room's settings, or None."""
        ...

    async def list_rooms(self) -> list[RoomInfo]:
        """Every room, oldest first."""
        ...

    async def set_mute(self, room_id: str, user_id: str, until_ms: int) -> None:
        """`user_id` may not send or vote in the room before `until_ms`."""
        ...

    async def mutes(self, room_id: str) -> dict[str, int]:
        """user id -> muted-until (ms) for the room's mutes."""
        ...


OnPublication = Callable[[Publication], None]


class Broker(Protocol):
    """Carries a room's publications between the nodes that host it.

    Guarantees every adapter keeps:

    - `bind(on_publication, on_reconnect)` is called once, before `open`.
    - A node subscribes once per room (on its first local member) and unsubscribes on
      its last; `subscribe` returns once publications on the room reach this node, and
      raises `StoreError` when it cannot.
    - Every publication made after a subscription became active, by any node on the
      same broker (this one included), reaches `on_publication` once, in the order the
      broker received them; a publication's room is `pub.room_id`.
    - When the link was lost and is back, every room is subscribed again and then
      `on_reconnect()` is called: whatever was published meanwhile is lost, and the
      node fills it from the history. A link that stops answering is found by a
      liveness check and treated as lost. `connected` is False while it is down.
    - `publish` returns once the broker took the publication (in this node's order);
      it raises `StoreError` when it cannot.
    - Publications received are counted in `received`; malformed or unknown-version
      ones are dropped and counted in `dropped`.
    """

    connected: bool
    received: int
    dropped: int
    reconnects: int

    def bind(self, on_publication: OnPublication, on_reconnect: Callable[[], None]) -> None: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, room_id: str) -> None: ...

    async def unsubscribe(self, room_id: str) -> None: ...

    def publish(self, pub: Publication) -> Awaitable[None]: ...


class Presence(Protocol):
    """Who is in a room, across every node that shares the broker, counted per user.

    Guarantees every adapter keeps:

    - `join` counts one connection (`conn_id`, unique on this node) of a user in and
      returns (was it the user's first connection anywhere, users in the room, up to
      `list_max` (user id, name) pairs). Joining again with the same `conn_id` counts
      nothing more.
    - `leave` counts that connection out and returns (was it the user's last, users
      left). It is idempotent: a leave of a connection that is not counted changes
      nothing and returns (False, count), so a leave whose answer was lost can be
      retried safely.
    - A shared adapter says this node is alive on its own schedule; `sweep(rooms)`
      counts out the connections of nodes that stopped saying so (found absent twice in
      a row) and returns (room, users left, user ids gone) per room that changed.
    - Backend failures raise `StoreError`.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def join(
        self, room_id: str, user_id: str, name: str, conn_id: str, list_max: int
    ) -> tuple[bool, int, list[tuple[str, str]]]: ...

    async def leave(self, room_id: str, user_id: str, conn_id: str) -> tuple[bool, int]: ...

    async def sweep(self, rooms: list[str]) -> list[tuple[str, int, list[str]]]: ...
