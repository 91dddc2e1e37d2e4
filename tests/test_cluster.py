"""Several real `roomcast serve` processes sharing rooms through a private Redis."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from roomcast.adapters.redis import RedisBroker, RedisLink, RedisStore
from roomcast.core.errors import ClientError
from roomcast.core.wire import EventPub, Publication
from roomcast.testing import TEST_ADMIN_TOKEN, running_server
from tests.cluster import (
    ADMIN,
    NodeProcess,
    RedisClusterServers,
    RedisServer,
    needs_redis,
    prefix,
)
from tests.helpers import Client, timeout, wait_until

pytestmark = [needs_redis, pytest.mark.slow]


@pytest.fixture
def nodes(redis_url: str) -> Iterator[list[NodeProcess]]:
    """Three nodes on one Redis, with a key prefix of this test's own."""
    key_prefix = prefix()
    started = [NodeProcess(redis_url, key_prefix) for _ in range(3)]
    for node in started:
        node.start(ready=False)
    try:
        for node in started:
            node.wait_ready()
        yield started
    finally:
        for node in started:
            node.stop()


async def connect(node: NodeProcess, **kwargs: Any) -> Client:
    return await Client.connect(node.url, **kwargs)


async def collect_chats(client: Client, count: int, wait: float = 10) -> list[dict[str, Any]]:
    """The next `count` ADD_CHAT payloads (other frames skipped)."""
    chats: list[dict[str, Any]] = []
    while len(chats) < count:
        message = await client.recv(wait)
        if message["type"] == "ADD_CHAT":
            chats.append(message["payload"])
    return chats


async def test_messages_cross_nodes_in_one_order(nodes: list[NodeProcess]) -> None:
    """Publishers on three nodes at once: every member, on every node, sees every
    message once, in the same order, with offsets 1..N."""
    clients = [await connect(node) for node in nodes for _ in range(2)]
    for i, client in enumerate(clients):
        await client.join("hall", f"u{i}", f"user {i}")
    per_sender = 40
    senders = clients[::2]  # one per node

    async def publish(i: int, client: Client) -> None:
        for n in range(per_sender):
            await client.send("SEND_MESSAGE", userId=f"u{2 * i}", roomId="hall", message=f"{i}:{n}")

    seen = asyncio.gather(*(collect_chats(c, per_sender * len(senders)) for c in clients))
    await asyncio.gather(*(publish(i, c) for i, c in enumerate(senders)))
    views = await seen
    total = per_sender * len(senders)
    first = [(c["offset"], c["chatId"], c["message"]) for c in views[0]]
    assert [offset for offset, _, _ in first] == list(range(1, total + 1))
    assert len({chat_id for _, chat_id, _ in first}) == total
    for view in views[1:]:
        assert [(c["offset"], c["chatId"], c["message"]) for c in view] == first
    for i in range(len(senders)):  # each sender's own messages in the order it sent them
        mine = [text for _, _, text in first if text.startswith(f"{i}:")]
        assert mine == [f"{i}:{n}" for n in range(per_sender)]
    for client in clients:
        await client.expect_silence(0.3)
        await client.close()


async def test_late_joiner_on_another_node_gets_the_history(nodes: list[NodeProcess]) -> None:
    a = await connect(nodes[0])
    await a.join("r", "a")
    for n in range(5):
        await a.send("SEND_MESSAGE", userId="a", roomId="r", message=f"m{n}")
    await collect_chats(a, 5)
    b = await connect(nodes[1])
    history = await b.join("r", "b")
    assert [m["message"] for m in history["messages"]] == [f"m{n}" for n in range(5)]
    assert history["lastOffset"] == 5
    await a.send("SEND_MESSAGE", userId="a", roomId="r", message="after")
    assert (await collect_chats(b, 1))[0]["offset"] == 6
    await a.close()
    await b.close()


