"""The Broker port on Redis pub/sub (sharded pub/sub on Redis Cluster).

Publications travel in the versioned inter-node format of `roomcast.core.wire`, on one
channel per room (`<prefix>v1:{room}:ev`). A node holds one subscription per room it
hosts, on one dedicated connection (one per shard on Cluster), and publishes through
the shared command link, after every store write it queued before. A quiet link is
pinged (every shard's, on Cluster); one that does not answer is taken for lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from roomcast.adapters.redis.client import Keys, connect, stop_task
from roomcast.adapters.redis.link import RedisLink
from roomcast.core import wire
from roomcast.core.errors import StoreError
from roomcast.core.wire import Publication
from roomcast.ports import OnPublication

log = logging.getLogger("roomcast.redis")

PONG_TIMEOUT = 5.0  # seconds the pub/sub link may leave a ping unanswered
QUIET = 5.0  # seconds without traffic before the link is pinged


class RedisBroker:
    """Room subscriptions on one dedicated connection (see `roomcast.ports.Broker`).

    `subscribe` returns once Redis confirmed the subscription. When the connection
    drops, the broker reconnects with capped backoff, resubscribes every room, and then
    calls `on_reconnect()`. `connected` is False while it cannot reach Redis.
    """

    def __init__(self, link: RedisLink, *, prefix: str = "rc:", backoff_max: float = 5.0):
        self.link = link
        self.keys = Keys(prefix)
        self._on_publication: OnPublication = _unbound
        self._on_reconnect: Callable[[], None] = lambda: None
        self._backoff_max = backoff_max
        self._rooms: dict[str, str] = {}  # channel -> room id
        # Per channel, the (un)subscribe commands sent and not yet answered, in the
        # order they went out: ("s" or "u", the subscriber waiting for its reply). Each
        # reply is matched to its command: a subscribe reply confirms its own waiter,
        # and an unsubscribe reply that matches one of ours is not Redis dropping the
        # subscription, even if a join subscribed the channel again in between.
        self._sent: dict[str, deque[tuple[str, asyncio.Future[None] | None]]] = {}
        self._pubsub: Any = None
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self._stopping = False
        self.reconnects = 0
        self.received = 0
        self.dropped = 0
        self._cluster = link.cluster
        self._kind = "s" if link.cluster else ""
        self._lock = asyncio.Lock()
        self._tried = asyncio.Event()

    def bind(self, on_publication: OnPublication, on_reconnect: Callable[[], None]) -> None:
        self._on_publication = on_publication
        self._on_reconnect = on_reconnect

    async def publish(self, pub: Publication) -> None:
        """Publish on the room's channel, after every write this node queued before."""
        channel = self.keys.channel(pub.room_id)
        await self.link.run(None, self.link.publish_command, channel, wire.encode(pub))

    async def open(self) -> None:
        """Start the connection loop and wait for its first try (bounded), so a node
        that can reach Redis serves its first joins connected."""
        if self._task is not None:
            return
        await self.link.open()
        self._task = asyncio.create_task(self._run(), name="redis-broker")
        tried = asyncio.ensure_future(self._tried.wait())
        try:
            await asyncio.wait([self._task, tried], timeout=5.0, return_when="FIRST_COMPLETED")
        finally:
            tried.cancel()

    async def close(self) -> None:
        self._stopping = True
        if self._task is None:
            return  # never opened, or closed already: the shared link is not ours now
        await stop_task(self._task)
        self._task = None
        await self._drop()
        await self.link.close()

    async def _drop(self) -> None:
        self.connected = False
        pubsub, client, self._pubsub, self._client = self._pubsub, self._client, None, None
        for sent in self._sent.values():
            for _, waiter in sent:
                if waiter is not None and not waiter.done():
                    waiter.set_exception(StoreError("redis broker disconnected"))
        self._sent.clear()
        with contextlib.suppress(RedisError, OSError, RuntimeError):
            if pubsub is not None:
                await pubsub.aclose()
        with contextlib.suppress(RedisError, OSError, RuntimeError):
            if client is not None:
                await client.aclose()

    async def subscribe(self, room_id: str) -> None:
        """Subscribe to the room's channel and wait for Redis to confirm it."""
        channel = self.keys.channel(room_id)
        self._rooms[channel] = room_id
        if not self.connected:
            raise StoreError("redis broker is not connected")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            await self._command("subscribe", channel, waiter=future)
            await asyncio.wait_for(asyncio.shield(future), timeout=5.0)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis broker: {exc}") from exc

    async def unsubscribe(self, room_id: str) -> None:
        channel = self.keys.channel(room_id)
        if self._rooms.pop(channel, None) is None or not self.connected:
            return
        try:
            await self._command("unsubscribe", channel)
        except Exception as exc:  # best effort: a stray publication for it is ignored
            log.debug("redis broker: unsubscribe from %s failed (%r)", channel, exc)

    async def _command(
        self, verb: str, *channels: str, waiter: asyncio.Future[None] | None = None
    ) -> None:
        """Send SUBSCRIBE or UNSUBSCRIBE (sharded on Cluster), noting it per channel;
        `waiter` (one channel only) gets the subscribe reply."""
        entry = (verb[0], waiter)  # "s" or "u"
        async with self._lock:  # redis-py's cluster pub/sub: no read during a (un)subscribe
            pubsub = self._pubsub  # the current connection's, looked up under the lock
            if pubsub is None:
                raise ConnectionError("redis broker is not connected")
            for channel in channels:
                self._sent.setdefault(channel, deque()).append(entry)
            try:
                await getattr(pubsub, self._kind + verb)(*channels)
            except BaseException:
                for channel in channels:  # not sent: no reply will come for it
                    sent = self._sent.get(channel)
                    if sent and sent[-1] is entry:
                        sent.pop()
                raise

    def _answered(self, channel: str, mark: str) -> bool:
        """A reply of kind `mark` ("s" or "u") for `channel` arrived: True if it answers
        a command of ours, whose waiter it then confirms. Commands of the other kind
        sent before it whose replies never came (a Cluster shard that did not hold the
        channel) are forgotten on the way."""
        sent = self._sent.get(channel)
        if not sent or all(kind != mark for kind, _ in sent):
            return False
        kind, waiter = sent.popleft()
        while kind != mark:
            kind, waiter = sent.popleft()
        if not sent:
            del self._sent[channel]
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    async def _connect(self) -> None:
        if self._cluster:
            self._client = connect(self.link.target)
            await self._client.initialize()  # reads the slot map, or raises
            self._pubsub = self._client.pubsub()
        else:
            self._client = connect(self.link.target, socket_timeout=None)
            self._pubsub = self._client.pubsub()
            await self._pubsub.ping()  # connects, or raises
        if self._rooms:
            await self._command("subscribe", *self._rooms)
        self.connected = True

    async def _run(self) -> None:
        delay = 0.1
        first = True
        while not self._stopping:
            try:
                await self._connect()
            except Exception as exc:  # keep trying, whatever the client library raised
                self._tried.set()
                await self._drop()
                log.warning("redis broker: cannot connect (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max)
                continue
            self._tried.set()
            delay = 0.1
            if not first:
                self.reconnects += 1
                log.warning("redis broker: reconnected; filling gaps from the history")
                # Redis may have restarted: the command link's idle connections are
                # dead; close them before the fills and the next writes use them.
                await self.link.drop_idle()
                self._on_reconnect()
            first = False
            try:
                await self._read()
            except Exception as exc:
                log.warning("redis broker: connection lost (%r)", exc)
            await self._drop()

    async def _read(self) -> None:
        pubsub = self._pubsub
        idle = 0.0
        quiet_since = time.monotonic()
        ping_sent: float | None = None
        pongs_due = 0  # one per connection pinged (per shard on Cluster)
        while not self._stopping:
            msg = await self._next_message(pubsub, idle)
            now = time.monotonic()
            if msg is None:
                idle = min(max(idle * 2, 0.001), 0.01)
                if ping_sent is not None and now - ping_sent > PONG_TIMEOUT:
                    raise ConnectionError("redis did not answer a ping")
                if ping_sent is None and now - quiet_since > QUIET:
                    quiet_since = ping_sent = now
                    pongs_due = await self._ping(pubsub)  # a dead link shows on a ping
                    if not pongs_due:  # no shard subscribed: nothing to lose
                        ping_sent = None
                continue
            idle = 0.0
            quiet_since = now
            if msg["type"] == "pong":
                pongs_due -= 1
                if pongs_due <= 0:
                    ping_sent = None
            else:
                self._handle(msg)

    async def _next_message(self, pubsub: Any, idle: float) -> Any:
        if not self._cluster:
            return await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
        # redis-py reads one shard connection after another; a blocking wait on one
        # would delay the others, so poll them all, backing off to 10 ms when idle.
        msg = None
        if pubsub.node_pubsub_mapping:
            async with self._lock:
                msg = await pubsub.get_sharded_message(ignore_subscribe_messages=False)
        if msg is None:
            await asyncio.sleep(idle)
        return msg

    async def _ping(self, pubsub: Any) -> int:
        """Ping the link (every shard's connection on Cluster: each can die alone);
        returns how many pongs are due."""
        if not self._cluster:
            await pubsub.ping()
            return 1
        async with self._lock:
            shards = list(pubsub.node_pubsub_mapping.values())
            for shard in shards:
                await shard.ping()
        return len(shards)

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        channel = msg["channel"]
        if isinstance(channel, bytes):
            channel = channel.decode()
        if kind in ("message", "smessage"):
            room_id = self._rooms.get(channel)
            if room_id is None:
                return
            self.received += 1
            try:
                pub = wire.decode(room_id, msg["data"])
            except wire.WireError as exc:
                self.dropped += 1
                log.warning("redis broker: dropped a publication on %s (%s)", channel, exc)
                return
            try:
                self._on_publication(pub)
            except Exception:  # one bad publication must not drop the link
                log.exception("redis broker: a publication on %s failed", channel)
        elif kind in ("unsubscribe", "sunsubscribe"):
            if not self._answered(channel, "u") and channel in self._rooms:
                # Not asked for (Redis Cluster moved the slot, or a failover): treat it
                # as a lost link, so the room is resubscribed and its gap filled.
                raise ConnectionError(f"redis dropped the subscription to {channel}")
        elif kind in ("subscribe", "ssubscribe"):
            self._answered(channel, "s")


def _unbound(pub: Publication) -> None:
    raise StoreError("redis broker: bind() before open()")
