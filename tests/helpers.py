"""A small real WebSocket test client and timeouts scaled for slow machines."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

SCALE = float(os.environ.get("ROOMCAST_TEST_TIMEOUT_SCALE", "1"))


def timeout(seconds: float) -> float:
    """A test timeout, multiplied by ROOMCAST_TEST_TIMEOUT_SCALE."""
    return seconds * SCALE


class Client:
    """A real WebSocket client that speaks roomcast's JSON frames."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> Client:
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
        """The next frame, which must be of type `kind`; returns its payload."""
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
        """Nothing arrives for `wait` seconds (not scaled: it is a lower bound)."""
        try:
            raw = await asyncio.wait_for(self.ws.recv(), wait)
        except TimeoutError:
            return
        raise AssertionError(f"expected nothing, got {raw!r}")

    async def join(self, room: str | int, user: str | int, name: str = "user") -> dict[str, Any]:
        await self.send("JOIN_ROOM", name=name, userId=user, roomId=room)
        return await self.expect("ROOM_HISTORY")

    async def close(self) -> None:
        await self.ws.close()
