"""An asyncio client for roomcast: connect, join, send, vote, and iterate over events.

    async with RoomcastClient("ws://localhost:8080/", user_id="7", name="Ann") as client:
        await client.join("2")
        await client.send("2", "What is a WebSocket?")
        async for event in client:
            if event.type == "ADD_CHAT":
                print(event.payload.name, event.payload.message)

The client reconnects by itself with exponential backoff and jitter, rejoins its rooms
with the last offset it saw, and resends messages that were not confirmed (each carries
a clientMsgId, so the server posts it once). Across a reconnect, ADD_CHAT events come
exactly once and in order: missed messages are replayed as ADD_CHAT events after the
ROOM_HISTORY that answers the resume. When the server cannot replay everything, that
ROOM_HISTORY has `recovered` False and the stream starts over from it.

The event queue is bounded; a consumer that falls behind stops the client reading,
the server eventually closes the connection as a slow consumer (4008), and the client
reconnects and resumes: nothing is lost and nothing grows without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from roomcast.core import protocol as p

__all__ = ["Event", "RoomcastClient", "StatusOut"]


class StatusOut(msgspec.Struct, frozen=True):
    """The payload of the client's own STATUS events."""

    status: str  # connecting | live | reconnecting | closed
    closeCode: int | None = None


EVENT_TYPES: dict[str, type[msgspec.Struct]] = {
    "ADD_CHAT": p.ChatOut,
    "UPDATE_CHAT": p.UpdateChatOut,
    "ROOM_HISTORY": p.HistoryOut,
    "ERROR": p.ErrorOut,
    "PRESENCE": p.PresenceOut,
    "USER_JOINED": p.UserJoinedOut,
    "USER_LEFT": p.UserLeftOut,
    "ROOM_UPDATED": p.RoomEventOut,
    "ROOM_CREATED": p.RoomEventOut,
    "ADMIN_ALERT": p.AlertOut,
    "CHAT_DELETED": p.ChatRefOut,
    "USER_MUTED": p.MutedOut,
    "AUTH_OK": p.AuthOkOut,
    "LEFT_ROOM": p.RoomIdOut,
}
_DECODERS = {kind: msgspec.json.Decoder(cls) for kind, cls in EVENT_TYPES.items()}


class _Envelope(msgspec.Struct):
    type: str
    payload: msgspec.Raw = msgspec.Raw(b"null")


_envelope = msgspec.json.Decoder(_Envelope)
_encoder = msgspec.json.Encoder()


def _frame(kind: str, payload: dict[str, Any]) -> str:
    return _encoder.encode({"type": kind, "payload": payload}).decode()


@dataclass(frozen=True, slots=True)
class Event:
    """One event from the server (payload: the typed struct for known types, else the
    decoded JSON), or the client's own STATUS event."""

    type: str
    payload: Any


@dataclass
class _Room:
    name: str
    last_offset: int | None = None
    epoch: str | None = None
    pending: dict[str, str] = field(default_factory=dict)  # clientMsgId -> text


