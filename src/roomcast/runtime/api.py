"""The HTTP API under /api: rooms, for admins and for anyone reading room metadata.

Errors are JSON, `{"error": {"code": ..., "message": ...}}`, with the status that fits:
400 malformed JSON, 401 no token, 403 wrong token, 404 unknown room, 409 room exists,
422 invalid fields. The OpenAPI document is served at /api/openapi.json.
"""

from __future__ import annotations

import asyncio
import importlib.resources
from typing import Annotated, Any, TypeVar

import msgspec
from aiohttp import web

from roomcast.core.errors import ClientError, ErrorCode, StoreError, StoreOverloaded
from roomcast.core.protocol import (
    JS_SAFE_MAX,
    MAX_ID_CHARS,
    BatchPublish,
    ChatOut,
    CreateRoom,
    PublishMessage,
    UpdateRoom,
    normalize_id,
)
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
    ErrorCode.MESSAGE_EMPTY: 422,
    ErrorCode.MESSAGE_TOO_LONG: 422,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.UNAVAILABLE: 503,
}

_json = msgspec.json.Encoder()
T = TypeVar("T")


class HistoryQuery(msgspec.Struct, frozen=True):
    since: Annotated[int, msgspec.Meta(ge=0, le=JS_SAFE_MAX)] | None = None  # None: newest page
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


def _respond(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json")


def _room_id(request: web.Request) -> str:
    """The room id in the path, held to the same rule as everywhere: 1 to 64 characters."""
    room_id = request.match_info["room_id"]
    if not 0 < len(room_id) <= MAX_ID_CHARS:
        raise ClientError(
            ErrorCode.INVALID_PAYLOAD, f"room ids have 1 to {MAX_ID_CHARS} characters"
        )
    return room_id


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
            web.post("/api/rooms/{room_id}/messages", self.publish),
            web.get("/api/rooms/{room_id}/messages", self.history),
            web.post("/api/messages", self.publish_batch),
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

    def _require_admin(self, request: web.Request, *, api_key: bool = False) -> None:
        """The admin token, or (with `api_key`) the backend API key, as a Bearer token."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise ClientError(ErrorCode.UNAUTHORIZED, "send Authorization: Bearer <token>")
        token = token.strip()
        settings = self.node.settings
        if scheme.lower() == "bearer" and (
            token_matches(token, settings.admin_token)
            or (api_key and token_matches(token, settings.api_key))
        ):
            return
        raise ClientError(ErrorCode.FORBIDDEN, "that token does not allow this")

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

    async def list_rooms(self, request: web.Request) -> web.Response:
        rooms = await self.node.store.list_rooms()
        return _respond({"rooms": [self.node.room_out(r) for r in rooms]})

    async def get_room(self, request: web.Request) -> web.Response:
        room = await self.node.room(_room_id(request))
        return _respond(self.node.room_out(room))

    async def create_room(self, request: web.Request) -> web.Response:
        self._require_admin(request)
        body = await self._body(request)
        try:
            command = msgspec.convert(body, CreateRoom)
        except msgspec.ValidationError as exc:
            raise ClientError(ErrorCode.INVALID_PAYLOAD, str(exc)) from None
        room = await self.node.moderation.create_room(command)
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
        room = await self.node.moderation.update_room(command)
        return _respond(self.node.room_out(room))

    async def auth(self, request: web.Request) -> web.Response:
        """200 {"admin": true} for the admin token; 401 or 403 otherwise."""
        self._require_admin(request)
        return _respond({"admin": True})

    def _convert(self, body: Any, kind: type[T]) -> T:
        try:
            return msgspec.convert(body, kind)
        except msgspec.ValidationError as exc:
            raise ClientError(ErrorCode.INVALID_PAYLOAD, str(exc)) from None

    def _check_text(self, text: str) -> None:
        limit = self.node.settings.max_message_chars
        if not text.strip():
            raise ClientError(ErrorCode.MESSAGE_EMPTY, "message is empty")
        if len(text) > limit:
            raise ClientError(ErrorCode.MESSAGE_TOO_LONG, f"message is over {limit} characters")

    async def _publish_one(
        self, room_id: str, name: str, text: str, user_id: str | int | None, key: str | None
    ) -> tuple[ChatOut, bool]:
        self._check_text(text)
        user = f"api:{name}" if user_id is None else normalize_id(user_id)
        return await self.node.publish_as(room_id, user, name, text, key)

    async def publish(self, request: web.Request) -> web.Response:
        """POST /api/rooms/{roomId}/messages, with an optional Idempotency-Key."""
        self._require_admin(request, api_key=True)
        command = self._convert(await self._body(request), PublishMessage)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 0 < len(key) <= 64:
            raise ClientError(ErrorCode.INVALID_PAYLOAD, "Idempotency-Key: 1 to 64 characters")
        chat, replayed = await self._publish_one(
            _room_id(request), command.name, command.message, command.userId, key
        )
        response = _respond(chat, 200 if replayed else 201)
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response

    async def publish_batch(self, request: web.Request) -> web.Response:
        """POST /api/messages: many messages; each answered in order, 201 or an error."""
        self._require_admin(request, api_key=True)
        batch = self._convert(await self._body(request), BatchPublish)
        results: list[dict[str, Any]] = []
        for item in batch.messages:
            try:
                chat, replayed = await self._publish_one(
                    normalize_id(item.roomId),
                    item.name,
                    item.message,
                    item.userId,
                    item.idempotencyKey,
                )
            except ClientError as exc:
                results.append(
                    {
                        "status": _STATUS.get(exc.code, 400),
                        "error": {"code": exc.code.value, "message": exc.message},
                    }
                )
            except StoreError as exc:  # the earlier items stand; this one did not happen
                code = (
                    ErrorCode.OVERLOADED
                    if isinstance(exc, StoreOverloaded)
                    else ErrorCode.UNAVAILABLE
                )
                results.append({"status": 503, "error": {"code": code.value, "message": str(exc)}})
            else:
                results.append({"status": 200 if replayed else 201, "message": chat})
        return _respond({"results": results})

    async def history(self, request: web.Request) -> web.Response:
        """GET /api/rooms/{roomId}/messages?since=OFFSET&limit=N: a page of history."""
        self._require_admin(request, api_key=True)
        room_id = _room_id(request)
        query = {k: request.query[k] for k in ("since", "limit") if k in request.query}
        try:
            page = msgspec.convert(query, HistoryQuery, strict=False)
        except msgspec.ValidationError as exc:
            raise ClientError(ErrorCode.INVALID_PAYLOAD, str(exc)) from None
        info = await self.node.room(room_id)
        found = await self.node.store.history(room_id, page.limit, after=page.since)
        messages = [self.node.chat_out(m, info) for m in found.messages]
        next_since = messages[-1].offset if messages else (page.since or found.last_offset)
        return _respond(
            {
                "roomId": room_id,
                "messages": messages,
                "lastOffset": found.last_offset,
                "nextSince": next_since,
                "complete": found.complete,
                "epoch": found.epoch or self.node.store.epoch,
            }
        )

    async def openapi(self, request: web.Request) -> web.Response:
        doc = importlib.resources.files("roomcast").joinpath("static", "openapi.json")
        return web.Response(body=doc.read_bytes(), content_type="application/json")
