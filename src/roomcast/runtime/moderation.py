"""What admins do to rooms: create and change them, answer, delete, mute.

Every change is stored first, then published through the broker, so members on every
node hear of it (ROOM_UPDATED, UPDATE_CHAT, CHAT_DELETED, USER_MUTED).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable

import msgspec

from roomcast.core.errors import ClientError, ErrorCode, RoomExists, UnknownChat, UnknownRoom
from roomcast.core.protocol import ChatRefOut, CreateRoom, UpdateRoom, encode_event, normalize_id
from roomcast.core.rooms import RoomInfo, parse_iso
from roomcast.core.wire import EventPub, MutePub, RoomPub
from roomcast.ports import Broker, Store
from roomcast.runtime.view import RoomView

RoomLookup = Callable[[str], Awaitable[RoomInfo]]


class Moderation:
    """Admin commands (WebSocket or HTTP) for one node."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        view: RoomView,
        room: RoomLookup,
        now_ms: Callable[[], int],
    ) -> None:
        self.store = store
        self.broker = broker
        self.view = view
        self._room = room
        self._now_ms = now_ms
        self._lock = asyncio.Lock()  # read-modify-write: two admins must not interleave

    async def create_room(self, command: CreateRoom) -> RoomInfo:
        """Create a room from an admin's CREATE_ROOM."""
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
            self._now_ms(),
            managed=True,
        )
        try:
            return await self.store.create_room(info)
        except RoomExists:
            raise ClientError(ErrorCode.ROOM_EXISTS, f"room {room_id!r} exists") from None

    async def update_room(self, command: UpdateRoom) -> RoomInfo:
        """Apply an admin's UPDATE_ROOM; members get ROOM_UPDATED."""
        async with self._lock:
            room_id = normalize_id(command.roomId)
            # From the store, not a cache: another node may have changed it just now.
            info = await self.store.get_room(room_id)
            if info is None:
                raise ClientError(ErrorCode.ROOM_NOT_FOUND, f"no room {room_id!r}")
            new = msgspec.structs.replace(info, **_changes(command))
            if new.medium_threshold > new.high_threshold:
                raise ClientError(
                    ErrorCode.INVALID_PAYLOAD, "mediumThreshold must not exceed highThreshold"
                )
            try:
                await self.store.update_room(new)
            except UnknownRoom:
                raise ClientError(ErrorCode.ROOM_NOT_FOUND, f"no room {room_id!r}") from None
            # Every node hosting the room (this one too) caches what it publishes; a
            # join in flight subscribed before it read the settings, so it gets either.
            await self.broker.publish(RoomPub(room_id, new))
            return new

    async def mark_answered(self, room_id: str, chat_id: str) -> None:
        info = await self._room(room_id)
        try:
            updated = await self.store.mark_answered(room_id, chat_id)
        except UnknownChat:
            raise _unknown_chat(room_id, chat_id) from None
        info = self.view.rooms.get(room_id, info)
        await self.broker.publish(EventPub(room_id, self.view.update_event(updated, info)))

    async def delete_chat(self, room_id: str, chat_id: str) -> None:
        await self._room(room_id)
        try:
            await self.store.delete_message(room_id, chat_id)
        except UnknownChat:
            raise _unknown_chat(room_id, chat_id) from None
        event = encode_event("CHAT_DELETED", ChatRefOut(room_id, chat_id))
        await self.broker.publish(EventPub(room_id, event))

    async def mute_user(self, room_id: str, user_id: str, seconds: float) -> int:
        until = self._now_ms() + int(seconds * 1000)
        async with self._lock:
            await self._room(room_id)
            await self.store.set_mute(room_id, user_id, until)
        await self.broker.publish(MutePub(room_id, user_id, until))
        return until


def _changes(command: UpdateRoom) -> dict[str, object]:
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
    return changes


def _start_time(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_iso(text)
    except ValueError as exc:
        raise ClientError(
            ErrorCode.INVALID_PAYLOAD, f"startTime must be ISO 8601 with a zone: {exc}"
        ) from None


def _unknown_chat(room_id: str, chat_id: str) -> ClientError:
    return ClientError(ErrorCode.UNKNOWN_CHAT, f"no message {chat_id!r} in room {room_id!r}")
