"""What a node knows of its rooms right now, and how it shows them to members.

`RoomView` caches the settings, mutes and user counts of the rooms this node hosts (and
of rooms an admin just changed), and turns stored values into the protocol's events.
"""

from __future__ import annotations

from collections.abc import Callable

from roomcast.core.model import HistoryPage, StoredMessage
from roomcast.core.protocol import (
    AlertOut,
    ChatOut,
    HistoryOut,
    RoomOut,
    UpdateChatOut,
    encode_event,
)
from roomcast.core.rooms import RoomInfo, iso, priority, state


class RoomView:
    """Caches of room settings, mutes and user counts; the protocol's view of them."""

    __slots__ = ("_now_ms", "counts", "mutes", "rooms")

    def __init__(self, now_ms: Callable[[], int]) -> None:
        self._now_ms = now_ms
        self.rooms: dict[str, RoomInfo] = {}
        self.mutes: dict[str, dict[str, int]] = {}
        self.counts: dict[str, int] = {}  # users in the room, on every node

    def info(self, room_id: str) -> RoomInfo:
        """The cached settings, or a default room's while none are cached."""
        info = self.rooms.get(room_id)
        return info if info is not None else RoomInfo(room_id, room_id)

    def forget(self, room_id: str) -> None:
        self.rooms.pop(room_id, None)
        self.mutes.pop(room_id, None)
        self.counts.pop(room_id, None)

    def chat_out(self, m: StoredMessage, info: RoomInfo) -> ChatOut:
        return ChatOut(
            m.chat_id,
            m.room_id,
            m.offset,
            m.user_id,
            m.name,
            m.text,
            m.upvotes,
            priority(m.upvotes, info),
            m.answered,
            m.created_at,
            m.client_msg_id,
        )

    def update_event(self, m: StoredMessage, info: RoomInfo) -> bytes:
        """UPDATE_CHAT: a message's votes or answered flag changed."""
        tier = priority(m.upvotes, info)
        return encode_event(
            "UPDATE_CHAT", UpdateChatOut(m.chat_id, m.room_id, m.upvotes, tier, m.answered)
        )

    def alert_event(self, m: StoredMessage) -> bytes:
        """ADMIN_ALERT: a message reached the room's high threshold."""
        alert = AlertOut(m.room_id, m.chat_id, m.text, m.name, m.upvotes)
        return encode_event("ADMIN_ALERT", alert)

    def room_out(self, info: RoomInfo) -> RoomOut:
        return RoomOut(
            info.room_id,
            info.name,
            None if info.start_time is None else iso(info.start_time),
            info.is_open,
            info.cooldown_seconds,
            info.medium_threshold,
            info.high_threshold,
            state(info, self._now_ms()),
            self.counts.get(info.room_id, 0),
        )

    def history_out(
        self,
        page: HistoryPage,
        info: RoomInfo,
        after: int | None,
        recovered: bool | None,
        epoch: str,
    ) -> HistoryOut:
        """ROOM_HISTORY for a page read with `after` (None: the newest messages)."""
        if after is None or not page.complete:  # the newest messages
            covered = page.messages[0].offset - 1 if page.messages else page.last_offset
        else:
            covered = after
        return HistoryOut(
            info.room_id,
            [self.chat_out(m, info) for m in page.messages],
            page.last_offset,
            covered,
            page.epoch or epoch,
            page.voted,
            self.room_out(info),
            recovered,
        )
