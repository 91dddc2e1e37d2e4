from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from roomcast.runtime.server import RoomcastServer
from roomcast.testing import running_server
from tests.helpers import Client


@pytest.fixture(autouse=True)
async def close_left_open() -> AsyncIterator[None]:
    """Close the clients a test left open (it failed before its own close), so their
    sockets are not reported as leaked by some later test."""
    yield
    loop = asyncio.get_running_loop()
    left = [client for client, owner in Client.live.items() if owner is loop]
    await asyncio.gather(*(client.close() for client in left), return_exceptions=True)
    for client, owner in list(Client.live.items()):
        if owner.is_closed():  # opened on a loop of its own (asyncio.run), gone now
            Client.live.pop(client, None)


@pytest.fixture
async def server() -> AsyncIterator[RoomcastServer]:
    async with running_server() as srv:
        yield srv


@pytest.fixture
async def connect(server: RoomcastServer) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    clients: list[Client] = []

    async def make(**kwargs: Any) -> Client:
        client = await Client.connect(server.url, **kwargs)
        clients.append(client)
        return client

    yield make
    await asyncio.gather(*(client.close() for client in clients))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for this test run (never the shared one on 6379)."""
    from tests.cluster import RedisServer

    _require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private three-primary Redis Cluster for this test run."""
    from tests.cluster import RedisClusterServers

    _require_redis_server()
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster.url
    cluster.stop()


def _require_redis_server() -> None:
    """Skip without redis-server, except in CI, where the Redis tests must run."""
    from tests.cluster import REDIS_SERVER

    if REDIS_SERVER is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the Redis tests: redis-server is not installed")
        pytest.skip("no redis-server (apt-get install redis-server)")
