"""A node that shares its rooms with other nodes through Redis.

What differs from a single node (`Node`):

- Events are not delivered locally when they happen: they are published on the room's
  Redis channel (a new message by the append script itself, atomically with storing
  it) and every node, this one included, delivers what its subscription receives. So
  all members of a room see the same events in the same order, whichever node they are
  on, and a node receives only the rooms it hosts (one subscription per room, taken on
  the first local join, dropped on the last leave).
- Each hosted room has a `Feed` that delivers messages in offset order. A missing
  offset, a broker reconnect, or a changed epoch (the room's history was lost) is filled
  from the history; when the history cannot fill it, members get a `ROOM_HISTORY` with
  `recovered: false` and start over from it.
- Cooldowns and mutes are checked inside the append script; votes and alert claims are
  atomic in Redis; presence counts users across nodes, and a node whose heartbeat
  stops has its users counted out by the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

import msgspec

from roomcast.adapters.redis import unpack_message
from roomcast.config import Settings
from roomcast.core.errors import StoreError
from roomcast.core.protocol import (
    ChatOut,
    MutedOut,
    PresenceOut,
    RoomEventOut,
    UserJoinedOut,
    UserLeftOut,
    UserOut,
    encode_event,
)
from roomcast.core.rooms import RoomInfo, check_send, iso
from roomcast.ports import Broker, SharedStore, StoredMessage
from roomcast.runtime.frames import text_frame
from roomcast.runtime.node import Member, Node
from roomcast.runtime.stats import Stats

log = logging.getLogger("roomcast.shared")

RING = 256  # recent ADD_CHAT frames kept per hosted room, for joiners that read behind
HELD_MAX = 10_000  # events held per room while a gap is being filled

# What travels on a room's channel: one tag byte, then the body.
CHAT = b"m"  # packed message (published by the append script)
EVENT = b"e"  # an event document, delivered as is
ALERT = b"a"  # an ADMIN_ALERT document, delivered to admins
ROOM = b"r"  # RoomInfo as JSON: settings changed
MUTE = b"u"  # MuteWire as JSON
PRESENCE = b"p"  # "<count>\n<event document>": USER_JOINED / USER_LEFT


class MuteWire(msgspec.Struct, frozen=True):
    user: str
    until: int


class Feed:
    """Delivery state of one hosted room."""

    __slots__ = (
        "closing",
        "epoch",
        "held",
        "joining",
        "last",
        "ready",
        "refill",
        "ring",
        "ring_base",
        "waiting",
    )

    def __init__(self) -> None:
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last = 0  # highest offset delivered to the room's members
        self.epoch = ""
        self.held: list[bytes] | None = []  # events held while not live (None = live)
        self.ring: deque[tuple[int, str, bytes]] = deque(maxlen=RING)
        self.ring_base = 0  # the ring holds every delivered message after this offset
        self.waiting: dict[Member, int] = {}  # joiners whose history is ahead of `last`
        self.joining = 0
        self.closing = False
        self.refill = False  # something may have been missed while a fill ran: fill again


class SharedNode(Node):
    """A node of a cluster: store and broker are Redis (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        store: SharedStore,
        broker_factory: Callable[[Callable[[str, bytes], None], Callable[[], None]], Broker],
        *,
        clock: Callable[[], float] = time.time,
        stats: Stats | None = None,
    ) -> None:
        super().__init__(settings, store, clock=clock, stats=stats)
        self.shared = store
        self.broker = broker_factory(self._on_publication, self._on_reset)
        self._feeds: dict[str, Feed] = {}
        self._counts: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._stopping = False
        self._absent: set[str] = set()  # nodes found gone at the last sweep
        self.gaps_filled = 0
        self.resets = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.broker.open()
        self._background.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
        self._background.append(asyncio.create_task(self._housekeeping(), name="janitor"))

    async def stop(self) -> None:
        self._stopping = True  # loops check it too (see redis.stop_task)
        for feed in self._feeds.values():
            feed.closing = True
        for task in self._background:
            task.cancel()
        if self._tasks:  # let the last presence updates (USER_LEFT) go out
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
        rest = [t for t in [*self._background, *self._tasks] if not t.done()]
        if rest:
            await asyncio.wait(rest, timeout=5.0)
        self._background.clear()
        await self.broker.close()

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def feed_count(self) -> int:
        return len(self._feeds)

    def member_count(self, room_id: str) -> int:
        return self._counts.get(room_id, self.presence.count(room_id))

    # ------------------------------------------------------------ feeds

    async def _feed(self, room_id: str) -> Feed:
        """The room's feed, subscribed and with its baseline offset read."""
        feed = self._feeds.get(room_id)
        if feed is not None:
            await asyncio.shield(feed.ready)
            return feed
        feed = self._feeds[room_id] = Feed()
        try:
            await self.broker.subscribe(room_id)
            page = await self.store.history(room_id, 0)
        except BaseException as exc:
            if self._feeds.get(room_id) is feed:
                del self._feeds[room_id]
            self._spawn(self._unsubscribe(room_id))
            feed.ready.set_exception(exc if isinstance(exc, Exception) else StoreError("cancelled"))
            feed.ready.exception()  # retrieved: joiners waiting on it re-raise it
            raise
        feed.last = feed.ring_base = page.last_offset
        feed.epoch = page.epoch
        feed.ready.set_result(None)
        self._go_live(room_id, feed)
        return feed

    def _release(self, room_id: str, feed: Feed) -> None:
        """Drop the feed and its subscription once nobody on this node needs it."""
        if self.hub.member_count(room_id) or feed.waiting or feed.joining:
            return
        if self._feeds.get(room_id) is feed:
            del self._feeds[room_id]
            self._counts.pop(room_id, None)
            self._forget(room_id)
            feed.closing = True
            self._spawn(self._unsubscribe(room_id))

    async def _unsubscribe(self, room_id: str) -> None:
        """Unsubscribe, unless a join took the room up again before this ran (its
        SUBSCRIBE must not be undone)."""
        if room_id not in self._feeds:
            await self.broker.unsubscribe(room_id)

    def _on_publication(self, room_id: str, data: bytes) -> None:
        feed = self._feeds.get(room_id)
        if feed is None or feed.closing:
            return
        if feed.held is not None:
            if len(feed.held) < HELD_MAX:
                feed.held.append(data)
            else:  # dropped here; the history has it: resend the window after this fill
                feed.refill = True
            return
        self._dispatch(room_id, feed, data)

    def _dispatch(self, room_id: str, feed: Feed, data: bytes) -> None:
        tag = data[:1]
        if tag == CHAT:
            message = unpack_message(data[1:], room_id)
            if message.offset <= feed.last:
                if _reused(feed, message.offset, message.chat_id):
                    # Same offset, another message: the room's history was lost and
                    # started again (no reconnect seen, e.g. keys evicted or flushed).
                    feed.held = [data]
                    self._spawn(self._fill(room_id, feed, full=True))
                return  # otherwise delivered already (from the history, after a gap)
            if message.offset != feed.last + 1:
                feed.held = [data]
                self._spawn(self._fill(room_id, feed, full=False))
                return
            self._deliver(room_id, feed, message)
        elif tag == EVENT:
            self.hub.publish(room_id, data[1:])
        elif tag == PRESENCE:
            newline = data.index(b"\n")
            self._counts[room_id] = int(data[1:newline])
            self.hub.publish(room_id, data[newline + 1 :])
        elif tag == ALERT:
            self.admins.publish(room_id, data[1:])
        elif tag == ROOM:
            info = msgspec.json.decode(data[1:], type=RoomInfo)
            self._rooms[room_id] = info
            event = RoomEventOut(self.room_out(info))
            self.hub.publish(room_id, encode_event("ROOM_UPDATED", event))
        elif tag == MUTE:
            mute = msgspec.json.decode(data[1:], type=MuteWire)
            self._mutes.setdefault(room_id, {})[mute.user] = mute.until
            muted = MutedOut(room_id, mute.user, iso(mute.until))
            self.hub.publish(room_id, encode_event("USER_MUTED", muted))

    def _deliver(self, room_id: str, feed: Feed, message: StoredMessage) -> None:
        if feed.waiting:  # joiners whose history ends before this message get it
            self._admit(room_id, feed)
        info = self._rooms.get(room_id)
        if info is None:
            info = RoomInfo(room_id, room_id)
        payload = encode_event("ADD_CHAT", self.chat_out(message, info))
        self.hub.publish(room_id, payload)
        if len(feed.ring) == RING:
            feed.ring_base = feed.ring[0][0]
        feed.ring.append((message.offset, message.chat_id, payload))
        feed.last = message.offset
        if feed.waiting:  # and those whose history ends with it come in after it
            self._admit(room_id, feed)

    def _admit(self, room_id: str, feed: Feed) -> None:
        """Let in the joiners whose history the feed has caught up with, each with the
        messages delivered after its history ended."""
        for member, target in list(feed.waiting.items()):
            if target <= feed.last:
                del feed.waiting[member]
                self._catch_up(room_id, feed, member, target)

    def _catch_up(self, room_id: str, feed: Feed, member: Member, seen: int) -> None:
        """Enter the room after a history read up to offset `seen`: what was delivered
        since comes from the ring, or, if the ring does not reach back that far, from a
        fresh history read."""
        if member.closed or room_id not in member.rooms:
            return
        if seen < feed.ring_base:
            self._enter(room_id, member)
            self._spawn(self._refresh(member, room_id))
            return
        for offset, _, payload in feed.ring:
            if offset > seen:
                member.outbox.send(text_frame(payload))
        self._enter(room_id, member)

    def _enter(self, room_id: str, member: Member) -> None:
        if member.closed or room_id not in member.rooms:
            return
        self.hub.join(room_id, member.outbox)
        if member.is_admin:
            self.admins.join(room_id, member.outbox)

    def _go_live(self, room_id: str, feed: Feed) -> None:
        """Deliver what was held while the feed was not live, in order."""
        held, feed.held = feed.held or [], None
        for i, data in enumerate(held):
            self._dispatch(room_id, feed, data)
            if _holding(feed):  # a new gap: a fill runs, and the rest waits behind it
                feed.held = [*(feed.held or []), *held[i + 1 :]]
                return

    async def _fill(self, room_id: str, feed: Feed, *, full: bool) -> None:
        """Fill a gap from the history. `full` (after a reconnect): resend the recent
        window to every member too, since votes and edits may have been missed."""
        window = self.settings.history_size
        delay = 0.1
        while True:
            if feed.closing:
                return
            try:
                after: int | None = max(feed.last - window, 0) if full else feed.last
                page = await self.store.history(
                    room_id,
                    self.settings.resume_max + (window if full else 0),
                    after=after,
                    newest_if_incomplete=True,
                )
                if page.epoch != feed.epoch:  # a new history: its newest messages
                    after = None
                    page = await self.store.history(room_id, window)
                if full:  # settings and mutes may have changed while we were away
                    await self._reload(room_id)
                break
            except Exception as exc:  # keep trying: a room must not stay frozen
                log.warning("room %s: cannot fill a gap yet (%r)", room_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if _closing(feed):
            return
        same = page.epoch == feed.epoch
        if full or not same or not page.complete:
            recovered = same and page.complete
            info = self._rooms.get(room_id) or RoomInfo(room_id, room_id)
            history = self.history_out(room_id, page, info, after, recovered)
            payload = encode_event("ROOM_HISTORY", history)
            self.hub.publish(room_id, payload)
            for member in list(feed.waiting):  # joiners in line get it too, then come in
                del feed.waiting[member]
                if not member.closed and room_id in member.rooms:
                    member.outbox.send(text_frame(payload))
                    self._enter(room_id, member)
            if not recovered:
                self.resets += 1
            feed.ring.clear()
            feed.last = feed.ring_base = page.last_offset
            feed.epoch = page.epoch
        else:
            for message in page.messages:
                if message.offset > feed.last:
                    self._deliver(room_id, feed, message)
            feed.last = max(feed.last, page.last_offset)
            self.gaps_filled += 1
        if feed.waiting:
            self._admit(room_id, feed)
        if feed.held is None:
            feed.held = []
        if feed.refill:
            feed.refill = False
            self._spawn(self._fill(room_id, feed, full=True))
            return
        self._go_live(room_id, feed)

    async def _reload(self, room_id: str) -> None:
        info = await self.store.get_room(room_id)
        mutes = await self.store.mutes(room_id)
        if room_id in self._feeds:
            if info is not None:
                self._rooms[room_id] = info
            self._mutes[room_id] = mutes

    def _on_reset(self) -> None:
        """The broker reconnected: every hosted room may have missed events."""
        for room_id, feed in self._feeds.items():
            if not feed.ready.done():
                continue  # its baseline read comes after the new subscription
            if feed.held is None:
                feed.held = []
                self._spawn(self._fill(room_id, feed, full=True))
            else:  # a fill is running and may have read before the link dropped
                feed.refill = True

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
        # Subscribe first, then read the settings: an update published in between is
        # then either in what we read or delivered to us, never lost.
        feed = await self._feed(room_id)
        feed.joining += 1
        try:
            info, mutes = await self._load(room_id, create=True)
            await self._join(member, feed, info, mutes, room_id, user_id, name, since, epoch)
        finally:
            feed.joining -= 1
            self._release(room_id, feed)

    async def _join(
        self,
        member: Member,
        feed: Feed,
        info: RoomInfo,
        mutes: dict[str, int],
        room_id: str,
        user_id: str,
        name: str,
        since: int | None,
        epoch: str | None,
    ) -> None:
        again = room_id in member.rooms
        first, count = False, self.member_count(room_id)
        users: list[tuple[str, str]] = []
        if not again:
            try:
                first, count, users = await self.shared.presence_join(
                    room_id, user_id, name, self.settings.presence_list_max
                )
            except BaseException:
                # It may have counted the user before the reply was lost; the leave
                # script ignores a user this node did not count in.
                self._spawn(self._presence_leave(room_id, user_id))
                raise
            self._counts[room_id] = count
        try:
            page, after, recovered = await self._join_history(
                room_id, user_id, member.is_admin, since, epoch, feed.epoch
            )
        except BaseException:
            if not again:
                self._spawn(self._presence_leave(room_id, user_id))
            raise
        if member.closed:
            if not again:
                self._spawn(self._presence_leave(room_id, user_id))
            return
        # No await from here on (as in Node.join).
        member.user_id = user_id
        if room_id in self._rooms:  # updated meanwhile (ROOM on the channel): newer
            info = self._rooms[room_id]
        else:
            self._rooms[room_id] = info
        cached = self._mutes.setdefault(room_id, {})
        for muted, until in mutes.items():  # what we read, merged with what arrived
            cached[muted] = max(cached.get(muted, 0), until)
        if not again:
            self.presence.add(room_id, user_id, name)
        member.rooms[room_id] = name
        history = self.history_out(room_id, page, info, after, recovered)
        box = member.outbox
        box.send(text_frame(encode_event("ROOM_HISTORY", history)))
        # Line the joiner up with what this node has delivered: messages the history
        # read missed come from the ring; if the read is ahead, wait for the feed.
        if not again:
            if page.last_offset > feed.last or feed.held is not None:
                feed.waiting[member] = page.last_offset
            else:
                self._catch_up(room_id, feed, member, page.last_offset)
        if not users:
            users = self.presence.users(room_id, self.settings.presence_list_max)
        out = [UserOut(u, n) for u, n in users]
        box.send(text_frame(encode_event("PRESENCE", PresenceOut(room_id, count, out))))
        if first and count <= self.settings.presence_broadcast_max:
            event = encode_event("USER_JOINED", UserJoinedOut(room_id, user_id, name, count))
            self._spawn(self._publish(room_id, PRESENCE + b"%d\n" % count + event))
        for alert in page.alerts:
            box.send(text_frame(self._alert(alert)))

    async def _refresh(self, member: Member, room_id: str) -> None:
        with contextlib.suppress(Exception):
            if member.user_id is not None:
                await self.join(member, room_id, member.user_id, member.rooms[room_id])

    def leave(self, member: Member, room_id: str) -> None:
        if member.rooms.pop(room_id, None) is None or member.user_id is None:
            return
        self.hub.leave(room_id, member.outbox)
        self.admins.leave(room_id, member.outbox)
        self.presence.remove(room_id, member.user_id)
        self._spawn(self._presence_leave(room_id, member.user_id))
        feed = self._feeds.get(room_id)
        if feed is not None:
            feed.waiting.pop(member, None)
            self._release(room_id, feed)

    async def _presence_leave(self, room_id: str, user_id: str) -> None:
        try:
            last, count = await self.shared.presence_leave(room_id, user_id)
        except StoreError as exc:
            log.warning("room %s: presence not updated (%s)", room_id, exc)
            return
        if last and count < self.settings.presence_broadcast_max:
            event = encode_event("USER_LEFT", UserLeftOut(room_id, user_id, count))
            await self._publish(room_id, PRESENCE + b"%d\n" % count + event)

    async def _publish(self, room_id: str, data: bytes) -> None:
        try:
            await self.shared.publish(room_id, data)
        except StoreError as exc:
            log.warning("room %s: event not published (%s)", room_id, exc)

    # ------------------------------------------------------------ messages

    async def send(
        self,
        member: Member,
        room_id: str,
        user_id: str,
        text: str,
        client_msg_id: str | None = None,
    ) -> None:
        info = self._rooms[room_id]
        check_send(
            info,
            now_ms=self.now_ms(),
            last_sent_ms=None,  # the append script checks the cooldown, cluster-wide
            muted_until_ms=self._mutes.get(room_id, {}).get(user_id),
            is_admin=member.is_admin,
        )
        started = time.perf_counter()
        result = await self.shared.append(
            room_id,
            user_id,
            member.rooms[room_id],
            text,
            client_msg_id,
            cooldown_ms=0 if member.is_admin else int(info.cooldown_seconds * 1000),
            check_mute=not member.is_admin,
            room=info,
        )
        self.stats.store_latency.observe(time.perf_counter() - started)
        if result.duplicate:
            info = self._rooms.get(room_id, info)
            member.outbox.send(
                text_frame(encode_event("ADD_CHAT", self.chat_out(result.message, info)))
            )
        # Everyone else, the sender included, gets ADD_CHAT from the room's channel.

    async def publish_as(
        self, room_id: str, user_id: str, name: str, text: str, key: str | None = None
    ) -> tuple[ChatOut, bool]:
        info = await self.room(room_id, create=True)
        result = await self.shared.append(room_id, user_id, name, text, key)
        chat = self.chat_out(result.message, self._rooms.get(room_id, info))
        return chat, result.duplicate

    # ------------------------------------------------------------ events

    async def _emit(self, room_id: str, payload: bytes) -> None:
        await self.shared.publish(room_id, EVENT + payload)

    async def _emit_alert(self, room_id: str, payload: bytes) -> None:
        await self.shared.publish(room_id, ALERT + payload)

    async def _emit_room(self, info: RoomInfo) -> None:
        self._forget(info.room_id)
        await self.shared.publish(info.room_id, ROOM + msgspec.json.encode(info))

    async def _emit_mute(self, room_id: str, user_id: str, until: int) -> None:
        self._forget(room_id)
        await self.shared.publish(room_id, MUTE + msgspec.json.encode(MuteWire(user_id, until)))

    def _forget(self, room_id: str) -> None:
        """Drop cached settings and mutes of a room this node does not host: nothing
        would keep them fresh (hosted rooms are kept fresh by their channel)."""
        if room_id not in self._feeds:
            self._rooms.pop(room_id, None)
            self._mutes.pop(room_id, None)

    # ------------------------------------------------------------ dead nodes

    async def _heartbeat(self) -> None:
        """Say this node is alive, on its own schedule (a slow sweep must not delay it)."""
        beat = self.settings.node_heartbeat
        while not self._stopping:
            try:
                await self.shared.heartbeat(3 * beat)
            except StoreError as exc:
                log.debug("heartbeat: %s", exc)
            await asyncio.sleep(beat)

    async def _housekeeping(self) -> None:
        """Unstick waiting joiners; count out the users of nodes that are gone."""
        beat = self.settings.node_heartbeat
        next_sweep = time.monotonic() + 3 * beat  # give peers time to beat after a start
        while not self._stopping:
            self._unstick()
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + 2 * beat
                    absent: set[str] = set()
                    for room_id in list(self._feeds):
                        absent |= await self._sweep(room_id)
                    self._absent = absent
            except StoreError as exc:
                log.debug("housekeeping: %s", exc)
                self._absent = set()  # Redis was away: peers may have missed beats too
            await asyncio.sleep(beat)

    def _unstick(self) -> None:
        """Joiners wait for the feed to reach the offset their history read saw; that
        message is on its way through pub/sub, but should it never come, read it."""
        for room_id, feed in self._feeds.items():
            if not feed.waiting or feed.held is not None or not feed.ready.done():
                continue
            if feed.last < max(feed.waiting.values()):
                feed.held = []
                self._spawn(self._fill(room_id, feed, full=False))

    async def _sweep(self, room_id: str) -> set[str]:
        """Purge nodes found absent on two sweeps in a row; return the absent ones."""
        absent = set()
        for node_id in await self.shared.presence_nodes(room_id):
            if node_id == self.shared.node_id or await self.shared.node_alive(node_id):
                continue
            absent.add(node_id)
            if node_id not in self._absent:
                continue  # once could be a hiccup (Redis back after an outage)
            count, gone = await self.shared.presence_purge(room_id, node_id)
            log.info("room %s: node %s is gone; %d users counted out", room_id, node_id, len(gone))
            for user_id in gone:
                event = encode_event("USER_LEFT", UserLeftOut(room_id, user_id, count))
                await self._publish(room_id, PRESENCE + b"%d\n" % count + event)
        return absent


def _holding(feed: Feed) -> bool:
    """Whether the feed holds events back (read through a call: it changes under us)."""
    return feed.held is not None


def _closing(feed: Feed) -> bool:
    return feed.closing


def _reused(feed: Feed, offset: int, chat_id: str) -> bool:
    """Whether the ring holds another message at `offset` (a lost history restarted)."""
    if offset <= feed.ring_base or not feed.ring:
        return False
    index = offset - feed.ring[0][0]
    if 0 <= index < len(feed.ring) and feed.ring[index][0] == offset:
        return feed.ring[index][1] != chat_id
    return any(o == offset and c != chat_id for o, c, _ in feed.ring)
