"""Interfaces the runtime depends on; adapters implement them.

Each port is a `typing.Protocol` whose docstrings are the contract every adapter must
keep. `tests/test_store_contract.py` runs one conformance suite over every adapter.
"""

from __future__ import annotations

from typing import Protocol

from msgspec import Struct


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


class HistoryPage(Struct, frozen=True):
    """A room's recent messages, oldest first, as of one instant."""

    messages: list[StoredMessage]
    last_offset: int  # offset of the room's newest message; 0 when it has none
    voted: list[str]  # chat ids among `messages` the asking user voted on


class Store(Protocol):
    """Durable room history and votes.

    Guarantees every adapter keeps:

    - `append` assigns the room's next offset (last + 1, starting at 1) and a `chat_id`
      that is a decimal string below 2**53, unique across all rooms of this store. When
      `append` returns, the message is as durable as the adapter can make it; appends to
      one room that are started in some order complete, and return, in that order.
    - `vote` records at most one vote per (chat_id, user_id): it returns the new count
      when the vote was counted and None when that user had already voted. It raises
      `UnknownChat` when no message with that id exists in that room.
    - `history` returns the last `limit` messages of a room, oldest first, with their
      current vote counts, the room's last offset and the voter's own votes, in one
      atomic read, so a joiner neither misses nor doubles a message.
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

    async def append(self, room_id: str, user_id: str, name: str, text: str) -> StoredMessage:
        """Store a new message at the end of the room's history."""
        ...

    async def vote(self, room_id: str, chat_id: str, user_id: str) -> int | None:
        """Count one vote by `user_id`; None if that user had voted already."""
        ...

    async def history(self, room_id: str, limit: int, voter: str | None = None) -> HistoryPage:
        """The last `limit` messages of the room, oldest first, read atomically with
        the room's last offset and (when `voter` is given) the ids among them that
        `voter` has voted on. An append that completes before this call started is in
        the page; one started after it completes after it."""
        ...
