"""CLI commands that talk to a running server: send, tail, rooms."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec

from roomcast.client import RoomcastClient


def _token(given: str | None) -> str:
    return given or os.environ.get("ROOMCAST_API_KEY") or os.environ.get("ROOMCAST_ADMIN_TOKEN", "")


def ws_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "/ws", "", ""))


async def _request(
    method: str,
    url: str,
    path: str,
    token: str | None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    sent = dict(headers or {})
    if token := _token(token):
        sent["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url.rstrip("/") + path, json=body, headers=sent) as response,
    ):
        return response.status, await response.json(content_type=None)


def _report(status: int, body: Any) -> int:
    if status >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        code, message = error.get("code", ""), error.get("message", body)
        print(f"roomcast: {status} {code}: {message}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2, ensure_ascii=False))
    return 0


async def send(url: str, room: str, text: str, name: str, token: str | None) -> int:
    """`roomcast send ROOM TEXT`: publish through the HTTP API. Network errors are
    retried with the same Idempotency-Key, so the message is posted once."""
    key = secrets.token_hex(12)
    for attempt in range(3):
        try:
            status, body = await _request(
                "POST",
                url,
                f"/api/rooms/{room}/messages",
                token,
                {"name": name, "message": text},
                {"Idempotency-Key": key},
            )
        except aiohttp.ClientError as exc:
            if attempt == 2:
                print(f"roomcast: {exc}", file=sys.stderr)
                return 1
            await asyncio.sleep(0.5 * 2**attempt)
            continue
        return _report(status, body)
    return 1


async def tail(url: str, room: str, as_json: bool, token: str | None, count: int | None) -> int:
    """`roomcast tail ROOM`: print a room's messages live, reconnecting as needed."""
    client = RoomcastClient(
        ws_url(url), user_id=f"tail-{secrets.token_hex(4)}", name="tail", token=token or None
    )
    printed = 0
    try:
        await client.connect()
        await client.join(room)
        async for event in client:
            chats = []
            if event.type == "ADD_CHAT":
                chats = [event.payload]
            elif event.type == "ROOM_HISTORY" and not event.payload.recovered:
                chats = event.payload.messages
            if as_json:
                line = msgspec.json.encode({"type": event.type, "payload": event.payload})
                print(line.decode(), flush=True)
            else:
                for chat in chats:
                    print(f"[{chat.offset}] {chat.name}: {chat.message}", flush=True)
                if event.type == "STATUS":
                    print(f"-- {event.payload.status}", file=sys.stderr, flush=True)
                elif event.type == "ERROR":
                    print(
                        f"-- error {event.payload.code}: {event.payload.message}", file=sys.stderr
                    )
            printed += len(chats)
            if count is not None and printed >= count:
                return 0
    except TimeoutError:
        print(f"roomcast: cannot connect to {url}", file=sys.stderr)
        return 1
    finally:
        await client.close()
    return 0


async def rooms(
    url: str, action: str, token: str | None, fields: dict[str, Any], room: str | None
) -> int:
    """`roomcast rooms [list|create|update]`."""
    try:
        if action == "list":
            return _report(*await _request("GET", url, "/api/rooms", token))
        if action == "create":
            return _report(*await _request("POST", url, "/api/rooms", token, fields))
        return _report(*await _request("PATCH", url, f"/api/rooms/{room}", token, fields))
    except aiohttp.ClientError as exc:
        print(f"roomcast: {exc}", file=sys.stderr)
        return 1
