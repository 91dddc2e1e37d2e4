"""What the store keeps of messages, as plain values shared by every layer."""

from __future__ import annotations

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
    epoch: str = ""  # the room history's epoch where it has its own; else `Store.epoch`
    published: bool = False  # the store published it on the broker itself (see ports)
