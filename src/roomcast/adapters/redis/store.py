"""The Store port on Redis (or Redis Cluster): many nodes share rooms, history and rules.

Appends assign the room's next offset, store the message, trim the history and, when
this store is paired with the Redis broker, publish the message in one Lua script, so
the history and the channel never disagree about order. Cooldowns and mutes are
enforced in the same script, cluster-wide; the errors they raise are built by
`core.rooms`, the same code the node uses. Every room has its own epoch (`P epoch`),
set anew whenever that room's keys are gone (FLUSHALL, DEL, eviction, an empty
restart): its history pages and appends carry it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import msgspec

from roomcast.adapters.redis.client import Keys
from roomcast.adapters.redis.link import RedisLink
from roomcast.adapters.redis.scripts import Reply
from roomcast.core.errors import RoomExists, StoreError, UnknownChat, UnknownRoom
from roomcast.core.model import Appended, HistoryPage, StoredMessage
from roomcast.core.rooms import RoomInfo, check_muted, check_send

CHAT_ID_BLOCK = 1_000  # chat ids a node reserves from the shared counter at once


class _Packed(msgspec.Struct, array_like=True, frozen=True):
    chat_id: str
    offset: int
    user_id: str
    name: str
    text: str
    created_at: int
    client_msg_id: str


_decode_packed = msgspec.msgpack.Decoder(_Packed).decode


def unpack_message(
    packed: bytes, room_id: str, upvotes: int = 0, answered: bool = False
) -> StoredMessage:
    """A packed message (as stored and published by the scripts) as a StoredMessage."""
    return _stored(_decode_packed(packed), room_id, upvotes, answered)


def _stored(p: _Packed, room_id: str, upvotes: int, answered: bool) -> StoredMessage:
    return StoredMessage(
        p.chat_id,
        room_id,
        p.offset,
        p.user_id,
        p.name,
        p.text,
        upvotes,
        p.created_at,
        answered,
        p.client_msg_id or None,
    )


class _HistoryReply(msgspec.Struct, array_like=True):
    last_offset: int
    epoch: str
    complete: bool
    messages: list[tuple[_Packed, int, int]]
    voted: list[str]
    alerts: list[tuple[_Packed, int]]


_decode_history = msgspec.msgpack.Decoder(_HistoryReply).decode


class RedisStore:
    """The Store port on Redis (see the module doc). `publishes`: the append script
    also publishes each new message on the room's channel (paired with RedisBroker)."""

    def __init__(
        self,
        link: RedisLink,
        *,
        prefix: str = "rc:",
        history_max: int = 10_000,
        history_max_age: float = 0.0,
        publishes: bool = False,
    ) -> None:
        if history_max < 1:
            raise ValueError("history_max must be at least 1")
        self.link = link
        self.keys = Keys(prefix)
        self.publishes = publishes
        self._history_max = history_max
        self._max_age_ms = int(history_max_age * 1000)
        self._ids: list[int] = []  # reserved chat ids: [next, end)
        self._node = secrets.token_hex(6)
        self._candidates = 0
        self._id_lock = asyncio.Lock()
        self._open = False
        link.on_connection_error.append(self._forget_ids)

    # ------------------------------------------------------------ lifecycle

    @property
    def epoch(self) -> str:
        """The store-wide epoch; room histories carry their own (`HistoryPage.epoch`)."""
        return "redis"

    async def open(self) -> None:
        if not self._open:
            self._open = True
            await self.link.open()

    async def close(self) -> None:
        if self._open:  # idempotent: the link is shared, count this user out once
            self._open = False
            await self.link.close()

    async def ping(self) -> None:
        await self.link.ping()

    def _forget_ids(self) -> None:
        self._ids = []  # Redis may come back without the counter: reserve anew

    def _epoch_candidate(self) -> str:
        """A value no other call, here or on another node, proposes: a room's epoch is
        set from it when the room's history does not exist (yet, or any more)."""
        self._candidates += 1
        return f"{self._node}{self._candidates:x}"

    def key(self, room_id: str) -> str:
        return self.keys.room(room_id)

    async def _run(self, script: str | None, *args: Any) -> Any:
        return await self.link.run(script, *args)

    async def _direct(self, call: Any) -> Any:
        return await self.link.direct(call)

    def _client(self) -> Any:
        return self.link.client

    # ------------------------------------------------------------ messages

    async def _chat_id(self) -> str:
        async with self._id_lock:
            if not self._ids or self._ids[0] >= self._ids[1]:
                floor = int(time.time() * 1000) * 1000
                end = await self._run(
                    "reserve_ids", self.keys.global_key("chat-ids"), CHAT_ID_BLOCK, floor
                )
                self._ids = [int(end) - CHAT_ID_BLOCK + 1, int(end) + 1]
            chat_id = self._ids[0]
            self._ids[0] += 1
            return str(chat_id)

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
        """Append (and publish, see the class doc). With `cooldown_ms` or `check_mute`
        the script refuses the message with the COOLDOWN or MUTED error, cluster-wide."""
        while True:
            if self._ids and self._ids[0] < self._ids[1]:  # the common case: no await
                chat_id = str(self._ids[0])
                self._ids[0] += 1
            else:
                chat_id = await self._chat_id()
            now = int(time.time() * 1000)
            reply = await self._run(
                "append",
                self.key(room_id),
                room_id,
                user_id,
                name,
                text,
                client_msg_id or "",
                now,
                chat_id,
                cooldown_ms,
                1 if check_mute else 0,
                self._history_max,
                self._max_age_ms,
                self._epoch_candidate(),
                self.link.publish_command if self.publishes else "",
            )
            if reply[0] != Reply.ID_TAKEN:
                break
            self._ids = []  # that chat id exists: the id counter was lost; take new ones
        if reply[0] in (Reply.COOLDOWN, Reply.MUTED):
            _refuse(room_id, int(reply[0]), int(reply[1]), now, cooldown_ms)
        message = unpack_message(reply[1], room_id, int(reply[3]), bool(reply[4]))
        duplicate = bool(reply[2])
        epoch = reply[5].decode() if isinstance(reply[5], bytes) else str(reply[5])
        return Appended(message, duplicate, epoch, published=self.publishes and not duplicate)

    def _message(self, room_id: str, reply: list[Any]) -> StoredMessage:
        return unpack_message(reply[1], room_id, int(reply[2]), bool(reply[3]))

    async def vote(self, room_id: str, chat_id: str, user_id: str) -> StoredMessage | None:
        return await self._vote(room_id, chat_id, user_id, "1")

    async def unvote(self, room_id: str, chat_id: str, user_id: str) -> StoredMessage | None:
        return await self._vote(room_id, chat_id, user_id, "0")

    async def _vote(
        self, room_id: str, chat_id: str, user_id: str, up: str
    ) -> StoredMessage | None:
        reply = await self._run("vote", self.key(room_id), chat_id, user_id, up)
        if reply[0] == Reply.UNKNOWN:
            raise UnknownChat(chat_id)
        if reply[0] == Reply.UNCHANGED:
            return None
        return self._message(room_id, reply)

    async def _moderate(self, room_id: str, chat_id: str, action: str) -> list[Any]:
        reply = await self._run("moderate", self.key(room_id), chat_id, action)
        if reply[0] == Reply.UNKNOWN:
            raise UnknownChat(chat_id)
        return list(reply)

    async def mark_answered(self, room_id: str, chat_id: str) -> StoredMessage:
        return self._message(room_id, await self._moderate(room_id, chat_id, "answer"))

    async def delete_message(self, room_id: str, chat_id: str) -> None:
        await self._moderate(room_id, chat_id, "delete")

    async def claim_alert(self, room_id: str, chat_id: str) -> bool:
        reply = await self._moderate(room_id, chat_id, "claim")
        return bool(reply[4])

    async def history(
        self,
        room_id: str,
        limit: int,
        voter: str | None = None,
        alerts: bool = False,
        after: int | None = None,
        newest_if_incomplete: bool = False,
    ) -> HistoryPage:
        raw = await self._run(
            "history",
            self.key(room_id),
            max(limit, 0),
            voter or "",
            -1 if after is None else after,
            1 if newest_if_incomplete else 0,
            1 if alerts else 0,
            self._epoch_candidate(),
        )
        reply = _decode_history(raw)

        return HistoryPage(
            [_stored(p, room_id, up, bool(answered)) for p, up, answered in reply.messages],
            reply.last_offset,
            reply.voted,
            [_stored(p, room_id, up, False) for p, up in reply.alerts],
            reply.complete,
            reply.epoch,
        )

    # ------------------------------------------------------------ rooms and mutes

    async def create_room(self, room: RoomInfo) -> RoomInfo:
        redis = self._client()
        data = msgspec.json.encode(room)
        created = await self._direct(redis.set(self.key(room.room_id) + "info", data, nx=True))
        if not created:
            raise RoomExists(room.room_id)
        await self._direct(
            redis.zadd(self.keys.global_key("rooms"), {room.room_id: room.created_at})
        )
        return room

    async def update_room(self, room: RoomInfo) -> None:
        data = msgspec.json.encode(room)
        key = self.key(room.room_id) + "info"
        if not await self._direct(self._client().set(key, data, xx=True)):
            raise UnknownRoom(room.room_id)

    async def get_room(self, room_id: str) -> RoomInfo | None:
        data = await self._direct(self._client().get(self.key(room_id) + "info"))
        return None if data is None else msgspec.json.decode(data, type=RoomInfo)

    async def list_rooms(self) -> list[RoomInfo]:
        redis = self._client()
        ids = await self._direct(redis.zrange(self.keys.global_key("rooms"), 0, -1))
        rooms: list[RoomInfo] = []
        for i in range(0, len(ids), 200):
            pipe = redis.pipeline(transaction=False)
            chunk = [i.decode() for i in ids[i : i + 200]]
            for room_id in chunk:
                pipe.get(self.key(room_id) + "info")
            for data in await self._direct(pipe.execute()):
                if data is not None:
                    rooms.append(msgspec.json.decode(data, type=RoomInfo))
        rooms.sort(key=lambda r: (r.created_at, r.room_id))
        return rooms

    async def set_mute(self, room_id: str, user_id: str, until_ms: int) -> None:
        await self._direct(self._client().hset(self.key(room_id) + "mutes", user_id, until_ms))

    async def mutes(self, room_id: str) -> dict[str, int]:
        raw = await self._direct(self._client().hgetall(self.key(room_id) + "mutes"))
        return {k.decode(): int(v) for k, v in raw.items()}


def _refuse(room_id: str, status: int, value: int, now: int, cooldown_ms: int) -> None:
    """Raise the error of a refused append, built by the node's own rules."""
    room = RoomInfo(room_id, room_id, cooldown_seconds=cooldown_ms / 1000)
    if status == Reply.COOLDOWN:  # value: ms left, so the last send was cooldown - left ago
        last = now + value - cooldown_ms
        check_send(room, now_ms=now, last_sent_ms=last, muted_until_ms=None, is_admin=False)
    else:  # value: muted until
        check_muted(room, now_ms=now, muted_until_ms=value)
    raise StoreError(f"redis refused the append ({status}) but the rules allow it")
