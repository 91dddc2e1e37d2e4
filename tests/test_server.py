"""The WebSocket protocol end to end: a real server, real clients, real sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest
import websockets

from roomcast.runtime.server import RoomcastServer
from roomcast.testing import running_server
from tests.helpers import Client, timeout

Connect = Callable[..., Awaitable[Client]]


async def test_two_clients_chat_and_vote_third_gets_history(connect: Connect) -> None:
    """Two clients chat and vote once each; a late joiner gets history with the votes."""
    a, b = await connect(), await connect()
    assert (await a.join("2", 1, "ann"))["messages"] == []
    await b.join("2", 2, "bob")
    await a.send("SEND_MESSAGE", userId=1, roomId="2", message="hello")
    chat = await a.expect("ADD_CHAT")
    assert chat == await b.expect("ADD_CHAT")
    assert chat["message"] == "hello"
    assert chat["name"] == "ann"
    assert chat["roomId"] == "2"
    assert chat["userId"] == "1"
    assert chat["upvotes"] == 0
    assert chat["offset"] == 1
    assert chat["chatId"].isdigit()
    for voter, user in ((a, 1), (b, 2)):
        await voter.send("UPVOTE_MESSAGE", userId=user, roomId="2", chatId=int(chat["chatId"]))
        update = await a.expect("UPDATE_CHAT")
        assert update == await b.expect("UPDATE_CHAT")
    assert update == {
        "chatId": chat["chatId"],
        "roomId": "2",
        "upvotes": 2,
        "priority": "normal",
        "answered": False,
    }
    c = await connect()
    history = await c.join("2", 3, "cat")
    assert [(m["message"], m["upvotes"], m["offset"]) for m in history["messages"]] == [
        ("hello", 2, 1)
    ]
    assert history["lastOffset"] == 1
    assert history["votedChatIds"] == []
    d = await connect()
    assert (await d.join("2", 1, "ann"))["votedChatIds"] == [chat["chatId"]]


async def test_reference_page_protocol_with_numeric_ids(connect: Connect) -> None:
    """The reference page's frames (echo-protocol, numeric userId) work unchanged."""
    a = await connect(subprotocols=["echo-protocol"])
    b = await connect(subprotocols=["echo-protocol"])
    assert a.ws.subprotocol == "echo-protocol"
    await a.send("JOIN_ROOM", name="harkirat", userId=4242, roomId="2")
    await a.expect("ROOM_HISTORY")
    await b.send("JOIN_ROOM", name="harkirat", userId=77, roomId="2")
    await b.expect("ROOM_HISTORY")
    await a.send("SEND_MESSAGE", message="question?", userId=4242, roomId="2")
    chat = await b.expect("ADD_CHAT")
    await a.expect("ADD_CHAT")
    assert int(chat["chatId"]) < 2**53
    await b.send("UPVOTE_MESSAGE", userId=77, roomId="2", chatId=int(chat["chatId"]))
    assert (await a.expect("UPDATE_CHAT"))["upvotes"] == 1


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["roomcast.v1"], "roomcast.v1"),
        (["echo-protocol"], "echo-protocol"),
        (["echo-protocol", "roomcast.v1"], "echo-protocol"),
        (None, None),
    ],
)
async def test_subprotocols(
    server: RoomcastServer, offered: list[str] | None, chosen: str | None
) -> None:
    """roomcast.v1, echo-protocol and no subprotocol are all accepted."""
    client = await Client.connect(server.url, subprotocols=offered)
    try:
        assert client.ws.subprotocol == chosen
        await client.join("r", "u")
    finally:
        await client.close()


async def test_repeat_vote_changes_nothing_and_broadcasts_nothing(connect: Connect) -> None:
    """A second vote by the same user, even from another connection, is not counted."""
    a, a2, b = await connect(), await connect(), await connect()
    await a.join("r", "u1")
    await a2.join("r", "u1")
    await b.join("r", "u2")
    await b.send("SEND_MESSAGE", userId="u2", roomId="r", message="m")
    chat = await b.expect("ADD_CHAT")
    await a.expect("ADD_CHAT")
    await a2.expect("ADD_CHAT")
    await a.send("UPVOTE_MESSAGE", userId="u1", roomId="r", chatId=chat["chatId"])
    assert (await b.expect("UPDATE_CHAT"))["upvotes"] == 1
    await a.expect("UPDATE_CHAT")
    await a2.expect("UPDATE_CHAT")
    await a2.send("UPVOTE_MESSAGE", userId="u1", roomId="r", chatId=chat["chatId"])
    await a.send("UPVOTE_MESSAGE", userId="u1", roomId="r", chatId=chat["chatId"])
    await b.expect_silence()
    await a.expect_silence(0.05)
    await a2.expect_silence(0.05)


