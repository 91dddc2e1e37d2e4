"""Implementations of the ports, chosen by URL scheme in `open_store`."""

from __future__ import annotations

from urllib.parse import urlsplit

from roomcast.ports import Store


class UnsupportedURL(ValueError):
    """A store or broker URL whose scheme roomcast does not know."""


def open_store(
    url: str,
    *,
    history_max: int = 10_000,
    queue_max: int = 10_000,
    history_max_age: float = 0.0,
    prefix: str = "rc:",
    redis_connections: int = 32,
) -> Store:
    """Build (not yet open) the store named by `url`.

    `memory://` keeps everything in this process; `sqlite:///PATH` (three slashes and a
    relative path, four for an absolute one) keeps it in an embedded SQLite file;
    `redis://HOST:PORT/DB` (`rediss://`, `redis+cluster://`) shares it between nodes.
    """
    parts = urlsplit(url)
    if parts.scheme.startswith(("redis", "rediss")) and parts.scheme.split("+")[0] in (
        "redis",
        "rediss",
    ):
        from roomcast.adapters.redis import RedisStore

        if parts.scheme.split("+")[1:] not in ([], ["cluster"]):
            raise UnsupportedURL(f"unknown store URL scheme {parts.scheme!r} in {url!r}")
        return RedisStore(
            url,
            prefix=prefix,
            history_max=history_max,
            history_max_age=history_max_age,
            queue_max=queue_max,
            max_connections=redis_connections,
        )
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
        return SqliteStore(path, queue_max=queue_max)
    raise UnsupportedURL(f"unknown store URL scheme {parts.scheme!r} in {url!r}")
