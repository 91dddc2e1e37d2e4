"""The Node over in-process ports (memory store, local broker, local presence), driven
directly with members whose outboxes write to real sockets: no server, no HTTP."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.frames import Frame
from websockets.streams import StreamReader

from roomcast.adapters.local import LocalBroker, LocalPresence
from roomcast.adapters.memory import MemoryStore
from roomcast.config import Settings
from roomcast.core.errors import ClientError
from roomcast.runtime.node import Node
from roomcast.runtime.outbox import Flusher, Outbox


class Member:
    """A connection as the node sees it, its frames written to one end of a socket pair
    and parsed at the other with the websockets library's frame parser."""

    def __init__(self, outbox: Outbox, sock: socket.socket, conn_id: str) -> None:
        self.outbox = outbox
        self.conn_id = conn_id
        self.user_id: str | None = None
        self.is_admin = False
        self.rooms: dict[str, str] = {}
        self.closed = False
        self._sock = sock
        self._stream = StreamReader()

    async def next(self, kind: str | None = None, wait: float = 2.0) -> dict[str, Any]:
        """The next event (of `kind`, skipping others)."""
        loop = asyncio.get_running_loop()
        while True:
            parser = Frame.parse(self._stream.read_exact, mask=False)
            while True:
                try:
                    next(parser)
                except StopIteration as done:
                    frame: Frame = done.value
                    break
                data = await asyncio.wait_for(loop.sock_recv(self._sock, 65536), wait)
                assert data, "the socket closed"
                self._stream.feed_data(data)
            event: dict[str, Any] = json.loads(frame.data)
            if kind is None or event["type"] == kind:
                return event


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    settings = Settings(store="memory://", admin_token="t" * 32)
    store = MemoryStore()
    await store.open()
    n = Node(settings, store, LocalBroker(), LocalPresence())
    await n.start()
    yield n
    await n.stop()
    await store.close()


@pytest.fixture
async def members() -> AsyncIterator[list[Member]]:
    loop = asyncio.get_running_loop()
    flusher = Flusher(loop)
    made: list[Member] = []
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for i, (ours, theirs) in enumerate(pairs):
            theirs.setblocking(False)
            transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
            box = Outbox(transport, flusher, max_bytes=1 << 20, on_overflow=lambda: None)
            made.append(Member(box, theirs, f"c{i}"))
        yield made
    finally:
        for member in made:
            member.outbox.abort()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


async def test_one_message_reaches_every_member_once_in_order(
    node: Node, members: list[Member]
) -> None:
    """A send is stored, published through the local broker, delivered to each member."""
    ann, bob, _ = members
    await node.join(ann, "r", "ann", "Ann")
    await node.join(bob, "r", "bob", "Bob")
    for text in ("one", "two"):
        await node.send(ann, "r", "ann", text)
    for member in (ann, bob):
        chats = [(await member.next("ADD_CHAT"))["payload"] for _ in range(2)]
        assert [(c["offset"], c["message"]) for c in chats] == [(1, "one"), (2, "two")]
    feed = node.delivery.hosted["r"].feed
    assert feed is not None
    assert (feed.last, feed.duplicates, feed.gaps) == (2, 0, 0)


async def test_votes_and_presence_go_through_the_broker(node: Node, members: list[Member]) -> None:
    ann, bob, _ = members
    await node.join(ann, "r", "ann", "Ann")
    await node.join(bob, "r", "bob", "Bob")
    await node.send(ann, "r", "ann", "q")
    chat = (await bob.next("ADD_CHAT"))["payload"]
    await node.vote(bob, "r", "bob", chat["chatId"], up=True)
    update = (await ann.next("UPDATE_CHAT"))["payload"]
    assert (update["chatId"], update["upvotes"]) == (chat["chatId"], 1)
    assert node.member_count("r") == 2
    node.leave(bob, "r")
    left = (await ann.next("USER_LEFT"))["payload"]
    assert (left["userId"], left["count"]) == ("bob", 1)


async def test_a_late_joiner_gets_the_history_then_live_messages(
    node: Node, members: list[Member]
) -> None:
    ann, _, cid = members
    await node.join(ann, "r", "ann", "Ann")
    for n in range(3):
        await node.send(ann, "r", "ann", f"m{n}")
    await node.join(cid, "r", "cid", "Cid")
    history = (await cid.next("ROOM_HISTORY"))["payload"]
    assert [m["message"] for m in history["messages"]] == ["m0", "m1", "m2"]
    await node.send(ann, "r", "ann", "m3")
    assert (await cid.next("ADD_CHAT"))["payload"]["offset"] == 4


async def test_the_node_refuses_what_the_rules_refuse(node: Node, members: list[Member]) -> None:
    """Slow mode: a second message inside the cooldown is refused, and nothing is stored."""
    ann, _, _ = members
    from roomcast.core.protocol import CreateRoom

    await node.moderation.create_room(CreateRoom(name="slow", roomId="s", cooldownSeconds=60))
    await node.join(ann, "s", "ann", "Ann")
    await node.send(ann, "s", "ann", "first")
    with pytest.raises(ClientError) as refused:
        await node.send(ann, "s", "ann", "second")
    assert refused.value.code == "cooldown"
    page = await node.store.history("s", 10)
    assert [m.text for m in page.messages] == ["first"]
