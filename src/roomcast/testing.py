"""Helpers for tests of roomcast and of applications that embed it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from roomcast.config import Settings
from roomcast.runtime.server import RoomcastServer


@asynccontextmanager
async def running_server(
    settings: Settings | None = None, **changes: Any
) -> AsyncIterator[RoomcastServer]:
    """Start a server on a free loopback port in this event loop; stop it afterwards.

    Defaults to the memory store; `changes` override any setting.
    """
    base = settings or Settings(store="memory://", port=0)
    server = RoomcastServer(dataclasses.replace(base, **changes))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
