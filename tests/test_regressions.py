"""Behaviours a review found wrong once, kept right."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from roomcast.adapters.sqlite import SqliteStore
from roomcast.core.errors import StoreError
from roomcast.core.tokens import mint
from roomcast.testing import TEST_ADMIN_TOKEN, running_server
from tests.helpers import Client

SECRET = "a-test-secret-that-is-at-least-32-bytes-long"


async def test_a_failing_sqlite_operation_does_not_stop_the_store(tmp_path: Path) -> None:
    """An operation that raises something other than a SQLite error fails alone; the
    worker thread lives on and later calls are answered."""
    store = SqliteStore(str(tmp_path / "s.db"))
    await store.open()
    bad = store._submit(lambda conn: conn.execute("SELECT ?", (2**80,)))
    good = store.append("r", "u", "n", "still works")
    results = await asyncio.gather(bad, good, return_exceptions=True)
    assert isinstance(results[0], StoreError)
    assert results[1].message.offset == 1  # type: ignore[union-attr]
    await store.ping()
    await store.close()


async def test_retrying_a_deleted_message_obeys_mutes_and_closed_rooms() -> None:
    """A retry (same clientMsgId) skips only the cooldown it started, not the other rules."""
    async with running_server() as srv:
        admin = await Client.connect(srv.url + f"?token={TEST_ADMIN_TOKEN}")
        await admin.send("CREATE_ROOM", roomId="c", name="C", cooldownSeconds=60)
        await admin.expect("ROOM_CREATED")
        user = await Client.connect(srv.url)
        await user.join("c", "u")
        await user.send("SEND_MESSAGE", userId="u", roomId="c", message="x", clientMsgId="k")
        chat = await user.expect("ADD_CHAT")
        await admin.send("DELETE_CHAT", roomId="c", chatId=chat["chatId"])
        await user.expect("CHAT_DELETED")
        await admin.send("MUTE_USER", roomId="c", userId="u", seconds=600)
        await user.expect("USER_MUTED")
        await user.send("SEND_MESSAGE", userId="u", roomId="c", message="x", clientMsgId="k")
        await user.expect_error("muted")
        await admin.close()
        await user.close()


async def test_flood_close_happens_once() -> None:
    """A flooding connection is closed once (one 4029 counted), and nothing it sends
    after that is handled."""
    async with running_server(
        max_message_rate=5, message_burst=5, rate_limit_close_after=10
    ) as srv:
        flooder = await Client.connect(srv.url)
        for i in range(200):
            await flooder.send_raw(f'{{"type":"NOPE","payload":{{"i":{i}}}}}')
        _, code = await flooder.read_until_closed()
        assert code == 4029
        assert srv.stats.closes[4029] == 1


async def test_undecodable_authorization_header_is_403_not_500() -> None:
    """A token with bytes that are not UTF-8 is simply not the token."""
    async with running_server() as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(
            b"GET /api/auth HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
            b"Connection: close\r\n\r\n"
        )
        reply = await reader.read()
        writer.close()
        assert reply.startswith(b"HTTP/1.1 403"), reply[:80]


async def test_jwt_admins_are_named_by_their_token() -> None:
    """With --auth jwt, an admin's token (admin: true) names the user too; a refreshed
    token without admin takes the admin rights away."""
    async with running_server(auth="jwt", jwt_secret=SECRET) as srv:
        host = await Client.connect(srv.url + f"?token={mint(SECRET, user='h', admin=True)}")
        await host.send("JOIN_ROOM", name="x", userId="someone-else", roomId="r")
        await host.expect("ROOM_HISTORY")
        await host.send("SEND_MESSAGE", userId="someone-else", roomId="r", message="hi")
        assert (await host.expect("ADD_CHAT"))["userId"] == "h"
        await host.send("AUTH", token=mint(SECRET, user="h"))
        assert (await host.expect("AUTH_OK"))["admin"] is False
        await host.send("CREATE_ROOM", name="nope")
        await host.expect_error("forbidden")
        await host.close()


async def test_mute_during_a_join_is_not_lost(tmp_path: Path) -> None:
    """A mute issued while a join is reading the room still applies to that room."""
    async with running_server(store=f"sqlite:///{tmp_path}/m.db") as srv:
        admin = await Client.connect(srv.url + f"?token={TEST_ADMIN_TOKEN}")
        await admin.send("CREATE_ROOM", roomId="m", name="M")
        await admin.expect("ROOM_CREATED")
        user = await Client.connect(srv.url)
        await asyncio.gather(
            user.send("JOIN_ROOM", name="u", userId="u", roomId="m"),
            admin.send("MUTE_USER", roomId="m", userId="u", seconds=600),
        )
        await user.expect("ROOM_HISTORY")
        await asyncio.sleep(0.2)
        user.skip = frozenset({"PRESENCE", "USER_JOINED", "USER_MUTED"})
        await user.send("SEND_MESSAGE", userId="u", roomId="m", message="x")
        await user.expect_error("muted")
        url = f"http://127.0.0.1:{srv.port}/readyz"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
        await admin.close()
        await user.close()