async def test_rooms_are_isolated(connect: Connect) -> None:
    """A client in another room receives nothing from a room's chat or votes."""
    a, b, other = await connect(), await connect(), await connect()
    await a.join("1", "a")
    await b.join("1", "b")
    await other.join("9", "o")
    await a.send("SEND_MESSAGE", userId="a", roomId="1", message="secret")
    chat = await b.expect("ADD_CHAT")
    await b.send("UPVOTE_MESSAGE", userId="b", roomId="1", chatId=chat["chatId"])
    await b.expect("UPDATE_CHAT")
    await other.expect_silence()
    assert (await (await connect()).join("9", "z"))["messages"] == []


async def test_connection_in_several_rooms(connect: Connect) -> None:
    """One connection may join several rooms and gets each room's messages."""
    a, b = await connect(), await connect()
    await a.join("x", "a")
    await a.join("y", "a")
    await b.join("x", "b")
    await b.join("y", "b")
    await b.send("SEND_MESSAGE", userId="b", roomId="y", message="in y")
    assert (await a.expect("ADD_CHAT"))["roomId"] == "y"
    await b.send("SEND_MESSAGE", userId="b", roomId="x", message="in x")
    assert (await a.expect("ADD_CHAT"))["roomId"] == "x"


async def test_same_order_for_every_member(connect: Connect) -> None:
    """Messages from several senders reach all members in the same order, offsets +1."""
    clients = [await connect() for _ in range(4)]
    for i, c in enumerate(clients):
        await c.join("o", f"u{i}")

    async def burst(i: int, c: Client) -> None:
        for n in range(25):
            await c.send("SEND_MESSAGE", userId=f"u{i}", roomId="o", message=f"{i}-{n}")

    await asyncio.gather(*(burst(i, c) for i, c in enumerate(clients)))
    seen = []
    for c in clients:
        seen.append([(await c.expect("ADD_CHAT"))["message"] for _ in range(100)])
    assert all(s == seen[0] for s in seen)
    for i in range(4):
        mine = [m for m in seen[0] if m.startswith(f"{i}-")]
        assert mine == [f"{i}-{n}" for n in range(25)]
    history = await (await connect()).join("o", "late")
    assert [m["offset"] for m in history["messages"]] == list(range(51, 101))  # last 50


async def test_disconnect_leaves_every_room(server: RoomcastServer, connect: Connect) -> None:
    """A closed connection leaves all its rooms; empty rooms disappear."""
    a, b = await connect(), await connect()
    await a.join("p", "a")
    await a.join("q", "a")
    await b.join("p", "b")
    assert server.node.hub.member_count("p") == 2
    await a.close()
    for _ in range(100):
        if server.node.hub.member_count("p") == 1:
            break
        await asyncio.sleep(0.01)
    assert server.node.hub.member_count("p") == 1
    assert server.node.hub.member_count("q") == 0
    assert server.node.hub.room_count() == 1
    await b.send("SEND_MESSAGE", userId="b", roomId="p", message="still here")
    assert (await b.expect("ADD_CHAT"))["message"] == "still here"


async def test_leave_room(connect: Connect) -> None:
    """LEAVE_ROOM stops delivery from that room and is acknowledged."""
    a, b = await connect(), await connect()
    await a.join("l", "a")
    await b.join("l", "b")
    await a.send("LEAVE_ROOM", roomId="l")
    assert await a.expect("LEFT_ROOM") == {"roomId": "l"}
    await b.send("SEND_MESSAGE", userId="b", roomId="l", message="gone?")
    await b.expect("ADD_CHAT")
    await a.expect_silence()
    await a.send("LEAVE_ROOM", roomId="l")
    await a.expect_error("not_in_room")


# ------------------------------------------------------------------ refusals


async def test_impersonation_refused(connect: Connect) -> None:
    """A payload userId other than the joined one is refused, on send, vote and join."""
    a = await connect()
    await a.join("r", "alice")
    await a.send("SEND_MESSAGE", userId="mallory", roomId="r", message="x")
    err = await a.expect_error("user_mismatch")
    assert err["type"] == "SEND_MESSAGE"
    assert err["roomId"] == "r"
    await a.send("UPVOTE_MESSAGE", userId="mallory", roomId="r", chatId="1")
    await a.expect_error("user_mismatch")
    await a.send("JOIN_ROOM", name="m", userId="mallory", roomId="s")
    await a.expect_error("user_mismatch")


