"""Live Q&A rooms end to end: admins, tiers, alerts, slow mode, moderation, presence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from roomcast.runtime.server import RoomcastServer
from roomcast.testing import TEST_ADMIN_TOKEN, ManualClock, running_server
from tests.helpers import Client

Connect = Callable[..., Awaitable[Client]]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def qa(clock: ManualClock) -> AsyncIterator[RoomcastServer]:
    async with running_server(clock=clock) as srv:
        yield srv


@pytest.fixture
async def connect(qa: RoomcastServer) -> AsyncIterator[Connect]:
    clients: list[Client] = []

    async def make(admin: bool = False, **kwargs: Any) -> Client:
        url = qa.url + (f"?token={TEST_ADMIN_TOKEN}" if admin else "")
        client = await Client.connect(url, **kwargs)
        clients.append(client)
        return client

    yield make
    await asyncio.gather(*(client.close() for client in clients))


async def post(client: Client, room: str, user: str, text: str) -> dict[str, Any]:
    """Send a message and return its ADD_CHAT, skipping other members' messages."""
    await client.send("SEND_MESSAGE", userId=user, roomId=room, message=text)
    while True:
        chat = await client.expect("ADD_CHAT")
        if (chat["userId"], chat["message"]) == (user, text):
            return chat


async def create_room(admin: Client, **fields: Any) -> dict[str, Any]:
    await admin.send("CREATE_ROOM", **fields)
    room: dict[str, Any] = (await admin.expect("ROOM_CREATED"))["room"]
    return room


# ------------------------------------------------------------------ admin identity


async def test_admin_by_query_token_and_by_auth_message(connect: Connect) -> None:
    """The admin token works in ?token= and in AUTH; a wrong token is refused."""
    by_query = await connect(admin=True)
    room = await create_room(by_query, roomId="q1", name="By query")
    assert room["roomId"] == "q1"
    other = await connect()
    await other.send("AUTH", token="wrong")
    await other.expect_error("unauthorized")
    await other.send("CREATE_ROOM", roomId="q2", name="x")
    await other.expect_error("forbidden")
    await other.send("AUTH", token=TEST_ADMIN_TOKEN)
    assert await other.expect("AUTH_OK") == {"admin": True}
    assert (await create_room(other, roomId="q2", name="By AUTH"))["name"] == "By AUTH"


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("CREATE_ROOM", {"name": "x"}),
        ("UPDATE_ROOM", {"roomId": "r", "isOpen": False}),
        ("MARK_ANSWERED", {"roomId": "r", "chatId": "1"}),
        ("DELETE_CHAT", {"roomId": "r", "chatId": "1"}),
        ("MUTE_USER", {"roomId": "r", "userId": "u", "seconds": 60}),
    ],
)
async def test_admin_actions_refused_for_participants(
    connect: Connect, kind: str, payload: dict[str, Any]
) -> None:
    """Every admin-only action gets ERROR forbidden for a connection without the token."""
    user = await connect()
    await user.join("r", "u")
    await post(user, "r", "u", "q")
    await user.send(kind, **payload)
    err = await user.expect_error("forbidden")
    assert err["type"] == kind
    await user.expect_silence()


# ------------------------------------------------------------------ tiers and alerts


async def test_tiers_and_exactly_one_admin_alert(connect: Connect) -> None:
    """Votes lift a message to medium at 3 and high at 10; the admin gets one alert."""
    admin = await connect(admin=True)
    await admin.join("r", "host", "Host")
    author = await connect()
    await author.join("r", "author")
    chat = await post(author, "r", "author", "Why is the sky blue?")
    assert chat["priority"] == "normal"
    assert chat["answered"] is False
    voters = [await connect() for _ in range(11)]
    tiers = []
    for i, voter in enumerate(voters):
        await voter.join("r", f"v{i}")
        await voter.send("UPVOTE_MESSAGE", userId=f"v{i}", roomId="r", chatId=chat["chatId"])
        update = await author.expect("UPDATE_CHAT")
        tiers.append((update["upvotes"], update["priority"]))
    assert tiers[1] == (2, "normal")
    assert tiers[2] == (3, "medium")
    assert tiers[8] == (9, "medium")
    assert tiers[9] == (10, "high")
    assert tiers[10] == (11, "high")
    alerts = []
    while True:
        message = await admin.recv()
        if message["type"] == "ADMIN_ALERT":
            alerts.append(message["payload"])
        if message["type"] == "UPDATE_CHAT" and message["payload"]["upvotes"] == 11:
            break
    assert alerts == [
        {
            "roomId": "r",
            "chatId": chat["chatId"],
            "message": "Why is the sky blue?",
            "name": "user",
            "upvotes": 10,
        }
    ]
    # Withdraw to 9 (back to medium) and vote again to 10: still no second alert.
    for i in (10, 9):
        await voters[i].send("UNVOTE_MESSAGE", userId=f"v{i}", roomId="r", chatId=chat["chatId"])
        await author.expect("UPDATE_CHAT")
    await voters[9].send("UPVOTE_MESSAGE", userId="v9", roomId="r", chatId=chat["chatId"])
    again = await author.expect("UPDATE_CHAT")
    assert (again["upvotes"], again["priority"]) == (10, "high")
    admin_saw = [(await admin.expect("UPDATE_CHAT"))["upvotes"] for _ in range(3)]
    assert admin_saw == [10, 9, 10]  # expect() fails on an ADMIN_ALERT in between
    await admin.expect_silence()
    # Participants never see admin alerts.
    await author.expect_silence()


