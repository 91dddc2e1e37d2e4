"""Bare broadcast servers for the transport benchmark, one per WebSocket library.

All three speak the same minimal JSON room protocol:

* ``{"type":"JOIN_ROOM","payload":{"name":..,"userId":..,"roomId":..}}`` joins a room and
  is answered, to the joiner alone, with ``{"type":"ROOM_HISTORY","payload":{"roomId":..,
  "messages":[]}}`` (the least a join acknowledgement can be: no history, no presence);
* ``{"type":"SEND_MESSAGE","payload":{"userId":..,"roomId":..,"message":..}}`` makes the
  server send ``{"type":"ADD_CHAT","payload":{"chatId":..,"roomId":..,"message":..,
  "name":..,"upvotes":0}}`` to every member of the room (the sender included).

The JSON is encoded once per message (msgspec) and each library sends it the way its docs
recommend for broadcasting: ``websockets.broadcast``, an ``await ws.send_str`` loop for
aiohttp, a ``WSTransport.send`` loop for picows. Listens on 127.0.0.1 only and prints
``READY <port>`` when it accepts connections. Stop it with SIGTERM (its default action).
``--lib roomcast`` serves roomcast itself with the benchmark's limits lifted.

    python bench/servers.py --lib picows --uvloop --port 8765

(`roomcast bench fanout --baseline aiohttp` starts one next to the server it measures.)
They are not part of the roomcast package, which imports no other WebSocket server: run
from a checkout, with picows and websockets from `pip install 'roomcast[bench]'`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import msgspec

HOST = "127.0.0.1"


class JoinPayload(msgspec.Struct):
    name: str
    userId: str
    roomId: str


class JoinRoom(msgspec.Struct, tag_field="type", tag="JOIN_ROOM"):
    payload: JoinPayload


class SendPayload(msgspec.Struct):
    userId: str
    roomId: str
    message: str


class SendMessage(msgspec.Struct, tag_field="type", tag="SEND_MESSAGE"):
    payload: SendPayload


class AddChatPayload(msgspec.Struct):
    chatId: str
    roomId: str
    message: str
    name: str
    upvotes: int


class AddChat(msgspec.Struct, tag_field="type", tag="ADD_CHAT"):
    payload: AddChatPayload


class HistoryPayload(msgspec.Struct):
    roomId: str
    messages: list[str]


class RoomHistory(msgspec.Struct, tag_field="type", tag="ROOM_HISTORY"):
    payload: HistoryPayload


_decoder = msgspec.json.Decoder(JoinRoom | SendMessage)
_encoder = msgspec.json.Encoder()

Conn = TypeVar("Conn")


class Rooms(Generic[Conn]):
    """Room membership and the protocol logic shared by the three servers."""

    def __init__(self) -> None:
        self.rooms: dict[str, set[Conn]] = {}
        self.names: dict[Conn, tuple[str, str]] = {}  # connection -> (name, roomId)
        self.last_chat_id = 0

    def handle(self, conn: Conn, raw: bytes | str) -> tuple[set[Conn], bytes] | None:
        """Apply one client message; return (recipients, encoded frame) to send: the
        joiner and ROOM_HISTORY for a join, the room and ADD_CHAT for a message."""
        try:
            msg = _decoder.decode(raw)
        except msgspec.DecodeError:  # also ValidationError: unknown type, bad fields
            return None
        if isinstance(msg, JoinRoom):
            self.leave(conn)
            self.names[conn] = (msg.payload.name, msg.payload.roomId)
            self.rooms.setdefault(msg.payload.roomId, set()).add(conn)
            return {conn}, _encoder.encode(RoomHistory(HistoryPayload(msg.payload.roomId, [])))
        joined = self.names.get(conn)
        members = self.rooms.get(msg.payload.roomId)
        if joined is None or not members:
            return None
        self.last_chat_id += 1
        chat = AddChatPayload(
            str(self.last_chat_id), msg.payload.roomId, msg.payload.message, joined[0], 0
        )
        return members, _encoder.encode(AddChat(chat))

    def leave(self, conn: Conn) -> None:
        joined = self.names.pop(conn, None)
        if joined is not None:
            members = self.rooms.get(joined[1])
            if members is not None:
                members.discard(conn)
                if not members:
                    del self.rooms[joined[1]]


def ready(port: int) -> None:
    print(f"READY {port} pid={os.getpid()}", flush=True)


async def serve_websockets(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    rooms: Rooms[ServerConnection] = Rooms()

    async def handler(ws: ServerConnection) -> None:
        try:
            async for raw in ws:
                out = rooms.handle(ws, raw)
                if out is not None:
                    broadcast(out[0], out[1], text=True)
        finally:
            rooms.leave(ws)

    async with serve(handler, HOST, port) as server:
        ready(port)
        await server.serve_forever()


async def serve_aiohttp(port: int) -> None:
    from aiohttp import WSMsgType, web

    rooms: Rooms[web.WebSocketResponse] = Rooms()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                out = rooms.handle(ws, msg.data)
                if out is None:
                    continue
                text = out[1].decode()
                for member in tuple(out[0]):  # send_str may await: copy the room first
                    try:  # noqa: SIM105 - contextlib.suppress costs more per delivery
                        await member.send_str(text)
                    except ConnectionResetError:
                        pass
        finally:
            rooms.leave(ws)
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    ready(port)
    await asyncio.Event().wait()


async def serve_picows(port: int) -> None:
    from picows import (
        WSFrame,
        WSListener,
        WSMsgType,
        WSTransport,
        WSUpgradeRequest,
        ws_create_server,
    )

    rooms: Rooms[WSTransport] = Rooms()

    class Client(WSListener):
        def on_ws_disconnected(self, transport: WSTransport) -> None:
            rooms.leave(transport)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.TEXT:
                out = rooms.handle(transport, frame.get_payload_as_bytes())
                if out is not None:
                    for member in out[0]:
                        member.send(WSMsgType.TEXT, out[1])
            elif frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()

    def listener_factory(_request: WSUpgradeRequest) -> WSListener:
        return Client()

    server = await ws_create_server(listener_factory, HOST, port)
    ready(port)
    await server.serve_forever()


async def serve_roomcast(port: int) -> None:
    """roomcast itself, with the limits a benchmark would trip lifted: the memory store,
    no rate limit, no per-address cap, no presence broadcasts to the crowd."""
    from roomcast.config import Settings
    from roomcast.runtime.server import RoomcastServer

    settings = Settings(
        host=HOST,
        port=port,
        store="memory://",
        admin_token="bench",
        max_message_rate=1e9,
        message_burst=10**9,
        max_connections_per_ip=1_000_000,
        presence_broadcast_max=10,
        drain_time=0.0,
    )
    from roomcast.cli import freeze_startup, tune_gc

    tune_gc(settings.gc_threshold)  # as `roomcast serve` does
    server = RoomcastServer(settings)
    await server.start()
    freeze_startup()
    ready(port)
    await asyncio.Event().wait()


SERVERS: dict[str, Callable[[int], Coroutine[Any, Any, None]]] = {
    "roomcast": serve_roomcast,
    "websockets": serve_websockets,
    "aiohttp": serve_aiohttp,
    "picows": serve_picows,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", choices=sorted(SERVERS), required=True)
    parser.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    coro = SERVERS[args.lib](args.port)
    if args.uvloop:
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


if __name__ == "__main__":
    main()
