"""A small real WebSocket test client and timeouts scaled for slow machines."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable
from typing import Any, ClassVar

import websockets
from websockets.asyncio.client import ClientConnection

SCALE = float(os.environ.get("ROOMCAST_TEST_TIMEOUT_SCALE", "1"))


def free_port(below: int = 65536) -> int:
    """A loopback port nothing listens on now (and, with `below`, a lower one): the one
    free-port helper of the test suite."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port < below:
            return port


def timeout(seconds: float) -> float:
    """A test timeout, multiplied by ROOMCAST_TEST_TIMEOUT_SCALE."""
    return seconds * SCALE


PRESENCE_TYPES = frozenset({"PRESENCE", "USER_JOINED", "USER_LEFT"})


class Client:
    """A real WebSocket client that speaks roomcast's JSON frames.

    Presence frames (PRESENCE, USER_JOINED, USER_LEFT) are skipped by `expect` and
    `expect_silence` unless a test asks for one by type, or sets `skip` to empty.
    """

    # Every client not closed yet, with its event loop: a test that fails half-way
    # leaves its clients open, and the `close_left_open` fixture closes them.
    live: ClassVar[dict[Client, asyncio.AbstractEventLoop]] = {}

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.skip: frozenset[str] = PRESENCE_TYPES
        Client.live[self] = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> Client:
        kwargs.setdefault("max_queue", None)  # tests often leave frames unread
        kwargs.setdefault("close_timeout", timeout(2))
        ws = await websockets.connect(url, open_timeout=timeout(5), **kwargs)
        return cls(ws)

    async def send(self, kind: str, **payload: Any) -> None:
        await self.ws.send(json.dumps({"type": kind, "payload": payload}))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def recv(self, wait: float = 5) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout(wait))
        assert isinstance(raw, str), f"expected a text frame, got {raw!r}"
        message: dict[str, Any] = json.loads(raw)
        return message

    async def expect(self, kind: str, wait: float = 5) -> dict[str, Any]:
        """The next frame (not skipped), which must be of type `kind`; returns its payload."""
        message = await self.recv(wait)
        while message["type"] in self.skip and message["type"] != kind:
            message = await self.recv(wait)
        assert message["type"] == kind, f"expected {kind}, got {message}"
        payload: dict[str, Any] = message["payload"]
        return payload

    async def expect_error(self, code: str, wait: float = 5) -> dict[str, Any]:
        payload = await self.expect("ERROR", wait)
        assert payload["code"] == code, payload
        assert payload["message"]
        return payload

    async def expect_silence(self, wait: float = 0.3) -> None:
        """Nothing (but skipped types) arrives for `wait` seconds (a lower bound: not scaled)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (left := deadline - loop.time()) > 0:
            try:
                raw = await asyncio.wait_for(self.ws.recv(), left)
            except TimeoutError:
                return
            assert isinstance(raw, str)
            if json.loads(raw)["type"] not in self.skip:
                raise AssertionError(f"expected nothing, got {raw!r}")

    async def join(self, room: str | int, user: str | int, name: str = "user") -> dict[str, Any]:
        await self.send("JOIN_ROOM", name=name, userId=user, roomId=room)
        return await self.expect("ROOM_HISTORY")

    async def read_until_closed(self, wait: float = 5) -> tuple[list[dict[str, Any]], int | None]:
        """Every frame until the server closes; and the close code it sent."""
        frames: list[dict[str, Any]] = []
        try:
            while True:
                frames.append(await self.recv(wait))
        except websockets.ConnectionClosed as closed:
            return frames, None if closed.rcvd is None else closed.rcvd.code

    async def close(self) -> None:
        Client.live.pop(self, None)
        await self.ws.close()


async def wait_until(predicate: Callable[[], bool], seconds: float = 5) -> bool:
    """Poll `predicate` every 10 ms for up to `seconds` (scaled); its last value."""
    for _ in range(int(timeout(seconds) * 100)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()
