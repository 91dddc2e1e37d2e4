"""The HTTP API under /api: rooms, for admins and for anyone reading room metadata.

Errors are JSON, `{"error": {"code": ..., "message": ...}}`, with the status that fits:
400 malformed JSON, 401 no token, 403 wrong token, 404 unknown room, 409 room exists,
422 invalid fields. The OpenAPI document is served at /api/openapi.json.
"""

from __future__ import annotations

import asyncio
import importlib.resources
from typing import Any

import msgspec
from aiohttp import web

from roomcast.core.errors import ClientError, ErrorCode, StoreError, StoreOverloaded
from roomcast.core.protocol import CreateRoom, RoomOut, UpdateRoom
from roomcast.runtime.node import Node
from roomcast.runtime.session import token_matches

_STATUS = {
    ErrorCode.BAD_JSON: 400,
    ErrorCode.BAD_MESSAGE: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.ROOM_NOT_FOUND: 404,
    ErrorCode.ROOM_EXISTS: 409,
    ErrorCode.TOO_MANY_CONNECTIONS: 429,
    ErrorCode.INVALID_PAYLOAD: 422,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.UNAVAILABLE: 503,
}

_json = msgspec.json.Encoder()


def _respond(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json")


def error_response(code: ErrorCode, message: str) -> web.Response:
    status = _STATUS.get(code, 400)
    response = _respond({"error": {"code": code.value, "message": message}}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="roomcast"'
    return response


class RoomsAPI:
    """Request handlers bound to one node."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/rooms", self.list_rooms),
            web.post("/api/rooms", self.create_room),
            web.get("/api/rooms/{room_id}", self.get_room),
            web.patch("/api/rooms/{room_id}", self.update_room),
            web.get("/api/openapi.json", self.openapi),
            web.get("/api/auth", self.auth),
        ]

    @web.middleware
    async def errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except ClientError as exc:
            return error_response(exc.code, exc.message)
        except StoreOverloaded:
            return error_response(ErrorCode.OVERLOADED, "the server is busy; retry later")
        except StoreError:
            return error_response(ErrorCode.UNAVAILABLE, "storage failed; nothing was done")

    def _require_admin(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise ClientError(ErrorCode.UNAUTHORIZED, "send Authorization: Bearer <admin token>")
        if scheme.lower() != "bearer" or not token_matches(
            token.strip(), self.node.settings.admin_token
        ):
            raise ClientError(ErrorCode.FORBIDDEN, "that token is not an admin token")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:  # a body that trickles in is cut off like a slow request line
            raw = await asyncio.wait_for(
                request.read(), timeout=self.node.settings.handshake_timeout
            )
        except TimeoutError:
            raise ClientError(ErrorCode.BAD_MESSAGE, "the request body took too long") from None
        try:
            body = msgspec.json.decode(raw)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise ClientError(ErrorCode.BAD_JSON, f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ClientError(ErrorCode.BAD_MESSAGE, "body must be a JSON object")
        return body

    def _out(self, room: RoomOut) -> dict[str, Any]:
        return msgspec.structs.asdict(room)

    async def list_rooms(self, request: web.Request) -> web.Response:
        rooms = await self.node.store.list_rooms()
        return _respond({"rooms": [self.node.room_out(r) for r in rooms]})

    async def get_room(self, request: web.Request) -> web.Response:
        room = await self.node.room(request.match_info["room_id"])
        return _respond(self.node.room_out(room))

    async def create_room(self, request: web.Request) -> web.Response:
        self._require_admin(request)
        body = await self._body(request)
        try:
            command = msgspec.convert(body, CreateRoom)
        except msgspec.ValidationError as exc:
            raise ClientError(ErrorCode.INVALID_PAYLOAD, str(exc)) from None
        room = await self.node.create_room(command)
        response = _respond(self.node.room_out(room), 201)
        response.headers["Location"] = f"/api/rooms/{room.room_id}"
        return response

    async def update_room(self, request: web.Request) -> web.Response:
        self._require_admin(request)
        body = await self._body(request)
        body["roomId"] = request.match_info["room_id"]
        try:
            command = msgspec.convert(body, UpdateRoom)
        except msgspec.ValidationError as exc:
            raise ClientError(ErrorCode.INVALID_PAYLOAD, str(exc)) from None
        room = await self.node.update_room(command)
        return _respond(self.node.room_out(room))

    async def auth(self, request: web.Request) -> web.Response:
        """200 {"admin": true} for the admin token; 401 or 403 otherwise."""
        self._require_admin(request)
        return _respond({"admin": True})

    async def openapi(self, request: web.Request) -> web.Response:
        doc = importlib.resources.files("roomcast").joinpath("static", "openapi.json")
        return web.Response(body=doc.read_bytes(), content_type="application/json")