async def test_one_vote_per_user_across_nodes(nodes: list[NodeProcess]) -> None:
    """One user on three nodes votes on all of them at once: counted once. Ten users
    on different nodes: ten votes, and every node's members see the final count."""
    author = await connect(nodes[0])
    await author.join("q", "author")
    await author.send("SEND_MESSAGE", userId="author", roomId="q", message="why?")
    chat = (await collect_chats(author, 1))[0]
    same = [await connect(node) for node in nodes]
    for client in same:
        await client.join("q", "voter")
    await asyncio.gather(
        *(
            c.send("UPVOTE_MESSAGE", userId="voter", roomId="q", chatId=int(chat["chatId"]))
            for c in same
        )
    )
    update = await author.expect("UPDATE_CHAT")
    assert update["upvotes"] == 1
    others = [await connect(nodes[i % 3]) for i in range(9)]
    for i, client in enumerate(others):
        await client.join("q", f"v{i}")
    await asyncio.gather(
        *(
            c.send("UPVOTE_MESSAGE", userId=f"v{i}", roomId="q", chatId=chat["chatId"])
            for i, c in enumerate(others)
        )
    )
    counts = [(await author.expect("UPDATE_CHAT"))["upvotes"] for _ in range(9)]
    assert sorted(counts) == list(range(2, 11))
    await author.expect_silence(0.5)
    for client in [author, *same, *others]:
        await client.close()


async def test_cooldown_and_mute_hold_across_nodes(nodes: list[NodeProcess]) -> None:
    """Slow mode: one user sending from three nodes at once gets one message through.
    A mute made on one node stops the user on the others at once."""
    admin = await connect(nodes[0], subprotocols=["roomcast.v1"])
    await admin.send("AUTH", token=ADMIN)
    await admin.expect("AUTH_OK")
    await admin.send("CREATE_ROOM", roomId="slow", name="Slow", cooldownSeconds=30)
    await admin.expect("ROOM_CREATED")
    await admin.join("slow", "host")
    user = [await connect(node) for node in nodes]
    for client in user:
        await client.join("slow", "eve")
    await asyncio.gather(
        *(
            c.send("SEND_MESSAGE", userId="eve", roomId="slow", message=f"from {i}")
            for i, c in enumerate(user)
        )
    )
    outcomes: list[str] = []
    for i, client in enumerate(user):
        while True:
            message = await client.recv()
            if message["type"] == "ERROR":
                assert message["payload"]["code"] == "cooldown"
                assert message["payload"]["retryAfterMs"] > 0
                outcomes.append("refused")
                break
            if message["type"] == "ADD_CHAT" and message["payload"]["message"] == f"from {i}":
                outcomes.append("sent")
                break
    assert outcomes.count("refused") == 2
    chats = await collect_chats(admin, 1)
    assert chats[0]["userId"] == "eve"
    await admin.expect_silence(0.3)

    await admin.send("MUTE_USER", roomId="slow", userId="mallory", seconds=60)
    muted = await admin.expect("USER_MUTED")
    assert muted["userId"] == "mallory"
    mallory = await connect(nodes[2])
    await mallory.join("slow", "mallory")
    await mallory.send("SEND_MESSAGE", userId="mallory", roomId="slow", message="spam")
    await mallory.expect_error("muted")
    for client in [admin, mallory, *user]:
        await client.close()


