"""The HTTP API, over real HTTP on the server's one port."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from roomcast.runtime.server import RoomcastServer
from roomcast.testing import TEST_ADMIN_TOKEN, running_server
from tests.helpers import Client

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}


@pytest.fixture
async def http(server: RoomcastServer) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    async with aiohttp.ClientSession() as session:
        yield session, f"http://127.0.0.1:{server.port}"


async def call(
    http: tuple[aiohttp.ClientSession, str],
    method: str,
    path: str,
    *,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    session, base = http
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    async with session.request(method, base + path, data=data, headers=headers) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def test_create_get_list_update(http: tuple[aiohttp.ClientSession, str]) -> None:
    """An admin creates a room (201), anyone reads it, the admin changes it."""
    status, room = await call(
        http,
        "POST",
        "/api/rooms",
        body={
            "roomId": 7,
            "name": "Physics 101",
            "startTime": "2026-11-25T18:00:00+01:00",
            "cooldownSeconds": 10,
            "mediumThreshold": 2,
            "highThreshold": 5,
        },
        headers=ADMIN,
    )
    assert status == 201
    assert room == {
        "roomId": "7",
        "name": "Physics 101",
        "startTime": "2026-11-25T17:00:00Z",
        "isOpen": True,
        "cooldownSeconds": 10.0,
        "mediumThreshold": 2,
        "highThreshold": 5,
        "state": room["state"],
        "memberCount": 0,
    }
    assert (await call(http, "GET", "/api/rooms/7")) == (200, room)
    status, listing = await call(http, "GET", "/api/rooms")
    assert status == 200
    assert [r["roomId"] for r in listing["rooms"]] == ["7"]
    status, changed = await call(
        http, "PATCH", "/api/rooms/7", body={"isOpen": False, "startTime": None}, headers=ADMIN
    )
    assert status == 200
    assert (changed["isOpen"], changed["startTime"], changed["state"]) == (False, None, "closed")
    assert changed["cooldownSeconds"] == 10.0
    status, generated = await call(http, "POST", "/api/rooms", body={"name": "Anon"}, headers=ADMIN)
    assert status == 201
    assert generated["roomId"]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code"),
    [
        ("POST", "/api/rooms", {"name": "x"}, {}, 401, "unauthorized"),
        ("POST", "/api/rooms", {"name": "x"}, {"Authorization": "Bearer nope"}, 403, "forbidden"),
        ("POST", "/api/rooms", {"name": "x"}, {"Authorization": "Basic abc"}, 403, "forbidden"),
        ("PATCH", "/api/rooms/r", {"isOpen": False}, {}, 401, "unauthorized"),
        ("POST", "/api/rooms", b"{nope", ADMIN, 400, "bad_json"),
        ("POST", "/api/rooms", b'{"name": NaN}', ADMIN, 400, "bad_json"),
        ("POST", "/api/rooms", [1, 2], ADMIN, 400, "bad_message"),
        ("POST", "/api/rooms", {}, ADMIN, 422, "invalid_payload"),
        (
            "POST",
            "/api/rooms",
            {"name": "x", "highThreshold": "ten"},
            ADMIN,
            422,
            "invalid_payload",
        ),
        ("POST", "/api/rooms", {"name": "x", "cooldownSeconds": -1}, ADMIN, 422, "invalid_payload"),
        (
            "POST",
            "/api/rooms",
            {"name": "x", "startTime": "2026-11-25T18:00:00"},
            ADMIN,
            422,
            "invalid_payload",
        ),
        (
            "POST",
            "/api/rooms",
            {"name": "x", "mediumThreshold": 5, "highThreshold": 4},
            ADMIN,
            422,
            "invalid_payload",
        ),
        ("GET", "/api/rooms/missing", None, {}, 404, "room_not_found"),
        ("PATCH", "/api/rooms/missing", {"isOpen": False}, ADMIN, 404, "room_not_found"),
    ],
)
async def test_errors_are_json_with_the_right_status(
    http: tuple[aiohttp.ClientSession, str],
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    """Every refusal is JSON {error: {code, message}} with its HTTP status."""
    raw = body if isinstance(body, bytes) else None
    got_status, got = await call(
        http, method, path, body=None if raw else body, raw=raw, headers=headers
    )
    assert got_status == status
    assert got["error"]["code"] == code
    assert got["error"]["message"]


async def test_duplicate_room_is_409(http: tuple[aiohttp.ClientSession, str]) -> None:
    """Creating a room whose id is taken is 409 Conflict."""
    assert (
        await call(http, "POST", "/api/rooms", body={"roomId": "d", "name": "D"}, headers=ADMIN)
    )[0] == 201
    status, error = await call(
        http, "POST", "/api/rooms", body={"roomId": "d", "name": "D"}, headers=ADMIN
    )
    assert (status, error["error"]["code"]) == (409, "room_exists")


async def test_patch_pushes_room_updated_to_members(
    server: RoomcastServer, http: tuple[aiohttp.ClientSession, str]
) -> None:
    """A PATCH reaches the room's WebSocket members as ROOM_UPDATED."""
    member = await Client.connect(server.url)
    try:
        await member.join("live", "u")
        status, _ = await call(
            http, "PATCH", "/api/rooms/live", body={"cooldownSeconds": 5}, headers=ADMIN
        )
        assert status == 200
        pushed = await member.expect("ROOM_UPDATED")
        assert pushed["room"]["cooldownSeconds"] == 5.0
        assert pushed["room"]["memberCount"] == 1
    finally:
        await member.close()


async def test_openapi_document(http: tuple[aiohttp.ClientSession, str]) -> None:
    """/api/openapi.json is an OpenAPI 3.1 document naming every endpoint."""
    status, doc = await call(http, "GET", "/api/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]["/api/rooms"]) == {"get", "post"}
    assert {"get", "patch"} <= set(doc["paths"]["/api/rooms/{roomId}"])


async def test_managed_mode_http() -> None:
    """In managed mode an unknown room is 404 over HTTP too."""
    async with running_server(rooms="managed") as srv, aiohttp.ClientSession() as session:
        response = await session.get(f"http://127.0.0.1:{srv.port}/api/rooms/x")
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "room_not_found"
        response.release()