async def test_send_and_vote_outside_joined_room_refused(connect: Connect) -> None:
    """Sending or voting in a room the connection has not joined is refused."""
    a = await connect()
    await a.send("SEND_MESSAGE", userId="a", roomId="r", message="x")
    await a.expect_error("not_in_room")
    await a.join("r", "a")
    await a.send("SEND_MESSAGE", userId="a", roomId="other", message="x")
    await a.expect_error("not_in_room")
    await a.send("UPVOTE_MESSAGE", userId="a", roomId="other", chatId="1")
    await a.expect_error("not_in_room")


async def test_unknown_chat_refused(connect: Connect) -> None:
    """A vote for a chatId that is not in that room gets unknown_chat."""
    a = await connect()
    await a.join("r", "a")
    await a.join("s", "a")
    await a.send("SEND_MESSAGE", userId="a", roomId="s", message="in s")
    chat = await a.expect("ADD_CHAT")
    for chat_id in ("999999", chat["chatId"], "abc", -5):
        await a.send("UPVOTE_MESSAGE", userId="a", roomId="r", chatId=chat_id)
        await a.expect_error("unknown_chat")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_json"),
        ("{", "bad_json"),
        ('{"type": "SEND_MESSAGE", "payload": {"x": NaN}}', "bad_json"),
        ('{"a": Infinity}', "bad_json"),
        (
            '{"type": "JOIN_ROOM", "payload": {"name": "\\ud800", "userId": 1, "roomId": 1}}',
            "bad_json",
        ),
        ('{"type": "JOIN_ROOM", "payload": ' + "[" * 10_000 + "]" * 10_000 + "}", "bad_json"),
        ("[" * 10_000 + "]" * 10_000, "bad_message"),
        ("[1, 2]", "bad_message"),
        ('"text"', "bad_message"),
        ("42", "bad_message"),
        ("null", "bad_message"),
        ('{"payload": {}}', "bad_message"),
        ('{"type": 5, "payload": {}}', "bad_message"),
        ('{"type": "DANCE", "payload": {}}', "unknown_type"),
        ('{"type": "JOIN_ROOM"}', "invalid_payload"),
        ('{"type": "JOIN_ROOM", "payload": []}', "invalid_payload"),
        ('{"type": "JOIN_ROOM", "payload": {"name": "a", "roomId": "1"}}', "invalid_payload"),
        (
            '{"type": "JOIN_ROOM", "payload": {"name": "a", "userId": 1.5, "roomId": 1}}',
            "invalid_payload",
        ),
        (
            '{"type": "JOIN_ROOM", "payload": {"name": "a", "userId": true, "roomId": 1}}',
            "invalid_payload",
        ),
        (
            '{"type": "JOIN_ROOM", "payload": {"name": "a", "userId": [], "roomId": 1}}',
            "invalid_payload",
        ),
        (
            '{"type": "JOIN_ROOM", "payload": {"name": "", "userId": 1, "roomId": 1}}',
            "invalid_payload",
        ),
        (
            '{"type": "JOIN_ROOM", "payload": {"name": "a", "userId": "", "roomId": 1}}',
            "invalid_payload",
        ),
        (
            '{"type": "JOIN_ROOM", "payload": {"name": "a", "userId": 1, "roomId": 123456789012345678901234567890}}',
            "invalid_payload",
        ),
        (
            '{"type": "SEND_MESSAGE", "payload": {"userId": 1, "roomId": 1, "message": 7}}',
            "invalid_payload",
        ),
        ('{"type": "UPVOTE_MESSAGE", "payload": {"userId": 1, "roomId": 1}}', "invalid_payload"),
    ],
)
async def test_bad_input_gets_error_and_connection_stays_usable(
    connect: Connect, frame: str, code: str
) -> None:
    """Each kind of bad frame gets its documented ERROR code; the connection still works."""
    a = await connect()
    await a.send_raw(frame)
    await a.expect_error(code)
    await a.join("after", "u")
    await a.send("SEND_MESSAGE", userId="u", roomId="after", message="fine")
    assert (await a.expect("ADD_CHAT"))["message"] == "fine"


async def test_binary_frame_refused(connect: Connect) -> None:
    """A binary frame gets binary_not_supported; the connection stays open."""
    a = await connect()
    await a.send_raw(b'{"type": "JOIN_ROOM"}')
    await a.expect_error("binary_not_supported")
    await a.join("r", "u")


