"""A Redis store and broker: many roomcast nodes share rooms, history and rules.

One room's keys and its channel share the hash tag `{room}`, so on Redis Cluster they
live in one slot and every script touches one shard (see `redis_lua`). Appends assign
the room's next offset, store the message, trim the history and publish it in one Lua
script, so the history and the channel never disagree about order. The broker side
(`RedisBroker`) holds one subscription per room this node hosts.

Writes from one node go through one queue and one pipeline at a time: they reach Redis
in call order and share round trips under load (the same group commit as the SQLite
store). A write whose reply is lost to a connection error is reported as a failure:
roomcast never says "sent" for a message it cannot vouch for, and `clientMsgId` makes
the client's retry safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from roomcast.adapters import redis_lua as lua
from roomcast.core.errors import (
    ClientError,
    ErrorCode,
    RoomExists,
    StoreError,
    StoreOverloaded,
    UnknownChat,
    UnknownRoom,
)
from roomcast.core.rooms import RoomInfo, check_muted
from roomcast.ports import Appended, HistoryPage, StoredMessage

log = logging.getLogger("roomcast.redis")

CHAT_ID_BLOCK = 1_000  # chat ids a node reserves from the shared counter at once
BATCH_MAX = 512  # operations per pipeline round trip
PONG_TIMEOUT = 5.0  # seconds the pub/sub link may leave a ping unanswered
STOP_TIMEOUT = 5.0  # seconds close() waits for a background task to end
OP_TIMEOUT = 15.0  # seconds a store operation may wait, queue included, before failing


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


def room_tag(room_id: str) -> str:
    """A room id made safe to stand inside a hash tag (no braces, so one slot)."""
    return room_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


class RedisURL(msgspec.Struct, frozen=True):
    url: str  # what redis-py connects to (redis:// or rediss://)
    cluster: bool


def parse_url(url: str) -> RedisURL:
    """`redis://`, `rediss://`, and `redis+cluster://` / `rediss+cluster://`."""
    parts = urlsplit(url)
    scheme = parts.scheme
    cluster = scheme.endswith("+cluster")
    if cluster:
        scheme = scheme.removesuffix("+cluster")
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"not a Redis URL: {url!r}")
    return RedisURL(urlunsplit((scheme, *parts[1:])), cluster)


def connect(target: RedisURL, *, max_connections: int = 32, **options: Any) -> Any:
    """A redis-py client (plain or cluster) that never retries a command on its own:
    a retried append could post twice, so failures surface to the caller. At most
    `max_connections` connections (per cluster node); a burst of callers waits for one
    (up to the socket timeout) instead of failing."""
    options.setdefault("socket_connect_timeout", 2.0)
    options.setdefault("socket_timeout", 5.0)
    retry = Retry(NoBackoff(), 0)
    if target.cluster:
        return RedisCluster.from_url(
            target.url, retry=retry, max_connections=max_connections, **options
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        target.url,
        max_connections=max_connections,
        timeout=options["socket_timeout"] or 5.0,
        retry=retry,
        **options,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel a background task and wait (boundedly) for it to end. Its loop must also
    check a stop flag: on Python 3.11 a cancellation that lands as a read timeout
    expires comes out as TimeoutError, which the loop would otherwise retry forever."""
    task.cancel()
    await asyncio.wait({task}, timeout=STOP_TIMEOUT)
    if task.done() and not task.cancelled() and task.exception() is not None:
        log.debug("redis: background task ended with %r", task.exception())


class _Op:
    __slots__ = ("args", "future", "script")

    def __init__(self, script: str | None, args: tuple[Any, ...], future: asyncio.Future[Any]):
        self.script = script  # a script name, or None for a plain command
        self.args = args
        self.future = future


