"""Interfaces the runtime depends on; adapters implement them.

Each port is a `typing.Protocol` whose docstrings are the contract every adapter must
keep. `tests/test_store_contract.py` runs one conformance suite over every adapter.
"""

from __future__ import annotations

from typing import Protocol

from msgspec import Struct

from roomcast.core.rooms import RoomInfo


class StoredMessage(Struct, frozen=True):
    """One chat message as stored. `offset` counts from 1 per room, without gaps."""

    chat_id: str
    room_id: str
    offset: int
    user_id: str
    name: str
    text: str
    upvotes: int
    created_at: int  # milliseconds since the Unix epoch
    answered: bool = False
    client_msg_id: str | None = None  # the sender's id for retries, if it gave one


class HistoryPage(Struct, frozen=True):
    """A room's recent messages, oldest first, as of one instant."""

    messages: list[StoredMessage]
    last_offset: int  # offset of the room's newest message; 0 when it has none
    voted: list[str]  # chat ids among `messages` the asking user voted on
    alerts: list[StoredMessage] = []  # with alerts=True: claimed, unanswered alerts
    complete: bool = True  # with after=N: every message with offset > N is in `messages`
    epoch: str = ""  # the room history's epoch where it has its own; else `Store.epoch`


class Appended(Struct, frozen=True):
    """The result of `append`: the message, and whether it was stored before."""

    message: StoredMessage
    duplicate: bool = False  # same (room, user, client_msg_id) was appended already


class Store(Protocol):
    """Durable rooms, room history, votes and mutes.

    Guarantees every adapter keeps:

    - `epoch` names this store's history: it changes when the history is lost (a new
      memory store, a new database file), so offsets from another epoch mean nothing.
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
        self, room_id: str, user_id: str, name: str, text: str, client_msg_id: str | None = None
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


class SharedStore(Store, Protocol):
    """A store several nodes share (Redis). On top of `Store`:

    - `append` also publishes the message to the room's channel, in the same atomic
      step, and enforces the cooldown and mutes cluster-wide when asked to.
    - `history` pages carry the room's own `epoch`, which changes when that room's
      history was lost (e.g. Redis restarted without persistence).
    - presence is counted per user across nodes; each node says it is alive with
      `heartbeat`, and what a dead node had counted in is purged by a live one.
    """

    node_id: str

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
        room: RoomInfo | None = None,
    ) -> Appended:
        """`Store.append`, plus: publish; refuse with COOLDOWN when this user appended
        within `cooldown_ms`, or with MUTED when `check_mute` and the user is muted."""
        ...

    async def publish(self, room_id: str, data: bytes) -> None:
        """Publish `data` on the room's channel after this node's earlier writes."""
        ...

    async def presence_join(
        self, room_id: str, user_id: str, name: str, list_max: int
    ) -> tuple[bool, int, list[tuple[str, str]]]: ...

    async def presence_leave(self, room_id: str, user_id: str) -> tuple[bool, int]: ...

    async def presence_purge(self, room_id: str, node_id: str) -> tuple[int, list[str]]: ...

    async def presence_nodes(self, room_id: str) -> list[str]: ...

    async def heartbeat(self, ttl: float) -> None: ...

    async def node_alive(self, node_id: str) -> bool: ...


class Broker(Protocol):
    """Room subscriptions: what other nodes publish reaches this node's rooms.

    The broker calls back `on_message(room_id, data)` for each publication on a room it
    is subscribed to, in the order Redis delivered them, and `on_reset()` after it
    reconnected (publications made meanwhile are lost; the node fills the gap)."""

    connected: bool

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, room_id: str) -> None:
        """Return once the subscription is active; raise StoreError when it cannot be."""
        ...

    async def unsubscribe(self, room_id: str) -> None: ...