async def test_one_alert_per_message_across_nodes(nodes: list[NodeProcess]) -> None:
    """Votes from all nodes cross the high threshold together: each admin, on any
    node, gets exactly one ADMIN_ALERT."""
    admins = []
    for node in nodes[:2]:
        admin = await connect(node, subprotocols=["roomcast.v1"])
        await admin.send("AUTH", token=ADMIN)
        await admin.expect("AUTH_OK")
        admins.append(admin)
    await admins[0].send("CREATE_ROOM", roomId="class", name="Class", highThreshold=3)
    await admins[0].expect("ROOM_CREATED")
    for admin in admins:
        await admin.join("class", "host")
    asker = await connect(nodes[2])
    await asker.join("class", "asker")
    await asker.send("SEND_MESSAGE", userId="asker", roomId="class", message="exam?")
    chat = (await collect_chats(asker, 1))[0]
    voters = [await connect(nodes[i % 3]) for i in range(6)]
    for i, client in enumerate(voters):
        await client.join("class", f"s{i}")
    await asyncio.gather(
        *(
            c.send("UPVOTE_MESSAGE", userId=f"s{i}", roomId="class", chatId=chat["chatId"])
            for i, c in enumerate(voters)
        )
    )
    for admin in admins:
        alert: dict[str, Any] | None = None
        while alert is None:
            message = await admin.recv()
            if message["type"] == "ADMIN_ALERT":
                alert = message["payload"]
        assert alert["chatId"] == chat["chatId"]
        admin.skip = frozenset({"PRESENCE", "USER_JOINED", "USER_LEFT", "UPDATE_CHAT", "ADD_CHAT"})
        await admin.expect_silence(0.5)
    for client in [*admins, asker, *voters]:
        await client.close()


async def test_presence_counts_users_across_nodes(nodes: list[NodeProcess]) -> None:
    """PRESENCE counts users on every node; a user with connections on two nodes is
    one user; USER_LEFT comes when the last of them closes."""
    a = await connect(nodes[0])
    await a.join("p", "ann")
    b1 = await connect(nodes[1])
    await b1.join("p", "bob")
    b2 = await connect(nodes[2])
    await b2.join("p", "bob", "bob")
    presence = await b2.expect("PRESENCE")
    assert presence["count"] == 2
    assert sorted(u["userId"] for u in presence["users"]) == ["ann", "bob"]
    await b1.close()
    await b2.close()
    left = await a.expect("USER_LEFT")
    assert (left["userId"], left["count"]) == ("bob", 1)
    c = await connect(nodes[1])
    await c.join("p", "cy", "cy")
    assert (await c.expect("PRESENCE"))["count"] == 2
    await a.close()
    await c.close()


async def test_a_killed_nodes_users_are_counted_out(redis_url: str) -> None:
    """SIGKILL leaves no goodbye: the other nodes count its users out after its
    heartbeat key expires and two sweeps find it gone."""
    key_prefix = prefix()
    a = NodeProcess(redis_url, key_prefix).start()
    b = NodeProcess(redis_url, key_prefix).start()
    try:
        watcher = await connect(a)
        await watcher.join("k", "watcher")
        doomed = await connect(b)
        await doomed.join("k", "doomed")
        while (await watcher.expect("USER_JOINED"))["userId"] != "doomed":
            pass
        b.stop(9)
        left = await watcher.expect("USER_LEFT", wait=10)
        assert (left["userId"], left["count"]) == ("doomed", 1)
        await watcher.close()
    finally:
        a.stop()
        b.stop()


async def test_nodes_subscribe_only_to_rooms_they_host(
    nodes: list[NodeProcess], redis_url: str
) -> None:
    """One subscription per hosting node per room, taken on the first local join and
    dropped after the last leave; a node without members of a room receives nothing."""
    r = redis.Redis.from_url(redis_url)
    channel = None
    a = await connect(nodes[0])
    await a.join("interest", "a")
    for key in r.pubsub_channels():
        if key.decode().endswith("{interest}:ev"):
            channel = key
    assert channel is not None

    def subscribers() -> int:
        return int(r.pubsub_numsub(channel)[0][1])

    assert subscribers() == 1
    a2 = await connect(nodes[0])
    await a2.join("interest", "a2")
    assert subscribers() == 1  # a second local member adds no subscription
    b = await connect(nodes[1])
    await b.join("interest", "b")
    assert subscribers() == 2
    await b.close()
    assert await wait_until(lambda: subscribers() == 1)
    await a.close()
    await a2.close()
    assert await wait_until(lambda: subscribers() == 0)
    r.close()