class RedisStore:
    """The Store port on Redis (or Redis Cluster). `shared`: several nodes use it, so
    cooldowns and mutes are enforced here, atomically with the append."""

    shared = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "rc:",
        history_max: int = 10_000,
        history_max_age: float = 0.0,
        queue_max: int = 10_000,
        max_connections: int = 32,
    ) -> None:
        if history_max < 1:
            raise ValueError("history_max must be at least 1")
        self.target = parse_url(url)
        self.prefix = prefix
        self._history_max = history_max
        self._max_age_ms = int(history_max_age * 1000)
        self._queue_max = queue_max
        self._max_connections = max_connections
        self._redis: Any = None
        self._queue: list[_Op] = []
        self._inflight: list[_Op] = []
        self._stopping = False
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._shas: dict[str, str] = {}
        self._sources = {
            "append": lua.APPEND,
            "vote": lua.VOTE,
            "moderate": lua.MODERATE,
            "history": lua.HISTORY,
            "pjoin": lua.PRESENCE_JOIN,
            "pleave": lua.PRESENCE_LEAVE,
            "ppurge": lua.PRESENCE_PURGE,
            "ids": lua.RESERVE_IDS,
        }
        self._publish_cmd = "SPUBLISH" if self.target.cluster else "PUBLISH"
        self._ids: list[int] = []  # reserved chat ids: [next, end)
        self._id_lock = asyncio.Lock()
        self._epoch = ""
        self.node_id = secrets.token_hex(6)
        self._candidates = 0

    # ------------------------------------------------------------ lifecycle

    @property
    def epoch(self) -> str:
        """The store-wide epoch; room histories carry their own (`HistoryPage.epoch`)."""
        return self._epoch

    async def open(self) -> None:
        """Build the client; connecting happens on first use, so a Redis that is down
        at start makes operations fail (and /readyz say so) instead of the process."""
        if self._redis is not None:
            return
        self._redis = connect(self.target, max_connections=self._max_connections)
        self._epoch = "redis"
        self._flusher = asyncio.create_task(self._flush_forever(), name="redis-store-flusher")

    async def close(self) -> None:
        self._stopping = True
        if self._flusher is not None:
            await stop_task(self._flusher)
            self._flusher = None
        for op in [*self._inflight, *self._queue]:
            if not op.future.done():
                op.future.set_exception(StoreError("store closed"))
        self._queue.clear()
        self._inflight = []
        if self._redis is not None:
            redis, self._redis = self._redis, None
            with contextlib.suppress(RedisError, OSError):
                await redis.aclose()

    async def ping(self) -> None:
        try:
            await self._client().ping()
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc

    def _client(self) -> Any:
        if self._redis is None:
            raise StoreError("store is not open")
        return self._redis

    def _epoch_candidate(self) -> str:
        """A value no other call, here or on another node, proposes: a room's epoch is
        set from it when the room's history does not exist (yet, or any more)."""
        self._candidates += 1
        return f"{self.node_id}{self._candidates:x}"

    def key(self, room_id: str) -> str:
        """The room's key prefix; every key and the channel of the room start with it."""
        return f"{self.prefix}{{{room_tag(room_id)}}}:"

    def channel(self, room_id: str) -> str:
        return self.key(room_id) + "ev"

    # ------------------------------------------------------------ the write queue

    def _submit(self, script: str | None, *args: Any) -> asyncio.Future[Any]:
        self._client()
        if len(self._queue) >= self._queue_max:
            raise StoreOverloaded("redis store queue is full")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Op(script, args, future))
        self._wakeup.set()
        return future

    async def _run(self, script: str | None, *args: Any) -> Any:
        try:
            return await asyncio.wait_for(self._submit(script, *args), OP_TIMEOUT)
        except TimeoutError:
            raise StoreError(f"redis: no answer in {OP_TIMEOUT:g} s") from None

    async def _flush_forever(self) -> None:
        while not self._stopping:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch, self._queue = self._queue[:BATCH_MAX], self._queue[BATCH_MAX:]
                self._inflight = batch
                try:
                    await self._flush(batch)
                except Exception:  # never let the one writer die: fail this batch only
                    log.exception("redis store: a batch failed")
                    for op in batch:
                        if not op.future.done():
                            op.future.set_exception(StoreError("redis store failed"))
                self._inflight = []

    async def _flush(self, batch: list[_Op]) -> None:
        try:
            results = await self._execute(batch)
            if any(isinstance(r, NoScriptError) for r in results):
                await self._load_scripts()  # Redis restarted (or was flushed)
                retry = [op for op, r in zip(batch, results, strict=True) if _noscript(r)]
                again = iter(await self._execute(retry))
                results = [next(again) if _noscript(r) else r for r in results]
        except Exception as exc:  # the flusher must outlive any one failure
            if isinstance(exc, RedisError | OSError):
                error = StoreError(f"redis unavailable: {exc}")
                self._ids = []  # Redis may come back without the counter: reserve anew
            else:
                log.exception("redis store: a batch failed")
                error = StoreError(f"redis store: {exc!r}")
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(error)
            return
        for op, result in zip(batch, results, strict=True):
            if op.future.done():
                continue
            if isinstance(result, Exception):
                op.future.set_exception(StoreError(f"redis: {result}"))
            else:
                op.future.set_result(result)

    async def _execute(self, batch: list[_Op]) -> list[Any]:
        if not self._shas:
            await self._load_scripts()
        redis = self._client()
        pipe = redis.pipeline(transaction=False)
        for op in batch:
            if op.script is None:
                pipe.execute_command(*op.args)
            else:
                # (execute_command: redis-py's cluster pipeline refuses .evalsha, yet
                # routes EVALSHA by its key like any other command)
                pipe.execute_command("EVALSHA", self._shas[op.script], 1, *op.args)
        return list(await pipe.execute(raise_on_error=False))

    async def _load_scripts(self) -> None:
        redis = self._client()
        shas = {}
        for name, source in self._sources.items():
            # On a cluster, redis-py loads the script on every primary.
            shas[name] = await redis.script_load(source)
        self._shas = shas  # all or none: a half-loaded set would never be completed

    async def publish(self, room_id: str, data: bytes) -> None:
        """Publish to the room's channel, after every write this node queued before."""
        await self._run(None, self._publish_cmd, self.channel(room_id), data)

    async def _direct(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis unavailable: {exc}") from exc

    # ------------------------------------------------------------ messages

    async def _chat_id(self) -> str:
        async with self._id_lock:
            if not self._ids or self._ids[0] >= self._ids[1]:
                floor = int(time.time() * 1000) * 1000
                end = await self._run("ids", self.prefix + "chat-ids", CHAT_ID_BLOCK, floor)
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
        room: RoomInfo | None = None,
    ) -> Appended:
        """Append and publish (see the class doc). With `cooldown_ms` or `check_mute`
        the script refuses the message with the COOLDOWN or MUTED error, cluster-wide."""
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
            self._publish_cmd,
        )
        if reply[0] == 3:  # that chat id exists: the id counter was lost; take new ones
            self._ids = []
            return await self.append(
                room_id,
                user_id,
                name,
                text,
                client_msg_id,
                cooldown_ms=cooldown_ms,
                check_mute=check_mute,
                room=room,
            )
        if reply[0] == 1:
            seconds = cooldown_ms / 1000
            raise ClientError(
                ErrorCode.COOLDOWN,
                f"slow mode: one message per {seconds:g} s",
                retryAfterMs=int(reply[1]),
            )
        if reply[0] == 2:
            info = room or RoomInfo(room_id, room_id)
            check_muted(info, now_ms=now, muted_until_ms=int(reply[1]))
        message = unpack_message(reply[1], room_id, int(reply[3]), bool(reply[4]))
        return Appended(message, bool(reply[2]))

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
        if reply[0] == -1:
            raise UnknownChat(chat_id)
        if reply[0] == 0:
            return None
        return self._message(room_id, reply)

    async def _moderate(self, room_id: str, chat_id: str, action: str) -> list[Any]:
        reply = await self._run("moderate", self.key(room_id), chat_id, action)
        if reply[0] == -1:
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
        await self._direct(redis.zadd(self.prefix + "rooms", {room.room_id: room.created_at}))
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
        ids = await self._direct(redis.zrange(self.prefix + "rooms", 0, -1))
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

    # ------------------------------------------------------------ presence

    async def presence_join(
        self, room_id: str, user_id: str, name: str, list_max: int
    ) -> tuple[bool, int, list[tuple[str, str]]]:
        """Count this node's user in; (first in the cluster?, users, some (id, name))."""
        first, count, flat = await self._run(
            "pjoin", self.key(room_id), self.node_id, user_id, name, list_max
        )
        users = [(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]
        return bool(first), int(count), users

    async def presence_leave(self, room_id: str, user_id: str) -> tuple[bool, int]:
        """Count this node's user out; (last in the cluster?, users left)."""
        last, count = await self._run("pleave", self.key(room_id), self.node_id, user_id)
        return bool(last), int(count)

    async def presence_purge(self, room_id: str, node_id: str) -> tuple[int, list[str]]:
        """Drop what a dead node counted in; (users left, user ids now gone)."""
        count, gone = await self._run("ppurge", self.key(room_id), node_id)
        return int(count), [g.decode() for g in gone]

    async def presence_nodes(self, room_id: str) -> list[str]:
        raw = await self._direct(self._client().smembers(self.key(room_id) + "nodes"))
        return sorted(n.decode() for n in raw)

    async def heartbeat(self, ttl: float) -> None:
        """Say this node is alive for the next `ttl` seconds."""
        key = f"{self.prefix}node:{self.node_id}"
        await self._direct(self._client().set(key, b"1", px=max(1, int(ttl * 1000))))

    async def node_alive(self, node_id: str) -> bool:
        return bool(await self._direct(self._client().exists(f"{self.prefix}node:{node_id}")))


def _noscript(result: object) -> bool:
    return isinstance(result, NoScriptError)


Handler = Callable[[str, bytes], None]


class RedisBroker:
    """Room subscriptions on one dedicated connection (sharded on Redis Cluster).

    `subscribe` returns once Redis confirmed the subscription, so whatever is published
    after that reaches `on_message(room_id, data)`. When the connection drops, the broker
    reconnects with capped backoff, resubscribes every room, and then calls `on_reset()`:
    whatever was published meanwhile is lost to pub/sub, and the node fills the gap from
    the history. `connected` is False while it cannot reach Redis.
    """

    def __init__(
        self,
        store: RedisStore,
        on_message: Handler,
        on_reset: Callable[[], None],
        *,
        backoff_max: float = 5.0,
    ) -> None:
        self.store = store
        self._on_message = on_message
        self._on_reset = on_reset
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
        self._kind = "s" if store.target.cluster else ""
        self._lock = asyncio.Lock()
        self._tried = asyncio.Event()

    async def open(self) -> None:
        """Start the connection loop and wait for its first try (bounded), so a node
        that can reach Redis serves its first joins connected."""
        self._task = asyncio.create_task(self._run(), name="redis-broker")
        tried = asyncio.ensure_future(self._tried.wait())
        try:
            await asyncio.wait([self._task, tried], timeout=5.0, return_when="FIRST_COMPLETED")
        finally:
            tried.cancel()

    async def close(self) -> None:
        self._stopping = True
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        await self._drop()

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
        channel = self.store.channel(room_id)
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
        channel = self.store.channel(room_id)
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
        if self.store.target.cluster:
            self._client = connect(self.store.target)
            await self._client.initialize()  # reads the slot map, or raises
            self._pubsub = self._client.pubsub()
        else:
            self._client = connect(self.store.target, socket_timeout=None)
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
                self._on_reset()
            first = False
            try:
                await self._read()
            except Exception as exc:
                log.warning("redis broker: connection lost (%r)", exc)
            await self._drop()

    async def _read(self) -> None:
        pubsub = self._pubsub
        cluster = self.store.target.cluster
        idle = 0.0
        quiet_since = time.monotonic()
        ping_sent: float | None = None
        while not self._stopping:
            if cluster:
                # redis-py reads one shard connection after another; a blocking wait
                # on one would delay the others, so poll them all, backing off to 10 ms.
                msg = None
                if pubsub.node_pubsub_mapping:
                    async with self._lock:
                        msg = await pubsub.get_sharded_message(ignore_subscribe_messages=False)
                if msg is None:
                    idle = min(max(idle * 2, 0.001), 0.01)
                    await asyncio.sleep(idle)
            else:
                msg = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
            if msg is None:
                now = time.monotonic()
                if ping_sent is not None and now - ping_sent > PONG_TIMEOUT:
                    raise ConnectionError("redis did not answer a ping")
                if now - quiet_since > 5.0 and not cluster:  # a dead link shows on a ping
                    quiet_since = now
                    if ping_sent is None:
                        ping_sent = now
                        await pubsub.ping()
                continue
            idle = 0.0
            quiet_since = time.monotonic()
            kind = msg["type"]
            channel = msg["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            if kind in ("message", "smessage"):
                room_id = self._rooms.get(channel)
                if room_id is not None:
                    self.received += 1
                    try:
                        self._on_message(room_id, msg["data"])
                    except Exception:  # one bad publication must not drop the link
                        log.exception("redis broker: a publication on %s failed", channel)
            elif kind == "pong":
                ping_sent = None
            elif kind in ("unsubscribe", "sunsubscribe"):
                if not self._answered(channel, "u") and channel in self._rooms:
                    # Not asked for (Redis Cluster moved the slot, or a failover): treat
                    # it as a lost link, so the room is resubscribed and its gap filled.
                    raise ConnectionError(f"redis dropped the subscription to {channel}")
            elif kind in ("subscribe", "ssubscribe"):
                self._answered(channel, "s")
