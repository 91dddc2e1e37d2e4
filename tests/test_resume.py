"""Resuming after a reconnect (JOIN_ROOM since/epoch) and retried sends (clientMsgId)."""

from __future__ import annotations

from pathlib import Path

from roomcast.runtime.server import RoomcastServer
from roomcast.testing import running_server
from tests.helpers import Client


async def _post(client: Client, room: str, user: str, text: str, **extra: str) -> dict[str, object]:
    await client.send("SEND_MESSAGE", userId=user, roomId=room, message=text, **extra)
    return await client.expect("ADD_CHAT")


async def test_resume_replays_what_was_missed() -> None:
    """A client that rejoins with since=N gets every message after N and recovered=true."""
    async with running_server(max_message_rate=1000, message_burst=1000) as server:
        await _resume_replays(server)


async def _resume_replays(server: RoomcastServer) -> None:
    writer = await Client.connect(server.url)
    await writer.join("r", "w")
    for i in range(3):
        await _post(writer, "r", "w", f"before {i}")
    reader = await Client.connect(server.url)
    first = await reader.join("r", "reader")
    assert first["lastOffset"] == 3
    assert "recovered" not in first
    await reader.close()
    for i in range(60):  # more than the 50-message history window
        await _post(writer, "r", "w", f"missed {i}")
    back = await Client.connect(server.url)
    await back.send(
        "JOIN_ROOM", name="n", userId="reader", roomId="r", since=3, epoch=first["epoch"]
    )
    page = await back.expect("ROOM_HISTORY")
    assert page["recovered"] is True
    assert page["fromOffset"] == 0
    assert [m["offset"] for m in page["messages"]] == list(range(1, 64))
    assert page["lastOffset"] == 63
    await back.close()
    await writer.close()


async def test_resume_from_another_epoch_is_not_recovered(server: RoomcastServer) -> None:
    """since from another epoch (a lost history) answers recovered=false with the window."""
    client = await Client.connect(server.url)
    await client.join("r", "u")
    await _post(client, "r", "u", "hello")
    await client.send("JOIN_ROOM", name="n", userId="u", roomId="r", since=40, epoch="other")
    page = await client.expect("ROOM_HISTORY")
    assert page["recovered"] is False
    assert [m["message"] for m in page["messages"]] == ["hello"]
    await client.send("JOIN_ROOM", name="n", userId="u", roomId="r", since=40)
    assert (await client.expect("ROOM_HISTORY"))["recovered"] is False  # 40 > last offset
    await client.close()


async def test_resume_beyond_resume_max_is_not_recovered() -> None:
    """When more messages were missed than resume_max, recovered=false."""
    async with running_server(resume_max=5, history_size=2) as srv:
        client = await Client.connect(srv.url)
        page = await client.join("r", "u")
        for i in range(10):
            await _post(client, "r", "u", f"m{i}")
        await client.send(
            "JOIN_ROOM", name="n", userId="u", roomId="r", since=0, epoch=page["epoch"]
        )
        resumed = await client.expect("ROOM_HISTORY")
        assert resumed["recovered"] is False
        # Not the oldest slice: the newest messages, and fromOffset says what they cover.
        assert [m["offset"] for m in resumed["messages"]][-1] == 10
        assert resumed["fromOffset"] == resumed["messages"][0]["offset"] - 1
        await client.send(
            "JOIN_ROOM", name="n", userId="u", roomId="r", since=5, epoch=page["epoch"]
        )
        resumed = await client.expect("ROOM_HISTORY")
        assert resumed["recovered"] is True
        assert [m["offset"] for m in resumed["messages"]] == list(range(4, 11))
        await client.close()


async def test_retried_send_posts_once(server: RoomcastServer) -> None:
    """A SEND_MESSAGE retried with the same clientMsgId is stored and broadcast once;
    the retrying sender gets the original ADD_CHAT back."""
    sender, other = await Client.connect(server.url), await Client.connect(server.url)
    await sender.join("r", "s")
    await other.join("r", "o")
    original = await _post(sender, "r", "s", "once", clientMsgId="abc-1")
    assert original["clientMsgId"] == "abc-1"
    assert (await other.expect("ADD_CHAT"))["chatId"] == original["chatId"]
    again = await _post(sender, "r", "s", "once", clientMsgId="abc-1")
    assert again == original
    await other.expect_silence()
    page = await (await Client.connect(server.url)).join("r", "late")
    assert [m["message"] for m in page["messages"]] == ["once"]
    await sender.close()
    await other.close()


async def test_retry_inside_cooldown_is_answered_not_refused() -> None:
    """In slow mode, a retry of the message that started the cooldown is not refused."""
    async with running_server() as srv:
        admin = await Client.connect(srv.url + "?token=test-admin-token")
        await admin.send("CREATE_ROOM", roomId="slow", name="Slow", cooldownSeconds=60)
        await admin.expect("ROOM_CREATED")
        client = await Client.connect(srv.url)
        await client.join("slow", "u")
        first = await _post(client, "slow", "u", "q", clientMsgId="k1")
        assert (await _post(client, "slow", "u", "q", clientMsgId="k1")) == first
        await client.send(
            "SEND_MESSAGE", userId="u", roomId="slow", message="new", clientMsgId="k2"
        )
        error = await client.expect_error("cooldown")
        assert error["clientMsgId"] == "k2"
        await client.close()
        await admin.close()


async def test_retry_after_restart_with_sqlite(tmp_path: Path) -> None:
    """The dedup survives a restart with the SQLite store; the epoch stays the same."""
    url = f"sqlite:///{tmp_path}/r.db"
    async with running_server(store=url) as srv:
        client = await Client.connect(srv.url)
        page = await client.join("r", "u")
        original = await _post(client, "r", "u", "persisted", clientMsgId="z")
        await client.close()
    async with running_server(store=url) as srv:
        client = await Client.connect(srv.url)
        await client.send(
            "JOIN_ROOM", name="n", userId="u", roomId="r", since=1, epoch=page["epoch"]
        )
        assert (await client.expect("ROOM_HISTORY"))["recovered"] is True
        assert (await _post(client, "r", "u", "persisted", clientMsgId="z")) == original
        await client.close()