def test_ledger_helpers_are_consistent() -> None:
    """The ledger used by the fault tests counts what it should."""
    ledger = Ledger()
    chat = {"chatId": "1", "message": "p:0", "offset": 1}
    ledger.add_frame({"type": "ADD_CHAT", "payload": chat})
    ledger.add_frame({"type": "ADD_CHAT", "payload": chat})
    history = {"messages": [{"chatId": "2", "message": "p:1"}], "lastOffset": 2}
    ledger.add_frame({"type": "ROOM_HISTORY", "payload": history})
    assert ledger.texts() == {"p:0", "p:1"}
    assert ledger.duplicates == 1
    assert ledger.out_of_order == 1  # the second copy of offset 1


class Ledger:
    """What one client saw: message texts by chat id, and ADD_CHAT seen twice."""

    def __init__(self) -> None:
        self.by_id: dict[str, str] = {}
        self.live: set[str] = set()
        self.duplicates = 0
        self.resets = 0
        self.last_offset = 0  # the newest offset this client has (history or live)
        self.out_of_order = 0  # ADD_CHAT at or below an offset the client already had

    def add_frame(self, frame: dict[str, Any]) -> None:
        payload = frame["payload"]
        if frame["type"] == "ADD_CHAT":
            if payload["chatId"] in self.live:
                self.duplicates += 1
            if payload["offset"] <= self.last_offset:
                self.out_of_order += 1
            self.last_offset = payload["offset"]
            self.live.add(payload["chatId"])
            self.by_id[payload["chatId"]] = payload["message"]
        elif frame["type"] == "ROOM_HISTORY":
            if payload.get("recovered") is False:
                self.resets += 1
                self.last_offset = payload["lastOffset"]  # a new history starts over
            else:
                self.last_offset = max(self.last_offset, payload["lastOffset"])
            for m in payload["messages"]:
                self.by_id[m["chatId"]] = m["message"]

    def texts(self) -> set[str]:
        return set(self.by_id.values())


