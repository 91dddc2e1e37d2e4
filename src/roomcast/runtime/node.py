"""A roomcast node: rooms, rules, presence and fan-out on top of a Store.

Sessions (WebSocket) and the HTTP API call the node; the node enforces the Q&A rules
(`core.rooms`), talks to the store, and publishes events through the hubs. Room
settings and mutes are cached while a room has local members; cooldown times are kept
per (room, user), whichever connection the user sends from.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Protocol

import msgspec

from roomcast.config import Settings
from roomcast.core.errors import ClientError, ErrorCode, RoomExists, UnknownChat, UnknownRoom
from roomcast.core.protocol import (
    AlertOut,
    ChatOut,
    ChatRefOut,
    CreateRoom,
    HistoryOut,
    MutedOut,
    PresenceOut,
    RoomEventOut,
    RoomOut,
    UpdateChatOut,
    UpdateRoom,
    UserJoinedOut,
    UserLeftOut,
    UserOut,
    encode_event,
    normalize_id,
)
from roomcast.core.rooms import (
    RoomInfo,
    check_send,
    check_vote,
    iso,
    parse_iso,
    priority,
    state,
)
from roomcast.ports import HistoryPage, Store, StoredMessage
from roomcast.runtime.frames import text_frame
from roomcast.runtime.hub import Hub
from roomcast.runtime.outbox import Outbox
from roomcast.runtime.presence import Presence
from roomcast.runtime.stats import Stats

COOLDOWN_PRUNE_AT = 10_000  # cooldown entries per room before expired ones are dropped


class Member(Protocol):
    """What the node needs of a connection."""

    outbox: Outbox
    user_id: str | None
    is_admin: bool
    rooms: dict[str, str]
    closed: bool


def _unknown_chat(room_id: str, chat_id: str) -> ClientError:
    return ClientError(ErrorCode.UNKNOWN_CHAT, f"no message {chat_id!r} in room {room_id!r}")


class Node:
    """Everything one process knows about rooms, and the only writer to its hubs."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        stats: Stats | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.stats = stats or Stats()
        self.hub = Hub()  # every member of a room
        self.admins = Hub()  # admin members of a room, for ADMIN_ALERT
        self.presence = Presence()
        self._clock = clock
        self._rooms: dict[str, RoomInfo] = {}
        self._mutes: dict[str, dict[str, int]] = {}
        self._last_sent: dict[str, dict[str, tuple[int, str | None]]] = {}
        self._admin_lock = asyncio.Lock()

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    # ------------------------------------------------------------ rooms

    async def room(self, room_id: str, *, create: bool = False) -> RoomInfo:
        """A room's settings; in open mode `create` makes a missing room."""
        info = self._rooms.get(room_id)
        if info is not None:
            return info
        info = await self.store.get_room(room_id)
        if info is None and create and self.settings.rooms == "open":
            try:
                info = await self.store.create_room(
                    RoomInfo(room_id, room_id, created_at=self.now_ms())
                )
            except RoomExists:
                info = await self.store.get_room(room_id)
        if info is None:
            raise ClientError(ErrorCode.ROOM_NOT_FOUND, f"no room {room_id!r}")
        return info

    async def _load(self, room_id: str, *, create: bool) -> tuple[RoomInfo, dict[str, int]]:
        """Like `room`, plus the room's mutes, from the cache kept for local members."""
        cached = self._rooms.get(room_id)
        if cached is not None:
            return cached, self._mutes[room_id]
        info = await self.room(room_id, create=create)
        mutes = await self.store.mutes(room_id)
        return info, mutes

    def room_out(self, info: RoomInfo) -> RoomOut:
        return RoomOut(
            info.room_id,
            info.name,
            None if info.start_time is None else iso(info.start_time),
            info.is_open,
            info.cooldown_seconds,
            info.medium_threshold,
            info.high_threshold,
            state(info, self.now_ms()),
            self.member_count(info.room_id),
        )

    def member_count(self, room_id: str) -> int:
        """Distinct users in the room (on every node, where nodes share rooms)."""
        return self.presence.count(room_id)

    async def start(self) -> None:
        """Start background work; called once the store is open."""

    async def stop(self) -> None:
        """Stop background work; called before the store closes."""

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

    async def create_room(self, command: CreateRoom) -> RoomInfo:
        """Create a room from an admin's CREATE_ROOM (WebSocket or HTTP)."""
        if command.mediumThreshold > command.highThreshold:
            raise ClientError(
                ErrorCode.INVALID_PAYLOAD, "mediumThreshold must not exceed highThreshold"
            )
        room_id = secrets.token_hex(4) if command.roomId is None else normalize_id(command.roomId)
        info = RoomInfo(
            room_id,
            command.name,
            _start_time(command.startTime),
            command.isOpen,
            command.cooldownSeconds,
            command.mediumThreshold,
            command.highThreshold,
            self.now_ms(),
            managed=True,
        )
        try:
            return await self.store.create_room(info)
        except RoomExists:
            raise ClientError(ErrorCode.ROOM_EXISTS, f"room {room_id!r} exists") from None

    async def update_room(self, command: UpdateRoom) -> RoomInfo:
        """Apply an admin's UPDATE_ROOM and push ROOM_UPDATED to the room's members."""
        async with self._admin_lock:  # read-modify-write: two admins must not interleave
            return await self._update_room(command)

    async def _update_room(self, command: UpdateRoom) -> RoomInfo:
        room_id = normalize_id(command.roomId)
        info = await self.room(room_id)
        changes: dict[str, object] = {}
        if not isinstance(command.name, msgspec.UnsetType):
            changes["name"] = command.name
        if not isinstance(command.startTime, msgspec.UnsetType):
            changes["start_time"] = _start_time(command.startTime)
        if not isinstance(command.isOpen, msgspec.UnsetType):
            changes["is_open"] = command.isOpen
        if not isinstance(command.cooldownSeconds, msgspec.UnsetType):
            changes["cooldown_seconds"] = command.cooldownSeconds
        if not isinstance(command.mediumThreshold, msgspec.UnsetType):
            changes["medium_threshold"] = command.mediumThreshold
        if not isinstance(command.highThreshold, msgspec.UnsetType):
            changes["high_threshold"] = command.highThreshold
        new = msgspec.structs.replace(info, **changes)
        if new.medium_threshold > new.high_threshold:
            raise ClientError(
                ErrorCode.INVALID_PAYLOAD, "mediumThreshold must not exceed highThreshold"
            )
        try:
            await self.store.update_room(new)
        except UnknownRoom:
            raise ClientError(ErrorCode.ROOM_NOT_FOUND, f"no room {room_id!r}") from None
        mutes = self._mutes.get(room_id)
        if mutes is None:
            mutes = await self.store.mutes(room_id)
        # Cached also without local members, so a join in flight finds the new settings.
        self._mutes.setdefault(room_id, mutes)
        self._rooms[room_id] = new
        await self._emit_room(new)
        return new

    # ------------------------------------------------------------ membership

    async def join(
        self,
        member: Member,
        room_id: str,
        user_id: str,
        name: str,
        *,
        since: int | None = None,
        epoch: str | None = None,
    ) -> None:
        """Join `room_id`: send ROOM_HISTORY and PRESENCE, announce USER_JOINED.

        With `since` (and the `epoch` it came from), the history covers every message
        after `since` (and the usual window before it, for fresh vote counts), and says
        whether that replay is complete (`recovered`).
        """
        info, mutes = await self._load(room_id, create=True)
        page, after, recovered = await self._join_history(
            room_id, user_id, member.is_admin, since, epoch, self.store.epoch
        )
        # No await from here on: the history read and entering the hub are one step, so
        # the joiner neither misses nor doubles a message appended meanwhile.
        if member.closed:
            return
        member.user_id = user_id  # the connection is this user from now on
        if room_id in self._rooms:  # loaded or updated meanwhile: the cache is newer
            info = self._rooms[room_id]
        else:
            self._rooms[room_id] = info
            self._mutes[room_id] = mutes
        box = member.outbox
        first = False
        if room_id not in member.rooms:
            first = self.presence.add(room_id, user_id, name)
            self.hub.join(room_id, box)
            if member.is_admin:
                self.admins.join(room_id, box)
        member.rooms[room_id] = name
        history = self.history_out(room_id, page, info, after, recovered)
        box.send(text_frame(encode_event("ROOM_HISTORY", history)))
        users = [
            UserOut(u, n) for u, n in self.presence.users(room_id, self.settings.presence_list_max)
        ]
        count = self.presence.count(room_id)
        box.send(text_frame(encode_event("PRESENCE", PresenceOut(room_id, count, users))))
        if first and count <= self.settings.presence_broadcast_max:
            event = UserJoinedOut(room_id, user_id, name, count)
            self.hub.publish(room_id, encode_event("USER_JOINED", event))
        for alert in page.alerts:
            box.send(text_frame(self._alert(alert)))

    async def _join_history(
        self,
        room_id: str,
        user_id: str,
        is_admin: bool,
        since: int | None,
        epoch: str | None,
        known_epoch: str,
    ) -> tuple[HistoryPage, int | None, bool | None]:
        """A joiner's history: (page, the `after` it was read with, `recovered`).

        With `since` from `known_epoch`, every message after it plus the usual window
        before it; otherwise (or when the page shows another epoch) the newest window.
        """
        window = self.settings.history_size
        resumable = since is not None and (epoch is None or epoch == known_epoch)
        after = max((since or 0) - window, 0) if resumable else None
        page = await self.store.history(
            room_id,
            window + self.settings.resume_max if resumable else window,
            voter=user_id,
            alerts=is_admin,
            after=after,
            newest_if_incomplete=True,
        )
        if resumable and epoch is not None and page.epoch and page.epoch != epoch:
            # The history changed under the caller's feet: no resume, the newest.
            resumable, after = False, None
            page = await self.store.history(room_id, window, voter=user_id, alerts=is_admin)
        if since is None:
            return page, after, None
        return page, after, resumable and page.complete and since <= page.last_offset

    def history_out(
        self,
        room_id: str,
        page: HistoryPage,
        info: RoomInfo,
        after: int | None,
        recovered: bool | None,
    ) -> HistoryOut:
        """ROOM_HISTORY for a page read with `after` (None: the newest messages)."""
        if after is None or not page.complete:  # the newest messages
            covered = page.messages[0].offset - 1 if page.messages else page.last_offset
        else:
            covered = after
        return HistoryOut(
            room_id,
            [self.chat_out(m, info) for m in page.messages],
            page.last_offset,
            covered,
            page.epoch or self.store.epoch,
            page.voted,
            self.room_out(info),
            recovered,
        )

    def leave(self, member: Member, room_id: str) -> None:
        """Leave one room; announce USER_LEFT when it was the user's last connection."""
        if member.rooms.pop(room_id, None) is None or member.user_id is None:
            return
        self.hub.leave(room_id, member.outbox)
        self.admins.leave(room_id, member.outbox)
        if self.presence.remove(room_id, member.user_id):
            count = self.presence.count(room_id)
            if count < self.settings.presence_broadcast_max:
                event = UserLeftOut(room_id, member.user_id, count)
                self.hub.publish(room_id, encode_event("USER_LEFT", event))
        if self.hub.member_count(room_id) == 0:
            info = self._rooms.pop(room_id, None)
            self._mutes.pop(room_id, None)
            last = self._last_sent.get(room_id)
            if last is not None and info is not None:  # keep only running cooldowns
                _prune(last, self.now_ms() - int(info.cooldown_seconds * 1000))
                if not last:
                    del self._last_sent[room_id]

    # ------------------------------------------------------------ messages and votes

    async def send(
        self,
        member: Member,
        room_id: str,
        user_id: str,
        text: str,
        client_msg_id: str | None = None,
    ) -> None:
        """Check the room's rules, store the message, publish ADD_CHAT.

        A retry (same `client_msg_id`) of a message that was stored is not stored again:
        only the sender gets its ADD_CHAT, again, even inside the cooldown it started.
        """
        info = self._rooms[room_id]
        now = self.now_ms()
        last = self._last_sent.get(room_id)
        previous = last.get(user_id) if last else None
        # A retry of the message that started this user's cooldown is not refused by that
        # cooldown; every other rule (closed, not started, muted) still applies to it.
        retry = previous is not None and client_msg_id is not None and previous[1] == client_msg_id
        check_send(
            info,
            now_ms=now,
            last_sent_ms=None if previous is None or retry else previous[0],
            muted_until_ms=self._mutes.get(room_id, {}).get(user_id),
            is_admin=member.is_admin,
        )
        if not retry and info.cooldown_seconds > 0 and not member.is_admin:
            # Taken before the await, so parallel sends cannot slip through.
            last = self._last_sent.setdefault(room_id, {})
            last[user_id] = (now, client_msg_id)
            if len(last) > COOLDOWN_PRUNE_AT:
                _prune(last, now - int(info.cooldown_seconds * 1000))
        started = time.perf_counter()
        try:
            result = await self.store.append(
                room_id, user_id, member.rooms[room_id], text, client_msg_id
            )
            self.stats.store_latency.observe(time.perf_counter() - started)
        except BaseException:
            if last is not None and not retry:
                if previous is None:
                    last.pop(user_id, None)
                else:
                    last[user_id] = previous
            raise
        info = self._rooms.get(room_id, info)
        payload = encode_event("ADD_CHAT", self.chat_out(result.message, info))
        if result.duplicate:
            member.outbox.send(text_frame(payload))
        else:
            self.hub.publish(room_id, payload)

    async def publish_as(
        self, room_id: str, user_id: str, name: str, text: str, key: str | None = None
    ) -> tuple[ChatOut, bool]:
        """Post a message from the server side (the HTTP API: a bot, a ticker). The room
        rules for participants do not apply; `key` makes retries post once. Returns the
        message and whether it had been posted already."""
        info = await self.room(room_id, create=True)
        result = await self.store.append(room_id, user_id, name, text, key)
        chat = self.chat_out(result.message, self._rooms.get(room_id, info))
        if not result.duplicate:
            self.hub.publish(room_id, encode_event("ADD_CHAT", chat))
        return chat, result.duplicate

    async def vote(
        self, member: Member, room_id: str, user_id: str, chat_id: str, *, up: bool
    ) -> None:
        """Count or withdraw a vote; publish UPDATE_CHAT; alert admins once at `high`."""
        info = self._rooms[room_id]
        check_vote(
            info,
            now_ms=self.now_ms(),
            muted_until_ms=self._mutes.get(room_id, {}).get(user_id),
            is_admin=member.is_admin,
        )
        try:
            if up:
                updated = await self.store.vote(room_id, chat_id, user_id)
            else:
                updated = await self.store.unvote(room_id, chat_id, user_id)
        except UnknownChat:
            raise _unknown_chat(room_id, chat_id) from None
        if updated is None:
            return
        info = self._rooms.get(room_id, info)
        await self._publish_update(updated, info)
        if up and updated.upvotes >= info.high_threshold and not updated.answered:
            try:
                first = await self.store.claim_alert(room_id, chat_id)
            except UnknownChat:  # deleted meanwhile
                return
            if first:
                await self._emit_alert(room_id, self._alert(updated))

    async def _publish_update(self, m: StoredMessage, info: RoomInfo) -> None:
        event = UpdateChatOut(
            m.chat_id, m.room_id, m.upvotes, priority(m.upvotes, info), m.answered
        )
        await self._emit(m.room_id, encode_event("UPDATE_CHAT", event))

    # ------------------------------------------------------------ events to members
    # One node delivers straight to its hubs; `SharedNode` publishes through Redis and
    # delivers what comes back, so every node sees the same events in the same order.

    async def _emit(self, room_id: str, payload: bytes) -> None:
        """Deliver an event (a JSON document) to every member of the room."""
        self.hub.publish(room_id, payload)

    async def _emit_alert(self, room_id: str, payload: bytes) -> None:
        """Deliver an ADMIN_ALERT to the room's admins."""
        self.admins.publish(room_id, payload)

    async def _emit_room(self, info: RoomInfo) -> None:
        """Tell the room's members its settings changed (ROOM_UPDATED)."""
        event = RoomEventOut(self.room_out(info))
        self.hub.publish(info.room_id, encode_event("ROOM_UPDATED", event))

    async def _emit_mute(self, room_id: str, user_id: str, until: int) -> None:
        """Tell the room's members a user was muted (USER_MUTED)."""
        event = MutedOut(room_id, user_id, iso(until))
        self.hub.publish(room_id, encode_event("USER_MUTED", event))

    def _alert(self, m: StoredMessage) -> bytes:
        return encode_event(
            "ADMIN_ALERT", AlertOut(m.room_id, m.chat_id, m.text, m.name, m.upvotes)
        )

    # ------------------------------------------------------------ moderation

    async def mark_answered(self, room_id: str, chat_id: str) -> None:
        info = await self.room(room_id)
        try:
            updated = await self.store.mark_answered(room_id, chat_id)
        except UnknownChat:
            raise _unknown_chat(room_id, chat_id) from None
        await self._publish_update(updated, self._rooms.get(room_id, info))

    async def delete_chat(self, room_id: str, chat_id: str) -> None:
        await self.room(room_id)
        try:
            await self.store.delete_message(room_id, chat_id)
        except UnknownChat:
            raise _unknown_chat(room_id, chat_id) from None
        await self._emit(room_id, encode_event("CHAT_DELETED", ChatRefOut(room_id, chat_id)))

    async def mute_user(self, room_id: str, user_id: str, seconds: float) -> int:
        until = self.now_ms() + int(seconds * 1000)
        async with self._admin_lock:
            info, mutes = await self._load(room_id, create=False)
            await self.store.set_mute(room_id, user_id, until)
            # Cache the room (even without local members) so that a join in flight, which
            # read the mutes before this one, finds the newer ones when it resumes.
            self._rooms.setdefault(room_id, info)
            self._mutes.setdefault(room_id, mutes)[user_id] = until
        await self._emit_mute(room_id, user_id, until)
        return until


def _start_time(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_iso(text)
    except ValueError as exc:
        raise ClientError(
            ErrorCode.INVALID_PAYLOAD, f"startTime must be ISO 8601 with a zone: {exc}"
        ) from None


def _prune(last_sent: dict[str, tuple[int, str | None]], before_ms: int) -> None:
    for user_id in [u for u, (t, _) in last_sent.items() if t < before_ms]:
        del last_sent[user_id]