async def test_unvote_moves_a_message_back_down(connect: Connect) -> None:
    """Withdrawing a vote lowers the count and the tier; unvoting twice does nothing."""
    author = await connect()
    await author.join("r", "a")
    chat = await post(author, "r", "a", "q")
    voters = [await connect() for _ in range(3)]
    for i, v in enumerate(voters):
        await v.join("r", f"v{i}")
        await v.send("UPVOTE_MESSAGE", userId=f"v{i}", roomId="r", chatId=chat["chatId"])
        last = await author.expect("UPDATE_CHAT")
    assert (last["upvotes"], last["priority"]) == (3, "medium")
    await voters[0].send("UNVOTE_MESSAGE", userId="v0", roomId="r", chatId=chat["chatId"])
    down = await author.expect("UPDATE_CHAT")
    assert (down["upvotes"], down["priority"]) == (2, "normal")
    await voters[0].send("UNVOTE_MESSAGE", userId="v0", roomId="r", chatId=chat["chatId"])
    await author.expect_silence()
    history = await (await connect()).join("r", "v1")
    assert history["votedChatIds"] == [chat["chatId"]]
    assert history["messages"][0]["priority"] == "normal"


async def test_late_admin_gets_pending_alerts_until_answered(connect: Connect) -> None:
    """An admin joining later is sent unanswered high-priority alerts; answered ones not."""
    author = await connect()
    await author.join("r", "a")
    admin = await connect(admin=True)
    await admin.send("UPDATE_ROOM", roomId="r", highThreshold=1, mediumThreshold=1)
    await admin.expect("ROOM_UPDATED")
    await author.expect("ROOM_UPDATED")
    first = await post(author, "r", "a", "first")
    second = await post(author, "r", "a", "second")
    voter = await connect()
    await voter.join("r", "v")
    for chat in (first, second):
        await voter.send("UPVOTE_MESSAGE", userId="v", roomId="r", chatId=chat["chatId"])
        await voter.expect("UPDATE_CHAT")
    await admin.send("MARK_ANSWERED", roomId="r", chatId=first["chatId"])
    votes = [await author.expect("UPDATE_CHAT") for _ in range(2)]
    assert [(v["upvotes"], v["priority"]) for v in votes] == [(1, "high"), (1, "high")]
    answered = await author.expect("UPDATE_CHAT")
    assert answered["chatId"] == first["chatId"]
    assert answered["answered"] is True
    late = await connect(admin=True)
    history = await late.join("r", "host2")
    assert {m["chatId"]: m["answered"] for m in history["messages"]} == {
        first["chatId"]: True,
        second["chatId"]: False,
    }
    alert = await late.expect("ADMIN_ALERT")
    assert alert["chatId"] == second["chatId"]
    await late.expect_silence()


# ------------------------------------------------------------------ room rules


async def test_slow_mode_per_user_across_connections(connect: Connect, clock: ManualClock) -> None:
    """With a 30 s cooldown, the same user (any tab) waits 30 s; T-1 ms refused, T ok."""
    admin = await connect(admin=True)
    await create_room(admin, roomId="slow", name="Slow", cooldownSeconds=30)
    tab1, tab2, other = await connect(), await connect(), await connect()
    await tab1.join("slow", "u")
    await tab2.join("slow", "u")
    await other.join("slow", "o")
    await post(tab1, "slow", "u", "first")
    clock.advance(29.999)
    await tab2.expect("ADD_CHAT")
    await tab2.send("SEND_MESSAGE", userId="u", roomId="slow", message="too soon")
    err = await tab2.expect_error("cooldown")
    assert err["retryAfterMs"] == 1
    await post(other, "slow", "o", "another user is not slowed")
    clock.advance(0.001)
    assert (await post(tab2, "slow", "u", "now fine"))["message"] == "now fine"
    await admin.join("slow", "host")
    await post(admin, "slow", "host", "admins are exempt")
    await post(admin, "slow", "host", "twice")


