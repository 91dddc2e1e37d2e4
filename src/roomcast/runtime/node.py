"""A roomcast node: rooms, rules and presence over three ports.

Sessions (WebSocket) and the HTTP API call the node; the node enforces the Q&A rules
(`core.rooms`), talks to the `Store`, counts members with `Presence`, and publishes
every event of a room through the `Broker`. It never delivers an event itself: every
node hosting the room, this one included, gets the publication back and delivers it
(`runtime.delivery`), so all members see the same events in the same order whichever
node they are on. With the local broker that round trip is a function call.

Room settings and mutes are cached while a room has local members; cooldown times are
kept per (room, user), whichever connection the user sends from. With a shared store,
the store enforces cooldowns and mutes again, cluster-wide, with the same rules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from roomcast.core.errors import ClientError, ErrorCode, RoomExists, UnknownChat
from roomcast.core.model import StoredMessage
from roomcast.core.protocol import (
    ChatOut,
    encode_event,
)
from roomcast.core.rooms import RoomInfo, check_send, check_vote
from roomcast.core.wire import ChatPub, EventPub
from roomcast.ports import Broker, Presence, Store
from roomcast.runtime.delivery import Delivery, Member
from roomcast.runtime.frames import text_frame
from roomcast.runtime.hub import Hub
from roomcast.runtime.limits import ServerSettings
from roomcast.runtime.membership import Membership
from roomcast.runtime.moderation import Moderation
from roomcast.runtime.stats import Stats
from roomcast.runtime.view import RoomView

log = logging.getLogger("roomcast.node")

COOLDOWN_PRUNE_AT = 10_000  # cooldown entries per room before expired ones are dropped

__all__ = ["Member", "Node"]


class Node:
    """Everything one process knows about rooms (see the module doc)."""

    def __init__(
        self,
        settings: ServerSettings,
        store: Store,
        broker: Broker,
        presence: Presence,
        *,
        clock: Callable[[], float] = time.time,
        stats: Stats | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.presence = presence
        self.stats = stats or Stats()
        self.hub = Hub()  # every member of a room
        self.admins = Hub()  # admin members of a room, for ADMIN_ALERT
        self._clock = clock
        self.view = RoomView(self.now_ms)
        self.delivery = Delivery(
            settings,
            store,
            broker,
            self.view,
            self.hub,
            self.admins,
            self._spawn,
            lambda member, room_id: self.membership.rejoin(member, room_id),
        )
        self.moderation = Moderation(store, broker, self.view, self.room, self.now_ms)
        broker.bind(self.delivery.on_publication, self.delivery.on_reconnect)
        self._last_sent: dict[str, dict[str, tuple[int, str | None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.membership = Membership(
            settings, store, presence, self.delivery, self.view, self.room, self._spawn
        )
        self.membership.released = self._forget_cooldowns
        self.join = self.membership.join
        self.leave = self.membership.leave

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect presence and the broker (the store is open already)."""
        await self.presence.open()
        await self.broker.open()
        self.membership.start()

    async def stop(self) -> None:
        """Let the last presence updates (USER_LEFT) go out, then disconnect."""
        self.delivery.stopping = True
        await self.membership.stop()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
        rest = [t for t in self._tasks if not t.done()]
        if rest:
            await asyncio.wait(rest, timeout=5.0)
        await self.broker.close()
        await self.presence.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # ------------------------------------------------------------ rooms

    async def room(self, room_id: str, *, create: bool = False) -> RoomInfo:
        """A room's settings; in open mode `create` makes a missing room."""
        info = self.view.rooms.get(room_id)
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

    def _forget_cooldowns(self, room_id: str, cooldown_ms: int) -> None:
        """The room has no members here any more: keep only running cooldowns."""
        last = self._last_sent.get(room_id)
        if last is not None:
            _prune(last, self.now_ms() - cooldown_ms)
            if not last:
                del self._last_sent[room_id]

    def room_out(self, info: RoomInfo) -> Any:
        return self.view.room_out(info)

    def chat_out(self, m: StoredMessage, info: RoomInfo) -> ChatOut:
        return self.view.chat_out(m, info)

    def member_count(self, room_id: str) -> int:
        """Distinct users in the room (on every node, where nodes share rooms)."""
        return self.view.counts.get(room_id, 0)

    def feed_count(self) -> int:
        return len(self.delivery.hosted)

    # ------------------------------------------------------------ messages and votes

    async def send(
        self,
        member: Member,
        room_id: str,
        user_id: str,
        text: str,
        client_msg_id: str | None = None,
    ) -> None:
        """Check the room's rules, store the message, publish it (ADD_CHAT).

        A retry (same `client_msg_id`) of a message that was stored is not stored again:
        only the sender gets its ADD_CHAT, again, even inside the cooldown it started.
        """
        info = self.view.rooms[room_id]
        now = self.now_ms()
        last = self._last_sent.get(room_id)
        previous = last.get(user_id) if last else None
        # A retry of the message that started this user's cooldown is not refused by that
        # cooldown; every other rule (closed, not started, muted) still applies to it.
        retry = previous is not None and client_msg_id is not None and previous[1] == client_msg_id
        admin = member.is_admin
        check_send(
            info,
            now_ms=now,
            last_sent_ms=None if previous is None or retry else previous[0],
            muted_until_ms=self.view.mutes.get(room_id, {}).get(user_id),
            is_admin=admin,
        )
        cooldown_ms = 0 if admin else int(info.cooldown_seconds * 1000)
        if not retry and cooldown_ms > 0:
            # Taken before the await, so parallel sends cannot slip through.
            last = self._last_sent.setdefault(room_id, {})
            last[user_id] = (now, client_msg_id)
            if len(last) > COOLDOWN_PRUNE_AT:
                _prune(last, now - cooldown_ms)
        started = time.perf_counter()
        try:
            result = await self.store.append(
                room_id,
                user_id,
                member.rooms[room_id],
                text,
                client_msg_id,
                cooldown_ms=0 if retry else cooldown_ms,
                check_mute=not admin,
            )
            self.stats.store_latency.observe(time.perf_counter() - started)
        except BaseException:
            if last is not None and not retry:
                if previous is None:
                    last.pop(user_id, None)
                else:
                    last[user_id] = previous
            raise
        if result.duplicate:
            info = self.view.rooms.get(room_id, info)
            chat = self.view.chat_out(result.message, info)
            member.outbox.send(text_frame(encode_event("ADD_CHAT", chat)))
        elif not result.published:
            await self.broker.publish(
                ChatPub(room_id, result.epoch or self.store.epoch, result.message)
            )

    async def publish_as(
        self, room_id: str, user_id: str, name: str, text: str, key: str | None = None
    ) -> tuple[ChatOut, bool]:
        """Post a message from the server side (the HTTP API: a bot, a ticker). The room
        rules for participants do not apply; `key` makes retries post once. Returns the
        message and whether it had been posted already."""
        info = await self.room(room_id, create=True)
        result = await self.store.append(room_id, user_id, name, text, key)
        chat = self.view.chat_out(result.message, self.view.rooms.get(room_id, info))
        if not result.duplicate and not result.published:
            epoch = result.epoch or self.store.epoch
            await self.broker.publish(ChatPub(room_id, epoch, result.message))
        return chat, result.duplicate

    async def vote(
        self, member: Member, room_id: str, user_id: str, chat_id: str, *, up: bool
    ) -> None:
        """Count or withdraw a vote; publish UPDATE_CHAT; alert admins once at `high`."""
        info = self.view.rooms[room_id]
        check_vote(
            info,
            now_ms=self.now_ms(),
            muted_until_ms=self.view.mutes.get(room_id, {}).get(user_id),
            is_admin=member.is_admin,
        )
        try:
            if up:
                updated = await self.store.vote(room_id, chat_id, user_id)
            else:
                updated = await self.store.unvote(room_id, chat_id, user_id)
        except UnknownChat:
            raise unknown_chat(room_id, chat_id) from None
        if updated is None:
            return
        info = self.view.rooms.get(room_id, info)
        await self.broker.publish(EventPub(room_id, self.view.update_event(updated, info)))
        if up and updated.upvotes >= info.high_threshold and not updated.answered:
            try:
                first = await self.store.claim_alert(room_id, chat_id)
            except UnknownChat:  # deleted meanwhile
                return
            if first:
                alert = self.view.alert_event(updated)
                await self.broker.publish(EventPub(room_id, alert, admins=True))


def unknown_chat(room_id: str, chat_id: str) -> ClientError:
    return ClientError(ErrorCode.UNKNOWN_CHAT, f"no message {chat_id!r} in room {room_id!r}")


def _prune(last_sent: dict[str, tuple[int, str | None]], before_ms: int) -> None:
    for user_id in [u for u, (t, _) in last_sent.items() if t < before_ms]:
        del last_sent[user_id]
