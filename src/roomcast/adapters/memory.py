"""An in-process store: fast, bounded, forgotten on restart."""

from __future__ import annotations

import time
from collections import deque

import msgspec

from roomcast.core.errors import UnknownChat
from roomcast.ports import HistoryPage, StoredMessage


class _Room:
    __slots__ = ("last_offset", "messages")

    def __init__(self, history_max: int) -> None:
        self.messages: deque[StoredMessage] = deque(maxlen=history_max)
        self.last_offset = 0


class MemoryStore:
    """Keeps the last `history_max` messages of each room, with their votes."""

    def __init__(self, *, history_max: int = 10_000) -> None:
        if history_max < 1:
            raise ValueError("history_max must be at least 1")
        self._history_max = history_max
        self._rooms: dict[str, _Room] = {}
        self._chats: dict[str, StoredMessage] = {}
        self._votes: dict[str, set[str]] = {}
        self._next_chat_id = 1

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def append(self, room_id: str, user_id: str, name: str, text: str) -> StoredMessage:
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = _Room(self._history_max)
        if len(room.messages) == self._history_max:
            evicted = room.messages[0]
            self._chats.pop(evicted.chat_id, None)
            self._votes.pop(evicted.chat_id, None)
        room.last_offset += 1
        chat_id = str(self._next_chat_id)
        self._next_chat_id += 1
        message = StoredMessage(
            chat_id, room_id, room.last_offset, user_id, name, text, 0, int(time.time() * 1000)
        )
        room.messages.append(message)
        self._chats[chat_id] = message
        return message

    async def vote(self, room_id: str, chat_id: str, user_id: str) -> int | None:
        message = self._chats.get(chat_id)
        if message is None or message.room_id != room_id:
            raise UnknownChat(chat_id)
        voters = self._votes.setdefault(chat_id, set())
        if user_id in voters:
            return None
        voters.add(user_id)
        return len(voters)

    async def history(self, room_id: str, limit: int, voter: str | None = None) -> HistoryPage:
        room = self._rooms.get(room_id)
        if room is None:
            return HistoryPage([], 0, [])
        tail = list(room.messages)[-limit:] if limit > 0 else []
        voted = [
            m.chat_id for m in tail if voter is not None and voter in self._votes.get(m.chat_id, ())
        ]
        return HistoryPage([self._with_votes(m) for m in tail], room.last_offset, voted)

    def _with_votes(self, message: StoredMessage) -> StoredMessage:
        votes = len(self._votes.get(message.chat_id, ()))
        if votes == message.upvotes:
            return message
        return msgspec.structs.replace(message, upvotes=votes)