async def test_start_time(connect: Connect, clock: ManualClock) -> None:
    """Before startTime members join and read; sending is refused with the start time."""
    admin = await connect(admin=True)
    start = "2027-01-15T10:00:00Z"
    room = await create_room(admin, roomId="later", name="Later", startTime=start)
    assert room["state"] == "not_started"  # the test clock starts at 2027-01-15T08:00:00Z
    user = await connect()
    history = await user.join("later", "u")
    assert history["room"]["startTime"] == start
    await user.send("SEND_MESSAGE", userId="u", roomId="later", message="early")
    err = await user.expect_error("room_not_started")
    assert err["startTime"] == start
    clock.now = 1_800_007_199.999  # 1 ms before 10:00:00Z
    await user.send("SEND_MESSAGE", userId="u", roomId="later", message="almost")
    await user.expect_error("room_not_started")
    clock.now = 1_800_007_200.0  # exactly 10:00:00Z
    await post(user, "later", "u", "on time")


async def test_closed_room_is_read_only_and_updates_are_pushed(connect: Connect) -> None:
    """Closing a room pushes ROOM_UPDATED; sending and voting get room_closed; reopening works."""
    admin = await connect(admin=True)
    user = await connect()
    await user.join("c", "u")
    chat = await post(user, "c", "u", "before")
    await admin.send("UPDATE_ROOM", roomId="c", isOpen=False)
    pushed = (await user.expect("ROOM_UPDATED"))["room"]
    assert (pushed["isOpen"], pushed["state"]) == (False, "closed")
    await admin.expect("ROOM_UPDATED")  # not a member: answered directly
    await user.send("SEND_MESSAGE", userId="u", roomId="c", message="x")
    await user.expect_error("room_closed")
    await user.send("UPVOTE_MESSAGE", userId="u", roomId="c", chatId=chat["chatId"])
    await user.expect_error("room_closed")
    history = await (await connect()).join("c", "reader")
    assert [m["message"] for m in history["messages"]] == ["before"]
    await admin.send("UPDATE_ROOM", roomId="c", isOpen=True)
    assert (await user.expect("ROOM_UPDATED"))["room"]["state"] == "open"
    await post(user, "c", "u", "after")


async def test_mute(connect: Connect, clock: ManualClock) -> None:
    """A muted user cannot send or vote in that room until the mute ends."""
    admin = await connect(admin=True)
    user, other = await connect(), await connect()
    await user.join("m", "troll")
    await other.join("m", "o")
    chat = await post(other, "m", "o", "q")
    await user.expect("ADD_CHAT")
    await admin.send("MUTE_USER", roomId="m", userId="troll", seconds=60)
    muted = await other.expect("USER_MUTED")
    assert muted["userId"] == "troll"
    assert muted["until"].endswith("Z")
    await user.expect("USER_MUTED")
    await user.send("SEND_MESSAGE", userId="troll", roomId="m", message="spam")
    assert "until" in await user.expect_error("muted")
    await user.send("UPVOTE_MESSAGE", userId="troll", roomId="m", chatId=chat["chatId"])
    await user.expect_error("muted")
    clock.advance(60)
    await post(user, "m", "troll", "sorry")


async def test_delete_chat(connect: Connect) -> None:
    """DELETE_CHAT pushes CHAT_DELETED; the message is gone from history and votes."""
    admin = await connect(admin=True)
    user = await connect()
    await user.join("d", "u")
    keep = await post(user, "d", "u", "keep")
    gone = await post(user, "d", "u", "<b>bad</b>")
    await admin.send("DELETE_CHAT", roomId="d", chatId=gone["chatId"])
    assert await user.expect("CHAT_DELETED") == {"roomId": "d", "chatId": gone["chatId"]}
    history = await (await connect()).join("d", "late")
    assert [m["chatId"] for m in history["messages"]] == [keep["chatId"]]
    await user.send("UPVOTE_MESSAGE", userId="u", roomId="d", chatId=gone["chatId"])
    await user.expect_error("unknown_chat")
    await admin.send("DELETE_CHAT", roomId="d", chatId=gone["chatId"])
    await admin.expect_error("unknown_chat")


async def test_managed_rooms_only(clock: ManualClock) -> None:
    """With --rooms managed, joining a room no admin created gets room_not_found."""
    async with running_server(rooms="managed", clock=clock) as srv:
        user = await Client.connect(srv.url)
        await user.send("JOIN_ROOM", name="u", userId="u", roomId="nope")
        await user.expect_error("room_not_found")
        admin = await Client.connect(srv.url + f"?token={TEST_ADMIN_TOKEN}")
        await create_room(admin, roomId="yes", name="Yes")
        assert (await user.join("yes", "u"))["room"]["name"] == "Yes"
        await admin.close()
        await user.close()