async def read_into(client: Client, ledger: Ledger, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            frame = await client.recv(0.2)
        except TimeoutError:
            continue
        ledger.add_frame(frame)


async def publish_with_retries(
    client: Client, room: str, user: str, count: int, acked: set[str], gap: float = 0.02
) -> None:
    """Send `count` numbered messages, each with a clientMsgId; a refused one (Redis
    down) is retried with the same id until the server takes it."""
    pending = [f"{user}:{n}" for n in range(count)]
    for text in pending:
        while text not in acked:
            await client.send(
                "SEND_MESSAGE", userId=user, roomId=room, message=text, clientMsgId=text
            )
            await asyncio.sleep(gap)
            if text not in acked:
                await asyncio.sleep(0.2)


async def test_send_while_redis_is_down_is_refused_not_lost(tmp_path: Path) -> None:
    """With Redis gone, a send is answered `unavailable` (never a false ADD_CHAT);
    /readyz says not ready; once Redis is back, sending works again."""
    server = RedisServer(tmp_path / "r").start()
    node = NodeProcess(server.url, prefix()).start()
    try:
        client = await connect(node)
        await client.join("down", "u")
        server.stop()
        await client.send("SEND_MESSAGE", userId="u", roomId="down", message="lost?")
        await client.expect_error("unavailable")
        assert await wait_until(lambda: node.status() == 503, 10)
        assert node.status("/healthz") == 200
        server.start()
        assert await wait_until(lambda: node.status() == 200, 15)
        reset = await client.expect("ROOM_HISTORY", wait=15)  # the room was lost with Redis
        assert reset["recovered"] is False
        await client.send("SEND_MESSAGE", userId="u", roomId="down", message="back")
        chat = (await collect_chats(client, 1))[0]
        assert (chat["message"], chat["offset"]) == ("back", 1)
        await client.close()
    finally:
        node.stop()
        server.stop()


async def test_redis_down_at_start(tmp_path: Path) -> None:
    """A node started before its Redis runs, says not ready, and serves once Redis is up."""
    server = RedisServer(tmp_path / "r")  # port chosen, nothing started yet
    node = NodeProcess(server.url, prefix()).start(ready=False)
    try:
        await asyncio.sleep(timeout(1))
        assert node.proc is not None
        assert node.proc.poll() is None
        assert node.status() == 503
        assert node.status("/healthz") == 200
        server.start()
        node.wait_ready()
        client = await connect(node)
        await client.join("late", "u")
        await client.send("SEND_MESSAGE", userId="u", roomId="late", message="hello")
        assert (await collect_chats(client, 1))[0]["message"] == "hello"
        await client.close()
    finally:
        node.stop()
        server.stop()


async def _restart_under_load(tmp_path: Path, *, aof: bool) -> tuple[list[Ledger], set[str]]:
    server = RedisServer(tmp_path / "r", aof=aof).start()
    key_prefix = prefix()
    a = NodeProcess(server.url, key_prefix).start()
    b = NodeProcess(server.url, key_prefix).start()
    try:
        publisher = await connect(a)
        await publisher.join("ledger", "pub")
        watchers = [await connect(node) for node in (a, b, b)]
        for i, w in enumerate(watchers):
            await w.join("ledger", f"w{i}")
        ledgers = [Ledger() for _ in watchers]
        acked: set[str] = set()
        stop = asyncio.Event()

        async def acks() -> None:
            while not stop.is_set():
                try:
                    frame = await publisher.recv(0.2)
                except TimeoutError:
                    continue
                if frame["type"] == "ADD_CHAT":
                    acked.add(frame["payload"]["message"])
                elif frame["type"] == "ROOM_HISTORY":
                    acked.update(m["message"] for m in frame["payload"]["messages"])

        readers = [
            asyncio.create_task(read_into(w, led, stop))
            for w, led in zip(watchers, ledgers, strict=True)
        ]
        ack_task = asyncio.create_task(acks())
        sending = asyncio.create_task(publish_with_retries(publisher, "ledger", "pub", 120, acked))
        await wait_until(lambda: len(acked) >= 30, 20)
        server.restart()
        await asyncio.wait_for(sending, timeout(90))
        await asyncio.sleep(timeout(1.5))
        stop.set()
        await asyncio.gather(*readers, ack_task)
        for client in [publisher, *watchers]:
            await client.close()
        return ledgers, acked
    finally:
        a.stop()
        b.stop()
        server.stop()


async def test_redis_restart_with_aof_loses_nothing(tmp_path: Path) -> None:
    """Redis restarts with its append-only file while messages flow: every client
    ends up with every acknowledged message, none twice, and no reset."""
    ledgers, acked = await _restart_under_load(tmp_path, aof=True)
    assert len(acked) == 120
    for ledger in ledgers:
        assert acked <= ledger.texts(), sorted(acked - ledger.texts())[:5]
        assert ledger.duplicates == 0
        assert ledger.out_of_order == 0
        assert ledger.resets == 0


async def test_redis_restart_without_persistence_says_so(tmp_path: Path) -> None:
    """Redis restarts empty: nodes resubscribe, each client is told once that history
    was lost (`recovered: false`), and messages flow again. Nothing is silently lost:
    every message acknowledged after the reset reaches every client, none twice."""
    ledgers, acked = await _restart_under_load(tmp_path, aof=False)
    assert len(acked) == 120
    for ledger in ledgers:
        assert ledger.resets == 1
        assert ledger.duplicates == 0
        assert ledger.out_of_order == 0
    # what was acknowledged after the restart is everywhere
    late = {text for text in acked if int(text.split(":")[1]) >= 100}
    for ledger in ledgers:
        assert late <= ledger.texts()


async def test_killed_node_clients_resume_on_another(redis_url: str) -> None:
    """A node dies by SIGKILL; its client reconnects to another node with `since` and
    `epoch` and gets exactly the messages it missed: no loss, no duplicates."""
    key_prefix = prefix()
    a = NodeProcess(redis_url, key_prefix).start()
    b = NodeProcess(redis_url, key_prefix).start()
    try:
        publisher = await connect(b)
        await publisher.join("resume", "pub")
        victim = await connect(a)
        history = await victim.join("resume", "vic")
        epoch = history["epoch"]
        offsets: list[int] = []
        for n in range(10):
            await publisher.send("SEND_MESSAGE", userId="pub", roomId="resume", message=f"m{n}")
        offsets += [c["offset"] for c in await collect_chats(victim, 10)]
        a.stop(9)
        for n in range(10, 25):
            await publisher.send("SEND_MESSAGE", userId="pub", roomId="resume", message=f"m{n}")
        await collect_chats(publisher, 25)
        again = await connect(b)
        await again.send(
            "JOIN_ROOM", name="vic", userId="vic", roomId="resume", since=offsets[-1], epoch=epoch
        )
        replay = await again.expect("ROOM_HISTORY")
        assert replay["recovered"] is True
        offsets += [m["offset"] for m in replay["messages"] if m["offset"] > offsets[-1]]
        await publisher.send("SEND_MESSAGE", userId="pub", roomId="resume", message="m25")
        offsets += [c["offset"] for c in await collect_chats(again, 1)]
        assert offsets == list(range(1, 27))
        await again.expect_silence(0.3)
        await publisher.close()
        await again.close()
    finally:
        a.stop()
        b.stop()


async def test_redis_cluster_sharded_pub_sub(tmp_path: Path) -> None:
    """On a 3-primary Redis Cluster, rooms spread over the shards; each room's keys and
    channel share one slot (SPUBLISH/SSUBSCRIBE), and nodes share rooms as before."""
    servers = RedisClusterServers(tmp_path).start()
    key_prefix = prefix()
    a = NodeProcess(servers.url, key_prefix).start()
    b = NodeProcess(servers.url, key_prefix).start()
    try:
        rooms = [f"room-{i}" for i in range(6)]
        shards = set()
        probe = redis.RedisCluster(host="127.0.0.1", port=servers.servers[0].port)
        for room in rooms:
            shards.add(probe.keyslot(f"{key_prefix}v1:{{{room}}}:ev") * 3 // 16384)
        assert len(shards) > 1  # the rooms really are on different primaries
        on_a = [await connect(a) for _ in rooms]
        on_b = [await connect(b) for _ in rooms]
        for room, ca, cb in zip(rooms, on_a, on_b, strict=True):
            await ca.join(room, "ann")
            await cb.join(room, "bob")
        for room, ca in zip(rooms, on_a, strict=True):
            for n in range(5):
                await ca.send("SEND_MESSAGE", userId="ann", roomId=room, message=f"{room}/{n}")
        seen = {}
        for room, cb in zip(rooms, on_b, strict=True):
            seen[room] = await collect_chats(cb, 5)
            assert [(c["offset"], c["message"]) for c in seen[room]] == [
                (n + 1, f"{room}/{n}") for n in range(5)
            ]
        first = seen[rooms[0]][0]
        await on_b[0].send("UPVOTE_MESSAGE", userId="bob", roomId=rooms[0], chatId=first["chatId"])
        update = await on_b[0].expect("UPDATE_CHAT")
        assert update["upvotes"] == 1
        probe.close()
        for client in [*on_a, *on_b]:
            await client.close()
    finally:
        a.stop()
        b.stop()
        servers.stop()


async def test_a_burst_of_joins_waits_for_redis_connections(redis_url: str) -> None:
    """300 clients join a new room at once through a node allowed 4 Redis connections:
    all get in (callers queue for a connection instead of failing)."""
    async with running_server(
        store=redis_url, redis_prefix=prefix(), redis_connections=4, max_connections_per_ip=1000
    ) as server:
        clients = await asyncio.gather(*(Client.connect(server.url) for _ in range(300)))
        await asyncio.gather(
            *(
                c.send("JOIN_ROOM", name="n", userId=f"u{i}", roomId="burst")
                for i, c in enumerate(clients)
            )
        )
        histories = await asyncio.gather(*(c.expect("ROOM_HISTORY", wait=30) for c in clients))
        assert all(h["roomId"] == "burst" for h in histories)
        await asyncio.gather(*(c.close() for c in clients))


def _patch_room(node: NodeProcess, room: str, **changes: Any) -> None:
    request = urllib.request.Request(
        f"{node.http}/api/rooms/{room}",
        data=json.dumps(changes).encode(),
        method="PATCH",
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


async def test_room_settings_changed_anywhere_hold_everywhere(nodes: list[NodeProcess]) -> None:
    """A node that does not host a room keeps no stale copy of its settings: a room
    closed on node 0, reopened on node 1, is open for a user who then joins on node 0;
    and a member on node 2 sees both changes live."""
    watcher = await connect(nodes[2])
    await watcher.join("settings", "w")
    _patch_room(nodes[0], "settings", isOpen=False)
    assert (await watcher.expect("ROOM_UPDATED"))["room"]["isOpen"] is False
    _patch_room(nodes[1], "settings", isOpen=True, cooldownSeconds=0)
    assert (await watcher.expect("ROOM_UPDATED"))["room"]["isOpen"] is True
    user = await connect(nodes[0])
    history = await user.join("settings", "u")
    assert history["room"]["isOpen"] is True
    await user.send("SEND_MESSAGE", userId="u", roomId="settings", message="open again")
    assert (await collect_chats(user, 1))[0]["message"] == "open again"
    await user.close()
    await watcher.close()


async def test_a_missed_publication_is_filled_from_the_history(redis_url: str) -> None:
    """A message whose publication never reached the node (here: published where the
    node does not listen) shows up as a gap at the next offset; the node delivers it
    from the history first, so members still get every message, in order, once."""
    key_prefix = prefix()
    async with running_server(store=redis_url, redis_prefix=key_prefix) as server:
        client = await Client.connect(server.url)
        await client.join("gap", "u")
        await client.send("SEND_MESSAGE", userId="u", roomId="gap", message="one")
        assert (await collect_chats(client, 1))[0]["offset"] == 1
        silent = RedisStore(RedisLink(redis_url), prefix=key_prefix, publishes=True)
        await silent.open()
        silent.link.publish_command = "SPUBLISH"  # a shard channel: the node misses it
        await silent.append("gap", "v", "vic", "two")
        await client.expect_silence(0.3)
        await client.send("SEND_MESSAGE", userId="u", roomId="gap", message="three")
        chats = await collect_chats(client, 2)
        assert [(c["offset"], c["message"]) for c in chats] == [(2, "two"), (3, "three")]
        await client.expect_silence(0.3)
        assert server.node.delivery.gaps_filled == 1
        await silent.close()
        await client.close()


async def test_http_publish_on_one_node_reaches_members_on_another(redis_url: str) -> None:
    """The HTTP API posts through Redis like a participant: a member on the other node
    gets ADD_CHAT, a retry with the same Idempotency-Key posts nothing, and the history
    endpoint of either node shows the message once."""
    key_prefix = prefix()
    async with (
        running_server(store=redis_url, redis_prefix=key_prefix) as a,
        running_server(store=redis_url, redis_prefix=key_prefix) as b,
        aiohttp.ClientSession() as http,
    ):
        client = await Client.connect(b.url)
        await client.join("news", "reader")
        headers = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}", "Idempotency-Key": "k-1"}
        url = f"http://127.0.0.1:{a.port}/api/rooms/news/messages"
        for status in (201, 200):
            async with http.post(
                url, json={"name": "desk", "message": "extra!"}, headers=headers
            ) as response:
                assert response.status == status
        chat = (await collect_chats(client, 1))[0]
        assert (chat["message"], chat["offset"]) == ("extra!", 1)
        await client.expect_silence(0.3)
        async with http.get(
            f"http://127.0.0.1:{b.port}/api/rooms/news/messages",
            headers={"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"},
        ) as response:
            page = await response.json()
        assert [m["message"] for m in page["messages"]] == ["extra!"]
        assert page["epoch"] != "redis"  # the room's own epoch
        await client.close()


async def test_leave_and_join_again_at_once_keeps_the_subscription(
    nodes: list[NodeProcess],
) -> None:
    """The room's only member on a node leaves and joins back in one breath: the node's
    unsubscribe for the leave must not undo the subscribe for the join."""
    other = await connect(nodes[1])
    await other.join("flicker", "o")
    client = await connect(nodes[0])
    await client.join("flicker", "c")
    client.skip = client.skip | {"LEFT_ROOM"}
    for _ in range(5):
        await client.send("LEAVE_ROOM", roomId="flicker", userId="c")
        await client.send("JOIN_ROOM", name="c", userId="c", roomId="flicker")
        await client.expect("ROOM_HISTORY")
    await asyncio.sleep(0.3)
    await other.send("SEND_MESSAGE", userId="o", roomId="flicker", message="still there?")
    assert (await collect_chats(client, 1))[0]["message"] == "still there?"
    await client.close()
    await other.close()


@pytest.mark.parametrize("kind", ["redis", "cluster"])
async def test_an_unsubscribe_answered_after_a_new_subscribe_is_not_a_lost_link(
    redis_url: str, tmp_path: Path, kind: str
) -> None:
    """UNSUBSCRIBE then SUBSCRIBE the same channel before Redis answers the first: the
    unsubscribe reply is the broker's own, not Redis dropping the subscription, so the
    link stays up and the subscription holds (on Redis Cluster: SUNSUBSCRIBE and
    SSUBSCRIBE on the channel's shard)."""
    cluster = RedisClusterServers(tmp_path).start() if kind == "cluster" else None
    url = cluster.url if cluster is not None else redis_url
    got: list[Publication] = []
    resets: list[None] = []
    broker = RedisBroker(RedisLink(url), prefix=prefix())
    broker.bind(got.append, lambda: resets.append(None))
    await broker.open()
    try:
        assert await wait_until(lambda: broker.connected)
        await broker.subscribe("r")
        for _ in range(5):
            leave = asyncio.create_task(broker.unsubscribe("r"))
            await asyncio.sleep(0)  # its UNSUBSCRIBE goes out first
            await broker.subscribe("r")
            await leave
        await broker.publish(EventPub("r", b'{"after":1}'))
        assert await wait_until(lambda: got == [EventPub("r", b'{"after":1}')])
        assert (broker.reconnects, resets, broker.connected) == (0, [], True)
    finally:
        await broker.close()
        if cluster is not None:
            cluster.stop()


async def test_the_append_script_enforces_mutes_and_cooldowns(redis_url: str) -> None:
    """Mutes and cooldowns are checked inside Redis, whatever a node has cached."""
    store = RedisStore(RedisLink(redis_url), prefix=prefix())
    await store.open()
    await store.set_mute("m", "mallory", int(time.time() * 1000) + 60_000)
    with pytest.raises(ClientError) as muted:
        await store.append("m", "mallory", "M", "hi", check_mute=True)
    assert muted.value.code == "muted"
    assert (await store.history("m", 10)).messages == []
    await store.append("m", "eve", "E", "first", "c1", cooldown_ms=60_000)
    with pytest.raises(ClientError) as slow:
        await store.append("m", "eve", "E", "second", "c2", cooldown_ms=60_000)
    assert slow.value.code == "cooldown"
    assert 0 < int(slow.value.details["retryAfterMs"]) <= 60_000
    retry = await store.append("m", "eve", "E", "first", "c1", cooldown_ms=60_000)
    assert retry.duplicate  # a retry of the message that started the cooldown is fine
    assert [m.text for m in (await store.history("m", 10)).messages] == ["first"]
    await store.close()
