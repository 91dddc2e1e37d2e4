"""The Python client library against real servers, including one restarted mid-stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

from roomcast.client import RoomcastClient
from roomcast.core.protocol import ChatOut, HistoryOut, UpdateChatOut
from roomcast.testing import running_server
from tests.helpers import free_port, timeout, wait_until


async def test_join_send_vote_and_typed_events() -> None:
    """Join, send and vote; events arrive as typed structs."""
    async with running_server() as srv:
        async with (
            RoomcastClient(srv.url, user_id="a", name="Ann") as ann,
            RoomcastClient(srv.url, user_id="b", name="Bob") as bob,
        ):
            await ann.join("2")
            history = await ann.next_event("ROOM_HISTORY")
            assert isinstance(history.payload, HistoryOut)
            await bob.join("2")
            await bob.next_event("ROOM_HISTORY")
            await ann.send("2", "hello")
            chat = (await bob.next_event("ADD_CHAT")).payload
            assert isinstance(chat, ChatOut)
            assert (chat.name, chat.message, chat.offset) == ("Ann", "hello", 1)
            await bob.vote("2", chat.chatId)
            update = (await ann.next_event("UPDATE_CHAT")).payload
            assert isinstance(update, UpdateChatOut)
            assert update.upvotes == 1
        assert ann.status == "closed"


async def test_reconnect_and_resume_across_a_restart(tmp_path: Path) -> None:
    """The server restarts mid-stream: the client reconnects by itself, resumes from its
    last offset, and its consumer sees every message exactly once, in order; a message
    sent while disconnected is posted once."""
    port, store = free_port(), f"sqlite:///{tmp_path}/r.db"
    received: list[str] = []

    async def consume(client: RoomcastClient, until: int) -> None:
        async for event in client:
            if event.type == "ADD_CHAT":
                received.append(event.payload.message)
                if len(received) == until:
                    return

    async with running_server(store=store, port=port) as srv:
        reader = RoomcastClient(srv.url, user_id="r", name="Reader", max_backoff=1.0)
        await reader.connect()
        await reader.join("live")
        writer = RoomcastClient(srv.url, user_id="w", name="Writer", max_backoff=1.0)
        await writer.connect()
        await writer.join("live")
        consumer = asyncio.ensure_future(consume(reader, 31))
        for i in range(10):
            await writer.send("live", f"m{i:02d}")
        await asyncio.sleep(0.5)
    # Down: the reader queues a message; then the server comes back and the writer
    # (also reconnected by itself) goes on.
    await asyncio.sleep(0.2)
    await reader.send("live", "from the reader, while down")
    async with running_server(store=store, port=port):
        assert await wait_until(lambda: writer.status == reader.status == "live", 15)
        for i in range(10, 30):
            await writer.send("live", f"m{i:02d}")
        await asyncio.wait_for(consumer, timeout(15))
        assert [m for m in received if m.startswith("m")] == [f"m{i:02d}" for i in range(30)]
        assert received.count("from the reader, while down") == 1
        await reader.close()
        await writer.close()
