"""Delivery: from the broker's publications to this node's members, in order.

A node hosts a room while it has members (or joiners) there: it subscribes to the
room on the broker once, reads where the room's history stands, and runs the room's
`RoomFeed` (core/feed.py), which decides what to deliver, drop, fetch or announce.
This module carries those decisions out: it delivers to the hubs, reads the history
for fetches and announces, and lines joiners up with what the feed delivered.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from roomcast.core.errors import StoreError
from roomcast.core.feed import Announce, Decision, Deliver, Fetch, Pass, RoomFeed
from roomcast.core.model import HistoryPage
from roomcast.core.protocol import MutedOut, RoomEventOut, encode_event
from roomcast.core.rooms import iso
from roomcast.core.wire import ChatPub, EventPub, MutePub, PresencePub, Publication, RoomPub
from roomcast.ports import Broker, Store
from roomcast.runtime.frames import text_frame
from roomcast.runtime.hub import Hub
from roomcast.runtime.limits import NodeLimits
from roomcast.runtime.outbox import Outbox
from roomcast.runtime.view import RoomView

log = logging.getLogger("roomcast.delivery")

AFTER_ANNOUNCE = sys.maxsize  # a joiner's target when it waits for the room's reset


class Member(Protocol):
    """What the node needs of a connection."""

    outbox: Outbox
    conn_id: str
    user_id: str | None
    closed: bool

    @property
    def is_admin(self) -> bool: ...

    @property
    def rooms(self) -> dict[str, str]: ...  # room id -> display name there


Feed = RoomFeed[bytes, Publication]


class Hosted:
    """A room this node hosts: its feed, and its joiners not yet in the hub."""

    __slots__ = ("closing", "early", "feed", "joining", "ready", "waiting")

    def __init__(self) -> None:
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.feed: Feed | None = None  # set once the first history read returned
        self.early: list[Publication] = []  # what arrived before that
        self.waiting: dict[Member, int] = {}  # joiner -> offset its history read reached
        self.joining = 0
        self.closing = False


class Delivery:
    """The rooms this node hosts and their feeds (see the module doc)."""

    def __init__(
        self,
        limits: NodeLimits,
        store: Store,
        broker: Broker,
        view: RoomView,
        hub: Hub,
        admins: Hub,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        rejoin: Callable[[Member, str], Coroutine[Any, Any, None]],
    ) -> None:
        self.limits = limits
        self.store = store
        self.broker = broker
        self.view = view
        self.hub = hub
        self.admins = admins
        self._spawn = spawn
        self._rejoin = rejoin
        self.hosted: dict[str, Hosted] = {}
        self.gaps_filled = 0
        self.resets = 0
        self.stopping = False

    # ------------------------------------------------------------ hosting

    async def host(self, room_id: str) -> Hosted:
        """The room's hosting state, subscribed and with its feed running."""
        hosted = self.hosted.get(room_id)
        while hosted is not None:
            await asyncio.shield(hosted.ready)
            if self.hosted.get(room_id) is hosted:
                return hosted
            hosted = self.hosted.get(room_id)  # released meanwhile: host it anew
        hosted = self.hosted[room_id] = Hosted()
        try:
            await self.broker.subscribe(room_id)
            page = await self.store.history(room_id, 0)
        except BaseException as exc:
            if self.hosted.get(room_id) is hosted:
                del self.hosted[room_id]
            self._spawn(self._unsubscribe(room_id))
            # Joiners waiting on it fail with a store error, never a cancellation of
            # their own (which would end their connection's read loop).
            error = exc if isinstance(exc, Exception) else StoreError("join cancelled")
            hosted.ready.set_exception(error)
            hosted.ready.exception()  # retrieved: joiners waiting on it re-raise it
            raise
        limits = self.limits
        hosted.feed = RoomFeed(
            page.epoch or self.store.epoch,
            page.last_offset,
            hold_max=limits.feed_hold_max,
            ring=limits.feed_ring,
        )
        hosted.ready.set_result(None)
        early, hosted.early = hosted.early, []
        for pub in early:
            self._dispatch(room_id, hosted, hosted.feed, pub)
        return hosted

    def release(self, room_id: str, hosted: Hosted) -> None:
        """Stop hosting once nobody on this node needs the room."""
        if self.hub.member_count(room_id) or hosted.waiting or hosted.joining:
            return
        if self.hosted.get(room_id) is hosted:
            del self.hosted[room_id]
            self.view.forget(room_id)
            hosted.closing = True
            self._spawn(self._unsubscribe(room_id))

    async def _unsubscribe(self, room_id: str) -> None:
        """Unsubscribe, unless a join took the room up again before this ran (its
        subscription must not be undone)."""
        if room_id not in self.hosted:
            await self.broker.unsubscribe(room_id)

    # ------------------------------------------------------------ publications

    def on_publication(self, pub: Publication) -> None:
        room_id = pub.room_id
        hosted = self.hosted.get(room_id)
        if hosted is None or hosted.closing:
            return
        feed = hosted.feed
        if feed is None:
            if len(hosted.early) < self.limits.feed_hold_max:
                hosted.early.append(pub)  # past the bound: the first read covers it
            return
        self._dispatch(room_id, hosted, feed, pub)

    def on_reconnect(self) -> None:
        """The broker's link was down: every hosted room may have missed publications."""
        for room_id, hosted in self.hosted.items():
            if hosted.feed is not None:
                self._apply(room_id, hosted, hosted.feed.reconnected())

    def _dispatch(self, room_id: str, hosted: Hosted, feed: Feed, pub: Publication) -> None:
        if type(pub) is not ChatPub:
            decisions = feed.event(pub)
            if decisions:
                self._apply(room_id, hosted, decisions)
            return
        view = self.view
        message = pub.message
        payload = encode_event("ADD_CHAT", view.chat_out(message, view.info(room_id)))
        # The hot path: the room's next message, delivered now. The ring is kept only
        # while a joiner reads the history (it may need what is delivered meanwhile):
        # a joiner counts itself in before it reads.
        keep = hosted.joining > 0 or bool(hosted.waiting)
        if feed.accept(pub.epoch, message.offset, payload, keep=keep):
            self.hub.publish(room_id, payload)
            if hosted.waiting:
                self._admit(room_id, hosted)
            return
        self._apply(room_id, hosted, feed.publication(pub.epoch, message.offset, payload))

    def _apply(
        self,
        room_id: str,
        hosted: Hosted,
        decisions: list[Decision[bytes, Publication]],
        page: tuple[HistoryPage, int | None] | None = None,
    ) -> None:
        for decision in decisions:
            if type(decision) is Deliver:
                self.hub.publish(room_id, decision.item)
                if hosted.waiting:
                    self._admit(room_id, hosted)
            elif type(decision) is Pass:
                self._pass(room_id, decision.event)
            elif type(decision) is Fetch:
                self._spawn(self._fetch(room_id, hosted, decision))
            elif type(decision) is Announce and page is not None:
                self._announce(room_id, hosted, page[0], page[1], decision.recovered)

    def _pass(self, room_id: str, pub: Publication) -> None:
        view = self.view
        if type(pub) is EventPub:
            (self.admins if pub.admins else self.hub).publish(room_id, pub.document)
        elif type(pub) is PresencePub:
            view.counts[room_id] = pub.count
            self.hub.publish(room_id, pub.document)
        elif type(pub) is RoomPub:
            view.rooms[room_id] = pub.info
            event = RoomEventOut(view.room_out(pub.info))
            self.hub.publish(room_id, encode_event("ROOM_UPDATED", event))
        elif type(pub) is MutePub:
            view.mutes.setdefault(room_id, {})[pub.user_id] = pub.until_ms
            muted = MutedOut(room_id, pub.user_id, iso(pub.until_ms))
            self.hub.publish(room_id, encode_event("USER_MUTED", muted))

    # ------------------------------------------------------------ history reads

    async def _fetch(self, room_id: str, hosted: Hosted, fetch: Fetch) -> None:
        """Read what the feed asked for, retrying until the store answers (a room must
        not stay frozen), and give it back to the feed."""
        delay = 0.1
        while True:
            if hosted.closing or self.stopping:
                return
            try:
                page, after = await self._read(room_id, hosted, fetch)
                break
            except Exception as exc:
                log.warning("room %s: cannot read the history yet (%r)", room_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        feed = hosted.feed
        if feed is None or _closed(hosted):
            return
        epoch = page.epoch or self.store.epoch
        info = self.view.info(room_id)
        items = [
            (m.offset, encode_event("ADD_CHAT", self.view.chat_out(m, info))) for m in page.messages
        ]
        decisions = feed.page(epoch, page.last_offset, items, page.complete)
        if not fetch.announce and decisions and type(decisions[0]) is not Announce:
            self.gaps_filled += 1
        self._apply(room_id, hosted, decisions, (page, after))
        if hosted.waiting and not feed.fetching:
            self._admit(room_id, hosted)

    async def _read(
        self, room_id: str, hosted: Hosted, fetch: Fetch
    ) -> tuple[HistoryPage, int | None]:
        window = self.limits.history_size
        store = self.store
        if fetch.after is None:
            return await store.history(room_id, window), None
        after = max(fetch.after - window, 0) if fetch.announce else fetch.after
        page = await store.history(
            room_id,
            self.limits.resume_max + (window if fetch.announce else 0),
            after=after,
            newest_if_incomplete=True,
        )
        feed = hosted.feed
        if feed is not None and (page.epoch or store.epoch) != feed.epoch:
            return await store.history(room_id, window), None  # a new history: its newest
        if fetch.announce:  # settings and mutes may have changed while we were away
            info = await store.get_room(room_id)
            mutes = await store.mutes(room_id)
            if not _closed(hosted):  # (a released room's caches must stay forgotten)
                if info is not None:
                    self.view.rooms[room_id] = info
                self.view.mutes[room_id] = mutes
        return page, after

    def _announce(
        self,
        room_id: str,
        hosted: Hosted,
        page: HistoryPage,
        after: int | None,
        recovered: bool,
    ) -> None:
        """Send every member, and every joiner in line, the page as ROOM_HISTORY."""
        info = self.view.info(room_id)
        history = self.view.history_out(page, info, after, recovered, self.store.epoch)
        payload = encode_event("ROOM_HISTORY", history)
        self.hub.publish(room_id, payload)
        for member in list(hosted.waiting):
            del hosted.waiting[member]
            if not member.closed and room_id in member.rooms:
                member.outbox.send(text_frame(payload))
                self._enter(room_id, member)
        if not recovered:
            self.resets += 1

    # ------------------------------------------------------------ joiners

    def line_up(self, member: Member, room_id: str, hosted: Hosted, page: HistoryPage) -> None:
        """A joiner read the history up to `page.last_offset`: let it into the hub with
        what the feed delivered since, or make it wait for the feed to get there."""
        feed = hosted.feed
        if feed is None:
            raise RuntimeError("line_up before the feed runs")
        epoch = page.epoch or self.store.epoch
        if epoch != feed.epoch:  # the room's history was lost, or the read is stale
            if feed.left(epoch):  # the read is older than the feed: read again
                self._enter(room_id, member)
                self._spawn(self._rejoin(member, room_id))
                return
            # A new history: the feed announces it (now, or after the fetch under way),
            # and the joiner enters with that announcement.
            hosted.waiting[member] = AFTER_ANNOUNCE
            self._apply(room_id, hosted, feed.epoch_seen(epoch))
            return
        if page.last_offset > feed.last or feed.fetching:
            hosted.waiting[member] = page.last_offset
        else:
            self._catch_up(room_id, feed, member, page.last_offset)

    def _admit(self, room_id: str, hosted: Hosted) -> None:
        """Let in the joiners whose history the feed has caught up with."""
        feed = hosted.feed
        if feed is None or feed.fetching:
            return
        for member, target in list(hosted.waiting.items()):
            if target <= feed.last:
                del hosted.waiting[member]
                self._catch_up(room_id, feed, member, target)

    def _catch_up(self, room_id: str, feed: Feed, member: Member, seen: int) -> None:
        """Enter the room after a history read up to offset `seen`, with what was
        delivered since; if the ring does not reach back that far, read again."""
        if member.closed or room_id not in member.rooms:
            return
        missed = feed.since(seen)
        if missed is None:
            self._enter(room_id, member)
            self._spawn(self._rejoin(member, room_id))
            return
        for payload in missed:
            member.outbox.send(text_frame(payload))
        self._enter(room_id, member)

    def _enter(self, room_id: str, member: Member) -> None:
        if member.closed or room_id not in member.rooms:
            return
        self.hub.join(room_id, member.outbox)
        if member.is_admin:
            self.admins.join(room_id, member.outbox)

    def leave(self, member: Member, room_id: str) -> None:
        self.hub.leave(room_id, member.outbox)
        self.admins.leave(room_id, member.outbox)
        hosted = self.hosted.get(room_id)
        if hosted is not None:
            hosted.waiting.pop(member, None)
            self.release(room_id, hosted)

    def unstick(self) -> None:
        """Joiners wait for the feed to reach the offset their history read saw; that
        message is on its way, but should it never come (its sender was cancelled
        between storing and publishing), read it."""
        for room_id, hosted in self.hosted.items():
            feed = hosted.feed
            if feed is None or not hosted.waiting or feed.fetching:
                continue
            target = max((t for t in hosted.waiting.values() if t < AFTER_ANNOUNCE), default=0)
            if feed.last < target:
                self._apply(room_id, hosted, feed.behind(target))


def _closed(hosted: Hosted) -> bool:
    """Whether the room stopped being hosted (read through a call: it changes under us)."""
    return hosted.closing
