from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from roomcast.runtime.server import RoomcastServer
from roomcast.testing import running_server
from tests.helpers import Client


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
