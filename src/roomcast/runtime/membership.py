"""Membership: joining and leaving rooms, and who is in them across nodes.

A join subscribes the room (through `Delivery`), counts the connection in with the
`Presence` port, reads the joiner's history and lines it up with what the room's feed
delivered, all without an await between the read and entering, so the joiner neither
misses nor doubles a message. Leaves are idempotent, so a leave that failed (Redis
away) is retried from housekeeping until it lands, instead of leaving a ghost member.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from roomcast.core.errors import ClientError, StoreError
from roomcast.core.model import HistoryPage
from roomcast.core.protocol import (
    PresenceOut,
    UserJoinedOut,
    UserLeftOut,
    UserOut,
    encode_event,
)
from roomcast.core.rooms import RoomInfo
from roomcast.core.wire import PresencePub, Publication
from roomcast.ports import Presence, Store
from roomcast.runtime.delivery import Delivery, Hosted, Member
from roomcast.runtime.frames import text_frame
from roomcast.runtime.limits import NodeLimits
from roomcast.runtime.view import RoomView

log = logging.getLogger("roomcast.membership")


class Membership:
    """Joins, leaves and presence for one node (see the module doc)."""

    def __init__(
        self,
        settings: NodeLimits,
        store: Store,
        presence: Presence,
        delivery: Delivery,
        view: RoomView,
        room: Callable[..., Awaitable[RoomInfo]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.presence = presence
        self.delivery = delivery
        self.broker = delivery.broker
        self.view = view
        self._room = room
        self._spawn = spawn
        self._leaves: dict[tuple[str, str, str], None] = {}  # (room, user, key) to retry
        # The presence key of each (connection, room) membership: the connection's id and
        # a number of its own per join, so a leave still under way (or retried) can
        # never count out a later join of the same connection.
        self._keys: dict[tuple[str, str], str] = {}
        self._joins = 0
        self.leaves_dropped = 0
        # Called when a room is no longer hosted here, with its cooldown (ms) as it was.
        self.released: Callable[[str, int], None] = lambda room_id, cooldown_ms: None
        self._housekeeper: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._housekeeper = asyncio.create_task(self._housekeeping(), name="housekeeping")

    async def stop(self) -> None:
        self._stopping = True
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            await asyncio.wait({self._housekeeper}, timeout=5.0)
        if self._leaves:  # one last try, so a clean stop leaves no ghost behind
            leaves, self._leaves = self._leaves, {}
            retries = [self._presence_leave(*leave) for leave in leaves]
            await asyncio.wait([asyncio.ensure_future(r) for r in retries], timeout=2.0)

    async def _publish_quietly(self, pub: Publication) -> None:
        """Publish what no caller waits for (presence); a failure is logged."""
        try:
            await self.broker.publish(pub)
        except StoreError as exc:
            log.warning("room %s: event not published (%s)", pub.room_id, exc)

    async def load(self, room_id: str, *, create: bool) -> tuple[RoomInfo, dict[str, int]]:
        """The room's settings and mutes, from the cache kept for local members."""
        cached = self.view.rooms.get(room_id)
        if cached is not None and room_id in self.view.mutes:
            return cached, self.view.mutes[room_id]
        info = await self._room(room_id, create=create)
        mutes = await self.store.mutes(room_id)
        return info, mutes

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
        # Subscribe first, then read the settings: an update published in between is
        # then either in what we read or delivered to us, never lost.
        hosted = await self.delivery.host(room_id)
        hosted.joining += 1
        try:
            info, mutes = await self.load(room_id, create=True)
            await self._join(member, hosted, info, mutes, room_id, user_id, name, since, epoch)
        finally:
            hosted.joining -= 1
            self.delivery.release(room_id, hosted)

    async def _join(
        self,
        member: Member,
        hosted: Hosted,
        info: RoomInfo,
        mutes: dict[str, int],
        room_id: str,
        user_id: str,
        name: str,
        since: int | None,
        epoch: str | None,
    ) -> None:
        again = room_id in member.rooms
        presence = self.presence
        conn = self._keys.get((member.conn_id, room_id)) if again else None
        if conn is None:
            self._joins += 1
            conn = f"{member.conn_id}.{self._joins}"
        limit = self.settings.presence_list_max
        first, count = False, self.view.counts.get(room_id, 0)
        users: list[tuple[str, str]] = []
        if not again:
            try:
                first, count, users = await presence.join(room_id, user_id, name, conn, limit)
            except BaseException:
                # It may have counted the connection in before the answer was lost.
                self._spawn(self._presence_leave(room_id, user_id, conn))
                raise
            self.view.counts[room_id] = count
        try:
            feed_epoch = hosted.feed.epoch if hosted.feed is not None else self.store.epoch
            page, after, recovered = await self._join_history(
                room_id, user_id, member.is_admin, since, epoch, feed_epoch
            )
        except BaseException:
            if not again:
                self._spawn(self._presence_leave(room_id, user_id, conn))
            raise
        if member.closed:
            if not again:
                self._spawn(self._presence_leave(room_id, user_id, conn))
            return
        # No await from here on: entering the room is one step with the history read.
        member.user_id = user_id  # the connection is this user from now on
        view = self.view
        info = view.rooms.setdefault(room_id, info)  # a cached one is newer
        cached = view.mutes.setdefault(room_id, {})
        for muted, until in mutes.items():  # what we read, merged with what arrived
            cached[muted] = max(cached.get(muted, 0), until)
        member.rooms[room_id] = name
        self._keys[(member.conn_id, room_id)] = conn
        box = member.outbox
        history = view.history_out(page, info, after, recovered, self.store.epoch)
        box.send(text_frame(encode_event("ROOM_HISTORY", history)))
        if not again:
            self.delivery.line_up(member, room_id, hosted, page)
        out = [UserOut(u, n) for u, n in users]
        box.send(text_frame(encode_event("PRESENCE", PresenceOut(room_id, count, out))))
        for alert in page.alerts:
            box.send(text_frame(self.view.alert_event(alert)))
        if first and count <= self.settings.presence_broadcast_max:
            event = encode_event("USER_JOINED", UserJoinedOut(room_id, user_id, name, count))
            await self._publish_quietly(PresencePub(room_id, count, event))

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

    async def rejoin(self, member: Member, room_id: str) -> None:
        """Send a member the room's history again (its catch-up fell behind)."""
        if member.user_id is not None and room_id in member.rooms:
            try:
                await self.join(member, room_id, member.user_id, member.rooms[room_id])
            except (ClientError, StoreError) as exc:
                log.info("room %s: could not refresh a member (%s)", room_id, exc)

    def leave(self, member: Member, room_id: str) -> None:
        """Leave one room; USER_LEFT goes out when it was the user's last connection."""
        key = self._keys.pop((member.conn_id, room_id), None)
        if member.rooms.pop(room_id, None) is None or member.user_id is None:
            return
        info = self.view.rooms.get(room_id)
        self.delivery.leave(member, room_id)
        if key is not None:
            self._spawn(self._presence_leave(room_id, member.user_id, key))
        if room_id not in self.delivery.hosted:
            self.released(room_id, int(info.cooldown_seconds * 1000) if info else 0)

    async def _presence_leave(self, room_id: str, user_id: str, conn: str) -> None:
        try:
            last, count = await self.presence.leave(room_id, user_id, conn)
        except StoreError as exc:
            log.warning("room %s: presence not updated yet (%s); will retry", room_id, exc)
            self._leave_later(room_id, user_id, conn)
            return
        if room_id in self.delivery.hosted:
            self.view.counts[room_id] = count
        if last and count < self.settings.presence_broadcast_max:
            event = encode_event("USER_LEFT", UserLeftOut(room_id, user_id, count))
            await self._publish_quietly(PresencePub(room_id, count, event))

    def _leave_later(self, room_id: str, user_id: str, conn: str) -> None:
        """Retry a leave from housekeeping (leaves are idempotent: safe to repeat)."""
        if len(self._leaves) >= self.settings.presence_retry_max:
            self.leaves_dropped += 1  # the node's heartbeat expiry counts it out later
            return
        self._leaves[(room_id, user_id, conn)] = None

    # ------------------------------------------------------------ housekeeping

    async def _housekeeping(self) -> None:
        """Unstick waiting joiners, retry failed leaves, count out dead nodes' users."""
        beat = self.settings.node_heartbeat
        while not self._stopping:
            await asyncio.sleep(beat)
            try:
                await self._housekeep()
            except StoreError as exc:
                log.debug("housekeeping: %s", exc)
            except Exception:  # the loop must go on: log, and try again next beat
                log.exception("housekeeping failed")

    async def _housekeep(self) -> None:
        self.delivery.unstick()
        leaves, self._leaves = self._leaves, {}
        for room_id, user_id, key in leaves:
            await self._presence_leave(room_id, user_id, key)
        changed = await self.presence.sweep(list(self.delivery.hosted))
        for room_id, count, gone in changed:
            for user_id in gone:
                event = encode_event("USER_LEFT", UserLeftOut(room_id, user_id, count))
                await self._publish_quietly(PresencePub(room_id, count, event))
