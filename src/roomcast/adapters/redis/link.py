"""One node's command connection to Redis, shared by its store, broker and presence.

Writes go through one `Batcher`: they reach Redis in call order (a publication made
after a store write is published after it) and share pipeline round trips under load.
Scripts are loaded once (again after Redis lost them: a restart, SCRIPT FLUSH) and run
by SHA. A write whose reply is lost to a connection error is reported as a failure:
roomcast never says "sent" for a message it cannot vouch for, and `clientMsgId` makes
the client's retry safe. The link is opened by the first adapter that needs it and
closed by the last.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from roomcast.adapters.batching import Batcher
from roomcast.adapters.redis.client import Client, RedisURL, connect, parse_url
from roomcast.adapters.redis.scripts import load_sources
from roomcast.core.errors import StoreError

log = logging.getLogger("roomcast.redis")

T = TypeVar("T")
Op = tuple[str | None, tuple[Any, ...]]  # (script name or None for a command, arguments)


class RedisLink:
    """The command client, its write queue and the loaded scripts."""

    def __init__(
        self,
        url: str,
        *,
        queue_max: int = 10_000,
        max_connections: int = 32,
        batch_max: int = 512,
        timeout: float = 15.0,
    ) -> None:
        self.target: RedisURL = parse_url(url)
        self.cluster = self.target.cluster
        self.publish_command = "SPUBLISH" if self.cluster else "PUBLISH"
        self._max_connections = max_connections
        self._client: Client | None = None
        self._users = 0
        self._sources = load_sources()
        self._shas: dict[str, str] = {}
        self._batcher: Batcher[Op] = Batcher(
            self._flush,
            name="redis",
            queue_max=queue_max,
            batch_max=batch_max,
            timeout=timeout,
            on_failure=self._failure,
        )
        self.on_connection_error: list[Callable[[], None]] = []  # run when a batch fails

    async def open(self) -> None:
        """Build the client (connecting happens on first use, so a Redis that is down at
        start makes operations fail, and /readyz say so, instead of the process)."""
        self._users += 1
        if self._client is None:
            self._client = connect(self.target, max_connections=self._max_connections)
            self._batcher.start()

    async def close(self) -> None:
        self._users -= 1
        if self._users > 0 or self._client is None:
            return
        await self._batcher.stop()
        client, self._client = self._client, None
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()

    @property
    def client(self) -> Client:
        if self._client is None:
            raise StoreError("redis is not open")
        return self._client

    async def run(self, script: str | None, *args: Any) -> Any:
        """Run a script (by name) or a command (`script=None`) through the write queue."""
        self.client  # noqa: B018 (raises when closed)
        return await self._batcher.run((script, args))

    async def direct(self, call: Awaitable[T]) -> T:
        """Await a direct client call, with Redis errors as StoreError."""
        try:
            return await call
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis unavailable: {exc}") from exc

    async def ping(self) -> None:
        await self.direct(self.client.ping())

    async def drop_idle(self) -> None:
        """Close the idle pooled connections (they reconnect on their next use). Called
        when Redis was found gone: a connection opened before a Redis restart fails on
        its next command, and commands are never retried (an append could post twice),
        so stale connections must not wait in the pool for the next writes."""
        client = self._client
        if client is None:
            return
        with contextlib.suppress(RedisError, OSError):
            if isinstance(client, RedisCluster):
                for node in client.get_nodes():
                    await node.disconnect_free_connections()
            else:
                await client.connection_pool.disconnect(inuse_connections=False)

    # ------------------------------------------------------------ the writer

    def _failure(self, exc: BaseException) -> StoreError:
        if isinstance(exc, RedisError | OSError):
            for callback in self.on_connection_error:
                callback()
            return StoreError(f"redis unavailable: {exc}")
        log.error("redis: a batch failed: %r", exc)
        return StoreError(f"redis: {exc!r}")

    async def _flush(self, batch: list[Op]) -> list[object]:
        try:
            results = await self._execute(batch)
        except (RedisConnectionError, OSError):
            await self.drop_idle()  # the batch fails; the next ones get fresh connections
            raise
        if any(isinstance(r, NoScriptError) for r in results):
            await self._load_scripts()  # Redis restarted (or its scripts were flushed)
            retry = [op for op, r in zip(batch, results, strict=True) if _noscript(r)]
            again = iter(await self._execute(retry))
            results = [next(again) if _noscript(r) else r for r in results]
        return [StoreError(f"redis: {r}") if isinstance(r, Exception) else r for r in results]

    async def _execute(self, batch: list[Op]) -> list[Any]:
        if not self._shas:
            await self._load_scripts()
        pipe = self.client.pipeline(transaction=False)
        for script, args in batch:
            if script is None:
                pipe.execute_command(*args)
            else:
                # (execute_command: redis-py's cluster pipeline refuses .evalsha, yet
                # routes EVALSHA by its key like any other command)
                pipe.execute_command("EVALSHA", self._shas[script], 1, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def _load_scripts(self) -> None:
        shas = {}
        for name, source in self._sources.items():
            # On a cluster, redis-py loads the script on every primary.
            shas[name] = await self.client.script_load(source)
        self._shas = shas  # all or none: a half-loaded set would never be completed


def _noscript(result: object) -> bool:
    return isinstance(result, NoScriptError)
