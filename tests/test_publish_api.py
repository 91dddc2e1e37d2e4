"""The backend HTTP API: publishing into rooms (with idempotency), history pages, batches."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from roomcast.runtime.server import RoomcastServer
from roomcast.testing import TEST_ADMIN_TOKEN, running_server
from tests.helpers import Client

API_KEY = "backend-api-key-for-tests"


@pytest.fixture
async def api() -> AsyncIterator[tuple[RoomcastServer, aiohttp.ClientSession, str]]:
    async with running_server(api_key=API_KEY) as srv, aiohttp.ClientSession() as session:
        yield srv, session, f"http://127.0.0.1:{srv.port}"


async def call(
    api: tuple[RoomcastServer, aiohttp.ClientSession, str],
    method: str,
    path: str,
    body: Any = None,
    token: str | None = API_KEY,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    _, session, base = api
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body)
    async with session.request(method, base + path, data=data, headers=h) as response:
        return response.status, await response.json(), response.headers


async def test_publish_reaches_members_and_retries_post_once(
    api: tuple[RoomcastServer, aiohttp.ClientSession, str],
) -> None:
    """POST .../messages broadcasts ADD_CHAT; the same Idempotency-Key posts once."""
    server = api[0]
    member = await Client.connect(server.url)
    await member.join("prices", "watcher")
    status, chat, _ = await call(
        api,
        "POST",
        "/api/rooms/prices/messages",
        {"name": "ticker", "message": "ACME 101.5"},
        headers={"Idempotency-Key": "tick-1"},
    )
    assert status == 201
    assert (chat["name"], chat["userId"], chat["message"], chat["offset"]) == (
        "ticker",
        "api:ticker",
        "ACME 101.5",
        1,
    )
    assert await member.expect("ADD_CHAT") == chat
    status, again, headers = await call(
        api,
        "POST",
        "/api/rooms/prices/messages",
        {"name": "ticker", "message": "ACME 101.5"},
        headers={"Idempotency-Key": "tick-1"},
    )
    assert (status, again, headers["Idempotent-Replayed"]) == (200, chat, "true")
    await member.expect_silence()
    await member.close()


async def test_admin_token_also_publishes(
    api: tuple[RoomcastServer, aiohttp.ClientSession, str],
) -> None:
    """The admin token is accepted where the API key is."""
    status, _, _ = await call(
        api,
        "POST",
        "/api/rooms/r/messages",
        {"name": "bot", "message": "hi"},
        token=TEST_ADMIN_TOKEN,
    )
    assert status == 201


async def test_history_pages(api: tuple[RoomcastServer, aiohttp.ClientSession, str]) -> None:
    """GET .../messages?since=&limit= pages through the history in offset order."""
    for i in range(7):
        await call(api, "POST", "/api/rooms/h/messages", {"name": "bot", "message": f"m{i}"})
    seen, since = [], 0
    while True:
        status, page, _ = await call(api, "GET", f"/api/rooms/h/messages?since={since}&limit=3")
        assert status == 200
        assert page["lastOffset"] == 7
        seen += [m["message"] for m in page["messages"]]
        if since == page["nextSince"]:
            break
        since = page["nextSince"]
    assert seen == [f"m{i}" for i in range(7)]
    status, newest, _ = await call(api, "GET", "/api/rooms/h/messages?limit=2")
    assert [m["offset"] for m in newest["messages"]] == [6, 7]


async def test_batch_publish(api: tuple[RoomcastServer, aiohttp.ClientSession, str]) -> None:
    """POST /api/messages publishes to several rooms; each item gets its own result."""
    status, body, _ = await call(
        api,
        "POST",
        "/api/messages",
        {
            "messages": [
                {"roomId": "a", "name": "bot", "message": "to a", "idempotencyKey": "k1"},
                {"roomId": 7, "name": "bot", "message": "to 7"},
                {"roomId": "a", "name": "bot", "message": "   "},
                {"roomId": "a", "name": "bot", "message": "to a", "idempotencyKey": "k1"},
            ]
        },
    )
    assert status == 200
    statuses = [r["status"] for r in body["results"]]
    assert statuses == [201, 201, 422, 200]
    assert body["results"][1]["message"]["roomId"] == "7"
    assert body["results"][3]["message"] == body["results"][0]["message"]


@pytest.mark.parametrize(
    ("method", "path", "body", "token", "status", "code"),
    [
        ("POST", "/api/rooms/r/messages", {"name": "b", "message": "x"}, None, 401, "unauthorized"),
        ("POST", "/api/rooms/r/messages", {"name": "b", "message": "x"}, "wrong", 403, "forbidden"),
        ("POST", "/api/rooms/r/messages", {"name": "b"}, API_KEY, 422, "invalid_payload"),
        (
            "POST",
            "/api/rooms/r/messages",
            {"name": "b", "message": "x" * 2001},
            API_KEY,
            422,
            "message_too_long",
        ),
        (
            "GET",
            "/api/rooms/r/messages?since=99999999999999999999999",
            None,
            API_KEY,
            422,
            "invalid_payload",
        ),
        (
            "POST",
            "/api/rooms/" + "x" * 65 + "/messages",
            {"name": "b", "message": "x"},
            API_KEY,
            422,
            "invalid_payload",
        ),
        ("GET", "/api/rooms/none/messages", None, API_KEY, 404, "room_not_found"),
        ("GET", "/api/rooms/r/messages?limit=0", None, API_KEY, 422, "invalid_payload"),
        ("GET", "/api/rooms/r/messages?since=-1", None, API_KEY, 422, "invalid_payload"),
        ("GET", "/api/rooms/r/messages", None, None, 401, "unauthorized"),
        ("POST", "/api/messages", {"messages": []}, API_KEY, 422, "invalid_payload"),
    ],
)
async def test_publish_api_errors(
    api: tuple[RoomcastServer, aiohttp.ClientSession, str],
    method: str,
    path: str,
    body: Any,
    token: str | None,
    status: int,
    code: str,
) -> None:
    """Refusals are JSON errors with the right status."""
    await call(api, "POST", "/api/rooms/r/messages", {"name": "seed", "message": "seed"})
    got, error, _ = await call(api, method, path, body, token=token)
    assert (got, error["error"]["code"]) == (status, code)


async def test_managed_rooms_refuse_publishing_to_unknown_rooms() -> None:
    """With --rooms managed, publishing to a room no admin created is 404."""
    async with (
        running_server(rooms="managed", api_key=API_KEY) as srv,
        aiohttp.ClientSession() as s,
    ):
        response = await s.post(
            f"http://127.0.0.1:{srv.port}/api/rooms/x/messages",
            json={"name": "b", "message": "m"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert response.status == 404
        response.release()