@pytest.mark.parametrize(
    ("text", "code"),
    [("", "message_empty"), ("  \n\t", "message_empty"), ("x" * 2001, "message_too_long")],
)
async def test_empty_and_overlong_text_refused(connect: Connect, text: str, code: str) -> None:
    """Empty, blank and over-long (2,000 characters by default) messages are refused."""
    a = await connect()
    await a.join("r", "u")
    await a.send("SEND_MESSAGE", userId="u", roomId="r", message=text)
    await a.expect_error(code)
    await a.send("SEND_MESSAGE", userId="u", roomId="r", message="x" * 2000)
    assert len((await a.expect("ADD_CHAT"))["message"]) == 2000


async def test_oversized_frame_closes_with_1009(server: RoomcastServer, connect: Connect) -> None:
    """A message over max_frame_bytes (64 KiB) closes that connection with 1009 only."""
    a, b = await connect(max_size=None), await connect()
    await b.join("r", "b")
    await a.send_raw("x" * (64 * 1024 + 1))
    with pytest.raises(websockets.ConnectionClosed) as caught:
        await a.recv()
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 1009
    await b.send("SEND_MESSAGE", userId="b", roomId="r", message="others fine")
    await b.expect("ADD_CHAT")


async def test_invalid_utf8_closes_with_1007(server: RoomcastServer) -> None:
    """A text frame that is not UTF-8 closes the connection with 1007, per RFC 6455."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout(5))
    try:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await asyncio.sleep(0.1)
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        payload = b"\xff\xfe"
        mask = b"\x01\x02\x03\x04"
        masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        await asyncio.sleep(0.2)
        reply = sock.recv(4096)
        assert reply[0] == 0x88  # a close frame
        assert int.from_bytes(reply[2:4], "big") == 1007
    finally:
        sock.close()


async def test_too_many_rooms(connect: Connect) -> None:
    """A connection cannot join more rooms than max_rooms_per_connection."""
    async with running_server(max_rooms_per_connection=2) as srv:
        a = await Client.connect(srv.url)
        await a.join("1", "u")
        await a.join("2", "u")
        await a.send("JOIN_ROOM", name="u", userId="u", roomId="3")
        await a.expect_error("too_many_rooms")
        await a.join("2", "u")  # rejoining a room it is in is fine
        await a.close()


async def test_sent_json_is_always_strict(connect: Connect) -> None:
    """Text with quotes, control characters, emoji and script comes back byte-exact."""
    a = await connect()
    await a.join("r", "u")
    text = 'he said "hi"\n\t\u0000 <script>alert(1)</script> \U0001f600 \u2028'
    await a.send("SEND_MESSAGE", userId="u", roomId="r", message=text)
    assert (await a.expect("ADD_CHAT"))["message"] == text


async def test_plain_http_get_serves_page_and_health(server: RoomcastServer) -> None:
    """GET / without an upgrade returns HTML; /healthz answers ok, on the same port."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    body = await asyncio.wait_for(reader.read(), timeout(5))
    writer.close()
    assert body.startswith(b"HTTP/1.1 200")
    assert b'"status": "ok"' in body
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    body = await asyncio.wait_for(reader.read(), timeout(5))
    writer.close()
    assert body.startswith(b"HTTP/1.1 200")
    assert b"text/html" in body


async def test_shutdown_closes_clients_with_1001() -> None:
    """Stopping the server closes every connection with 1001 (going away)."""
    async with running_server() as srv:
        a = await Client.connect(srv.url)
        await a.join("r", "u")
    with pytest.raises(websockets.ConnectionClosed) as caught:
        await a.expect("never")
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 1001


async def test_slow_consumer_is_closed_and_others_keep_going() -> None:
    """A client that stops reading is dropped (4008) once its queue passes the cap."""
    async with running_server(
        max_queue_bytes=256 * 1024, max_message_rate=100_000, message_burst=100_000
    ) as srv:
        slow = await Client.connect(srv.url, max_queue=1, close_timeout=0.5)
        fast = await Client.connect(srv.url)
        await slow.join("r", "slow")
        await fast.join("r", "fast")
        text = "y" * 1900
        offsets = []
        while srv.node.hub.member_count("r") == 2 and len(offsets) < 20_000:
            await fast.send("SEND_MESSAGE", userId="fast", roomId="r", message=text)
            offsets.append((await fast.expect("ADD_CHAT"))["offset"])
        assert srv.node.hub.member_count("r") == 1, "the slow client was never dropped"
        assert offsets == list(range(1, len(offsets) + 1))
        await fast.close()
        await slow.close()
