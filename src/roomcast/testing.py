"""Helpers for tests of roomcast and of applications that embed it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from roomcast.config import Settings
from roomcast.runtime.server import RoomcastServer

TEST_ADMIN_TOKEN = "test-admin-token"


class ManualClock:
    """A clock for tests: `time.time()`-like seconds that move only when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@asynccontextmanager
async def running_server(
    settings: Settings | None = None,
    *,
    clock: Callable[[], float] = time.time,
    echo_path: str | None = None,
    **changes: Any,
) -> AsyncIterator[RoomcastServer]:
    """Start a server on a free loopback port in this event loop; stop it afterwards.

    Defaults to the memory store and the admin token TEST_ADMIN_TOKEN; `changes`
    override any setting; `clock` replaces the node's clock (see ManualClock).
    """
    base = settings or Settings(
        store="memory://", port=0, admin_token=TEST_ADMIN_TOKEN, drain_time=0.0
    )
    server = RoomcastServer(dataclasses.replace(base, **changes), clock=clock, echo_path=echo_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