# ------------------------------------------------------------------ presence


async def test_presence_counts_users_not_tabs(connect: Connect, qa: RoomcastServer) -> None:
    """PRESENCE on join; USER_JOINED once per user; USER_LEFT when the last tab closes."""
    watcher = await connect()
    watcher.skip = frozenset()
    await watcher.send("JOIN_ROOM", name="Wat", userId="w", roomId="p")
    await watcher.expect("ROOM_HISTORY")
    assert await watcher.expect("PRESENCE") == {
        "roomId": "p",
        "count": 1,
        "users": [{"userId": "w", "name": "Wat"}],
    }
    assert (await watcher.expect("USER_JOINED"))["userId"] == "w"
    tab1, tab2 = await connect(), await connect()
    await tab1.join("p", "ann", "Ann")
    joined = await watcher.expect("USER_JOINED")
    assert joined == {"roomId": "p", "userId": "ann", "name": "Ann", "count": 2}
    await tab2.join("p", "ann", "Ann")
    await watcher.expect_silence()
    await tab1.close()
    await watcher.expect_silence()
    await tab2.close()
    assert await watcher.expect("USER_LEFT") == {"roomId": "p", "userId": "ann", "count": 1}
    reader, writer = await asyncio.open_connection("127.0.0.1", qa.port)
    writer.write(b"GET /api/rooms/p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    body = await reader.read()
    writer.close()
    assert b'"memberCount":1' in body


async def test_leave_and_join_again_at_once_keeps_the_user_counted(connect: Connect) -> None:
    """LEAVE_ROOM then JOIN_ROOM in one breath: the leave, still under way when the
    join counts the connection in again, must not count the user out afterwards."""
    watcher = await connect()
    await watcher.join("flick", "w")
    flicker = await connect()
    await flicker.join("flick", "f")
    flicker.skip = flicker.skip | {"LEFT_ROOM"}
    for _ in range(3):
        await flicker.send("LEAVE_ROOM", roomId="flick", userId="f")
        await flicker.send("JOIN_ROOM", name="f", userId="f", roomId="flick")
        await flicker.expect("ROOM_HISTORY")
    latecomer = await connect()
    latecomer.skip = frozenset()
    await latecomer.send("JOIN_ROOM", name="late", userId="l", roomId="flick")
    await latecomer.expect("ROOM_HISTORY")
    presence = await latecomer.expect("PRESENCE")
    assert presence["count"] == 3, presence
    assert sorted(u["userId"] for u in presence["users"]) == ["f", "l", "w"]


# ------------------------------------------------------------------ concurrency


async def test_concurrent_votes_one_user_many_users(connect: Connect) -> None:
    """100 concurrent votes by one user over 4 connections count once; 100 users count 100."""
    author = await connect()
    await author.join("v", "a")
    chat = await post(author, "v", "a", "q")
    tabs = [await connect() for _ in range(4)]
    for tab in tabs:
        await tab.join("v", "same")
    await asyncio.gather(
        *(
            tabs[i % 4].send("UPVOTE_MESSAGE", userId="same", roomId="v", chatId=chat["chatId"])
            for i in range(100)
        )
    )
    assert (await author.expect("UPDATE_CHAT"))["upvotes"] == 1
    await author.expect_silence()
    users = [await connect() for _ in range(100)]
    for i, u in enumerate(users):
        await u.join("v", f"u{i}")
    await asyncio.gather(
        *(
            u.send("UPVOTE_MESSAGE", userId=f"u{i}", roomId="v", chatId=chat["chatId"])
            for i, u in enumerate(users)
        )
    )
    counts = [(await author.expect("UPDATE_CHAT"))["upvotes"] for _ in range(100)]
    assert counts == list(range(2, 102))


async def test_presence_events_stop_above_the_broadcast_cap() -> None:
    """Above presence_broadcast_max users, joins and leaves are not broadcast."""
    async with running_server(presence_broadcast_max=2) as srv:
        watcher = await Client.connect(srv.url)
        watcher.skip = frozenset({"PRESENCE"})
        await watcher.join("big", "w")
        assert (await watcher.expect("USER_JOINED"))["count"] == 1
        second, third = await Client.connect(srv.url), await Client.connect(srv.url)
        await second.join("big", "s")
        assert (await watcher.expect("USER_JOINED"))["count"] == 2
        history = await third.join("big", "t")
        assert history["room"]["memberCount"] == 3
        await watcher.expect_silence()
        await third.close()
        await watcher.expect_silence()
        await second.close()
        assert await watcher.expect("USER_LEFT") == {"roomId": "big", "userId": "s", "count": 1}
        await watcher.close()
