"""Implementations of the ports, and the one place that turns URLs into them.

`--store` names where rooms and history live; `--broker` names what carries a room's
publications between nodes; presence follows the broker (in-process with the local
broker, Redis with Redis). The forms users write:

- nothing: `sqlite:///roomcast.db`, the local broker (one node alone);
- `--store memory://` or `--store sqlite:///PATH`: one node alone;
- `--broker redis://…` alone, `--store redis://…` alone, or both the same: Redis for
  store, broker and presence; the append script stores and publishes in one step;
- `--store redis://A --broker redis://B`: the node publishes after the store returns.

A node-local store (memory, SQLite) with a shared broker is refused: other nodes could
not read its history.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from roomcast.ports import Broker, Presence, Store

DEFAULT_STORE = "sqlite:///roomcast.db"
REDIS_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")


class UnsupportedURL(ValueError):
    """A store or broker URL roomcast does not know, or a pairing it refuses."""


def resolve(store: str, broker: str) -> tuple[str, str]:
    """The (store, broker) URLs a node runs with; `broker` "" is the local broker.
    Raises UnsupportedURL, with one line for the user, for what cannot work."""
    store_scheme = _scheme(store)
    if broker and _scheme(broker) not in REDIS_SCHEMES:
        raise UnsupportedURL(
            f"--broker must be a redis://, rediss:// or redis+cluster:// URL, not {broker!r}"
        )
    if store_scheme not in (*REDIS_SCHEMES, "memory", "sqlite"):
        raise UnsupportedURL(f"unknown store URL scheme {store_scheme!r} in {store!r}")
    if broker and store == DEFAULT_STORE:
        store, store_scheme = broker, _scheme(broker)  # --broker alone: Redis for both
    if not broker and store_scheme in REDIS_SCHEMES:
        broker = store  # --store redis:// alone: Redis for both
    if broker and store_scheme not in REDIS_SCHEMES:
        raise UnsupportedURL(
            f"--store {store} keeps rooms on this node only, so other nodes on --broker "
            f"could not read them: use a shared store (--store {broker}) or no --broker"
        )
    return store, broker


@dataclass(frozen=True)
class Backends:
    """A node's three ports, built (not yet open)."""

    store: Store
    broker: Broker
    presence: Presence
    store_url: str = ""
    broker_url: str = ""  # "" for the local broker


def build(
    store_url: str,
    broker_url: str = "",
    *,
    history_max: int = 10_000,
    queue_max: int = 10_000,
    history_max_age: float = 0.0,
    prefix: str = "rc:",
    redis_connections: int = 32,
    heartbeat: float = 5.0,
    batch_max: int = 512,
    redis_timeout: float = 15.0,
) -> Backends:
    """The store, broker and presence for these URLs (see the module doc)."""
    store_url, broker_url = resolve(store_url, broker_url)
    store_link = None
    if _scheme(store_url) in REDIS_SCHEMES:
        from roomcast.adapters.redis import RedisLink, RedisStore

        store_link = RedisLink(
            store_url,
            queue_max=queue_max,
            max_connections=redis_connections,
            batch_max=batch_max,
            timeout=redis_timeout,
        )
        store: Store = RedisStore(
            store_link,
            prefix=prefix,
            history_max=history_max,
            history_max_age=history_max_age,
            publishes=store_url == broker_url,
        )
    else:
        store = open_store(
            store_url, history_max=history_max, queue_max=queue_max, batch_max=batch_max
        )
    if not broker_url:
        from roomcast.adapters.local import LocalBroker, LocalPresence

        return Backends(store, LocalBroker(), LocalPresence(), store_url)
    from roomcast.adapters.redis import RedisBroker, RedisLink, RedisPresence

    link = store_link if store_url == broker_url and store_link else None
    link = link or RedisLink(
        broker_url,
        queue_max=queue_max,
        max_connections=redis_connections,
        batch_max=batch_max,
        timeout=redis_timeout,
    )
    broker = RedisBroker(link, prefix=prefix)
    presence = RedisPresence(link, prefix=prefix, heartbeat=heartbeat)
    return Backends(store, broker, presence, store_url, broker_url)


def open_store(
    url: str, *, history_max: int = 10_000, queue_max: int = 10_000, batch_max: int = 512
) -> Store:
    """A node-local store: `memory://` keeps everything in this process;
    `sqlite:///PATH` (three slashes and a relative path, four for an absolute one)
    keeps it in an embedded SQLite file."""
    parts = urlsplit(url)
    if parts.scheme == "memory":
        from roomcast.adapters.memory import MemoryStore

        return MemoryStore(history_max=history_max)
    if parts.scheme == "sqlite":
        from roomcast.adapters.sqlite import SqliteStore

        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc:
            raise UnsupportedURL(f"sqlite URLs have no host: use sqlite:///PATH, not {url!r}")
        if not path:
            raise UnsupportedURL(f"sqlite URL names no file: {url!r}")
        return SqliteStore(path, queue_max=queue_max, batch_max=batch_max)
    raise UnsupportedURL(f"unknown store URL scheme {parts.scheme!r} in {url!r}")


def _scheme(url: str) -> str:
    return urlsplit(url).scheme


async def migrate(store_url: str, broker_url: str = "", *, prefix: str = "rc:") -> str:
    """Bring the store's format up to this version (`roomcast migrate`; `serve` does it
    too when it opens the store); returns what was done, in one line."""
    store_url, broker_url = resolve(store_url, broker_url)
    scheme = _scheme(store_url)
    if scheme == "sqlite":
        import asyncio

        from roomcast.adapters.sqlite.schema import migrate_file

        path = urlsplit(store_url).path.removeprefix("/")
        before, after = await asyncio.to_thread(migrate_file, path)
        if before == after:
            return f"{store_url}: schema {after}, up to date"
        return f"{store_url}: schema {before or 'none'} -> {after}"
    if scheme in REDIS_SCHEMES:
        from roomcast.adapters.redis.client import migrate_keys

        return await migrate_keys(store_url, prefix)
    return f"{store_url}: nothing is stored, nothing to migrate"
