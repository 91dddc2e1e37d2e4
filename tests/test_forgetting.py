"""Redis forgets a room: FLUSHALL, DEL of that room's keys, or a restart without data.

Two nodes share a private Redis; a room is at offset 300. After Redis forgets it, the
room's next message starts a new history (a new epoch, offsets from 1): members on
both nodes are told at once (`ROOM_HISTORY recovered: false`), each new message of a
quiet room shows within 2 s, and a burst of 300 arrives whole, in order, once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.cluster import NodeProcess, RedisServer, needs_redis, prefix
from tests.helpers import Client, timeout, wait_until

pytestmark = [needs_redis, pytest.mark.slow]

ROOM = "forget-me"


@dataclass
class Watcher:
    """A member that records what it sees, with arrival times."""

    client: Client
    chats: list[tuple[int, str, float]] = field(default_factory=list)  # offset, text, when
    resets: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def read(self) -> None:
        while True:
            try:
                frame = await self.client.recv(0.2)
            except TimeoutError:
                continue
            payload = frame["payload"]
            if frame["type"] == "ADD_CHAT":
                self.chats.append((payload["offset"], payload["message"], time.monotonic()))
            elif frame["type"] == "ROOM_HISTORY" and payload.get("recovered") is False:
                self.resets.append(payload)
                self.chats.extend(
                    (m["offset"], m["message"], time.monotonic()) for m in payload["messages"]
                )

    def arrived(self, text: str) -> float | None:
        return next((when for _, t, when in self.chats if t == text), None)

    def texts_after_reset(self) -> list[str]:
        """Texts seen since the last reset notice (its own messages included)."""
        return [t for _, t, _ in self.chats if not t.startswith("old:")]


@pytest.fixture
async def two_nodes(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, list[NodeProcess], str]]:
    server = RedisServer(tmp_path / "r").start()
    key_prefix = prefix()
    nodes = [NodeProcess(server.url, key_prefix).start(ready=False) for _ in range(2)]
    try:
        for node in nodes:
            node.wait_ready()
        yield server, nodes, key_prefix
    finally:
        for node in nodes:
            node.stop()
        server.stop()


async def _room_at_300(nodes: list[NodeProcess]) -> tuple[Client, list[Watcher]]:
    publisher = await Client.connect(nodes[0].url)
    await publisher.join(ROOM, "pub")
    publisher.skip = frozenset()
    watchers = [Watcher(await Client.connect(node.url)) for node in (nodes[0], nodes[1])]
    for i, w in enumerate(watchers):
        await w.client.join(ROOM, f"w{i}")
        w.task = asyncio.create_task(w.read())
    for n in range(300):
        await publisher.send("SEND_MESSAGE", userId="pub", roomId=ROOM, message=f"old:{n}")
    for w in watchers:
        assert await wait_until(lambda w=w: len(w.chats) >= 300, timeout(20))
        assert [o for o, _, _ in w.chats] == list(range(1, 301))
    return publisher, watchers


async def _forget(how: str, server: RedisServer, key_prefix: str) -> None:
    if how == "restart":  # without persistence: it comes back empty
        server.restart()
        return
    redis = aioredis.Redis.from_url(server.url)
    try:
        if how == "flushall":
            await redis.flushall()
        else:  # this room's keys only, as an operator or an eviction would
            keys = await redis.keys(f"{key_prefix}v1:{{{ROOM}}}:*")
            assert keys, "the room has keys to delete"
            await redis.delete(*keys)
    finally:
        await redis.aclose()


@pytest.mark.parametrize("how", ["flushall", "del", "restart"])
async def test_a_forgotten_room_resets_at_once_and_stays_live(
    two_nodes: tuple[RedisServer, list[NodeProcess], str], how: str
) -> None:
    """After Redis forgets the room, members on both nodes are told once, then every
    new message shows within 2 s (a quiet room), and a burst arrives whole, in order."""
    server, nodes, key_prefix = two_nodes
    publisher, watchers = await _room_at_300(nodes)
    refused: list[dict[str, Any]] = []  # what the server refused the publisher, if anything

    async def errors() -> None:
        while True:
            try:
                frame = await publisher.recv(0.2)
            except TimeoutError:
                continue
            if frame["type"] == "ERROR":
                refused.append(frame["payload"])

    reading = asyncio.create_task(errors())
    await _forget(how, server, key_prefix)
    if how == "restart":
        for node in nodes:
            assert await wait_until(lambda node=node: node.status() == 200, timeout(15))
    # A quiet room: a question every half second.
    for n in range(5):
        sent = time.monotonic()
        await publisher.send("SEND_MESSAGE", userId="pub", roomId=ROOM, message=f"quiet:{n}")
        for w in watchers:
            assert await wait_until(
                lambda w=w, n=n: w.arrived(f"quiet:{n}") is not None, timeout(2)
            )
            arrived = w.arrived(f"quiet:{n}")
            assert arrived is not None
            assert arrived - sent < timeout(2)
        await asyncio.sleep(0.5)
    for w in watchers:
        assert len(w.resets) == 1, "members were told of the lost history once"
        assert w.resets[0]["epoch"], "the new history has an epoch"
    # A burst.
    for n in range(300):
        await publisher.send("SEND_MESSAGE", userId="pub", roomId=ROOM, message=f"burst:{n}")
    expected = [f"quiet:{n}" for n in range(5)] + [f"burst:{n}" for n in range(300)]
    for w in watchers:
        arrived = await wait_until(lambda w=w: len(w.texts_after_reset()) >= 305, timeout(20))
        assert refused == [], "the server refused some of the publisher's messages"
        assert arrived, f"{len(w.texts_after_reset())} of 305 arrived"
        assert w.texts_after_reset() == expected
        new = [o for o, t, _ in w.chats if not t.startswith("old:")]
        assert new == list(range(1, 306)), "the new history counts from 1, in order, once"
        assert len(w.resets) == 1
    reading.cancel()
    for w in watchers:
        assert w.task is not None
        w.task.cancel()
        await w.client.close()
    await publisher.close()
