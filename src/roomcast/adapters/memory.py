"""An in-process store: fast, bounded, forgotten on restart."""

from __future__ import annotations

import itertools
import secrets
import time
from collections import deque

import msgspec

from roomcast.core.errors import RoomExists, UnknownChat, UnknownRoom
from roomcast.core.model import Appended, HistoryPage, StoredMessage
from roomcast.core.rooms import RoomInfo


class _Chat:
    """Mutable bookkeeping for one message."""

    __slots__ = ("alerted", "answered", "deleted", "message", "voters")

    def __init__(self, message: StoredMessage) -> None:
        self.message = message
        self.voters: set[str] = set()
        self.answered = False
        self.alerted = False
        self.deleted = False

    def snapshot(self) -> StoredMessage:
        return msgspec.structs.replace(
            self.message, upvotes=len(self.voters), answered=self.answered
        )


class _Room:
    __slots__ = ("chats", "client_ids", "evicted_upto", "last_offset")

    def __init__(self, history_max: int) -> None:
        self.chats: deque[_Chat] = deque(maxlen=history_max)
        self.client_ids: dict[tuple[str, str], _Chat] = {}  # (user, client id) -> chat
        self.last_offset = 0
        self.evicted_upto = 0  # every offset up to this one has been dropped


class MemoryStore:
    """Keeps the last `history_max` messages of each room, with their votes."""

    def __init__(self, *, history_max: int = 10_000) -> None:
        if history_max < 1:
            raise ValueError("history_max must be at least 1")
        self._history_max = history_max
        self._rooms: dict[str, _Room] = {}
        self._chats: dict[str, _Chat] = {}
        self._infos: dict[str, RoomInfo] = {}
        self._mutes: dict[str, dict[str, int]] = {}
        self._next_chat_id = 1
        self._epoch = secrets.token_hex(8)

    @property
    def epoch(self) -> str:
        return self._epoch

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    # ------------------------------------------------------------ messages

    async def append(
        self,
        room_id: str,
        user_id: str,
        name: str,
        text: str,
        client_msg_id: str | None = None,
        *,
        cooldown_ms: int = 0,  # a node-local store leaves cooldowns and mutes to the node
        check_mute: bool = False,
    ) -> Appended:
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = _Room(self._history_max)
        if client_msg_id is not None:
            seen = room.client_ids.get((user_id, client_msg_id))
            if seen is not None:
                return Appended(seen.snapshot(), duplicate=True)
        if len(room.chats) == self._history_max:
            old = room.chats[0]
            self._chats.pop(old.message.chat_id, None)
            room.evicted_upto = old.message.offset
            if old.message.client_msg_id is not None:
                room.client_ids.pop((old.message.user_id, old.message.client_msg_id), None)
        room.last_offset += 1
        chat_id = str(self._next_chat_id)
        self._next_chat_id += 1
        now = int(time.time() * 1000)
        message = StoredMessage(
            chat_id, room_id, room.last_offset, user_id, name, text, 0, now, False, client_msg_id
        )
        chat = _Chat(message)
        room.chats.append(chat)
        self._chats[chat_id] = chat
        if client_msg_id is not None:
            room.client_ids[(user_id, client_msg_id)] = chat
        return Appended(message)

    def _chat(self, room_id: str, chat_id: str) -> _Chat:
        chat = self._chats.get(chat_id)
        if chat is None or chat.deleted or chat.message.room_id != room_id:
            raise UnknownChat(chat_id)
        return chat

    async def vote(self, room_id: str, chat_id: str, user_id: str) -> StoredMessage | None:
        chat = self._chat(room_id, chat_id)
        if user_id in chat.voters:
            return None
        chat.voters.add(user_id)
        return chat.snapshot()

    async def unvote(self, room_id: str, chat_id: str, user_id: str) -> StoredMessage | None:
        chat = self._chat(room_id, chat_id)
        if user_id not in chat.voters:
            return None
        chat.voters.discard(user_id)
        return chat.snapshot()

    async def mark_answered(self, room_id: str, chat_id: str) -> StoredMessage:
        chat = self._chat(room_id, chat_id)
        chat.answered = True
        return chat.snapshot()

    async def delete_message(self, room_id: str, chat_id: str) -> None:
        chat = self._chat(room_id, chat_id)
        chat.deleted = True
        del self._chats[chat_id]
        if chat.message.client_msg_id is not None:
            key = (chat.message.user_id, chat.message.client_msg_id)
            self._rooms[room_id].client_ids.pop(key, None)

    async def claim_alert(self, room_id: str, chat_id: str) -> bool:
        chat = self._chat(room_id, chat_id)
        first = not chat.alerted
        chat.alerted = True
        return first

    async def history(
        self,
        room_id: str,
        limit: int,
        voter: str | None = None,
        alerts: bool = False,
        after: int | None = None,
        newest_if_incomplete: bool = False,
    ) -> HistoryPage:
        room = self._rooms.get(room_id)
        if room is None:
            return HistoryPage([], 0, [], complete=after is None or after >= 0)
        complete = True
        if after is None:
            page = _newest(room.chats, limit)
        else:
            # The deque holds consecutive offsets (deleted messages stay as markers until
            # evicted), so the first message after `after` is found by arithmetic.
            first = room.chats[0].message.offset if room.chats else room.last_offset + 1
            tail = itertools.islice(room.chats, max(0, after + 1 - first), None)
            newer = [c for c in tail if not c.deleted]
            complete = after >= room.evicted_upto and len(newer) <= limit
            if complete or not newest_if_incomplete:
                page = newer[:limit]
            else:
                page = _newest(room.chats, limit)
        voted = [c.message.chat_id for c in page if voter is not None and voter in c.voters]
        pending = (
            [c.snapshot() for c in room.chats if c.alerted and not c.answered and not c.deleted]
            if alerts
            else []
        )
        return HistoryPage([c.snapshot() for c in page], room.last_offset, voted, pending, complete)

    # ------------------------------------------------------------ rooms and mutes

    async def create_room(self, room: RoomInfo) -> RoomInfo:
        if room.room_id in self._infos:
            raise RoomExists(room.room_id)
        self._infos[room.room_id] = room
        return room

    async def update_room(self, room: RoomInfo) -> None:
        if room.room_id not in self._infos:
            raise UnknownRoom(room.room_id)
        self._infos[room.room_id] = room

    async def get_room(self, room_id: str) -> RoomInfo | None:
        return self._infos.get(room_id)

    async def list_rooms(self) -> list[RoomInfo]:
        return sorted(self._infos.values(), key=lambda r: (r.created_at, r.room_id))

    async def set_mute(self, room_id: str, user_id: str, until_ms: int) -> None:
        self._mutes.setdefault(room_id, {})[user_id] = until_ms

    async def mutes(self, room_id: str) -> dict[str, int]:
        return dict(self._mutes.get(room_id, {}))


def _newest(chats: deque[_Chat], limit: int) -> list[_Chat]:
    """The last `limit` messages that are not deleted, oldest first, read from the end."""
    page: list[_Chat] = []
    for chat in reversed(chats):
        if len(page) >= limit:
            break
        if not chat.deleted:
            page.append(chat)
    page.reverse()
    return page