class RoomcastClient:
    """One connection to a roomcast server, kept alive across failures."""

    def __init__(
        self,
        url: str,
        *,
        user_id: str,
        name: str,
        token: str | None = None,
        max_backoff: float = 30.0,
        queue_size: int = 10_000,
    ) -> None:
        self.url = url
        self.user_id = user_id
        self.name = name
        self.token = token
        self.max_backoff = max_backoff
        self.status = "closed"
        self._events: asyncio.Queue[Event] = asyncio.Queue(queue_size)
        self._rooms: dict[str, _Room] = {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._live = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> RoomcastClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, wait: float = 10.0) -> None:
        """Start the connection; returns once it is open (or raises TimeoutError)."""
        if self._task is None:
            self._session = aiohttp.ClientSession()
            self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._live.wait(), wait)

    async def close(self) -> None:
        """Close the connection and stop reconnecting."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        self.status = "closed"

    # ------------------------------------------------------------ commands

    async def join(self, room_id: str, name: str | None = None) -> None:
        """Join a room (and rejoin it after every reconnect)."""
        room = self._rooms.setdefault(room_id, _Room(name or self.name))
        await self._send_join(room_id, room)

    async def leave(self, room_id: str) -> None:
        self._rooms.pop(room_id, None)
        await self._send("LEAVE_ROOM", {"roomId": room_id})

    async def send(self, room_id: str, text: str) -> str:
        """Post a message; returns its clientMsgId. Sent now, or after a reconnect."""
        client_msg_id = secrets.token_hex(12)
        self._rooms[room_id].pending[client_msg_id] = text
        await self._send_chat(room_id, client_msg_id, text)
        return client_msg_id

    async def vote(self, room_id: str, chat_id: str, *, up: bool = True) -> None:
        kind = "UPVOTE_MESSAGE" if up else "UNVOTE_MESSAGE"
        await self._send(kind, {"userId": self.user_id, "roomId": room_id, "chatId": chat_id})

    async def command(self, kind: str, payload: dict[str, Any]) -> None:
        """Any other client message (admin commands, AUTH...)."""
        await self._send(kind, payload)

    # ------------------------------------------------------------ events

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            yield await self._events.get()

    async def next_event(self, kind: str | None = None, wait: float = 10.0) -> Event:
        """The next event (of type `kind`, skipping others), or TimeoutError."""
        async with asyncio.timeout(wait):
            while True:
                event = await self._events.get()
                if kind is None or event.type == kind:
                    return event

    # ------------------------------------------------------------ internals

    async def _run(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        assert self._session is not None
        while True:
            self._status("connecting" if attempt == 0 else "reconnecting")
            code = None
            try:
                async with self._session.ws_connect(
                    self.url,
                    protocols=("roomcast.v1",),
                    heartbeat=30,
                    max_msg_size=16 * 1024 * 1024,
                ) as ws:
                    self._ws = ws
                    opened = loop.time()
                    if self.token:
                        await ws.send_str(_frame("AUTH", {"token": self.token}))
                    for room_id, room in self._rooms.items():
                        await self._send_join(room_id, room)
                    self._status("live")
                    self._live.set()
                    async for message in ws:
                        if message.type is aiohttp.WSMsgType.TEXT:
                            try:
                                await self._receive(message.data)
                            except (msgspec.DecodeError, msgspec.ValidationError):
                                continue  # a frame this client version cannot read
                    code = ws.close_code
                    if loop.time() - opened > 5:
                        attempt = 0  # it was up for a while: start the backoff over
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            finally:
                self._ws = None
            self._status("reconnecting", code)
            ceiling = min(self.max_backoff, 0.5 * 2**attempt)
            attempt += 1
            await asyncio.sleep(ceiling / 2 + random.random() * ceiling / 2)

    def _status(self, status: str, code: int | None = None) -> None:
        if status != self.status:
            self.status = status
            with contextlib.suppress(asyncio.QueueFull):
                self._events.put_nowait(Event("STATUS", StatusOut(status, code)))

    async def _receive(self, data: str) -> None:
        envelope = _envelope.decode(data)
        decoder = _DECODERS.get(envelope.type)
        payload = (
            decoder.decode(envelope.payload)
            if decoder is not None
            else msgspec.json.decode(envelope.payload)
        )
        if isinstance(payload, p.HistoryOut):
            await self._history(payload)
            return
        if isinstance(payload, p.ChatOut):
            room = self._rooms.get(payload.roomId)
            if room is not None:
                if payload.clientMsgId is not None:
                    room.pending.pop(payload.clientMsgId, None)
                if room.last_offset is not None and payload.offset <= room.last_offset:
                    return  # already delivered
                room.last_offset = payload.offset
        if isinstance(payload, p.ErrorOut) and payload.clientMsgId and payload.roomId:
            room = self._rooms.get(payload.roomId)
            if room is not None:
                room.pending.pop(payload.clientMsgId, None)
        await self._events.put(Event(envelope.type, payload))

    async def _history(self, history: p.HistoryOut) -> None:
        room = self._rooms.get(history.roomId)
        await self._events.put(Event("ROOM_HISTORY", history))
        if room is None:
            return
        seen = room.last_offset
        room.epoch = history.epoch
        if history.recovered and seen is not None:
            for chat in history.messages:  # replay what was missed, as ADD_CHAT
                if chat.offset > seen:
                    await self._events.put(Event("ADD_CHAT", chat))
        room.last_offset = (
            max(seen or 0, history.lastOffset) if history.recovered else history.lastOffset
        )
        for client_msg_id, text in list(room.pending.items()):
            await self._send_chat(history.roomId, client_msg_id, text)

    async def _send_join(self, room_id: str, room: _Room) -> None:
        payload: dict[str, Any] = {"name": room.name, "userId": self.user_id, "roomId": room_id}
        if room.last_offset is not None:
            payload["since"] = room.last_offset
            payload["epoch"] = room.epoch
        await self._send("JOIN_ROOM", payload)

    async def _send_chat(self, room_id: str, client_msg_id: str, text: str) -> None:
        await self._send(
            "SEND_MESSAGE",
            {
                "userId": self.user_id,
                "roomId": room_id,
                "message": text,
                "clientMsgId": client_msg_id,
            },
        )

    async def _send(self, kind: str, payload: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return  # sent again, where it matters, after the reconnect
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await ws.send_str(_frame(kind, payload))
