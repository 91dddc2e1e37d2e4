"""Connecting to Redis (plain or Cluster) and naming a room's keys.

One room's keys and its channel share the hash tag `{room}`, so on Redis Cluster they
live in one slot and every script touches one shard. Key format version: `KEYS_VERSION`
is part of every key (`<prefix>v1:{room}:...`), so a node of a later format never reads
keys it would misunderstand.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger("roomcast.redis")

KEYS_VERSION = 1
STOP_TIMEOUT = 5.0  # seconds close() waits for a background task to end

# redis-py's two async clients; both take the same commands we use.
Client: TypeAlias = "aioredis.Redis | RedisCluster"


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


def connect(target: RedisURL, *, max_connections: int = 32, **options: Any) -> Client:
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


def room_tag(room_id: str) -> str:
    """A room id made safe to stand inside a hash tag (no braces, so one slot)."""
    return room_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


class Keys:
    """Key and channel names under one prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = f"{prefix}v{KEYS_VERSION}:"

    def room(self, room_id: str) -> str:
        """The room's key prefix; every key and the channel of the room start with it."""
        return f"{self.prefix}{{{room_tag(room_id)}}}:"

    def channel(self, room_id: str) -> str:
        return self.room(room_id) + "ev"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def global_key(self, name: str) -> str:
        return self.prefix + name


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel a background task and wait (boundedly) for it to end. Its loop must also
    check a stop flag: on Python 3.11 a cancellation that lands as a read timeout
    expires comes out as TimeoutError, which the loop would otherwise retry forever."""
    task.cancel()
    await asyncio.wait({task}, timeout=STOP_TIMEOUT)
    if task.done() and not task.cancelled() and task.exception() is not None:
        log.debug("redis: background task ended with %r", task.exception())


async def migrate_keys(url: str, prefix: str) -> str:
    """Record (or check) the key format under `prefix`: `<prefix>format` holds the
    newest `KEYS_VERSION` that wrote there. Keys of another version have other names,
    so nothing is rewritten; a newer format than this roomcast knows is refused."""
    target = parse_url(url)
    client = connect(target, max_connections=2)
    key = f"{prefix}format"
    try:
        await client.set(key, KEYS_VERSION, nx=True)
        found = int(await client.get(key) or 0)
        if found > KEYS_VERSION:
            raise ValueError(
                f"{url}: keys under {prefix!r} are in format {found}; this roomcast knows "
                f"up to {KEYS_VERSION}: upgrade roomcast"
            )
        if found < KEYS_VERSION:
            await client.set(key, KEYS_VERSION)
    finally:
        await client.aclose()
    return f"{url}: key format {KEYS_VERSION} under {prefix!r}, up to date"
